// Package qmpproxy is a QMP fault-injection proxy for tests: it sits between
// a client and QEMU's QMP socket and fails, delays or drops chosen commands.
//
// Each client gets its own connection to QEMU. QEMU's lines reach the client
// unchanged and in order, bar replies swallowed by DropReply. Client lines
// that are not {"execute": ...} commands are forwarded as they are.
package qmpproxy

import (
	"bufio"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
)

const (
	dialTimeout  = 5 * time.Second
	writeTimeout = 10 * time.Second // so a peer that stopped reading cannot hang Close
)

// Action is what a rule does to a command it fires on: one of Fail, Delay,
// Drop, DropReply, Hook, CloseConn, CloseAfterSend or CloseAfterReply.
type Action interface{ action() }

// Fail answers the command with a QMP error instead of forwarding it; the
// answer may overtake replies to earlier commands, so clients match by id.
type Fail struct {
	Class, Desc string
	// Before, if set, runs first: a test can change QEMU's state at the
	// exact moment the command fails.
	Before func()
}

// Delay forwards the command after D; the client's later commands queue
// behind it, as they would behind a slow QEMU.
type Delay struct{ D time.Duration }

// Drop neither forwards nor answers the command; later commands are still
// forwarded, so the client sees only a missing reply.
type Drop struct{}

// DropReply forwards the command but swallows QEMU's reply to it. Then,
// if set, runs when that reply arrives (the command has run), before
// QEMU's next line is read; with Close the proxy then closes the client
// and QEMU connections, as a monitor connection that broke between the
// command and its reply.
type DropReply struct {
	Then  func()
	Close bool
}

// Hook is called synchronously before the command is forwarded; it must
// return for the connection (and Close) to make progress.
type Hook func()

// CloseConn closes the client and QEMU connections instead of forwarding.
type CloseConn struct{}

// CloseAfterSend forwards the command, then closes both connections at
// once: QEMU has the command, the client gets EOF and no reply.
type CloseAfterSend struct{}

// CloseAfterReply forwards the command and, when QEMU's reply comes,
// swallows it and closes both connections: QEMU did the command, and the
// client gets EOF instead of the reply.
type CloseAfterReply struct{}

func (Fail) action()            {}
func (Delay) action()           {}
func (Drop) action()            {}
func (DropReply) action()       {}
func (Hook) action()            {}
func (CloseConn) action()       {}
func (CloseAfterSend) action()  {}
func (CloseAfterReply) action() {}

// Rule picks commands and says what to do with them.
//
// Rules are checked in the order they were added; the first rule that fires
// decides the command's fate and later rules do not see it. Counts are kept
// per Proxy, across client connections.
//
// Nth: 2, Times: 1 fires on the second match only; Nth: 2 alone fires on
// every match from the second on.
type Rule struct {
	Command string                          // execute name; "" matches every command
	Match   func(args json.RawMessage) bool // optional; runs under the Proxy's lock, must not call it
	Nth     int                             // fire from the Nth match on (1-based; 0 means 1)
	Times   int                             // fire at most this often; 0 means no limit
	Action  Action                          // nil forwards the command
}

type rule struct {
	Rule
	seen, fired int // matches so far, and how many of them it fired on
}

// Proxy is a running fault-injection proxy.
type Proxy struct {
	ln       net.Listener
	path     string
	upstream string
	g        errgroup.Group
	stop     sync.Once
	done     chan struct{} // closed by Close; every connection watches it

	mu      sync.Mutex
	rules   []*rule
	cmds    []string
	conns   map[*conn]struct{}
	down    bool // SetDown: clients are hung up on at once
	refused bool // Refuse: the listener is closed
}

// Start listens on the unix socket listenPath and proxies each client to a
// new connection to the QMP socket upstreamPath.
func Start(listenPath, upstreamPath string) (*Proxy, error) {
	ln, err := net.Listen("unix", listenPath)
	if err != nil {
		return nil, fmt.Errorf("qmpproxy: listen on %s: %w", listenPath, err)
	}
	p := &Proxy{ln: ln, path: listenPath, upstream: upstreamPath, done: make(chan struct{}), conns: map[*conn]struct{}{}}
	p.g.Go(p.serve)
	return p, nil
}

// SetDown hangs up on every client, if down, and from then on accepts
// each new one only to close it at once, without a connection to QEMU:
// a QEMU that cannot be reached, although its socket is there. With
// down false it proxies new clients again.
func (p *Proxy) SetDown(down bool) {
	p.mu.Lock()
	p.down = down
	var open []*conn
	if down {
		for c := range p.conns {
			open = append(open, c)
		}
	}
	p.mu.Unlock()
	for _, c := range open {
		c.close()
	}
}

