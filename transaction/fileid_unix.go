//go:build unix

package transaction

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// IdentifyFile returns the device and inode of a file from its Stat or
// Lstat, or nil if the platform does not say.
func IdentifyFile(fi os.FileInfo) *FileID {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	// The conversions are no-ops on Linux; Dev is an int32 elsewhere.
	return &FileID{Dev: uint64(st.Dev), Ino: uint64(st.Ino)}
}

// openValidated opens the file validation found at a disk's overlay path
// without following a symbolic link, and only if it is still that file:
// one swapped in since must not be written through.
func openValidated(d *Disk, flag int) (*os.File, os.FileInfo, error) {
	f, err := os.OpenFile(d.Overlay, flag|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, nil, fmt.Errorf("%w: overlay %s of disk %s is now a symbolic link", ErrOverlayChanged, d.Overlay, d.Target)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("open overlay %s of disk %s: %w", d.Overlay, d.Target, err)
	}
	fi, err := f.Stat()
	if err != nil {
		err = fmt.Errorf("stat overlay %s of disk %s: %w", d.Overlay, d.Target, err)
	} else {
		err = d.checkIdentity(fi)
	}
	if err != nil {
		return nil, nil, errors.Join(err, f.Close())
	}
	return f, fi, nil
}

// checkIdentity requires fi to be the regular file validation saw.
func (d *Disk) checkIdentity(fi os.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: overlay %s of disk %s is no longer a regular file", ErrOverlayChanged, d.Overlay, d.Target)
	}
	if d.FileID != nil {
		if id := IdentifyFile(fi); id == nil || *id != *d.FileID {
			return fmt.Errorf("%w: overlay %s of disk %s was replaced by another file", ErrOverlayChanged, d.Overlay, d.Target)
		}
	}
	return nil
}
