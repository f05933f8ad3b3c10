// Package qmp is a QEMU Machine Protocol client with per-command
// deadlines, replies matched by id, and non-blocking event fan-out; it
// implements go-qemu's qmp.Monitor so that qmp/raw runs on top of it.
package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
)

// MaxLineBytes is the default longest line accepted from QEMU.
// query-qmp-schema alone is about 200 KB on QEMU 7.2.
const MaxLineBytes = 64 << 20

// Greeting is the banner QEMU sends when a client connects.
type Greeting struct {
	Version      qmp.Version `json:"version"`
	Capabilities []string    `json:"capabilities"`
}

// Stats counts what the reader skipped, for diagnosis.
type Stats struct {
	Garbage    uint64 // lines that were not QMP messages
	LateReply  uint64 // replies to abandoned or unknown commands
	Events     uint64 // events received
	Subscribed int    // live subscriptions
}

// Client is a connection to one QMP socket. It is safe for concurrent
// use. After a disconnect every call fails with ErrDisconnected until
// Connect is called again.
type Client struct {
	path string
	opts options

	dialMu sync.Mutex // serialises Connect; held across the handshake
	mu     sync.Mutex // guards sess; never held across I/O
	sess   *session

	nextID atomic.Uint64
	stats  struct{ garbage, late, events atomic.Uint64 }
}

// New returns a client for the QMP socket at path without connecting.
func New(path string, opts ...Option) *Client {
	c := &Client{path: path, opts: defaultOptions()}
	for _, o := range opts {
		o(&c.opts)
	}
	return c
}

// Dial connects to the QMP socket at path and negotiates capabilities.
func Dial(ctx context.Context, path string, opts ...Option) (*Client, error) {
	c := New(path, opts...)
	if err := c.Connect(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// Path is the socket path the client connects to.
func (c *Client) Path() string { return c.path }

// Connect dials the socket and completes the handshake, replacing a
// session that has ended. It is a no-op while a session is live.
func (c *Client) Connect(ctx context.Context) error {
	c.dialMu.Lock()
	defer c.dialMu.Unlock()
	if s := c.session(); s != nil && !s.isClosed() {
		return nil
	}
	s, err := c.dial(ctx)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.sess = s
	c.mu.Unlock()
	go s.readLoop()
	return nil
}

// Close ends the session; in-flight calls fail with ErrDisconnected.
func (c *Client) Close() error {
	c.mu.Lock()
	s := c.sess
	c.mu.Unlock()
	if s == nil {
		return nil
	}
	s.close(ErrDisconnected)
	return nil
}

// Connected reports whether a session is live.
func (c *Client) Connected() bool {
	s := c.session()
	return s != nil && !s.isClosed()
}

// Disconnected returns a channel closed when the current session ends.
// With no session it returns a closed channel.
func (c *Client) Disconnected() <-chan struct{} {
	if s := c.session(); s != nil {
		return s.done
	}
	closed := make(chan struct{})
	close(closed)
	return closed
}

// Greeting is the banner of the current session.
func (c *Client) Greeting() (Greeting, error) {
	s := c.session()
	if s == nil {
		return Greeting{}, ErrDisconnected
	}
	return s.greeting, nil
}

// Stats returns counters of what the reader skipped.
func (c *Client) Stats() Stats {
	st := Stats{
		Garbage:   c.stats.garbage.Load(),
		LateReply: c.stats.late.Load(),
		Events:    c.stats.events.Load(),
	}
	if s := c.session(); s != nil {
		s.mu.Lock()
		st.Subscribed = len(s.subs)
		s.mu.Unlock()
	}
	return st
}

func (c *Client) session() *session {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sess
}

// Execute runs command with args (nil for none) and decodes its "return"
// value into result (nil to discard it). It waits at most the command's
// ceiling or ctx, whichever ends first.
func (c *Client) Execute(ctx context.Context, command string, args, result any) error {
	ret, err := c.execute(ctx, command, args)
	if err != nil {
		return err
	}
	if result == nil {
		return nil
	}
	if err := json.Unmarshal(ret.ret, result); err != nil {
		return fmt.Errorf("qmp %s: decode reply: %w", command, err)
	}
	return nil
}

// reply is what the reader hands to a waiting caller.
type reply struct {
	line []byte // the whole reply line, for Monitor.Run
	ret  json.RawMessage
	err  error
}

func (c *Client) execute(ctx context.Context, command string, args any) (r reply, err error) {
	if obs := c.opts.observe; obs != nil {
		start := time.Now()
		defer func() { obs(command, time.Since(start), err) }()
	}
	s := c.session()
	if s == nil {
		return reply{}, fmt.Errorf("qmp %s: %w", command, ErrDisconnected)
	}
	id := "q" + strconv.FormatUint(c.nextID.Add(1), 10)
	req := request{Execute: command, Arguments: args, ID: id}
	buf, err := json.Marshal(req)
	if err != nil {
		return reply{}, fmt.Errorf("qmp %s: encode: %w", command, err)
	}
	buf = append(buf, '\n')

	ctx, cancel := context.WithTimeout(ctx, c.opts.ceiling(command))
	defer cancel()

	ch, err := s.register(id)
	if err != nil {
		return reply{}, fmt.Errorf("qmp %s: %w", command, err)
	}
	if err := s.write(ctx, buf); err != nil {
		s.unregister(id)
		return reply{}, fmt.Errorf("qmp %s: %w", command, err)
	}
	select {
	case r := <-ch:
		if qe, ok := r.err.(*Error); ok {
			qe.Command = command // its message already names the command
			return r, qe
		}
		if r.err != nil {
			return r, fmt.Errorf("qmp %s: %w", command, r.err)
		}
		return r, nil
	case <-ctx.Done():
		// A reply that arrives from now on finds no caller and is dropped
		// by the reader, so it cannot reach a later command.
		s.unregister(id)
		return reply{}, fmt.Errorf("qmp %s: %w", command, ctxErr(ctx))
	}
}

// ctxErr maps an ended context to ErrTimeout when it ran out of time,
// keeping the context's own error in the chain.
func ctxErr(ctx context.Context) error {
	err := ctx.Err()
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: %w", ErrTimeout, err)
	}
	return err
}

type request struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
	ID        string `json:"id"`
}

