package libvirtrpc_test

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	libvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"
	"libvirt.org/go/libvirtxml"

	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
)

// go-libvirt, as a Go program would use it, drives the endpoint on the
// fake (under -short too: the fast check of the wire) and on real QEMU.

func TestGoLibvirtFake(t *testing.T) { qemutest.RunSuite(t, qemutest.Fake, goLibvirtChecks) }

func TestGoLibvirtQEMU(t *testing.T) {
	qemutest.Require(t)
	qemutest.RunSuite(t, qemutest.Real, goLibvirtChecks)
}

var goLibvirtChecks = []qemutest.Check{
	{Name: "Domains", Run: checkGoLibvirtDomains},
	{Name: "Snapshots", Run: checkGoLibvirtSnapshots},
	{Name: "Errors", Run: checkGoLibvirtErrors},
	{Name: "ReadOnly", Run: checkGoLibvirtReadOnly},
}

// dial connects go-libvirt to the read-write (or read-only) socket.
func (e *endpoint) dial(ro bool) *libvirt.Libvirt {
	e.t.Helper()
	sock := e.rw
	if ro {
		sock = e.ro
	}
	l := libvirt.NewWithDialer(dialers.NewLocal(dialers.WithSocket(sock), dialers.WithLocalTimeout(5*time.Second)))
	if err := l.ConnectToURI(libvirt.QEMUSystem); err != nil {
		e.t.Fatalf("connect %s: %v", sock, err)
	}
	e.t.Cleanup(func() { _ = l.Disconnect() })
	return l
}

// diskOnlyAtomic are the flags of every snapshot the checks take.
const diskOnlyAtomic = uint32(libvirt.DomainSnapshotCreateDiskOnly | libvirt.DomainSnapshotCreateAtomic)

// snapshotXML asks for a snapshot with an explicit overlay per disk, in
// the VM's directory (where the engine allows them).
func snapshotXML(vm *qemutest.VM, name string) string {
	var b strings.Builder
	b.WriteString("<domainsnapshot><name>" + name + "</name><disks>")
	for _, d := range vm.Disks {
		b.WriteString("<disk name='" + d.Target + "' snapshot='external'><source file='" + overlay(vm, name, d.Target) + "'/></disk>")
	}
	b.WriteString("</disks></domainsnapshot>")
	return b.String()
}

func overlay(vm *qemutest.VM, snap, target string) string {
	return filepath.Join(vm.Dir, snap+"-"+target+".qcow2")
}

// wantCode fails t unless err is a libvirt error with code.
func wantCode(t *testing.T, what string, err error, code libvirt.ErrorNumber) {
	t.Helper()
	var le libvirt.Error
	switch {
	case err == nil:
		t.Errorf("%s: no error, want code %d", what, code)
	case !errors.As(err, &le):
		t.Errorf("%s: %v (%T), want a libvirt error with code %d", what, err, err, code)
	case le.Code != uint32(code):
		t.Errorf("%s: code %d (%s), want %d", what, le.Code, le.Message, code)
	}
}

func snapNames(snaps []libvirt.DomainSnapshot) []string {
	var out []string
	for _, s := range snaps {
		out = append(out, s.Name)
	}
	return out
}

