// Package qmpfake is a scriptable QMP peer that speaks the real wire
// format over a real unix socket, for tests of QMP clients.
package qmpfake

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
)

// DefaultGreeting is the banner of QEMU 7.2.
const DefaultGreeting = `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "qmpfake"}, "capabilities": ["oob"]}}`

// Command is one command the server received.
type Command struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments,omitempty"`
	ID        json.RawMessage `json:"id,omitempty"`
}

// Handler answers one command. It writes whatever it likes to conn: an
// event before the reply, garbage, a late reply from another goroutine
// (started with Server.Go), or nothing at all. A returned error fails
// the server, and Close reports it.
type Handler func(conn *Conn, cmd Command) error

// Server is a fake QMP socket. Commands on one connection are handled
// in order, as QEMU does.
type Server struct {
	// Path is the unix socket path.
	Path string

	ln       net.Listener
	group    *errgroup.Group
	ctx      context.Context
	cancel   context.CancelFunc
	greeting string

	mu       sync.Mutex
	handlers map[string]Handler
	fallback Handler
	received []Command
	conns    map[*Conn]struct{}
	hungUp   bool
	onAccept func(*Conn) error
}

// Option configures a Server.
type Option func(*Server)

// WithGreeting replaces the greeting line; an empty one sends none, as a
// QMP socket busy with another client behaves.
func WithGreeting(line string) Option { return func(s *Server) { s.greeting = line } }

// WithOnAccept runs f on each new connection before the greeting.
func WithOnAccept(f func(*Conn) error) Option { return func(s *Server) { s.onAccept = f } }

// Start listens on path and serves until Close.
func Start(path string, opts ...Option) (*Server, error) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmpfake listen: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g, ctx := errgroup.WithContext(ctx)
	s := &Server{
		Path:     path,
		ln:       ln,
		group:    g,
		ctx:      ctx,
		cancel:   cancel,
		greeting: DefaultGreeting,
		handlers: map[string]Handler{},
		conns:    map[*Conn]struct{}{},
		fallback: func(c *Conn, cmd Command) error { return c.Reply(cmd, struct{}{}) },
	}
	for _, o := range opts {
		o(s)
	}
	g.Go(s.acceptLoop)
	return s, nil
}

// Handle sets the handler of one command name.
func (s *Server) Handle(execute string, h Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.handlers[execute] = h
}

// HandleDefault sets the handler of commands with no handler of their
// own; the initial one replies {"return": {}}.
func (s *Server) HandleDefault(h Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fallback = h
}

// Go runs f in the server's errgroup, for writes that outlive a handler.
func (s *Server) Go(f func() error) { s.group.Go(f) }

// Received returns the commands received so far, in order.
func (s *Server) Received() []Command {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Command(nil), s.received...)
}

// Close stops listening, closes every connection, waits for all
// goroutines and returns the first error any of them reported.
func (s *Server) Close() error {
	s.cancel()
	s.hangUp()
	return s.group.Wait()
}

// hangUp stops accepting and closes every connection, without waiting
// for the goroutines: a handler may call it, as QEMU exits on quit.
func (s *Server) hangUp() {
	s.ln.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hungUp = true
	for c := range s.conns {
		c.Close()
	}
}

func (s *Server) acceptLoop() error {
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("qmpfake accept: %w", err)
		}
		c := &Conn{nc: nc, server: s}
		s.mu.Lock()
		if s.hungUp { // accepted just before the hang-up
			s.mu.Unlock()
			nc.Close()
			return nil
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.group.Go(func() error { return s.serve(c) })
	}
}

func (s *Server) serve(c *Conn) error {
	defer func() {
		c.Close()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	if s.onAccept != nil {
		if err := s.onAccept(c); err != nil {
			return err
		}
	}
	if s.greeting != "" {
		if err := c.WriteLine([]byte(s.greeting)); err != nil {
			return nil // the client went away
		}
	}
	scan := bufio.NewScanner(c.nc)
	scan.Buffer(make([]byte, 0, 64<<10), 64<<20)
	for scan.Scan() {
		var cmd Command
		if err := json.Unmarshal(scan.Bytes(), &cmd); err != nil || cmd.Execute == "" {
			// QEMU answers unparsable input with an id-less error.
			if err := c.WriteJSON(map[string]any{"error": map[string]string{
				"class": "GenericError", "desc": "JSON parse error"}}); err != nil {
				return nil
			}
			continue
		}
		s.mu.Lock()
		s.received = append(s.received, cmd)
		h, ok := s.handlers[cmd.Execute]
		if !ok {
			h = s.fallback
		}
		s.mu.Unlock()
		if err := h(c, cmd); err != nil {
			return fmt.Errorf("qmpfake handler %s: %w", cmd.Execute, err)
		}
	}
	return nil
}

// Conn is one client connection to the fake.
type Conn struct {
	nc     net.Conn
	server *Server
	mu     sync.Mutex
}

// WriteLine writes line and a CRLF, as QEMU ends its lines.
func (c *Conn) WriteLine(line []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := c.nc.Write(append(append([]byte(nil), line...), '\r', '\n'))
	return err
}

// WriteJSON marshals v onto one line.
func (c *Conn) WriteJSON(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return c.WriteLine(b)
}

// Reply sends {"return": ret} with the command's id.
func (c *Conn) Reply(cmd Command, ret any) error {
	return c.WriteJSON(struct {
		Return any             `json:"return"`
		ID     json.RawMessage `json:"id,omitempty"`
	}{ret, cmd.ID})
}

// Fail sends an error reply with the command's id.
func (c *Conn) Fail(cmd Command, class, desc string) error {
	return c.WriteJSON(struct {
		Error struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
		ID json.RawMessage `json:"id,omitempty"`
	}{Error: struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	}{class, desc}, ID: cmd.ID})
}

// Event sends an event with the current time.
func (c *Conn) Event(name string, data any) error {
	now := time.Now()
	return c.WriteJSON(map[string]any{
		"event": name,
		"data":  data,
		"timestamp": map[string]int64{
			"seconds": now.Unix(), "microseconds": int64(now.Nanosecond() / 1000),
		},
	})
}

// Close closes the connection: the client sees EOF.
func (c *Conn) Close() error { return c.nc.Close() }
