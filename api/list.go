package api

// Query parameters of GET /v1/domains/{name}/snapshots. A listing is
// in creation order: by creation time, then by name, byte by byte (the
// order of libvirt's listings, and of each snapshot's children). With
// QueryLimit it is a page; SnapshotList.Next, set when more follow, is
// the QueryAfter of the next one. The filters apply before the limit:
// a page of leaves holds QueryLimit leaves.
const (
	// QueryRoots keeps the snapshots without a parent.
	QueryRoots = "roots"
	// QueryLeaves keeps the snapshots without children.
	QueryLeaves = "leaves"
	// QueryTree adds the whole tree (SnapshotList.Tree); it cannot be
	// paged.
	QueryTree = "tree"
	// QueryLimit bounds the snapshots listed: 1 to MaxPageLimit.
	QueryLimit = "limit"
	// QueryAfter starts the listing after the snapshot it names, which
	// must exist; it need not pass the filters.
	QueryAfter = "after"
)

// MaxPageLimit is the largest QueryLimit.
const MaxPageLimit = 10000

// SnapshotTree arranges snapshots as the tree of their parents: the
// roots, each with its children, in the order of snaps. A snapshot
// whose parent is not in snaps is a root. It builds what ?tree answers
// from the snapshots of a listing, or of all its pages.
func SnapshotTree(snaps []Snapshot) []*SnapshotNode {
	nodes := make(map[string]*SnapshotNode, len(snaps))
	for _, sn := range snaps {
		nodes[sn.Name] = &SnapshotNode{Name: sn.Name, Children: []*SnapshotNode{}}
	}
	var roots []*SnapshotNode
	for _, sn := range snaps {
		n := nodes[sn.Name]
		if p, ok := nodes[sn.Parent]; ok {
			p.Children = append(p.Children, n)
		} else {
			roots = append(roots, n)
		}
	}
	return roots
}
