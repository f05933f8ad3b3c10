// Package libvirtrpc serves libvirt's remote protocol on unix sockets,
// so that stock libvirt clients (virsh, libvirt-python, go-libvirt)
// take and manage snapshots through qsnapd's engine.
package libvirtrpc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/internal/peercred"
)

// Config configures a Server.
type Config struct {
	// Access lists who may use the read-write socket besides root.
	Access peercred.Access
	// Drain bounds how long Shutdown waits for calls under way.
	Drain time.Duration
	// MaxCallsPerClient bounds the calls one connection runs at once
	// (libvirtd's max_client_requests); a client past it waits.
	MaxCallsPerClient int
	// MaxClients bounds the connections served at once (libvirtd's
	// max_clients); one more is closed as soon as it is accepted.
	MaxClients int
}

// Server serves libvirt's remote program on any number of listeners.
type Server struct {
	drv *driver.Driver
	cfg Config
	log *zap.Logger
	ids *domainIDs
	// procs is the table of served procedures.
	procs map[int32]procedure

	// ctx is the parent of every call: Shutdown cancels it once the
	// drain is over.
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	closing   bool
	// wg counts the connections' goroutines and the calls under way.
	wg sync.WaitGroup
}

// New returns a server of the engine's snapshots.
func New(drv *driver.Driver, cfg Config, log *zap.Logger) *Server {
	if log == nil {
		log = zap.NewNop()
	}
	if cfg.Drain <= 0 {
		cfg.Drain = 5 * time.Minute
	}
	if cfg.MaxCallsPerClient <= 0 {
		cfg.MaxCallsPerClient = 5
	}
	if cfg.MaxClients <= 0 {
		cfg.MaxClients = 5000
	}
	s := &Server{drv: drv, cfg: cfg, log: log, ids: newDomainIDs(),
		listeners: map[net.Listener]struct{}{}, conns: map[*conn]struct{}{}}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.procs = s.procedures()
	return s
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("libvirt RPC server closed")

// Serve accepts connections on ln until Shutdown. On a read-only
// listener only the procedures that change nothing are served.
func (s *Server) Serve(ln net.Listener, readOnly bool) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) || isTemporary(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("libvirt socket: accept failed; retrying", zap.Error(err), zap.Duration("backoff", backoff))
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("libvirt socket %s: %w", ln.Addr(), err)
		}
		backoff = 0
		c := s.newConn(nc, readOnly)
		if c == nil {
			continue
		}
		go c.serve()
	}
}

// isTemporary reports an accept error worth retrying: out of file
// descriptors or memory, a connection aborted before it was taken.
func isTemporary(err error) bool {
	var se interface{ Temporary() bool }
	return errors.As(err, &se) && se.Temporary()
}

// Shutdown stops accepting, lets calls under way finish for at most the
// drain (or ctx), then closes every connection.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for ln := range s.listeners {
		_ = ln.Close() // Serve returns ErrServerClosed
	}
	// Idle connections end now; busy ones once their calls answered.
	for c := range s.conns {
		c.closeRead()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	drain := time.NewTimer(s.cfg.Drain)
	defer drain.Stop()
	var err error
	select {
	case <-done:
	case <-drain.C:
		err = fmt.Errorf("libvirt RPC: calls still running after %v", s.cfg.Drain)
	case <-ctx.Done():
		err = fmt.Errorf("libvirt RPC: calls still running: %w", ctx.Err())
	}
	s.cancel()
	s.mu.Lock()
	for c := range s.conns {
		_ = c.nc.Close()
	}
	s.mu.Unlock()
	return err
}

// conn is one client connection.
type conn struct {
	s        *Server
	nc       net.Conn
	peer     peercred.Peer
	log      *zap.Logger
	readOnly bool // the socket or the client's open asked for read-only

	// wmu serializes whole frames on the socket.
	wmu sync.Mutex
	w   *bufio.Writer

	// slots bounds the calls under way.
	slots chan struct{}

	mu            sync.Mutex
	opened        bool // CONNECT_OPEN succeeded
	authenticated bool // AUTH_LIST was called
}

