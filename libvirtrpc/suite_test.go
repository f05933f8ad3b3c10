package libvirtrpc_test

import (
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"

	libvirt "github.com/digitalocean/go-libvirt"

	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
)

// The endpoint's robustness checks run on the fake backend (under
// -short too) and on real QEMU, as the API server's do.

func TestLibvirtFake(t *testing.T) { qemutest.RunSuite(t, qemutest.Fake, checks) }

func TestLibvirtQEMU(t *testing.T) {
	qemutest.Require(t)
	qemutest.RunSuite(t, qemutest.Real, checks)
}

var checks = []qemutest.Check{
	{Name: "BadInput", Run: checkBadInput},
	{Name: "PeerCheck", Run: checkPeerCheck},
	{Name: "Keepalive", Run: checkKeepalive},
	{Name: "Pipelining", Run: checkPipelining},
	{Name: "ClientGoneMidCreate", Run: checkClientGoneMidCreate},
	{Name: "VirshHammer", Run: checkVirshHammer, RealOnly: "stock virsh against real QEMU, as in production"},
}

// state is what a bad call must not change: the domain's disks as QEMU
// has them, the files in its directory, its snapshots' metadata and the
// registered domains.
func (e *endpoint) state(name string) string {
	e.t.Helper()
	vm := e.vms[name]
	disks := qemuDisks(e.t, vm)
	entries, err := os.ReadDir(vm.Dir)
	if err != nil {
		e.t.Fatal(err)
	}
	var files []string
	for _, f := range entries {
		files = append(files, f.Name())
	}
	snaps, err := e.drv.Snapshots(name)
	if err != nil {
		e.t.Fatal(err)
	}
	var meta []string
	for _, s := range snaps {
		meta = append(meta, fmt.Sprintf("%s<-%s:%s", s.Name, s.Parent, s.XML))
	}
	cur, _ := e.drv.Current(name)
	return fmt.Sprintf("disks=%+v files=%v snaps=%v current=%s domains=%d", disks, files, meta, cur.Name, len(e.drv.Domains()))
}

// activeFiles are the domain's disks' active images, as QEMU says.
func (e *endpoint) activeFiles(name string) []string {
	e.t.Helper()
	var files []string
	for _, d := range qemuDisks(e.t, e.vms[name]) {
		files = append(files, d.File)
	}
	slices.Sort(files)
	return files
}

// holdAtSwitching makes the next snapshot stop just before its switch:
// inside is closed when it gets there, and closing leave lets it go on.
// Later snapshots pass.
func (e *endpoint) holdAtSwitching() (inside, leave chan struct{}) {
	inside, leave = make(chan struct{}), make(chan struct{})
	var once sync.Once
	e.drv.Hooks.AtStep = func(step string) error {
		if step == driver.HookSwitching {
			once.Do(func() {
				close(inside)
				<-leave
			})
		}
		return nil
	}
	return inside, leave
}

// openRaw dials a socket and opens the connection, read-write unless
// flags say otherwise.
func (e *endpoint) openRaw(t testing.TB, socket string, flags libvirt.ConnectFlags) *rawConn {
	t.Helper()
	c := dialRaw(t, socket)
	if err := c.open(flags); err != nil {
		t.Fatalf("open %s: %v", socket, err)
	}
	return c
}

// lookup is the domain as the wire names it.
func (c *rawConn) lookup(name string) libvirt.Domain {
	c.t.Helper()
	var ret libvirt.DomainLookupByNameRet
	c.mustCall(procDomainLookupByName, &libvirt.DomainLookupByNameArgs{Name: name}, &ret)
	return ret.Dom
}

// createArgs are the arguments of a disk-only atomic snapshot named name.
func createArgs(dom libvirt.Domain, name string) *libvirt.DomainSnapshotCreateXMLArgs {
	return &libvirt.DomainSnapshotCreateXMLArgs{Dom: dom,
		XMLDesc: "<domainsnapshot><name>" + name + "</name></domainsnapshot>",
		Flags:   uint32(libvirt.DomainSnapshotCreateDiskOnly | libvirt.DomainSnapshotCreateAtomic)}
}

// snapshot takes a snapshot through a fresh connection: the proof that
// the endpoint still does its job.
func (e *endpoint) snapshot(t testing.TB, domain, name string) {
	t.Helper()
	c := e.openRaw(t, e.rw, 0)
	var ret libvirt.DomainSnapshotCreateXMLRet
	c.mustCall(procDomainSnapshotCreateXML, createArgs(c.lookup(domain), name), &ret)
	if ret.Snap.Name != name {
		t.Fatalf("created %q, want %q", ret.Snap.Name, name)
	}
	c.nc.Close()
}
