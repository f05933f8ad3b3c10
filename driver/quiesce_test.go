package driver

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/guestagent"
	"github.com/qsnapd/qsnapd/internal/testing/qmpproxy"
	"github.com/qsnapd/qsnapd/transaction"
)

// Quiesce paths with the fake agent; the real guest proves the
// consistency itself (guest_test.go).

const testMaxFreeze = 300 * time.Millisecond

func quiesceEnv(t *testing.T, proxy bool) *env {
	return newEnv(t, envOpts{disks: 2, agent: true, proxy: proxy, cfg: func(c *Config) {
		c.MaxFreeze = testMaxFreeze
		c.AgentTimeout = 300 * time.Millisecond
		c.ThawTimeout = 500 * time.Millisecond
	}})
}

func (e *env) createQuiesced(mode QuiesceMode) (*CreateResult, error) {
	return e.drv.CreateSnapshot(testCtx(e.t), e.name, CreateRequest{XML: snapXML("q"), Flags: FlagDiskOnly | FlagAtomic | FlagQuiesce, Quiesce: mode})
}

func hasIndication(res *CreateResult, code string) bool {
	for _, ind := range res.Indications {
		if ind.Code == code {
			return true
		}
	}
	return false
}

func checkQuiesceSuccessWithFakeAgent(t *testing.T) {
	e := quiesceEnv(t, false)
	// The held channel connects and syncs at attach, asking nothing.
	waitFor(t, func() bool { return e.drv.Domains()[0].AgentState == AgentResponsive }, "the agent channel synced")
	if calls := asked(e.agent); len(calls) != 0 {
		t.Errorf("agent asked %v before any operation", calls)
	}
	res, err := e.createQuiesced("")
	if st := e.drv.Domains()[0].AgentState; st != AgentResponsive {
		t.Errorf("agent state after a quiesced snapshot: %s", st)
	}
	if err != nil {
		t.Fatal(err)
	}
	if !res.Quiesced || !hasIndication(res, IndQuiesced) || e.agent.Frozen() {
		t.Errorf("quiesced %v, indications %+v, still frozen %v", res.Quiesced, res.Indications, e.agent.Frozen())
	}
	calls := strings.Join(e.agent.Calls(), " ")
	if !strings.Contains(calls, "guest-fsfreeze-freeze guest-fsfreeze-thaw") {
		t.Errorf("nothing but the switch may separate freeze and thaw: %s", calls)
	}
	if fr, _ := e.drv.Store().Freezes(); len(fr) != 0 {
		t.Errorf("freeze records left: %+v", fr)
	}
	// Without QUIESCE nothing is frozen, and the result says so.
	res, err = e.create(snapXML("plain"), FlagDiskOnly)
	if err != nil || res.Quiesced || res.Indications[0].Code != IndNotRequested {
		t.Errorf("plain snapshot: %+v, %v", res, err)
	}
}

