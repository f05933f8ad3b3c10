package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/errkind"
	"github.com/qsnapd/qsnapd/transaction"
)

// The engine produces flags, quiesce modes, indication codes and disk
// results; the wire names them. These tests check that the two agree.

func TestFlagsAgree(t *testing.T) {
	for _, tc := range []struct {
		engine driver.CreateFlags
		wire   api.Flags
	}{
		{driver.FlagRedefine, api.FlagRedefine},
		{driver.FlagCurrent, api.FlagCurrent},
		{driver.FlagNoMetadata, api.FlagNoMetadata},
		{driver.FlagHalt, api.FlagHalt},
		{driver.FlagDiskOnly, api.FlagDiskOnly},
		{driver.FlagReuseExt, api.FlagReuseExt},
		{driver.FlagQuiesce, api.FlagQuiesce},
		{driver.FlagAtomic, api.FlagAtomic},
		{driver.FlagLive, api.FlagLive},
		{driver.FlagValidate, api.FlagValidate},
	} {
		if uint32(tc.engine) != uint32(tc.wire) {
			t.Errorf("api %v is %#x, the driver's is %#x", tc.wire, uint32(tc.wire), uint32(tc.engine))
		}
		if names := tc.wire.Names(); len(names) != 1 {
			t.Errorf("flag %#x has names %v, want one", uint32(tc.wire), names)
		}
	}
	if api.KnownFlags != api.FlagValidate<<1-1 {
		t.Errorf("KnownFlags %#x", uint32(api.KnownFlags))
	}
	if names := (api.KnownFlags + 1).Names(); names != nil {
		t.Errorf("a bit past the known flags has names %v", names)
	}
}

func TestAgentChannelsAgree(t *testing.T) {
	if driver.AgentHold != api.AgentChannelHold || driver.AgentPerOperation != api.AgentChannelPerOperation {
		t.Errorf("agent channels: engine %q, %q; wire %q, %q",
			driver.AgentHold, driver.AgentPerOperation, api.AgentChannelHold, api.AgentChannelPerOperation)
	}
}

func TestQuiesceModesAgree(t *testing.T) {
	for _, tc := range []struct {
		engine driver.QuiesceMode
		wire   string
	}{
		{driver.QuiesceRequire, api.QuiesceRequire},
		{driver.QuiescePrefer, api.QuiescePrefer},
		{driver.QuiesceSkip, api.QuiesceSkip},
	} {
		if string(tc.engine) != tc.wire {
			t.Errorf("api says %q, the driver %q", tc.wire, tc.engine)
		}
	}
}

func TestQuiesceScopesAgree(t *testing.T) {
	for _, tc := range []struct {
		engine driver.QuiesceScope
		wire   string
	}{
		{driver.ScopeAll, api.QuiesceScopeAll},
		{driver.ScopeSnapshotDisks, api.QuiesceScopeSnapshotDisks},
	} {
		if string(tc.engine) != tc.wire {
			t.Errorf("api says %q, the driver %q", tc.wire, tc.engine)
		}
	}
}

func TestIndicationsAgree(t *testing.T) {
	for _, tc := range [][2]string{
		{driver.IndQuiesced, api.IndQuiesced},
		{driver.IndNotRequested, api.IndNotRequested},
		{driver.IndNoAgent, api.IndNoAgent},
		{driver.IndAgentUnresponsive, api.IndAgentUnresponsive},
		{driver.IndFreezeDisabled, api.IndFreezeDisabled},
		{driver.IndFreezeFailed, api.IndFreezeFailed},
		{driver.IndFreezeTimeout, api.IndFreezeTimeout},
		{driver.IndDeadlineExceeded, api.IndDeadlineExceeded},
		{driver.IndHoldExpired, api.IndHoldExpired},
		{driver.IndAlreadyFrozen, api.IndAlreadyFrozen},
		{driver.IndThawFailed, api.IndThawFailed},
		{driver.IndHalted, api.IndHalted},
		{driver.IndHaltFailed, api.IndHaltFailed},
		{driver.IndRedefined, api.IndRedefined},
		{driver.IndQEMUGone, api.IndQEMUGone},
		{driver.IndQuiesceScoped, api.IndQuiesceScoped},
		{driver.IndQuiesceScopeFallback, api.IndQuiesceScopeFallback},
	} {
		if tc[0] != tc[1] {
			t.Errorf("api says %q, the driver %q", tc[1], tc[0])
		}
	}
}

