package driver

import "errors"

// Error kinds, named after libvirt's error codes where one fits. Errors
// returned by the driver wrap at least one of them; Kind sorts them into
// the kinds every front end renders.
var (
	// ErrInvalidArg: the request is malformed or contradicts itself.
	ErrInvalidArg = errors.New("invalid argument")
	// ErrUnsupported: valid for libvirt, but not something qsnapd does.
	ErrUnsupported = errors.New("unsupported configuration")
	// ErrSnapshotExists: a snapshot of that name exists.
	ErrSnapshotExists = errors.New("snapshot exists")
	// ErrNoDomain: no domain of that name is registered.
	ErrNoDomain = errors.New("domain not found")
	// ErrDomainExists: a domain of that name is registered already.
	ErrDomainExists = errors.New("domain exists")
	// ErrNoSnapshot: the domain has no snapshot of that name.
	ErrNoSnapshot = errors.New("domain snapshot not found")
	// ErrDisconnected: the domain's QEMU cannot be reached now.
	ErrDisconnected = errors.New("domain disconnected")
	// ErrBusy: another operation holds the domain past the caller's
	// deadline.
	ErrBusy = errors.New("operation in progress")
	// ErrOperationInvalid: the request is valid but not in this state.
	ErrOperationInvalid = errors.New("operation invalid")
	// ErrOperationFailed: QEMU or the host failed the operation; the
	// error says what was left behind.
	ErrOperationFailed = errors.New("operation failed")
	// ErrClosed: the driver is shutting down.
	ErrClosed = errors.New("driver closed")
	// ErrAgentUnresponsive: the guest agent is not configured, not
	// reachable or not answering. The agent's own error stays in the
	// chain and gives the message.
	ErrAgentUnresponsive = errors.New("guest agent unavailable")
	// ErrNoOperation: no operation of that id is running.
	ErrNoOperation = errors.New("no such operation")
	// ErrCancelled: the caller cancelled the operation before its point
	// of no return; nothing changed.
	ErrCancelled = errors.New("operation cancelled")
	// ErrOutcomeUnknown: QEMU went away in the middle of the operation
	// and did not come back within the reconnect wait, so what it did
	// to the disks is not known. The journal keeps the operation open;
	// recovery completes it when QEMU returns and reports it with
	// Events.OperationResolved.
	ErrOutcomeUnknown = errors.New("outcome unknown")
)
