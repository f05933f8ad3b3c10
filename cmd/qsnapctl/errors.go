package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"syscall"
	"time"

	"github.com/qsnapd/qsnapd/api"
)

// errDiskspec marks a --diskspec that does not parse; the message is
// virsh's.
var errDiskspec = errors.New("unable to parse diskspec")

// errNoCommand is a command line without a command.
var errNoCommand = errors.New("no command given; run 'qsnapctl help' for the list")

// boundError ends the context of a command or a request whose bound
// passed: the cause explain reads to say how long was waited.
type boundError struct {
	bound   time.Duration
	changes bool // the request changes state: the daemon may still be at it
}

func (e *boundError) Error() string { return fmt.Sprintf("timed out after %s", e.bound) }

// Unwrap keeps the error a deadline, as the context's Err says.
func (e *boundError) Unwrap() error { return context.DeadlineExceeded }

// serviceHint is what to check when no daemon answers.
const serviceHint = "is qsnapd.service running? see: systemctl status qsnapd"

// explain is a failure as the user reads it. A daemon that cannot be
// reached, or that gave no answer within the bound, is said plainly,
// with what to check; the wrapping of such an error adds nothing, and
// is left out. Anything else is err's own message.
func explain(err error) string {
	var noAnswer *api.NoAnswerError
	var bound *boundError
	if errors.As(err, &noAnswer) && errors.As(noAnswer.Err, &bound) {
		if bound.changes {
			return fmt.Sprintf("no answer from qsnapd on %s within %s: the daemon may still be at work on it, "+
				"or no daemon answers on the socket (%s)", noAnswer.Socket, bound.bound, serviceHint)
		}
		return fmt.Sprintf("no answer from qsnapd on %s within %s: the socket accepts but no daemon answers (%s)",
			noAnswer.Socket, bound.bound, serviceHint)
	}
	var dial *net.OpError
	if errors.As(err, &dial) && dial.Op == "dial" && dial.Addr != nil {
		why := ""
		switch {
		case errors.Is(err, fs.ErrNotExist):
			why = "the socket does not exist"
		case errors.Is(err, syscall.ECONNREFUSED):
			why = "nothing listens on the socket"
		case errors.Is(err, syscall.EAGAIN):
			// A socket held for a daemon that never accepts fills up.
			why = "its queue of connections is full: no daemon takes them"
		case errors.Is(err, fs.ErrPermission):
			// Not the service's fault: the hint is who may connect.
			return fmt.Sprintf("cannot connect to qsnapd on %s: permission denied (the read-write socket is for root "+
				"and members of group qsnapd; anyone may read through --socket %s)", dial.Addr, api.DefaultSocketRO)
		}
		if why != "" {
			return fmt.Sprintf("cannot connect to qsnapd on %s: %s (%s)", dial.Addr, why, serviceHint)
		}
	}
	return err.Error()
}

// lostOpError is a failure without a reply from the daemon (the
// connection broke, the wait timed out or was interrupted) of a mutating
// request: the operation may go on in the daemon, whose outcome stays
// readable under opID.
type lostOpError struct {
	opID string
	err  error
}

func (e *lostOpError) Error() string { return e.err.Error() }
func (e *lostOpError) Unwrap() error { return e.err }

// usageError is a mistake on the command line, found before any
// request is sent.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(format string, a ...any) error {
	return &usageError{err: fmt.Errorf(format, a...)}
}
