package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/guestagent"
	"github.com/qsnapd/qsnapd/guestagent/agentfake"
	"github.com/qsnapd/qsnapd/internal/testing/testguest"
	"github.com/qsnapd/qsnapd/qmp"
)

// The agent channel: held between operations (the default) or opened
// per operation; the agent's pre-freeze check overlapping the prepare
// step. With the fake agent here, and with a real guest whose qemu-ga
// restarts and reboots at the end.

// asked is what the agent was asked, the channel's syncs left out.
func asked(a *agentfake.Agent) []string {
	var out []string
	for _, c := range a.Calls() {
		if c != "guest-sync" && c != "guest-sync-delimited" {
			out = append(out, c)
		}
	}
	return out
}

const chanAgentTimeout = 300 * time.Millisecond

func agentChanEnv(t *testing.T, channel string, agentTimeout time.Duration) *env {
	return newEnv(t, envOpts{disks: 2, agent: true, agentChannel: channel, cfg: func(c *Config) {
		c.AgentTimeout = agentTimeout
		c.ThawTimeout = 2 * agentTimeout
	}})
}

func (e *env) agentState() string {
	e.t.Helper()
	info, err := e.drv.DomainInfo(e.name)
	if err != nil {
		e.t.Fatal(err)
	}
	return info.AgentState
}

func (e *env) createNamed(name string, mode QuiesceMode) (*CreateResult, error) {
	return e.drv.CreateSnapshot(testCtx(e.t), e.name, CreateRequest{XML: snapXML(name), Flags: FlagDiskOnly | FlagAtomic | FlagQuiesce, Quiesce: mode})
}

// otherClientPing is another manager trying the agent socket.
func otherClientPing(path string) error {
	c := guestagent.New(path, guestagent.Options{Timeout: chanAgentTimeout})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return c.Ping(ctx)
}

// checkAgentChannelHeld: one connection, synced at attach, serves every
// operation, each of which checks it with one guest-sync; the listing
// follows the channel live and asks the agent nothing.
func checkAgentChannelHeld(t *testing.T) {
	e := agentChanEnv(t, "", chanAgentTimeout)
	waitFor(t, func() bool { return e.agentState() == AgentResponsive }, "the held channel synced at attach")
	if info, _ := e.drv.DomainInfo(e.name); info.AgentChannel != AgentHold {
		t.Errorf("agent channel %q, want %q", info.AgentChannel, AgentHold)
	}
	for i := range 3 {
		res, err := e.createNamed(fmt.Sprintf("q%d", i), QuiesceRequire)
		if err != nil || !res.Quiesced {
			t.Fatalf("snapshot %d: %+v, %v", i, res, err)
		}
	}
	if n := e.agent.Clients(); n != 1 {
		t.Errorf("%d connections to the agent, want the one held", n)
	}
	want := []string{"guest-sync-delimited"}
	for range 3 {
		want = append(want, "guest-sync", "guest-fsfreeze-status", "guest-info", "guest-fsfreeze-freeze", "guest-fsfreeze-thaw")
	}
	if got := e.agent.Calls(); !slices.Equal(got, want) {
		t.Errorf("agent calls:\n got %v\nwant %v", got, want)
	}
	// A listing reads the channel's state: no guest I/O.
	calls := len(e.agent.Calls())
	for range 100 {
		_ = e.drv.Domains()
		if _, err := e.drv.DomainInfo(e.name); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(e.agent.Calls()); n != calls {
		t.Errorf("listings cost %d agent commands", n-calls)
	}
	// QEMU serves one client at a time: nobody else gets through.
	if err := otherClientPing(e.agent.Path); !errors.Is(err, guestagent.ErrUnresponsive) {
		t.Errorf("another client while the channel is held: %v, want ErrUnresponsive", err)
	}

	// The connection ends, with no operation under way: it is replaced
	// at once, unasked (after the other client's, which waited in the
	// socket's backlog and left).
	e.agent.Hangup()
	waitFor(t, func() bool { return e.agent.Clients() == 3 && e.agentState() == AgentResponsive }, "the channel replaced")
	// The agent goes away: the listing says so without an operation.
	path := e.agent.Path
	if err := e.agent.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return e.agentState() == AgentNotConnected }, "not-connected in the listing")
	// It comes back: the holder reconnects within its backoff.
	a, err := agentfake.Start(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	waitFor(t, func() bool { return a.Clients() == 1 && e.agentState() == AgentResponsive }, "the channel reconnected")
	if res, err := e.createNamed("back", QuiesceRequire); err != nil || !res.Quiesced {
		t.Fatalf("snapshot on the new channel: %+v, %v", res, err)
	}
	if n := a.Clients(); n != 1 {
		t.Errorf("%d connections to the new agent, want 1", n)
	}
}

