package main

import (
	"errors"
	"fmt"
)

// errDiskspec marks a --diskspec that does not parse; the message is
// virsh's.
var errDiskspec = errors.New("unable to parse diskspec")

// errNoCommand is a command line without a command.
var errNoCommand = errors.New("no command given; run 'qsnapctl help' for the list")

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
