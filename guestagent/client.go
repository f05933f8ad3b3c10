// Package guestagent is a client for the QEMU guest agent (qemu-ga): one
// connection per domain, held open or opened per use as its owner
// chooses, resynchronised at connect and after any timeout or garbage,
// with a ceiling on every command.
package guestagent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"time"
)

// Default ceilings. Sync and ping answer at once from a live agent; a
// freeze or thaw waits for the guest's filesystems and hooks.
const (
	DefaultTimeout       = 5 * time.Second
	DefaultFreezeTimeout = 60 * time.Second
	DefaultThawTimeout   = 60 * time.Second
	// CheckTimeout bounds the guest-sync with which Sync checks an open
	// connection: a live agent answers in a millisecond, and one that
	// does not answer in this time gets a full resync instead.
	CheckTimeout = 500 * time.Millisecond
)

// Options set the ceilings; zero means the default.
type Options struct {
	// Timeout bounds connect, sync and every command without a ceiling
	// of its own (qsnapd's --agent-timeout).
	Timeout       time.Duration
	FreezeTimeout time.Duration
	ThawTimeout   time.Duration
	// Observer, if set, is called after every command with its duration
	// and error, for metrics. It must return quickly.
	Observer func(command string, took time.Duration, err error)
}

func (o Options) ceiling(command string) time.Duration {
	switch command {
	case "guest-fsfreeze-freeze", "guest-fsfreeze-freeze-list":
		return cmpOr(o.FreezeTimeout, DefaultFreezeTimeout)
	case "guest-fsfreeze-thaw":
		return cmpOr(o.ThawTimeout, DefaultThawTimeout)
	}
	return cmpOr(o.Timeout, DefaultTimeout)
}

func cmpOr(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// State is what a client knows of its agent, from its connection and
// its last exchange. Reading it asks the agent nothing.
type State string

// States of a client. A deliberate Close leaves the state as the last
// exchange left it.
const (
	StateUnknown      State = "unknown"       // never connected
	StateSyncing      State = "syncing"       // connected, waiting for the first sync
	StateResponsive   State = "responsive"    // the last sync or command got an answer
	StateUnresponsive State = "unresponsive"  // the last sync or command got none in time
	StateNotConnected State = "not-connected" // the socket refused, or the connection ended
)

// Client speaks to one guest agent. It is safe for concurrent use; one
// caller speaks at a time, and a caller waits for its turn no longer
// than its context allows.
type Client struct {
	path string
	opts Options
	turn chan struct{} // holds a token while a caller speaks

	// Guarded by turn.
	cn     *stream
	dirty  bool // the stream may hold stale bytes: resync before use
	nextID int64

	mu         sync.Mutex
	live       *stream // cn, for those who do not hold the turn
	state      State
	closeAfter bool // Close came while a caller spoke
}

// New returns a client for the agent socket at path; it connects on
// first use (or Connect). An empty path gives a client whose every call
// fails with ErrNotConfigured.
func New(path string, opts Options) *Client {
	return &Client{path: path, opts: opts, turn: make(chan struct{}, 1), nextID: rand.Int64N(1 << 40), state: StateUnknown}
}

// Path is the agent socket path.
func (c *Client) Path() string { return c.path }

// State is what the client knows of the agent now.
func (c *Client) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// Connected reports whether a connection is open and has not ended.
func (c *Client) Connected() bool {
	c.mu.Lock()
	s := c.live
	c.mu.Unlock()
	return s != nil && !s.ended()
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Lost returns a channel that is closed when the open connection ends,
// whoever ends it; it is closed already when none is open.
func (c *Client) Lost() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.live == nil {
		return closedChan
	}
	return c.live.done
}

// Close drops the connection; the next call reconnects. A caller that
// is speaking keeps the connection until its call ends, and it is
// dropped then.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case c.turn <- struct{}{}:
		c.dropLocked()
		<-c.turn
	default:
		// Seen by give, which releases the turn under mu.
		c.closeAfter = true
	}
	return nil
}

