package testguest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"time"
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

// Agent runs one guest agent command and decodes its return value into
// result (unless result is nil). It opens a connection for the call,
// resynchronises with guest-sync-delimited, and gives up when ctx ends or,
// without a deadline in ctx, after AgentTimeout. An error reply is an
// *AgentError. For commands that do not answer on success
// (guest-shutdown, guest-suspend-*) it returns once the command is sent.
//
// This is a small client for tests, not the product's agent client.
func (g *Guest) Agent(ctx context.Context, cmd string, args, result any) error {
	return agentCall(ctx, g.QGA, cmd, args, result)
}

func agentCall(ctx context.Context, sock, cmd string, args, result any) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, AgentTimeout)
		defer cancel()
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return fmt.Errorf("agent %s: %w", cmd, err)
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	// Cancellation interrupts blocked reads and writes at once.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	// Any failure of the exchange means there is no reply to report.
	wrap := func(what string, err error) error {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return fmt.Errorf("agent %s: %s: %w: %w", cmd, what, ErrNoReply, err)
	}

	r := bufio.NewReader(conn)
	if err := resync(conn, r); err != nil {
		return wrap("guest-sync-delimited", err)
	}

	req, err := json.Marshal(struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
	}{cmd, args})
	if err != nil {
		return fmt.Errorf("agent %s: encode arguments: %w", cmd, err)
	}
	if _, err := conn.Write(append(req, '\n')); err != nil {
		return wrap("send", err)
	}
	if noReply[cmd] {
		return nil
	}
	line, err := readLine(r)
	if err != nil {
		return wrap("read reply", err)
	}
	var reply struct {
		Return json.RawMessage `json:"return"`
		Error  *AgentError     `json:"error"`
	}
	if err := json.Unmarshal(line, &reply); err != nil {
		return fmt.Errorf("agent %s: decode reply %q: %w", cmd, line, err)
	}
	if reply.Error != nil {
		reply.Error.Command = cmd
		return reply.Error
	}
	if result != nil {
		if err := json.Unmarshal(reply.Return, result); err != nil {
			return fmt.Errorf("agent %s: decode return %s: %w", cmd, reply.Return, err)
		}
	}
	return nil
}

// resync sends 0xFF, which makes qemu-ga drop any partial input, then
// guest-sync-delimited with a fresh id, and skips everything until the
// 0xFF-delimited reply with that id: answers to requests of earlier
// connections may still be on their way.
func resync(conn net.Conn, r *bufio.Reader) error {
	id := rand.Int64N(1 << 31)
	req := fmt.Appendf([]byte{0xff}, `{"execute":"guest-sync-delimited","arguments":{"id":%d}}`+"\n", id)
	if _, err := conn.Write(req); err != nil {
		return err
	}
	for {
		line, err := readLine(r)
		if err != nil {
			return err
		}
		i := bytes.LastIndexByte(line, 0xff)
		if i < 0 {
			continue
		}
		var reply struct {
			Return *int64 `json:"return"`
		}
		if json.Unmarshal(line[i+1:], &reply) == nil && reply.Return != nil && *reply.Return == id {
			return nil
		}
	}
}

// maxLine bounds a reply line; guest-exec-status output is base64 of at
// most 16 MiB per stream in qemu-ga 7.2.
const maxLine = 64 << 20

func readLine(r *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		line = append(line, chunk...)
		switch {
		case err == nil:
			return line, nil
		case errors.Is(err, bufio.ErrBufferFull):
			if len(line) > maxLine {
				return nil, fmt.Errorf("reply line over %d bytes", maxLine)
			}
		default:
			return nil, err
		}
	}
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
