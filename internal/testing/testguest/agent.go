package testguest

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/qsnapd/qsnapd/guestagent"
)

// AgentTimeout is the ceiling of one agent command whose context has no
// deadline.
const AgentTimeout = 30 * time.Second

// noReply lists the commands qemu-ga does not answer when they succeed.
var noReply = map[string]bool{
	"guest-shutdown":       true,
	"guest-suspend-disk":   true,
	"guest-suspend-ram":    true,
	"guest-suspend-hybrid": true,
}

// Executor runs one guest agent command, as *guestagent.Client does.
type Executor interface {
	Execute(ctx context.Context, command string, args, result any) error
}

// Through returns a view of the guest whose Agent, Exec and Run go
// through e instead of a connection of their own: QEMU's chardev serves
// one client at a time, so while a daemon under test holds the agent
// channel, a test speaks to the guest through the daemon's client.
func (g *Guest) Through(e Executor) *Guest {
	v := *g
	v.via = e
	return &v
}

// Agent runs one guest agent command and decodes its return value into
// result (unless result is nil). It opens a connection for the call
// (guestagent's, which resynchronises first), unless the guest is seen
// Through another client, and gives up when ctx ends or, without a
// deadline in ctx, after AgentTimeout. An error reply is an
// *AgentError. Commands that do not answer on success (guest-shutdown,
// guest-suspend-*) succeed when the agent goes quiet or away.
func (g *Guest) Agent(ctx context.Context, cmd string, args, result any) error {
	return agentCall(ctx, g.via, g.QGA, cmd, args, result)
}

func agentCall(ctx context.Context, via Executor, sock, cmd string, args, result any) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, AgentTimeout)
		defer cancel()
	}
	if via == nil {
		// The product's client, one connection per call so that the
		// daemon under test can have the channel in between; ctx sets
		// the ceiling.
		c := guestagent.New(sock, guestagent.Options{Timeout: AgentTimeout, FreezeTimeout: AgentTimeout, ThawTimeout: AgentTimeout})
		defer c.Close()
		via = c
	}
	err := via.Execute(ctx, cmd, args, result)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, guestagent.ErrUnresponsive), errors.Is(err, guestagent.ErrNotConnected):
		if noReply[cmd] {
			return nil // it did what it says: the guest is going away
		}
		return fmt.Errorf("agent %s: %w: %w", cmd, ErrNoReply, err)
	}
	return err
}

// ExecResult is what a guest process left behind.
type ExecResult struct {
	Stdout   string
	Stderr   string
	ExitCode int
}

// Exec runs argv in the guest through guest-exec, waits for it by polling
// guest-exec-status, and returns its standard output and exit code. A
// non-zero exit code is not an error; see Run for standard error.
func (g *Guest) Exec(ctx context.Context, argv ...string) (stdout string, exitcode int, err error) {
	res, err := g.Run(ctx, argv...)
	return res.Stdout, res.ExitCode, err
}

// Run is Exec returning standard error as well. A process killed by a
// signal yields ErrSignaled.
func (g *Guest) Run(ctx context.Context, argv ...string) (ExecResult, error) {
	if len(argv) == 0 {
		return ExecResult{}, errors.New("testguest: exec: empty argv")
	}
	var started struct {
		PID int `json:"pid"`
	}
	err := g.Agent(ctx, "guest-exec", map[string]any{
		"path": argv[0], "arg": argv[1:], "capture-output": true,
	}, &started)
	if err != nil {
		return ExecResult{}, fmt.Errorf("exec %q: %w", argv, err)
	}
	poll := 10 * time.Millisecond
	for {
		var st struct {
			Exited   bool   `json:"exited"`
			ExitCode *int   `json:"exitcode"`
			Signal   *int   `json:"signal"`
			OutData  string `json:"out-data"`
			ErrData  string `json:"err-data"`
		}
		if err := g.Agent(ctx, "guest-exec-status", map[string]any{"pid": started.PID}, &st); err != nil {
			return ExecResult{}, fmt.Errorf("exec %q: %w", argv, err)
		}
		if st.Exited {
			var res ExecResult
			out, err1 := base64.StdEncoding.DecodeString(st.OutData)
			errOut, err2 := base64.StdEncoding.DecodeString(st.ErrData)
			res.Stdout, res.Stderr = string(out), string(errOut)
			if err := errors.Join(err1, err2); err != nil {
				return res, fmt.Errorf("exec %q: decode output: %w", argv, err)
			}
			if st.ExitCode != nil {
				res.ExitCode = *st.ExitCode
			}
			if st.Signal != nil {
				res.ExitCode = 128 + *st.Signal
				return res, fmt.Errorf("exec %q: signal %d: %w", argv, *st.Signal, ErrSignaled)
			}
			return res, nil
		}
		select {
		case <-ctx.Done():
			return ExecResult{}, fmt.Errorf("exec %q: wait for pid %d: %w", argv, started.PID, ctx.Err())
		case <-time.After(poll):
		}
		poll = min(2*poll, 200*time.Millisecond)
	}
}