// take waits for the turn within ctx.
func (c *Client) take(ctx context.Context) error {
	select {
	case c.turn <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// give ends a turn, dropping the connection if Close asked meanwhile.
func (c *Client) give() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closeAfter {
		c.closeAfter = false
		c.dropLocked()
	}
	<-c.turn
}

// Connect opens and syncs a connection unless one is open, within the
// agent timeout; it says nothing on an open one. The owner of a held
// channel calls it so that an operation finds the channel ready.
func (c *Client) Connect(ctx context.Context) (err error) {
	if c.path == "" {
		return fmt.Errorf("guest agent channel: %w", ErrNotConfigured)
	}
	ctx, done, err := c.channelTurn(ctx)
	if err != nil {
		return err
	}
	defer done()
	if c.cn != nil && !c.cn.ended() {
		return nil
	}
	if obs := c.opts.Observer; obs != nil {
		start := time.Now()
		defer func() { obs("guest-sync-delimited", time.Since(start), err) }()
	}
	if err := c.ready(ctx, false); err != nil {
		return fmt.Errorf("guest agent channel: %w", err)
	}
	return nil
}

// channelTurn takes the client's turn for a channel operation, within
// the agent timeout; done gives it back.
func (c *Client) channelTurn(ctx context.Context) (_ context.Context, done func(), _ error) {
	ctx, cancel := context.WithTimeout(ctx, cmpOr(c.opts.Timeout, DefaultTimeout))
	if err := c.take(ctx); err != nil {
		cancel()
		return nil, nil, fmt.Errorf("guest agent channel: %w: another command holds the agent: %w", ErrUnresponsive, err)
	}
	return ctx, func() { c.give(); cancel() }, nil
}

// Sync readies the channel for an operation, within the agent timeout:
// a new connection is opened and synced; an open one is checked with a
// guest-sync of a fresh id under CheckTimeout and, if that gets no
// answer, resynced. So a restarted agent or a rebooted guest is noticed
// before anything is asked of it, and nothing it left in the channel is
// taken for an answer.
func (c *Client) Sync(ctx context.Context) (err error) {
	if obs := c.opts.Observer; obs != nil {
		start := time.Now()
		defer func() { obs("guest-sync", time.Since(start), err) }()
	}
	if c.path == "" {
		return fmt.Errorf("guest agent channel: %w", ErrNotConfigured)
	}
	ctx, done, err := c.channelTurn(ctx)
	if err != nil {
		return err
	}
	defer done()
	if err := c.ready(ctx, true); err != nil {
		return fmt.Errorf("guest agent channel: %w", err)
	}
	return nil
}

// Execute runs command with args (nil for none) and decodes its return
// value into result (nil to discard it).
func (c *Client) Execute(ctx context.Context, command string, args, result any) (err error) {
	if obs := c.opts.Observer; obs != nil {
		start := time.Now()
		defer func() { obs(command, time.Since(start), err) }()
	}
	if c.path == "" {
		return fmt.Errorf("guest agent %s: %w", command, ErrNotConfigured)
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.ceiling(command))
	defer cancel()
	if err := c.take(ctx); err != nil {
		return fmt.Errorf("guest agent %s: %w: another command holds the agent: %w", command, ErrUnresponsive, err)
	}
	defer c.give()

	if err := c.ready(ctx, false); err != nil {
		return fmt.Errorf("guest agent %s: %w", command, err)
	}
	c.nextID++
	id := c.nextID
	req, err := json.Marshal(struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        int64  `json:"id"`
	}{command, args, id})
	if err != nil {
		return fmt.Errorf("guest agent %s: encode: %w", command, err)
	}
	// On a freshly synced stream the next reply is ours even from an
	// agent (or proxy) that does not echo ids.
	clean := !c.dirty
	if err := c.write(ctx, append(req, '\n')); err != nil {
		return fmt.Errorf("guest agent %s: %w", command, err)
	}
	ret, err := c.readReply(ctx, command, id, clean)
	if err != nil {
		return err
	}
	c.setState(StateResponsive)
	if result == nil {
		return nil
	}
	if err := json.Unmarshal(ret, result); err != nil {
		return fmt.Errorf("guest agent %s: decode reply: %w", command, err)
	}
	return nil
}

// ready connects if needed and resyncs a new or dirty stream; with
// check, it first checks a clean open one (Sync).
func (c *Client) ready(ctx context.Context, check bool) error {
	if c.cn != nil && c.cn.ended() {
		c.drop() // the reader saw the end, and said so
	}
	if c.cn != nil && (c.dirty || c.cn.unread()) {
		c.dirty = true
	} else if c.cn != nil && check {
		if err := c.check(ctx); err != nil {
			if ctx.Err() != nil {
				return err
			}
			// No answer yet: resync in what time is left; a connection
			// found dead is replaced.
			c.dirty = true
		}
	}
	if c.cn == nil {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "unix", c.path)
		if err != nil {
			c.setState(StateNotConnected)
			return fmt.Errorf("%w: %w", ErrNotConnected, err)
		}
		c.install(conn)
		c.dirty = true
	}
	if !c.dirty {
		return nil
	}
	if err := c.resync(ctx); err != nil {
		c.drop()
		return err
	}
	c.dirty = false
	c.setState(StateResponsive)
	return nil
}