func TestDiskResultsAgree(t *testing.T) {
	for _, tc := range []struct {
		engine transaction.DiskState
		wire   api.DiskResult
	}{
		{transaction.DiskPlanned, api.DiskUntouched},
		{transaction.DiskSwitched, api.DiskSwitched},
		{transaction.DiskFailed, api.DiskFailed},
		{transaction.DiskRolledBack, api.DiskRolledBack},
		{transaction.DiskStuck, api.DiskStuck},
		{transaction.DiskHoldsGuestWrites, api.DiskHoldsGuestWrites},
	} {
		if string(tc.engine) != string(tc.wire) {
			t.Errorf("api says %q, the engine %q", tc.wire, tc.engine)
		}
	}
}

func TestDeleteFlagsAgree(t *testing.T) {
	for _, tc := range []struct {
		engine driver.DeleteFlags
		wire   api.DeleteFlags
		name   string // the query parameter
	}{
		{driver.DeleteChildren, api.DeleteChildren, "children"},
		{driver.DeleteMetadataOnly, api.DeleteMetadataOnly, "metadata-only"},
		{driver.DeleteChildrenOnly, api.DeleteChildrenOnly, "children-only"},
	} {
		if uint32(tc.engine) != uint32(tc.wire) {
			t.Errorf("api %v is %#x, the driver's is %#x", tc.wire, uint32(tc.wire), uint32(tc.engine))
		}
		if f, ok := deleteFlagNamed(tc.name); !ok || f != tc.wire || tc.wire.String() != tc.name {
			t.Errorf("%s: named %q, parsed as %v", tc.name, tc.wire.String(), f)
		}
	}
	if api.KnownDeleteFlags != 7 {
		t.Errorf("KnownDeleteFlags %#x", uint32(api.KnownDeleteFlags))
	}
	if names := (api.KnownDeleteFlags + 1).Names(); names != nil {
		t.Errorf("a bit past the known flags has names %v", names)
	}
}

func TestMergeResultsAgree(t *testing.T) {
	for _, tc := range []struct {
		engine string
		wire   api.MergeResult
	}{
		{driver.MergeMerged, api.MergeMerged},
		{driver.MergeUnchanged, api.MergeUnchanged},
		{driver.MergeFailed, api.MergeFailed},
		{driver.MergeUnknown, api.MergeUnknown},
		{driver.MergeUnlinked, api.MergeUnlinked},
	} {
		if tc.engine != string(tc.wire) {
			t.Errorf("api says %q, the driver %q", tc.wire, tc.engine)
		}
	}
}

// TestWireJSONUnchanged: the wire types write what the engine's types,
// which the API used to send as they were, wrote.
func TestWireJSONUnchanged(t *testing.T) {
	since := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	info := driver.DomainInfo{
		Freeze: driver.FreezeInfo{Frozen: true, Owner: driver.OwnerFSFreeze, OpID: "op1", Since: since,
			Deadline: since.Add(time.Minute), ThawPending: true, Agent: "frozen"},
		AgentState: driver.AgentResponsive, Name: "vm1", QMP: "/run/vm1.qmp", Agent: "/run/vm1.ga",
		Connected: true, Since: since, QEMUVersion: "9.2.0", UUID: "u", HasTransaction: true, Error: "e",
	}
	legacy := struct {
		driver.DomainInfo
		AgentConfigured bool `json:"agent_configured"`
	}{info, true}
	sameJSON(t, toDomain(info), legacy)
	sameJSON(t, toDomain(driver.DomainInfo{Name: "vm2"}), struct {
		driver.DomainInfo
		AgentConfigured bool `json:"agent_configured"`
	}{driver.DomainInfo{Name: "vm2"}, false})
	sameJSON(t, freezeInfo(info.Freeze), info.Freeze)
	sameJSON(t, freezeInfo(driver.FreezeInfo{}), driver.FreezeInfo{})
	disks := []transaction.Outcome{{Target: "vda", Source: "/a", Overlay: "/a.s", Result: transaction.DiskSwitched},
		{Target: "vdb", Result: transaction.DiskFailed, Error: "no"}}
	sameJSON(t, outcomes(disks), disks)
	sameJSON(t, outcomes(nil), []transaction.Outcome(nil))
	inds := []driver.Indication{{Code: driver.IndQuiesced}, {Code: driver.IndThawFailed, Message: "m"}}
	sameJSON(t, indications(inds), inds)
	sameJSON(t, indications(nil), []driver.Indication(nil))
	sameJSON(t, indications([]driver.Indication{}), []driver.Indication{})
	merges := []driver.MergeOutcome{
		{Snapshot: "s1", Target: "vda", Overlay: "/a.s1", Base: "/a", Result: driver.MergeMerged, FileDeleted: true},
		{Snapshot: "s1", Target: "vdb", Overlay: "/b.s1", Base: "/b", Result: driver.MergeMerged, Kept: "/b.s1"},
		{Snapshot: "s1", Target: "vdc", Overlay: "/c.s1", Result: driver.MergeFailed, Error: "no space"},
	}
	sameJSON(t, mergeOutcomes(merges), merges)
	sameJSON(t, mergeOutcomes(nil), []driver.MergeOutcome(nil))
	p := driver.Progress{DoneBytes: 1 << 20, TotalBytes: 3 << 20, Cancellable: true}
	sameJSON(t, api.Progress{DoneBytes: p.DoneBytes, TotalBytes: p.TotalBytes, Cancellable: p.Cancellable}, p)
}

