//go:build !linux

package qcow2

import (
	"errors"
	"fmt"
)

// Locked reports whether another process holds a lock on the file at
// path. Only Linux has the open file description locks QEMU takes; here
// it cannot tell, and says so.
func Locked(path string) (bool, error) {
	return false, fmt.Errorf("qcow2: test the locks of %s: %w", path, errors.ErrUnsupported)
}
