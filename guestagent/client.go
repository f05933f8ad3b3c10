// Package guestagent is a client for the QEMU guest agent (qemu-ga): one
// lazily opened connection per domain, resynchronised at connect and
// after any timeout or garbage, with a ceiling on every command.
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
	"time"
)

// Default ceilings. Sync and ping answer at once from a live agent; a
// freeze or thaw waits for the guest's filesystems and hooks.
const (
	DefaultTimeout       = 5 * time.Second
	DefaultFreezeTimeout = 60 * time.Second
	DefaultThawTimeout   = 60 * time.Second
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

// Client speaks to one guest agent. It is safe for concurrent use; one
// caller speaks at a time, and a caller waits for its turn no longer
// than its context allows.
type Client struct {
	path string
	opts Options
	turn chan struct{} // holds a token while a caller speaks

	// Guarded by turn.
	conn   net.Conn
	r      *bufio.Reader
	dirty  bool // the stream may hold stale bytes: resync before use
	nextID int64
}

// New returns a client for the agent socket at path; it connects on
// first use. An empty path gives a client whose every call fails with
// ErrNotConfigured.
func New(path string, opts Options) *Client {
	return &Client{path: path, opts: opts, turn: make(chan struct{}, 1), nextID: rand.Int64N(1 << 40)}
}

// Path is the agent socket path.
func (c *Client) Path() string { return c.path }

// Close drops the connection; the next call reconnects.
func (c *Client) Close() error {
	select {
	case c.turn <- struct{}{}:
		c.drop()
		<-c.turn
	default:
		// A caller is speaking; its connection ends with its deadline
		// at the latest, and the next caller reconnects.
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
	select {
	case c.turn <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("guest agent %s: %w: another command holds the agent: %w", command, ErrUnresponsive, ctx.Err())
	}
	defer func() { <-c.turn }()

	if err := c.ready(ctx); err != nil {
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
	if result == nil {
		return nil
	}
	if err := json.Unmarshal(ret, result); err != nil {
		return fmt.Errorf("guest agent %s: decode reply: %w", command, err)
	}
	return nil
}

// ready connects if needed and resyncs a new or dirty stream.
func (c *Client) ready(ctx context.Context) error {
	if c.conn == nil {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "unix", c.path)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrNotConnected, err)
		}
		c.conn, c.r, c.dirty = conn, bufio.NewReaderSize(conn, 64<<10), true
	}
	if !c.dirty {
		return nil
	}
	if err := c.resync(ctx); err != nil {
		c.drop()
		return err
	}
	c.dirty = false
	return nil
}

// resync discards whatever an earlier client or command left in the
// stream: the 0xFF byte makes the agent reset its parser, and the sync
// reply, prefixed with 0xFF, marks where fresh output starts.
func (c *Client) resync(ctx context.Context) error {
	c.nextID++
	id := c.nextID
	req := fmt.Sprintf("\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":%d}}\n", id)
	sctx, cancel := context.WithTimeout(ctx, cmpOr(c.opts.Timeout, DefaultTimeout))
	defer cancel()
	if err := c.write(sctx, []byte(req)); err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	for {
		if err := c.readUntil(sctx, 0xff); err != nil {
			return fmt.Errorf("sync: %w", err)
		}
		line, err := c.readLine(sctx)
		if err != nil {
			return fmt.Errorf("sync: %w", err)
		}
		var rep struct {
			Return *int64 `json:"return"`
		}
		// A reply to an older sync is stale: look for the next marker.
		if json.Unmarshal(line, &rep) == nil && rep.Return != nil && *rep.Return == id {
			return nil
		}
	}
}

// readReply reads until the reply to request id, skipping stale replies
// and garbage (and marking the stream for a resync).
func (c *Client) readReply(ctx context.Context, command string, id int64, clean bool) (json.RawMessage, error) {
	for {
		line, err := c.readLine(ctx)
		if err != nil {
			return nil, fmt.Errorf("guest agent %s: %w", command, err)
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

func (c *Client) write(ctx context.Context, buf []byte) error {
	c.deadline(ctx)
	if _, err := c.conn.Write(buf); err != nil {
		// A write cut short leaves half a command in the agent's parser;
		// only a new connection and a resync recover from that.
		return c.fail(ctx, err)
	}
	return nil
}

func (c *Client) readLine(ctx context.Context) ([]byte, error) {
	c.deadline(ctx)
	line, err := c.r.ReadBytes('\n')
	if err != nil {
		return nil, c.fail(ctx, err)
	}
	return line, nil
}

func (c *Client) readUntil(ctx context.Context, delim byte) error {
	c.deadline(ctx)
	if _, err := c.r.ReadBytes(delim); err != nil {
		return c.fail(ctx, err)
	}
	return nil
}

// deadline applies ctx's deadline to the socket; ctx always has one,
// the command's ceiling.
func (c *Client) deadline(ctx context.Context) {
	dl, _ := ctx.Deadline()
	c.conn.SetDeadline(dl)
}

// fail drops the connection after an I/O error and names the cause.
func (c *Client) fail(ctx context.Context, err error) error {
	c.drop()
	var ne net.Error
	if ctx.Err() != nil || (errors.As(err, &ne) && ne.Timeout()) {
		return fmt.Errorf("%w: %w", ErrUnresponsive, err)
	}
	return fmt.Errorf("%w: %w", ErrNotConnected, err)
}

func (c *Client) drop() {
	if c.conn != nil {
		c.conn.Close()
		c.conn, c.r = nil, nil
	}
}
