package driver

import "fmt"

// CreateFlags are virDomainSnapshotCreateFlags, with libvirt's values, so
// a frontend can pass the integer it would give virDomainSnapshotCreateXML.
// Their names are the wire's: package api holds the one table of them.
type CreateFlags uint32

// The flags, with virDomainSnapshotCreateFlags' bits.
const (
	FlagRedefine   CreateFlags = 1 << iota // REDEFINE: store given metadata, touch no disk
	FlagCurrent                            // CURRENT: with REDEFINE, make it current
	FlagNoMetadata                         // NO_METADATA: keep no record of the snapshot
	FlagHalt                               // HALT: stop the guest afterwards
	FlagDiskOnly                           // DISK_ONLY: no memory state
	FlagReuseExt                           // REUSE_EXT: overlay files exist already
	FlagQuiesce                            // QUIESCE: freeze guest filesystems meanwhile
	FlagAtomic                             // ATOMIC: all disks or none
	FlagLive                               // LIVE: memory snapshot while running
	FlagValidate                           // VALIDATE: check the XML strictly

	flagsKnown = FlagValidate<<1 - 1
)

// String is the flags' integer, as libvirt's logs print them; the wire
// (package api) names them.
func (f CreateFlags) String() string { return fmt.Sprintf("%#x", uint32(f)) }

// check applies libvirt's rules on flag combinations.
func (f CreateFlags) check() error {
	switch {
	case f&^flagsKnown != 0:
		return fmt.Errorf("%w: unknown flag bits %#x", ErrInvalidArg, uint32(f&^flagsKnown))
	case f&FlagCurrent != 0 && f&FlagRedefine == 0:
		return fmt.Errorf("%w: CURRENT requires REDEFINE", ErrInvalidArg)
	case f&FlagRedefine != 0 && f&FlagNoMetadata != 0:
		return fmt.Errorf("%w: REDEFINE and NO_METADATA are mutually exclusive", ErrInvalidArg)
	case f&FlagRedefine != 0 && f&FlagHalt != 0:
		return fmt.Errorf("%w: REDEFINE and HALT are mutually exclusive", ErrInvalidArg)
	case f&FlagQuiesce != 0 && f&FlagDiskOnly == 0:
		return fmt.Errorf("%w: QUIESCE requires DISK_ONLY", ErrInvalidArg)
	case f&FlagLive != 0:
		return fmt.Errorf("%w: LIVE snapshots save memory state; qsnapd takes disk-only snapshots", ErrUnsupported)
	}
	return nil
}
