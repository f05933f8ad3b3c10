package libvirtrpc_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/internal/testing/testguest"
)

// TestPythonClient drives the endpoint with the unmodified libvirt-python
// of Debian (testdata/client.py) against a real QEMU, then checks from
// QEMU's side and the engine's metadata that what the script did is what
// happened.
func TestPythonClient(t *testing.T) {
	qemutest.Require(t)
	python := requirePythonLibvirt(t)
	e := startEndpoint(t, endpointOpts{})
	vm := e.vm("vm1", 2)
	// The engine takes overlays next to the disks' images only.
	overlays := vm.Dir

	got := runClient(t, python, e.uri(false), e.uri(true), "vm1", overlays)

	d0, d1 := vm.Disks[0].Target, vm.Disks[1].Target
	ov := func(snap string) string {
		return filepath.Join(overlays, snap+"-"+d0+".qcow2") + "," + filepath.Join(overlays, snap+"-"+d1+".qcow2")
	}
	want := []string{
		"open: " + e.uri(false), // the client's own URI
		"lookupByName: vm1",
		"listAllDomains: vm1",
		"lookupByUUIDString: vm1",
		// Started with -S: paused, with qemutest's 128 MiB and 1 vCPU.
		"info: state=3 maxmem=131072 mem=131072 vcpus=1",
		"XMLDesc: " + d0 + "," + d1,
		"create s1: s1",
		"create s2: s2",
		"create nm: nm",
		"lookup nm: 72", // VIR_ERR_NO_DOMAIN_SNAPSHOT: no metadata kept
		"disks after nm: " + ov("nm"),
		"listAllSnapshots: s1,s2",
		"listAllSnapshots ROOTS: s1",
		"listAllSnapshots LEAVES: s2",
		"listAllSnapshots TOPOLOGICAL: s1,s2",
		"listAllSnapshots NO_METADATA: ",
		"snapshotLookupByName: s1",
		"snapshotCurrent: s2",
		"getXMLDesc: name=s2 parent=s1 state=disk-snapshot",
		"getParent s2: s1",
		"getParent s1: 72", // VIR_ERR_NO_DOMAIN_SNAPSHOT
		"isCurrent: s1=0 s2=1",
		"hasMetadata: 1",
		"listAllChildren s1: s2",
		"listAllChildren s2: ",
		"lookupByName nosuch: 42",          // VIR_ERR_NO_DOMAIN
		"snapshotLookupByName nosuch: 72",  // VIR_ERR_NO_DOMAIN_SNAPSHOT
		"create s1 again: 9",               // VIR_ERR_OPERATION_FAILED, as libvirt's "already exists"
		"delete s2: s1",                    // merged
		"snapshotCurrent after delete: s1", // the parent of the current one deleted
		"create s4: s4",
		"delete s4 METADATA_ONLY: s1",
		"fsFreeze: 74", // VIR_ERR_ARGUMENT_UNSUPPORTED: no agent configured, as libvirtd
		"fsThaw: 74",
		"ro listAllSnapshots: s1",
		"ro snapshotCreateXML: 29", // VIR_ERR_OPERATION_DENIED
		"done: ok",
	}
	compareLines(t, got, want)

	// QEMU's view, through a monitor the endpoint does not use: each disk
	// runs on s4's overlay, over nm's, over s1's (s2's merged into it),
	// over the image QEMU started with.
	disks := qemuDisks(t, vm)
	if len(disks) != 2 {
		t.Fatalf("QEMU has %d disks, want 2", len(disks))
	}
	for i, d := range disks {
		chain := []string{d.File}
		for _, b := range d.Backing {
			chain = append(chain, b.File)
		}
		wantChain := []string{
			filepath.Join(overlays, "s4-"+d.Target+".qcow2"),
			filepath.Join(overlays, "nm-"+d.Target+".qcow2"),
			filepath.Join(overlays, "s1-"+d.Target+".qcow2"),
			vm.Disks[i].Path,
		}
		if strings.Join(chain, " <- ") != strings.Join(wantChain, " <- ") {
			t.Errorf("disk %s: chain %v, want %v", d.Target, chain, wantChain)
		}
	}
	if _, err := os.Stat(filepath.Join(overlays, "s2-"+d0+".qcow2")); !os.IsNotExist(err) {
		t.Errorf("s2's overlay after its merge: %v, want it gone", err)
	}

	// The engine's metadata: s1 alone, current, with the overlays the
	// script named.
	recs, err := e.drv.Snapshots("vm1")
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].Name != "s1" || recs[0].Parent != "" || recs[0].State != "disk-snapshot" {
		t.Fatalf("metadata: %+v, want s1 alone, a root, disk-only", recs)
	}
	for i, sd := range recs[0].Disks {
		if want := filepath.Join(overlays, "s1-"+sd.Target+".qcow2"); sd.Overlay != want || sd.Backing != vm.Disks[i].Path {
			t.Errorf("s1 disk %s: overlay %s on %s, want %s on %s", sd.Target, sd.Overlay, sd.Backing, want, vm.Disks[i].Path)
		}
	}
	if cur, err := e.drv.Current("vm1"); err != nil || cur.Name != "s1" {
		t.Errorf("current: %q, %v; want s1", cur.Name, err)
	}
}

