package server_test

import (
	"errors"
	"net/http"
	"path/filepath"
	"slices"
	"testing"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/api/server"
	"github.com/qsnapd/qsnapd/guestagent/agentfake"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
)

// checkQuiesceThroughTheAPI: a quiesced snapshot, the fsfreeze verbs and
// the agent's failures, as a client sees them: codes and statuses from
// the error table, and a guest never left frozen.
func checkQuiesceThroughTheAPI(t *testing.T) {
	d := startDaemon(t, server.Access{})
	vm := qemutest.Start(t, qemutest.Options{Backend: qemutest.SuiteBackend(t), Disks: 2, Style: qemutest.Blockdev, SecondMonitor: true})
	agent, err := agentfake.Start(filepath.Join(vm.Dir, "qga.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := agent.Close(); err != nil {
			t.Errorf("fake agent: %v", err)
		}
	})
	if _, err := d.client.Attach(ctx(t), api.AttachRequest{Name: "vm1", QMP: vm.QMP, Agent: agent.Path}); err != nil {
		t.Fatal(err)
	}
	d.vms["vm1"] = vm
	quiesced := api.CreateSnapshotRequest{Flags: api.FlagDiskOnly | api.FlagAtomic | api.FlagQuiesce}

	quiesced.XML = "<domainsnapshot><name>q1</name></domainsnapshot>"
	res, err := d.client.CreateSnapshot(ctx(t), "vm1", quiesced, "")
	if err != nil {
		t.Fatalf("quiesced snapshot: %v", err)
	}
	if !res.Quiesced || len(res.Indications) == 0 || res.Indications[0].Code != api.IndQuiesced || len(res.Disks) != 2 || res.Switch != "preadd" {
		t.Errorf("quiesced snapshot: %+v", res)
	}
	calls := agent.Calls()
	if !slices.Contains(calls, "guest-fsfreeze-freeze") || !slices.Contains(calls, "guest-fsfreeze-thaw") || agent.Frozen() {
		t.Errorf("agent: calls %v, frozen %v; want a freeze and a thaw, thawed", calls, agent.Frozen())
	}

	wantErr := func(what string, err error, status int, code string) {
		t.Helper()
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != status || ae.Info.Code != code {
			t.Errorf("%s: got %v (%+v), want %d %s", what, err, ae, status, code)
		}
	}
	// The snapshot-disks scope: the guest's filesystem on vdb (PCI slot
	// 2) is the one frozen for a snapshot of vdb alone; a scope it does
	// not know is refused.
	agent.SetFilesystems([]agentfake.Filesystem{{Name: "vda", Mountpoint: "/a", Disks: []agentfake.Disk{{PCI: [4]int{0, 0, 1, 0}}}},
		{Name: "vdb", Mountpoint: "/b", Disks: []agentfake.Disk{{PCI: [4]int{0, 0, 2, 0}}}}})
	scoped := quiesced
	scoped.XML = "<domainsnapshot><name>q-scoped</name><disks><disk name='vda' snapshot='no'/><disk name='vdb'/></disks></domainsnapshot>"
	scoped.QuiesceScope = api.QuiesceScopeSnapshotDisks
	if res, err := d.client.CreateSnapshot(ctx(t), "vm1", scoped, ""); err != nil || !res.Quiesced ||
		!slices.ContainsFunc(res.Indications, func(i api.Indication) bool { return i.Code == api.IndQuiesceScoped }) {
		t.Errorf("scoped snapshot: %+v, %v", res, err)
	}
	if lists := agent.FreezeLists(); len(lists) != 1 || !slices.Equal(lists[0], []string{"/b"}) {
		t.Errorf("scoped snapshot froze %q, want /b", lists)
	}
	scoped.QuiesceScope = "some"
	scoped.XML = "<domainsnapshot><name>q-bad-scope</name></domainsnapshot>"
	before := d.state("vm1")
	_, err = d.client.CreateSnapshot(ctx(t), "vm1", scoped, "")
	wantErr("a snapshot with an unknown quiesce scope", err, http.StatusBadRequest, api.CodeInvalidArg)
	if after := d.state("vm1"); after != before {
		t.Errorf("a refused scope changed the domain:\nbefore %s\nafter  %s", before, after)
	}

	// The freeze verbs: a hold above max-freeze is refused before the
	// agent hears of it.
	_, err = d.client.FSFreeze(ctx(t), "vm1", api.FreezeRequest{Timeout: "1h"})
	wantErr("fsfreeze above max-freeze", err, http.StatusBadRequest, api.CodeInvalidArg)
	if agent.Frozen() {
		t.Error("refused fsfreeze froze the guest")
	}
	if n, err := d.client.FSFreeze(ctx(t), "vm1", api.FreezeRequest{Timeout: "5s"}); err != nil || n.Count == 0 {
		t.Fatalf("fsfreeze: %+v, %v", n, err)
	}
	if fi, err := d.client.FSStatus(ctx(t), "vm1"); err != nil || !fi.Frozen || fi.Agent != "frozen" {
		t.Errorf("fsstatus while frozen: %+v, %v", fi, err)
	}
	// A QUIESCE snapshot of a guest someone froze is refused, and does
	// not thaw it.
	quiesced.XML = "<domainsnapshot><name>q2</name></domainsnapshot>"
	before = d.state("vm1")
	_, err = d.client.CreateSnapshot(ctx(t), "vm1", quiesced, "")
	wantErr("quiesced snapshot of a frozen guest", err, http.StatusConflict, api.CodeOperationInvalid)
	if !agent.Frozen() {
		t.Error("the refused snapshot thawed the caller's freeze")
	}
	if _, err := d.client.FSThaw(ctx(t), "vm1"); err != nil || agent.Frozen() {
		t.Fatalf("fsthaw: %v (frozen %v)", err, agent.Frozen())
	}

	// An agent that does not allow fsfreeze, then one that is gone:
	// refused with their codes, nothing changed.
	agent.Disable("guest-fsfreeze-freeze")
	_, err = d.client.CreateSnapshot(ctx(t), "vm1", quiesced, "")
	wantErr("quiesced snapshot, fsfreeze disabled", err, http.StatusNotImplemented, api.CodeOperationUnsupported)
	unchanged := func(before string) {
		t.Helper()
		if after := d.state("vm1"); after != before {
			t.Errorf("refused snapshots changed the domain:\nbefore %s\nafter  %s", before, after)
		}
	}
	unchanged(before)
	if err := agent.Close(); err != nil {
		t.Fatal(err)
	}
	before = d.state("vm1") // without the agent's socket
	_, err = d.client.CreateSnapshot(ctx(t), "vm1", quiesced, "")
	wantErr("quiesced snapshot, agent gone", err, http.StatusServiceUnavailable, api.CodeAgentUnresponsive)
	unchanged(before)
}

