package qcow2

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestLocked takes QEMU's kind of lock (an OFD lock on one byte, as QEMU
// locks its permission bytes) on another open file description and
// sees Locked report it, and stop reporting it once that description
// is closed, as when QEMU exits.
func TestLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "overlay.qcow2")
	if err := Create(path, Options{VirtualSize: 64 * MiB}); err != nil {
		t.Fatal(err)
	}
	if locked, err := Locked(path); err != nil || locked {
		t.Fatalf("fresh image: locked %v, %v; want unlocked", locked, err)
	}
	for _, typ := range []int16{unix.F_RDLCK, unix.F_WRLCK} {
		holder, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		lk := unix.Flock_t{Type: typ, Whence: io.SeekStart, Start: 100, Len: 1}
		if err := unix.FcntlFlock(holder.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
			t.Fatal(err)
		}
		if locked, err := Locked(path); err != nil || !locked {
			t.Errorf("lock type %d on byte 100: locked %v, %v; want locked", typ, locked, err)
		}
		holder.Close()
		if locked, err := Locked(path); err != nil || locked {
			t.Errorf("lock type %d released: locked %v, %v; want unlocked", typ, locked, err)
		}
	}
	if _, err := Locked(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing image: %v, want ErrNotExist", err)
	}
}