// Refuse stops listening but leaves the socket file, so that a client's
// connect fails with ECONNREFUSED, as it does on the socket of a QEMU
// that was killed. Connections already open stay: they end when QEMU's
// end does.
func (p *Proxy) Refuse() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.refused {
		return
	}
	p.refused = true
	if ul, ok := p.ln.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(false)
	}
	_ = p.ln.Close() // serve sees net.ErrClosed and ends
}

// Path returns the socket path clients should dial.
func (p *Proxy) Path() string { return p.path }

// Add appends a rule and returns a function that removes it.
func (p *Proxy) Add(r Rule) (remove func()) {
	rr := &rule{Rule: r}
	p.mu.Lock()
	p.rules = append(p.rules, rr)
	p.mu.Unlock()
	return func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.rules = slices.DeleteFunc(p.rules, func(x *rule) bool { return x == rr })
	}
}

// Commands returns the execute names of all client commands seen, forwarded
// or intercepted, in order.
func (p *Proxy) Commands() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.cmds)
}

// Close stops listening, closes all connections, waits for the proxy's
// goroutines and returns the first unexpected error they met.
func (p *Proxy) Close() error {
	var lerr error
	p.stop.Do(func() {
		close(p.done)
		if lerr = p.ln.Close(); errors.Is(lerr, net.ErrClosed) {
			lerr = nil // closed by Refuse
		}
	})
	return cmp.Or(p.g.Wait(), lerr) // the first non-nil
}

func (p *Proxy) serve() error {
	for {
		client, err := p.ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("qmpproxy: accept: %w", err)
		}
		// Safe while Close waits: serve itself keeps the group's count up.
		p.g.Go(func() error { return p.handle(client) })
	}
}

// handle proxies one client connection until either side goes away.
func (p *Proxy) handle(client net.Conn) error {
	p.mu.Lock()
	down := p.down
	p.mu.Unlock()
	if down {
		client.Close()
		return nil
	}
	qemu, err := net.DialTimeout("unix", p.upstream, dialTimeout)
	if err != nil {
		// QEMU is gone (maybe killed by a Hook): the client sees EOF, as on a crash.
		client.Close()
		return nil
	}
	c := &conn{p: p, client: client, qemu: qemu, done: make(chan struct{}), swallow: map[string][]DropReply{}}
	p.mu.Lock()
	if p.down { // SetDown came meanwhile
		p.mu.Unlock()
		c.close()
		return nil
	}
	p.conns[c] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.conns, c)
		p.mu.Unlock()
	}()
	var g errgroup.Group
	g.Go(c.pump(client, "client", c.command))
	g.Go(c.pump(qemu, "QEMU", func(line []byte) error {
		a, ok := c.swallowed(line)
		if !ok {
			return c.toClient(line)
		}
		if a.Then != nil {
			a.Then()
		}
		if a.Close {
			c.close()
		}
		return nil
	}))
	g.Go(func() error { // Close closes us; closing conns also unblocks Delay
		select {
		case <-p.done:
			c.close()
		case <-c.done:
		}
		return nil
	})
	return g.Wait()
}

// decide records a command and returns the action of the first rule that
// fires on it, or nil to forward it.
func (p *Proxy) decide(name string, args json.RawMessage) Action {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cmds = append(p.cmds, name)
	for _, r := range p.rules {
		if (r.Command != "" && r.Command != name) || (r.Match != nil && !r.Match(args)) {
			continue
		}
		r.seen++
		if r.seen < r.Nth || (r.Times > 0 && r.fired >= r.Times) {
			continue
		}
		r.fired++
		return r.Action
	}
	return nil
}

// conn is one client connection and its upstream connection to QEMU.
type conn struct {
	p            *Proxy
	client, qemu net.Conn
	wmu          sync.Mutex // keeps whole lines to the client from interleaving
	once         sync.Once
	done         chan struct{} // closed by close

	smu     sync.Mutex
	swallow map[string][]DropReply // by reply id (canonical JSON), in order
}

func (c *conn) close() {
	c.once.Do(func() {
		close(c.done)
		c.client.Close()
		c.qemu.Close()
	})
}

func (c *conn) closing() bool {
	select {
	case <-c.done:
		return true
	default:
	}
	return false
}

