package qmp_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp/raw"

	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/qmp"
	"github.com/qsnapd/qsnapd/qmp/qmpfake"
)

// startFake starts a fake QMP peer and fails the test if any of its
// goroutines reported an error.
func startFake(t *testing.T, opts ...qmpfake.Option) *qmpfake.Server {
	t.Helper()
	srv, err := qmpfake.Start(filepath.Join(qemutest.TempDir(t), "qmp.sock"), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("fake QMP peer: %v", err)
		}
	})
	return srv
}

func dial(t *testing.T, path string, opts ...qmp.Option) *qmp.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, path, opts...)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestGreetingExposed(t *testing.T) {
	srv := startFake(t)
	c := dial(t, srv.Path)
	g, err := c.Greeting()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := g.Version.String(), "7.2.0"; got != want {
		t.Errorf("version: got %s, want %s", got, want)
	}
	if len(g.Capabilities) != 1 || g.Capabilities[0] != "oob" {
		t.Errorf("capabilities: got %v, want [oob]", g.Capabilities)
	}
	if cmds := srv.Received(); len(cmds) != 1 || cmds[0].Execute != "qmp_capabilities" {
		t.Errorf("negotiation: got %v, want one qmp_capabilities", cmds)
	}
}

func TestEventBeforeReply(t *testing.T) {
	srv := startFake(t)
	srv.Handle("block-commit", func(c *qmpfake.Conn, cmd qmpfake.Command) error {
		if err := c.Event("BLOCK_JOB_READY", map[string]any{"device": "job0", "type": "commit"}); err != nil {
			return err
		}
		return c.Reply(cmd, struct{}{})
	})
	c := dial(t, srv.Path)
	ctx := testCtx(t)
	sub, err := c.Subscribe(qmp.Filter{Names: []string{"BLOCK_JOB_READY"}, ID: "job0"})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if err := c.BlockCommit(ctx, qmp.BlockCommitArgs{JobID: "job0", Device: "vda"}); err != nil {
		t.Fatalf("block-commit: %v", err)
	}
	if sub.Len() != 1 {
		t.Errorf("queued events when the reply arrived: got %d, want 1", sub.Len())
	}
	ev, err := sub.Next(ctx)
	if err != nil || ev.Event != "BLOCK_JOB_READY" || ev.Data["device"] != "job0" {
		t.Errorf("event: got %+v, %v", ev, err)
	}
}

func TestLateReplyAfterTimeoutIsDiscarded(t *testing.T) {
	srv := startFake(t)
	release := make(chan struct{})
	srv.Handle("slow", func(c *qmpfake.Conn, cmd qmpfake.Command) error {
		// Answer from another goroutine once the client gave up, then
		// keep serving: the late reply lands between later commands.
		srv.Go(func() error {
			<-release
			return c.Reply(cmd, "late")
		})
		return nil
	})
	srv.Handle("query-name", func(c *qmpfake.Conn, cmd qmpfake.Command) error {
		return c.Reply(cmd, map[string]string{"name": "fresh"})
	})
	c := dial(t, srv.Path, qmp.WithCeiling("slow", 50*time.Millisecond))
	ctx := testCtx(t)

	start := time.Now()
	err := c.Execute(ctx, "slow", nil, nil)
	if !errors.Is(err, qmp.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow: got %v, want ErrTimeout", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("ceiling of 50ms took %v", took)
	}
	close(release)
	for i := 0; i < 20; i++ {
		var got struct{ Name string }
		if err := c.Execute(ctx, "query-name", nil, &got); err != nil {
			t.Fatal(err)
		}
		if got.Name != "fresh" {
			t.Fatalf("command %d got %q: a late reply reached the wrong caller", i, got.Name)
		}
	}
	waitFor(t, func() bool { return c.Stats().LateReply == 1 }, "one late reply counted")
}