func (c *Client) dial(ctx context.Context) (*session, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.handshake)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.path)
	if err != nil {
		return nil, fmt.Errorf("qmp connect %s: %w", c.path, err)
	}
	s := newSession(c, conn)
	if err := s.handshake(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp connect %s: %w", c.path, err)
	}
	return s, nil
}

func newSession(c *Client, conn net.Conn) *session {
	s := &session{
		client:  c,
		conn:    conn,
		pending: make(map[string]chan reply),
		subs:    make(map[*Subscription]struct{}),
		latches: make(map[*Latch]struct{}),
		done:    make(chan struct{}),
	}
	s.scan = bufio.NewScanner(conn)
	s.scan.Buffer(make([]byte, 0, min(64<<10, c.opts.maxLine)), c.opts.maxLine)
	return s
}

// session is one connection's worth of state. The reader goroutine owns
// scan; everything else is guarded by mu or writeMu.
type session struct {
	client *Client
	conn   net.Conn
	scan   *bufio.Scanner

	greeting Greeting

	writeMu sync.Mutex

	mu      sync.Mutex
	pending map[string]chan reply
	subs    map[*Subscription]struct{}
	latches map[*Latch]struct{}
	closed  bool
	err     error
	done    chan struct{}
}

// handshake reads the greeting and negotiates capabilities on the same
// buffered reader the session goes on with, so no byte is lost.
func (s *session) handshake(ctx context.Context) error {
	if dl, ok := ctx.Deadline(); ok {
		s.conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { s.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	next := func() (message, error) {
		for s.scan.Scan() {
			m, err := decodeLine(s.scan.Bytes())
			if err != nil {
				return message{}, fmt.Errorf("%w: unexpected line %.80q", ErrGreeting, s.scan.Bytes())
			}
			if m.kind == kindEvent {
				// An event can precede the capabilities reply; it is
				// not ours to deliver, since nobody can subscribe yet.
				continue
			}
			return m, nil
		}
		return message{}, s.readErr(ctx, s.scan.Err())
	}
	m, err := next()
	if err != nil {
		return err
	}
	if m.kind != kindGreeting {
		return fmt.Errorf("%w: first message is not a greeting", ErrGreeting)
	}
	s.greeting = m.greeting
	if _, err := s.conn.Write([]byte(`{"execute":"qmp_capabilities","id":"qsnapd-negotiate"}` + "\n")); err != nil {
		return s.readErr(ctx, err)
	}
	for {
		m, err := next()
		if err != nil {
			return err
		}
		if m.kind != kindReply || m.id != "qsnapd-negotiate" {
			continue
		}
		if m.err != nil {
			return fmt.Errorf("%w: %w", ErrGreeting, &Error{Command: "qmp_capabilities", Class: m.err.Class, Desc: m.err.Desc})
		}
		s.conn.SetDeadline(time.Time{})
		return nil
	}
}

// readErr names why a handshake read or write stopped.
func (s *session) readErr(ctx context.Context, err error) error {
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("%w: %w", ErrGreeting, ctxErr(ctx))
	case errors.Is(err, os.ErrDeadlineExceeded):
		// The socket deadline is the context's, and can fire first.
		return fmt.Errorf("%w: %w: %w", ErrGreeting, ErrTimeout, err)
	case errors.Is(err, bufio.ErrTooLong):
		return fmt.Errorf("%w: %w", ErrGreeting, ErrLineTooLong)
	case err == nil:
		return fmt.Errorf("%w: %w", ErrGreeting, ErrDisconnected)
	default:
		return fmt.Errorf("%w: %w", ErrGreeting, err)
	}
}

func (s *session) readLoop() {
	c := s.client
	for s.scan.Scan() {
		line := s.scan.Bytes()
		m, err := decodeLine(line)
		if err != nil {
			c.stats.garbage.Add(1)
			continue
		}
		switch m.kind {
		case kindReply:
			s.deliver(m, line)
		case kindEvent:
			c.stats.events.Add(1)
			s.publish(m.event)
		default:
			c.stats.garbage.Add(1)
		}
	}
	err := ErrDisconnected
	if errors.Is(s.scan.Err(), bufio.ErrTooLong) {
		err = fmt.Errorf("%w: %w", ErrDisconnected, ErrLineTooLong)
	} else if e := s.scan.Err(); e != nil {
		err = fmt.Errorf("%w: %w", ErrDisconnected, e)
	}
	s.close(err)
}

func (s *session) deliver(m message, line []byte) {
	s.mu.Lock()
	ch, ok := s.pending[m.id]
	delete(s.pending, m.id)
	s.mu.Unlock()
	if !ok {
		s.client.stats.late.Add(1)
		return
	}
	r := reply{ret: m.ret}
	if m.err != nil {
		r.err = &Error{Class: m.err.Class, Desc: m.err.Desc}
	} else {
		// The scanner reuses its buffer; the caller keeps this line.
		r.line = append([]byte(nil), line...)
		r.ret = append(json.RawMessage(nil), m.ret...)
	}
	ch <- r // buffered, and only one reply per id reaches here
	// Let the caller run on this P now, before this goroutine blocks in
	// the next read: otherwise the runtime wakes an idle thread for it,
	// which costs tens of microseconds in a VM.
	runtime.Gosched()
}

func (s *session) publish(ev qmp.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sub := range s.subs {
		if sub.filter.match(ev) {
			sub.push(ev)
		}
	}
	for l := range s.latches {
		if l.filter.match(ev) {
			l.fired.Store(true)
			delete(s.latches, l)
		}
	}
}

func (s *session) register(id string) (chan reply, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, s.err
	}
	ch := make(chan reply, 1)
	s.pending[id] = ch
	return ch, nil
}