func checkGoLibvirtDomains(t *testing.T) {
	e := startEndpoint(t, endpointOpts{})
	vm := e.vm("vm1", 2)
	l := e.dial(false)

	dom, err := l.DomainLookupByName("vm1")
	if err != nil {
		t.Fatal(err)
	}
	if dom.Name != "vm1" || dom.ID < 1 {
		t.Errorf("lookup: %+v, want vm1 with an id", dom)
	}
	doms, n, err := l.ConnectListAllDomains(1, 0)
	if err != nil || n != 1 || len(doms) != 1 || doms[0] != dom {
		t.Errorf("ConnectListAllDomains: %+v, %d, %v; want [%+v]", doms, n, err, dom)
	}
	state, maxMem, mem, vcpus, _, err := l.DomainGetInfo(dom)
	if err != nil {
		t.Fatal(err)
	}
	if state == uint8(libvirt.DomainShutoff) || maxMem == 0 || mem == 0 || vcpus == 0 {
		t.Errorf("DomainGetInfo: state %d, max memory %d, memory %d, %d vCPUs; want a live domain", state, maxMem, mem, vcpus)
	}
	doc, err := l.DomainGetXMLDesc(dom, 0)
	if err != nil {
		t.Fatal(err)
	}
	var x libvirtxml.Domain
	if err := x.Unmarshal(doc); err != nil {
		t.Fatalf("DomainGetXMLDesc: %v\n%s", err, doc)
	}
	if x.Name != "vm1" || x.Devices == nil || len(x.Devices.Disks) != len(vm.Disks) {
		t.Fatalf("DomainGetXMLDesc: want vm1 with %d disks:\n%s", len(vm.Disks), doc)
	}
	for i, d := range x.Devices.Disks {
		if d.Target.Dev != vm.Disks[i].Target || d.Source.File.File != vm.Disks[i].Path {
			t.Errorf("disk %d: %s on %s, want %s on %s", i, d.Target.Dev, d.Source.File.File, vm.Disks[i].Target, vm.Disks[i].Path)
		}
	}
}

