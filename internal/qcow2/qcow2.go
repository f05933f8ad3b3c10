// Package qcow2 writes empty qcow2 overlay images in-process, byte-compatible
// with what qemu-img create makes, so that preparing a snapshot costs no
// process spawn; it also reads an image's virtual size from its header
// and tells whether an image still holds no data of its own and whether
// a process (QEMU) holds it locked.
//
// Layout as qemu-img 7.2 makes it (QEMU docs/interop/qcow2.txt): header,
// refcount table, refcount block(s), L1 table. The bytes equal qemu-img's
// whenever one refcount block suffices (always for clusters of 16 KiB up).
package qcow2

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

const (
	magic              = 0x514649fb // "QFI\xfb"
	version            = 3
	headerLen          = 112 // v3 fields through compression_type, padded to 8
	refcountOrder      = 4   // 16-bit refcounts
	defaultClusterBits = 16
	maxL1Bytes         = 32 << 20 // QEMU's QCOW_MAX_L1_SIZE
	maxBackingFile     = 1023     // longest name QEMU opens
	maxBackingFormat   = 15       // QEMU keeps the format in a 16-byte buffer
	extBackingFormat   = 0xe2792aca
	extFeatureNames    = 0x6803f857
)

// featureNames is the feature name table qemu-img writes, in its order:
// type (0 incompatible, 1 compatible, 2 autoclear), bit, name.
var featureNames = []struct {
	typ, bit byte
	name     string
}{
	{0, 0, "dirty bit"}, {0, 1, "corrupt bit"}, {0, 2, "external data file"},
	{0, 3, "compression type"}, {0, 4, "extended L2 entries"},
	{1, 0, "lazy refcounts"}, {2, 0, "bitmaps"}, {2, 1, "raw external data"},
}

// Options describes the image to create.
type Options struct {
	VirtualSize   uint64 // bytes; a positive multiple of 512
	BackingFile   string // stored verbatim; empty for no backing file
	BackingFormat string // e.g. "qcow2"; needs BackingFile
	ClusterBits   uint32 // log2 of the cluster size, 9..21; 0 means 16
}

// plan is a validated image: where each part goes and the header cluster.
type plan struct {
	cs        uint64 // cluster size in bytes
	l1Entries uint64
	rt, rb    uint64 // refcount table and refcount block clusters
	l1        uint64 // L1 table clusters
	header    []byte // cluster 0 up to the end of the backing file name
}

// Validate reports whether o describes an image this package can write.
func Validate(o Options) error {
	_, err := newPlan(o)
	return err
}

func newPlan(o Options) (*plan, error) {
	bits := cmp.Or(o.ClusterBits, defaultClusterBits)
	switch {
	case bits < 9 || bits > 21:
		return nil, fmt.Errorf("qcow2: %w: cluster bits %d outside 9..21", ErrInvalid, bits)
	case o.VirtualSize == 0 || o.VirtualSize%512 != 0:
		return nil, fmt.Errorf("qcow2: %w: virtual size %d is not a positive multiple of 512", ErrInvalid, o.VirtualSize)
	case len(o.BackingFile) > maxBackingFile:
		return nil, fmt.Errorf("qcow2: %w: backing file name is %d bytes, over %d", ErrInvalid, len(o.BackingFile), maxBackingFile)
	case len(o.BackingFormat) > maxBackingFormat:
		return nil, fmt.Errorf("qcow2: %w: backing format %q is over %d bytes", ErrInvalid, o.BackingFormat, maxBackingFormat)
	case o.BackingFormat != "" && o.BackingFile == "":
		return nil, fmt.Errorf("qcow2: %w: backing format %q without backing file", ErrInvalid, o.BackingFormat)
	}
	p := &plan{cs: 1 << bits}
	// One L1 entry maps an L2 table of cs/8 entries, each mapping a cluster.
	p.l1Entries = (o.VirtualSize-1)/(p.cs*p.cs/8) + 1
	if p.l1Entries > maxL1Bytes/8 {
		return nil, fmt.Errorf("qcow2: %w: virtual size %d needs over %d L1 entries; use larger clusters", ErrInvalid, o.VirtualSize, maxL1Bytes/8)
	}
	p.l1 = ceilDiv(p.l1Entries*8, p.cs)
	// The refcount blocks must also count themselves and the refcount table.
	p.rt, p.rb = 1, 1
	for {
		rb := ceilDiv(p.clusters(), p.cs/2)
		rt := ceilDiv(rb, p.cs/8)
		if rb <= p.rb && rt <= p.rt {
			break
		}
		p.rb, p.rt = max(p.rb, rb), max(p.rt, rt)
	}
	p.header = p.buildHeader(o, bits)
	if uint64(len(p.header)) > p.cs {
		return nil, fmt.Errorf("qcow2: %w: header and backing file name need %d bytes, over a cluster", ErrInvalid, len(p.header))
	}
	return p, nil
}

func ceilDiv(a, b uint64) uint64 { return (a + b - 1) / b }

// clusters counts the allocated clusters: header, refcounts and L1 table.
func (p *plan) clusters() uint64 { return 1 + p.rt + p.rb + p.l1 }

