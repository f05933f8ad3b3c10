package transaction

import (
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/qsnapd/qsnapd/internal/qcow2"
)

// giveData makes an overlay hold data of its own as QEMU's first write
// leaves it, as far as qcow2.Allocated reads: an L1 entry that points to
// an L2 table.
func giveData(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := make([]byte, 48)
	if _, err := io.ReadFull(f, h); err != nil {
		t.Fatal(err)
	}
	entry := make([]byte, 8)
	binary.BigEndian.PutUint64(entry, 0x8000000000050000) // copied flag, L2 table at 320 KiB
	if _, err := f.WriteAt(entry, int64(binary.BigEndian.Uint64(h[40:]))); err != nil {
		t.Fatal(err)
	}
}

// TestAbandon settles each kind of overlay of a plan whose QEMU exited:
// by whether it holds data, whether a process holds it locked, whose
// file it is and what the plan knows of its switch.
func TestAbandon(t *testing.T) {
	type disk struct {
		state             DiskState
		reuse, wasEmpty   bool
		data, locked      bool
		noFile            bool
		wantState         DiskState
		wantFile, wantErr bool
	}
	for _, tc := range []struct {
		name string
		mode Mode
		sent bool // the switch was sent
		disk disk
	}{
		{"empty, switch unknown", ModeAtomic, true, disk{state: DiskPlanned, wantState: DiskPlanned}},
		{"empty, switched", ModeSequential, true, disk{state: DiskSwitched, wantState: DiskRolledBack}},
		{"written, switch unknown", ModeAtomic, true, disk{state: DiskPlanned, data: true, wantState: DiskHoldsGuestWrites, wantFile: true}},
		{"written, switched", ModeSequential, true, disk{state: DiskSwitched, data: true, wantState: DiskHoldsGuestWrites, wantFile: true}},
		// A commit that completed put the overlay's data into the base.
		{"rolled back with data", ModeSequential, true, disk{state: DiskRolledBack, data: true, wantState: DiskRolledBack}},
		{"locked", ModeAtomic, true, disk{state: DiskPlanned, locked: true, wantState: DiskStuck, wantFile: true, wantErr: true}},
		{"reused, empty", ModeAtomic, true, disk{state: DiskPlanned, reuse: true, wantState: DiskPlanned, wantFile: true}},
		{"reused with data, switch unknown", ModeAtomic, true, disk{state: DiskPlanned, reuse: true, data: true, wantState: DiskHoldsGuestWrites, wantFile: true}},
		// A sequential disk after the one that failed was never sent:
		// the data is the caller's.
		{"reused with data, never sent", ModeSequential, true, disk{state: DiskPlanned, reuse: true, data: true, wantState: DiskPlanned, wantFile: true}},
		{"reused with data, before the switch", ModeAtomic, false, disk{state: DiskPlanned, reuse: true, data: true, wantState: DiskPlanned, wantFile: true}},
		{"given empty, switched", ModeSequential, true, disk{state: DiskSwitched, wasEmpty: true, wantState: DiskRolledBack, wantFile: true}},
		{"not created", ModeAtomic, false, disk{state: DiskPlanned, noFile: true, wantState: DiskPlanned}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			overlay := filepath.Join(dir, "vda.s1")
			d := &Disk{Target: "vda", Overlay: overlay, State: tc.disk.state, Reuse: tc.disk.reuse, WasEmpty: tc.disk.wasEmpty,
				FileCreated: !tc.disk.reuse && !tc.disk.noFile, NodeAdded: true}
			if !tc.disk.noFile {
				if err := qcow2.Create(overlay, qcow2.Options{VirtualSize: 64 << 20, BackingFile: "vda.qcow2", BackingFormat: "qcow2"}); err != nil {
					t.Fatal(err)
				}
				if fi, err := os.Lstat(overlay); err == nil {
					d.FileID = IdentifyFile(fi)
				}
			}
			if tc.disk.data {
				giveData(t, overlay)
			}
			if tc.disk.locked {
				holder, err := os.OpenFile(overlay, os.O_RDWR, 0)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { holder.Close() })
				lk := unix.Flock_t{Type: unix.F_RDLCK, Whence: io.SeekStart, Start: 100, Len: 1}
				if err := unix.FcntlFlock(holder.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
					t.Fatal(err)
				}
			}
			p := &Plan{Mode: tc.mode, Disks: []*Disk{d}}
			if tc.sent {
				p.SwitchStart = time.Now()
			}
			start := time.Now()
			err := (&Executor{}).Abandon(p)
			if (err != nil) != tc.disk.wantErr {
				t.Errorf("Abandon = %v, want an error: %v", err, tc.disk.wantErr)
			}
			if tc.disk.locked && time.Since(start) < LockGrace {
				t.Errorf("gave up on the lock after %v, want %v", time.Since(start), LockGrace)
			}
			if d.State != tc.disk.wantState || d.NodeAdded {
				t.Errorf("state %s, node added %v; want %s, no node", d.State, d.NodeAdded, tc.disk.wantState)
			}
			fi, serr := os.Stat(overlay)
			switch {
			case tc.disk.wantFile && serr != nil:
				t.Errorf("overlay removed: %v", serr)
			case !tc.disk.wantFile && !errors.Is(serr, os.ErrNotExist):
				t.Errorf("overlay kept (%v)", serr)
			case tc.disk.wasEmpty && fi.Size() != 0:
				t.Errorf("a given empty file is %d bytes, want it emptied again", fi.Size())
			}
		})
	}
}

// TestKeepAfterRestart: recovery against a restarted QEMU keeps an
// overlay whose node QEMU no longer has if it holds data or a process
// has it open, and leaves every other disk to Rollback and Cleanup.
func TestKeepAfterRestart(t *testing.T) {
	for _, tc := range []struct {
		name                  string
		state                 DiskState
		present, data, locked bool
		want                  DiskState
	}{
		{"node present, data", DiskPlanned, true, true, false, DiskPlanned},
		{"node gone, data", DiskPlanned, false, true, false, DiskHoldsGuestWrites},
		{"node gone, empty", DiskPlanned, false, false, false, DiskPlanned},
		{"node gone, empty, opened by a QEMU", DiskPlanned, false, false, true, DiskHoldsGuestWrites},
		{"node gone, rolled back with data", DiskRolledBack, false, true, false, DiskRolledBack},
	} {
		t.Run(tc.name, func(t *testing.T) {
			overlay := filepath.Join(t.TempDir(), "vda.s1")
			if err := qcow2.Create(overlay, qcow2.Options{VirtualSize: 64 << 20}); err != nil {
				t.Fatal(err)
			}
			if tc.data {
				giveData(t, overlay)
			}
			if tc.locked {
				holder, err := os.Open(overlay)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { holder.Close() })
				lk := unix.Flock_t{Type: unix.F_RDLCK, Whence: io.SeekStart, Start: 100, Len: 1}
				if err := unix.FcntlFlock(holder.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
					t.Fatal(err)
				}
			}
			d := &Disk{Target: "vda", Overlay: overlay, OverlayNode: "qsx-0", State: tc.state, FileCreated: true}
			p := &Plan{Mode: ModeAtomic, SwitchStart: time.Now(), Disks: []*Disk{d}}
			kept := KeepAfterRestart(p, map[string]bool{"qsx-0": tc.present})
			if d.State != tc.want || (len(kept) == 1) != (tc.want == DiskHoldsGuestWrites) {
				t.Errorf("state %s, kept %d; want %s", d.State, len(kept), tc.want)
			}
		})
	}
}
