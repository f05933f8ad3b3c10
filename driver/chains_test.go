package driver

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp/raw"

	"github.com/qsnapd/qsnapd/internal/qcow2"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/qmp"
)

// chainEnv is an env whose driver counts its full reads of the chains.
type chainEnv struct {
	*env
	reads *atomic.Int32
}

func newChainEnv(t *testing.T, vmOpts qemutest.Options) chainEnv {
	reads := new(atomic.Int32)
	e := newEnvWith(t, vmOpts, envOpts{cfg: func(c *Config) {
		c.QMPOptions = []qmp.Option{qmp.WithObserver(func(command string, _ time.Duration, _ error) {
			if command == "query-block" {
				reads.Add(1)
			}
		})}
	}})
	return chainEnv{e, reads}
}

// snapshot takes a snapshot and checks whether it read the chains in
// full, and that the record (if any) is what QEMU says.
func (e chainEnv) snapshot(xml string, flags CreateFlags, wantRead bool) *CreateResult {
	e.t.Helper()
	before := e.reads.Load()
	res := e.mustCreate(xml, flags)
	if read := e.reads.Load() > before; read != wantRead {
		e.t.Errorf("snapshot %s: full read %v, want %v", res.Name, read, wantRead)
	}
	e.assertRecordTrue()
	return res
}

// assertRecordTrue compares the record of the chains, if there is one,
// with what QEMU says through the second monitor.
func (e chainEnv) assertRecordTrue() {
	e.t.Helper()
	dom, release, err := e.drv.lockDomain(testCtx(e.t), e.name)
	if err != nil {
		e.t.Fatal(err)
	}
	defer release()
	if dom.chains == nil {
		return
	}
	if got, want := dom.chains.view(), e.disks(); !reflect.DeepEqual(got, want) {
		e.t.Errorf("record of the chains:\n got %+v\nwant %+v", got, want)
	}
}

// rootNode is the node-name of a disk's active image, as QEMU says.
func (e chainEnv) rootNode(target string) string {
	e.t.Helper()
	node, err := e.obs.DeviceDrive(testCtx(e.t), "/machine/peripheral/"+target)
	if err != nil {
		e.t.Fatal(err)
	}
	return node
}

