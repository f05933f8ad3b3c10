package api

import (
	"net/http"

	"github.com/qsnapd/qsnapd/errkind"
)

// Error codes, after libvirt's error names where one fits.
const (
	CodeNoDomain             = "no-domain"
	CodeNoDomainSnapshot     = "no-domain-snapshot"
	CodeInvalidArg           = "invalid-arg"
	CodeOperationInvalid     = "operation-invalid"
	CodeOperationUnsupported = "operation-unsupported"
	CodeOperationFailed      = "operation-failed"
	CodeAgentUnresponsive    = "agent-unresponsive"
	CodeOperationInProgress  = "operation-in-progress"
	CodeSnapshotExists       = "snapshot-exists"
	CodeNoOperation          = "no-operation"
	CodeOutcomeUnknown       = "outcome-unknown"
	CodeOperationIDReused    = "operation-id-reused"
	CodeOperationAborted     = "operation-aborted"
	CodeForbidden            = "forbidden"
	CodeInternalError        = "internal-error"
)

// D-Bus error names: the same errors on the bus, one for each code the
// D-Bus API can answer; the error's body is the message.
const (
	DBusErrorPrefix          = "io.github.qsnapd.Error."
	DBusInvalidArg           = DBusErrorPrefix + "InvalidArg"
	DBusNoDomain             = DBusErrorPrefix + "NoDomain"
	DBusNoDomainSnapshot     = DBusErrorPrefix + "NoDomainSnapshot"
	DBusSnapshotExists       = DBusErrorPrefix + "SnapshotExists"
	DBusOperationInProgress  = DBusErrorPrefix + "OperationInProgress"
	DBusOperationUnsupported = DBusErrorPrefix + "OperationUnsupported"
	DBusAgentUnresponsive    = DBusErrorPrefix + "AgentUnresponsive"
	DBusOperationInvalid     = DBusErrorPrefix + "OperationInvalid"
	DBusOperationFailed      = DBusErrorPrefix + "OperationFailed"
	DBusInternalError        = DBusErrorPrefix + "InternalError"
	DBusOperationAborted     = DBusErrorPrefix + "OperationAborted"
	DBusNoOperation          = DBusErrorPrefix + "NoOperation"
	DBusOutcomeUnknown       = DBusErrorPrefix + "OutcomeUnknown"
	DBusOperationIDReused    = DBusErrorPrefix + "OperationIDReused"
)

// ErrorClass is how every front end renders one kind of error: a row of
// the error table. A libvirt RPC front end would send Kind.Number().
type ErrorClass struct {
	Kind   errkind.Kind
	Code   string // ErrorInfo.Code
	Status int    // the HTTP status
	DBus   string // the D-Bus error name; "" where D-Bus cannot meet the kind
}

// errorTable is the one table of error classes. Several kinds may share
// a code, a status or a libvirt number; the row is the unit.
var errorTable = []ErrorClass{
	// First: ClassOf falls back on it.
	{errkind.InternalError, CodeInternalError, http.StatusInternalServerError, DBusInternalError},
	{errkind.InvalidArg, CodeInvalidArg, http.StatusBadRequest, DBusInvalidArg},
	{errkind.NoDomain, CodeNoDomain, http.StatusNotFound, DBusNoDomain},
	{errkind.NoDomainSnapshot, CodeNoDomainSnapshot, http.StatusNotFound, DBusNoDomainSnapshot},
	{errkind.SnapshotExists, CodeSnapshotExists, http.StatusConflict, DBusSnapshotExists},
	{errkind.DomExist, CodeOperationInvalid, http.StatusConflict, DBusOperationInvalid},
	{errkind.OperationTimeout, CodeOperationInProgress, http.StatusConflict, DBusOperationInProgress},
	{errkind.OperationUnsupported, CodeOperationUnsupported, http.StatusNotImplemented, DBusOperationUnsupported},
	{errkind.AgentUnresponsive, CodeAgentUnresponsive, http.StatusServiceUnavailable, DBusAgentUnresponsive},
	{errkind.OperationInvalid, CodeOperationInvalid, http.StatusConflict, DBusOperationInvalid},
	// Worth a retry: QEMU cannot be reached now, or the daemon stops.
	{errkind.Unavailable, CodeOperationInvalid, http.StatusServiceUnavailable, DBusOperationInvalid},
	// The request was valid; QEMU, the guest or the host failed it.
	{errkind.OperationFailed, CodeOperationFailed, http.StatusConflict, DBusOperationFailed},
	// The caller cancelled it before its point of no return.
	{errkind.OperationAborted, CodeOperationAborted, http.StatusConflict, DBusOperationAborted},
	{errkind.NoOperation, CodeNoOperation, http.StatusNotFound, DBusNoOperation},
	// The answer is not known yet: the operation's record will have it.
	{errkind.OutcomeUnknown, CodeOutcomeUnknown, http.StatusGatewayTimeout, DBusOutcomeUnknown},
	{errkind.OperationIDReused, CodeOperationIDReused, http.StatusConflict, DBusOperationIDReused},
	// Front ends only. D-Bus leaves access to the bus policy.
	{errkind.OperationDenied, CodeForbidden, http.StatusForbidden, ""},
}

// ClassOf returns the row of a kind; a kind without one (OK among them)
// is an internal error.
func ClassOf(k errkind.Kind) ErrorClass {
	for _, c := range errorTable {
		if c.Kind == k {
			return c
		}
	}
	return errorTable[0]
}
