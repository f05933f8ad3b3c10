package driver

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/internal/testing/qmpproxy"
	"github.com/qsnapd/qsnapd/qmp"
	"github.com/qsnapd/qsnapd/transaction"
)

func checkDiskSelection(t *testing.T) {
	e := newEnv(t, envOpts{disks: 3, style: qemutest.Legacy})
	dir := e.vm.Dir
	// vdc reuses an overlay made beforehand, as a frontend that creates
	// its own files would.
	reused := filepath.Join(dir, "pre-made.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", e.vm.Disks[2].Path, reused).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	res := e.mustCreate(snapXML("snap1", diskXML("vdb", "no", ""), diskXML("vdc", "no", "")), FlagDiskOnly)
	if len(res.Disks) != 1 {
		t.Errorf("outcomes: %+v, want vda only", res.Disks)
	}
	// REUSE_EXT applies to every disk, so the others sit this one out.
	e.mustCreate(snapXML("snap2", diskXML("vda", "no", ""), diskXML("vdb", "no", ""), diskXML("vdc", "external", reused)), FlagDiskOnly|FlagReuseExt)
	disks := e.disks()
	if want := filepath.Join(dir, "vda.snap1"); disks[0].File != want {
		t.Errorf("vda: active %s, want the default name %s", disks[0].File, want)
	}
	if disks[1].File != e.vm.Disks[1].Path || len(disks[1].Backing) != 0 {
		t.Errorf("vdb (snapshot='no'): active %s on %v, want untouched", disks[1].File, disks[1].Backing)
	}
	if disks[2].File != reused {
		t.Errorf("vdc: active %s, want the reused %s", disks[2].File, reused)
	}
	rec, err := e.drv.Snapshot(e.name, "snap2")
	if err != nil {
		t.Fatal(err)
	}
	wantSnap := map[string]string{"vda": "no", "vdb": "no", "vdc": "external"}
	for _, d := range rec.Disks {
		if wantSnap[d.Target] != d.Snapshot {
			t.Errorf("record disk %s: %s, want %s", d.Target, d.Snapshot, wantSnap[d.Target])
		}
	}
	validateXML(t, rec.XML)

	// A failure must not delete the reused file: it is not ours.
	e.drv.Hooks.AtStep = func(step string) error {
		if step == HookSwitched {
			return errors.New("injected")
		}
		return nil
	}
	reused2 := filepath.Join(dir, "pre-made-2.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", reused, reused2).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	if _, err := e.create(snapXML("snap3", diskXML("vda", "no", ""), diskXML("vdb", "no", ""), diskXML("vdc", "", reused2)), FlagDiskOnly|FlagReuseExt); err == nil {
		t.Fatal("injected failure did not fail")
	}
	if _, err := os.Stat(reused2); err != nil {
		t.Errorf("reused overlay deleted on failure: %v", err)
	}
	if d := e.disks()[2]; d.File != reused {
		t.Errorf("vdc after failed snapshot: %s, want %s", d.File, reused)
	}
}

func checkEmptyOverlayFileIsFilledAndEmptiedOnFailure(t *testing.T) {
	e := newEnv(t, envOpts{disks: 1})
	empty := filepath.Join(e.vm.Dir, "empty.img")
	if err := os.WriteFile(empty, nil, 0o640); err != nil {
		t.Fatal(err)
	}
	e.drv.Hooks.AtStep = func(step string) error {
		if step == HookSwitched {
			return errors.New("injected")
		}
		return nil
	}
	before := e.world()
	if _, err := e.create(snapXML("s1", diskXML("vda", "", empty)), FlagDiskOnly); err == nil {
		t.Fatal("injected failure did not fail")
	}
	e.assertUnchanged(before) // still there, still empty
	e.drv.Hooks.AtStep = nil
	e.mustCreate(snapXML("s1", diskXML("vda", "", empty)), FlagDiskOnly)
	if d := e.disks()[0]; d.File != empty {
		t.Errorf("active %s, want %s", d.File, empty)
	}
}

