package driver

import (
	"fmt"
	"strings"
)

// CreateFlags are virDomainSnapshotCreateFlags, with libvirt's values, so
// a frontend can pass the integer it would give virDomainSnapshotCreateXML.
type CreateFlags uint32

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

var flagNames = []struct {
	flag CreateFlags
	name string
}{
	{FlagRedefine, "redefine"},
	{FlagCurrent, "current"},
	{FlagNoMetadata, "no-metadata"},
	{FlagHalt, "halt"},
	{FlagDiskOnly, "disk-only"},
	{FlagReuseExt, "reuse-external"},
	{FlagQuiesce, "quiesce"},
	{FlagAtomic, "atomic"},
	{FlagLive, "live"},
	{FlagValidate, "validate"},
}

// ParseFlags turns flag names (as virsh spells the options, without the
// dashes: "disk-only", "reuse-external") into flags.
func ParseFlags(names []string) (CreateFlags, error) {
	var f CreateFlags
next:
	for _, n := range names {
		n = strings.TrimPrefix(strings.ToLower(strings.TrimSpace(n)), "--")
		for _, fn := range flagNames {
			if fn.name == n {
				f |= fn.flag
				continue next
			}
		}
		return 0, fmt.Errorf("%w: unknown snapshot flag %q", ErrInvalidArg, n)
	}
	return f, nil
}

// Names lists the set flags by name.
func (f CreateFlags) Names() []string {
	var names []string
	for _, fn := range flagNames {
		if f&fn.flag != 0 {
			names = append(names, fn.name)
		}
	}
	return names
}

func (f CreateFlags) String() string {
	if f == 0 {
		return "none"
	}
	return strings.Join(f.Names(), "|")
}

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
