//go:build linux

package qcow2

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Locked reports whether another open file description holds a lock on
// any byte of the file at path. QEMU locks bytes of every image it has
// open (OFD locks, fcntl F_OFD_SETLK, on its permission bytes), so a
// locked image may be in use; an image no process has open is not
// locked. It asks as qemu-img info without -U does, with F_OFD_GETLK,
// and takes no lock itself.
func Locked(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("qcow2: %w", err)
	}
	defer f.Close()
	// A write lock over the whole file conflicts with any lock another
	// file description holds, read or write.
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
		return false, fmt.Errorf("qcow2: test the locks of %s: %w", path, err)
	}
	return lk.Type != unix.F_UNLCK, nil
}
