package guestagent_test

import (
	"context"
	"errors"
	"path/filepath"
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