// TestPythonClientGuest freezes and thaws a real guest's filesystems
// through libvirt-python, and takes a quiesced snapshot.
func TestPythonClientGuest(t *testing.T) {
	python := requirePythonLibvirt(t)
	g := testguest.Boot(t, testguest.Options{DataDisks: []string{"data1", "data2"}})
	e := startEndpoint(t, endpointOpts{})
	if _, err := e.drv.AttachDomain(testCtx(t), driver.DomainConfig{Name: "guest", QMP: g.QMP, Agent: g.QGA}); err != nil {
		t.Fatal(err)
	}
	got := runClient(t, python, e.uri(false), e.uri(true), "guest", g.Dir, "guest")
	compareLines(t, got, []string{
		"fsFreeze: 2",        // /mnt/data1 and /mnt/data2
		"fsFreeze again: 55", // VIR_ERR_OPERATION_INVALID: frozen already
		"fsThaw: 2",
		"create q1 QUIESCE: q1",
		"done: ok",
	})
	st, err := e.drv.FSStatus(testCtx(t), "guest")
	if err != nil || st.Frozen || st.Agent != "thawed" {
		t.Errorf("guest after the script: %+v, %v; want thawed", st, err)
	}
	if rec, err := e.drv.Snapshot("guest", "q1"); err != nil || rec.State != "disk-snapshot" {
		t.Errorf("q1: %+v, %v; want a disk-only snapshot", rec, err)
	}
}

// runClient runs testdata/client.py and returns its lines.
func runClient(t *testing.T, python string, args ...string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, append([]string{"testdata/client.py"}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	t.Logf("client.py:\n%s%s", out, stderr.String())
	if err != nil {
		t.Fatalf("client.py: %v", err)
	}
	return strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
}

// compareLines compares the script's lines with want, line by line.
func compareLines(t *testing.T, got, want []string) {
	t.Helper()
	for i := range max(len(got), len(want)) {
		var g, w string
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if g != w {
			t.Errorf("line %d: got %q, want %q", i+1, g, w)
		}
	}
}

// requirePythonLibvirt finds a python3 that imports libvirt, or skips.
// Debian's python3-libvirt installs for /usr/bin/python3, which another
// python3 on PATH (pyenv, a venv) does not see: that one is tried first.
func requirePythonLibvirt(t *testing.T) string {
	t.Helper()
	candidates := []string{"/usr/bin/python3"}
	if p, err := exec.LookPath("python3"); err == nil {
		candidates = append(candidates, p)
	}
	for _, p := range candidates {
		if exec.Command(p, "-c", "import libvirt").Run() == nil {
			return p
		}
	}
	t.Skip("no python3 with the libvirt module (make deps installs python3-libvirt)")
	return ""
}