// TestMergeInterruptedOnTheWire: a snapshot's mark of an interrupted
// merge, as the wire shows it; none, nothing.
func TestMergeInterruptedOnTheWire(t *testing.T) {
	at := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	infos := []driver.SnapshotInfo{
		{Name: "s1", State: "disk-snapshot", CreationTime: at.Unix(), Children: []string{"s2"},
			MergeInterrupted: &driver.MergeInterruption{OpID: "op1", Time: at, Disks: []string{"vda", "vdb"}}},
		{Name: "s2", State: "disk-snapshot", CreationTime: at.Unix(), Parent: "s1", Current: true},
	}
	b, err := json.Marshal([]api.Snapshot{snapshotOf(infos[0]), snapshotOf(infos[1])})
	if err != nil {
		t.Fatal(err)
	}
	const want = `[{"name":"s1","creation_time":"2025-03-04T05:06:07Z","state":"disk-snapshot","current":false,"children":["s2"],` +
		`"merge_interrupted":{"operation":"op1","time":"2025-03-04T05:06:07Z","disks":["vda","vdb"]}},` +
		`{"name":"s2","creation_time":"2025-03-04T05:06:07Z","state":"disk-snapshot","parent":"s1","current":true,"children":[]}]`
	if string(b) != want {
		t.Errorf("got  %s\nwant %s", b, want)
	}
}