func checkGoLibvirtSnapshots(t *testing.T) {
	e := startEndpoint(t, endpointOpts{})
	vm := e.vm("vm1", 2)
	l := e.dial(false)
	dom, err := l.DomainLookupByName("vm1")
	if err != nil {
		t.Fatal(err)
	}

	for _, name := range []string{"s1", "s2"} {
		snap, err := l.DomainSnapshotCreateXML(dom, snapshotXML(vm, name), diskOnlyAtomic)
		if err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		if snap.Name != name || snap.Dom.Name != "vm1" {
			t.Errorf("create %s: got %+v", name, snap)
		}
	}
	snaps, n, err := l.DomainListAllSnapshots(dom, 1, 0)
	if err != nil || n != 2 || !slices.Equal(snapNames(snaps), []string{"s1", "s2"}) {
		t.Errorf("DomainListAllSnapshots: %v, %d, %v; want [s1 s2]", snapNames(snaps), n, err)
	}
	// Without results only the number comes.
	if snaps, n, err := l.DomainListAllSnapshots(dom, 0, 0); err != nil || n != 2 || len(snaps) != 0 {
		t.Errorf("DomainListAllSnapshots without results: %v, %d, %v; want 2 and no list", snapNames(snaps), n, err)
	}
	if num, err := l.DomainSnapshotNum(dom, 0); err != nil || num != 2 {
		t.Errorf("DomainSnapshotNum: %d, %v; want 2", num, err)
	}
	if names, err := l.DomainSnapshotListNames(dom, 1, 0); err != nil || !slices.Equal(names, []string{"s1"}) {
		t.Errorf("DomainSnapshotListNames(max 1): %v, %v; want [s1]", names, err)
	}
	if names, err := l.DomainSnapshotListNames(dom, 10, uint32(libvirt.DomainSnapshotListLeaves)); err != nil || !slices.Equal(names, []string{"s2"}) {
		t.Errorf("DomainSnapshotListNames(LEAVES): %v, %v; want [s2]", names, err)
	}

	s1, err := l.DomainSnapshotLookupByName(dom, "s1", 0)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := l.DomainSnapshotGetXMLDesc(s1, 0)
	if err != nil {
		t.Fatal(err)
	}
	var x libvirtxml.DomainSnapshot
	if err := x.Unmarshal(doc); err != nil {
		t.Fatalf("DomainSnapshotGetXMLDesc: %v\n%s", err, doc)
	}
	if x.Name != "s1" || x.State != "disk-snapshot" || x.Parent != nil || x.Disks == nil || len(x.Disks.Disks) != 2 {
		t.Fatalf("DomainSnapshotGetXMLDesc: want s1, a root with 2 disks:\n%s", doc)
	}
	for _, d := range x.Disks.Disks {
		if d.Source == nil || d.Source.File == nil || d.Source.File.File != overlay(vm, "s1", d.Name) {
			t.Errorf("s1 disk %s: source %+v, want %s", d.Name, d.Source, overlay(vm, "s1", d.Name))
		}
	}
	if cur, err := l.DomainSnapshotCurrent(dom, 0); err != nil || cur.Name != "s2" {
		t.Errorf("DomainSnapshotCurrent: %+v, %v; want s2", cur, err)
	}
	s2 := libvirt.DomainSnapshot{Name: "s2", Dom: dom}
	if p, err := l.DomainSnapshotGetParent(s2, 0); err != nil || p.Name != "s1" {
		t.Errorf("DomainSnapshotGetParent(s2): %+v, %v; want s1", p, err)
	}
	if kids, n, err := l.DomainSnapshotListAllChildren(s1, 1, 0); err != nil || n != 1 || !slices.Equal(snapNames(kids), []string{"s2"}) {
		t.Errorf("DomainSnapshotListAllChildren(s1): %v, %d, %v; want [s2]", snapNames(kids), n, err)
	}

	// Deleting the current leaf merges its overlays into s1's and makes
	// s1 current.
	if err := l.DomainSnapshotDelete(s2, 0); err != nil {
		t.Fatalf("DomainSnapshotDelete(s2): %v", err)
	}
	if names, err := l.DomainSnapshotListNames(dom, 10, 0); err != nil || !slices.Equal(names, []string{"s1"}) {
		t.Errorf("after delete: %v, %v; want [s1]", names, err)
	}
	if cur, err := l.DomainSnapshotCurrent(dom, 0); err != nil || cur.Name != "s1" {
		t.Errorf("DomainSnapshotCurrent after delete: %+v, %v; want s1", cur, err)
	}
	// QEMU's view: each disk on s1's overlay, over its first image.
	for i, d := range qemuDisks(t, vm) {
		if len(d.Backing) != 1 || d.File != overlay(vm, "s1", d.Target) || d.Backing[0].File != vm.Disks[i].Path {
			t.Errorf("disk %s: %s over %+v; want %s over %s", d.Target, d.File, d.Backing, overlay(vm, "s1", d.Target), vm.Disks[i].Path)
		}
	}

	// METADATA_ONLY forgets s1 and leaves the disks as they are.
	if err := l.DomainSnapshotDelete(s1, libvirt.DomainSnapshotDeleteMetadataOnly); err != nil {
		t.Fatalf("DomainSnapshotDelete(s1, METADATA_ONLY): %v", err)
	}
	if recs, err := e.drv.Snapshots("vm1"); err != nil || len(recs) != 0 {
		t.Errorf("metadata after the deletes: %+v, %v; want none", recs, err)
	}
	if again := qemuDisks(t, vm); again[0].File != overlay(vm, "s1", again[0].Target) {
		t.Errorf("after METADATA_ONLY: %+v; want the disks still on s1's overlays", again)
	}
}