// checkAgentChannelPerOperation: the socket is released after each
// operation, so that another client gets the agent in between.
func checkAgentChannelPerOperation(t *testing.T) {
	e := agentChanEnv(t, AgentPerOperation, chanAgentTimeout)
	time.Sleep(10 * e.cfg.ReconnectMin)
	if n := e.agent.Clients(); n != 0 {
		t.Errorf("%d connections before any operation, want none", n)
	}
	info, _ := e.drv.DomainInfo(e.name)
	if info.AgentChannel != AgentPerOperation || info.AgentState != AgentUnknown {
		t.Errorf("channel %q, state %q; want %q, %q", info.AgentChannel, info.AgentState, AgentPerOperation, AgentUnknown)
	}
	ctx := testCtx(t)
	ops := []struct {
		name string
		run  func() error
	}{
		{"quiesced snapshot", func() error { _, err := e.createNamed("q1", QuiesceRequire); return err }},
		{"fsfreeze", func() error { _, err := e.drv.FSFreeze(ctx, e.name, nil, 0); return err }},
		{"fsstatus", func() error { _, err := e.drv.FSStatus(ctx, e.name); return err }},
		{"fsthaw", func() error { _, err := e.drv.FSThaw(ctx, e.name); return err }},
		{"prefer snapshot", func() error { _, err := e.createNamed("q2", QuiescePrefer); return err }},
	}
	for i, op := range ops {
		if err := op.run(); err != nil {
			t.Fatalf("%s: %v", op.name, err)
		}
		if err := otherClientPing(e.agent.Path); err != nil {
			t.Errorf("another client after the %s: %v; the channel was not released", op.name, err)
		}
		if n, want := e.agent.Clients(), 2*(i+1); n != want {
			t.Errorf("after the %s: %d connections, want %d (one per operation, one per other client)", op.name, n, want)
		}
	}
	if st := e.agentState(); st != AgentResponsive {
		t.Errorf("agent state after the operations: %s, want %s", st, AgentResponsive)
	}
	if e.agent.Frozen() {
		t.Error("guest left frozen")
	}
}

// checkAgentChannelStaleReplies: what a timed-out command or anyone
// else left in the held channel is never taken for an answer.
func checkAgentChannelStaleReplies(t *testing.T) {
	e := agentChanEnv(t, "", chanAgentTimeout)
	waitFor(t, func() bool { return e.agentState() == AgentResponsive }, "the held channel synced")

	// guest-info answers after its command gave up: a reply of another
	// type than any later command's, which would fail its decoding.
	e.agent.SetDelay("guest-info", 2*chanAgentTimeout)
	res, err := e.createNamed("late", QuiescePrefer)
	if err != nil || res.Quiesced || !hasIndication(res, IndAgentUnresponsive) {
		t.Fatalf("snapshot with a slow guest-info: %+v, %v; want an unquiesced one, agent-unresponsive", res, err)
	}
	e.agent.SetDelay("guest-info", 0)
	time.Sleep(2 * chanAgentTimeout) // the late reply is in the channel now
	if res, err := e.createNamed("after-late", QuiesceRequire); err != nil || !res.Quiesced {
		t.Fatalf("snapshot after a late reply: %+v, %v", res, err)
	}

	// Bytes the agent sends between operations: an answer "frozen" with
	// no id, one with an old id, garbage. Taken for the status, the
	// first would refuse the snapshot as frozen by someone else.
	waitFor(t, func() bool { return e.agentState() == AgentResponsive }, "the held channel synced")
	e.agent.QueueStale("{\"return\": \"frozen\"}\n{\"return\": \"frozen\", \"id\": 1}\ngarbage {{\n")
	if res, err := e.createNamed("after-stale", QuiesceRequire); err != nil || !res.Quiesced {
		t.Fatalf("snapshot after stale bytes: %+v, %v", res, err)
	}
	if e.agent.Frozen() {
		t.Error("guest left frozen")
	}
}

