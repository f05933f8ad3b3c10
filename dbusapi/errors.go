package dbusapi

import (
	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/errkind"
)

// D-Bus error names, one for each code of the HTTP API that D-Bus can
// answer; the error's body is the message. api's error table defines
// them, with the rest of each kind's rendering.
const (
	ErrorPrefix               = api.DBusErrorPrefix
	ErrorInvalidArg           = api.DBusInvalidArg
	ErrorNoDomain             = api.DBusNoDomain
	ErrorNoDomainSnapshot     = api.DBusNoDomainSnapshot
	ErrorSnapshotExists       = api.DBusSnapshotExists
	ErrorOperationInProgress  = api.DBusOperationInProgress
	ErrorOperationUnsupported = api.DBusOperationUnsupported
	ErrorAgentUnresponsive    = api.DBusAgentUnresponsive
	ErrorOperationInvalid     = api.DBusOperationInvalid
	ErrorOperationFailed      = api.DBusOperationFailed
	ErrorInternalError        = api.DBusInternalError
	ErrorOperationAborted     = api.DBusOperationAborted
	ErrorNoOperation          = api.DBusNoOperation
)

// ErrorName is the D-Bus error name of a driver error, as the HTTP API
// would classify it; ErrorInternalError if it is of no known kind.
func ErrorName(err error) string { return nameOf(driver.Kind(err)) }

// nameOf is a kind's D-Bus error name.
func nameOf(k errkind.Kind) string {
	if name := api.ClassOf(k).DBus; name != "" {
		return name
	}
	return ErrorInternalError
}
