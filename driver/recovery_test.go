package driver

import (
	"errors"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/transaction"
)

// TestCrashHelper is not a test: it is the process that the recovery
// tests start and kill. It attaches a domain, then takes a snapshot with
// a hook that sends itself SIGKILL at the chosen step.
func TestCrashHelper(t *testing.T) {
	if os.Getenv("QSNAPD_CRASH_HELPER") != "1" {
		t.Skip("helper process for the recovery tests")
	}
	cfg := Config{StateDir: os.Getenv("QSNAPD_STATE"), Transaction: os.Getenv("QSNAPD_TRANSACTION")}
	drv, err := Open(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	if _, err := drv.AttachDomain(ctx, DomainConfig{Name: "vm1", QMP: os.Getenv("QSNAPD_QMP"), Agent: os.Getenv("QSNAPD_AGENT")}); err != nil {
		t.Fatal(err)
	}
	crashAt, failAt := os.Getenv("QSNAPD_CRASH_AT"), os.Getenv("QSNAPD_FAIL_AT")
	drv.Hooks.AtStep = func(step string) error {
		switch step {
		case crashAt:
			// Killing ourselves cannot fail, and SIGKILL is not
			// handled: wait for it.
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		case failAt:
			return errors.New("injected")
		}
		return nil
	}
	flags, _ := strconv.Atoi(os.Getenv("QSNAPD_FLAGS"))
	_, err = drv.CreateSnapshot(ctx, "vm1", CreateRequest{XML: snapXML("s1"), Flags: CreateFlags(flags)})
	t.Fatalf("survived step %s: %v", crashAt, err)
}

// crashAt runs a snapshot in a helper process killed at step, then opens
// a driver on the same state, as a restarted daemon would.
func (e *env) crashAt(step, failAt, transactionMode string, flags CreateFlags) {
	e.t.Helper()
	e.killedAt(step, "TestCrashHelper",
		"QSNAPD_CRASH_HELPER=1",
		"QSNAPD_STATE="+e.cfg.StateDir,
		"QSNAPD_QMP="+e.vm.QMP,
		"QSNAPD_CRASH_AT="+step,
		"QSNAPD_FAIL_AT="+failAt,
		"QSNAPD_TRANSACTION="+transactionMode,
		"QSNAPD_FLAGS="+strconv.Itoa(int(flags)),
	)
}

// killedAt runs a helper test in a child process that kills itself at
// step, then reopens the driver on the state it left and waits for
// recovery.
func (e *env) killedAt(step, helper string, env ...string) {
	e.t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+helper+"$", "-test.v")
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		e.t.Fatalf("helper was not killed at %s: %v\n%s", step, err, out)
	}
	e.open()
	if err := e.drv.WaitRecovered(testCtx(e.t), e.name); err != nil {
		e.t.Fatal(err)
	}
}

func checkRecoveryAfterKill(t *testing.T) {
	for _, tc := range []struct {
		name, crashAt, failAt, mode string
		committed                   bool
	}{
		{name: "prepared", crashAt: HookPrepared, mode: "auto"},
		{name: "overlays", crashAt: HookOverlays, mode: "auto"},
		{name: "switching", crashAt: HookSwitching, mode: "auto"},
		{name: "switched", crashAt: HookSwitched, mode: "auto"},
		{name: "committed", crashAt: HookCommitted, mode: "auto", committed: true},
		{name: "sequential mid-switch", crashAt: "switch:vdc", mode: "never"},
		{name: "sequential mid-rollback", crashAt: "rollback:vda", failAt: "switch:vdc", mode: "never"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOpts{disks: 3, style: qemutest.Blockdev, detached: true})
			before := e.world()
			e.crashAt(tc.crashAt, tc.failAt, tc.mode, FlagDiskOnly)

			w := e.world()
			if w.Active != 0 {
				t.Errorf("unfinished operations after recovery: %d", w.Active)
			}
			if !tc.committed {
				e.assertUnchanged(before)
				ops, _ := e.drv.Store().Ops(false)
				if len(ops) != 1 || ops[0].Phase() != transaction.PhaseFailed || ops[0].Error[:len(ErrInterrupted.Error())] != ErrInterrupted.Error() {
					t.Errorf("journal after recovery: %+v", ops)
				}
				return
			}
			if len(w.Snaps) != 1 || w.Current != "s1" {
				t.Errorf("committed snapshot lost: snaps %v, current %q", w.Snaps, w.Current)
			}
			for _, d := range w.Disks {
				if len(d.Backing) != 1 {
					t.Errorf("disk %s not on its overlay after a committed snapshot", d.Target)
				}
			}
		})
	}
}

