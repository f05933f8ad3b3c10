package testguest

import (
	"errors"

	"github.com/qsnapd/qsnapd/guestagent"
)

var (
	// ErrNoReply means the agent connection ended or timed out before the
	// reply came; without a running qemu-ga every read blocks, so this is
	// also what a dead agent looks like.
	ErrNoReply = errors.New("testguest: no reply from the guest agent")

	// ErrSignaled means a guest-exec process was killed by a signal.
	ErrSignaled = errors.New("testguest: guest process killed by a signal")
)

// AgentError is an error reply of qemu-ga, with its QAPI class (for
// example "GenericError", "CommandNotFound").
type AgentError = guestagent.Error
