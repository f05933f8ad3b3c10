package libvirtrpc

import (
	"errors"
	"fmt"

	libvirt "github.com/digitalocean/go-libvirt"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/errkind"
)

// remoteError is libvirt's remote_error, the body of a reply whose
// status is error. go-libvirt's own copy is unexported.
type remoteError struct {
	Code    int32
	Domain  int32
	Message libvirt.OptString
	Level   int32
	Dom     libvirt.OptDomain
	Str1    libvirt.OptString
	Str2    libvirt.OptString
	Str3    libvirt.OptString
	Int1    int32
	Int2    int32
	Net     libvirt.OptNetwork
}

// levelError is VIR_ERR_ERROR.
const levelError = 2

// Error numbers (virErrorNumber) this front end raises itself; the
// engine's come from its kinds.
const (
	errInternal         = 1  // VIR_ERR_INTERNAL_ERROR
	errNoSupport        = 3  // VIR_ERR_NO_SUPPORT
	errInvalidArg       = 8  // VIR_ERR_INVALID_ARG
	errOperationDenied  = 29 // VIR_ERR_OPERATION_DENIED
	errRPC              = 39 // VIR_ERR_RPC
	errNoDomain         = 42 // VIR_ERR_NO_DOMAIN
	errNoDomainSnapshot = 72 // VIR_ERR_NO_DOMAIN_SNAPSHOT
	errOperationUnsupp  = 84 // VIR_ERR_OPERATION_UNSUPPORTED
)

// Error domains (virErrorDomain).
const (
	fromNone           = 0
	fromRPC            = 7
	fromQEMU           = 10
	fromDomain         = 20
	fromDomainSnapshot = 35
)

// prefixes are libvirt's messages for its error numbers (virerror.c),
// which it puts before the detail: "Domain snapshot not found: ...".
// VIR_ERR_RPC has none: libvirtd sends "unknown procedure: 9999" bare.
var prefixes = map[int32]string{
	1:  "internal error",
	3:  "this function is not supported by the connection driver",
	8:  "invalid argument",
	9:  "operation failed",
	28: "operation failed",
	29: "operation forbidden",
	42: "Domain not found",
	55: "Requested operation is not valid",
	67: "unsupported configuration",
	68: "Timed out during operation",
	72: "Domain snapshot not found",
	74: "argument unsupported",
	78: "operation aborted",
	84: "Operation not supported",
	86: "Guest agent is not responding",
}

// rpcError is an error as the libvirt client gets it.
type rpcError struct {
	code, domain int32
	detail       string
}

func (e *rpcError) Error() string {
	if p, ok := prefixes[e.code]; ok {
		if e.detail == "" {
			return p
		}
		return p + ": " + e.detail
	}
	return e.detail
}

// errorf is an error this front end raises, with libvirt's number and
// domain.
func errorf(code, domain int32, format string, args ...any) error {
	return &rpcError{code: code, domain: domain, detail: fmt.Sprintf(format, args...)}
}

// fixedDetails are kinds libvirt words one way whatever the cause.
var fixedDetails = map[errkind.Kind]string{
	errkind.AgentNotConfigured: "QEMU guest agent is not configured",
}

// toRemote renders any error as remote_error: the front end's own with
// their number, the engine's by their kind through api's error table.
func toRemote(err error) remoteError {
	var re *rpcError
	if !errors.As(err, &re) {
		k := driver.Kind(err)
		if k == errkind.OK {
			k = errkind.InternalError
		}
		detail := driver.Detail(err)
		if fixed, ok := fixedDetails[k]; ok {
			detail = fixed
		}
		re = &rpcError{code: int32(k.Number()), domain: int32(api.ClassOf(k).LibvirtFrom), detail: detail}
	}
	return remoteError{Code: re.code, Domain: re.domain, Message: libvirt.OptString{re.Error()}, Level: levelError}
}
