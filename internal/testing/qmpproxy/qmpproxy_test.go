package qmpproxy

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const wait = 10 * time.Second // ceiling for anything that should happen

// TestDecide checks rule counting and order without QEMU.
func TestDecide(t *testing.T) {
	fail := Fail{Class: "GenericError", Desc: "x"}
	tests := []struct {
		name  string
		rules []Rule
		cmds  []string
		want  []bool // whether a rule fired on each command
	}{
		{"every match", []Rule{{Command: "a", Action: fail}}, []string{"a", "b", "a"}, []bool{true, false, true}},
		{"second only", []Rule{{Command: "a", Nth: 2, Times: 1, Action: fail}}, []string{"a", "a", "a"}, []bool{false, true, false}},
		{"from second on", []Rule{{Command: "a", Nth: 2, Action: fail}}, []string{"a", "a", "a"}, []bool{false, true, true}},
		{"first twice", []Rule{{Command: "a", Times: 2, Action: fail}}, []string{"a", "a", "a"}, []bool{true, true, false}},
		{"any command", []Rule{{Action: fail}}, []string{"a", "b"}, []bool{true, true}},
		{"predicate", []Rule{{Command: "a", Match: func(args json.RawMessage) bool { return string(args) == `{"x":1}` }, Action: fail}},
			[]string{"a", "a"}, []bool{false, true}},
		{"first rule wins", []Rule{{Command: "a", Times: 1, Action: fail}, {Command: "a", Nth: 2, Action: fail}},
			[]string{"a", "a", "a"}, []bool{true, false, true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &Proxy{}
			for _, r := range tt.rules {
				p.Add(r)
			}
			for i, name := range tt.cmds {
				args := json.RawMessage(fmt.Sprintf(`{"x":%d}`, i))
				if got := p.decide(name, args) != nil; got != tt.want[i] {
					t.Errorf("command %d (%s): fired = %v, want %v", i, name, got, tt.want[i])
				}
			}
			if got := p.Commands(); !slices.Equal(got, tt.cmds) {
				t.Errorf("Commands() = %v, want %v", got, tt.cmds)
			}
		})
	}
}

func TestRemove(t *testing.T) {
	p := &Proxy{}
	remove := p.Add(Rule{Command: "a", Action: Drop{}})
	if p.decide("a", nil) == nil {
		t.Fatal("rule did not fire before remove")
	}
	remove()
	if a := p.decide("a", nil); a != nil {
		t.Fatalf("after remove: got action %#v, want nil", a)
	}
}

func TestPassThrough(t *testing.T) {
	p, c := setup(t)
	if got := c.status(); got.Status != "prelaunch" || got.Running {
		t.Errorf("query-status = %+v, want prelaunch, not running", got)
	}
	// The schema is one line far above bufio.Scanner's 64 KiB default.
	if n := len(c.run("query-qmp-schema").Return); n < 64<<10 {
		t.Errorf("query-qmp-schema: %d bytes, want a line over 64 KiB", n)
	}
	if got, want := p.Commands(), []string{"qmp_capabilities", "query-status", "query-qmp-schema"}; !slices.Equal(got, want) {
		t.Errorf("Commands() = %v, want %v", got, want)
	}
}

func TestFailSecondOnly(t *testing.T) {
	p, c := setup(t)
	p.Add(Rule{Command: "query-status", Nth: 2, Times: 1, Action: Fail{Class: "GenericError", Desc: "injected"}})
	for i, wantErr := range []bool{false, true, false} {
		id := c.send("query-status")
		m := c.reply(id)
		if got := m.Error != nil; got != wantErr {
			t.Fatalf("query-status #%d: error = %v, want %v (reply %+v)", i+1, got, wantErr, m)
		}
		if wantErr && (m.Error.Class != "GenericError" || m.Error.Desc != "injected") {
			t.Errorf("query-status #%d: error = %+v, want GenericError/injected", i+1, *m.Error)
		}
	}
}

