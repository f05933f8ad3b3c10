package driver

import (
	"context"
	"errors"
	"fmt"

	"github.com/qsnapd/qsnapd/guestagent"
)

// QuiesceMode is what a snapshot does about freezing the guest.
type QuiesceMode string

const (
	// QuiesceRequire fails the snapshot, changing nothing, unless the
	// guest is frozen across the whole switch: the QUIESCE flag.
	QuiesceRequire QuiesceMode = "require"
	// QuiescePrefer freezes if it can and otherwise takes a
	// crash-consistent snapshot, saying why in the indications.
	QuiescePrefer QuiesceMode = "prefer"
	// QuiesceSkip does not freeze.
	QuiesceSkip QuiesceMode = "skip"
)

// Indication codes: each result says whether it was quiesced, and if
// not, why.
const (
	IndQuiesced          = "quiesced"
	IndNotRequested      = "not-quiesced" // quiesce was skipped
	IndNoAgent           = "no-agent"     // no agent configured or reachable
	IndAgentUnresponsive = "agent-unresponsive"
	IndFreezeDisabled    = "freeze-disabled"   // the agent does not allow fsfreeze
	IndFreezeFailed      = "freeze-failed"     // the freeze returned an error (a hook failed, ...)
	IndFreezeTimeout     = "freeze-timeout"    // the freeze got no reply in time
	IndDeadlineExceeded  = "deadline-exceeded" // the switch outlasted the freeze deadline
	IndHoldExpired       = "hold-expired"      // the guest released writes early (Windows VSS)
	IndAlreadyFrozen     = "already-frozen"    // someone else holds a freeze
	IndThawFailed        = "thaw-failed"       // the guest may still be frozen; the daemon keeps trying
	IndHalted            = "halted"
	IndHaltFailed        = "halt-failed"
	IndRedefined         = "redefined"
	// IndQuiesceScoped: the snapshot-disks scope froze only the
	// filesystems on the snapshot's disks, which the message lists.
	IndQuiesceScoped = "quiesce-scoped"
	// IndQuiesceScopeFallback: the snapshot-disks scope could not map
	// the snapshot's disks to the guest's filesystems (the message says
	// which disk or what failed), so every filesystem was frozen.
	IndQuiesceScopeFallback = "quiesce-scope-fallback"
	// IndQEMUGone: QEMU exited after the switch, and every overlay holds
	// the guest's writes: the snapshot is recorded, and QEMU must start
	// on the overlays.
	IndQEMUGone = "qemu-gone"
)

// Indication is one fact about how a snapshot was taken.
type Indication struct {
	Code    string `json:"code"`
	Message string `json:"message,omitempty"`
}

// resolveQuiesce combines the QUIESCE flag, the request's option and the
// daemon's default. QUIESCE means require, as in libvirt; a request may
// soften it to prefer.
func resolveQuiesce(flags CreateFlags, requested, def QuiesceMode) (QuiesceMode, error) {
	switch requested {
	case "", QuiesceRequire, QuiescePrefer, QuiesceSkip:
	default:
		return "", fmt.Errorf("%w: quiesce must be require, prefer or skip, not '%s'", ErrInvalidArg, requested)
	}
	if flags&FlagQuiesce != 0 {
		switch requested {
		case "", QuiesceRequire:
			return QuiesceRequire, nil
		case QuiescePrefer:
			return QuiescePrefer, nil
		default:
			return "", fmt.Errorf("%w: QUIESCE contradicts quiesce=skip", ErrInvalidArg)
		}
	}
	if requested != "" {
		return requested, nil
	}
	return def, nil
}

// notQuiesced classifies why a freeze did not happen.
func notQuiesced(err error) Indication {
	code := IndFreezeFailed
	switch {
	case errors.Is(err, guestagent.ErrNotConfigured), errors.Is(err, guestagent.ErrNotConnected):
		code = IndNoAgent
	case errors.Is(err, guestagent.ErrDisabled):
		code = IndFreezeDisabled
	case errors.Is(err, guestagent.ErrUnresponsive):
		code = IndAgentUnresponsive
	}
	return Indication{Code: code, Message: err.Error()}
}

// checkQuiesce asks the agent, before anything changes, whether a freeze
// can work: it answers, allows fsfreeze, and nobody holds a freeze.
func (d *Driver) checkQuiesce(ctx context.Context, dom *Domain) (*Indication, error) {
	if fi := dom.freezeInfo(); fi.Frozen {
		return &Indication{Code: IndAlreadyFrozen, Message: fmt.Sprintf("frozen by %s since %s", fi.Owner, fi.Since)},
			fmt.Errorf("%w: domain '%s' is frozen by %s; it stays frozen", ErrOperationInvalid, dom.cfg.Name, fi.Owner)
	}
	// Status first: a frozen agent reports fsfreeze as disabled, which
	// would hide who holds the freeze.
	status, err := dom.agent.FreezeStatus(ctx)
	if err != nil {
		ind := notQuiesced(err)
		return &ind, agentErr(err)
	}
	if status != "thawed" {
		return &Indication{Code: IndAlreadyFrozen, Message: "the agent reports the guest " + status},
			fmt.Errorf("%w: domain '%s' was frozen by someone else; it stays frozen", ErrOperationInvalid, dom.cfg.Name)
	}
	if err := dom.agent.CheckFreeze(ctx, false); err != nil {
		ind := notQuiesced(err)
		return &ind, agentErr(err)
	}
	return nil, nil
}