func TestGarbageLinesAreSkipped(t *testing.T) {
	srv := startFake(t)
	srv.Handle("query-status", func(c *qmpfake.Conn, cmd qmpfake.Command) error {
		for _, line := range []string{"", "not json", "{", `[1,2]`, `{"foo": 1}`, `{"return": {}, "id": 17}`, "\x00\xff"} {
			if err := c.WriteLine([]byte(line)); err != nil {
				return err
			}
		}
		return c.Reply(cmd, map[string]any{"status": "running", "running": true})
	})
	c := dial(t, srv.Path)
	st, err := c.QueryStatus(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if st.Status != "running" || !st.Running {
		t.Errorf("status: got %+v", st)
	}
	if c.Stats().Garbage < 5 {
		t.Errorf("garbage counted: got %d, want at least 5", c.Stats().Garbage)
	}
}

func TestEOFMidCommand(t *testing.T) {
	srv := startFake(t)
	srv.Handle("quit", func(c *qmpfake.Conn, cmd qmpfake.Command) error { return c.Close() })
	c := dial(t, srv.Path)
	ctx := testCtx(t)
	sub, err := c.Subscribe(qmp.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(ctx); !errors.Is(err, qmp.ErrDisconnected) {
		t.Fatalf("quit: got %v, want ErrDisconnected", err)
	}
	select {
	case <-c.Disconnected():
	case <-time.After(5 * time.Second):
		t.Fatal("Disconnected not closed after EOF")
	}
	if _, err := sub.Next(ctx); !errors.Is(err, qmp.ErrDisconnected) {
		t.Errorf("subscription after EOF: got %v, want ErrDisconnected", err)
	}
	start := time.Now()
	if _, err := c.QueryStatus(ctx); !errors.Is(err, qmp.ErrDisconnected) {
		t.Errorf("command after EOF: got %v, want ErrDisconnected", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("command after EOF took %v, want an immediate failure", took)
	}
	// Reconnecting is explicit.
	if err := c.Connect(ctx); err != nil {
		t.Fatalf("reconnect: %v", err)
	}
	if _, err := c.QueryStatus(ctx); err != nil {
		t.Errorf("command after reconnect: %v", err)
	}
}

func TestTenMegabyteReply(t *testing.T) {
	srv := startFake(t)
	big := strings.Repeat("x", 10<<20)
	srv.Handle("query-big", func(c *qmpfake.Conn, cmd qmpfake.Command) error {
		return c.Reply(cmd, big)
	})
	c := dial(t, srv.Path)
	var got string
	if err := c.Execute(testCtx(t), "query-big", nil, &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(big) {
		t.Errorf("reply length: got %d, want %d", len(got), len(big))
	}
}

func TestLineOverLimitDisconnects(t *testing.T) {
	srv := startFake(t)
	srv.Handle("query-big", func(c *qmpfake.Conn, cmd qmpfake.Command) error {
		_ = c.Reply(cmd, strings.Repeat("x", 2<<20)) // the client may hang up mid-write
		return nil
	})
	c := dial(t, srv.Path, qmp.WithMaxLineBytes(1<<20))
	err := c.Execute(testCtx(t), "query-big", nil, nil)
	if !errors.Is(err, qmp.ErrDisconnected) || !errors.Is(err, qmp.ErrLineTooLong) {
		t.Errorf("got %v, want ErrDisconnected and ErrLineTooLong", err)
	}
}

func TestEventDuringNegotiation(t *testing.T) {
	srv := startFake(t)
	srv.Handle("qmp_capabilities", func(c *qmpfake.Conn, cmd qmpfake.Command) error {
		if err := c.Event("RESUME", nil); err != nil {
			return err
		}
		if err := c.Reply(cmd, struct{}{}); err != nil {
			return err
		}
		// Bytes that follow the handshake at once must not be lost.
		return c.Event("STOP", nil)
	})
	srv.Handle("query-status", func(c *qmpfake.Conn, cmd qmpfake.Command) error {
		return c.Reply(cmd, map[string]any{"status": "paused", "running": false})
	})
	c := dial(t, srv.Path)
	st, err := c.QueryStatus(testCtx(t))
	if err != nil || st.Status != "paused" {
		t.Fatalf("query-status after negotiation: got %+v, %v", st, err)
	}
	waitFor(t, func() bool { return c.Stats().Events == 1 }, "the STOP event after the handshake")
}

func TestSlowSubscriberDoesNotBlockReplies(t *testing.T) {
	const events = 5000
	srv := startFake(t)
	srv.Handle("stop", func(c *qmpfake.Conn, cmd qmpfake.Command) error {
		for i := 0; i < events; i++ {
			if err := c.Event("STOP", map[string]int{"n": i}); err != nil {
				return err
			}
		}
		return c.Reply(cmd, struct{}{})
	})
	c := dial(t, srv.Path)
	ctx := testCtx(t)
	slow, err := c.Subscribe(qmp.Filter{Names: []string{"STOP"}})
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	// The go-qemu style channel, never read, must not block either.
	evctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if _, err := c.Bind(ctx).Events(evctx); err != nil {
		t.Fatal(err)
	}

	done := make(chan error, 1)
	go func() { done <- c.Stop(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("stop did not return while a subscriber was not reading")
	}
	for i := 0; i < events; i++ {
		ev, err := slow.Next(ctx)
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if n := ev.Data["n"].(float64); int(n) != i {
			t.Fatalf("event %d: got n=%v, events out of order or lost", i, n)
		}
	}
}

func TestRepliesMatchedByIDNotOrder(t *testing.T) {
	srv := startFake(t)
	var mu sync.Mutex
	var held []qmpfake.Command
	srv.Handle("echo", func(c *qmpfake.Conn, cmd qmpfake.Command) error {
		mu.Lock()
		defer mu.Unlock()
		held = append(held, cmd)
		if len(held) < 4 {
			return nil
		}
		// Answer all four in reverse order.
		for i := len(held) - 1; i >= 0; i-- {
			if err := c.Reply(held[i], string(held[i].Arguments)); err != nil {
				return err
			}
		}
		return nil
	})
	c := dial(t, srv.Path)
	ctx := testCtx(t)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			var got string
			args := map[string]int{"n": i}
			if err := c.Execute(ctx, "echo", args, &got); err != nil {
				errs <- err
				return
			}
			if want := fmt.Sprintf(`{"n":%d}`, i); got != want {
				errs <- fmt.Errorf("caller %d got %s, want %s", i, got, want)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestErrorClassKept(t *testing.T) {
	srv := startFake(t)
	srv.Handle("transaction", func(c *qmpfake.Conn, cmd qmpfake.Command) error {
		return c.Fail(cmd, "DeviceNotFound", "Cannot find device='nope' nor node-name='nope'")
	})
	c := dial(t, srv.Path)
	err := c.Transaction(testCtx(t), qmp.Snapshot("nope", "ov"))
	var qe *qmp.Error
	if !errors.As(err, &qe) {
		t.Fatalf("got %T %v, want *qmp.Error", err, err)
	}
	if qe.Class != "DeviceNotFound" || qe.Command != "transaction" || !strings.Contains(qe.Desc, "nope") {
		t.Errorf("got %+v", qe)
	}
	if !qmp.IsClass(err, "DeviceNotFound") {
		t.Error("IsClass(DeviceNotFound) = false")
	}
}

func TestRawMonitorOnTop(t *testing.T) {
	srv := startFake(t)
	srv.Handle("query-kvm", func(c *qmpfake.Conn, cmd qmpfake.Command) error {
		return c.Reply(cmd, map[string]bool{"enabled": false, "present": true})
	})
	srv.Handle("cont", func(c *qmpfake.Conn, cmd qmpfake.Command) error {
		return c.Fail(cmd, "GenericError", "no")
	})
	c := dial(t, srv.Path)
	mon := raw.NewMonitor(c.Bind(testCtx(t)))
	kvm, err := mon.QueryKVM()
	if err != nil || kvm.Enabled || !kvm.Present {
		t.Errorf("raw QueryKVM: got %+v, %v", kvm, err)
	}
	if err := mon.Cont(); !qmp.IsClass(err, "GenericError") {
		t.Errorf("raw Cont: got %v, want a GenericError *qmp.Error", err)
	}
}

func TestContextCancelIsNotATimeout(t *testing.T) {
	srv := startFake(t)
	srv.Handle("hang", func(c *qmpfake.Conn, cmd qmpfake.Command) error { return nil })
	c := dial(t, srv.Path)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	err := c.Execute(ctx, "hang", nil, nil)
	if !errors.Is(err, context.Canceled) || errors.Is(err, qmp.ErrTimeout) {
		t.Errorf("got %v, want context.Canceled and not ErrTimeout", err)
	}
}

func TestHandshakeTimesOutWithoutGreeting(t *testing.T) {
	// A QMP socket that serves another client accepts the connection and
	// then says nothing.
	srv := startFake(t, qmpfake.WithGreeting(""))
	start := time.Now()
	_, err := qmp.Dial(context.Background(), srv.Path, qmp.WithHandshakeTimeout(100*time.Millisecond))
	if !errors.Is(err, qmp.ErrGreeting) || !errors.Is(err, qmp.ErrTimeout) {
		t.Errorf("got %v, want ErrGreeting and ErrTimeout", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("handshake timeout of 100ms took %v", took)
	}
}

func TestHandshakeRejectsBadGreeting(t *testing.T) {
	for _, greeting := range []string{"garbage", `{"return": {}}`} {
		srv := startFake(t, qmpfake.WithGreeting(greeting))
		_, err := qmp.Dial(testCtx(t), srv.Path)
		if !errors.Is(err, qmp.ErrGreeting) {
			t.Errorf("greeting %q: got %v, want ErrGreeting", greeting, err)
		}
	}
}

func TestRefusedCapabilities(t *testing.T) {
	srv := startFake(t)
	srv.Handle("qmp_capabilities", func(c *qmpfake.Conn, cmd qmpfake.Command) error {
		return c.Fail(cmd, "CommandNotFound", "Capabilities negotiation is already complete")
	})
	_, err := qmp.Dial(testCtx(t), srv.Path)
	if !errors.Is(err, qmp.ErrGreeting) || !qmp.IsClass(err, "CommandNotFound") {
		t.Errorf("got %v, want ErrGreeting wrapping a CommandNotFound *qmp.Error", err)
	}
}

func TestSubscriptionFilter(t *testing.T) {
	srv := startFake(t)
	srv.Handle("emit", func(c *qmpfake.Conn, cmd qmpfake.Command) error {
		for _, e := range []struct {
			name string
			data map[string]any
		}{
			{"BLOCK_JOB_READY", map[string]any{"device": "other"}},
			{"BLOCK_JOB_COMPLETED", map[string]any{"device": "job1"}},
			{"JOB_STATUS_CHANGE", map[string]any{"id": "job1", "status": "ready"}},
			{"BLOCK_JOB_READY", map[string]any{"device": "job1"}},
		} {
			if err := c.Event(e.name, e.data); err != nil {
				return err
			}
		}
		return c.Reply(cmd, struct{}{})
	})
	c := dial(t, srv.Path)
	ctx := testCtx(t)
	byName, _ := c.Subscribe(qmp.Filter{Names: []string{"BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED"}, ID: "job1"})
	byID, _ := c.Subscribe(qmp.Filter{ID: "job1"})
	if err := c.Execute(ctx, "emit", nil, nil); err != nil {
		t.Fatal(err)
	}
	if got := byName.Len(); got != 2 {
		t.Errorf("name and id filter: got %d events, want 2", got)
	}
	if got := byID.Len(); got != 3 {
		t.Errorf("id filter: got %d events, want 3", got)
	}
	ev, err := byName.Wait(ctx, func(ev qmp.Event) bool { return ev.Event == "BLOCK_JOB_READY" })
	if err != nil || ev.Data["device"] != "job1" {
		t.Errorf("Wait: got %+v, %v", ev, err)
	}
	byName.Close()
	if _, err := byName.Next(ctx); !errors.Is(err, qmp.ErrSubscriptionClosed) {
		t.Errorf("Next after Close: got %v", err)
	}
	if got := c.Stats().Subscribed; got != 1 {
		t.Errorf("live subscriptions: got %d, want 1", got)
	}
}

// TestLatch: a latch is set by a matching event QEMU sent before a
// reply by the time that reply arrives, ignores other events, and is
// set when the session ends or when closed.
func TestLatch(t *testing.T) {
	srv := startFake(t)
	srv.Handle("emit", func(c *qmpfake.Conn, cmd qmpfake.Command) error {
		var args struct {
			Name string `json:"name"`
		}
		if err := json.Unmarshal(cmd.Arguments, &args); err != nil {
			return err
		}
		if err := c.Event(args.Name, map[string]any{"id": "j"}); err != nil {
			return err
		}
		return c.Reply(cmd, struct{}{})
	})
	c := dial(t, srv.Path)
	ctx := testCtx(t)
	emit := func(name string) {
		t.Helper()
		if err := c.Execute(ctx, "emit", map[string]string{"name": name}, nil); err != nil {
			t.Fatal(err)
		}
	}
	jobs, err := c.Latch(qmp.Filter{Names: []string{"JOB_STATUS_CHANGE", "DEVICE_DELETED"}})
	if err != nil {
		t.Fatal(err)
	}
	other, _ := c.Latch(qmp.Filter{Names: []string{"DEVICE_TRAY_MOVED"}})
	closed, _ := c.Latch(qmp.Filter{Names: []string{"DEVICE_TRAY_MOVED"}})
	emit("STOP")
	if jobs.Fired() || other.Fired() {
		t.Fatal("latch set by an event its filter does not name")
	}
	emit("JOB_STATUS_CHANGE")
	if !jobs.Fired() {
		t.Error("latch not set by a matching event sent before the reply")
	}
	if other.Fired() {
		t.Error("the other latch was set too")
	}
	closed.Close()
	if !closed.Fired() {
		t.Error("a closed latch does not report fired")
	}
	c.Close()
	if !other.Fired() {
		t.Error("latch not set when the session ended")
	}
	if _, err := c.Latch(qmp.Filter{}); !errors.Is(err, qmp.ErrDisconnected) {
		t.Errorf("latch after close: got %v, want ErrDisconnected", err)
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestQueryPCIBehindABridge decodes what QEMU 7.2 answered query-pci
// once SeaBIOS had numbered the bus behind a root port: an anonymous
// virtio-blk on bus 1.
func TestQueryPCIBehindABridge(t *testing.T) {
	ret, err := os.ReadFile("testdata/query-pci-bridge.json")
	if err != nil {
		t.Fatal(err)
	}
	srv := startFake(t)
	srv.Handle("query-pci", func(c *qmpfake.Conn, cmd qmpfake.Command) error { return c.Reply(cmd, json.RawMessage(ret)) })
	pci, err := dial(t, srv.Path).QueryPCI(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	want := qmp.PCI{Roots: []int{0}, Devices: []qmp.PCIDevice{
		{Slot: 0}, {Slot: 1, QdevID: "vda"}, {Slot: 16, QdevID: "rp1", Bridge: true, Secondary: 1},
		{Bus: 1}, {Slot: 31}, {Slot: 31, Function: 2}, {Slot: 31, Function: 3}}}
	if !reflect.DeepEqual(pci, want) {
		t.Errorf("got  %+v\nwant %+v", pci, want)
	}
}