// checkQuiesceFailures covers every way a freeze can fail: require
// refuses with no change; prefer takes a crash-consistent snapshot and
// says why. The guest is thawed in every case.
func checkQuiesceFailures(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault func(e *env)
		code  string
		kind  error
	}{
		{"no agent running", func(e *env) { e.agent.Silent(true) }, IndAgentUnresponsive, guestagent.ErrUnresponsive},
		{"freeze disabled", func(e *env) { e.agent.Disable("guest-fsfreeze-freeze") }, IndFreezeDisabled, guestagent.ErrDisabled},
		{"freeze hook fails", func(e *env) { e.agent.FailFreeze("fsfreeze hook has failed with status 1") }, IndFreezeFailed, ErrOperationFailed},
		{"freeze hangs after freezing", func(e *env) { e.agent.HangAfterEffect("guest-fsfreeze-freeze") }, IndFreezeTimeout, guestagent.ErrUnresponsive},
		{"EOF mid-freeze", func(e *env) { e.agent.CloseAfterEffect("guest-fsfreeze-freeze") }, IndNoAgent, guestagent.ErrNotConnected},
		{"guest frozen by someone else", func(e *env) { e.agent.SetFrozen(true) }, IndAlreadyFrozen, ErrOperationInvalid},
	} {
		for _, mode := range []QuiesceMode{QuiesceRequire, QuiescePrefer} {
			t.Run(tc.name+"/"+string(mode), func(t *testing.T) {
				e := quiesceEnv(t, false)
				before := e.world()
				tc.fault(e)
				res, err := e.createQuiesced(mode)
				if tc.name == "freeze hangs after freezing" || tc.name == "EOF mid-freeze" {
					// The first thaw meets the same fault; the daemon
					// keeps trying, and gets through once it clears.
					e.agent.Release()
					waitFor(t, func() bool { return !e.agent.Frozen() && !e.drv.Domains()[0].Freeze.Frozen }, "thaw retried")
				}
				if tc.name == "no agent running" {
					if st := e.drv.Domains()[0].AgentState; st != AgentUnresponsive {
						t.Errorf("agent state: %s, want %s", st, AgentUnresponsive)
					}
				}
				if mode == QuiesceRequire {
					if !errors.Is(err, ErrQuiesce) || !errors.Is(err, tc.kind) {
						t.Fatalf("got %v, want ErrQuiesce and %v", err, tc.kind)
					}
					e.assertUnchanged(before)
				} else {
					if err != nil {
						t.Fatal(err)
					}
					if res.Quiesced || !hasIndication(res, tc.code) {
						t.Errorf("quiesced %v, indications %+v; want %s", res.Quiesced, res.Indications, tc.code)
					}
					if res.Disks[0].Result != transaction.DiskSwitched {
						t.Errorf("prefer did not take the snapshot: %+v", res.Disks)
					}
				}
				if tc.name == "guest frozen by someone else" {
					if !e.agent.Frozen() {
						t.Error("the daemon thawed a freeze that is not its own")
					}
				} else if e.agent.Frozen() {
					t.Error("guest left frozen")
				}
			})
		}
	}
}

