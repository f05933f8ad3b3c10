package driver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/errkind"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/internal/testing/qmpproxy"
	"github.com/qsnapd/qsnapd/qmp"
	"github.com/qsnapd/qsnapd/transaction"
)

// switchPaths are both ways overlays enter QEMU; a check that runs on
// each forces it with Config.Switch.
var switchPaths = []transaction.Switch{transaction.SwitchSync, transaction.SwitchPreadd}

// switchCommand is the command that switches one disk, outside a
// transaction, on a switch path.
func switchCommand(path transaction.Switch) string {
	if path == transaction.SwitchSync {
		return "blockdev-snapshot-sync"
	}
	return "blockdev-snapshot"
}

// overlayNodes lists the nodes qsnapd added, as QEMU sees them.
func (e *env) overlayNodes() []string {
	e.t.Helper()
	nodes, err := e.obs.QueryNamedBlockNodes(testCtx(e.t), true)
	if err != nil {
		e.t.Fatal(err)
	}
	var ours []string
	for _, n := range nodes {
		if strings.HasPrefix(n.NodeName, "qs") {
			ours = append(ours, n.NodeName)
		}
	}
	return ours
}

func checkAtomicFailureInQEMULeavesNoTrace(t *testing.T) {
	for _, path := range switchPaths {
		for _, k := range []int{1, 3} {
			t.Run(fmt.Sprintf("%s/action%d", path, k), func(t *testing.T) {
				atomicFailureInQEMU(t, path, k)
			})
		}
	}
}

// atomicFailureInQEMU spoils disk k's overlay just before the switch,
// so that QEMU fails action k of the transaction for real, after
// applying (and then undoing) the actions before it: on the preadd
// path its node is deleted, on the sync path its file holds no image.
func atomicFailureInQEMU(t *testing.T, path transaction.Switch, k int) {
	e := newEnv(t, envOpts{disks: 3, style: qemutest.Blockdev, cfg: func(c *Config) { c.Switch = string(path) }})
	before := e.world()
	e.drv.Hooks.AtStep = func(step string) error {
		if step != HookSwitching {
			return nil
		}
		if path == transaction.SwitchSync {
			if nodes := e.overlayNodes(); len(nodes) != 0 {
				return fmt.Errorf("overlay nodes before the switch: %v", nodes)
			}
			return os.WriteFile(filepath.Join(e.vm.Dir, e.vm.Disks[k-1].Target+".s1"), []byte("not an image"), 0o600)
		}
		for _, n := range e.overlayNodes() {
			if strings.HasSuffix(n, fmt.Sprintf("-%d", k-1)) {
				return e.obs.BlockdevDel(testCtx(t), n)
			}
		}
		return errors.New("overlay node not found")
	}
	_, err := e.create(snapXML("s1"), FlagDiskOnly|FlagAtomic)
	var se *transaction.SwitchError
	if !errors.As(err, &se) || !qmp.IsClass(err, "GenericError") {
		t.Fatalf("got %v, want a SwitchError from QEMU", err)
	}
	for _, o := range se.Disks {
		if o.Result != transaction.DiskPlanned {
			t.Errorf("disk %s: %s, want untouched", o.Target, o.Result)
		}
	}
	e.assertUnchanged(before)
}

func checkAtomicFailureFromProxyLeavesNoTrace(t *testing.T) {
	for _, tc := range []struct {
		name   string
		action qmpproxy.Action
	}{
		{"error reply", qmpproxy.Fail{Class: "GenericError", Desc: "injected"}},
		// QEMU never sees the command: the client times out and learns
		// from query-block that nothing switched.
		{"command lost", qmpproxy.Drop{}},
		// QEMU switches but the reply is lost: the client times out,
		// learns the disks switched, and rolls them back.
		{"reply lost", qmpproxy.DropReply{}},
		{"connection lost", qmpproxy.CloseConn{}},
	} {
		for _, path := range switchPaths {
			t.Run(string(path)+"/"+tc.name, func(t *testing.T) {
				atomicFailureFromProxy(t, path, tc.name, tc.action)
			})
		}
	}
}

