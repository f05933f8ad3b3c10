package driver

import (
	"errors"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"

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
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$", "-test.v")
	cmd.Env = append(os.Environ(),
		"QSNAPD_CRASH_HELPER=1",
		"QSNAPD_STATE="+e.cfg.StateDir,
		"QSNAPD_QMP="+e.vm.QMP,
		"QSNAPD_CRASH_AT="+step,
		"QSNAPD_FAIL_AT="+failAt,
		"QSNAPD_TRANSACTION="+transactionMode,
		"QSNAPD_FLAGS="+strconv.Itoa(int(flags)),
	)
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