func checkMetadataSurvivesRestart(t *testing.T) {
	e := newEnv(t, envOpts{disks: 2, style: qemutest.Blockdev})
	e.mustCreate("<domainsnapshot><name>s1</name><description>first</description></domainsnapshot>", FlagDiskOnly)
	e.mustCreate(snapXML("s2"), FlagDiskOnly|FlagAtomic)
	e.restart()
	snaps, err := e.drv.Snapshots(e.name)
	if err != nil {
		t.Fatal(err)
	}
	if len(snaps) != 2 || snaps[0].Name != "s1" || snaps[1].Name != "s2" || snaps[1].Parent != "s1" || snaps[0].Description != "first" {
		t.Fatalf("snapshots after restart: %+v", snaps)
	}
	cur, err := e.drv.Current(e.name)
	if err != nil || cur.Name != "s2" {
		t.Errorf("current after restart: %+v, %v", cur, err)
	}
	for _, s := range snaps {
		validateXML(t, s.XML)
		if !strings.Contains(s.XML, "<state>disk-snapshot</state>") {
			t.Errorf("XML of %s lacks the disk-snapshot state:\n%s", s.Name, s.XML)
		}
	}
	if !strings.Contains(snaps[1].XML, "<parent>") || !strings.Contains(snaps[1].XML, "<name>s1</name>") {
		t.Errorf("XML of s2 lacks its parent:\n%s", snaps[1].XML)
	}
	// The domain came back too, connected.
	if info, err := e.drv.DomainInfo(e.name); err != nil || !info.Connected || !info.HasTransaction || info.AgentState != AgentNone {
		t.Errorf("domain after restart: %+v, %v", info, err)
	}
}

func checkRedefineAndDeleteMetadata(t *testing.T) {
	e := newEnv(t, envOpts{disks: 1})
	redefine := func(name, parent string, flags CreateFlags) error {
		p := ""
		if parent != "" {
			p = "<parent><name>" + parent + "</name></parent>"
		}
		xml := "<domainsnapshot><name>" + name + "</name><state>disk-snapshot</state><creationTime>1700000000</creationTime>" + p +
			"<disks><disk name='vda' snapshot='external'><source file='/img/" + name + "'/></disk></disks></domainsnapshot>"
		_, err := e.create(xml, FlagRedefine|flags)
		return err
	}
	before := e.world()
	if err := redefine("b", "a", 0); !errors.Is(err, ErrInvalidArg) {
		t.Fatalf("child before parent: got %v", err)
	}
	for _, s := range []struct{ name, parent string }{{"a", ""}, {"b", "a"}, {"c", "b"}, {"d", "b"}} {
		if err := redefine(s.name, s.parent, 0); err != nil {
			t.Fatalf("redefine %s: %v", s.name, err)
		}
	}
	if cur, _ := e.drv.Store().Current(e.name); cur != "" {
		t.Errorf("redefine without CURRENT set current to %q", cur)
	}
	if err := redefine("c", "b", FlagCurrent); err != nil {
		t.Fatal(err)
	}
	if cur, _ := e.drv.Store().Current(e.name); cur != "c" {
		t.Errorf("current: %q, want c", cur)
	}
	// Redefining touched no disk.
	w := e.world()
	if !equalDisks(w.Disks, before.Disks) || len(w.Files) != len(before.Files) {
		t.Error("redefine changed disks or files")
	}

	ctx := testCtx(t)
	metadataOnly := DeleteRequest{Flags: DeleteMetadataOnly}
	if _, err := e.drv.DeleteSnapshot(ctx, e.name, "b", DeleteRequest{}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("delete with data: got %v, want unsupported", err)
	}
	if _, err := e.drv.DeleteSnapshot(ctx, e.name, "b", metadataOnly); err != nil {
		t.Fatal(err)
	}
	for _, child := range []string{"c", "d"} {
		rec, err := e.drv.Snapshot(e.name, child)
		if err != nil || rec.Parent != "a" || !strings.Contains(rec.XML, "<name>a</name>") {
			t.Errorf("%s after deleting its parent: parent %q, %v\n%s", child, rec.Parent, err, rec.XML)
		}
	}
	if _, err := e.drv.DeleteSnapshot(ctx, e.name, "c", metadataOnly); err != nil {
		t.Fatal(err)
	}
	if cur, _ := e.drv.Store().Current(e.name); cur != "a" {
		t.Errorf("current after deleting it: %q, want its parent a", cur)
	}
	if _, err := e.drv.DeleteSnapshot(ctx, e.name, "zz", metadataOnly); !errors.Is(err, ErrNoSnapshot) {
		t.Errorf("delete unknown: %v", err)
	}
	if err := e.drv.SetCurrent(ctx, e.name, "d"); err != nil {
		t.Fatal(err)
	}
	if cur, _ := e.drv.Current(e.name); cur.Name != "d" {
		t.Errorf("current: %q, want d", cur.Name)
	}
}

func equalDisks(a, b []qmp.Disk) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].File != b[i].File || a[i].NodeName != b[i].NodeName || len(a[i].Backing) != len(b[i].Backing) {
			return false
		}
	}
	return true
}