func (s *session) unregister(id string) {
	s.mu.Lock()
	delete(s.pending, id)
	s.mu.Unlock()
}

// write sends one whole line. A write that fails or times out part way
// leaves the stream unusable, so it ends the session.
func (s *session) write(ctx context.Context, buf []byte) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if s.isClosed() {
		return s.err
	}
	if dl, ok := ctx.Deadline(); ok {
		s.conn.SetWriteDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { s.conn.SetWriteDeadline(time.Unix(1, 0)) })
	_, err := s.conn.Write(buf)
	stop()
	if err != nil {
		if ctx.Err() != nil {
			err = ctxErr(ctx)
		}
		err = fmt.Errorf("%w: write: %w", ErrDisconnected, err)
		s.close(err)
		return err
	}
	return nil
}

func (s *session) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// close ends the session once: every waiting caller gets err, every
// subscription ends after its queued events.
func (s *session) close(err error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.err = err
	pending := s.pending
	s.pending = nil
	subs := s.subs
	s.subs = map[*Subscription]struct{}{}
	for l := range s.latches {
		l.fired.Store(true)
	}
	s.latches = map[*Latch]struct{}{}
	s.mu.Unlock()

	s.conn.Close()
	for _, ch := range pending {
		ch <- reply{err: err}
	}
	for sub := range subs {
		sub.end(err)
	}
	close(s.done)
}
