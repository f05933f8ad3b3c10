package server_test

import (
	"testing"

	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
)

// The server's tests that need a domain are one suite of checks, run on
// the fake backend (qmpfake's block layer model, under -short too) and
// on real QEMU, as the driver's are. A check is a func(*testing.T) whose
// daemon starts its VMs on the backend of the suite the check runs in;
// adding a check is one line in checks. Tests that need no VM (version,
// peer credentials, the vocabulary) stay plain tests.

func TestServerFake(t *testing.T) { qemutest.RunSuite(t, qemutest.Fake, checks) }

func TestServerQEMU(t *testing.T) {
	qemutest.Require(t)
	qemutest.RunSuite(t, qemutest.Real, checks)
}

var checks = []qemutest.Check{
	{Name: "BadInputChangesNothing", Run: checkBadInputChangesNothing},
	{Name: "OperationOutcomeOutlivesTheRequest", Run: checkOperationOutcomeOutlivesTheRequest},
	{Name: "SnapshotListingAndTree", Run: checkSnapshotListingAndTree},
	{Name: "SnapshotPaging", Run: checkSnapshotPaging},
	{Name: "DetachRefusedWhileBusy", Run: checkDetachRefusedWhileBusy},
	{Name: "ClientGoneMidSwitch", Run: checkClientGoneMidSwitch},
	{Name: "Hammer", Run: checkHammer},
	{Name: "QuiesceThroughTheAPI", Run: checkQuiesceThroughTheAPI},
	{Name: "AsyncOperations", Run: checkAsyncOperations},
	{Name: "ShutdownWaitsForAsync", Run: checkShutdownWaitsForAsync},
	// These two skip until the engine deletes by merging.
	{Name: "DeleteMerge", Run: checkDeleteMerge},
	{Name: "MergeProgressAndCancel", Run: checkMergeProgressAndCancel},
	{Name: "DeleteOutcomesAfterRestart", Run: checkDeleteOutcomesAfterRestart},
	{Name: "IdempotentOperations", Run: checkIdempotentOperations},
	{Name: "DefinitiveAnswersOverHTTP", Run: checkDefinitiveAnswersOverHTTP},
	{Name: "EventStream", Run: checkEventStream},
	{Name: "SlowEventConsumer", Run: checkSlowEventConsumer},
}
