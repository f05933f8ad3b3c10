package driver

import (
	"errors"
	"strings"

	"github.com/qsnapd/qsnapd/errkind"
	"github.com/qsnapd/qsnapd/guestagent"
)

// kinds sorts the driver's errors, most specific first: an error may
// wrap several sentinels (a failed quiesce wraps the agent's error, a
// failed operation its cause), and the first match decides.
var kinds = []struct {
	kind errkind.Kind
	errs []error
}{
	// First: an outcome not known yet may follow any failure.
	{errkind.OutcomeUnknown, []error{ErrOutcomeUnknown}},
	{errkind.InvalidArg, []error{ErrInvalidArg}},
	{errkind.NoDomain, []error{ErrNoDomain}},
	{errkind.NoDomainSnapshot, []error{ErrNoSnapshot}},
	{errkind.SnapshotExists, []error{ErrSnapshotExists}},
	{errkind.OperationTimeout, []error{ErrBusy}},
	// Before AgentUnresponsive, which wraps it: libvirt tells a missing
	// agent from one that does not answer.
	{errkind.AgentNotConfigured, []error{guestagent.ErrNotConfigured}},
	{errkind.AgentUnresponsive, []error{ErrAgentUnresponsive}},
	{errkind.OperationUnsupported, []error{ErrUnsupported}},
	{errkind.Unavailable, []error{ErrDisconnected, ErrClosed}},
	{errkind.DomExist, []error{ErrDomainExists}},
	{errkind.OperationInvalid, []error{ErrOperationInvalid}},
	{errkind.OperationAborted, []error{ErrCancelled}},
	{errkind.NoOperation, []error{ErrNoOperation}},
	// Last: the request was valid; QEMU, the guest or the host failed it.
	{errkind.OperationFailed, []error{ErrOperationFailed, ErrQuiesce}},
}

// Kind sorts an error of the driver into the kind front ends render:
// errkind.OK for nil, errkind.InternalError for an error of no known
// kind, which is a bug.
func Kind(err error) errkind.Kind {
	if err == nil {
		return errkind.OK
	}
	for _, k := range kinds {
		for _, sentinel := range k.errs {
			if errors.Is(err, sentinel) {
				return k.kind
			}
		}
	}
	return errkind.InternalError
}

// Detail is an error's message without the word of its kind it starts
// with ("invalid argument: x" is "x"), for a front end that words the
// kind itself, as libvirt prefixes "invalid argument: " of its own.
func Detail(err error) string {
	msg := err.Error()
	for _, k := range kinds {
		for _, sentinel := range k.errs {
			if rest, ok := strings.CutPrefix(msg, sentinel.Error()+": "); ok {
				return rest
			}
		}
	}
	return msg
}

// sentinelNamed is the first sentinel of the kind named name (as
// errkind.Kind.String spells it), for an error read back from the
// journal: ErrOperationFailed for a name it does not know.
func sentinelNamed(name string) error {
	for _, k := range kinds {
		if k.kind.String() == name {
			return k.errs[0]
		}
	}
	return ErrOperationFailed
}

// Kinds lists the kinds Kind returns for the driver's errors, so that a
// front end can check it renders each one.
func Kinds() []errkind.Kind {
	out := make([]errkind.Kind, len(kinds))
	for i, k := range kinds {
		out[i] = k.kind
	}
	return out
}

// kindError files err under a driver sentinel while keeping its message
// and its own chain: errors.Is finds both.
type kindError struct {
	sentinel error
	err      error
}

func (e *kindError) Error() string { return e.err.Error() }

func (e *kindError) Unwrap() []error { return []error{e.sentinel, e.err} }