// checkAgentCheckOverlapsPrepare: the agent's pre-freeze check runs
// while the overlays are prepared, and a required quiesce it refuses
// still leaves nothing behind: no overlay, no node, no journal entry,
// and a plain refusal, as a refusal in validation.
func checkAgentCheckOverlapsPrepare(t *testing.T) {
	const slow = 400 * time.Millisecond
	e := agentChanEnv(t, "", 2*time.Second)
	waitFor(t, func() bool { return e.agentState() == AgentResponsive }, "the held channel synced")
	var atOverlays []string
	e.drv.Hooks.AtStep = func(step string) error {
		if step == HookOverlays {
			atOverlays = asked(e.agent)
		}
		return nil
	}
	e.agent.SetDelay("guest-fsfreeze-status", slow)
	start := time.Now()
	res, err := e.createNamed("q1", QuiesceRequire)
	if err != nil || !res.Quiesced {
		t.Fatalf("snapshot: %+v, %v", res, err)
	}
	// The status was asked before the overlays were ready, and was
	// still being answered: the prepare step did not wait for it.
	if !slices.Equal(atOverlays, []string{"guest-fsfreeze-status"}) {
		t.Errorf("agent asked %v when the overlays were ready, want the status alone, under way", atOverlays)
	}
	t.Logf("snapshot with a %v status check: %v", slow, time.Since(start))

	for _, mode := range []QuiesceMode{QuiesceRequire, QuiescePrefer} {
		t.Run(string(mode), func(t *testing.T) {
			e.agent.Disable("guest-fsfreeze-freeze")
			before := e.world()
			ops, _ := e.drv.Store().Ops(false)
			atOverlays = nil
			res, err := e.createNamed("refused-"+string(mode), mode)
			if atOverlays == nil {
				t.Error("the prepare step did not run alongside the check")
			}
			if mode == QuiescePrefer {
				if err != nil || res.Quiesced || !hasIndication(res, IndFreezeDisabled) {
					t.Errorf("prefer: %+v, %v; want an unquiesced snapshot, freeze-disabled", res, err)
				}
				return
			}
			var oe *OpError
			if !errors.Is(err, ErrQuiesce) || !errors.Is(err, guestagent.ErrDisabled) || errors.As(err, &oe) {
				t.Fatalf("got %v (%T), want a plain quiesce refusal, freeze disabled", err, err)
			}
			e.assertUnchanged(before)
			if after, _ := e.drv.Store().Ops(false); len(after) != len(ops) {
				t.Errorf("journal entries: %d before, %d after a refusal", len(ops), len(after))
			}
		})
	}
}

