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
// the error table. The libvirt RPC front end sends Kind.Number() from
// LibvirtFrom.
type ErrorClass struct {
	Kind   errkind.Kind
	Code   string // ErrorInfo.Code
	Status int    // the HTTP status
	DBus   string // the D-Bus error name; "" where D-Bus cannot meet the kind
	// LibvirtFrom is the virErrorDomain libvirtd 9.0 reports the kind
	// from: VIR_FROM_QEMU (its QEMU driver), but a taken snapshot name,
	// which its moment list reports, VIR_FROM_DOMAIN.
	LibvirtFrom int
}

// libvirt's error domains (virErrorDomain) the table uses.
const (
	LibvirtFromQEMU   = 10 // VIR_FROM_QEMU
	LibvirtFromDomain = 20 // VIR_FROM_DOMAIN
)

// errorTable is the one table of error classes. Several kinds may share
// a code, a status or a libvirt number; the row is the unit.
var errorTable = []ErrorClass{
	// First: ClassOf falls back on it.
	{errkind.InternalError, CodeInternalError, http.StatusInternalServerError, DBusInternalError, LibvirtFromQEMU},
	{errkind.InvalidArg, CodeInvalidArg, http.StatusBadRequest, DBusInvalidArg, LibvirtFromQEMU},
	{errkind.NoDomain, CodeNoDomain, http.StatusNotFound, DBusNoDomain, LibvirtFromQEMU},
	{errkind.NoDomainSnapshot, CodeNoDomainSnapshot, http.StatusNotFound, DBusNoDomainSnapshot, LibvirtFromQEMU},
	{errkind.SnapshotExists, CodeSnapshotExists, http.StatusConflict, DBusSnapshotExists, LibvirtFromDomain},
	{errkind.DomExist, CodeOperationInvalid, http.StatusConflict, DBusOperationInvalid, LibvirtFromQEMU},
	{errkind.OperationTimeout, CodeOperationInProgress, http.StatusConflict, DBusOperationInProgress, LibvirtFromQEMU},
	{errkind.OperationUnsupported, CodeOperationUnsupported, http.StatusNotImplemented, DBusOperationUnsupported, LibvirtFromQEMU},
	{errkind.AgentUnresponsive, CodeAgentUnresponsive, http.StatusServiceUnavailable, DBusAgentUnresponsive, LibvirtFromQEMU},
	// No agent at all: the same answer as one that does not answer, but
	// for libvirt's number.
	{errkind.AgentNotConfigured, CodeAgentUnresponsive, http.StatusServiceUnavailable, DBusAgentUnresponsive, LibvirtFromQEMU},
	{errkind.OperationInvalid, CodeOperationInvalid, http.StatusConflict, DBusOperationInvalid, LibvirtFromQEMU},
	// Worth a retry: QEMU cannot be reached now, or the daemon stops.
	{errkind.Unavailable, CodeOperationInvalid, http.StatusServiceUnavailable, DBusOperationInvalid, LibvirtFromQEMU},
	// The request was valid; QEMU, the guest or the host failed it.
	{errkind.OperationFailed, CodeOperationFailed, http.StatusConflict, DBusOperationFailed, LibvirtFromQEMU},
	// The caller cancelled it before its point of no return.
	{errkind.OperationAborted, CodeOperationAborted, http.StatusConflict, DBusOperationAborted, LibvirtFromQEMU},
	{errkind.NoOperation, CodeNoOperation, http.StatusNotFound, DBusNoOperation, LibvirtFromQEMU},
	// The answer is not known yet: the operation's record will have it.
	{errkind.OutcomeUnknown, CodeOutcomeUnknown, http.StatusGatewayTimeout, DBusOutcomeUnknown, LibvirtFromQEMU},
	{errkind.OperationIDReused, CodeOperationIDReused, http.StatusConflict, DBusOperationIDReused, LibvirtFromQEMU},
	// Front ends only. D-Bus leaves access to the bus policy.
	{errkind.OperationDenied, CodeForbidden, http.StatusForbidden, "", LibvirtFromQEMU},
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
