// Command qsnapctl is the virsh-style command line client of qsnapd.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/internal/opid"
	"github.com/qsnapd/qsnapd/internal/version"
)

// socketEnv names the variable that sets the socket, after --socket.
const socketEnv = "QSNAPD_SOCKET"

// How long a command waits for the daemon's answer, unless --timeout
// says otherwise.
const (
	// changeTimeout bounds a command that changes state: a snapshot
	// that fails may have to roll back, which takes a while.
	changeTimeout = 10 * time.Minute
	// answerTimeout bounds a command that only reads, and each reading
	// of a followed operation: a live daemon answers those at once, so
	// a longer wait is a socket that no daemon serves (systemd holds it
	// for a daemon that failed to start, and the kernel queues the
	// connection).
	answerTimeout = 30 * time.Second
)

func main() {
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	c := &cli{stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv, loc: time.Local,
		signals: signals, tty: stdoutIsTerminal(), poll: pollInterval}
	code := c.main(context.Background(), os.Args[1:])
	signal.Stop(signals)
	os.Exit(code)
}

// cli is one invocation: its outputs and, once the global options are
// read, its settings and client.
type cli struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	loc            *time.Location // of printed times
	// timeout, if set (--timeout), bounds every command and request
	// in place of changeTimeout and answerTimeout.
	timeout time.Duration
	// signals are SIGINT and SIGTERM: they end a command, unless it
	// follows an operation, which handles them itself.
	signals <-chan os.Signal
	tty     bool          // stdout is a terminal: progress is a bar
	poll    time.Duration // how often a followed operation is read

	json   bool
	client *api.Client
}

// main runs a command line and returns the exit status.
func (c *cli) main(ctx context.Context, argv []string) int {
	if err := c.run(ctx, argv); err != nil {
		c.report(err)
		return 1
	}
	return 0
}

func (c *cli) run(ctx context.Context, argv []string) error {
	g, err := parseGlobals(argv, c.getenv, api.DefaultSocket)
	if err != nil {
		return err
	}
	switch {
	case g.version:
		_, err := fmt.Fprintf(c.stdout, "qsnapctl %s (%s)\n", version.String(), version.Go())
		return err
	case g.help:
		writeHelp(c.stdout)
		return nil
	case len(g.rest) == 0:
		return &usageError{err: errNoCommand}
	}
	name, rest := g.rest[0], g.rest[1:]
	if name == "help" {
		return c.help(rest)
	}
	cmd := lookup(name)
	if cmd == nil {
		return usagef("unknown command: '%s'", name)
	}
	a, err := parseArgs(cmd, rest)
	if err != nil {
		return err
	}
	if a.help {
		writeCommandHelp(c.stdout, cmd)
		return nil
	}
	c.json = g.json || a.json
	if g.timeout > 0 {
		c.timeout = g.timeout
	}
	c.client = api.NewClient(g.socket)
	// Every change goes under an operation id, so that a connection lost
	// before the answer is retried once without running anything twice.
	c.client.OperationIDs = opid.New
	defer c.client.Close()
	if c.poll <= 0 {
		c.poll = pollInterval
	}
	if !cmd.follows(a) {
		var cancel context.CancelFunc
		ctx, cancel = c.bounded(ctx, cmd.changes(a))
		defer cancel()
		var stop func()
		ctx, stop = c.interruptible(ctx)
		defer stop()
	}
	err = cmd.run(ctx, c, a)
	if err != nil && ctx.Err() != nil && !errors.As(err, new(*api.Error)) {
		return fmt.Errorf("%s: %w", cause(ctx), err)
	}
	return err
}

// bound is how long a command or a request waits for the daemon's
// answer: --timeout if given, else changeTimeout if it changes state,
// else answerTimeout.
func (c *cli) bound(changes bool) time.Duration {
	switch {
	case c.timeout > 0:
		return c.timeout
	case changes:
		return changeTimeout
	}
	return answerTimeout
}

// bounded returns ctx ended once the bound passes, with a boundError as
// its cause: a request that gets no answer in time says so plainly.
func (c *cli) bounded(ctx context.Context, changes bool) (context.Context, context.CancelFunc) {
	b := c.bound(changes)
	return context.WithTimeoutCause(ctx, b, &boundError{bound: b, changes: changes})
}

// interruptible returns ctx ended by a signal as well, as Ctrl-C ends a
// command, and the func that stops listening.
func (c *cli) interruptible(ctx context.Context) (context.Context, func()) {
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		select {
		case <-c.signals:
			cancel()
		case <-done:
		}
	}()
	return sctx, func() {
		close(done)
		cancel()
	}
}

// cause says why ctx ended.
func cause(ctx context.Context) string {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return "timed out"
	}
	return "interrupted"
}

// help is the help command: global help, or one command's.
func (c *cli) help(argv []string) error {
	switch len(argv) {
	case 0:
		writeHelp(c.stdout)
		return nil
	case 1:
		cmd := lookup(argv[0])
		if cmd == nil {
			return usagef("command '%s' doesn't exist", argv[0])
		}
		writeCommandHelp(c.stdout, cmd)
		return nil
	}
	return usagef("unexpected data '%s'", argv[1])
}