// TestAttachAgentChannel: the attach request's agent channel reaches the
// engine and shows in the listing; an unknown one is refused.
func TestAttachAgentChannel(t *testing.T) {
	d := startDaemon(t, server.Access{})
	vm := qemutest.Start(t, qemutest.Options{Backend: qemutest.Fake, Disks: 1, Style: qemutest.Blockdev})
	agent, err := agentfake.Start(filepath.Join(vm.Dir, "qga.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = agent.Close() })
	dom, err := d.client.Attach(ctx(t), api.AttachRequest{Name: "vm1", QMP: vm.QMP, Agent: agent.Path, AgentChannel: api.AgentChannelPerOperation})
	if err != nil || dom.AgentChannel != api.AgentChannelPerOperation {
		t.Fatalf("attach per-operation: %+v, %v", dom, err)
	}
	if doms, err := d.client.Domains(ctx(t)); err != nil || len(doms) != 1 || doms[0].AgentChannel != api.AgentChannelPerOperation {
		t.Errorf("listing: %+v, %v", doms, err)
	}
	_, err = d.client.Attach(ctx(t), api.AttachRequest{Name: "vm2", QMP: vm.QMP, Agent: agent.Path, AgentChannel: "shared"})
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || ae.Info.Code != api.CodeInvalidArg {
		t.Errorf("attach with agent channel 'shared': %v, want invalid-arg", err)
	}
}
