package main

import (
	"fmt"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// diskSpec is one --diskspec of snapshot-create-as:
// disk[,snapshot=external|no][,driver=TYPE][,stype=file|block][,file=PATH],
// where ",," stands for a comma, as in virsh.
type diskSpec struct {
	Disk     string // target, e.g. vda
	Snapshot string // "", "external" or "no"
	Driver   string // overlay format, e.g. qcow2
	SType    string // "", "file" or "block"
	File     string // overlay path (a device with stype=block)
}

// parseDiskspec parses a diskspec. As in virsh, each key may appear once
// and unknown keys are errors.
func parseDiskspec(spec string) (diskSpec, error) {
	fields := splitEscaped(spec)
	d := diskSpec{Disk: fields[0]}
	bad := func(format string, a ...any) (diskSpec, error) {
		return diskSpec{}, fmt.Errorf("%w '%s': %s", errDiskspec, spec, fmt.Sprintf(format, a...))
	}
	if d.Disk == "" {
		return bad("empty disk name")
	}
	seen := map[string]bool{}
	for _, f := range fields[1:] {
		key, value, ok := strings.Cut(f, "=")
		if !ok {
			return bad("'%s' is not key=value", f)
		}
		if seen[key] {
			return bad("%s given twice", key)
		}
		seen[key] = true
		switch key {
		case "snapshot":
			if value != "external" && value != "no" {
				return bad("snapshot must be external or no, not '%s'", value)
			}
			d.Snapshot = value
		case "driver":
			if value == "" {
				return bad("empty driver")
			}
			d.Driver = value
		case "stype":
			if value != "file" && value != "block" {
				return bad("unknown storage type '%s': want file or block", value)
			}
			d.SType = value
		case "file":
			if value == "" {
				return bad("empty file")
			}
			d.File = value
		default:
			return bad("unknown key '%s'", key)
		}
	}
	return d, nil
}

// String renders the spec canonically, escaping commas, so that
// parseDiskspec(d.String()) == d.
func (d diskSpec) String() string {
	var b strings.Builder
	b.WriteString(escapeCommas(d.Disk))
	for _, kv := range [][2]string{{"snapshot", d.Snapshot}, {"driver", d.Driver}, {"stype", d.SType}, {"file", d.File}} {
		if kv[1] != "" {
			b.WriteString("," + kv[0] + "=" + escapeCommas(kv[1]))
		}
	}
	return b.String()
}

// snapshotDisk is the spec as a <disk> of a <domainsnapshot>. As in
// virsh, stype=block makes the file a <source dev=.../>.
func (d diskSpec) snapshotDisk() libvirtxml.DomainSnapshotDisk {
	sd := libvirtxml.DomainSnapshotDisk{Name: d.Disk, Snapshot: d.Snapshot}
	if d.Driver != "" {
		sd.Driver = &libvirtxml.DomainDiskDriver{Type: d.Driver}
	}
	switch {
	case d.SType == "block":
		sd.Source = &libvirtxml.DomainDiskSource{Block: &libvirtxml.DomainDiskSourceBlock{Dev: d.File}}
	case d.File != "":
		sd.Source = &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: d.File}}
	}
	return sd
}

// splitEscaped splits at single commas; ",," is a literal comma. It
// reads left to right, as virsh's vshStringToArray does, so ",,," is a
// comma followed by a separator. It returns at least one field.
func splitEscaped(s string) []string {
	var fields []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != ',' {
			cur.WriteByte(s[i])
			continue
		}
		if i+1 < len(s) && s[i+1] == ',' {
			cur.WriteByte(',')
			i++
			continue
		}
		fields = append(fields, cur.String())
		cur.Reset()
	}
	return append(fields, cur.String())
}

func escapeCommas(s string) string { return strings.ReplaceAll(s, ",", ",,") }
