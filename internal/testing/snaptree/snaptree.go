// Package snaptree generates snapshot trees shaped as a long-lived
// domain grows them, for the tests and benchmarks of the snapshot
// metadata: one long chain, a short branch off it now and then, and a
// few other roots.
package snaptree

import (
	"encoding/xml"
	"fmt"
	"strings"
)

// Snapshot is one generated snapshot.
type Snapshot struct {
	Name, Parent, Description string
	// Created is the creation time, in seconds: two snapshots in a row
	// share each second, so that names break ties, and a child may sort
	// before its parent.
	Created int64
}

// Epoch is the creation time of the first snapshot.
const Epoch = 1_700_000_000

// Generate returns n snapshots in the order they were taken, each after
// its parent, and the current one: the main chain's tip. The chain's
// snapshots are named s00000, s00001, ...; the branches', b<i>; the
// other roots' and their children's, r<i>.
func Generate(n int) (snaps []Snapshot, current string) {
	var chain []string
	branchTip, branchLeft := "", 0
	for i := range n {
		s := Snapshot{Created: Epoch + int64(i/2)}
		switch {
		case n >= 8 && (i == n/2 || i == n/2+1 || i == 3*n/4):
			// A root with a child, and a root alone.
			s.Name = fmt.Sprintf("r%05d", i)
			if i == n/2+1 {
				s.Parent = snaps[i-1].Name
			}
		case i%50 == 25 && len(chain) > 10:
			// A branch off the chain, a few snapshots back or at its tip.
			s.Name, s.Parent = fmt.Sprintf("b%05d", i), chain[len(chain)-1-(i/50)%7]
			branchTip, branchLeft = s.Name, (i/50)%4
		case branchLeft > 0:
			s.Name, s.Parent = fmt.Sprintf("b%05d", i), branchTip
			branchTip, branchLeft = s.Name, branchLeft-1
		default:
			s.Name = fmt.Sprintf("s%05d", i)
			if len(chain) > 0 {
				s.Parent = chain[len(chain)-1]
			}
			chain = append(chain, s.Name)
		}
		if i%10 == 3 {
			s.Description = fmt.Sprintf("before upgrade #%d: <kernel> & \"libc\" — ok", i)
		}
		snaps = append(snaps, s)
	}
	if len(chain) > 0 {
		current = chain[len(chain)-1]
	}
	return snaps, current
}

// UUID is the domain UUID the documents carry.
const UUID = "c7a5fdbd-cdaf-9455-926a-d65c16db1809"

// RedefineXML is the <domainsnapshot> document that redefines s, as
// libvirt keeps one of an external disk-only snapshot of two disks.
func (s Snapshot) RedefineXML() string {
	var b strings.Builder
	esc := func(v string) string {
		var e strings.Builder
		_ = xml.EscapeText(&e, []byte(v)) // a strings.Builder does not fail
		return e.String()
	}
	fmt.Fprintf(&b, "<domainsnapshot>\n  <name>%s</name>\n", esc(s.Name))
	if s.Description != "" {
		fmt.Fprintf(&b, "  <description>%s</description>\n", esc(s.Description))
	}
	fmt.Fprintf(&b, "  <state>disk-snapshot</state>\n  <creationTime>%d</creationTime>\n", s.Created)
	if s.Parent != "" {
		fmt.Fprintf(&b, "  <parent>\n    <name>%s</name>\n  </parent>\n", esc(s.Parent))
	}
	b.WriteString("  <memory snapshot='no'/>\n  <disks>\n")
	for _, disk := range []string{"vda", "vdb"} {
		fmt.Fprintf(&b, "    <disk name='%s' snapshot='external' type='file'>\n      <driver type='qcow2'/>\n"+
			"      <source file='/var/lib/libvirt/images/%s.%s'/>\n    </disk>\n", disk, disk, esc(s.Name))
	}
	fmt.Fprintf(&b, "  </disks>\n  <domain>\n    <name>vm</name>\n    <uuid>%s</uuid>\n  </domain>\n</domainsnapshot>\n", UUID)
	return b.String()
}