func atomicFailureFromProxy(t *testing.T, path transaction.Switch, name string, action qmpproxy.Action) {
	e := newEnv(t, envOpts{disks: 3, style: qemutest.Legacy, proxy: true, cfg: func(c *Config) {
		c.QMPOptions = []qmp.Option{qmp.WithCeiling("transaction", 300*time.Millisecond)}
		c.Switch = string(path)
	}})
	before := e.world()
	e.proxy.Add(qmpproxy.Rule{Command: "transaction", Times: 1, Action: action})
	_, err := e.create(snapXML("s1"), FlagDiskOnly|FlagAtomic)
	if !errors.Is(err, ErrOperationFailed) && !errors.Is(err, ErrDisconnected) {
		t.Fatalf("got %v, want a failed operation", err)
	}
	if name == "connection lost" {
		// The driver reconnects, and recovery reconciles.
		waitFor(t, func() bool { return e.world().Active == 0 && len(e.overlayNodes()) == 0 }, "recovery after reconnect")
	}
	e.assertUnchanged(before)
	// The domain still works.
	e.mustCreate(snapXML("s2"), FlagDiskOnly|FlagAtomic)
}

func checkSequentialFailureRollsBack(t *testing.T) {
	const disks = 3
	for _, path := range switchPaths {
		for _, k := range []int{2, disks} {
			t.Run(fmt.Sprintf("%s/disk%d", path, k), func(t *testing.T) { sequentialFailure(t, path, disks, k) })
		}
	}
}

func sequentialFailure(t *testing.T, path transaction.Switch, disks, k int) {
	e := newEnv(t, envOpts{disks: disks, style: qemutest.Blockdev, proxy: true, cfg: func(c *Config) {
		c.Transaction, c.Switch = "never", string(path)
	}})
	before := e.world()
	fail := qmpproxy.Fail{Class: "GenericError", Desc: "injected"}
	// The data checks need real QEMU: the fake has no data and no qemu-io.
	data := e.vm.Real()
	if data {
		// Just before disk k fails, the guest writes into disk 1,
		// which is on its overlay by then.
		fail.Before = func() {
			if out := e.qemuIO("vda", "write -P 0x5a 0 64k"); !strings.Contains(out, "wrote 65536/65536") {
				t.Errorf("write into vda's overlay: %s", out)
			}
		}
	}
	e.proxy.Add(qmpproxy.Rule{Command: switchCommand(path), Nth: k, Times: 1, Action: fail})
	_, err := e.create(snapXML("s1"), FlagDiskOnly)
	var se *transaction.SwitchError
	if !errors.As(err, &se) {
		t.Fatalf("got %v, want a SwitchError", err)
	}
	for i, o := range se.Disks {
		want := transaction.DiskRolledBack
		switch {
		case i == k-1:
			want = transaction.DiskFailed
		case i >= k:
			want = transaction.DiskPlanned
		}
		if o.Result != want {
			t.Errorf("disk %s: %s, want %s", o.Target, o.Result, want)
		}
	}
	if !strings.Contains(err.Error(), "vda rolled-back") || !strings.Contains(err.Error(), "injected") {
		t.Errorf("error does not list the outcomes: %v", err)
	}
	if data {
		// The write landed in vda's original image.
		if out := e.qemuIO("vda", "read -P 0x5a 0 64k"); strings.Contains(out, "failed") || !strings.Contains(out, "read 65536/65536") {
			t.Errorf("data written to the overlay is not in the original: %s", out)
		}
		if out := e.qemuIO("vda", "read -P 0x5b 0 64k"); !strings.Contains(out, "Pattern verification failed") {
			t.Errorf("a wrong pattern went unnoticed, so the check above proves nothing: %s", out)
		}
	}
	after := e.world()
	after.Files[e.vm.Disks[0].Target+".qcow2"] = before.Files[e.vm.Disks[0].Target+".qcow2"] // grew by the write
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Errorf("state changed:\nbefore %+v\nafter  %+v", before, after)
	}
}

func checkRollbackFailureReportsStuckDisk(t *testing.T) {
	for _, path := range switchPaths {
		t.Run(string(path), func(t *testing.T) { rollbackFailure(t, path) })
	}
}

