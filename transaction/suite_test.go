package transaction_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp/raw"

	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/qmp"
	"github.com/qsnapd/qsnapd/transaction"
)

func TestSuiteFake(t *testing.T) { runSuites(t, qemutest.Fake) }

func TestSuiteQEMU(t *testing.T) {
	qemutest.Require(t)
	runSuites(t, qemutest.Real)
}

// runSuites runs the suite on both switch paths: overlays opened in the
// switch (blockdev-snapshot-sync) and nodes added before it.
func runSuites(t *testing.T, b qemutest.Backend) {
	for _, sw := range []transaction.Switch{transaction.SwitchSync, transaction.SwitchPreadd} {
		t.Run(string(sw), func(t *testing.T) { runSuite(t, b, sw) })
	}
}

func dial(t *testing.T, path string) *qmp.Client {
	t.Helper()
	c, err := qmp.Dial(ctx(t), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// rig is one suite case's QEMU, executor and plan.
type rig struct {
	t        *testing.T
	c, obs   *qmp.Client
	dir      string
	exec     *transaction.Executor
	original []qmp.Disk
	sw       transaction.Switch
}

// newRig starts a VM with n disks on backend b; the executor drives its
// first monitor, and the rig observes through the second.
func newRig(t *testing.T, b qemutest.Backend, sw transaction.Switch, n int) *rig {
	vm := qemutest.Start(t, qemutest.Options{Backend: b, Disks: n, Style: qemutest.Blockdev, SecondMonitor: true})
	c := dial(t, vm.QMP)
	r := &rig{t: t, c: c, obs: dial(t, vm.QMP2), dir: vm.Dir, exec: &transaction.Executor{QMP: c, RollbackTimeout: 20 * time.Second}, sw: sw}
	r.original = r.disks()
	return r
}

func (r *rig) disks() []qmp.Disk {
	r.t.Helper()
	d, err := r.obs.Disks(ctx(r.t))
	if err != nil {
		r.t.Fatal(err)
	}
	return d
}

func (r *rig) plan(mode transaction.Mode) *transaction.Plan {
	p := &transaction.Plan{OpID: "cafe0001", Domain: "vm", Mode: mode, Switch: r.sw, Phase: transaction.PhasePrepared}
	for i, d := range r.original {
		p.Disks = append(p.Disks, &transaction.Disk{
			Target: d.Target, Node: d.NodeName, Source: d.File, SourceFormat: d.Format, VirtualSize: d.VirtualSize,
			Overlay: filepath.Join(r.dir, d.Target+".snap"), OverlayNode: transaction.NodeName(p.OpID, i),
			State: transaction.DiskPlanned,
		})
	}
	return p
}

// assertOriginal checks that every disk is back on its original image,
// with no overlay node and no overlay file left.
func (r *rig) assertOriginal() {
	r.t.Helper()
	for i, d := range r.disks() {
		o := r.original[i]
		if d.File != o.File || d.NodeName != o.NodeName || len(d.Backing) != len(o.Backing) {
			r.t.Errorf("disk %s: active %s (%s), want %s (%s)", d.Target, d.File, d.NodeName, o.File, o.NodeName)
		}
	}
	nodes, err := r.obs.QueryNamedBlockNodes(ctx(r.t), true)
	if err != nil {
		r.t.Fatal(err)
	}
	for _, n := range nodes {
		// QEMU names the protocol node of a file it opened itself.
		if strings.HasPrefix(n.NodeName, "qs") || strings.HasSuffix(n.File, ".snap") {
			r.t.Errorf("overlay node %s (%s) left behind", n.NodeName, n.File)
		}
	}
	left, _ := filepath.Glob(filepath.Join(r.dir, "*.snap"))
	if len(left) > 0 {
		r.t.Errorf("overlay files left behind: %v", left)
	}
}

func (r *rig) assertOnOverlays(p *transaction.Plan) {
	r.t.Helper()
	for i, d := range r.disks() {
		pd := p.Disks[i]
		if d.File != pd.Overlay || d.NodeName != pd.OverlayNode || len(d.Backing) == 0 || d.Backing[0].File != pd.Source {
			r.t.Errorf("disk %s: active %s (%s) on %v, want %s on %s", d.Target, d.File, d.NodeName, d.Backing, pd.Overlay, pd.Source)
		}
	}
}

func runSuite(t *testing.T, b qemutest.Backend, sw transaction.Switch) {
	t.Run("merge round: every disk back on its image, files checked with QEMU", func(t *testing.T) {
		r := newRig(t, b, sw, 2)
		p := r.plan(transaction.ModeAtomic)
		if err := r.exec.Prepare(ctx(t), p); err != nil {
			t.Fatal(err)
		}
		if err := r.exec.Switch(ctx(t), p); err != nil {
			t.Fatal(err)
		}
		round := &transaction.MergeRound{Snapshot: "s"}
		for i, d := range p.Disks {
			round.Disks = append(round.Disks, &transaction.MergeDisk{Target: d.Target, Job: transaction.MergeJobID(p.OpID, 0, i),
				Active: true, Top: d.Overlay, Base: d.Source, DeleteFile: true, State: transaction.MergePlanned})
		}
		if _, err := r.exec.ResolveMerge(ctx(t), round); err != nil {
			t.Fatal(err)
		}
		// QEMU uses the overlay, also when it is named through a link;
		// a file no node opens is free.
		link := filepath.Join(r.dir, "link")
		if err := os.Symlink(p.Disks[0].Overlay, link); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct{ path, user string }{
			{p.Disks[0].Overlay, p.Disks[0].OverlayNode}, {link, p.Disks[0].OverlayNode}, {filepath.Join(r.dir, "free"), ""},
		} {
			if user, err := r.exec.FileUser(ctx(t), tc.path); err != nil || user != tc.user {
				t.Errorf("user of %s: %q, %v; want %q", filepath.Base(tc.path), user, err, tc.user)
			}
		}
		var done, total int64
		steps := []func() error{
			func() error { return r.exec.StartCommits(ctx(t), round, 0) },
			func() error {
				return r.exec.AwaitCopied(ctx(t), ctx(t), round, func(d, t int64) { done, total = d, t })
			},
			func() error { return r.exec.CompleteActive(ctx(t), round) },
			func() error { return r.exec.FinalizeCommits(ctx(t), round) },
		}
		for _, step := range steps {
			if err := step(); err != nil {
				t.Fatal(err)
			}
		}
		transaction.ReconcileMerge(round, r.disks())
		// A base that cannot be flushed keeps its top's file: the
		// guest's durable writes would otherwise rest on the page cache.
		moved := round.Disks[1].Base + ".moved"
		if err := os.Rename(round.Disks[1].Base, moved); err != nil {
			t.Fatal(err)
		}
		if err := r.exec.CleanupMerge(ctx(t), round); err == nil {
			t.Error("cleanup with an unflushable base: no error")
		}
		if md := round.Disks[1]; md.FileDeleted || !strings.Contains(md.Keep, "flushed") {
			t.Errorf("disk %s with an unflushable base: file deleted %v, keep %q", md.Target, md.FileDeleted, md.Keep)
		}
		if _, err := os.Stat(round.Disks[1].Top); err != nil {
			t.Errorf("overlay of the unflushable base: %v", err)
		}
		if err := os.Rename(moved, round.Disks[1].Base); err != nil {
			t.Fatal(err)
		}
		if err := r.exec.CleanupMerge(ctx(t), round); err != nil {
			t.Fatal(err)
		}
		for _, md := range round.Disks {
			if md.State != transaction.MergeMerged || !md.FileDeleted {
				t.Errorf("disk %s: %s, file deleted %v", md.Target, md.State, md.FileDeleted)
			}
		}
		if done != total {
			t.Errorf("progress when copied: %d of %d", done, total)
		}
		r.assertOriginal()
		if jobs, err := r.obs.QueryJobs(ctx(t)); err != nil || len(jobs) != 0 {
			t.Errorf("jobs left: %+v, %v", jobs, err)
		}
	})
	t.Run("atomic switch, then full rollback", func(t *testing.T) {
		r := newRig(t, b, sw, 3)
		p := r.plan(transaction.ModeAtomic)
		if err := r.exec.Prepare(ctx(t), p); err != nil {
			t.Fatal(err)
		}
		if err := r.exec.Switch(ctx(t), p); err != nil {
			t.Fatal(err)
		}
		r.assertOnOverlays(p)
		if p.SwitchWindow() <= 0 {
			t.Error("no switch window measured")
		}
		if err := r.exec.Rollback(ctx(t), p); err != nil {
			t.Fatal(err)
		}
		if err := r.exec.Cleanup(ctx(t), p); err != nil {
			t.Fatal(err)
		}
		for _, d := range p.Disks {
			if d.State != transaction.DiskRolledBack {
				t.Errorf("disk %s: %s, want rolled-back", d.Target, d.State)
			}
		}
		r.assertOriginal()
	})

	t.Run("atomic failure of the last action", func(t *testing.T) {
		r := newRig(t, b, sw, 3)
		p := r.plan(transaction.ModeAtomic)
		if err := r.exec.Prepare(ctx(t), p); err != nil {
			t.Fatal(err)
		}
		// QEMU fails the last action for real: its overlay node is gone,
		// or (sync) its file holds no image.
		r.exec.BeforeSwitch = func(*transaction.Disk) error {
			if sw == transaction.SwitchSync {
				return os.WriteFile(p.Disks[2].Overlay, []byte("not an image"), 0o600)
			}
			return r.obs.BlockdevDel(ctx(t), p.Disks[2].OverlayNode)
		}
		err := r.exec.Switch(ctx(t), p)
		var se *transaction.SwitchError
		if !errors.As(err, &se) || se.Partial() || !qmp.IsClass(err, "GenericError") {
			t.Fatalf("got %v, want a non-partial SwitchError from QEMU", err)
		}
		if err := r.exec.Cleanup(ctx(t), p); err != nil {
			t.Fatal(err)
		}
		r.assertOriginal()
	})

	for _, k := range []int{2, 3} {
		t.Run(fmt.Sprintf("sequential failure at disk %d", k), func(t *testing.T) {
			r := newRig(t, b, sw, 3)
			p := r.plan(transaction.ModeSequential)
			if err := r.exec.Prepare(ctx(t), p); err != nil {
				t.Fatal(err)
			}
			r.exec.BeforeSwitch = func(d *transaction.Disk) error {
				if d == p.Disks[k-1] {
					return errors.New("injected")
				}
				return nil
			}
			err := r.exec.Switch(ctx(t), p)
			var se *transaction.SwitchError
			if !errors.As(err, &se) || se.Partial() {
				t.Fatalf("got %v, want a SwitchError with nothing left switched", err)
			}
			for i, o := range se.Disks {
				want := transaction.DiskRolledBack
				if i == k-1 {
					want = transaction.DiskFailed
				} else if i > k-1 {
					want = transaction.DiskPlanned
				}
				if o.Result != want {
					t.Errorf("disk %s: %s, want %s", o.Target, o.Result, want)
				}
			}
			if err := r.exec.Cleanup(ctx(t), p); err != nil {
				t.Fatal(err)
			}
			r.assertOriginal()
		})
	}

	t.Run("rollback failure leaves the disk on its overlay", func(t *testing.T) {
		r := newRig(t, b, sw, 2)
		p := r.plan(transaction.ModeAtomic)
		if err := r.exec.Prepare(ctx(t), p); err != nil {
			t.Fatal(err)
		}
		if err := r.exec.Switch(ctx(t), p); err != nil {
			t.Fatal(err)
		}
		r.exec.AfterCommitStart = func(d *transaction.Disk) error {
			if d == p.Disks[1] {
				return errors.New("injected")
			}
			return nil
		}
		err := r.exec.Rollback(ctx(t), p)
		var re *transaction.RollbackError
		if !errors.Is(err, transaction.ErrRollbackFailed) || !errors.As(err, &re) {
			t.Fatalf("got %v, want a RollbackError", err)
		}
		if p.Disks[0].State != transaction.DiskRolledBack || p.Disks[1].State != transaction.DiskStuck {
			t.Fatalf("states: %s, %s; want rolled-back, stuck", p.Disks[0].State, p.Disks[1].State)
		}
		if err := r.exec.Cleanup(ctx(t), p); err != nil {
			t.Fatal(err)
		}
		disks := r.disks()
		if disks[1].File != p.Disks[1].Overlay {
			t.Errorf("stuck disk: active %s, want its overlay", disks[1].File)
		}
		if _, err := os.Stat(p.Disks[1].Overlay); err != nil {
			t.Errorf("stuck disk's overlay removed: %v", err)
		}
		// A second rollback, as recovery does, finishes the job.
		r.exec.AfterCommitStart = nil
		if err := r.exec.Rollback(ctx(t), p); err != nil {
			t.Fatal(err)
		}
		if err := r.exec.Cleanup(ctx(t), p); err != nil {
			t.Fatal(err)
		}
		r.assertOriginal()
	})

	t.Run("reconcile learns a switch whose reply was lost", func(t *testing.T) {
		r := newRig(t, b, sw, 2)
		p := r.plan(transaction.ModeAtomic)
		if err := r.exec.Prepare(ctx(t), p); err != nil {
			t.Fatal(err)
		}
		// The switch happens behind the executor's back.
		action := qmp.Snapshot(p.Disks[0].Node, p.Disks[0].OverlayNode)
		if sw == transaction.SwitchSync {
			action = qmp.SnapshotSync(p.Disks[0].Node, p.Disks[0].Overlay, p.Disks[0].OverlayNode, raw.NewImageModeExisting)
			// Until the executor hears, the node may exist.
			p.Disks[0].NodeAdded = true
		}
		if err := r.obs.Transaction(ctx(t), action); err != nil {
			t.Fatal(err)
		}
		transaction.Reconcile(p, r.disks())
		if p.Disks[0].State != transaction.DiskSwitched || p.Disks[1].State != transaction.DiskPlanned {
			t.Fatalf("states after reconcile: %s, %s", p.Disks[0].State, p.Disks[1].State)
		}
		if err := r.exec.Rollback(ctx(t), p); err != nil {
			t.Fatal(err)
		}
		if err := r.exec.Cleanup(ctx(t), p); err != nil {
			t.Fatal(err)
		}
		r.assertOriginal()
	})
}

func TestNodeNameFitsQEMU(t *testing.T) {
	for _, i := range []int{0, 23, 999} {
		if n := transaction.NodeName("0123456789abcdef01234567", i); len(n) > 31 {
			t.Errorf("NodeName(..., %d) = %q: %d characters, QEMU takes 31", i, n, len(n))
		}
	}
	if a, b := transaction.NodeName("aaaaaaaa11", 0), transaction.NodeName("bbbbbbbb11", 0); a == b {
		t.Errorf("operations share node name %s", a)
	}
}