// checkChainRecordFollowsQEMU: the engine's own snapshots move the record
// forward without reading the chains; another tool's snapshot, commit
// job or resize, a refusal and an overlay file that exists each make it
// read them in full; and every snapshot lands on the chain QEMU has.
func checkChainRecordFollowsQEMU(t *testing.T) {
	e := newChainEnv(t, qemutest.Options{Disks: 2, Style: qemutest.Blockdev, SecondMonitor: true})
	ctx := testCtx(t)
	dir := e.vm.Dir
	dd := FlagDiskOnly | FlagAtomic
	e.snapshot(snapXML("s1"), dd, true) // the first operation reads
	e.snapshot(snapXML("s2"), dd, false)
	e.snapshot(snapXML("s3", diskXML("vdb", "no", "")), FlagDiskOnly, false)

	// Another tool snapshots vda twice: no event, a new active node.
	for i, name := range []string{"out1", "out2"} {
		top := e.rootNode("vda")
		if err := e.obs.Transaction(ctx, qmp.SnapshotSync(top, filepath.Join(dir, "vda."+name), name, raw.NewImageModeAbsolutePaths)); err != nil {
			t.Fatalf("outside snapshot %d: %v", i, err)
		}
	}
	e.snapshot(snapXML("s4"), dd, true)
	if d := e.disks()[0]; len(d.Backing) < 2 || d.Backing[0].File != filepath.Join(dir, "vda.out2") {
		t.Errorf("vda after an outside snapshot: %s on %v, want it on vda.out2", d.File, d.Backing)
	}
	e.snapshot(snapXML("s5"), dd, false)

	// Another tool commits out2 into out1 below the active image: the
	// active node stays, the job's events tell.
	sub, err := e.obs.Subscribe(qmp.Filter{Names: []string{"JOB_STATUS_CHANGE"}, ID: "outside"})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if err := e.obs.BlockCommit(ctx, qmp.BlockCommitArgs{JobID: "outside", Device: e.rootNode("vda"), TopNode: "out2", BaseNode: "out1"}); err != nil {
		t.Fatal(err)
	}
	// Its last event, then a reply on the driver's connection, which
	// comes after the job's events there: one still on the way after
	// s6 read everything would rightly make s7 read again.
	if _, err := sub.Wait(ctx, func(ev qmp.Event) bool { return ev.Data["status"] == "null" }); err != nil {
		t.Fatal(err)
	}
	if _, err := e.drv.Disks(ctx, e.name); err != nil {
		t.Fatal(err)
	}
	e.snapshot(snapXML("s6"), dd, true)
	for _, img := range e.disks()[0].Backing {
		if img.File == filepath.Join(dir, "vda.out2") {
			t.Errorf("vda's chain still has the committed vda.out2: %v", e.disks()[0].Backing)
		}
	}
	e.snapshot(snapXML("s7"), dd, false)

	// A refusal rests on a full read, and so does an overlay that exists.
	before := e.reads.Load()
	if _, err := e.create(snapXML("s7"), dd); !errors.Is(err, ErrSnapshotExists) {
		t.Errorf("existing name: got %v", err)
	}
	if _, err := e.create(snapXML("s8", diskXML("vda", "", filepath.Join(dir, "vda.out1"))), dd|FlagReuseExt); !errors.Is(err, ErrInvalidArg) {
		t.Errorf("reuse of an image in the chain: got %v", err)
	}
	if got := e.reads.Load() - before; got != 2 {
		t.Errorf("full reads for two refusals: got %d, want 2", got)
	}
	reused := filepath.Join(dir, "vdb.reused")
	if err := qcow2.Create(reused, qcow2.Options{VirtualSize: uint64(e.disks()[1].VirtualSize), BackingFile: e.disks()[1].File, BackingFormat: "qcow2"}); err != nil {
		t.Fatal(err)
	}
	e.snapshot(snapXML("s8", diskXML("vda", "no", ""), diskXML("vdb", "", reused)), dd|FlagReuseExt, true)
	// A reused overlay's header is not the engine's: the next one reads.
	e.snapshot(snapXML("s9"), dd, true)
	empty := filepath.Join(dir, "vda.empty")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	e.snapshot(snapXML("s9e", diskXML("vda", "", empty)), dd, true)
	e.snapshot(snapXML("s9f"), dd, false)

	// A job another tool starts makes the next operation read, and see it.
	jobSub, err := e.obs.Subscribe(qmp.Filter{Names: []string{"BLOCK_JOB_READY", "JOB_STATUS_CHANGE"}, ID: "busy"})
	if err != nil {
		t.Fatal(err)
	}
	defer jobSub.Close()
	if err := e.obs.BlockCommit(ctx, qmp.BlockCommitArgs{JobID: "busy", Device: e.rootNode("vdb")}); err != nil {
		t.Fatal(err)
	}
	if _, err := jobSub.Wait(ctx, func(ev qmp.Event) bool { return ev.Event == "BLOCK_JOB_READY" }); err != nil {
		t.Fatal(err)
	}
	if _, err := e.create(snapXML("busy"), dd); !errors.Is(err, ErrOperationInvalid) {
		t.Errorf("snapshot during another tool's job: got %v, want vdb busy", err)
	}
	if err := e.obs.BlockJobCancel(ctx, "busy", false); err != nil {
		t.Fatal(err)
	}
	if _, err := jobSub.Wait(ctx, func(ev qmp.Event) bool { return ev.Data["status"] == "null" }); err != nil {
		t.Fatal(err)
	}
	if _, err := e.drv.Disks(ctx, e.name); err != nil { // the job's events are in
		t.Fatal(err)
	}
	e.snapshot(snapXML("s9g"), dd, true)
	e.snapshot(snapXML("s9h"), dd, false)

	if !e.vm.Real() {
		return // the fake has no block_resize
	}
	// Another tool grows vda: no event, the same node; the header tells.
	const grown = 128 << 20
	if err := e.obs.Execute(ctx, "block_resize", map[string]any{"node-name": e.rootNode("vda"), "size": grown}, nil); err != nil {
		t.Fatal(err)
	}
	e.snapshot(snapXML("s10"), dd, true)
	if d := e.disks()[0]; d.VirtualSize != grown {
		t.Errorf("vda's new overlay: virtual size %d, want %d", d.VirtualSize, grown)
	}
	e.snapshot(snapXML("s11"), dd, false)
}

// checkChainRecordSeesHotplug: a disk plugged in by another tool since
// the record was made gets its snapshot too.
func checkChainRecordSeesHotplug(t *testing.T) {
	e := newChainEnv(t, qemutest.Options{Disks: 1, Style: qemutest.Blockdev, SecondMonitor: true,
		Extra: []string{"-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1"}})
	ctx := testCtx(t)
	e.snapshot(snapXML("s1"), FlagDiskOnly, true)
	e.snapshot(snapXML("s2"), FlagDiskOnly, false)
	img := filepath.Join(e.vm.Dir, "vdz.qcow2")
	if err := qcow2.Create(img, qcow2.Options{VirtualSize: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	if err := e.obs.BlockdevAdd(ctx, qmp.BlockdevOptions{Driver: "qcow2", NodeName: "fmt-vdz",
		FileOptions: &qmp.BlockdevOptions{Driver: "file", Filename: img}}); err != nil {
		t.Fatal(err)
	}
	if err := e.obs.Execute(ctx, "device_add", map[string]string{"driver": "virtio-blk-pci", "drive": "fmt-vdz", "id": "vdz", "bus": "rp1"}, nil); err != nil {
		t.Fatal(err)
	}
	res := e.snapshot(snapXML("s3"), FlagDiskOnly, true)
	if len(res.Disks) != 2 || res.Disks[1].Target != "vdz" {
		t.Errorf("snapshot after a hotplug: disks %+v, want vda and vdz", res.Disks)
	}
	e.snapshot(snapXML("s4"), FlagDiskOnly, false)
}
