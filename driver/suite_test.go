package driver

import (
	"strings"
	"sync"
	"testing"

	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
)

// The driver's tests are one suite of checks, run on the fake backend
// (qmpfake's block layer model, under -short too) and on real QEMU. A
// check is a func(*testing.T) that gets its VM from newEnv, which starts
// it on the backend of the suite the check runs in; adding a check is
// one line in checks. A check that needs real QEMU throughout says why
// in its realOnly; one that needs it for a part (guest data, say) guards
// that part with e.vm.Real().

func TestDriverFake(t *testing.T) { runSuite(t, qemutest.Fake) }

func TestDriverQEMU(t *testing.T) {
	qemutest.Require(t)
	runSuite(t, qemutest.Real)
}

// check is one named check of the suite. realOnly, if set, says why it
// needs real QEMU; the fake suite skips it with that reason.
type check struct {
	name     string
	run      func(t *testing.T)
	realOnly string
}

var checks = []check{
	{"CreateSucceeds", checkCreateSucceeds, ""},

	{"AtomicFailureInQEMULeavesNoTrace", checkAtomicFailureInQEMULeavesNoTrace, ""},
	{"AtomicFailureFromProxyLeavesNoTrace", checkAtomicFailureFromProxyLeavesNoTrace, ""},
	{"SequentialFailureRollsBack", checkSequentialFailureRollsBack, ""},
	{"RollbackFailureReportsStuckDisk", checkRollbackFailureReportsStuckDisk, ""},
	{"MetadataWriteFailureRollsBackAtomic", checkMetadataWriteFailureRollsBackAtomic, ""},
	{"ConnectionLostDuringPrepareIsCleanedOnReconnect", checkConnectionLostDuringPrepareIsCleanedOnReconnect, ""},

	{"DiskSelection", checkDiskSelection, ""},
	{"EmptyOverlayFileIsFilledAndEmptiedOnFailure", checkEmptyOverlayFileIsFilledAndEmptiedOnFailure, ""},
	{"MetadataSurvivesRestart", checkMetadataSurvivesRestart, ""},
	{"RedefineAndDeleteMetadata", checkRedefineAndDeleteMetadata, ""},
	{"NoMetadata", checkNoMetadata, ""},
	{"HaltStopsTheGuest", checkHaltStopsTheGuest, ""},
	{"OneOperationPerDomain", checkOneOperationPerDomain, ""},
	{"GoneQEMUFailsFast", checkGoneQEMUFailsFast, ""},
	{"ReconnectsAfterEOF", checkReconnectsAfterEOF, ""},

	{"QuiesceSuccessWithFakeAgent", checkQuiesceSuccessWithFakeAgent, ""},
	{"QuiesceFailures", checkQuiesceFailures, ""},
	{"QuiesceDeadline", checkQuiesceDeadline, ""},
	{"QuiesceHoldExpired", checkQuiesceHoldExpired, ""},
	{"ThawFailureIsRetried", checkThawFailureIsRetried, ""},
	{"FSFreezeOwnership", checkFSFreezeOwnership, ""},
	{"FrozenGuestThawedAfterRestart", checkFrozenGuestThawedAfterRestart, ""},

	{"RecoveryAfterKill", checkRecoveryAfterKill, ""},
	{"RecoveryWaitsForQEMU", checkRecoveryWaitsForQEMU, ""},

	{"ValidationRefusesAndChangesNothing", checkValidationRefusesAndChangesNothing, ""},
	{"AtomicMultiDiskNeedsTransaction", checkAtomicMultiDiskNeedsTransaction, ""},
	{"DefaultNameNeedsRegularSource", checkDefaultNameNeedsRegularSource, "a null-co disk, which the fake does not model"},
	{"BlockJobRefused", checkBlockJobRefused, ""},

	{"UnknownStateReconciledWhileConnected", checkUnknownStateReconciledWhileConnected, ""},
	{"EnsureDomainTakesChangedPaths", checkEnsureDomainTakesChangedPaths, ""},
	{"FSFreezeRefusesHoldAboveMaxFreeze", checkFSFreezeRefusesHoldAboveMaxFreeze, ""},
	{"SnapshotNameWithControlCharacterRefused", checkSnapshotNameWithControlCharacterRefused, ""},
	{"EmptyOverlaySwappedAfterValidation", checkEmptyOverlaySwappedAfterValidation, ""},
	{"SnapshotWaitsForFirstConnectAttempt", checkSnapshotWaitsForFirstConnectAttempt, ""},

	{"GuestQuiesceMakesTheSnapshotConsistent", checkGuestQuiesceMakesTheSnapshotConsistent, "boots a Linux guest with qemu-ga"},
	{"GuestFrozenByCrashedDaemonIsThawed", checkGuestFrozenByCrashedDaemonIsThawed, "boots a Linux guest with qemu-ga"},
	{"GuestFailingFreezeHook", checkGuestFailingFreezeHook, "boots a Linux guest with qemu-ga"},
}

// suites maps a suite's top-level test name to its backend.
var suites sync.Map

func runSuite(t *testing.T, b qemutest.Backend) {
	suites.Store(t.Name(), b)
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			if c.realOnly != "" && b != qemutest.Real {
				t.Skipf("needs real QEMU: %s", c.realOnly)
			}
			c.run(t)
		})
	}
}

// backendOf is the backend of the suite t runs in, at any depth of
// subtests; real QEMU outside a suite.
func backendOf(t testing.TB) qemutest.Backend {
	root, _, _ := strings.Cut(t.Name(), "/")
	if b, ok := suites.Load(root); ok {
		return b.(qemutest.Backend)
	}
	return qemutest.Real
}