func checkQuiesceDeadline(t *testing.T) {
	for _, mode := range []QuiesceMode{QuiesceRequire, QuiescePrefer} {
		t.Run(string(mode), func(t *testing.T) {
			e := quiesceEnv(t, true)
			before := e.world()
			// QEMU takes longer to switch than the guest may stay frozen.
			e.proxy.Add(qmpproxy.Rule{Command: "transaction", Times: 1, Action: qmpproxy.Delay{D: 3 * testMaxFreeze}})
			res, err := e.createQuiesced(mode)
			if e.agent.Frozen() {
				t.Fatal("guest still frozen")
			}
			if mode == QuiesceRequire {
				if !errors.Is(err, ErrQuiesce) || !strings.Contains(err.Error(), IndDeadlineExceeded) {
					t.Fatalf("got %v, want a quiesce deadline error", err)
				}
				e.assertUnchanged(before)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.Quiesced || !hasIndication(res, IndDeadlineExceeded) {
				t.Errorf("quiesced %v, indications %+v", res.Quiesced, res.Indications)
			}
			// Thawed at the deadline, not when the switch ended.
			if res.Freeze > testMaxFreeze+200*time.Millisecond || res.Switch < 3*testMaxFreeze {
				t.Errorf("freeze window %v (deadline %v), switch %v", res.Freeze, testMaxFreeze, res.Switch)
			}
		})
	}
}

func checkQuiesceHoldExpired(t *testing.T) {
	for _, mode := range []QuiesceMode{QuiesceRequire, QuiescePrefer} {
		t.Run(string(mode), func(t *testing.T) {
			e := quiesceEnv(t, false)
			before := e.world()
			e.agent.SetVSS(time.Microsecond) // Windows released writes before the thaw
			res, err := e.createQuiesced(mode)
			if mode == QuiesceRequire {
				if !errors.Is(err, ErrQuiesce) || !strings.Contains(err.Error(), IndHoldExpired) {
					t.Fatalf("got %v, want a hold-expired quiesce error", err)
				}
				e.assertUnchanged(before)
				return
			}
			if err != nil || res.Quiesced || !hasIndication(res, IndHoldExpired) {
				t.Errorf("got %+v, %v; want a kept, unquiesced snapshot", res, err)
			}
		})
	}
}

func checkThawFailureIsRetried(t *testing.T) {
	e := quiesceEnv(t, false)
	e.agent.HangOn("guest-fsfreeze-thaw")
	res, err := e.createQuiesced("")
	if err != nil {
		t.Fatal(err)
	}
	if !hasIndication(res, IndThawFailed) {
		t.Errorf("indications %+v, want thaw-failed", res.Indications)
	}
	info := e.drv.Domains()[0].Freeze
	if !info.Frozen || !info.ThawPending || !e.agent.Frozen() {
		t.Fatalf("while the thaw fails: %+v, agent frozen %v", info, e.agent.Frozen())
	}
	if fr, _ := e.drv.Store().Freezes(); len(fr) != 1 {
		t.Errorf("freeze record while thaw pending: %+v", fr)
	}
	e.agent.Release()
	waitFor(t, func() bool { return !e.agent.Frozen() && !e.drv.Domains()[0].Freeze.Frozen }, "retried thaw")
	if fr, _ := e.drv.Store().Freezes(); len(fr) != 0 {
		t.Errorf("freeze record after the thaw: %+v", fr)
	}
}

func checkFSFreezeOwnership(t *testing.T) {
	e := explicitFreezeEnv(t)
	ctx := testCtx(t)
	n, err := e.drv.FSFreeze(ctx, e.name, []string{"/mnt/data1"}, 10*time.Second)
	if err != nil || n != 1 || !e.agent.Frozen() {
		t.Fatalf("fsfreeze: %d, %v", n, err)
	}
	st, err := e.drv.FSStatus(ctx, e.name)
	if err != nil || !st.Frozen || st.Owner != OwnerFSFreeze || st.Agent != "frozen" {
		t.Errorf("fsstatus: %+v, %v", st, err)
	}
	if _, err := e.drv.FSFreeze(ctx, e.name, nil, 0); !errors.Is(err, ErrOperationInvalid) {
		t.Errorf("second fsfreeze: %v", err)
	}
	// A QUIESCE snapshot is refused and does not thaw the caller's freeze.
	before := e.world()
	if _, err := e.createQuiesced(QuiesceRequire); !errors.Is(err, ErrOperationInvalid) {
		t.Errorf("QUIESCE on a guest frozen by fsfreeze: %v", err)
	}
	e.assertUnchanged(before)
	// Without QUIESCE the snapshot goes ahead; the guest stays frozen.
	if _, err := e.create(snapXML("while-frozen"), FlagDiskOnly); err != nil {
		t.Errorf("plain snapshot of a frozen guest: %v", err)
	}
	if !e.agent.Frozen() {
		t.Error("the snapshot thawed the caller's freeze")
	}
	if n, err := e.drv.FSThaw(ctx, e.name); err != nil || n != 1 || e.agent.Frozen() {
		t.Errorf("fsthaw: %d, %v", n, err)
	}
	if st, _ := e.drv.FSStatus(ctx, e.name); st.Frozen || st.Agent != "thawed" {
		t.Errorf("after fsthaw: %+v", st)
	}
	// The auto-thaw deadline applies to explicit freezes too.
	if _, err := e.drv.FSFreeze(ctx, e.name, nil, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return !e.agent.Frozen() && !e.drv.Domains()[0].Freeze.Frozen }, "auto-thaw")
}

func checkFrozenGuestThawedAfterRestart(t *testing.T) {
	e := explicitFreezeEnv(t)
	if _, err := e.drv.FSFreeze(testCtx(t), e.name, nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	// A daemon that stops without thawing (as a crash would) leaves the
	// record; the next one thaws at once.
	e.drv.cancel() // stop the timers' context without thawing
	e.restartNoThaw()
	waitFor(t, func() bool { return !e.agent.Frozen() }, "thaw by the restarted daemon")
	waitFor(t, func() bool { fr, _ := e.drv.Store().Freezes(); return len(fr) == 0 }, "freeze record removed")
}

// restartNoThaw closes the store and opens a new driver, leaving the
// old one's freeze unthawed, as a crash would.
func (e *env) restartNoThaw() {
	e.t.Helper()
	old := e.drv
	for _, dom := range old.domains {
		dom.mu.Lock()
		if gf := dom.freeze; gf != nil && gf.timer != nil {
			gf.timer.Stop()
		}
		dom.mu.Unlock()
	}
	if err := old.Close(); err != nil {
		e.t.Fatal(err)
	}
	e.open()
	_ = context.Background
}