// TestDeleteResponse: the engine's result as the wire's, with its
// lists never null and its total in milliseconds.
func TestDeleteResponse(t *testing.T) {
	got := deleteResponse(&driver.DeleteResult{Deleted: []string{"s2", "s1"}, MergedBytes: 42, Total: 1500 * time.Microsecond,
		Disks: []driver.MergeOutcome{{Snapshot: "s2", Target: "vda", Overlay: "/a.s2", Base: "/a.s1", Result: driver.MergeMerged}}}, "op9")
	b, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"operation":"op9","deleted":["s2","s1"],"disks":[{"snapshot":"s2","target":"vda","overlay":"/a.s2","base":"/a.s1",` +
		`"result":"merged","file_deleted":false}],"merged_bytes":42,"total_ms":1.5}`
	if string(b) != want {
		t.Errorf("got  %s\nwant %s", b, want)
	}
	b, _ = json.Marshal(deleteResponse(&driver.DeleteResult{}, "op1"))
	if want := `{"operation":"op1","deleted":[],"disks":[],"merged_bytes":0,"total_ms":0}`; string(b) != want {
		t.Errorf("empty: got %s, want %s", b, want)
	}
}

func sameJSON(t *testing.T, got, want any) {
	t.Helper()
	g, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	w, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(g, w) {
		t.Errorf("JSON changed:\ngot  %s\nwant %s", g, w)
	}
}

// TestEveryEngineKindHasACode: whatever kind the driver reports, the
// HTTP API answers a specific code, not internal-error.
func TestEveryEngineKindHasACode(t *testing.T) {
	for _, k := range driver.Kinds() {
		c := api.ClassOf(k)
		if c.Kind != k || c.Code == api.CodeInternalError || c.Status == http.StatusInternalServerError {
			t.Errorf("%v (libvirt %d) is rendered %d %s", k, k.Number(), c.Status, c.Code)
		}
	}
	for _, k := range []errkind.Kind{errkind.OperationDenied, errkind.NoOperation} {
		if c := api.ClassOf(k); c.Kind != k {
			t.Errorf("the server's own %v has no row", k)
		}
	}
}

// TestErrorInfo pins the status and code of each kind of error, as the
// server has always answered them.
func TestErrorInfo(t *testing.T) {
	opErr := &driver.OpError{OpID: "op1", Step: driver.StepSwitch,
		Disks: []transaction.Outcome{{Target: "vda", Source: "/a", Overlay: "/a.s1", Result: transaction.DiskStuck, Error: "commit failed"}},
		Err:   fmt.Errorf("%w: switch failed", driver.ErrOperationFailed)}
	delErr := &driver.DeleteError{OpID: "op2", Step: "finalize", Deleted: []string{"s2"},
		Disks: []driver.MergeOutcome{{Snapshot: "s1", Target: "vda", Overlay: "/a.s1", Base: "/a", Result: driver.MergeUnknown, Error: "job vanished"}},
		Err:   fmt.Errorf("%w: finalize failed", driver.ErrOperationFailed)}
	for _, tc := range []struct {
		name   string
		err    error
		status int
		code   string
	}{
		{"forbidden", fmt.Errorf("%w: uid 1000 may not use this socket", errForbidden), 403, api.CodeForbidden},
		{"bad request", fmt.Errorf("%w: malformed JSON", errBadRequest), 400, api.CodeInvalidArg},
		{"no operation", fmt.Errorf("%w: x", errNoOperation), 404, api.CodeNoOperation},
		{"invalid arg", fmt.Errorf("%w: x", driver.ErrInvalidArg), 400, api.CodeInvalidArg},
		{"no domain", fmt.Errorf("%w: x", driver.ErrNoDomain), 404, api.CodeNoDomain},
		{"no snapshot", fmt.Errorf("%w: x", driver.ErrNoSnapshot), 404, api.CodeNoDomainSnapshot},
		{"snapshot exists", fmt.Errorf("%w: x", driver.ErrSnapshotExists), 409, api.CodeSnapshotExists},
		{"busy", fmt.Errorf("%w: %w", driver.ErrBusy, context.DeadlineExceeded), 409, api.CodeOperationInProgress},
		{"agent", fmt.Errorf("%w: x", driver.ErrAgentUnresponsive), 503, api.CodeAgentUnresponsive},
		{"quiesce, agent", fmt.Errorf("%w: %w", driver.ErrQuiesce, driver.ErrAgentUnresponsive), 503, api.CodeAgentUnresponsive},
		{"unsupported", fmt.Errorf("%w: x", driver.ErrUnsupported), 501, api.CodeOperationUnsupported},
		{"disconnected", fmt.Errorf("%w: x", driver.ErrDisconnected), 503, api.CodeOperationInvalid},
		{"closed", driver.ErrClosed, 503, api.CodeOperationInvalid},
		{"operation invalid", fmt.Errorf("%w: x", driver.ErrOperationInvalid), 409, api.CodeOperationInvalid},
		{"domain exists", fmt.Errorf("%w: x", driver.ErrDomainExists), 409, api.CodeOperationInvalid},
		{"operation failed", opErr, 409, api.CodeOperationFailed},
		{"delete failed", delErr, 409, api.CodeOperationFailed},
		{"cancelled", fmt.Errorf("merge: %w", driver.ErrCancelled), 409, api.CodeOperationAborted},
		{"not running", fmt.Errorf("%w: x", driver.ErrNoOperation), 404, api.CodeNoOperation},
		{"quiesce", fmt.Errorf("%w: deadline-exceeded", driver.ErrQuiesce), 409, api.CodeOperationFailed},
		{"unknown", errors.New("something unforeseen"), 500, api.CodeInternalError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, info := errorInfo(tc.err)
			if status != tc.status || info.Code != tc.code || info.Message != tc.err.Error() {
				t.Errorf("got %d %+v; want %d %s", status, info, tc.status, tc.code)
			}
		})
	}
	_, info := errorInfo(opErr)
	if d := info.Details; d == nil || d.Operation != "op1" || d.Step != driver.StepSwitch || len(d.Disks) != 1 ||
		d.Disks[0] != (api.DiskOutcome{Target: "vda", Source: "/a", Overlay: "/a.s1", Result: api.DiskStuck, Error: "commit failed"}) {
		t.Errorf("details %+v", info.Details)
	}
	_, info = errorInfo(fmt.Errorf("delete s1: %w", delErr))
	if d := info.Details; d == nil || d.Operation != "op2" || d.Step != "finalize" || len(d.Disks) != 0 || len(d.Merges) != 1 ||
		len(d.Deleted) != 1 || d.Deleted[0] != "s2" ||
		d.Merges[0] != (api.MergeOutcome{Snapshot: "s1", Target: "vda", Overlay: "/a.s1", Base: "/a", Result: api.MergeUnknown, Error: "job vanished"}) {
		t.Errorf("delete details %+v", info.Details)
	}
}

// TestEventTypesAgree: the wire names every type of the driver's event
// log, and has only its own stream messages besides.
func TestEventTypesAgree(t *testing.T) {
	wire := map[string]bool{}
	for _, typ := range api.EventTypes {
		wire[typ] = true
	}
	for _, typ := range driver.EventTypes {
		if !wire[typ] {
			t.Errorf("the driver's event type %q has no name on the wire", typ)
		}
		delete(wire, typ)
	}
	if len(wire) != 2 || !wire[api.EventOverflow] || !wire[api.EventEventsLost] {
		t.Errorf("wire types the driver has not: %v, want overflow and events-lost", wire)
	}
	for _, r := range []string{driver.ResultSuccess, driver.ResultFailure, driver.ResultRolledBack, driver.ResultPartial, driver.ResultCancelled} {
		if eventResults[r] == "" {
			t.Errorf("the driver's result %q has no name on the wire", r)
		}
	}
}