func TestDelay(t *testing.T) {
	p, c := setup(t)
	const d = 300 * time.Millisecond
	p.Add(Rule{Command: "query-status", Action: Delay{d}})
	start := time.Now()
	first := c.send("query-status")
	second := c.send("query-name") // queues behind the delayed command
	if m := c.next(); m.ID != first {
		t.Fatalf("first reply: got id %q, want %q", m.ID, first)
	}
	if m := c.next(); m.ID != second {
		t.Fatalf("second reply: got id %q, want %q", m.ID, second)
	}
	if got := time.Since(start); got < d {
		t.Errorf("replies after %v, want at least %v", got, d)
	}
}

func TestDrop(t *testing.T) {
	p, c := setup(t)
	p.Add(Rule{Command: "query-status", Times: 1, Action: Drop{}})
	c.send("query-status")
	c.noReply(300 * time.Millisecond)
	// The proxy keeps forwarding after a Drop.
	if got := c.status(); got.Status != "prelaunch" {
		t.Errorf("query-status after drop = %+v, want prelaunch", got)
	}
	if got, want := p.Commands(), []string{"qmp_capabilities", "query-status", "query-status"}; !slices.Equal(got, want) {
		t.Errorf("Commands() = %v, want %v", got, want)
	}
}

func TestDropReply(t *testing.T) {
	p, c := setup(t)
	c.run("cont")
	c.event("RESUME")
	p.Add(Rule{Command: "stop", Action: DropReply{}})
	c.send("stop")
	c.event("STOP")                   // the command took effect...
	c.noReply(300 * time.Millisecond) // ...but its reply never came
	if got := c.status(); got.Status != "paused" || got.Running {
		t.Errorf("query-status = %+v, want paused, not running", got)
	}
}

// TestDropReplyThenClose: the command runs, Then runs in place of its
// reply, and the connection breaks; the next client sees the effect.
func TestDropReplyThenClose(t *testing.T) {
	p, c := setup(t)
	c.run("cont")
	c.event("RESUME")
	called := make(chan struct{})
	p.Add(Rule{Command: "stop", Times: 1, Action: DropReply{Then: func() { close(called) }, Close: true}})
	c.send("stop")
	c.event("STOP") // the command took effect...
	c.eof()         // ...and the connection broke where its reply was due
	select {
	case <-called:
	default:
		t.Error("Then was not called before the connection closed")
	}
	c2 := dial(t, p.Path())
	if got := c2.status(); got.Status != "paused" || got.Running {
		t.Errorf("query-status on new client = %+v, want paused, not running", got)
	}
}

func TestHook(t *testing.T) {
	p, c := setup(t)
	called, release := make(chan struct{}), make(chan struct{})
	p.Add(Rule{Command: "query-status", Action: Hook(func() {
		close(called)
		<-release
	})})
	id := c.send("query-status")
	select {
	case <-called:
	case <-time.After(wait):
		t.Fatal("hook not called")
	}
	c.noReply(200 * time.Millisecond) // not forwarded while the hook runs
	close(release)
	if m := c.reply(id); m.Error != nil {
		t.Errorf("query-status after hook: %+v", *m.Error)
	}
}

func TestCloseConn(t *testing.T) {
	p, c := setup(t)
	p.Add(Rule{Command: "query-status", Times: 1, Action: CloseConn{}})
	c.send("query-status")
	c.eof()
	// QEMU was released too, so a new client gets through.
	c2 := dial(t, p.Path())
	if got := c2.status(); got.Status != "prelaunch" {
		t.Errorf("query-status on new client = %+v, want prelaunch", got)
	}
}

func TestCloseAfterSend(t *testing.T) {
	p, c := setup(t)
	var sent atomic.Bool
	p.Add(Rule{Command: "query-status", Times: 1, Action: CloseAfterSend{},
		Match: func(json.RawMessage) bool { sent.Store(true); return true }})
	c.send("query-status")
	c.eof() // no reply: the connection ended after the command went out
	if !sent.Load() || !slices.Equal(p.Commands(), []string{"qmp_capabilities", "query-status"}) {
		t.Errorf("commands seen: %v", p.Commands())
	}
	// QEMU was released too, so a new client gets through. (QEMU drops
	// the commands it had not started when a monitor's client hangs
	// up, so whether it ran this one is QEMU's race.)
	if got := dial(t, p.Path()).status(); got.Status != "prelaunch" {
		t.Errorf("query-status on new client = %+v, want prelaunch", got)
	}
}

