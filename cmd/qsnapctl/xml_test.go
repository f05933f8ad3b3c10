package main

import (
	"flag"
	"os"
	"path/filepath"
	"testing"

	"libvirt.org/go/libvirtxml"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (run go test -update to accept it)\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

// printXMLArgs is a representative snapshot-create-as: positional name
// and description, flags on both sides, diskspecs with every key, an
// escaped comma, a block device and a disk left out.
var printXMLArgs = []string{
	"snapshot-create-as", "--disk-only", "vm1", "before-upgrade", "state <before> & after",
	"--atomic", "--quiesce",
	"--diskspec", "vda,snapshot=external,driver=qcow2,stype=file,file=/var/lib/images/vm1,,a.qcow2",
	"--diskspec=vdb,snapshot=no",
	"--diskspec", "vdc,stype=block,file=/dev/vg/snap",
	"--diskspec", "vdd,file=/var/lib/images/vdd.snap",
	"--print-xml",
}

func TestPrintXMLGolden(t *testing.T) {
	// No daemon: --print-xml creates nothing, so it must not connect.
	t.Setenv(socketEnv, "/nonexistent/qsnapd.sock")
	code, stdout, stderr := runCLI(t, printXMLArgs...)
	if code != 0 || stderr != "" {
		t.Fatalf("exit %d, stderr %q; want 0 and nothing", code, stderr)
	}
	golden(t, "snapshot-create-as.xml", stdout)

	code, stdout, stderr = runCLI(t, append([]string{"--json"}, printXMLArgs...)...)
	if code != 0 || stderr != "" {
		t.Fatalf("--json: exit %d, stderr %q; want 0 and nothing", code, stderr)
	}
	golden(t, "snapshot-create-as.json", stdout)
}

// TestPrintXMLRoundTrip: libvirtxml reads back what --print-xml writes,
// with every field of every diskspec, and writes it again the same.
func TestPrintXMLRoundTrip(t *testing.T) {
	_, stdout, _ := runCLI(t, printXMLArgs...)
	var def libvirtxml.DomainSnapshot
	if err := def.Unmarshal(stdout); err != nil {
		t.Fatalf("libvirtxml cannot read the printed XML: %v\n%s", err, stdout)
	}
	if def.Name != "before-upgrade" || def.Description != "state <before> & after" {
		t.Errorf("name %q, description %q; want before-upgrade, %q", def.Name, def.Description, "state <before> & after")
	}
	if def.Memory != nil {
		t.Errorf("memory %+v, want none", def.Memory)
	}
	if def.Disks == nil {
		t.Fatal("no <disks>")
	}
	want := []diskSpec{
		{Disk: "vda", Snapshot: "external", Driver: "qcow2", File: "/var/lib/images/vm1,a.qcow2"},
		{Disk: "vdb", Snapshot: "no"},
		{Disk: "vdc", SType: "block", File: "/dev/vg/snap"},
		{Disk: "vdd", File: "/var/lib/images/vdd.snap"},
	}
	if len(def.Disks.Disks) != len(want) {
		t.Fatalf("%d disks, want %d", len(def.Disks.Disks), len(want))
	}
	for i, sd := range def.Disks.Disks {
		got := diskSpec{Disk: sd.Name, Snapshot: sd.Snapshot}
		if sd.Driver != nil {
			got.Driver = sd.Driver.Type
		}
		if s := sd.Source; s != nil {
			switch {
			case s.Block != nil:
				got.SType, got.File = "block", s.Block.Dev
			case s.File != nil:
				got.File = s.File.File
			}
		}
		if got != want[i] {
			t.Errorf("disk %d reads back as %+v, want %+v", i, got, want[i])
		}
	}
	// A second trip is stable.
	again, err := def.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var def2 libvirtxml.DomainSnapshot
	if err := def2.Unmarshal(again); err != nil {
		t.Fatal(err)
	}
	if again2, _ := def2.Marshal(); again2 != again {
		t.Errorf("libvirtxml round trip is not stable:\n%s\n%s", again, again2)
	}
}

func TestPrintXMLMinimal(t *testing.T) {
	for _, tc := range []struct {
		argv []string
		want string
	}{
		// As virsh: --disk-only without diskspecs sends no <disks>.
		{[]string{"snapshot-create-as", "vm1", "--disk-only", "--print-xml"}, "<domainsnapshot></domainsnapshot>\n"},
		{[]string{"snapshot-create-as", "vm1", "--name", "s1", "--print-xml"}, "<domainsnapshot>\n  <name>s1</name>\n</domainsnapshot>\n"},
	} {
		code, stdout, stderr := runCLI(t, tc.argv...)
		if code != 0 || stdout != tc.want {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want 0, %q", tc.argv, code, stdout, stderr, tc.want)
		}
	}
}
