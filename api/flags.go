package api

import (
	"encoding/json"
	"fmt"
	"strings"
)

// Flags are snapshot creation flags, virDomainSnapshotCreateFlags with
// libvirt's bits: on the wire either a list of names ("disk-only",
// "atomic", ...) or the integer a libvirt client would pass.
type Flags uint32

// The flags, with libvirt's bits.
const (
	FlagRedefine   Flags = 1 << iota // REDEFINE: store given metadata, touch no disk
	FlagCurrent                      // CURRENT: with REDEFINE, make it current
	FlagNoMetadata                   // NO_METADATA: keep no record of the snapshot
	FlagHalt                         // HALT: stop the guest afterwards
	FlagDiskOnly                     // DISK_ONLY: no memory state
	FlagReuseExt                     // REUSE_EXT: overlay files exist already
	FlagQuiesce                      // QUIESCE: freeze guest filesystems meanwhile
	FlagAtomic                       // ATOMIC: all disks or none
	FlagLive                         // LIVE: memory snapshot while running
	FlagValidate                     // VALIDATE: check the XML strictly

	// KnownFlags are all of them; other bits are refused.
	KnownFlags = FlagValidate<<1 - 1
)

// flagNames is the one table of flag names: virsh's options, without
// the dashes.
var flagNames = []struct {
	flag Flags
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

// ParseFlags turns flag names (as virsh spells the options, with or
// without the dashes: "disk-only", "--reuse-external") into flags.
func ParseFlags(names []string) (Flags, error) {
	var f Flags
next:
	for _, n := range names {
		n = strings.TrimPrefix(strings.ToLower(strings.TrimSpace(n)), "--")
		for _, fn := range flagNames {
			if fn.name == n {
				f |= fn.flag
				continue next
			}
		}
		// The daemon answers this with invalid-arg, as it always has.
		return 0, fmt.Errorf("invalid argument: unknown snapshot flag %q", n)
	}
	return f, nil
}

// Names lists the set flags by name, in libvirt's bit order; unknown
// bits have no name.
func (f Flags) Names() []string {
	var names []string
	for _, fn := range flagNames {
		if f&fn.flag != 0 {
			names = append(names, fn.name)
		}
	}
	return names
}

// String joins the names with "|"; no flag is "none".
func (f Flags) String() string {
	if f == 0 {
		return "none"
	}
	return strings.Join(f.Names(), "|")
}

// UnmarshalJSON accepts a list of names or an integer.
func (f *Flags) UnmarshalJSON(b []byte) error {
	s := strings.TrimSpace(string(b))
	if s == "null" {
		*f = 0
		return nil
	}
	if strings.HasPrefix(s, "[") {
		var names []string
		if err := json.Unmarshal(b, &names); err != nil {
			return fmt.Errorf("flags: a list of names or an integer: %w", err)
		}
		v, err := ParseFlags(names)
		if err != nil {
			return err
		}
		*f = v
		return nil
	}
	var n uint32
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("flags: a list of names or an unsigned integer: %w", err)
	}
	*f = Flags(n)
	return nil
}

// MarshalJSON writes the names.
func (f Flags) MarshalJSON() ([]byte, error) {
	names := f.Names()
	if names == nil {
		names = []string{}
	}
	return json.Marshal(names)
}
