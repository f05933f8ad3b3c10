package api

import (
	"errors"
	"net/http"

	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/guestagent"
)

// errBadRequest marks errors of the request itself (JSON, size, values)
// found before the driver is asked.
var errBadRequest = errors.New("bad request")

// errForbidden marks a request the peer may not make on this socket.
var errForbidden = errors.New("forbidden")

// errNoOperation marks an unknown operation id.
var errNoOperation = errors.New("no such operation")

// classify maps an error to its HTTP status and code. The order
// matters: the most specific kinds come first.
func classify(err error) (int, string) {
	switch {
	case errors.Is(err, errForbidden):
		return http.StatusForbidden, CodeForbidden
	case errors.Is(err, errBadRequest), errors.Is(err, driver.ErrInvalidArg):
		return http.StatusBadRequest, CodeInvalidArg
	case errors.Is(err, errNoOperation):
		return http.StatusNotFound, CodeNoOperation
	case errors.Is(err, driver.ErrNoDomain):
		return http.StatusNotFound, CodeNoDomain
	case errors.Is(err, driver.ErrNoSnapshot):
		return http.StatusNotFound, CodeNoDomainSnapshot
	case errors.Is(err, driver.ErrSnapshotExists):
		return http.StatusConflict, CodeSnapshotExists
	case errors.Is(err, driver.ErrBusy):
		return http.StatusConflict, CodeOperationInProgress
	case errors.Is(err, guestagent.ErrDisabled):
		return http.StatusNotImplemented, CodeOperationUnsupported
	case errors.Is(err, guestagent.ErrNotConfigured), errors.Is(err, guestagent.ErrNotConnected),
		errors.Is(err, guestagent.ErrUnresponsive):
		return http.StatusServiceUnavailable, CodeAgentUnresponsive
	case errors.Is(err, driver.ErrUnsupported):
		return http.StatusNotImplemented, CodeOperationUnsupported
	case errors.Is(err, driver.ErrDisconnected), errors.Is(err, driver.ErrClosed):
		return http.StatusServiceUnavailable, CodeOperationInvalid
	case errors.Is(err, driver.ErrOperationInvalid), errors.Is(err, driver.ErrDomainExists):
		return http.StatusConflict, CodeOperationInvalid
	case errors.Is(err, driver.ErrOperationFailed), errors.Is(err, driver.ErrQuiesce):
		// The request was valid; QEMU, the guest or the host failed it.
		return http.StatusConflict, CodeOperationFailed
	}
	return http.StatusInternalServerError, CodeInternalError
}

// errorInfo renders an error for the wire, with per-disk outcomes when
// the driver reports them.
func errorInfo(err error) (int, ErrorInfo) {
	status, code := classify(err)
	info := ErrorInfo{Code: code, Message: err.Error()}
	var oe *driver.OpError
	if errors.As(err, &oe) {
		info.Details = &ErrorDetails{Operation: oe.OpID, Step: oe.Step, Disks: oe.Disks}
	}
	return status, info
}
