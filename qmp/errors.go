package qmp

import (
	"errors"
	"fmt"
)

var (
	// ErrDisconnected means the connection to QEMU ended (EOF, a read or
	// write failure, or Close) before the command got its reply.
	ErrDisconnected = errors.New("qmp: disconnected")

	// ErrTimeout means a command outlived its ceiling or its context
	// deadline; QEMU may still carry it out.
	ErrTimeout = errors.New("qmp: timeout")

	// ErrGreeting means the peer did not complete the QMP handshake: no
	// greeting, a malformed one, or a refused qmp_capabilities.
	ErrGreeting = errors.New("qmp: greeting failed")

	// ErrLineTooLong means the peer sent a line over MaxLineBytes; the
	// connection cannot be resynchronised and is closed.
	ErrLineTooLong = errors.New("qmp: line too long")

	// ErrSubscriptionClosed is returned by Subscription.Next after Close.
	ErrSubscriptionClosed = errors.New("qmp: subscription closed")
)

// Error is an error reply from QEMU, carrying the QAPI error class (for
// example "GenericError", "CommandNotFound", "DeviceNotFound").
type Error struct {
	Command string
	Class   string
	Desc    string
}

func (e *Error) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// IsClass reports whether err is a QEMU error reply of the given class.
func IsClass(err error, class string) bool {
	var qe *Error
	return errors.As(err, &qe) && qe.Class == class
}