func TestCloseAfterReply(t *testing.T) {
	p, c := setup(t)
	c.run("cont")
	c.event("RESUME")
	p.Add(Rule{Command: "stop", Times: 1, Action: CloseAfterReply{}})
	c.send("stop")
	c.event("STOP") // the command took effect...
	c.eof()         // ...its reply was swallowed, and the connection closed after it
	c2 := dial(t, p.Path())
	if got := c2.status(); got.Status != "paused" {
		t.Errorf("query-status = %+v, want paused: QEMU did the command", got)
	}
}

func TestSetDown(t *testing.T) {
	p, c := setup(t)
	p.SetDown(true)
	c.eof()
	// New clients get in, and are hung up on before any greeting.
	conn, err := net.Dial("unix", p.Path())
	if err != nil {
		t.Fatalf("dial while down: %v, want a connection", err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(wait))
	if n, err := conn.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("read while down: %d bytes, %v; want EOF", n, err)
	}
	conn.Close()
	p.SetDown(false)
	if got := dial(t, p.Path()).status(); got.Status != "prelaunch" {
		t.Errorf("query-status after down = %+v, want prelaunch", got)
	}
}

func TestRefuse(t *testing.T) {
	p, c := setup(t)
	p.Refuse()
	if _, err := net.Dial("unix", p.Path()); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial after Refuse: %v, want ECONNREFUSED", err)
	}
	// The open connection still works.
	if got := c.status(); got.Status != "prelaunch" {
		t.Errorf("query-status = %+v, want prelaunch", got)
	}
}

func TestEvents(t *testing.T) {
	_, c := setup(t)
	c.run("cont")
	c.event("RESUME")
	c.run("stop")
	c.event("STOP")
}

func TestCloseInterruptsDelay(t *testing.T) {
	p, c := setup(t)
	p.Add(Rule{Command: "query-status", Action: Delay{time.Hour}})
	c.send("query-status")
	time.Sleep(100 * time.Millisecond) // let the proxy start waiting
	done := make(chan error, 1)
	go func() { done <- p.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Close() = %v, want nil", err)
		}
	case <-time.After(wait):
		t.Fatal("Close hung on a delayed command")
	}
	c.eof()
}

// setup starts QEMU and a proxy in front of it, and returns a negotiated
// client of the proxy.
func setup(t *testing.T) (*Proxy, *client) {
	t.Helper()
	t.Parallel()
	dir, qmp := startQEMU(t)
	p, err := Start(filepath.Join(dir, "proxy.sock"), qmp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close() = %v, want nil", err)
		}
	})
	return p, dial(t, p.Path())
}

func startQEMU(t *testing.T) (dir, qmp string) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts QEMU")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	// Short, because unix socket paths must fit in 108 bytes.
	dir, err := os.MkdirTemp("", "qs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	qmp = filepath.Join(dir, "qmp.sock")
	cmd := exec.Command("qemu-system-x86_64", "-S", "-nodefaults", "-display", "none",
		"-accel", "tcg", "-M", "q35", "-m", "128", "-qmp", "unix:"+qmp+",server=on,wait=off")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start QEMU: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }() // killed at cleanup: the status says nothing
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	// Dial, not stat: QEMU creates the file at bind(), before listen().
	for deadline := time.Now().Add(wait); ; time.Sleep(20 * time.Millisecond) {
		if conn, err := net.Dial("unix", qmp); err == nil {
			conn.Close() // QEMU takes the next client once it notices
			return dir, qmp
		}
		select {
		case <-exited:
			t.Fatal("QEMU exited before its QMP socket was ready")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("QMP socket %s not ready after %v", qmp, wait)
		}
	}
}

// msg is any line QEMU (or the proxy) sends.
type msg struct {
	QMP    json.RawMessage `json:"QMP"`
	Return json.RawMessage `json:"return"`
	Error  *struct{ Class, Desc string }
	ID     string `json:"id"`
	Event  string `json:"event"`
}

