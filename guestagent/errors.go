package guestagent

import (
	"errors"
	"fmt"
)

var (
	// ErrNotConfigured means the domain has no agent socket.
	ErrNotConfigured = errors.New("guest agent not configured")

	// ErrNotConnected means the agent socket cannot be reached: it does
	// not exist or refuses connections.
	ErrNotConnected = errors.New("guest agent not connected")

	// ErrUnresponsive means the agent did not answer in time. With no
	// agent running in the guest, QEMU's chardev accepts the connection
	// and then never says anything, so this is also "no agent".
	ErrUnresponsive = errors.New("guest agent unresponsive")

	// ErrDisabled means the command is disabled in the agent: blocked by
	// its configuration, or refused while the guest is frozen.
	ErrDisabled = errors.New("guest agent command disabled")
)

// Error is an error reply from the agent.
type Error struct {
	Command string
	Class   string
	Desc    string
}

func (e *Error) Error() string {
	return fmt.Sprintf("guest agent %s: %s: %s", e.Command, e.Class, e.Desc)
}