// checkGuestAgentRestart: qemu-ga restarts in the guest while the daemon
// holds the channel; the next snapshot resyncs and succeeds, or fails
// cleanly, within the agent timeout.
func checkGuestAgentRestart(t *testing.T) {
	g := testguest.Boot(t, testguest.Options{DataDisks: []string{"data1"}, SecondMonitor: true})
	drv := guestDriver(t, g, nil)
	gx := through(t, drv, "guest", g)
	ctx := testCtx(t)
	waitFor(t, func() bool { info, _ := drv.DomainInfo("guest"); return info.AgentState == AgentResponsive }, "the held channel synced")
	snap := func(name string) (*CreateResult, time.Duration, error) {
		start := time.Now()
		res, err := drv.CreateSnapshot(ctx, "guest", CreateRequest{XML: snapXML(name), Flags: FlagDiskOnly | FlagQuiesce})
		return res, time.Since(start), err
	}
	if res, took, err := snap("before"); err != nil || !res.Quiesced {
		t.Fatalf("snapshot before the restart: %+v, %v", res, err)
	} else {
		t.Logf("snapshot on the held channel: %v (freeze window %v)", took, res.Freeze)
	}
	// The guest's init restarts qemu-ga a second after it exits.
	if err := gx.Agent(ctx, "guest-exec", map[string]any{"path": "/bin/sh", "arg": []string{"-c", "sleep 0.1; killall qemu-ga"}}, nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	disks, _ := drv.Disks(ctx, "guest")
	res, took, err := snap("restarted")
	t.Logf("snapshot while qemu-ga restarts: %v, %v", took, err)
	if took > DefaultConfig().AgentTimeout+3*time.Second {
		t.Errorf("the snapshot took %v, past the agent timeout of %v", took, DefaultConfig().AgentTimeout)
	}
	switch {
	case err == nil:
		if !res.Quiesced {
			t.Errorf("a required quiesce succeeded unquiesced: %+v", res)
		}
	case errors.Is(err, ErrQuiesce) && errors.Is(err, ErrAgentUnresponsive):
		after, _ := drv.Disks(ctx, "guest")
		if after[0].File != disks[0].File {
			t.Errorf("a failed snapshot moved the disk to %s", after[0].File)
		}
	default:
		t.Fatalf("snapshot while qemu-ga restarts: %v, want success or agent-unresponsive", err)
	}
	if res, _, err := snap("after"); err != nil || !res.Quiesced {
		t.Fatalf("snapshot after the restart: %+v, %v", res, err)
	}
	if status := agentStatus(t, gx); status != "thawed" {
		t.Errorf("guest after the snapshots: %s", status)
	}
}

// checkGuestReboot: the guest reboots (system_reset) under the held
// channel; the next snapshot resyncs and succeeds or fails cleanly, and
// never hangs past the agent timeout; once the guest is up, snapshots
// work on the same daemon.
func checkGuestReboot(t *testing.T) {
	// -no-reboot would make system_reset power the guest off.
	g := testguest.Boot(t, testguest.Options{DataDisks: []string{"data1"}, SecondMonitor: true, Extra: []string{"-action", "reboot=reset"}})
	drv := guestDriver(t, g, nil)
	gx := through(t, drv, "guest", g)
	ctx := testCtx(t)
	waitFor(t, func() bool { info, _ := drv.DomainInfo("guest"); return info.AgentState == AgentResponsive }, "the held channel synced")
	flags := FlagDiskOnly | FlagQuiesce
	if _, err := drv.CreateSnapshot(ctx, "guest", CreateRequest{XML: snapXML("before"), Flags: flags}); err != nil {
		t.Fatal(err)
	}
	mon, err := qmp.Dial(ctx, g.QMP2)
	if err != nil {
		t.Fatal(err)
	}
	defer mon.Close()
	if err := mon.Execute(ctx, "system_reset", nil, nil); err != nil {
		t.Fatal(err)
	}
	disks, _ := drv.Disks(ctx, "guest")
	start := time.Now()
	res, err := drv.CreateSnapshot(ctx, "guest", CreateRequest{XML: snapXML("rebooting"), Flags: flags})
	took := time.Since(start)
	t.Logf("snapshot right after system_reset: %v, %v", took, err)
	if limit := DefaultConfig().AgentTimeout + 3*time.Second; took > limit {
		t.Errorf("the snapshot took %v, past the agent timeout", took)
	}
	switch {
	case err == nil:
		if !res.Quiesced {
			t.Errorf("a required quiesce succeeded unquiesced: %+v", res)
		}
	case errors.Is(err, ErrQuiesce) && errors.Is(err, ErrAgentUnresponsive):
		after, _ := drv.Disks(ctx, "guest")
		if after[0].File != disks[0].File {
			t.Errorf("a failed snapshot moved the disk to %s", after[0].File)
		}
		if _, serr := os.Stat(filepath.Join(filepath.Dir(disks[0].File), "data1.rebooting")); !os.IsNotExist(serr) {
			t.Errorf("a failed snapshot left its overlay: %v", serr)
		}
		if ops, _ := drv.Store().Ops(true); len(ops) != 0 {
			t.Errorf("open journal entries after a refusal: %+v", ops)
		}
	default:
		t.Fatalf("snapshot right after system_reset: %v, want success or agent-unresponsive", err)
	}
	// Up again, the guest answers on the held channel.
	deadline := time.Now().Add(testguest.BootTimeout)
	for {
		var st string
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		err := gx.Agent(sctx, "guest-fsfreeze-status", nil, &st)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not back after the reboot: %v", err)
		}
	}
	if res, err := drv.CreateSnapshot(ctx, "guest", CreateRequest{XML: snapXML("after"), Flags: flags}); err != nil || !res.Quiesced {
		t.Fatalf("snapshot after the reboot: %+v, %v", res, err)
	}
}