// client is a minimal QMP client; a goroutine reads lines into msgs.
type client struct {
	t      *testing.T
	conn   net.Conn
	msgs   chan msg
	err    error // why msgs was closed; read only after it is
	n      int
	events []string
}

var errTimeout = errors.New("timeout")

func dial(t *testing.T, path string) *client {
	t.Helper()
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c := &client{t: t, conn: conn, msgs: make(chan msg, 16)}
	go c.readLoop()
	t.Cleanup(func() {
		conn.Close()
		for range c.msgs { // let readLoop finish
		}
	})
	if m := c.next(); m.QMP == nil {
		t.Fatalf("greeting: got %+v", m)
	}
	c.run("qmp_capabilities")
	return c
}

func (c *client) readLoop() {
	defer close(c.msgs)
	r := bufio.NewReader(c.conn)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			c.err = err
			return
		}
		var m msg
		if err := json.Unmarshal(line, &m); err != nil {
			c.err = fmt.Errorf("bad line %q: %w", line, err)
			return
		}
		c.msgs <- m
	}
}

func (c *client) send(name string) (id string) {
	c.t.Helper()
	c.n++
	id = fmt.Sprintf("q%d", c.n)
	line, err := json.Marshal(map[string]string{"execute": name, "id": id})
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := c.conn.Write(append(line, '\n')); err != nil {
		c.t.Fatalf("send %s: %v", name, err)
	}
	return id
}

// poll returns the next message, errTimeout after d, or the read error.
func (c *client) poll(d time.Duration) (msg, error) {
	select {
	case m, ok := <-c.msgs:
		if !ok {
			return msg{}, c.err
		}
		return m, nil
	case <-time.After(d):
		return msg{}, errTimeout
	}
}

// next returns the next message that is not an event, recording events.
func (c *client) next() msg {
	c.t.Helper()
	for {
		m, err := c.poll(wait)
		if err != nil {
			c.t.Fatalf("read: %v", err)
		}
		if m.Event == "" {
			return m
		}
		c.events = append(c.events, m.Event)
	}
}

func (c *client) reply(id string) msg {
	c.t.Helper()
	m := c.next()
	if m.ID != id {
		c.t.Fatalf("reply: got %+v, want id %q", m, id)
	}
	return m
}

func (c *client) run(name string) msg {
	c.t.Helper()
	m := c.reply(c.send(name))
	if m.Error != nil {
		c.t.Fatalf("%s: %+v", name, *m.Error)
	}
	return m
}

type status struct {
	Status  string `json:"status"`
	Running bool   `json:"running"`
}

func (c *client) status() status {
	c.t.Helper()
	var s status
	if err := json.Unmarshal(c.run("query-status").Return, &s); err != nil {
		c.t.Fatal(err)
	}
	return s
}

// noReply asserts that only events arrive for d.
func (c *client) noReply(d time.Duration) {
	c.t.Helper()
	for deadline := time.Now().Add(d); ; {
		m, err := c.poll(time.Until(deadline))
		if err == errTimeout {
			return
		}
		if err != nil {
			c.t.Fatalf("read: %v", err)
		}
		if m.Event == "" {
			c.t.Fatalf("got %+v, want no reply", m)
		}
		c.events = append(c.events, m.Event)
	}
}

// event waits for the event name, seen already or still to come.
func (c *client) event(name string) {
	c.t.Helper()
	for deadline := time.Now().Add(wait); !slices.Contains(c.events, name); {
		m, err := c.poll(time.Until(deadline))
		if err != nil {
			c.t.Fatalf("waiting for event %s: %v (events so far %v)", name, err, c.events)
		}
		if m.Event == "" {
			c.t.Fatalf("waiting for event %s: got %+v", name, m)
		}
		c.events = append(c.events, m.Event)
	}
}

// eof asserts that the connection ends with EOF and nothing else.
func (c *client) eof() {
	c.t.Helper()
	m, err := c.poll(wait)
	if !errors.Is(err, io.EOF) {
		c.t.Fatalf("got %+v, %v; want EOF", m, err)
	}
}
