package libvirtrpc_test

import "testing"

func TestSmokeVirsh(t *testing.T) {
	e := startEndpoint(t, endpointOpts{})
	e.vm("vm1", 2)
	for _, args := range [][]string{
		{"list", "--all"}, {"dominfo", "vm1"}, {"domblklist", "vm1", "--details"}, {"dumpxml", "vm1"},
		{"snapshot-list", "vm1"},
		{"snapshot-create-as", "vm1", "s1", "--disk-only", "--atomic"},
		{"snapshot-create-as", "vm1", "s2", "--disk-only", "--atomic"},
		{"snapshot-list", "vm1", "--tree"},
		{"snapshot-list", "vm1"},
		{"snapshot-info", "vm1", "s1"},
		{"snapshot-current", "vm1", "--name"},
		{"snapshot-current", "vm1", "s1"},
		{"snapshot-parent", "vm1", "s2"},
		{"snapshot-info", "vm1", "nosuch"},
		{"snapshot-delete", "vm1", "s2"},
		{"snapshot-list", "vm1", "--parent"},
		{"domblklist", "vm1"},
		{"dominfo", "nosuch"},
	} {
		r := e.virsh(args...)
		t.Logf("$ virsh %v\nexit %d\n%s%s", args, r.exit, r.stdout, r.stderr)
	}
}
