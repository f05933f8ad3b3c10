package qmpfake

import (
	"encoding/binary"
	"errors"
	"io"
	"os"

	"github.com/qsnapd/qsnapd/internal/qcow2"
)

// Just enough qcow2 for the block layer model: the header fields QEMU
// reports. Images are written by package qcow2.

const (
	qcow2Magic       = 0x514649fb // "QFI\xfb"
	qcow2Cluster     = 64 << 10
	extBackingFormat = 0xe2792aca
	maxBackingName   = 1023
)

var errNotQcow2 = errors.New("Image is not in qcow2 format") //nolint:staticcheck // QEMU's own message, byte for byte

// qcow2Header is what the model reads from an image.
type qcow2Header struct {
	size       int64
	backing    string // backing file name as stored, possibly relative
	backingFmt string
}

func readQcow2(path string) (qcow2Header, error) {
	f, err := os.Open(path)
	if err != nil {
		return qcow2Header{}, err
	}
	defer f.Close()
	buf := make([]byte, qcow2Cluster)
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return qcow2Header{}, err
	}
	buf = buf[:n]
	be := binary.BigEndian
	if len(buf) < 72 || be.Uint32(buf) != qcow2Magic {
		return qcow2Header{}, errNotQcow2
	}
	h := qcow2Header{size: int64(be.Uint64(buf[24:]))}
	hlen := 72
	switch be.Uint32(buf[4:]) {
	case 2:
	case 3:
		if len(buf) < 104 {
			return qcow2Header{}, errNotQcow2
		}
		hlen = int(be.Uint32(buf[100:]))
	default:
		return qcow2Header{}, errNotQcow2
	}
	for off := hlen; off+8 <= len(buf); {
		typ, l := be.Uint32(buf[off:]), int(be.Uint32(buf[off+4:]))
		if typ == 0 || off+8+l > len(buf) {
			break
		}
		if typ == extBackingFormat {
			h.backingFmt = string(buf[off+8 : off+8+l])
		}
		off += 8 + (l+7)&^7
	}
	if boff, bsize := int64(be.Uint64(buf[8:])), be.Uint32(buf[16:]); boff != 0 && bsize > 0 && bsize <= maxBackingName {
		name := make([]byte, bsize)
		if _, err := f.ReadAt(name, boff); err != nil {
			return qcow2Header{}, errNotQcow2
		}
		h.backing = string(name)
	}
	return h, nil
}

// createQcow2 writes an empty qcow2 image, replacing any file at path,
// as blockdev-snapshot-sync's absolute-paths mode does.
func createQcow2(path string, size int64, backing, backingFmt string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return qcow2.Create(path, qcow2.Options{VirtualSize: uint64(size), BackingFile: backing, BackingFormat: backingFmt})
}
