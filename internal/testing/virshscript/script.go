// Package virshscript is one scenario of virsh commands, a normalizer and
// a golden transcript format, shared by the run against real libvirtd and
// the runs against any other server of libvirt's remote protocol, so that
// both can be compared line by line.
package virshscript

import "strings"

// Placeholder stands for the VM's image directory in a step's arguments
// and files, and in normalized output.
const Placeholder = "@DIR@"

// The VM every script runs against: one running, paused domain (QEMU
// with no guest OS and no guest agent) with these disks, all in one
// directory. Its UUID is fixed so that a snapshot XML to redefine can
// embed the domain before the domain exists.
const (
	Domain = "vm1"
	UUID   = "7d0cfb6e-1b2a-4c55-9a3e-5a0c1d2e3f40"
)

// A Disk is one of the VM's virtio disks: target, image file name in the
// directory, and virtual size.
type Disk struct {
	Target string
	File   string
	Size   int64
}

// Disks are the VM's disks, in target order.
var Disks = []Disk{
	{Target: "vda", File: "vda.qcow2", Size: 64 << 20},
	{Target: "vdb", File: "vdb.qcow2", Size: 32 << 20},
}

// A File is written into the directory just before its step runs, for
// commands that read XML from a file.
type File struct {
	Name    string
	Content string // may hold Placeholder
}

// A Step is one virsh command line, without -c URI. Every step is
// recorded, whether the server accepts it or refuses it.
type Step struct {
	Name string
	Args []string // may hold Placeholder
	Env  []string // extra NAME=value for virsh, e.g. EDITOR=true
	File *File
}

// A Script is run in order against one VM; each step sees what the ones
// before it did.
type Script []Step

// expand replaces Placeholder with dir.
func expand(s, dir string) string { return strings.ReplaceAll(s, Placeholder, dir) }

// snapshotXML is a snapshot to redefine: name's overlay of vda, child of
// s2, vdb not snapshotted; withDomain embeds the domain, which libvirt
// 9.0 needs to redefine an external snapshot.
func snapshotXML(name string, withDomain bool) string {
	x := `<domainsnapshot>
  <name>` + name + `</name>
  <parent><name>s2</name></parent>
  <state>disk-snapshot</state>
  <creationTime>1700000000</creationTime>
  <memory snapshot='no'/>
  <disks>
    <disk name='vda' snapshot='external' type='file'><driver type='qcow2'/><source file='@DIR@/vda.` + name + `.qcow2'/></disk>
    <disk name='vdb' snapshot='no'/>
  </disks>
`
	if withDomain {
		x += `  <domain type='qemu'>
    <name>` + Domain + `</name>
    <uuid>` + UUID + `</uuid>
    <memory unit='MiB'>128</memory>
    <os><type arch='x86_64' machine='q35'>hvm</type></os>
    <devices>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='@DIR@/vda.qcow2'/><target dev='vda' bus='virtio'/></disk>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='@DIR@/vdb.qcow2'/><target dev='vdb' bus='virtio'/></disk>
    </devices>
  </domain>
`
	}
	return x + "</domainsnapshot>\n"
}

func step(name string, args ...string) Step { return Step{Name: name, Args: args} }

