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

	// HALT: the snapshot, then QEMU quits; the domain is shut off.
	contains(run(0, "snapshot-create-as", "vm1", "h", "--disk-only", "--halt"), "Domain snapshot h created")
	contains(run(0, "list", "--all"), "vm1", "shut off")
	contains(run(0, "snapshot-list", "vm1", "--name"), "s1", "h")
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
