package libvirtrpc_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSmokeVirsh(t *testing.T) {
	e := startEndpoint(t, endpointOpts{})
	vm := e.vm("vm1", 2)
	dir := vm.Dir
	os.WriteFile(filepath.Join(dir, "redef.xml"), []byte(`<domainsnapshot><name>r1</name><state>disk-snapshot</state><creationTime>1700000000</creationTime><parent><name>s1</name></parent></domainsnapshot>`), 0o644)
	for _, args := range [][]string{
		{"snapshot-create-as", "vm1", "s1", "--disk-only", "--atomic", "--diskspec", "vda,file=" + dir + "/a.qcow2", "--diskspec", "vdb,snapshot=no"},
		{"snapshot-create-as", "vm1", "px", "--disk-only", "--print-xml", "--diskspec", "vda,file=/x/y"},
		{"snapshot-current", "vm1"},
		{"snapshot-current", "vm1", "s1"},
		{"snapshot-current", "vm1", "--name"},
		{"snapshot-create", "vm1", filepath.Join(dir, "redef.xml"), "--redefine"},
		{"snapshot-create", "vm1", filepath.Join(dir, "redef.xml"), "--redefine", "--current"},
		{"snapshot-current", "vm1", "--name"},
		{"snapshot-list", "vm1", "--tree"},
		{"snapshot-list", "vm1", "--leaves", "--name"},
		{"snapshot-list", "vm1", "--roots"},
		{"snapshot-list", "vm1", "--from", "s1", "--descendants"},
		{"snapshot-list", "vm1", "--topological", "--name"},
		{"snapshot-edit", "vm1", "s1"},
		{"snapshot-dumpxml", "vm1", "r1"},
		{"snapshot-delete", "vm1", "r1", "--metadata"},
		{"snapshot-create-as", "vm1", "nm", "--disk-only", "--no-metadata"},
		{"snapshot-create-as", "vm1", "q", "--disk-only", "--quiesce"},
		{"snapshot-create-as", "vm1", "x", "--quiesce"},
		{"snapshot-create-as", "vm1", "s1", "--disk-only"},
		{"snapshot-create-as", "vm1", "ru", "--disk-only", "--reuse-external", "--diskspec", "vda,file=" + dir + "/nonexist.qcow2"},
		{"domfsfreeze", "vm1"},
		{"domfsthaw", "vm1"},
		{"snapshot-delete", "vm1", "s1", "--children"},
		{"snapshot-list", "vm1"},
		{"snapshot-create-as", "vm1", "h", "--disk-only", "--halt"},
		{"list", "--all"},
		{"version"},
		{"uri"}, {"hostname"},
	} {
		r := e.virshURI(e.uri(false), []string{"EDITOR=true"}, args...)
		t.Logf("$ virsh %v\nexit %d\n%s%s", args, r.exit, r.stdout, r.stderr)
	}
	r := e.virsh("dumpxml", "vm1")
	os.WriteFile(filepath.Join(dir, "dom.xml"), []byte(r.stdout), 0o644)
	out, err := execOut("virt-xml-validate", filepath.Join(dir, "dom.xml"), "domain")
	t.Logf("validate: %v %s", err, out)
	r = e.virsh("snapshot-dumpxml", "vm1", "nm")
	t.Log(strings.TrimSpace(r.stderr))
}