// pump passes each line read from src to fn until either fails or the
// connection is closed. bufio.Reader, not Scanner: lines can be megabytes.
func (c *conn) pump(src net.Conn, what string, fn func(line []byte) error) func() error {
	return func() error {
		defer c.close()
		r := bufio.NewReader(src)
		for {
			line, err := r.ReadBytes('\n')
			if len(line) > 0 {
				if ferr := fn(line); ferr != nil || c.closing() {
					return ferr
				}
			}
			if err != nil {
				return c.check(err, "read from "+what)
			}
		}
	}
}

// command applies the rules to one client line and forwards it if they allow.
func (c *conn) command(line []byte) error {
	var cmd struct {
		Execute   string          `json:"execute"`
		Arguments json.RawMessage `json:"arguments"`
		ID        json.RawMessage `json:"id"`
	}
	if json.Unmarshal(line, &cmd) != nil || cmd.Execute == "" {
		return c.write(c.qemu, line, "write to QEMU") // not ours to judge: QEMU answers it
	}
	switch a := c.p.decide(cmd.Execute, cmd.Arguments).(type) {
	case Fail:
		if a.Before != nil {
			a.Before()
		}
		// Marshal cannot fail: the id was decoded from valid JSON.
		reply, _ := json.Marshal(struct {
			Error map[string]string `json:"error"`
			ID    json.RawMessage   `json:"id,omitempty"`
		}{map[string]string{"class": a.Class, "desc": a.Desc}, cmd.ID})
		return c.toClient(append(reply, '\r', '\n')) // QEMU ends lines so too
	case Drop:
		return nil
	case CloseConn:
		c.close()
		return nil
	case CloseAfterSend:
		// A quick QEMU may answer before the close: its reply must not
		// get through.
		c.smu.Lock()
		k := canonical(cmd.ID)
		c.swallow[k] = append(c.swallow[k], DropReply{})
		c.smu.Unlock()
		err := c.write(c.qemu, line, "write to QEMU")
		c.close()
		return err
	case CloseAfterReply:
		c.smu.Lock()
		k := canonical(cmd.ID)
		c.swallow[k] = append(c.swallow[k], DropReply{Close: true})
		c.smu.Unlock()
	case Delay:
		select {
		case <-time.After(a.D):
		case <-c.done:
			return nil
		}
	case Hook:
		a()
	case DropReply:
		// Register before forwarding, so the reply cannot come first.
		c.smu.Lock()
		k := canonical(cmd.ID)
		c.swallow[k] = append(c.swallow[k], a)
		c.smu.Unlock()
	}
	return c.write(c.qemu, line, "write to QEMU")
}

// swallowed reports whether line is a reply DropReply asked to swallow,
// and with which DropReply.
func (c *conn) swallowed(line []byte) (DropReply, bool) {
	c.smu.Lock()
	defer c.smu.Unlock()
	if len(c.swallow) == 0 {
		return DropReply{}, false // the common case: no need to parse
	}
	var m struct {
		Return json.RawMessage `json:"return"`
		Error  json.RawMessage `json:"error"`
		ID     json.RawMessage `json:"id"`
	}
	if json.Unmarshal(line, &m) != nil || (m.Return == nil && m.Error == nil) {
		return DropReply{}, false // events and junk pass
	}
	k := canonical(m.ID)
	q := c.swallow[k]
	if len(q) == 0 {
		return DropReply{}, false
	}
	if len(q) == 1 {
		delete(c.swallow, k) // so an empty map means "nothing to parse"
	} else {
		c.swallow[k] = q[1:]
	}
	return q[0], true
}

// canonical re-encodes an id so the client's spelling and QEMU's echo
// compare equal; a missing id maps to "", matching id-less replies in order.
func canonical(id json.RawMessage) string {
	var v any
	if len(id) == 0 || json.Unmarshal(id, &v) != nil {
		return string(id)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func (c *conn) toClient(line []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.write(c.client, line, "write to client")
}

func (c *conn) write(w net.Conn, line []byte, what string) error {
	_ = w.SetWriteDeadline(time.Now().Add(writeTimeout)) // fails only if closed, and so will Write
	_, err := w.Write(line)
	return c.check(err, what)
}

// check drops errors that are part of normal life: EOF, resets and anything
// after the connection was closed on purpose.
func (c *conn) check(err error, what string) error {
	if err == nil || c.closing() || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return nil
	}
	return fmt.Errorf("qmpproxy: %s: %w", what, err)
}