// errNoAnswer is a check's guest-sync that got no answer in
// CheckTimeout, on a connection that is still open.
var errNoAnswer = errors.New("no answer to guest-sync")

// check sends guest-sync with a fresh id and waits CheckTimeout for its
// answer, skipping anything older. Without one the connection stays
// open, for a resync.
func (c *Client) check(ctx context.Context) error {
	c.nextID++
	id := c.nextID
	cctx, cancel := context.WithTimeout(ctx, CheckTimeout)
	defer cancel()
	if err := c.write(cctx, fmt.Appendf(nil, "{\"execute\":\"guest-sync\",\"arguments\":{\"id\":%d}}\n", id)); err != nil {
		return fmt.Errorf("check: %w", err)
	}
	for {
		line, err := c.cn.next(cctx)
		switch {
		case err != nil && cctx.Err() != nil && ctx.Err() == nil:
			return fmt.Errorf("check: %w in %v", errNoAnswer, CheckTimeout)
		case err != nil:
			return fmt.Errorf("check: %w", c.fail(ctx, err))
		}
		var rep struct {
			Return *int64 `json:"return"`
		}
		if json.Unmarshal(bytes.TrimLeft(line, "\xff"), &rep) == nil && rep.Return != nil && *rep.Return == id {
			return nil
		}
	}
}

// resync discards whatever an earlier client or command left in the
// stream: the 0xFF byte makes the agent reset its parser, and the sync
// reply, prefixed with 0xFF, marks where fresh output starts.
func (c *Client) resync(ctx context.Context) error {
	c.syncing()
	c.nextID++
	id := c.nextID
	req := fmt.Sprintf("\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":%d}}\n", id)
	sctx, cancel := context.WithTimeout(ctx, cmpOr(c.opts.Timeout, DefaultTimeout))
	defer cancel()
	if err := c.write(sctx, []byte(req)); err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	c.cn.forgetLost() // whatever was lost came before the marker
	for {
		line, err := c.cn.next(sctx)
		if err != nil {
			return fmt.Errorf("sync: %w", c.fail(sctx, err))
		}
		// Fresh output starts after the last 0xFF; a line without one
		// is older.
		at := bytes.LastIndexByte(line, 0xff)
		if at < 0 {
			continue
		}
		var rep struct {
			Return *int64 `json:"return"`
		}
		// A reply to an older sync is stale: look for the next marker.
		if json.Unmarshal(line[at+1:], &rep) == nil && rep.Return != nil && *rep.Return == id {
			return nil
		}
	}
}

// readReply reads until the reply to request id, skipping stale replies
// and garbage (and marking the stream for a resync).
func (c *Client) readReply(ctx context.Context, command string, id int64, clean bool) (json.RawMessage, error) {
	for {
		line, err := c.cn.next(ctx)
		if err != nil {
			return nil, fmt.Errorf("guest agent %s: %w", command, c.fail(ctx, err))
		}
		line = bytes.TrimLeft(line, "\xff")
		var rep struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
			ID *int64 `json:"id"`
		}
		if err := json.Unmarshal(line, &rep); err != nil || (rep.Return == nil && rep.Error == nil) {
			c.dirty = true
			continue
		}
		if (rep.ID == nil && !clean) || (rep.ID != nil && *rep.ID != id) {
			c.dirty = true // a reply to something else: stale
			continue
		}
		if rep.Error != nil {
			c.setState(StateResponsive)
			return nil, agentError(command, rep.Error.Class, rep.Error.Desc)
		}
		return rep.Return, nil
	}
}

func agentError(command, class, desc string) error {
	e := &Error{Command: command, Class: class, Desc: desc}
	if strings.Contains(desc, "has been disabled") {
		return fmt.Errorf("%w: %w", ErrDisabled, e)
	}
	return e
}

// write sends buf within ctx's deadline; ctx always has one, the
// command's ceiling.
func (c *Client) write(ctx context.Context, buf []byte) error {
	dl, _ := ctx.Deadline()
	c.cn.conn.SetWriteDeadline(dl)
	if _, err := c.cn.conn.Write(buf); err != nil {
		// A write cut short leaves half a command in the agent's parser;
		// only a new connection and a resync recover from that.
		return c.fail(ctx, err)
	}
	return nil
}

