package libvirtrpc_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
)

// TestVirshCommands covers what the libvirtd comparison does not: the
// domain's own commands (dominfo, dumpxml checked against libvirt's
// schema), REUSE_EXT, NO_METADATA and HALT through the stock virsh, each
// checked from QEMU's side.
func TestVirshCommands(t *testing.T) {
	requireTool(t, "virsh")
	e := startEndpoint(t, endpointOpts{})
	vm := e.vm("vm1", 2)
	dir := vm.Dir
	run := func(want int, args ...string) string {
		t.Helper()
		r := e.virsh(args...)
		if r.exit != want {
			t.Fatalf("virsh %v: exit %d, want %d\n%s%s", args, r.exit, want, r.stdout, r.stderr)
		}
		return r.stdout + r.stderr
	}
	contains := func(out string, subs ...string) {
		t.Helper()
		for _, s := range subs {
			if !strings.Contains(out, s) {
				t.Errorf("output lacks %q:\n%s", s, out)
			}
		}
	}
	contains(run(0, "dominfo", "vm1"), "Name:           vm1", "State:          paused", "CPU(s):         1",
		"Max memory:     131072 KiB", "Persistent:     yes", "Security model: none")
	contains(run(0, "domstate", "vm1"), "paused")

	// dumpxml is valid for libvirt's own schema, and names the chain.
	run(0, "snapshot-create-as", "vm1", "s1", "--disk-only", "--atomic")
	xmlPath := filepath.Join(dir, "dom.xml")
	if err := os.WriteFile(xmlPath, []byte(run(0, "dumpxml", "vm1")), 0o644); err != nil {
		t.Fatal(err)
	}
	if path, err := execOut("virt-xml-validate", xmlPath, "domain"); err != nil {
		t.Errorf("virt-xml-validate: %v: %s", err, path)
	}
	contains(run(0, "dumpxml", "vm1"), "<source file=\""+dir+"/vda.s1\"", "<source file=\""+dir+"/vda.qcow2\"", "<target dev=\"vdb\"")

	// The listing's filters that ask QEMU (state) or the metadata (any
	// snapshot).
	contains(run(0, "list", "--all", "--state-paused", "--with-snapshot"), "vm1")
	for _, args := range [][]string{{"--state-running"}, {"--without-snapshot"}} {
		if out := run(0, append([]string{"list", "--all"}, args...)...); strings.Contains(out, "vm1") {
			t.Errorf("virsh list --all %v lists vm1:\n%s", args, out)
		}
	}

	// REUSE_EXT of a missing file: refused, nothing changes.
	before := run(0, "domblklist", "vm1")
	contains(run(1, "snapshot-create-as", "vm1", "ru", "--disk-only", "--reuse-external", "--diskspec", "vda,file="+dir+"/none.qcow2",
		"--diskspec", "vdb,snapshot=no"), "error: invalid argument:", "does not exist")
	if after := run(0, "domblklist", "vm1"); after != before {
		t.Errorf("a refused snapshot changed the disks:\n%s\n%s", before, after)
	}

	// NO_METADATA: the disks switch, no metadata is kept.
	contains(run(0, "snapshot-create-as", "vm1", "nm", "--disk-only", "--no-metadata",
		"--diskspec", "vda,file="+dir+"/vda.nm.qcow2", "--diskspec", "vdb,file="+dir+"/vdb.nm.qcow2"), "Domain snapshot nm created")
	contains(run(1, "snapshot-info", "vm1", "nm"), "Domain snapshot not found")
	if got := activeImage(t, vm, "vda"); got != filepath.Join(dir, "vda.nm.qcow2") {
		t.Errorf("vda runs on %s after the NO_METADATA snapshot", got)
	}

	// A read-only connection on the read-write socket (virsh -r) reads
	// and changes nothing.
	ro := func(args ...string) virshResult {
		return e.virshURI(e.uri(false), nil, append([]string{"-r"}, args...)...)
	}
	if r := ro("snapshot-list", "vm1", "--name"); r.exit != 0 || !strings.Contains(r.stdout, "s1") {
		t.Errorf("virsh -r snapshot-list: exit %d\n%s%s", r.exit, r.stdout, r.stderr)
	}
	if r := ro("snapshot-create-as", "vm1", "rox", "--disk-only"); r.exit != 1 || !strings.Contains(r.stderr, "operation forbidden") {
		t.Errorf("virsh -r snapshot-create-as: exit %d\n%s%s", r.exit, r.stdout, r.stderr)
	}

	// --children-only merges s1's descendants and keeps s1.
	run(0, "snapshot-create-as", "vm1", "c1", "--disk-only", "--atomic")
	run(0, "snapshot-create-as", "vm1", "c2", "--disk-only", "--atomic")
	contains(run(0, "snapshot-delete", "vm1", "s1", "--children-only"), "Domain snapshot s1 children deleted")
	if got := strings.Fields(run(0, "snapshot-list", "vm1", "--name")); len(got) != 1 || got[0] != "s1" {
		t.Errorf("after --children-only: %v, want [s1]", got)
	}

	// HALT: the snapshot, then QEMU quits; the domain is shut off.
	contains(run(0, "snapshot-create-as", "vm1", "h", "--disk-only", "--halt"), "Domain snapshot h created")
	contains(run(0, "list", "--all"), "vm1", "shut off")
	contains(run(0, "snapshot-list", "vm1", "--name"), "s1", "h")
	contains(run(0, "dominfo", "vm1"), "State:          shut off")
}

// activeImage is the image a disk runs on, as QEMU says through the
// VM's second monitor.
func activeImage(t *testing.T, vm *qemutest.VM, target string) string {
	t.Helper()
	for _, d := range qemuDisks(t, vm) {
		if d.Target == target {
			return d.File
		}
	}
	t.Fatalf("no disk %s", target)
	return ""
}
