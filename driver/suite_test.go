package driver

import (
	"testing"

	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
)

// The driver's tests are one suite of checks, run on the fake backend
// (qmpfake's block layer model, under -short too) and on real QEMU. A
// check is a func(*testing.T) that gets its VM from newEnv, which starts
// it on the backend of the suite the check runs in; adding a check is
// one line in checks. A check that needs real QEMU throughout says why
// in its RealOnly; one that needs it for a part (guest data, say) guards
// that part with e.vm.Real().

func TestDriverFake(t *testing.T) { qemutest.RunSuite(t, qemutest.Fake, checks) }

func TestDriverQEMU(t *testing.T) {
	qemutest.Require(t)
	qemutest.RunSuite(t, qemutest.Real, checks)
}

var checks = []qemutest.Check{
	{Name: "CreateSucceeds", Run: checkCreateSucceeds},
	{Name: "SwitchPathFollowsTheFreeze", Run: checkSwitchPathFollowsTheFreeze},

	{Name: "AtomicFailureInQEMULeavesNoTrace", Run: checkAtomicFailureInQEMULeavesNoTrace},
	{Name: "AtomicFailureFromProxyLeavesNoTrace", Run: checkAtomicFailureFromProxyLeavesNoTrace},
	{Name: "SequentialFailureRollsBack", Run: checkSequentialFailureRollsBack},
	{Name: "RollbackFailureReportsStuckDisk", Run: checkRollbackFailureReportsStuckDisk},
	{Name: "MetadataWriteFailureRollsBackAtomic", Run: checkMetadataWriteFailureRollsBackAtomic},
	{Name: "ConnectionLostDuringPrepareIsCleanedOnReconnect", Run: checkConnectionLostDuringPrepareIsCleanedOnReconnect},

	{Name: "DiskSelection", Run: checkDiskSelection},
	{Name: "EmptyOverlayFileIsFilledAndEmptiedOnFailure", Run: checkEmptyOverlayFileIsFilledAndEmptiedOnFailure},
	{Name: "MetadataSurvivesRestart", Run: checkMetadataSurvivesRestart},
	{Name: "RedefineAndDeleteMetadata", Run: checkRedefineAndDeleteMetadata},
	{Name: "NoMetadata", Run: checkNoMetadata},
	{Name: "HaltStopsTheGuest", Run: checkHaltStopsTheGuest},
	{Name: "OneOperationPerDomain", Run: checkOneOperationPerDomain},
	{Name: "GoneQEMUFailsFast", Run: checkGoneQEMUFailsFast},
	{Name: "ReconnectsAfterEOF", Run: checkReconnectsAfterEOF},

	{Name: "QuiesceSuccessWithFakeAgent", Run: checkQuiesceSuccessWithFakeAgent},
	{Name: "QuiesceFailures", Run: checkQuiesceFailures},
	{Name: "QuiesceDeadline", Run: checkQuiesceDeadline},
	{Name: "QuiesceHoldExpired", Run: checkQuiesceHoldExpired},
	{Name: "ThawFailureIsRetried", Run: checkThawFailureIsRetried},
	{Name: "FSFreezeOwnership", Run: checkFSFreezeOwnership},
	{Name: "FrozenGuestThawedAfterRestart", Run: checkFrozenGuestThawedAfterRestart},
	{Name: "QuiesceScopeFreezesOnlyTheSnapshotDisks", Run: checkQuiesceScopeFreezesOnlyTheSnapshotDisks},
	{Name: "QuiesceScopeFallsBack", Run: checkQuiesceScopeFallsBack},
	{Name: "QuiesceScopeRefusesBadValue", Run: checkQuiesceScopeRefusesBadValue},
	{Name: "AgentChannelHeld", Run: checkAgentChannelHeld},
	{Name: "AgentChannelPerOperation", Run: checkAgentChannelPerOperation},
	{Name: "AgentChannelStaleReplies", Run: checkAgentChannelStaleReplies},
	{Name: "AgentCheckOverlapsPrepare", Run: checkAgentCheckOverlapsPrepare},

	{Name: "RecoveryAfterKill", Run: checkRecoveryAfterKill},
	{Name: "RecoveryWaitsForQEMU", Run: checkRecoveryWaitsForQEMU},

	{Name: "ValidationRefusesAndChangesNothing", Run: checkValidationRefusesAndChangesNothing},
	{Name: "AtomicMultiDiskNeedsTransaction", Run: checkAtomicMultiDiskNeedsTransaction},
	{Name: "DefaultNameNeedsRegularSource", Run: checkDefaultNameNeedsRegularSource, RealOnly: "a null-co disk, which the fake does not model"},
	{Name: "BlockJobRefused", Run: checkBlockJobRefused},
	{Name: "ChainRecordFollowsQEMU", Run: checkChainRecordFollowsQEMU},
	{Name: "ChainRecordSeesHotplug", Run: checkChainRecordSeesHotplug, RealOnly: "device_add, which the fake does not model"},

	{Name: "UnknownStateReconciledWhileConnected", Run: checkUnknownStateReconciledWhileConnected},
	{Name: "LostConnectionGetsDefinitiveAnswer", Run: checkLostConnectionGetsDefinitiveAnswer},
	{Name: "QEMUAwayPastTheWait", Run: checkQEMUAwayPastTheWait},
	{Name: "QEMUKilledMidSwitch", Run: checkQEMUKilledMidSwitch},
	{Name: "QEMURestartedMidSwitch", Run: checkQEMURestartedMidSwitch, RealOnly: "restarts QEMU on the images, with the guest's data"},
	{Name: "EnsureDomainTakesChangedPaths", Run: checkEnsureDomainTakesChangedPaths},
	{Name: "FSFreezeRefusesHoldAboveMaxFreeze", Run: checkFSFreezeRefusesHoldAboveMaxFreeze},
	{Name: "SnapshotNameWithControlCharacterRefused", Run: checkSnapshotNameWithControlCharacterRefused},
	{Name: "EmptyOverlaySwappedAfterValidation", Run: checkEmptyOverlaySwappedAfterValidation},
	{Name: "SnapshotWaitsForFirstConnectAttempt", Run: checkSnapshotWaitsForFirstConnectAttempt},

	{Name: "DeleteMergesMiddleCurrentAndRoot", Run: checkDeleteMergesMiddleCurrentAndRoot},
	{Name: "DeleteKeepsEveryWrite", Run: checkDeleteKeepsEveryWrite},
	{Name: "DeleteChildren", Run: checkDeleteChildren},
	{Name: "DeleteKeepsCallersFiles", Run: checkDeleteKeepsCallersFiles},
	{Name: "DeleteRefusals", Run: checkDeleteRefusals},
	{Name: "DeleteOffTheChain", Run: checkDeleteOffTheChain},
	{Name: "DeleteDuringCreate", Run: checkDeleteDuringCreate},
	{Name: "DeleteFaultsBeforeTheFinalize", Run: checkDeleteFaultsBeforeTheFinalize},
	{Name: "DeleteFinalizeFailureIsReportedPerDisk", Run: checkDeleteFinalizeFailureIsReportedPerDisk},
	{Name: "DeleteRecoveryAfterKill", Run: checkDeleteRecoveryAfterKill},
	{Name: "DeleteCancelAndProgress", Run: checkDeleteCancelAndProgress},
	{Name: "DeleteInterruptedIsMarked", Run: checkDeleteInterruptedIsMarked},
	{Name: "DeleteBaseOutOfSpace", Run: checkDeleteBaseOutOfSpace, RealOnly: "QEMU's writes fill a small tmpfs; the fake copies no data"},
	{Name: "DeleteQEMUKilledMidMerge", Run: checkDeleteQEMUKilledMidMerge, RealOnly: "restarts QEMU on the images, with their data"},
	{Name: "DeleteCancelMidCopy", Run: checkDeleteCancelMidCopy, RealOnly: "copies data at a bandwidth cap, which the fake does not model"},

	{Name: "GuestQuiesceMakesTheSnapshotConsistent", Run: checkGuestQuiesceMakesTheSnapshotConsistent, RealOnly: "boots a Linux guest with qemu-ga"},
	{Name: "GuestFrozenByCrashedDaemonIsThawed", Run: checkGuestFrozenByCrashedDaemonIsThawed, RealOnly: "boots a Linux guest with qemu-ga"},
	{Name: "GuestFailingFreezeHook", Run: checkGuestFailingFreezeHook, RealOnly: "boots a Linux guest with qemu-ga"},
	{Name: "GuestDeleteWhileWriting", Run: checkGuestDeleteWhileWriting, RealOnly: "boots a Linux guest with qemu-ga"},
	{Name: "GuestQuiesceScope", Run: checkGuestQuiesceScope, RealOnly: "boots a Linux guest with qemu-ga"},
	{Name: "GuestAgentRestart", Run: checkGuestAgentRestart, RealOnly: "boots a Linux guest with qemu-ga"},
	{Name: "GuestReboot", Run: checkGuestReboot, RealOnly: "boots a Linux guest with qemu-ga"},
}
