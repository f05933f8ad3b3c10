package libvirtrpc

import (
	"slices"
	"testing"

	"github.com/qsnapd/qsnapd/driver"
)

// TestFilterSnapshots applies libvirt's list flags to this tree, whose
// creation order puts c1 before its parent root (root was redefined
// after c1 was taken):
//
//	root ─┬─ c1 ─┬─ g1
//	      │      └─ g2
//	      └─ c2
//	lone
func TestFilterSnapshots(t *testing.T) {
	ext := []driver.SnapshotDisk{{Target: "vda", Snapshot: "external", Overlay: "/x.qcow2"}}
	internal := []driver.SnapshotDisk{{Target: "vda", Snapshot: "internal"}}
	recs := []driver.SnapshotRecord{ // creation order
		{Name: "c1", Parent: "root", State: "disk-snapshot", Disks: ext},
		{Name: "root", State: "disk-snapshot", Disks: ext},
		{Name: "c2", Parent: "root", State: "running", Disks: internal},
		{Name: "g1", Parent: "c1", State: "disk-snapshot", Disks: ext},
		{Name: "lone", State: "shutoff", Disks: internal},
		// A memory snapshot with an external disk is external too.
		{Name: "g2", Parent: "c1", State: "paused", Disks: ext},
	}
	for _, tc := range []struct {
		name  string
		from  string
		flags uint32
		want  []string
	}{
		{"all, in creation order", "", 0, []string{"c1", "root", "c2", "g1", "lone", "g2"}},
		{"ROOTS", "", listRoots, []string{"root", "lone"}},
		// DESCENDANTS is ROOTS' bit: without from it lists the roots.
		{"DESCENDANTS without from", "", listDescendants, []string{"root", "lone"}},
		{"children of root", "root", 0, []string{"c1", "c2"}},
		{"DESCENDANTS of root", "root", listDescendants, []string{"c1", "c2", "g1", "g2"}},
		{"DESCENDANTS of c1", "c1", listDescendants, []string{"g1", "g2"}},
		{"children of a leaf", "g1", 0, nil},
		{"LEAVES", "", listLeaves, []string{"c2", "g1", "lone", "g2"}},
		{"NO_LEAVES", "", listNoLeaves, []string{"c1", "root"}},
		{"LEAVES and NO_LEAVES", "", listLeaves | listNoLeaves, []string{"c1", "root", "c2", "g1", "lone", "g2"}},
		{"ROOTS and LEAVES", "", listRoots | listLeaves, []string{"lone"}},
		{"DESCENDANTS of root, NO_LEAVES", "root", listDescendants | listNoLeaves, []string{"c1"}},
		{"METADATA", "", listMetadata, []string{"c1", "root", "c2", "g1", "lone", "g2"}},
		{"NO_METADATA", "", listNoMetadata, nil},
		{"METADATA and NO_METADATA", "", listMetadata | listNoMetadata, []string{"c1", "root", "c2", "g1", "lone", "g2"}},
		{"DISK_ONLY", "", listDiskOnly, []string{"c1", "root", "g1"}},
		{"ACTIVE", "", listSnapActive, []string{"c2", "g2"}},
		{"INACTIVE", "", listInactive2, []string{"lone"}},
		{"ACTIVE and INACTIVE", "", listSnapActive | listInactive2, []string{"c2", "lone", "g2"}},
		{"every state", "", listSnapActive | listInactive2 | listDiskOnly, []string{"c1", "root", "c2", "g1", "lone", "g2"}},
		{"INTERNAL", "", listInternal, []string{"c2", "lone"}},
		{"EXTERNAL", "", listExternal, []string{"c1", "root", "g1", "g2"}},
		{"INTERNAL and EXTERNAL", "", listInternal | listExternal, []string{"c1", "root", "c2", "g1", "lone", "g2"}},
		{"EXTERNAL children of root", "root", listExternal, []string{"c1"}},
		// Parents first, though c1 was created before root.
		{"TOPOLOGICAL", "", listTopological, []string{"root", "c1", "g1", "g2", "c2", "lone"}},
		{"TOPOLOGICAL DESCENDANTS of root", "root", listDescendants | listTopological, []string{"c1", "g1", "g2", "c2"}},
		{"TOPOLOGICAL LEAVES", "", listTopological | listLeaves, []string{"g1", "g2", "c2", "lone"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := filterSnapshots(recs, tc.from, tc.flags)
			if !slices.Equal(got, tc.want) {
				t.Errorf("filterSnapshots(from %q, flags %#x) = %v, want %v", tc.from, tc.flags, got, tc.want)
			}
		})
	}
}

// TestFilterSnapshotsOrphan: a snapshot whose parent is gone from the
// metadata is a root, as libvirt hangs it under its metaroot.
func TestFilterSnapshotsOrphan(t *testing.T) {
	recs := []driver.SnapshotRecord{
		{Name: "a", State: "disk-snapshot"},
		{Name: "b", Parent: "gone", State: "disk-snapshot"},
		{Name: "c", Parent: "b", State: "disk-snapshot"},
	}
	if got, want := filterSnapshots(recs, "", listRoots), []string{"a", "b"}; !slices.Equal(got, want) {
		t.Errorf("ROOTS = %v, want %v", got, want)
	}
	if got, want := filterSnapshots(recs, "", listTopological), []string{"a", "b", "c"}; !slices.Equal(got, want) {
		t.Errorf("TOPOLOGICAL = %v, want %v", got, want)
	}
}
