// Package errkind names the kinds of failure qsnapd reports, each with
// the libvirt virErrorNumber a libvirt client would get for it.
//
// The engine sorts its errors into kinds (driver.Kind) and every front
// end renders a kind through the error table in package api. The kind is
// defined here, in a leaf that both may import, because the table needs
// a key that the engine and the wire can both name without importing
// each other, and neither libvirt's number nor our wire code is such a
// key: kinds share numbers (snapshot-exists and operation-failed are
// both VIR_ERR_OPERATION_FAILED) and codes (operation-invalid is
// answered 409 or 503).
package errkind

import "strconv"

// Kind is a kind of failure. The zero Kind is OK: no failure.
type Kind uint8

// The kinds. A kind with a virErrorNumber of its own is named after it;
// a kind that shares one says whose it is.
const (
	// OK is no failure: VIR_ERR_OK.
	OK Kind = iota
	// InternalError is a failure of no known kind, a bug:
	// VIR_ERR_INTERNAL_ERROR.
	InternalError
	// InvalidArg is a malformed or self-contradicting request:
	// VIR_ERR_INVALID_ARG.
	InvalidArg
	// NoDomain is an unknown domain: VIR_ERR_NO_DOMAIN.
	NoDomain
	// NoDomainSnapshot is an unknown snapshot: VIR_ERR_NO_DOMAIN_SNAPSHOT.
	NoDomainSnapshot
	// SnapshotExists is a snapshot name already taken. libvirt has no
	// number of its own for it: its moment list reports "domain moment
	// ... already exists" as VIR_ERR_OPERATION_FAILED.
	SnapshotExists
	// DomExist is a domain name already registered: VIR_ERR_DOM_EXIST.
	DomExist
	// OperationTimeout is a domain held by another operation past the
	// caller's deadline: VIR_ERR_OPERATION_TIMEOUT, as libvirt reports
	// "cannot acquire state change lock".
	OperationTimeout
	// OperationUnsupported is valid for libvirt but not done by qsnapd,
	// or refused by the guest agent's configuration:
	// VIR_ERR_OPERATION_UNSUPPORTED.
	OperationUnsupported
	// AgentUnresponsive is a guest agent not configured, not reachable
	// or not answering: VIR_ERR_AGENT_UNRESPONSIVE.
	AgentUnresponsive
	// OperationInvalid is a valid request in the wrong state:
	// VIR_ERR_OPERATION_INVALID.
	OperationInvalid
	// Unavailable is a domain whose QEMU cannot be reached now, or a
	// daemon shutting down: worth a retry later. libvirt says "domain is
	// not running", VIR_ERR_OPERATION_INVALID.
	Unavailable
	// OperationFailed is a valid request that QEMU, the guest or the
	// host failed: VIR_ERR_OPERATION_FAILED.
	OperationFailed
	// OperationAborted is an operation its caller cancelled before its
	// point of no return: VIR_ERR_OPERATION_ABORTED.
	OperationAborted
	// NoOperation is an unknown operation id. libvirt keeps no registry
	// of operations; an id that names nothing is a bad argument,
	// VIR_ERR_INVALID_ARG.
	NoOperation
	// OutcomeUnknown is an operation whose QEMU went away mid-switch and
	// did not come back in time: the disks could not be read back. The
	// operation stays open and recovery completes it when QEMU returns.
	// libvirt would have waited on its monitor: VIR_ERR_OPERATION_TIMEOUT.
	OutcomeUnknown
	// AgentNotConfigured is a quiesce or freeze of a domain that has no
	// guest agent: VIR_ERR_ARGUMENT_UNSUPPORTED, as libvirt says "QEMU
	// guest agent is not configured". The HTTP API and D-Bus answer it as
	// AgentUnresponsive.
	AgentNotConfigured

	// The kinds below only front ends report: they are about the
	// request, not the engine's work.

	// OperationDenied is a request the peer may not make on this
	// socket: VIR_ERR_OPERATION_DENIED, as libvirt refuses writes on a
	// read-only connection.
	OperationDenied
	// OperationIDReused is an operation id sent again with another
	// request: the caller's mistake, VIR_ERR_INVALID_ARG.
	OperationIDReused

	numKinds
)

// kinds gives each kind its name and virErrorNumber, as
// include/libvirt/virterror.h numbers them.
var kinds = [numKinds]struct {
	name   string
	number int
}{
	OK:                   {"OK", 0},                    // VIR_ERR_OK
	InternalError:        {"InternalError", 1},         // VIR_ERR_INTERNAL_ERROR
	InvalidArg:           {"InvalidArg", 8},            // VIR_ERR_INVALID_ARG
	NoDomain:             {"NoDomain", 42},             // VIR_ERR_NO_DOMAIN
	NoDomainSnapshot:     {"NoDomainSnapshot", 72},     // VIR_ERR_NO_DOMAIN_SNAPSHOT
	SnapshotExists:       {"SnapshotExists", 9},        // VIR_ERR_OPERATION_FAILED
	DomExist:             {"DomExist", 28},             // VIR_ERR_DOM_EXIST
	OperationTimeout:     {"OperationTimeout", 68},     // VIR_ERR_OPERATION_TIMEOUT
	OperationUnsupported: {"OperationUnsupported", 84}, // VIR_ERR_OPERATION_UNSUPPORTED
	AgentUnresponsive:    {"AgentUnresponsive", 86},    // VIR_ERR_AGENT_UNRESPONSIVE
	OperationInvalid:     {"OperationInvalid", 55},     // VIR_ERR_OPERATION_INVALID
	Unavailable:          {"Unavailable", 55},          // VIR_ERR_OPERATION_INVALID
	OperationFailed:      {"OperationFailed", 9},       // VIR_ERR_OPERATION_FAILED
	OperationAborted:     {"OperationAborted", 78},     // VIR_ERR_OPERATION_ABORTED
	OperationDenied:      {"OperationDenied", 29},      // VIR_ERR_OPERATION_DENIED
	NoOperation:          {"NoOperation", 8},           // VIR_ERR_INVALID_ARG
	OutcomeUnknown:       {"OutcomeUnknown", 68},       // VIR_ERR_OPERATION_TIMEOUT
	AgentNotConfigured:   {"AgentNotConfigured", 74},   // VIR_ERR_ARGUMENT_UNSUPPORTED
	OperationIDReused:    {"OperationIDReused", 8},     // VIR_ERR_INVALID_ARG
}

// Number is the kind's libvirt virErrorNumber; an unknown kind is
// VIR_ERR_INTERNAL_ERROR.
func (k Kind) Number() int {
	if k >= numKinds {
		return kinds[InternalError].number
	}
	return kinds[k].number
}

// String is the kind's name, as the constant spells it.
func (k Kind) String() string {
	if k >= numKinds {
		return "Kind(" + strconv.Itoa(int(k)) + ")"
	}
	return kinds[k].name
}

// All lists every kind, OK first.
func All() []Kind {
	all := make([]Kind, numKinds)
	for i := range all {
		all[i] = Kind(i)
	}
	return all
}
