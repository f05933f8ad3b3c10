package libvirtrpc

import (
	libvirt "github.com/digitalocean/go-libvirt"

	"github.com/qsnapd/qsnapd/driver"
)

// virDomainSnapshotListFlags.
const (
	listRoots       = uint32(libvirt.DomainSnapshotListRoots)       // without from: roots only
	listDescendants = uint32(libvirt.DomainSnapshotListDescendants) // with from: all descendants, not just children
	listMetadata    = uint32(libvirt.DomainSnapshotListMetadata)
	listLeaves      = uint32(libvirt.DomainSnapshotListLeaves)
	listNoLeaves    = uint32(libvirt.DomainSnapshotListNoLeaves)
	listNoMetadata  = uint32(libvirt.DomainSnapshotListNoMetadata)
	listSnapActive  = uint32(libvirt.DomainSnapshotListActive)
	listInactive2   = uint32(libvirt.DomainSnapshotListInactive)
	listDiskOnly    = uint32(libvirt.DomainSnapshotListDiskOnly)
	listInternal    = uint32(libvirt.DomainSnapshotListInternal)
	listExternal    = uint32(libvirt.DomainSnapshotListExternal)
	listTopological = uint32(libvirt.DomainSnapshotListTopological)

	listFlagsKnown = listTopological<<1 - 1
)

// filterSnapshots applies libvirt's list flags to a domain's snapshots
// (in creation order): the candidates are every snapshot, the roots
// (ROOTS), or, from a snapshot, its children or (DESCENDANTS) all its
// descendants; then each filter pair keeps those that match when one of
// its two flags is given. TOPOLOGICAL orders parents before children.
func filterSnapshots(recs []driver.SnapshotRecord, from string, flags uint32) []string {
	children := map[string][]string{}
	known := map[string]bool{}
	for _, r := range recs {
		known[r.Name] = true
	}
	var roots []string
	for _, r := range recs {
		if r.Parent != "" && known[r.Parent] {
			children[r.Parent] = append(children[r.Parent], r.Name)
		} else {
			roots = append(roots, r.Name)
		}
	}
	// Parents first: each root, then its subtree, children in creation
	// order.
	var topo []string
	var walk func(string)
	walk = func(n string) {
		topo = append(topo, n)
		for _, c := range children[n] {
			walk(c)
		}
	}
	for _, r := range roots {
		walk(r)
	}

	candidate := map[string]bool{}
	switch {
	case from != "" && flags&listDescendants != 0:
		var mark func(string)
		mark = func(n string) {
			for _, c := range children[n] {
				candidate[c] = true
				mark(c)
			}
		}
		mark(from)
	case from != "":
		for _, c := range children[from] {
			candidate[c] = true
		}
	case flags&listRoots != 0:
		for _, r := range roots {
			candidate[r] = true
		}
	default:
		for _, r := range recs {
			candidate[r.Name] = true
		}
	}

	byName := make(map[string]driver.SnapshotRecord, len(recs))
	for _, r := range recs {
		byName[r.Name] = r
	}
	keep := func(r driver.SnapshotRecord) bool {
		if !candidate[r.Name] {
			return false
		}
		leaf := len(children[r.Name]) == 0
		if !pick(flags, listLeaves, listNoLeaves, leaf) {
			return false
		}
		// Every snapshot listed has metadata.
		if !pick(flags, listMetadata, listNoMetadata, true) {
			return false
		}
		if !pick(flags, listExternal, listInternal, isExternal(r)) {
			return false
		}
		if states := flags & (listSnapActive | listInactive2 | listDiskOnly); states != 0 {
			switch r.State {
			case "disk-snapshot":
				return states&listDiskOnly != 0
			case "shutoff":
				return states&listInactive2 != 0
			default:
				return states&listSnapActive != 0
			}
		}
		return true
	}
	order := make([]string, 0, len(recs))
	if flags&listTopological != 0 {
		order = topo
	} else {
		for _, r := range recs {
			order = append(order, r.Name)
		}
	}
	var out []string
	for _, n := range order {
		if keep(byName[n]) {
			out = append(out, n)
		}
	}
	return out
}

// isExternal says whether a snapshot's data lives outside the images
// (libvirt's "external" location): a disk-only snapshot, or one with an
// external disk.
func isExternal(r driver.SnapshotRecord) bool {
	if r.State == "disk-snapshot" {
		return true
	}
	for _, d := range r.Disks {
		if d.Snapshot == "external" {
			return true
		}
	}
	return false
}
