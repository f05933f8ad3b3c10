package server

import (
	"errors"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/errkind"
)

// errBadRequest marks errors of the request itself (JSON, size, values)
// found before the driver is asked.
var errBadRequest = errors.New("bad request")

// errForbidden marks a request the peer may not make on this socket.
var errForbidden = errors.New("forbidden")

// errNoOperation marks an unknown operation id.
var errNoOperation = errors.New("no such operation")

// errIDReused is an operation id sent again with another request.
var errIDReused = errors.New("operation id reused")

// kinds are the server's own errors, found before the driver is asked;
// they come before the driver's.
var kinds = []struct {
	err  error
	kind errkind.Kind
}{
	{errForbidden, errkind.OperationDenied},
	{errBadRequest, errkind.InvalidArg},
	{errNoOperation, errkind.NoOperation},
	{errIDReused, errkind.OperationIDReused},
}

// kindOf sorts an error into the kind api's error table renders.
func kindOf(err error) errkind.Kind {
	for _, k := range kinds {
		if errors.Is(err, k.err) {
			return k.kind
		}
	}
	return driver.Kind(err)
}

// errorInfo renders an error for the wire, with per-disk outcomes when
// the driver reports them: a snapshot's switches or a delete's merges.
func errorInfo(err error) (int, api.ErrorInfo) {
	c := api.ClassOf(kindOf(err))
	info := api.ErrorInfo{Code: c.Code, Message: err.Error()}
	var oe *driver.OpError
	var de *driver.DeleteError
	switch {
	case errors.As(err, &oe):
		info.Details = &api.ErrorDetails{Operation: oe.OpID, Step: oe.Step, Disks: outcomes(oe.Disks)}
	case errors.As(err, &de):
		info.Details = &api.ErrorDetails{Operation: de.OpID, Step: de.Step, Merges: mergeOutcomes(de.Disks), Deleted: de.Deleted}
	}
	return c.Status, info
}
