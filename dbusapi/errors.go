package dbusapi

import (
	"errors"

	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/guestagent"
)

// D-Bus error names, one for each code of the HTTP API; the error's body
// is the message.
const (
	ErrorPrefix               = "io.github.qsnapd.Error."
	ErrorInvalidArg           = ErrorPrefix + "InvalidArg"
	ErrorNoDomain             = ErrorPrefix + "NoDomain"
	ErrorNoDomainSnapshot     = ErrorPrefix + "NoDomainSnapshot"
	ErrorSnapshotExists       = ErrorPrefix + "SnapshotExists"
	ErrorOperationInProgress  = ErrorPrefix + "OperationInProgress"
	ErrorOperationUnsupported = ErrorPrefix + "OperationUnsupported"
	ErrorAgentUnresponsive    = ErrorPrefix + "AgentUnresponsive"
	ErrorOperationInvalid     = ErrorPrefix + "OperationInvalid"
	ErrorOperationFailed      = ErrorPrefix + "OperationFailed"
	ErrorInternalError        = ErrorPrefix + "InternalError"
)

// errorNames maps error kinds to names, most specific first: an error
// may wrap several kinds (a quiesce failure wraps the agent's error).
var errorNames = []struct {
	kinds []error
	name  string
}{
	{[]error{driver.ErrInvalidArg}, ErrorInvalidArg},
	{[]error{driver.ErrNoDomain}, ErrorNoDomain},
	{[]error{driver.ErrNoSnapshot}, ErrorNoDomainSnapshot},
	{[]error{driver.ErrSnapshotExists}, ErrorSnapshotExists},
	{[]error{driver.ErrBusy}, ErrorOperationInProgress},
	{[]error{guestagent.ErrDisabled}, ErrorOperationUnsupported},
	{[]error{guestagent.ErrNotConfigured, guestagent.ErrNotConnected, guestagent.ErrUnresponsive}, ErrorAgentUnresponsive},
	{[]error{driver.ErrUnsupported}, ErrorOperationUnsupported},
	{[]error{driver.ErrDisconnected, driver.ErrClosed, driver.ErrOperationInvalid, driver.ErrDomainExists}, ErrorOperationInvalid},
	{[]error{driver.ErrOperationFailed, driver.ErrQuiesce}, ErrorOperationFailed},
}

// ErrorName is the D-Bus error name of a driver error, as the HTTP API
// would classify it; ErrorInternalError if it is of no known kind.
func ErrorName(err error) string {
	for _, e := range errorNames {
		for _, kind := range e.kinds {
			if errors.Is(err, kind) {
				return e.name
			}
		}
	}
	return ErrorInternalError
}