func checkRecoveryWaitsForQEMU(t *testing.T) {
	e := newEnv(t, envOpts{disks: 2, style: qemutest.Legacy, detached: true})
	before := e.world()
	// Crash while switched; the restarted daemon must roll back even
	// though it had to reconnect first.
	e.crashAt(HookSwitched, "", "auto", FlagDiskOnly)
	e.assertUnchanged(before)
	// A second restart finds nothing to do.
	e.restart()
	e.assertUnchanged(before)
}

func itoa(i int) string { return strconv.Itoa(i) }

// TestDeleteCrashHelper is not a test: it is the process that the
// delete recovery tests start and kill. It opens the driver on a state
// where the domain is registered, then deletes a snapshot with a hook
// that sends itself SIGKILL at the n-th time it reaches the chosen step
// ("step" or "step#n").
func TestDeleteCrashHelper(t *testing.T) {
	if os.Getenv("QSNAPD_DELETE_HELPER") != "1" {
		t.Skip("helper process for the delete recovery tests")
	}
	drv, err := Open(Config{StateDir: os.Getenv("QSNAPD_STATE")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	if err := drv.WaitRecovered(ctx, "vm1"); err != nil {
		t.Fatal(err)
	}
	step, nth := os.Getenv("QSNAPD_CRASH_AT"), 1
	if s, n, ok := strings.Cut(step, "#"); ok {
		step, nth = s, atoi(n)
	}
	drv.Hooks.AtStep = func(s string) error {
		if s == step {
			nth--
			if nth == 0 {
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {}
			}
		}
		return nil
	}
	flags := DeleteFlags(atoi(os.Getenv("QSNAPD_FLAGS")))
	_, err = drv.DeleteSnapshot(ctx, "vm1", os.Getenv("QSNAPD_DELETE"), DeleteRequest{Flags: flags})
	t.Fatalf("survived step %s: %v", step, err)
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// crashDeleteAt closes the env's driver, deletes name in a helper
// process killed at step, then opens a driver on the same state, as a
// restarted daemon would, and waits for its recovery.
func (e *env) crashDeleteAt(step, name string, flags DeleteFlags) {
	e.t.Helper()
	if err := e.drv.Close(); err != nil {
		e.t.Fatal(err)
	}
	e.killedAt(step, "TestDeleteCrashHelper",
		"QSNAPD_DELETE_HELPER=1",
		"QSNAPD_STATE="+e.cfg.StateDir,
		"QSNAPD_CRASH_AT="+step,
		"QSNAPD_DELETE="+name,
		"QSNAPD_FLAGS="+strconv.Itoa(int(flags)),
	)
}

// checkDeleteRecoveryAfterKill kills the daemon at every journaled step
// of a delete. Before the point of no return the restarted daemon
// cancels the jobs and nothing changed; after it, the merge is
// finished: chains, files and metadata agree either way.
func checkDeleteRecoveryAfterKill(t *testing.T) {
	type outcome int
	const (
		unchanged outcome = iota
		merged
	)
	for _, snap := range []string{"s2", "s3"} {
		for _, tc := range []struct {
			step string
			want outcome
		}{
			{HookDeletePlanned, unchanged},
			{HookDeleteStarted, unchanged},
			{HookDeleteCopied, unchanged},
			{HookDeleteFinalizing, merged},
			{HookDeleteCompleted, merged},
			{HookDeleteFinalized, merged},
			{HookDeleteCleaned, merged},
			{HookDeleteRecorded, merged},
		} {
			t.Run(snap+"/"+strings.TrimPrefix(tc.step, "delete:"), func(t *testing.T) {
				e := newEnv(t, envOpts{disks: 2, style: qemutest.Blockdev})
				for _, s := range []string{"s1", "s2", "s3"} {
					e.mustCreate(snapXML(s), FlagDiskOnly|FlagAtomic)
				}
				before := e.world()
				start := time.Now()
				e.crashDeleteAt(tc.step, snap, 0)
				waitFor(t, func() bool { return e.world().Active == 0 }, "recovery")
				t.Logf("recovered %v after the restart", time.Since(start))
				ops, _ := e.drv.Store().Ops(false)
				op := ops[len(ops)-1]
				if tc.want == unchanged {
					e.assertUnchanged(before)
					if op.Phase() != transaction.PhaseFailed || !strings.HasPrefix(op.Error, ErrInterrupted.Error()) {
						t.Errorf("journal: phase %s, error %q", op.Phase(), op.Error)
					}
					// The overlays are empty: the jobs copied nothing.
					e.wantMark(snap, "")
					return
				}
				chains := map[string][]string{"vda": {"vda.s3", "vda.s2", "vda.s1", "vda.qcow2"}, "vdb": {"vdb.s3", "vdb.s2", "vdb.s1", "vdb.qcow2"}}
				for tg := range chains {
					chains[tg] = slices.DeleteFunc(chains[tg], func(f string) bool { return f == tg+"."+snap })
				}
				e.wantChains(chains)
				e.wantGone("vda."+snap, "vdb."+snap)
				e.wantNoStrayNodes()
				checkRecordsMatchChains(t, e)
				model := newTreeModel()
				for _, s := range []string{"s1", "s2", "s3"} {
					model.create(s)
				}
				model.delete(snap)
				e.wantTree(model.String())
				if w := e.world(); w.Jobs != 0 {
					t.Errorf("%d jobs left", w.Jobs)
				}
				if op.Phase() != transaction.PhaseDone {
					t.Errorf("journal: phase %s, error %q", op.Phase(), op.Error)
				}
			})
		}
	}
	// A merge the restarted daemon cancels after its jobs wrote into
	// the bases is marked, with the journal's end. An active commit
	// copies only on real QEMU: the fake's reports no progress.
	for _, snap := range []string{"s2", "s3"} {
		t.Run("marked/"+snap, func(t *testing.T) {
			e := newEnv(t, envOpts{disks: 2, style: qemutest.Blockdev})
			ps := patterns{}
			for _, s := range []string{"s1", "s2", "s3"} {
				e.mustCreate(snapXML(s), FlagDiskOnly|FlagAtomic)
				if s == snap {
					e.writeData(ps, "vda", 1<<20, 0x41)
				}
			}
			e.crashDeleteAt(HookDeleteCopied, snap, 0)
			waitFor(t, func() bool { return e.world().Active == 0 }, "recovery")
			ops, _ := e.drv.Store().Ops(false)
			op := ops[len(ops)-1]
			want, note := "", ""
			if snap == "s2" || e.vm.Real() {
				want, note = op.ID+":vda", "snapshot '"+snap+"' is marked merge-interrupted"
			}
			e.wantMark(snap, want)
			if op.Phase() != transaction.PhaseFailed || !strings.HasPrefix(op.Error, ErrInterrupted.Error()) ||
				strings.Contains(op.Error, "marked") != (note != "") || !strings.Contains(op.Error, note) {
				t.Errorf("journal: phase %s, error %q", op.Phase(), op.Error)
			}
			e.wantTree("<-s1 s1<-s2 s2<-s3 current=s3")
			e.checkData(ps)
			e.mustDelete(snap, 0)
			e.checkData(ps)
		})
	}

	// With CHILDREN, the rounds before the crash stay deleted; the
	// round under way is cancelled or finished; later ones are not run.
	for _, tc := range []struct {
		step, tree string
		chain      []string
	}{
		{HookDeleteCopied + "#2", "<-s1 s1<-s2 current=s2", []string{"vda.s2", "vda.s1", "vda.qcow2"}},
		{HookDeleteFinalized + "#2", "<-s1 current=s1", []string{"vda.s1", "vda.qcow2"}},
	} {
		t.Run("children/"+tc.step, func(t *testing.T) {
			e := newEnv(t, envOpts{disks: 1, style: qemutest.Legacy})
			for _, s := range []string{"s1", "s2", "s3"} {
				e.mustCreate(snapXML(s), FlagDiskOnly|FlagAtomic)
			}
			e.crashDeleteAt(tc.step, "s1", DeleteChildren)
			waitFor(t, func() bool { return e.world().Active == 0 }, "recovery")
			e.wantTree(tc.tree)
			e.wantChains(map[string][]string{"vda": tc.chain})
			e.wantGone("vda.s3")
			e.wantNoStrayNodes()
			checkRecordsMatchChains(t, e)
			ops, _ := e.drv.Store().Ops(false)
			if op := ops[len(ops)-1]; op.Phase() != transaction.PhaseFailed || !strings.HasPrefix(op.Error, ErrInterrupted.Error()) {
				t.Errorf("journal: phase %s, error %q", op.Phase(), op.Error)
			}
		})
	}
}