func checkNoMetadata(t *testing.T) {
	e := newEnv(t, envOpts{disks: 1})
	res := e.mustCreate(snapXML("nm"), FlagDiskOnly|FlagNoMetadata)
	if d := e.disks()[0]; d.File != res.Disks[0].Overlay {
		t.Errorf("disk not switched: %s", d.File)
	}
	if w := e.world(); len(w.Snaps) != 0 || w.Current != "" || w.Active != 0 {
		t.Errorf("NO_METADATA stored something: %+v", w)
	}
}

func checkHaltStopsTheGuest(t *testing.T) {
	e := newEnv(t, envOpts{disks: 1})
	res := e.mustCreate(snapXML("h"), FlagDiskOnly|FlagHalt)
	if n := len(res.Indications); n == 0 || res.Indications[n-1].Code != IndHalted {
		t.Errorf("indications: %v", res.Indications)
	}
	select {
	case <-e.vm.Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("QEMU still running after HALT")
	}
	if _, err := e.drv.Snapshot(e.name, "h"); err != nil {
		t.Errorf("metadata of a halted snapshot: %v", err)
	}
}

func checkOneOperationPerDomain(t *testing.T) {
	e := newEnv(t, envOpts{disks: 1})
	vm2 := qemutest.Start(t, qemutest.Options{Disks: 1, Backend: qemutest.SuiteBackend(t)})
	ctx := testCtx(t)
	if _, err := e.drv.AttachDomain(ctx, DomainConfig{Name: "vm2", QMP: vm2.QMP}); err != nil {
		t.Fatal(err)
	}
	inside, leave := make(chan struct{}), make(chan struct{})
	e.drv.Hooks.AtStep = func(step string) error {
		if step == HookSwitching && e.drv != nil {
			select {
			case inside <- struct{}{}:
				<-leave
			default:
			}
		}
		return nil
	}
	first := make(chan error, 1)
	go func() {
		_, err := e.drv.CreateSnapshot(ctx, e.name, CreateRequest{XML: snapXML("first"), Flags: FlagDiskOnly})
		first <- err
	}()
	<-inside

	// A second request for the same domain waits, within its deadline.
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err := e.drv.CreateSnapshot(short, e.name, CreateRequest{XML: snapXML("second"), Flags: FlagDiskOnly})
	cancel()
	if !errors.Is(err, ErrBusy) {
		t.Errorf("same domain while busy: got %v, want ErrBusy", err)
	}
	// Another domain is not held up.
	if _, err := e.drv.CreateSnapshot(ctx, "vm2", CreateRequest{XML: snapXML("other"), Flags: FlagDiskOnly}); err != nil {
		t.Errorf("other domain while the first is busy: %v", err)
	}
	// A waiter with time to spare goes through once the first is done.
	var wg sync.WaitGroup
	wg.Add(1)
	var waitErr error
	go func() {
		defer wg.Done()
		_, waitErr = e.drv.CreateSnapshot(ctx, e.name, CreateRequest{XML: snapXML("third"), Flags: FlagDiskOnly})
	}()
	close(leave)
	if err := <-first; err != nil {
		t.Errorf("first: %v", err)
	}
	wg.Wait()
	if waitErr != nil {
		t.Errorf("waiting request: %v", waitErr)
	}
	if d := e.disks()[0]; len(d.Backing) != 2 {
		t.Errorf("chain after two snapshots: %v", d.Backing)
	}
}

func checkGoneQEMUFailsFast(t *testing.T) {
	e := newEnv(t, envOpts{disks: 1})
	e.vm.Kill()
	waitFor(t, func() bool { info, _ := e.drv.DomainInfo(e.name); return !info.Connected }, "disconnect")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := e.drv.CreateSnapshot(ctx, e.name, CreateRequest{XML: snapXML("s"), Flags: FlagDiskOnly})
	if !errors.Is(err, ErrDisconnected) {
		t.Errorf("got %v, want ErrDisconnected", err)
	}
	if _, err := e.drv.Disks(ctx, e.name); !errors.Is(err, ErrDisconnected) {
		t.Errorf("disks: got %v, want ErrDisconnected", err)
	}
}

func checkReconnectsAfterEOF(t *testing.T) {
	e := newEnv(t, envOpts{disks: 1, proxy: true})
	e.proxy.Add(qmpproxy.Rule{Command: "query-block", Times: 1, Action: qmpproxy.CloseConn{}})
	// The next command loses the connection; the driver reconnects.
	if _, err := e.drv.Disks(testCtx(t), e.name); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("got %v, want ErrDisconnected", err)
	}
	waitFor(t, func() bool { info, _ := e.drv.DomainInfo(e.name); return info.Connected }, "reconnect")
	res := e.mustCreate(snapXML("after"), FlagDiskOnly)
	if res.Disks[0].Result != transaction.DiskSwitched {
		t.Errorf("snapshot after reconnect: %+v", res.Disks)
	}
}