// Snapshots is the snapshot scenario: listings of the fresh VM, external
// disk-only snapshots built into a tree (s1 <- s2 <- s3, a snapshot
// without metadata, two redefined children of s2), every listing and
// lookup of that tree, a name taken, metadata-only deletes, merging
// deletes (of a snapshot with a child, then of the last one),
// then the errors: unknown names, quiesce without disk-only, and
// quiesce and freeze without a guest agent, paused and then running.
var Snapshots = Script{
	step("list-all", "list", "--all"),
	step("domblklist", "domblklist", "vm1"),
	step("domblklist-details", "domblklist", "vm1", "--details"),
	step("list-empty", "snapshot-list", "vm1"),
	step("current-none", "snapshot-current", "vm1"),
	step("current-none-name", "snapshot-current", "vm1", "--name"),

	step("print-xml", "snapshot-create-as", "vm1", "p1", "--disk-only", "--atomic", "--print-xml",
		"--diskspec", "vda,file=@DIR@/vda.p1.qcow2", "--diskspec", "vdb,file=@DIR@/vdb.p1.qcow2"),
	step("print-xml-noname", "snapshot-create-as", "vm1", "--print-xml", "--description", "hello",
		"--diskspec", "vda,snapshot=external,file=@DIR@/x.qcow2,driver=qcow2", "--diskspec", "vdb,snapshot=no"),
	step("create-s1", "snapshot-create-as", "vm1", "s1", "--disk-only", "--atomic",
		"--diskspec", "vda,file=@DIR@/vda.s1.qcow2", "--diskspec", "vdb,file=@DIR@/vdb.s1.qcow2"),
	step("create-s2-default-files", "snapshot-create-as", "vm1", "s2", "--disk-only", "--atomic"),
	step("create-no-metadata", "snapshot-create-as", "vm1", "nm", "--disk-only", "--atomic", "--no-metadata",
		"--diskspec", "vda,file=@DIR@/vda.nm.qcow2", "--diskspec", "vdb,file=@DIR@/vdb.nm.qcow2"),
	step("create-s3-vdb-only", "snapshot-create-as", "vm1", "s3", "--disk-only",
		"--diskspec", "vda,snapshot=no", "--diskspec", "vdb,file=@DIR@/vdb.s3.qcow2"),
	step("create-name-taken", "snapshot-create-as", "vm1", "s1", "--disk-only"),
	step("domblklist-after", "domblklist", "vm1"),

	step("list", "snapshot-list", "vm1"),
	step("list-tree", "snapshot-list", "vm1", "--tree"),
	step("list-parent", "snapshot-list", "vm1", "--parent"),
	step("list-roots", "snapshot-list", "vm1", "--roots"),
	step("list-leaves", "snapshot-list", "vm1", "--leaves"),
	step("list-name", "snapshot-list", "vm1", "--name"),
	step("list-topological", "snapshot-list", "vm1", "--topological"),
	step("list-from", "snapshot-list", "vm1", "--from", "s1"),
	step("list-from-descendants", "snapshot-list", "vm1", "--from", "s1", "--descendants"),
	step("list-descendants-alone", "snapshot-list", "vm1", "--descendants"),
	step("list-current", "snapshot-list", "vm1", "--current"),
	step("list-external", "snapshot-list", "vm1", "--external"),
	step("list-no-metadata", "snapshot-list", "vm1", "--no-metadata"),

	step("info", "snapshot-info", "vm1", "s1"),
	step("info-current", "snapshot-info", "vm1", "--current"),
	step("dumpxml", "snapshot-dumpxml", "vm1", "s1"),
	step("current", "snapshot-current", "vm1"),
	step("current-name", "snapshot-current", "vm1", "--name"),
	step("current-set", "snapshot-current", "vm1", "s1"),
	step("current-name-after-set", "snapshot-current", "vm1", "--name"),
	step("parent", "snapshot-parent", "vm1", "s2"),
	step("parent-of-root", "snapshot-parent", "vm1", "s1"),

	{Name: "redefine-without-domain", Args: []string{"snapshot-create", "vm1", "@DIR@/r0.xml", "--redefine"},
		File: &File{Name: "r0.xml", Content: snapshotXML("r0", false)}},
	{Name: "redefine", Args: []string{"snapshot-create", "vm1", "@DIR@/r1.xml", "--redefine"},
		File: &File{Name: "r1.xml", Content: snapshotXML("r1", true)}},
	{Name: "redefine-current", Args: []string{"snapshot-create", "vm1", "@DIR@/r2.xml", "--redefine", "--current"},
		File: &File{Name: "r2.xml", Content: snapshotXML("r2", true)}},
	step("current-name-after-redefine", "snapshot-current", "vm1", "--name"),
	step("info-redefined", "snapshot-info", "vm1", "r1"),
	{Name: "edit-unchanged", Args: []string{"snapshot-edit", "vm1", "s1"}, Env: []string{"EDITOR=true"}},
	{Name: "edit-current-unchanged", Args: []string{"snapshot-edit", "vm1", "--current"}, Env: []string{"EDITOR=true"}},
	step("list-tree-redefined", "snapshot-list", "vm1", "--tree"),

	step("delete-metadata", "snapshot-delete", "vm1", "s3", "--metadata"),
	step("delete-metadata-current", "snapshot-delete", "vm1", "r2", "--metadata"),
	step("delete-metadata-r1", "snapshot-delete", "vm1", "r1", "--metadata"),
	step("current-name-after-delete", "snapshot-current", "vm1", "--name"),
	step("delete-with-children", "snapshot-delete", "vm1", "s1"),
	step("list-tree-after-merge", "snapshot-list", "vm1", "--tree"),
	step("info-after-merge", "snapshot-info", "vm1", "s2"),
	step("domblklist-after-merge", "domblklist", "vm1"),
	step("delete-leaf-merge", "snapshot-delete", "vm1", "s2"),
	step("list-after-last-delete", "snapshot-list", "vm1"),
	step("current-name-after-last-delete", "snapshot-current", "vm1", "--name"),
	step("domblklist-after-last-delete", "domblklist", "vm1", "--details"),

	step("info-nosuch", "snapshot-info", "vm1", "nosuch"),
	step("dumpxml-nosuch", "snapshot-dumpxml", "vm1", "nosuch"),
	step("dominfo-nosuch-domain", "dominfo", "nosuch"),
	step("list-nosuch-domain", "snapshot-list", "nosuch"),
	step("quiesce-without-disk-only", "snapshot-create-as", "vm1", "x", "--quiesce"),
	step("quiesce-paused", "snapshot-create-as", "vm1", "q", "--disk-only", "--quiesce"),
	step("delete-nosuch", "snapshot-delete", "vm1", "nosuch"),
	step("fsfreeze-paused", "domfsfreeze", "vm1"),
	step("resume", "resume", "vm1"),
	step("fsfreeze-running-no-agent", "domfsfreeze", "vm1"),
	step("fsthaw-running-no-agent", "domfsthaw", "vm1"),
	step("quiesce-running-no-agent", "snapshot-create-as", "vm1", "q", "--disk-only", "--quiesce"),
	step("suspend", "suspend", "vm1"),
	step("list-all-end", "list", "--all"),
}
