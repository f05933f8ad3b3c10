package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// ErrNotQcow2 is returned by Allocated for a file that is not a qcow2
// image of version 2 or 3 with a header this package understands.
var ErrNotQcow2 = errors.New("not a qcow2 image")

// l1OffsetMask is the L2 table offset in an L1 entry (bits 9-55).
const l1OffsetMask = 0x00fffffffffffe00

// Allocated reports whether the qcow2 image at path may hold data of its
// own: whether any entry of its active L1 table points to an L2 table.
// An image Create made, or one nothing was ever written to, has none,
// and reads entirely through its backing file. One with an L2 table may
// still read as its backing does (clusters discarded, or never written
// in the table), so true means "may hold data".
//
// It reads the header and the L1 table as they are on disk: ask it only
// about an image no one writes to (QEMU opens a backing file read-only),
// or the answer may be out of date before it arrives.
func Allocated(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("qcow2: %w", err)
	}
	defer f.Close()
	h := make([]byte, 48)
	if _, err := io.ReadFull(f, h); err != nil {
		return false, fmt.Errorf("qcow2: %s: %w", path, ErrNotQcow2)
	}
	be := binary.BigEndian
	version, bits := be.Uint32(h[4:]), be.Uint32(h[20:])
	entries, offset := uint64(be.Uint32(h[36:])), be.Uint64(h[40:])
	switch {
	case be.Uint32(h) != magic || (version != 2 && version != 3):
		return false, fmt.Errorf("qcow2: %s: %w", path, ErrNotQcow2)
	case bits < 9 || bits > 21 || entries*8 > maxL1Bytes || offset%(1<<bits) != 0:
		return false, fmt.Errorf("qcow2: %s: %w: header out of range (cluster bits %d, %d L1 entries at %#x)",
			path, ErrNotQcow2, bits, entries, offset)
	case entries == 0:
		return false, nil
	}
	l1 := make([]byte, entries*8)
	if _, err := f.ReadAt(l1, int64(offset)); err != nil {
		return false, fmt.Errorf("qcow2: %s: read L1 table: %w", path, err)
	}
	for i := 0; i < len(l1); i += 8 {
		if be.Uint64(l1[i:])&l1OffsetMask != 0 {
			return true, nil
		}
	}
	return false, nil
}
