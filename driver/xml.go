package driver

import (
	"fmt"
	"strconv"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// parseSnapshotXML parses a <domainsnapshot> document; empty means
// <domainsnapshot/>.
func parseSnapshotXML(doc string) (*libvirtxml.DomainSnapshot, error) {
	def := &libvirtxml.DomainSnapshot{}
	if strings.TrimSpace(doc) == "" {
		return def, nil
	}
	if err := def.Unmarshal(doc); err != nil {
		return nil, fmt.Errorf("%w: malformed domainsnapshot XML: %v", ErrInvalidArg, err)
	}
	return def, nil
}

// snapshotXML renders a record as libvirt does for a disk-only snapshot.
func snapshotXML(rec *SnapshotRecord) (string, error) {
	def := libvirtxml.DomainSnapshot{
		Name:         rec.Name,
		Description:  rec.Description,
		State:        rec.State,
		CreationTime: strconv.FormatInt(rec.CreationTime, 10),
		Memory:       &libvirtxml.DomainSnapshotMemory{Snapshot: "no"},
		Disks:        &libvirtxml.DomainSnapshotDisks{},
	}
	if rec.Parent != "" {
		def.Parent = &libvirtxml.DomainSnapshotParent{Name: rec.Parent}
	}
	for _, d := range rec.Disks {
		sd := libvirtxml.DomainSnapshotDisk{Name: d.Target, Snapshot: d.Snapshot}
		if d.Snapshot == "external" {
			sd.Driver = &libvirtxml.DomainDiskDriver{Type: "qcow2"}
			sd.Source = &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: d.Overlay}}
		}
		def.Disks.Disks = append(def.Disks.Disks, sd)
	}
	if rec.Domain.UUID != "" {
		def.Domain = &libvirtxml.Domain{UUID: rec.Domain.UUID}
	}
	return def.Marshal()
}

// reparentXML rewrites the <parent> of a stored document.
func reparentXML(doc, parent string) (string, error) {
	def, err := parseSnapshotXML(doc)
	if err != nil {
		return "", err
	}
	def.Parent = nil
	if parent != "" {
		def.Parent = &libvirtxml.DomainSnapshotParent{Name: parent}
	}
	return def.Marshal()
}

// dropDisksXML marks the given disks of a stored document snapshot='no':
// their overlays were merged away and the snapshot no longer keeps them.
func dropDisksXML(doc string, targets map[string]bool) (string, error) {
	def, err := parseSnapshotXML(doc)
	if err != nil {
		return "", err
	}
	if def.Disks != nil {
		for i := range def.Disks.Disks {
			sd := &def.Disks.Disks[i]
			if targets[sd.Name] {
				*sd = libvirtxml.DomainSnapshotDisk{Name: sd.Name, Snapshot: "no"}
			}
		}
	}
	return def.Marshal()
}