func rollbackFailure(t *testing.T, path transaction.Switch) {
	e := newEnv(t, envOpts{disks: 3, style: qemutest.Legacy, proxy: true, cfg: func(c *Config) { c.Transaction, c.Switch = "never", string(path) }})
	e.proxy.Add(qmpproxy.Rule{Command: switchCommand(path), Nth: 2, Times: 1, Action: qmpproxy.Fail{Class: "GenericError", Desc: "injected switch"}})
	e.proxy.Add(qmpproxy.Rule{Command: "block-commit", Action: qmpproxy.Fail{Class: "GenericError", Desc: "injected commit"}})
	_, err := e.create(snapXML("s1"), FlagDiskOnly)
	if !errors.Is(err, transaction.ErrRollbackFailed) {
		t.Fatalf("got %v, want ErrRollbackFailed", err)
	}
	var oe *OpError
	if !errors.As(err, &oe) {
		t.Fatalf("got %T, want *OpError", err)
	}
	want := []transaction.DiskState{transaction.DiskStuck, transaction.DiskFailed, transaction.DiskPlanned}
	for i, o := range oe.Disks {
		if o.Result != want[i] {
			t.Errorf("disk %s: %s, want %s", o.Target, o.Result, want[i])
		}
	}
	if !strings.Contains(oe.Disks[0].Error, "injected commit") {
		t.Errorf("stuck disk's reason: %q", oe.Disks[0].Error)
	}
	// vda is still on its overlay, which stays on disk; the others are
	// as they were and their overlays are gone.
	disks := e.disks()
	if disks[0].File != oe.Disks[0].Overlay {
		t.Errorf("vda: active %s, want its overlay %s", disks[0].File, oe.Disks[0].Overlay)
	}
	w := e.world()
	if _, ok := w.Files["vda.s1"]; !ok {
		t.Error("the stuck disk's overlay file was deleted")
	}
	for _, f := range []string{"vdb.s1", "vdc.s1"} {
		if _, ok := w.Files[f]; ok {
			t.Errorf("overlay %s left behind", f)
		}
	}
	// The store records the stuck disk, and pruning keeps it.
	if err := e.drv.Store().PruneOps(time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	op, err := e.drv.Store().Op(oe.OpID)
	if err != nil {
		t.Fatalf("stuck operation not in the store: %v", err)
	}
	if stuck := op.Plan.Stuck(); len(stuck) != 1 || stuck[0].Target != "vda" || op.Phase() != transaction.PhaseFailed {
		t.Errorf("stored operation: phase %s, stuck %+v", op.Phase(), stuck)
	}
}

func checkMetadataWriteFailureRollsBackAtomic(t *testing.T) {
	for _, path := range switchPaths {
		t.Run(string(path), func(t *testing.T) { metadataWriteFailure(t, path) })
	}
}

func metadataWriteFailure(t *testing.T, path transaction.Switch) {
	e := newEnv(t, envOpts{disks: 2, style: qemutest.Blockdev, cfg: func(c *Config) { c.Switch = string(path) }})
	before := e.world()
	e.drv.Hooks.AtStep = func(step string) error {
		if step == HookSwitched {
			return errors.New("disk full")
		}
		return nil
	}
	_, err := e.create(snapXML("s1"), FlagDiskOnly|FlagAtomic)
	var oe *OpError
	if !errors.As(err, &oe) {
		t.Fatalf("got %v, want an OpError", err)
	}
	for _, o := range oe.Disks {
		if o.Result != transaction.DiskRolledBack {
			t.Errorf("disk %s: %s, want rolled-back", o.Target, o.Result)
		}
	}
	e.assertUnchanged(before)
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkConnectionLostDuringPrepareIsCleanedOnReconnect: only the
// preadd path sends QMP commands while preparing.
func checkConnectionLostDuringPrepareIsCleanedOnReconnect(t *testing.T) {
	e := newEnv(t, envOpts{disks: 3, style: qemutest.Blockdev, proxy: true, cfg: func(c *Config) { c.Switch = string(transaction.SwitchPreadd) }})
	before := e.world()
	e.proxy.Add(qmpproxy.Rule{Command: "blockdev-add", Nth: 2, Times: 1, Action: qmpproxy.CloseConn{}})
	// Overlays exist and a node may be in QEMU; unless the undo could
	// remove them, the daemon reconnects and its recovery does, and the
	// request answers once that is done.
	_, err := e.create(snapXML("s1"), FlagDiskOnly)
	var oe *OpError
	if !errors.As(err, &oe) || (Kind(err) != errkind.Unavailable && Kind(err) != errkind.OperationFailed) {
		t.Fatalf("got %v, want the prepare failed", err)
	}
	for _, o := range oe.Disks {
		if o.Result != transaction.DiskPlanned {
			t.Errorf("disk %s: %s, want untouched", o.Target, o.Result)
		}
	}
	e.assertUnchanged(before)
}
