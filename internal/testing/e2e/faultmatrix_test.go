package e2e

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
)

// The fault matrix (issue 12): every fault a snapshot or a merge can
// meet, each in a scenario of its own (a paused q35 QEMU with two
// disks, the QMP proxy in front of it, the fake agent and bin/qsnapd),
// and after each the same invariants, checked from outside: the
// second monitor, the files and the API (faultcheck_test.go).

// Switch modes.
const (
	modeAtomic     = "atomic"     // one QMP transaction
	modeSequential = "sequential" // --transaction=never: disk by disk
)

// Faults.
const (
	// At a QMP command, through the proxy.
	faultQMPError    = "qmp-error"    // QEMU answers with an error, doing nothing
	faultLostCommand = "lost-command" // the command never reaches QEMU, and no reply comes
	faultLostReply   = "lost-reply"   // QEMU runs the command, its reply is lost
	faultEOF         = "eof"          // QEMU runs the command, the connection breaks before the reply
	faultQEMUKilled  = "qemu-killed"  // QEMU runs the command, the guest writes, QEMU dies before the reply
	// In the guest agent, at the freeze.
	faultAgentHang   = "agent-hang"      // the freeze freezes, and the agent hangs until after the answer
	faultFreezeError = "freeze-error"    // the freeze fails, as a failing fsfreeze hook does
	faultHoldExpiry  = "vss-hold-expiry" // Windows VSS stops holding writes before the thaw
	faultAgentEOF    = "agent-eof"       // the freeze freezes, then the connection breaks
	// The daemon, SIGKILLed at a switch command, then restarted on the
	// same state directory as systemd would.
	faultKillFrozen = "sigkill-frozen"      // the guest frozen, the switch not sent to QEMU
	faultKillSent   = "sigkill-switch-sent" // the switch sent and run, its reply not yet read
)

// qmpFaults are the faults at each switch command.
var qmpFaults = []string{faultQMPError, faultLostCommand, faultLostReply, faultEOF, faultQEMUKilled}

// scenario is one row of the matrix.
type scenario struct {
	name string
	// merge is a snapshot delete merging s1 back into the images below;
	// otherwise the scenario creates s1.
	merge   bool
	mode    string
	quiesce string // api.QuiesceSkip, QuiesceRequire (the QUIESCE flag) or QuiescePrefer
	fault   string
	// cmd is the QMP command the fault is at, nth which of them (from
	// 1, counted from when the fault is set); "" for the agent's
	// faults but the hold expiry, which delays the first switch.
	cmd string
	nth int
}

// at is a QMP command and which of them.
type at struct {
	cmd string
	nth int
}

// switchCommands are a snapshot's switch commands, for two disks. A
// plain snapshot's overlays enter QEMU in the switch itself
// (blockdev-snapshot-sync, in the transaction or alone); one that
// quiesces (or prefers to) adds their nodes before the freeze, and
// blockdev-snapshot attaches them.
func switchCommands(mode, quiesce string) []at {
	if mode == modeAtomic {
		return []at{{"transaction", 1}}
	}
	cmd := "blockdev-snapshot"
	if quiesce == api.QuiesceSkip {
		cmd = "blockdev-snapshot-sync"
	}
	return []at{{cmd, 1}, {cmd, 2}}
}

// mergeCommands are where the merge's faults hit: the second disk's
// block-commit while the first disk's job runs, and the first
// job-complete, past the point of no return.
var mergeCommands = []at{{"block-commit", 2}, {"job-complete", 1}}

// faultMatrix lists every scenario.
func faultMatrix() []scenario {
	var out []scenario
	add := func(sc scenario) {
		q := map[string]string{api.QuiesceSkip: "plain", api.QuiesceRequire: "quiesced", api.QuiescePrefer: "prefer"}[sc.quiesce]
		sc.name = sc.mode + "/" + q + "/" + sc.fault
		if sc.merge {
			sc.name = "merge/" + sc.fault
		}
		if sc.cmd != "" && sc.fault != faultHoldExpiry {
			sc.name += fmt.Sprintf("@%s#%d", sc.cmd, sc.nth)
		}
		out = append(out, sc)
	}
	for _, mode := range []string{modeAtomic, modeSequential} {
		for _, q := range []string{api.QuiesceSkip, api.QuiesceRequire} {
			for _, f := range qmpFaults {
				for _, c := range switchCommands(mode, q) {
					add(scenario{mode: mode, quiesce: q, fault: f, cmd: c.cmd, nth: c.nth})
				}
			}
		}
		for _, q := range []string{api.QuiesceRequire, api.QuiescePrefer} {
			for _, f := range []string{faultAgentHang, faultFreezeError, faultHoldExpiry, faultAgentEOF} {
				sc := scenario{mode: mode, quiesce: q, fault: f}
				if f == faultHoldExpiry {
					first := switchCommands(mode, q)[0]
					sc.cmd, sc.nth = first.cmd, first.nth
				}
				add(sc)
			}
		}
		first := switchCommands(mode, api.QuiesceRequire)[0]
		add(scenario{mode: mode, quiesce: api.QuiesceRequire, fault: faultKillFrozen, cmd: first.cmd, nth: first.nth})
		for _, q := range []string{api.QuiesceSkip, api.QuiesceRequire} {
			cmds := switchCommands(mode, q)
			last := cmds[len(cmds)-1]
			add(scenario{mode: mode, quiesce: q, fault: faultKillSent, cmd: last.cmd, nth: last.nth})
		}
	}
	for _, f := range []string{faultQMPError, faultEOF, faultQEMUKilled} {
		for _, c := range mergeCommands {
			add(scenario{merge: true, mode: modeAtomic, quiesce: api.QuiesceSkip, fault: f, cmd: c.cmd, nth: c.nth})
		}
	}
	return out
}