func (p *plan) buildHeader(o Options, bits uint32) []byte {
	be := binary.BigEndian
	h := make([]byte, headerLen, 2048)
	be.PutUint32(h[0:], magic)
	be.PutUint32(h[4:], version)
	be.PutUint32(h[16:], uint32(len(o.BackingFile)))
	be.PutUint32(h[20:], bits)
	be.PutUint64(h[24:], o.VirtualSize)
	be.PutUint32(h[36:], uint32(p.l1Entries))
	be.PutUint64(h[40:], (1+p.rt+p.rb)*p.cs) // L1 table offset
	be.PutUint64(h[48:], p.cs)               // refcount table offset
	be.PutUint32(h[56:], uint32(p.rt))
	be.PutUint32(h[96:], refcountOrder)
	be.PutUint32(h[100:], headerLen)
	if o.BackingFormat != "" {
		h = appendExt(h, extBackingFormat, []byte(o.BackingFormat))
	}
	// qemu-img leaves it out of clusters of 4 KiB or less, for room.
	if p.cs > 4096 {
		table := make([]byte, 0, 48*len(featureNames))
		for _, f := range featureNames {
			entry := [48]byte{f.typ, f.bit}
			copy(entry[2:], f.name)
			table = append(table, entry[:]...)
		}
		h = appendExt(h, extFeatureNames, table)
	}
	h = appendExt(h, 0, nil) // end of extensions
	if o.BackingFile != "" {
		be.PutUint64(h[8:], uint64(len(h)))
		h = append(h, o.BackingFile...)
	}
	return h
}

// appendExt appends a header extension, its data padded to 8 bytes.
func appendExt(h []byte, typ uint32, data []byte) []byte {
	h = binary.BigEndian.AppendUint32(h, typ)
	h = binary.BigEndian.AppendUint32(h, uint32(len(data)))
	h = append(h, data...)
	return append(h, make([]byte, (8-len(data)%8)%8)...)
}

// Create makes a new image file at path (mode 0644 before umask), fsyncs
// it and its directory. It fails with ErrExists if path exists, and
// removes the file it created on any later error.
func Create(path string, o Options) error {
	if err := CreateFile(path, o); err != nil {
		return err
	}
	if err := SyncDir(filepath.Dir(path)); err != nil {
		return errors.Join(err, os.Remove(path))
	}
	return nil
}

// CreateFile is Create without the directory fsync, for callers that
// create several files in one directory and sync it once with SyncDir.
func CreateFile(path string, o Options) (err error) {
	p, err := newPlan(o)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("qcow2: create %s: %w", path, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("qcow2: create: %w", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, os.Remove(path)) // undo the create
		}
	}()
	return errors.Join(p.write(f), f.Close())
}

// VirtualSize reads the virtual size from the header of the qcow2 image
// at path, in bytes, rounded down to 512 as QEMU reports it. QEMU
// writes the header's size before a resize of an image it has open
// returns, so the header tells the size of an image in use.
func VirtualSize(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("qcow2: %w", err)
	}
	defer f.Close()
	var h [32]byte
	if _, err := f.ReadAt(h[:], 0); err != nil {
		return 0, fmt.Errorf("qcow2: read header of %s: %w", path, err)
	}
	if binary.BigEndian.Uint32(h[0:]) != magic {
		return 0, fmt.Errorf("qcow2: %s is not a qcow2 image", path)
	}
	return binary.BigEndian.Uint64(h[24:]) &^ 511, nil
}

// SyncDir fsyncs a directory, making the entries created in it durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err == nil {
		err = errors.Join(d.Sync(), d.Close())
	}
	if err != nil {
		return fmt.Errorf("qcow2: fsync directory %s: %w", dir, err)
	}
	return nil
}

// WriteTo writes an image into f, which must be empty and writable at
// offsets (not O_APPEND), and fsyncs it. The caller keeps f open.
func WriteTo(f *os.File, o Options) error {
	p, err := newPlan(o)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("qcow2: stat %s: %w", f.Name(), err)
	}
	if fi.Size() != 0 {
		return fmt.Errorf("qcow2: write %s (%d bytes): %w", f.Name(), fi.Size(), ErrNotEmpty)
	}
	return p.write(f)
}

// write stores only the non-zero bytes and sets the length with ftruncate,
// so the zero rest of the metadata clusters reads back as zeros.
func (p *plan) write(f *os.File) error {
	reftable := make([]byte, 8*p.rb)
	for i := range p.rb {
		binary.BigEndian.PutUint64(reftable[8*i:], (1+p.rt+i)*p.cs)
	}
	// The refcount blocks are contiguous, so cluster c's count sits at
	// byte 2c of the area; every allocated cluster has refcount 1.
	refcounts := make([]byte, 2*p.clusters())
	for i := 1; i < len(refcounts); i += 2 {
		refcounts[i] = 1
	}
	offsets := []uint64{0, p.cs, (1 + p.rt) * p.cs}
	for i, data := range [][]byte{p.header, reftable, refcounts} {
		if _, err := f.WriteAt(data, int64(offsets[i])); err != nil {
			return fmt.Errorf("qcow2: write %s: %w", f.Name(), err)
		}
	}
	// qemu-img writes the L1 table's bytes only, not its whole cluster.
	size := (1+p.rt+p.rb)*p.cs + 8*p.l1Entries
	if err := f.Truncate(int64(size)); err != nil {
		return fmt.Errorf("qcow2: extend %s: %w", f.Name(), err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("qcow2: fsync %s: %w", f.Name(), err)
	}
	return nil
}