// newConn registers a connection; nil once the server closes.
func (s *Server) newConn(nc net.Conn, readOnly bool) *conn {
	peer, err := peercred.Of(nc)
	if err != nil {
		peer = peercred.Peer{PID: -1, UID: -1, GID: -1}
	}
	c := &conn{s: s, nc: nc, peer: peer, readOnly: readOnly, w: bufio.NewWriterSize(nc, 64<<10),
		slots: make(chan struct{}, s.cfg.MaxCallsPerClient),
		log:   s.log.With(zap.Int("peer_pid", peer.PID), zap.Int("peer_uid", peer.UID), zap.Bool("read_only", readOnly))}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		_ = nc.Close()
		return nil
	}
	if len(s.conns) >= s.cfg.MaxClients {
		s.log.Warn("libvirt socket: too many clients; connection dropped", zap.Int("max_clients", s.cfg.MaxClients),
			zap.Int("peer_pid", peer.PID), zap.Int("peer_uid", peer.UID))
		_ = nc.Close()
		return nil
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return c
}

// closeRead ends the reading side: the read loop stops taking calls and
// the connection closes once those under way have answered.
func (c *conn) closeRead() {
	if uc, ok := c.nc.(*net.UnixConn); ok {
		_ = uc.CloseRead()
		return
	}
	_ = c.nc.SetReadDeadline(time.Now())
}

// serve reads frames until the client goes, runs each call in its own
// goroutine (a client may pipeline calls; replies carry their serial)
// and then waits for the calls before closing.
func (c *conn) serve() {
	var calls sync.WaitGroup
	defer func() {
		calls.Wait()
		_ = c.nc.Close()
		c.s.mu.Lock()
		delete(c.s.conns, c)
		c.s.mu.Unlock()
		c.s.wg.Done()
	}()
	r := bufio.NewReaderSize(c.nc, 64<<10)
	for {
		h, body, err := readFrame(r)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				c.log.Info("libvirt client: connection ends", zap.Error(err))
			}
			return
		}
		switch {
		case h.Program == keepaliveProgram && h.Version == keepaliveVersion:
			c.keepalive(h)
		case h.Type == typeCallWithFDs && h.Program == remoteProgram:
			// Only calls qsnapd does not serve pass descriptors; an answer
			// keeps the client from waiting for one.
			c.reply(h, nil, errorf(errRPC, fromRPC, "passing file descriptors is not supported"))
		case h.Type != typeCall:
			// Only calls get replies; libvirtd drops the rest too.
			c.log.Debug("libvirt client: message dropped", zap.Uint32("program", h.Program),
				zap.Int32("procedure", h.Procedure), zap.Uint32("type", h.Type))
		case h.Program != remoteProgram || h.Version != remoteVersion:
			c.reply(h, nil, errorf(errRPC, fromRPC, "Cannot find program %d version %d", h.Program, h.Version))
		default:
			select {
			case c.slots <- struct{}{}:
			case <-c.s.ctx.Done():
				return
			}
			calls.Add(1)
			go func() {
				defer func() { <-c.slots; calls.Done() }()
				c.call(h, body)
			}()
		}
	}
}

// keepalive answers a PING with a PONG; a PONG (to pings qsnapd never
// sends) is dropped.
func (c *conn) keepalive(h header) {
	if h.Procedure != keepalivePing {
		return
	}
	c.send(header{Program: keepaliveProgram, Version: keepaliveVersion, Procedure: keepalivePong,
		Type: typeMessage, Serial: 0, Status: statusOK}, nil)
}

// call runs one call and sends its reply.
func (c *conn) call(h header, body []byte) {
	ret, err := c.dispatch(h, body)
	c.reply(h, ret, err)
}

// reply answers a call with its result or its error.
func (c *conn) reply(h header, ret any, err error) {
	out := header{Program: h.Program, Version: h.Version, Procedure: h.Procedure, Type: typeReply, Serial: h.Serial, Status: statusOK}
	if err != nil {
		out.Status = statusError
		re := toRemote(err)
		c.log.Debug("libvirt call failed", zap.String("procedure", procName(h.Procedure)), zap.Int32("code", re.Code), zap.Error(err))
		c.send(out, &re)
		return
	}
	c.send(out, ret)
}

// writeTimeout bounds a reply's write: a client that stops reading
// loses its connection rather than holding a call's goroutine.
const writeTimeout = 30 * time.Second

// send writes one frame.
func (c *conn) send(h header, body any) {
	buf, err := appendFrame(nil, h, body)
	if err != nil {
		// A reply that cannot be encoded is a bug; the client still
		// gets an answer to its serial.
		c.log.Error("libvirt reply not encodable", zap.Error(err))
		h.Status = statusError
		re := toRemote(errorf(errInternal, fromRPC, "%v", err))
		if buf, err = appendFrame(nil, h, &re); err != nil {
			return
		}
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
	if _, err := c.w.Write(buf); err == nil {
		err = c.w.Flush()
		if err != nil {
			c.log.Info("libvirt client: reply not delivered", zap.Error(err))
		}
	}
}
