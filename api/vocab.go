package api

// Quiesce modes: what a snapshot does about freezing the guest, in
// CreateSnapshotRequest.Quiesce.
const (
	// QuiesceRequire fails the snapshot, changing nothing, unless the
	// guest is frozen across the whole switch: the QUIESCE flag.
	QuiesceRequire = "require"
	// QuiescePrefer freezes if it can and otherwise takes a
	// crash-consistent snapshot, saying why in the indications.
	QuiescePrefer = "prefer"
	// QuiesceSkip does not freeze.
	QuiesceSkip = "skip"
)

// Quiesce scopes: what a quiesced snapshot freezes, in
// CreateSnapshotRequest.QuiesceScope.
const (
	// QuiesceScopeAll freezes every filesystem of the guest, as
	// libvirt does.
	QuiesceScopeAll = "all"
	// QuiesceScopeSnapshotDisks freezes only the filesystems on the
	// snapshot's disks, or every one (with the indication
	// IndQuiesceScopeFallback) when they cannot all be found.
	QuiesceScopeSnapshotDisks = "snapshot-disks"
)

// Indication is one fact about how a snapshot was taken.
type Indication struct {
	Code    string `json:"code"`
	Message string `json:"message,omitempty"`
}

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
	// IndQuiesceScoped: only the filesystems on the snapshot's disks
	// were frozen; the message lists them.
	IndQuiesceScoped = "quiesce-scoped"
	// IndQuiesceScopeFallback: the snapshot's disks could not all be
	// mapped to the guest's filesystems (the message says which, or
	// what failed), so every filesystem was frozen.
	IndQuiesceScopeFallback = "quiesce-scope-fallback"
	// IndQEMUGone: QEMU exited after the switch, and every overlay holds
	// the guest's writes: the snapshot is recorded, and QEMU must start
	// on the overlays.
	IndQEMUGone = "qemu-gone"
)

// DiskResult is what happened to one disk of an operation.
type DiskResult string

// Disk results.
const (
	DiskUntouched  DiskResult = "untouched"   // not switched
	DiskSwitched   DiskResult = "switched"    // on its overlay
	DiskFailed     DiskResult = "failed"      // its switch failed; unchanged
	DiskRolledBack DiskResult = "rolled-back" // switched, then committed back
	DiskStuck      DiskResult = "stuck"       // switched, rollback failed: still on the overlay
	// DiskHoldsGuestWrites is a disk whose QEMU died after the switch:
	// its overlay holds writes the guest was told were durable, so it is
	// kept (the overlay's path is in the outcome).
	DiskHoldsGuestWrites DiskResult = "holds-guest-writes"
)