func checkGoLibvirtErrors(t *testing.T) {
	e := startEndpoint(t, endpointOpts{})
	vm := e.vm("vm1", 2)
	l := e.dial(false)

	_, err := l.DomainLookupByName("nosuch")
	wantCode(t, "DomainLookupByName(nosuch)", err, libvirt.ErrNoDomain)
	dom, err := l.DomainLookupByName("vm1")
	if err != nil {
		t.Fatal(err)
	}
	_, err = l.DomainSnapshotCurrent(dom, 0)
	wantCode(t, "DomainSnapshotCurrent with none", err, libvirt.ErrNoDomainSnapshot)
	_, err = l.DomainSnapshotLookupByName(dom, "nosuch", 0)
	wantCode(t, "DomainSnapshotLookupByName(nosuch)", err, libvirt.ErrNoDomainSnapshot)
	_, err = l.DomainSnapshotLookupByName(dom, "nosuch", 1)
	wantCode(t, "DomainSnapshotLookupByName with an unknown flag", err, libvirt.ErrInvalidArg)

	s1, err := l.DomainSnapshotCreateXML(dom, snapshotXML(vm, "s1"), diskOnlyAtomic)
	if err != nil {
		t.Fatal(err)
	}
	_, err = l.DomainSnapshotGetParent(s1, 0)
	wantCode(t, "DomainSnapshotGetParent of a root", err, libvirt.ErrNoDomainSnapshot)
	// libvirt reports a name taken as "operation failed".
	_, err = l.DomainSnapshotCreateXML(dom, snapshotXML(vm, "s1"), diskOnlyAtomic)
	wantCode(t, "DomainSnapshotCreateXML of an existing name", err, libvirt.ErrOperationFailed)
	_, _, err = l.DomainSnapshotListAllChildren(libvirt.DomainSnapshot{Name: "nosuch", Dom: dom}, 1, 0)
	wantCode(t, "DomainSnapshotListAllChildren(nosuch)", err, libvirt.ErrNoDomainSnapshot)
	err = l.DomainSnapshotDelete(libvirt.DomainSnapshot{Name: "nosuch", Dom: dom}, 0)
	wantCode(t, "DomainSnapshotDelete(nosuch)", err, libvirt.ErrNoDomainSnapshot)
	_, _, err = l.DomainListAllSnapshots(libvirt.Domain{Name: "nosuch"}, 1, 0)
	wantCode(t, "DomainListAllSnapshots of no domain", err, libvirt.ErrNoDomain)
	// No agent configured: libvirt's VIR_ERR_ARGUMENT_UNSUPPORTED.
	_, err = l.DomainFsfreeze(dom, nil, 0)
	wantCode(t, "DomainFsfreeze without an agent", err, libvirt.ErrArgumentUnsupported)

	// None of it changed the metadata.
	if recs, err := e.drv.Snapshots("vm1"); err != nil || len(recs) != 1 || recs[0].Name != "s1" {
		t.Errorf("metadata: %+v, %v; want s1 alone", recs, err)
	}
}

// checkGoLibvirtReadOnly: go-libvirt refuses nothing itself, so the
// read-only socket's refusals are the server's.
func checkGoLibvirtReadOnly(t *testing.T) {
	e := startEndpoint(t, endpointOpts{})
	vm := e.vm("vm1", 2)
	rw := e.dial(false)
	dom, err := rw.DomainLookupByName("vm1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rw.DomainSnapshotCreateXML(dom, snapshotXML(vm, "s1"), diskOnlyAtomic); err != nil {
		t.Fatal(err)
	}

	ro := e.dial(true)
	if names, err := ro.DomainSnapshotListNames(dom, 10, 0); err != nil || !slices.Equal(names, []string{"s1"}) {
		t.Errorf("read-only DomainSnapshotListNames: %v, %v; want [s1]", names, err)
	}
	_, err = ro.DomainSnapshotCreateXML(dom, snapshotXML(vm, "s2"), diskOnlyAtomic)
	wantCode(t, "read-only DomainSnapshotCreateXML", err, libvirt.ErrOperationDenied)
	err = ro.DomainSnapshotDelete(libvirt.DomainSnapshot{Name: "s1", Dom: dom}, 0)
	wantCode(t, "read-only DomainSnapshotDelete", err, libvirt.ErrOperationDenied)
	_, err = ro.DomainFsfreeze(dom, nil, 0)
	wantCode(t, "read-only DomainFsfreeze", err, libvirt.ErrOperationDenied)

	if recs, err := e.drv.Snapshots("vm1"); err != nil || len(recs) != 1 || recs[0].Name != "s1" {
		t.Errorf("metadata: %+v, %v; want s1 alone", recs, err)
	}
	disks, err := e.drv.Disks(testCtx(t), "vm1")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range disks {
		if d.File != overlay(vm, "s1", d.Target) {
			t.Errorf("disk %s on %s, want s1's overlay: the read-only calls changed it", d.Target, d.File)
		}
	}
}
