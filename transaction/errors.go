package transaction

import (
	"errors"
	"fmt"
)

var (
	// ErrRollbackFailed means at least one disk could not be committed
	// back and is still on its overlay.
	ErrRollbackFailed = errors.New("rollback failed")

	// ErrStateUnknown means the daemon could not learn from QEMU which
	// disks switched; the journal keeps the operation for recovery.
	ErrStateUnknown = errors.New("disk state unknown")

	// ErrOverlayChanged means the file at an overlay path is not the one
	// validation saw (a symbolic link or another file was put there
	// since); the daemon leaves it alone.
	ErrOverlayChanged = errors.New("overlay changed since validation")

	// ErrRollbackUnverified means a commit job completed but query-block
	// does not show the original image active again.
	ErrRollbackUnverified = errors.New("rollback not verified")
)

// SwitchError reports a failed switch with every disk's outcome, so that
// nothing is silently partial.
type SwitchError struct {
	Mode  Mode
	Cause error
	Disks []Outcome
}

func (e *SwitchError) Error() string {
	return fmt.Sprintf("%s switch failed: %v; disks: %s", e.Mode, e.Cause, Describe(e.Disks))
}

func (e *SwitchError) Unwrap() error { return e.Cause }

// Partial reports whether a disk was left on its overlay.
func (e *SwitchError) Partial() bool {
	for _, o := range e.Disks {
		if o.Result.OnOverlay() {
			return true
		}
	}
	return false
}

// RollbackError reports a rollback with every disk's outcome.
type RollbackError struct {
	Disks []Outcome
	Err   error
}

func (e *RollbackError) Error() string {
	return fmt.Sprintf("%v: disks: %s", e.Err, Describe(e.Disks))
}

func (e *RollbackError) Unwrap() error { return e.Err }
