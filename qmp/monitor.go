package qmp

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/digitalocean/go-qemu/qmp"
)

var _ qmp.Monitor = (*boundMonitor)(nil)

// Events returns a channel of every event until ctx ends or the session
// ends, as qmp.Monitor's Events does. A reader that falls behind delays
// only itself.
func (c *Client) Events(ctx context.Context) (<-chan qmp.Event, error) {
	sub, err := c.Subscribe(Filter{})
	if err != nil {
		return nil, err
	}
	out := make(chan qmp.Event)
	go func() {
		defer close(out)
		defer sub.Close()
		for {
			ev, err := sub.Next(ctx)
			if err != nil {
				return
			}
			select {
			case out <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

// Bind returns the client as a go-qemu qmp.Monitor whose Run and Connect
// honour ctx (and each command's ceiling), so that qmp/raw's typed calls
// get deadlines too:
//
//	raw.NewMonitor(client.Bind(ctx)).QueryStatus()
//
// Run returns the whole reply line; a QEMU error comes back as *Error.
func (c *Client) Bind(ctx context.Context) qmp.Monitor {
	return &boundMonitor{c: c, ctx: ctx}
}

type boundMonitor struct {
	c   *Client
	ctx context.Context
}

func (b *boundMonitor) Connect() error                 { return b.c.Connect(b.ctx) }
func (b *boundMonitor) Disconnect() error              { return b.c.Close() }
func (b *boundMonitor) Run(cmd []byte) ([]byte, error) { return b.c.runRaw(b.ctx, cmd) }
func (b *boundMonitor) Events(ctx context.Context) (<-chan qmp.Event, error) {
	return b.c.Events(ctx)
}

// runRaw re-frames a marshalled command with our own id, so that its
// reply is matched like any other.
func (c *Client) runRaw(ctx context.Context, command []byte) ([]byte, error) {
	var cmd struct {
		Execute   string          `json:"execute"`
		Arguments json.RawMessage `json:"arguments"`
	}
	if err := json.Unmarshal(command, &cmd); err != nil || cmd.Execute == "" {
		return nil, fmt.Errorf("qmp run: not a QMP command: %.80q", command)
	}
	var args any
	if len(cmd.Arguments) > 0 && string(cmd.Arguments) != "null" && string(cmd.Arguments) != "{}" {
		args = cmd.Arguments
	}
	r, err := c.execute(ctx, cmd.Execute, args)
	if err != nil {
		return nil, err
	}
	return r.line, nil
}