// Figures of the daemon that the scenarios' lengths follow.
const (
	transactionCeiling = 60 * time.Second // the QMP client's for transaction
	blockdevCeiling    = 30 * time.Second // and for blockdev-*, block-* and job-*
	reconnectWait      = 10 * time.Second // --reconnect-wait's default
	matrixMaxFreeze    = 4 * time.Second  // the scenarios' --max-freeze
)

// cost is about how long a scenario waits on the daemon's timers: the
// longest start first, so that they overlap the short ones.
func (sc scenario) cost() time.Duration {
	switch sc.fault {
	case faultLostCommand, faultLostReply:
		if sc.cmd == "transaction" {
			return transactionCeiling
		}
		return blockdevCeiling
	case faultQEMUKilled:
		return reconnectWait
	case faultAgentHang:
		return matrixMaxFreeze
	}
	return 0
}

// matrixParallel is how many scenarios run at once: each has its own
// QEMU, proxy, agent and daemon, and most of them wait on timers.
const matrixParallel = 4

// verdict is how a scenario ended.
type verdict struct {
	name       string
	answer     string
	path       string // sync or preadd; "" for a merge
	disks      string
	violations []string
}

// TestFaultMatrix runs every scenario of the matrix, several at a
// time, prints a line for each and a summary, and fails if any broke
// an invariant.
func TestFaultMatrix(t *testing.T) {
	if testing.Short() {
		t.Skip("the fault matrix starts a QEMU and a daemon per scenario and takes minutes: skipped under -short")
	}
	qemutest.Require(t)
	scenarios := faultMatrix()
	order := make([]int, len(scenarios))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(scenarios[b].cost(), scenarios[a].cost()) })
	queue := make(chan int, len(order))
	for _, i := range order {
		queue <- i
	}
	close(queue)

	start := time.Now()
	verdicts := make([]verdict, len(scenarios))
	// Subtests run from several goroutines, not with t.Parallel, so
	// that the bound does not depend on -parallel (GOMAXPROCS).
	var wg sync.WaitGroup
	for range matrixParallel {
		wg.Go(func() {
			for i := range queue {
				sc := scenarios[i]
				t.Run(sc.name, func(t *testing.T) {
					verdicts[i] = verdict{name: sc.name, answer: "-", violations: []string{"the scenario did not finish: its rig failed"}}
					verdicts[i] = runScenario(t, sc)
				})
			}
		})
	}
	wg.Wait()

	ran, violations := 0, 0
	var listed []string
	for _, v := range verdicts {
		if v.name == "" {
			continue // not selected by -run
		}
		ran++
		state := "ok"
		if len(v.violations) > 0 {
			violations += len(v.violations)
			state = fmt.Sprintf("VIOLATED (%d)", len(v.violations))
			for _, msg := range v.violations {
				listed = append(listed, v.name+": "+msg)
			}
		}
		t.Logf("%-52s %-34s %-6s %-44s %s", v.name, v.answer, cmp.Or(v.path, "-"), v.disks, state)
	}
	if len(listed) > 0 {
		t.Logf("violations:\n%s", strings.Join(listed, "\n"))
	}
	t.Logf("wall time %v, %d scenarios at a time", time.Since(start).Round(time.Second), matrixParallel)
	summary := t.Logf
	if violations > 0 {
		summary = t.Errorf
	}
	summary("%d scenarios, %d violations", ran, violations)
}

// runScenario sets up a scenario's rig, runs its operation under its
// fault and checks the invariants.
func runScenario(t *testing.T, sc scenario) verdict {
	r := newRig(t, sc)
	var a answer
	if sc.merge {
		a = r.deleteUnderFault()
	} else {
		a = r.createUnderFault()
	}
	v := r.check(a)
	for _, msg := range v.violations {
		t.Errorf("violation: %s", msg)
	}
	return v
}
