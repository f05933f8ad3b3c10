package qmpfake

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// Just enough qcow2 for the block layer model: the header fields QEMU
// reports, and an empty image laid out as qemu-img create makes it
// (header, refcount table, refcount block, L1 table; docs/interop/qcow2.txt).

const (
	qcow2Magic       = 0x514649fb // "QFI\xfb"
	qcow2Cluster     = 64 << 10
	extBackingFormat = 0xe2792aca
	maxBackingName   = 1023
)

var errNotQcow2 = errors.New("Image is not in qcow2 format")

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

// createQcow2 writes an empty qcow2 v3 image with 64 KiB clusters that
// QEMU and qemu-img open, as blockdev-snapshot-sync's absolute-paths
// mode does.
func createQcow2(path string, size int64, backing, backingFmt string) error {
	if len(backing) > maxBackingName {
		return fmt.Errorf("backing file name too long")
	}
	const cs = qcow2Cluster
	l1 := (size + cs*(cs/8) - 1) / (cs * (cs / 8))
	clusters := 3 + (l1*8+cs-1)/cs
	img := make([]byte, 3*cs+l1*8)
	be := binary.BigEndian
	be.PutUint32(img[0:], qcow2Magic)
	be.PutUint32(img[4:], 3)
	be.PutUint32(img[20:], 16) // cluster bits
	be.PutUint64(img[24:], uint64(size))
	be.PutUint32(img[36:], uint32(l1))
	be.PutUint64(img[40:], 3*cs) // L1 table
	be.PutUint64(img[48:], cs)   // refcount table
	be.PutUint32(img[56:], 1)    // refcount table clusters
	be.PutUint32(img[96:], 4)    // 16-bit refcounts
	be.PutUint32(img[100:], 112) // header length
	off := 112
	if backingFmt != "" {
		be.PutUint32(img[off:], extBackingFormat)
		be.PutUint32(img[off+4:], uint32(len(backingFmt)))
		copy(img[off+8:], backingFmt)
		off += 8 + (len(backingFmt)+7)&^7
	}
	off += 8 // end of extensions
	if backing != "" {
		be.PutUint64(img[8:], uint64(off))
		be.PutUint32(img[16:], uint32(len(backing)))
		copy(img[off:], backing)
	}
	be.PutUint64(img[cs:], 2*cs) // the one refcount block
	for i := int64(0); i < clusters; i++ {
		be.PutUint16(img[2*cs+2*i:], 1)
	}
	return os.WriteFile(path, img, 0o644)
}
