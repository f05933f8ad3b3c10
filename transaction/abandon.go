package transaction

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/qsnapd/qsnapd/internal/qcow2"
)

// LockGrace is how long Abandon waits for an overlay's image lock to
// go: QEMU's locks end with its process, which closes its monitor and
// its images in the same exit.
const LockGrace = 2 * time.Second

// Abandon settles a plan whose QEMU exited in the middle of it. No node
// can be deleted and no disk rolled back any more, and which disks
// switched is lost with QEMU, so each overlay is judged by its file:
//
//   - one rolled back already holds nothing that its original image
//     lacks, and goes;
//   - one that a process holds locked (a new QEMU may have opened it)
//     stays, and its disk is stuck;
//   - one that may hold data of its own (qcow2.Allocated) stays, and its
//     disk holds guest writes: only a switched overlay takes writes, and
//     the guest was told they were durable;
//   - one that holds none goes as Cleanup removes it (a reused file
//     stays, an empty one given by the caller is emptied again): the
//     disk's data is all in its original image, so it is rolled back if
//     it had switched, and as it was otherwise.
//
// A file the daemon did not create is judged as a reused one: its data
// may be the caller's, so it holds guest writes only if its disk may
// have switched. Abandon returns the errors of files it could not judge
// or remove; those stay, and their disks are stuck.
func (e *Executor) Abandon(p *Plan) error {
	var errs []error
	for _, d := range p.Disks {
		d.NodeAdded = false // QEMU's nodes went with it
		if err := abandonDisk(p, d); err != nil {
			d.State, d.Error = DiskStuck, err.Error()
			errs = append(errs, fmt.Errorf("disk %s: %w", d.Target, err))
		}
	}
	return errors.Join(errs...)
}

func abandonDisk(p *Plan, d *Disk) error {
	if !d.FileCreated && !d.Reuse {
		return nil // no file of this operation's at the overlay path
	}
	if d.State == DiskRolledBack {
		// The commit completed and was verified: its data is in the
		// original image.
		return removeOverlay(d)
	}
	locked, err := lockedFor(d.Overlay, LockGrace)
	if errors.Is(err, os.ErrNotExist) {
		d.FileCreated = false
		return nil
	}
	if err != nil {
		return fmt.Errorf("overlay %s kept: %w", d.Overlay, err)
	}
	if locked {
		return fmt.Errorf("overlay %s kept: another process holds a lock on it", d.Overlay)
	}
	data, err := qcow2.Allocated(d.Overlay)
	if err != nil {
		// What cannot be read may hold the guest's writes.
		data, d.Error = true, fmt.Sprintf("its data could not be read: %v", err)
	}
	switch {
	case data && (!d.Reuse || mayHaveSwitched(p, d)):
		d.State = DiskHoldsGuestWrites
		return nil
	case data:
		return nil // a reused file its disk never used: the caller's data
	}
	if err := removeOverlay(d); err != nil {
		return err
	}
	if d.State.OnOverlay() {
		d.State = DiskRolledBack
	}
	return nil
}

// lockedFor reports whether a process holds a lock on path, waiting up
// to grace for one to go.
func lockedFor(path string, grace time.Duration) (bool, error) {
	deadline := time.Now().Add(grace)
	for {
		locked, err := qcow2.Locked(path)
		if err != nil || !locked || time.Now().After(deadline) {
			return locked, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// mayHaveSwitched reports whether a disk may be on its overlay: it is
// known to be, or its switch was sent and its answer lost with QEMU.
func mayHaveSwitched(p *Plan, d *Disk) bool {
	switch {
	case d.State.OnOverlay():
		return true
	case p.SwitchStart.IsZero():
		return false
	case p.Mode == ModeSequential:
		return d.State == DiskFailed // the disk whose switch was under way
	}
	return d.State == DiskPlanned // the transaction's fate went with QEMU
}

// KeepAfterRestart is Abandon's judgement for recovery against a QEMU
// that was restarted since the plan ran: a disk not on its overlay
// whose overlay node QEMU does not have (present says which nodes it
// has), although the overlay file is there, holds guest writes if the
// file holds data of its own (the QEMU before took writes there after
// the switch), or if a process holds it locked (a QEMU opened it by its
// path). Such a disk is marked so, for Rollback and Cleanup to leave it
// alone, and listed. A disk rolled back already is not: its data is in
// its original image.
func KeepAfterRestart(p *Plan, present map[string]bool) []*Disk {
	var kept []*Disk
	for _, d := range p.Disks {
		if present[d.OverlayNode] || d.State.OnOverlay() || d.State == DiskRolledBack || (!d.FileCreated && !d.Reuse) {
			continue
		}
		locked, err := qcow2.Locked(d.Overlay)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		data, aerr := qcow2.Allocated(d.Overlay)
		switch {
		case err != nil || locked:
			d.Error = "in use by another process"
			if err != nil {
				d.Error = fmt.Sprintf("its locks could not be read: %v", err)
			}
		case aerr != nil:
			d.Error = fmt.Sprintf("its data could not be read: %v", aerr)
		case data && (!d.Reuse || mayHaveSwitched(p, d)):
		default:
			continue
		}
		d.State, d.NodeAdded = DiskHoldsGuestWrites, false
		kept = append(kept, d)
	}
	return kept
}
