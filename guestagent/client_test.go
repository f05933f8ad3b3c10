package guestagent_test

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/guestagent"
	"github.com/qsnapd/qsnapd/guestagent/agentfake"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
)

func startAgent(t *testing.T) *agentfake.Agent {
	t.Helper()
	a, err := agentfake.Start(filepath.Join(qemutest.TempDir(t), "qga.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := a.Close(); err != nil {
			t.Errorf("fake agent: %v", err)
		}
	})
	return a
}

var short = guestagent.Options{Timeout: 300 * time.Millisecond, FreezeTimeout: 300 * time.Millisecond, ThawTimeout: 300 * time.Millisecond}

func client(t *testing.T, a *agentfake.Agent, o guestagent.Options) *guestagent.Client {
	c := guestagent.New(a.Path, o)
	t.Cleanup(func() { c.Close() })
	return c
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestFreezeThawCycle(t *testing.T) {
	a := startAgent(t)
	c := client(t, a, guestagent.Options{})
	if err := c.Ping(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if err := c.CheckFreeze(ctx(t), true); err != nil {
		t.Fatal(err)
	}
	n, err := c.Freeze(ctx(t), nil)
	if err != nil || n != 3 || !a.Frozen() {
		t.Fatalf("freeze: %d, %v, frozen %v", n, err, a.Frozen())
	}
	if st, err := c.FreezeStatus(ctx(t)); err != nil || st != "frozen" {
		t.Errorf("status: %q, %v", st, err)
	}
	// A second freeze is refused while frozen.
	if _, err := c.Freeze(ctx(t), nil); !errors.Is(err, guestagent.ErrDisabled) || !strings.Contains(err.Error(), "frozen state") {
		t.Errorf("second freeze: %v, want ErrDisabled", err)
	}
	if n, err := c.Thaw(ctx(t)); err != nil || n != 3 || a.Frozen() {
		t.Errorf("thaw: %d, %v, frozen %v", n, err, a.Frozen())
	}
	// Unknown mountpoints are ignored.
	if n, err := c.Freeze(ctx(t), []string{"/mnt/data1", "/nope"}); err != nil || n != 1 {
		t.Errorf("freeze-list: %d, %v", n, err)
	}
	if _, err := c.Thaw(ctx(t)); err != nil {
		t.Errorf("thaw: %v", err)
	}
}

func TestNotConfiguredAndNotConnected(t *testing.T) {
	if err := guestagent.New("", guestagent.Options{}).Ping(ctx(t)); !errors.Is(err, guestagent.ErrNotConfigured) {
		t.Errorf("empty path: %v", err)
	}
	missing := filepath.Join(qemutest.TempDir(t), "none.sock")
	if err := guestagent.New(missing, guestagent.Options{}).Ping(ctx(t)); !errors.Is(err, guestagent.ErrNotConnected) {
		t.Errorf("missing socket: %v", err)
	}
}

func TestNoAgentInTheGuestTimesOut(t *testing.T) {
	a := startAgent(t)
	a.Silent(true) // QEMU's chardev accepts, nobody answers
	c := client(t, a, short)
	start := time.Now()
	if err := c.Ping(ctx(t)); !errors.Is(err, guestagent.ErrUnresponsive) {
		t.Fatalf("got %v, want ErrUnresponsive", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("ping of a silent agent took %v with a 300ms ceiling", took)
	}
	a.Silent(false)
	if err := c.Ping(ctx(t)); err != nil {
		t.Errorf("ping once the agent answers: %v", err)
	}
}

func TestStaleRepliesAndGarbageOnConnect(t *testing.T) {
	a := startAgent(t)
	a.QueueStale("{\"return\": 7, \"id\": 1}\n\xff{\"return\": 99}\ngarbage {{\n{\"return\": {}}\n")
	c := client(t, a, short)
	st, err := c.FreezeStatus(ctx(t))
	if err != nil || st != "thawed" {
		t.Fatalf("status after stale bytes: %q, %v", st, err)
	}
}

func TestHungFreezeThenThaw(t *testing.T) {
	a := startAgent(t)
	c := client(t, a, short)
	a.HangAfterEffect("guest-fsfreeze-freeze") // frozen, but no reply
	if _, err := c.Freeze(ctx(t), nil); !errors.Is(err, guestagent.ErrUnresponsive) {
		t.Fatalf("hung freeze: %v, want ErrUnresponsive", err)
	}
	if !a.Frozen() {
		t.Fatal("the fake should have frozen without replying")
	}
	a.Release()
	// The next call reconnects and resyncs past the withheld reply.
	if n, err := c.Thaw(ctx(t)); err != nil || n != 3 || a.Frozen() {
		t.Errorf("thaw after a hung freeze: %d, %v, frozen %v", n, err, a.Frozen())
	}
}

func TestHungAgentBlocksOnlyUntilTheDeadline(t *testing.T) {
	a := startAgent(t)
	c := client(t, a, guestagent.Options{Timeout: 2 * time.Second})
	a.HangOn("guest-info")
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _ = c.Info(ctx(t)) // only holds the client busy
	}()
	time.Sleep(50 * time.Millisecond)
	// Another caller waits its turn only as long as its own context.
	short, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := c.Ping(short); !errors.Is(err, guestagent.ErrUnresponsive) {
		t.Errorf("second caller: %v, want ErrUnresponsive", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("second caller waited %v with a 100ms context", took)
	}
	a.Release()
	wg.Wait()
}

func TestEOFMidCommand(t *testing.T) {
	a := startAgent(t)
	c := client(t, a, short)
	a.CloseAfterEffect("guest-fsfreeze-freeze")
	if _, err := c.Freeze(ctx(t), nil); !errors.Is(err, guestagent.ErrNotConnected) {
		t.Fatalf("EOF mid-freeze: %v, want ErrNotConnected", err)
	}
	a.Release()
	if _, err := c.Thaw(ctx(t)); err != nil || a.Frozen() {
		t.Errorf("thaw after EOF: %v, frozen %v", err, a.Frozen())
	}
}

func TestDisabledFreeze(t *testing.T) {
	a := startAgent(t)
	a.Disable("guest-fsfreeze-freeze")
	c := client(t, a, short)
	if err := c.CheckFreeze(ctx(t), false); !errors.Is(err, guestagent.ErrDisabled) {
		t.Errorf("CheckFreeze: %v, want ErrDisabled", err)
	}
	_, err := c.Freeze(ctx(t), nil)
	var ae *guestagent.Error
	if !errors.Is(err, guestagent.ErrDisabled) || !errors.As(err, &ae) || ae.Class != "CommandNotFound" {
		t.Errorf("freeze: %v, want ErrDisabled with the agent's class", err)
	}
}

func TestVSSHoldExpired(t *testing.T) {
	a := startAgent(t)
	a.SetVSS(10 * time.Millisecond)
	c := client(t, a, short)
	if _, err := c.Freeze(ctx(t), nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	_, err := c.Thaw(ctx(t))
	var ae *guestagent.Error
	if !errors.As(err, &ae) || !strings.Contains(ae.Desc, "couldn't hold writes") {
		t.Errorf("thaw after the VSS hold: %v", err)
	}
}

func TestAgentErrorClass(t *testing.T) {
	a := startAgent(t)
	c := client(t, a, short)
	err := c.Execute(ctx(t), "guest-nope", nil, nil)
	var ae *guestagent.Error
	if !errors.As(err, &ae) || ae.Class != "CommandNotFound" || ae.Command != "guest-nope" {
		t.Errorf("got %v, want a CommandNotFound *Error", err)
	}
}

// A held connection: Sync checks it with one guest-sync of its own id,
// and what the agent left in it between commands is never taken for an
// answer.
func TestSyncChecksTheHeldConnection(t *testing.T) {
	a := startAgent(t)
	c := client(t, a, short)
	if st := c.State(); st != guestagent.StateUnknown {
		t.Errorf("state before any use: %s", st)
	}
	if err := c.Connect(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if st := c.State(); st != guestagent.StateResponsive || !c.Connected() {
		t.Errorf("after Connect: state %s, connected %v", st, c.Connected())
	}
	// Connect on an open connection says nothing.
	if err := c.Connect(ctx(t)); err != nil {
		t.Fatal(err)
	}
	a.QueueStale("{\"return\": \"frozen\"}\n{\"return\": \"frozen\", \"id\": 1}\ngarbage {{\n")
	if err := c.Sync(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if st, err := c.FreezeStatus(ctx(t)); err != nil || st != "thawed" {
		t.Errorf("status after stale bytes: %q, %v", st, err)
	}
	if got, want := a.Calls(), []string{"guest-sync-delimited", "guest-sync", "guest-fsfreeze-status"}; !slices.Equal(got, want) {
		t.Errorf("calls %v, want %v", got, want)
	}
	if n := a.Clients(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

// An agent slower than CheckTimeout to answer the check gets a full
// resync on the same connection, within the agent timeout.
func TestSyncResyncsAnUnansweredCheck(t *testing.T) {
	a := startAgent(t)
	c := client(t, a, guestagent.Options{Timeout: 3 * time.Second})
	if err := c.Connect(ctx(t)); err != nil {
		t.Fatal(err)
	}
	a.SetDelay("guest-sync", guestagent.CheckTimeout+200*time.Millisecond)
	start := time.Now()
	if err := c.Sync(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < guestagent.CheckTimeout {
		t.Errorf("sync took %v, less than the check's delay", took)
	}
	if got, want := a.Calls(), []string{"guest-sync-delimited", "guest-sync", "guest-sync-delimited"}; !slices.Equal(got, want) {
		t.Errorf("calls %v, want %v", got, want)
	}
	if n := a.Clients(); n != 1 {
		t.Errorf("%d connections, want the one resynced", n)
	}
	if err := c.Ping(ctx(t)); err != nil {
		t.Errorf("ping after the resync: %v", err)
	}
}

// A silent agent fails Sync within the agent timeout, check included.
func TestSyncOfASilentAgent(t *testing.T) {
	a := startAgent(t)
	c := client(t, a, short)
	if err := c.Connect(ctx(t)); err != nil {
		t.Fatal(err)
	}
	a.Silent(true)
	start := time.Now()
	if err := c.Sync(ctx(t)); !errors.Is(err, guestagent.ErrUnresponsive) {
		t.Fatalf("sync of a silent agent: %v, want ErrUnresponsive", err)
	}
	if took := time.Since(start); took > short.Timeout+200*time.Millisecond {
		t.Errorf("sync took %v with a %v agent timeout", took, short.Timeout)
	}
	if st := c.State(); st != guestagent.StateUnresponsive || c.Connected() {
		t.Errorf("after: state %s, connected %v", st, c.Connected())
	}
}

// The end of a held connection shows at once, with no command.
func TestLostConnectionShowsAtOnce(t *testing.T) {
	a := startAgent(t)
	c := client(t, a, short)
	if err := c.Connect(ctx(t)); err != nil {
		t.Fatal(err)
	}
	lost := c.Lost()
	a.Hangup()
	select {
	case <-lost:
	case <-time.After(5 * time.Second):
		t.Fatal("the connection's end went unnoticed")
	}
	if st := c.State(); st != guestagent.StateNotConnected || c.Connected() {
		t.Errorf("after the hangup: state %s, connected %v", st, c.Connected())
	}
	// The next command reconnects.
	if err := c.Ping(ctx(t)); err != nil || c.State() != guestagent.StateResponsive {
		t.Errorf("ping after the hangup: %v, state %s", err, c.State())
	}
	// A deliberate close keeps the state.
	c.Close()
	if st := c.State(); st != guestagent.StateResponsive || c.Connected() {
		t.Errorf("after Close: state %s, connected %v", st, c.Connected())
	}
	select {
	case <-c.Lost():
	default:
		t.Error("Lost is open with no connection")
	}
}

// Close while a command runs drops the connection when it ends.
func TestCloseWhileSpeaking(t *testing.T) {
	a := startAgent(t)
	c := client(t, a, guestagent.Options{Timeout: 2 * time.Second})
	a.SetDelay("guest-info", 200*time.Millisecond)
	done := make(chan error, 1)
	go func() { _, err := c.Info(ctx(t)); done <- err }()
	for !slices.Contains(a.Calls(), "guest-info") {
		time.Sleep(5 * time.Millisecond)
	}
	c.Close()
	if err := <-done; err != nil {
		t.Fatalf("the command under way: %v", err)
	}
	if c.Connected() {
		t.Error("the connection outlived Close")
	}
	// The next caller is not dropped after its command.
	if err := c.Ping(ctx(t)); err != nil || !c.Connected() {
		t.Errorf("ping after: %v, connected %v", err, c.Connected())
	}
}