// fail drops the connection after an I/O error or a timeout, and names
// the cause. A command that timed out may still be answered; a new
// connection, synced, skips that answer.
func (c *Client) fail(ctx context.Context, err error) error {
	c.drop()
	var ne net.Error
	if ctx.Err() != nil || (errors.As(err, &ne) && ne.Timeout()) {
		c.setState(StateUnresponsive)
		return fmt.Errorf("%w: %w", ErrUnresponsive, err)
	}
	c.setState(StateNotConnected)
	return fmt.Errorf("%w: %w", ErrNotConnected, err)
}

// install makes conn the client's connection and starts its reader.
// The caller holds the turn.
func (c *Client) install(conn net.Conn) {
	s := &stream{conn: conn, done: make(chan struct{}), more: make(chan struct{}, 1)}
	c.mu.Lock()
	c.cn, c.live = s, s
	c.mu.Unlock()
	c.syncing()
	go s.read(func() { c.ended(s) })
}

// syncing marks a sync under way, unless the agent did not answer last
// time: it stays unresponsive until it answers.
func (c *Client) syncing() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != StateUnresponsive {
		c.state = StateSyncing
	}
}

// ended hears from a reader that its connection ended, not by the
// client's doing: between commands, that is the news of the agent.
func (c *Client) ended(s *stream) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.live == s {
		c.state = StateNotConnected
	}
}

func (c *Client) drop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropLocked()
}

// dropLocked closes the connection; the caller holds the turn and mu.
func (c *Client) dropLocked() {
	if c.cn != nil {
		c.cn.close()
		c.cn, c.live = nil, nil
	}
}

func (c *Client) setState(s State) {
	c.mu.Lock()
	c.state = s
	c.mu.Unlock()
}

// Limits of what a reader keeps: no reply the daemon asks for comes
// near them.
const (
	maxLine   = 16 << 20
	maxQueued = 1024
)

// stream is one connection and the goroutine that reads it, line by
// line, into a queue: the end of a held connection shows at once, even
// between commands, and what arrives between commands is known to be
// stale.
type stream struct {
	conn net.Conn
	done chan struct{} // closed when the reader stops
	more chan struct{} // a line was queued

	mu      sync.Mutex
	lines   [][]byte
	lost    bool  // the queue overflowed or a line was too long
	err     error // why the reader stopped
	closing bool  // the client closed it
}

// read queues lines until the connection ends; gone is told if it ended
// on the peer's side.
func (s *stream) read(gone func()) {
	r := bufio.NewReaderSize(s.conn, 64<<10)
	var line []byte
	long := false
	for {
		frag, err := r.ReadSlice('\n')
		if len(line)+len(frag) > maxLine {
			long, line = true, line[:0]
		} else if !long {
			line = append(line, frag...)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err != nil {
			s.mu.Lock()
			s.err = err
			closing := s.closing
			s.mu.Unlock()
			// The news first, then the end: whoever Lost wakes reads
			// the state the end left.
			if !closing {
				gone()
			}
			close(s.done)
			return
		}
		s.mu.Lock()
		switch {
		case long:
			s.lost = true
		case len(s.lines) >= maxQueued:
			s.lost = true
			s.lines = append(s.lines[1:], line)
		default:
			s.lines = append(s.lines, line)
		}
		s.mu.Unlock()
		line, long = nil, false
		select {
		case s.more <- struct{}{}:
		default:
		}
	}
}

// next returns the next line, waiting within ctx; the lines that came
// before the end of the connection come first.
func (s *stream) next(ctx context.Context) ([]byte, error) {
	for {
		s.mu.Lock()
		if len(s.lines) > 0 {
			line := s.lines[0]
			s.lines[0] = nil
			s.lines = s.lines[1:]
			s.mu.Unlock()
			return line, nil
		}
		err := s.err
		s.mu.Unlock()
		if err != nil {
			return nil, err
		}
		select {
		case <-s.more:
		case <-s.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// unread reports whether the stream holds output nobody asked for, or
// lost some: either way the next command resyncs first.
func (s *stream) unread() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.lines) > 0 || s.lost
}

func (s *stream) forgetLost() {
	s.mu.Lock()
	s.lost = false
	s.mu.Unlock()
}

func (s *stream) ended() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

func (s *stream) close() {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	s.conn.Close()
}
