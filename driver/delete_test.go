package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/errkind"
	"github.com/qsnapd/qsnapd/internal/qcow2"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/internal/testing/qmpproxy"
	"github.com/qsnapd/qsnapd/qmp"
	"github.com/qsnapd/qsnapd/transaction"
)

// Checks of snapshot delete: merges, refusals, faults, crashes.

func (e *env) delete(name string, flags DeleteFlags) (*DeleteResult, error) {
	return e.drv.DeleteSnapshot(testCtx(e.t), e.name, name, DeleteRequest{Flags: flags})
}

func (e *env) mustDelete(name string, flags DeleteFlags) *DeleteResult {
	e.t.Helper()
	res, err := e.delete(name, flags)
	if err != nil {
		e.t.Fatalf("delete %s: %v", name, err)
	}
	return res
}

// chains lists each disk's chain by file name, active image first.
func (e *env) chains() map[string][]string {
	e.t.Helper()
	out := map[string][]string{}
	for _, d := range e.disks() {
		chain := []string{filepath.Base(d.File)}
		for _, img := range d.Backing {
			chain = append(chain, filepath.Base(img.File))
		}
		out[d.Target] = chain
	}
	return out
}

func (e *env) wantChains(want map[string][]string) {
	e.t.Helper()
	if got := e.chains(); !reflect.DeepEqual(got, want) {
		e.t.Errorf("chains:\n got %v\nwant %v", got, want)
	}
}

// tree describes the metadata: each snapshot with its parent, and the
// current one, as "a<-b b<-c current=c".
func (e *env) tree() string {
	e.t.Helper()
	snaps, err := e.drv.Store().Snapshots(e.name)
	if err != nil {
		e.t.Fatal(err)
	}
	var parts []string
	for _, s := range snaps {
		parts = append(parts, s.Parent+"<-"+s.Name)
	}
	cur, _ := e.drv.Store().Current(e.name)
	return strings.Join(append(parts, "current="+cur), " ")
}

func (e *env) wantTree(want string) {
	e.t.Helper()
	if got := e.tree(); got != want {
		e.t.Errorf("metadata:\n got %s\nwant %s", got, want)
	}
}

// wantGone fails for each file of vm.Dir that still exists.
func (e *env) wantGone(files ...string) {
	e.t.Helper()
	for _, f := range files {
		if _, err := os.Stat(filepath.Join(e.vm.Dir, f)); !errors.Is(err, os.ErrNotExist) {
			e.t.Errorf("%s still exists after its merge (%v)", f, err)
		}
	}
}

// wantNoMergeNodes fails if an overlay node of qsnapd is still in QEMU
// that is in no chain.
func (e *env) wantNoStrayNodes() {
	e.t.Helper()
	inChain := map[string]bool{}
	for _, d := range e.disks() {
		inChain[d.NodeName] = true
	}
	nodes, err := e.obs.QueryNamedBlockNodes(testCtx(e.t), true)
	if err != nil {
		e.t.Fatal(err)
	}
	files := map[string]bool{}
	for _, ch := range e.chains() {
		for _, f := range ch {
			files[f] = true
		}
	}
	for _, n := range nodes {
		if strings.HasPrefix(n.NodeName, "qs") && !files[filepath.Base(n.File)] {
			e.t.Errorf("node %s (%s) left in QEMU after its merge", n.NodeName, n.File)
		}
	}
}

func outcomeSummary(disks []MergeOutcome) string {
	var parts []string
	for _, o := range disks {
		s := o.Snapshot + "/" + o.Target + ":" + o.Result
		if o.FileDeleted {
			s += "+deleted"
		}
		if o.Kept != "" {
			s += "+kept"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}

// checkDeleteMergesMiddleCurrentAndRoot deletes, on two disks, the
// middle snapshot (commits below the active layer), the current one
// (active commits) and the root, in several orders.
func checkDeleteMergesMiddleCurrentAndRoot(t *testing.T) {
	for _, tc := range []struct {
		order []string
		// chains after each delete, for vda (vdb is the same with its name)
		chains [][]string
		trees  []string
	}{
		{
			order:  []string{"s2", "s3", "s1"},
			chains: [][]string{{"vda.s3", "vda.s1", "vda.qcow2"}, {"vda.s1", "vda.qcow2"}, {"vda.qcow2"}},
			trees:  []string{"<-s1 s1<-s3 current=s3", "<-s1 current=s1", "current="},
		},
		{
			order:  []string{"s3", "s1", "s2"},
			chains: [][]string{{"vda.s2", "vda.s1", "vda.qcow2"}, {"vda.s2", "vda.qcow2"}, {"vda.qcow2"}},
			trees:  []string{"<-s1 s1<-s2 current=s2", "<-s2 current=s2", "current="},
		},
		{
			order:  []string{"s1", "s2", "s3"},
			chains: [][]string{{"vda.s3", "vda.s2", "vda.qcow2"}, {"vda.s3", "vda.qcow2"}, {"vda.qcow2"}},
			trees:  []string{"<-s2 s2<-s3 current=s3", "<-s3 current=s3", "current="},
		},
	} {
		t.Run(strings.Join(tc.order, "-"), func(t *testing.T) {
			e := newEnv(t, envOpts{disks: 2, style: qemutest.Blockdev})
			for _, s := range []string{"s1", "s2", "s3"} {
				e.mustCreate(snapXML(s), FlagDiskOnly|FlagAtomic)
			}
			e.wantTree("<-s1 s1<-s2 s2<-s3 current=s3")
			for i, name := range tc.order {
				before := e.chains()
				res := e.mustDelete(name, 0)
				if !slices.Equal(res.Deleted, []string{name}) {
					t.Errorf("delete %s: deleted %v", name, res.Deleted)
				}
				if got := outcomeSummary(res.Disks); got != fmt.Sprintf("%s/vda:merged+deleted %s/vdb:merged+deleted", name, name) {
					t.Errorf("delete %s: outcomes %s", name, got)
				}
				want := map[string][]string{"vda": tc.chains[i], "vdb": nil}
				for _, f := range tc.chains[i] {
					want["vdb"] = append(want["vdb"], strings.Replace(f, "vda", "vdb", 1))
				}
				e.wantChains(want)
				e.wantTree(tc.trees[i])
				e.wantGone("vda."+name, "vdb."+name)
				e.wantNoStrayNodes()
				if w := e.world(); w.Active != 0 || w.Jobs != 0 {
					t.Errorf("after deleting %s: %d open operations, %d jobs", name, w.Active, w.Jobs)
				}
				// The records left sit on the images QEMU shows.
				checkRecordsMatchChains(t, e)
				_ = before
			}
		})
	}
}

// checkRecordsMatchChains checks each remaining snapshot's overlay is
// in its disk's chain, right above the image it names as its backing.
func checkRecordsMatchChains(t *testing.T, e *env) {
	t.Helper()
	snaps, err := e.drv.Store().Snapshots(e.name)
	if err != nil {
		t.Fatal(err)
	}
	disks := e.disks()
	for _, s := range snaps {
		for _, sd := range s.Disks {
			if sd.Snapshot != "external" {
				continue
			}
			for _, qd := range disks {
				if qd.Target != sd.Target {
					continue
				}
				chain := transaction.ChainFiles(qd)
				at := slices.Index(chain, sd.Overlay)
				if at < 0 || at+1 >= len(chain) || chain[at+1] != sd.Backing {
					t.Errorf("snapshot %s disk %s: overlay %s on %s, but the chain is %v", s.Name, sd.Target, sd.Overlay, sd.Backing, chain)
				}
			}
		}
	}
}

// patterns is what the guest wrote where: the last pattern written at
// each offset of each disk, which every merge must keep.
type patterns map[string]map[int64]byte

// write writes pattern p at off (64 KiB) into disk target through QEMU
// and flushes it to the images, on real QEMU; on the fake it only
// keeps the model.
func (e *env) write(ps patterns, target string, off int64, p byte) {
	e.t.Helper()
	if ps[target] == nil {
		ps[target] = map[int64]byte{}
	}
	ps[target][off] = p
	if !e.vm.Real() {
		return
	}
	if out := e.qemuIO(target, fmt.Sprintf("write -P %#x %d 64k", p, off)); !strings.Contains(out, "wrote 65536/65536") {
		e.t.Fatalf("write %#x at %d into %s: %s", p, off, target, out)
	}
	e.hmp(fmt.Sprintf("qemu-io -d /machine/peripheral/%s/virtio-backend flush", target))
}

// checkData reads each disk's chain from its active image, on the host
// as the files are now: every offset holds the last pattern written, an
// offset never written reads zeros, and every image of the chain is
// consistent (leaked clusters allowed in the images leaksOK names).
// Real QEMU only.
func (e *env) checkData(ps patterns, leaksOK ...string) {
	e.t.Helper()
	if !e.vm.Real() {
		return
	}
	leaks := map[string]bool{}
	for _, f := range leaksOK {
		leaks[f] = true
	}
	for _, d := range e.disks() {
		args := []string{"-U", "-r", "-f", "qcow2", d.File}
		for off, p := range ps[d.Target] {
			args = append(args, "-c", fmt.Sprintf("read -P %#x %d 64k", p, off))
		}
		args = append(args, "-c", "read -P 0 60M 64k")
		out, err := exec.Command("qemu-io", args...).CombinedOutput()
		if err != nil || strings.Contains(string(out), "verification failed") || strings.Count(string(out), "read 65536/65536") != len(ps[d.Target])+1 {
			e.t.Errorf("disk %s (%s) does not read back what was written: %v\n%s", d.Target, filepath.Base(d.File), err, out)
		}
		for _, img := range append([]string{d.File}, files(d.Backing)...) {
			out, err := exec.Command("qemu-img", "check", "-U", img).CombinedOutput()
			var ee *exec.ExitError
			if errors.As(err, &ee) && ee.ExitCode() == 3 && leaks[filepath.Base(img)] {
				continue // leaked clusters only: space lost, no data
			}
			if err != nil {
				e.t.Errorf("qemu-img check %s: %v\n%s", filepath.Base(img), err, out)
			}
		}
	}
}

func files(imgs []qmp.Image) []string {
	out := make([]string, len(imgs))
	for i, img := range imgs {
		out[i] = img.File
	}
	return out
}

// treeModel is the metadata a test expects: parents and current.
type treeModel struct {
	order   []string
	parent  map[string]string
	current string
}

func newTreeModel() *treeModel { return &treeModel{parent: map[string]string{}} }

func (m *treeModel) create(name string) {
	m.order = append(m.order, name)
	m.parent[name] = m.current
	m.current = name
}

func (m *treeModel) delete(name string) {
	for _, n := range m.order {
		if m.parent[n] == name {
			m.parent[n] = m.parent[name]
		}
	}
	if m.current == name {
		m.current = m.parent[name]
	}
	m.order = slices.DeleteFunc(m.order, func(n string) bool { return n == name })
	delete(m.parent, name)
}

func (m *treeModel) String() string {
	var parts []string
	for _, n := range m.order {
		parts = append(parts, m.parent[n]+"<-"+n)
	}
	return strings.Join(append(parts, "current="+m.current), " ")
}

// checkDeleteKeepsEveryWrite writes distinct patterns into three disks
// before and after each of three snapshots, and after each delete, then
// deletes the snapshots in several orders: the guest's view never
// changes, each chain is exactly what is left, the merged overlays'
// files are gone and the metadata is as libvirt's rules say.
func checkDeleteKeepsEveryWrite(t *testing.T) {
	for _, order := range [][]string{{"s2", "s3", "s1"}, {"s3", "s2", "s1"}, {"s1", "s3", "s2"}} {
		t.Run(strings.Join(order, "-"), func(t *testing.T) {
			e := newEnv(t, envOpts{disks: 3, style: qemutest.Legacy})
			targets := []string{"vda", "vdb", "vdc"}
			ps := patterns{}
			epoch := 0
			writeAll := func() {
				for i, tg := range targets {
					// A region of its own per epoch, and one that every
					// epoch overwrites.
					e.write(ps, tg, int64(epoch)<<20, byte(0x10*(epoch+1)+i))
					e.write(ps, tg, 32<<20, byte(0x80+epoch))
				}
				epoch++
			}
			model := newTreeModel()
			chains := map[string][]string{}
			for _, tg := range targets {
				chains[tg] = []string{tg + ".qcow2"}
			}
			writeAll()
			for _, s := range []string{"s1", "s2", "s3"} {
				e.mustCreate(snapXML(s), FlagDiskOnly|FlagAtomic)
				model.create(s)
				for _, tg := range targets {
					chains[tg] = append([]string{tg + "." + s}, chains[tg]...)
				}
				writeAll()
			}
			e.checkData(ps)
			for _, name := range order {
				res := e.mustDelete(name, 0)
				model.delete(name)
				for _, tg := range targets {
					chains[tg] = slices.DeleteFunc(chains[tg], func(f string) bool { return f == tg+"."+name })
				}
				if res.MergedBytes < 0 || len(res.Disks) != 3 {
					t.Errorf("delete %s: %+v", name, res)
				}
				e.wantChains(chains)
				e.wantTree(model.String())
				e.wantGone("vda."+name, "vdb."+name, "vdc."+name)
				e.wantNoStrayNodes()
				checkRecordsMatchChains(t, e)
				e.checkData(ps)
				// The disks stay writable, and later merges keep that too.
				writeAll()
				e.checkData(ps)
			}
		})
	}
}

// checkDeleteChildren merges descendants deepest first with
// CHILDREN_ONLY, then the rest with CHILDREN, keeping the data.
func checkDeleteChildren(t *testing.T) {
	e := newEnv(t, envOpts{disks: 2, style: qemutest.Blockdev})
	ps := patterns{}
	for i, s := range []string{"s1", "s2", "s3", "s4"} {
		e.write(ps, "vda", int64(i)<<20, byte(0x21+i))
		e.write(ps, "vdb", int64(i)<<20, byte(0x41+i))
		e.mustCreate(snapXML(s), FlagDiskOnly|FlagAtomic)
	}
	e.write(ps, "vda", 8<<20, 0x5a)
	res := e.mustDelete("s2", DeleteChildrenOnly)
	if !slices.Equal(res.Deleted, []string{"s4", "s3"}) {
		t.Errorf("CHILDREN_ONLY deleted %v, want s4 then s3", res.Deleted)
	}
	if got := outcomeSummary(res.Disks); got != "s4/vda:merged+deleted s4/vdb:merged+deleted s3/vda:merged+deleted s3/vdb:merged+deleted" {
		t.Errorf("CHILDREN_ONLY outcomes: %s", got)
	}
	e.wantTree("<-s1 s1<-s2 current=s2")
	e.wantChains(map[string][]string{"vda": {"vda.s2", "vda.s1", "vda.qcow2"}, "vdb": {"vdb.s2", "vdb.s1", "vdb.qcow2"}})
	e.wantGone("vda.s3", "vdb.s3", "vda.s4", "vdb.s4")
	e.checkData(ps)
	// A leaf has no children to delete.
	if res := e.mustDelete("s2", DeleteChildrenOnly); len(res.Deleted) != 0 {
		t.Errorf("CHILDREN_ONLY of a leaf deleted %v", res.Deleted)
	}
	res = e.mustDelete("s1", DeleteChildren)
	if !slices.Equal(res.Deleted, []string{"s2", "s1"}) {
		t.Errorf("CHILDREN deleted %v, want s2 then s1", res.Deleted)
	}
	e.wantTree("current=")
	e.wantChains(map[string][]string{"vda": {"vda.qcow2"}, "vdb": {"vdb.qcow2"}})
	e.wantGone("vda.s1", "vdb.s1", "vda.s2", "vdb.s2")
	e.wantNoStrayNodes()
	e.checkData(ps)
	if w := e.world(); w.Active != 0 || w.Jobs != 0 {
		t.Errorf("%d open operations, %d jobs", w.Active, w.Jobs)
	}
}

// nodeOf names the format node QEMU opens file with.
func (e *env) nodeOf(file string) string {
	e.t.Helper()
	nodes, err := e.obs.QueryNamedBlockNodes(testCtx(e.t), true)
	if err != nil {
		e.t.Fatal(err)
	}
	names := transaction.MergeFormatNodes(nodes)[filepath.Join(e.vm.Dir, file)]
	if len(names) != 1 {
		e.t.Fatalf("nodes of %s: %v", file, names)
	}
	return names[0]
}

// commitBehindTheDaemon commits top into base on target through the
// second monitor, as an operator would, and waits for the job's end.
func (e *env) commitBehindTheDaemon(target, top, base string) {
	e.t.Helper()
	ctx := testCtx(e.t)
	var device string
	for _, d := range e.disks() {
		if d.Target == target {
			device = d.NodeName
		}
	}
	if err := e.obs.BlockCommit(ctx, qmp.BlockCommitArgs{JobID: "operator", Device: device, TopNode: e.nodeOf(top), BaseNode: e.nodeOf(base)}); err != nil {
		e.t.Fatal(err)
	}
	waitFor(e.t, func() bool {
		jobs, err := e.obs.QueryJobs(ctx)
		if err != nil {
			e.t.Fatal(err)
		}
		for _, j := range jobs {
			if j.Status == "ready" {
				if err := e.obs.JobComplete(ctx, j.ID); err != nil {
					e.t.Fatal(err)
				}
			}
		}
		return len(jobs) == 0
	}, "the operator's commit")
}

func checkDeleteRefusals(t *testing.T) {
	e := newEnv(t, envOpts{disks: 2, style: qemutest.Legacy})
	for _, s := range []string{"s1", "s2"} {
		e.mustCreate(snapXML(s), FlagDiskOnly|FlagAtomic)
	}
	// s1 gets a second child.
	if err := e.drv.SetCurrent(testCtx(t), e.name, "s1"); err != nil {
		t.Fatal(err)
	}
	e.mustCreate(snapXML("s3"), FlagDiskOnly|FlagAtomic)
	redefined := "<domainsnapshot><name>mem</name><state>running</state><creationTime>1</creationTime></domainsnapshot>"
	if _, err := e.drv.CreateSnapshot(testCtx(t), e.name, CreateRequest{XML: redefined, Flags: FlagRedefine}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		snap  string
		flags DeleteFlags
		want  error
		msg   string
	}{
		{"unknown snapshot", "nope", 0, ErrNoSnapshot, "no snapshot named 'nope'"},
		{"two children", "s1", 0, ErrUnsupported, "snapshot 's1' has 2 children (s2, s3)"},
		{"CHILDREN and CHILDREN_ONLY", "s1", DeleteChildren | DeleteChildrenOnly, ErrInvalidArg, "mutually exclusive"},
		{"METADATA_ONLY and CHILDREN", "s1", DeleteMetadataOnly | DeleteChildren, ErrUnsupported, "METADATA_ONLY deletes one snapshot's metadata"},
		{"METADATA_ONLY and CHILDREN_ONLY", "s1", DeleteMetadataOnly | DeleteChildrenOnly, ErrUnsupported, "METADATA_ONLY"},
		{"unknown flag", "s1", 8, ErrInvalidArg, "unknown delete flag bits 0x8"},
		{"memory state", "mem", 0, ErrUnsupported, "snapshot 'mem' is in state 'running'"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.world()
			_, err := e.delete(tc.snap, tc.flags)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("got %v, want %v with %q", err, tc.want, tc.msg)
			}
			e.assertUnchanged(before)
		})
	}
	t.Run("block job", func(t *testing.T) {
		ctx := testCtx(t)
		vdb := e.disks()[1]
		if err := e.obs.BlockCommit(ctx, qmp.BlockCommitArgs{JobID: "other", Device: vdb.NodeName}); err != nil {
			t.Fatal(err)
		}
		before := e.world()
		_, err := e.delete("s3", 0)
		if !errors.Is(err, ErrOperationInvalid) || !strings.Contains(err.Error(), "disk 'vdb' has an active block job") {
			t.Errorf("got %v, want vdb busy", err)
		}
		e.assertUnchanged(before)
		if err := e.obs.JobCancel(ctx, "other"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return e.world().Jobs == 0 }, "the other job's end")
	})
}

// checkDeleteOffTheChain: an operator committed overlays behind the
// daemon's back. A snapshot with children whose overlay left the chain
// cannot be merged; a leaf's overlay in no chain is deleted, once no
// node of QEMU uses it. The overlays' nodes are added beforehand
// (preadd), as only those outlive their chain: a node QEMU opened in
// the switch goes with the commit.
func checkDeleteOffTheChain(t *testing.T) {
	e := newEnv(t, envOpts{disks: 2, style: qemutest.Blockdev, cfg: func(c *Config) { c.Switch = string(transaction.SwitchPreadd) }})
	for _, s := range []string{"s1", "s2", "s3"} {
		e.mustCreate(snapXML(s), FlagDiskOnly|FlagAtomic)
	}
	// s1's overlay of vda leaves the chain: s2's now sits on vda.qcow2.
	e.commitBehindTheDaemon("vda", "vda.s1", "vda.qcow2")
	before := e.world()
	_, err := e.delete("s1", 0)
	if !errors.Is(err, ErrOperationInvalid) || !strings.Contains(err.Error(), "disk 'vda': overlay "+filepath.Join(e.vm.Dir, "vda.s1")+" of snapshot 's1' is not in the disk's current chain") {
		t.Errorf("delete s1: got %v, want vda's overlay named", err)
	}
	e.assertUnchanged(before)
	_, err = e.delete("s2", 0)
	if !errors.Is(err, ErrOperationInvalid) || !strings.Contains(err.Error(), "sits on "+filepath.Join(e.vm.Dir, "vda.qcow2")+", but the snapshot was taken on "+filepath.Join(e.vm.Dir, "vda.s1")) {
		t.Errorf("delete s2: got %v, want the changed backing named", err)
	}
	e.assertUnchanged(before)

	// s3's overlay of vdb leaves the chain too; its node stays in QEMU
	// until someone deletes it.
	e.commitBehindTheDaemon("vdb", "vdb.s3", "vdb.s2")
	node := e.nodeOf("vdb.s3")
	res := e.mustDelete("s3", 0)
	if got := outcomeSummary(res.Disks); got != "s3/vda:merged+deleted s3/vdb:unchanged+kept" {
		t.Errorf("outcomes: %s", got)
	}
	if o := res.Disks[1]; !strings.Contains(o.Reason, "node "+node+" in QEMU uses it") {
		t.Errorf("vdb kept for %q, want the node that uses it", o.Reason)
	}
	e.wantTree("<-s1 s1<-s2 current=s2")
	if _, err := os.Stat(filepath.Join(e.vm.Dir, "vdb.s3")); err != nil {
		t.Errorf("a file QEMU uses was deleted: %v", err)
	}
	// Once nothing uses it, a leaf's overlay outside the chain goes.
	if err := e.obs.BlockdevDel(testCtx(t), node); err != nil {
		t.Fatal(err)
	}
	e.mustCreate(snapXML("s4", diskXML("vda", "no", "")), FlagDiskOnly)
	e.commitBehindTheDaemon("vdb", "vdb.s4", "vdb.s2")
	if err := e.obs.BlockdevDel(testCtx(t), e.nodeOf("vdb.s4")); err != nil {
		t.Fatal(err)
	}
	res = e.mustDelete("s4", 0)
	if got := outcomeSummary(res.Disks); got != "s4/vdb:unlinked+deleted" {
		t.Errorf("outcomes: %s", got)
	}
	e.wantGone("vdb.s4")
	e.wantTree("<-s1 s1<-s2 current=s2")
}

// checkDeleteDuringCreate: a create holds the domain; a delete waits
// for it until its caller's deadline, then fails, changing nothing.
func checkDeleteDuringCreate(t *testing.T) {
	e := newEnv(t, envOpts{disks: 2, style: qemutest.Blockdev})
	e.mustCreate(snapXML("s1"), FlagDiskOnly|FlagAtomic)
	held, release := e.holdAtSwitching()
	done := make(chan error, 1)
	go func() { _, err := e.create(snapXML("s2"), FlagDiskOnly|FlagAtomic); done <- err }()
	<-held
	before := e.world()
	ctx, cancel := context.WithTimeout(testCtx(t), 200*time.Millisecond)
	defer cancel()
	_, err := e.drv.DeleteSnapshot(ctx, e.name, "s1", DeleteRequest{})
	if !errors.Is(err, ErrBusy) || Kind(err) != errkind.OperationTimeout {
		t.Errorf("got %v, want operation in progress", err)
	}
	e.assertUnchanged(before)
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Once the create is done, the delete runs.
	e.drv.Hooks.AtStep = nil
	e.mustDelete("s1", 0)
	e.wantTree("<-s2 current=s2")
}

// checkDeleteFaultsBeforeTheFinalize: QEMU refuses a commit or a
// complete: every job is cancelled and nothing changes. A connection
// that drops at the complete (past the point of no return) leaves the
// merge to recovery, which finishes it once the daemon reconnected, and
// the delete answers with that: merged.
func checkDeleteFaultsBeforeTheFinalize(t *testing.T) {
	fail := qmpproxy.Fail{Class: "GenericError", Desc: "injected"}
	for _, tc := range []struct {
		name, snap, command string
		action              qmpproxy.Action
		msg                 string
	}{
		{"block-commit of the middle", "s2", "block-commit", fail, "start commit of disk vdb: qmp block-commit: GenericError: injected"},
		{"block-commit of the current", "s3", "block-commit", fail, "start commit of disk vdb: qmp block-commit: GenericError: injected"},
		{"job-complete", "s3", "job-complete", fail, "complete commit of disk vdb: qmp job-complete: GenericError: injected"},
		{"connection lost at job-complete", "s3", "job-complete", qmpproxy.CloseConn{}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOpts{disks: 2, style: qemutest.Legacy, proxy: true})
			for _, s := range []string{"s1", "s2", "s3"} {
				e.mustCreate(snapXML(s), FlagDiskOnly|FlagAtomic)
			}
			before := e.world()
			e.proxy.Add(qmpproxy.Rule{Command: tc.command, Nth: 2, Times: 1, Action: tc.action})
			res, err := e.delete(tc.snap, 0)
			if _, ok := tc.action.(qmpproxy.CloseConn); ok {
				// The same request answers once recovery finished the
				// merge: no polling.
				if err != nil || !slices.Equal(res.Deleted, []string{"s3"}) {
					t.Fatalf("got %+v, %v; want s3 merged by recovery", res, err)
				}
				if w := e.world(); w.Active != 0 {
					t.Errorf("%d open operations after the answer", w.Active)
				}
				e.wantTree("<-s1 s1<-s2 current=s2")
				e.wantChains(map[string][]string{"vda": {"vda.s2", "vda.s1", "vda.qcow2"}, "vdb": {"vdb.s2", "vdb.s1", "vdb.qcow2"}})
				e.wantGone("vda.s3", "vdb.s3")
				e.wantNoStrayNodes()
				return
			}
			var de *DeleteError
			if !errors.As(err, &de) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got %v, want %q", err, tc.msg)
			}
			if de.Step != StepMerge || len(de.Deleted) != 0 {
				t.Errorf("step %s, deleted %v", de.Step, de.Deleted)
			}
			for _, o := range de.Disks {
				if o.Result == MergeMerged || o.FileDeleted {
					t.Errorf("disk %s: %+v", o.Target, o)
				}
			}
			if o := de.Disks[1]; o.Result != MergeFailed || !strings.Contains(o.Error, "injected") {
				t.Errorf("vdb: %+v, want failed with QEMU's message", o)
			}
			e.assertUnchanged(before)
			ops, _ := e.drv.Store().Ops(false)
			if op := ops[len(ops)-1]; op.Kind != KindSnapshotDelete || op.Phase() != transaction.PhaseFailed {
				t.Errorf("journal: %s %s", op.Kind, op.Phase())
			}
			// The domain still works.
			e.mustDelete(tc.snap, 0)
		})
	}
}

// connected reports whether the driver has the domain connected.
func (e *env) connected() bool {
	info, err := e.drv.DomainInfo(e.name)
	return err == nil && info.Connected
}

// checkDeleteFinalizeFailureIsReportedPerDisk: past the point of no
// return a disk whose finalize QEMU refuses stays as it was, the other
// is merged, and the metadata says exactly that; deleting again merges
// the rest.
//
// Both of s2's overlays hold data: a first delete, cancelled once its
// jobs copied, marks s2 merge-interrupted on both disks; the refused
// finalize leaves vdb's base written once more, so s2 stays marked, for
// vdb only.
func checkDeleteFinalizeFailureIsReportedPerDisk(t *testing.T) {
	e := newEnv(t, envOpts{disks: 2, style: qemutest.Blockdev, proxy: true})
	ps := patterns{}
	e.mustCreate(snapXML("s1"), FlagDiskOnly|FlagAtomic)
	e.mustCreate(snapXML("s2"), FlagDiskOnly|FlagAtomic)
	e.writeData(ps, "vda", 0, 0x21)
	e.writeData(ps, "vdb", 0, 0x22)
	e.mustCreate(snapXML("s3"), FlagDiskOnly|FlagAtomic)
	e.drv.Hooks.AtStep = func(step string) error {
		if step == HookDeleteCopied {
			return e.drv.CancelOperation("first")
		}
		return nil
	}
	if _, err := e.drv.DeleteSnapshot(testCtx(t), e.name, "s2", DeleteRequest{OpID: "first"}); !errors.Is(err, ErrCancelled) {
		t.Fatalf("got %v, want cancelled", err)
	}
	e.drv.Hooks.AtStep = nil
	e.wantMark("s2", "first:vda,vdb")

	e.proxy.Add(qmpproxy.Rule{Command: "job-finalize", Nth: 2, Times: 1, Action: qmpproxy.Fail{Class: "GenericError", Desc: "injected"}})
	_, err := e.delete("s2", 0)
	var de *DeleteError
	if !errors.As(err, &de) || de.Step != StepFinalize || !strings.Contains(err.Error(), "finalize commit of disk vdb: qmp job-finalize: GenericError: injected") {
		t.Fatalf("got %v, want vdb's finalize refused", err)
	}
	if got := outcomeSummary(de.Disks); got != "s2/vda:merged+deleted s2/vdb:failed" {
		t.Errorf("outcomes: %s", got)
	}
	if !strings.Contains(err.Error(), "into the base image of disk vdb") || !strings.Contains(err.Error(), "snapshot 's2' is marked merge-interrupted") {
		t.Errorf("error: %v, want s2 marked for vdb", err)
	}
	e.wantMark("s2", de.OpID+":vdb")
	e.wantChains(map[string][]string{"vda": {"vda.s3", "vda.s1", "vda.qcow2"}, "vdb": {"vdb.s3", "vdb.s2", "vdb.s1", "vdb.qcow2"}})
	e.wantTree("<-s1 s1<-s2 s2<-s3 current=s3")
	e.wantGone("vda.s2")
	e.wantNoStrayNodes()
	if w := e.world(); w.Active != 0 || w.Jobs != 0 {
		t.Errorf("%d open operations, %d jobs", w.Active, w.Jobs)
	}
	rec, err := e.drv.Snapshot(e.name, "s2")
	if err != nil {
		t.Fatal(err)
	}
	if rec.Disks[0].Snapshot != "no" || rec.Disks[1].Snapshot != "external" ||
		!strings.Contains(rec.XML, `<disk name="vda" snapshot="no"></disk>`) || !strings.Contains(rec.XML, "vdb.s2") {
		t.Errorf("s2 after vda merged: %+v\n%s", rec.Disks, rec.XML)
	}
	checkRecordsMatchChains(t, e)
	res := e.mustDelete("s2", 0)
	if got := outcomeSummary(res.Disks); got != "s2/vdb:merged+deleted" {
		t.Errorf("second delete: %s", got)
	}
	e.wantChains(map[string][]string{"vda": {"vda.s3", "vda.s1", "vda.qcow2"}, "vdb": {"vdb.s3", "vdb.s1", "vdb.qcow2"}})
	e.wantTree("<-s1 s1<-s3 current=s3")
	checkRecordsMatchChains(t, e)
	e.checkData(ps)
}

// deleteEvents records SnapshotDeleted events.
type deleteEvents struct {
	NopEvents
	mu  sync.Mutex
	evs []DeleteEvent
}

func (r *deleteEvents) SnapshotDeleted(ev DeleteEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.evs = append(r.evs, ev)
}

func (r *deleteEvents) last(t *testing.T) DeleteEvent {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.evs) == 0 {
		t.Fatal("no SnapshotDeleted event")
	}
	return r.evs[len(r.evs)-1]
}

// checkDeleteCancelAndProgress: before the point of no return,
// CancelOperation cancels every job and nothing changes; after it, the
// merge finishes; the caller going away changes nothing either way.
// Progress adds up the jobs' progress.
func checkDeleteCancelAndProgress(t *testing.T) {
	evs := &deleteEvents{}
	e := newEnv(t, envOpts{disks: 2, style: qemutest.Blockdev, cfg: func(c *Config) { c.Events = evs }})
	for _, s := range []string{"s1", "s2", "s3"} {
		e.mustCreate(snapXML(s), FlagDiskOnly|FlagAtomic)
	}
	ctx := testCtx(t)
	if err := e.drv.CancelOperation("nope"); !errors.Is(err, ErrNoOperation) {
		t.Errorf("cancel of no operation: %v", err)
	}

	t.Run("before the point of no return", func(t *testing.T) {
		before := e.world()
		var progress Progress
		e.drv.Hooks.AtStep = func(step string) error {
			if step == HookDeleteCopied {
				progress, _ = e.drv.OperationProgress("del-1")
				if err := e.drv.CancelOperation("del-1"); err != nil {
					t.Errorf("cancel: %v", err)
				}
			}
			return nil
		}
		_, err := e.drv.DeleteSnapshot(ctx, e.name, "s2", DeleteRequest{OpID: "del-1"})
		if !errors.Is(err, ErrCancelled) || Kind(err) != errkind.OperationAborted {
			t.Fatalf("got %v, want cancelled", err)
		}
		// A commit below the active layer counts the top's whole length.
		if !progress.Cancellable || progress.TotalBytes != 2*64<<20 || progress.DoneBytes != progress.TotalBytes {
			t.Errorf("progress when copied: %+v", progress)
		}
		e.assertUnchanged(before)
		// But it copied nothing, the tops being empty: no base changed,
		// and nothing is marked.
		if strings.Contains(err.Error(), "marked") {
			t.Errorf("error: %v, want no mark", err)
		}
		e.wantMark("s2", "")
		if ev := evs.last(t); ev.Result != ResultCancelled || ev.OpID != "del-1" || !ev.Merged || ev.MergedBytes != 0 {
			t.Errorf("event: %+v", ev)
		}
		if _, ok := e.drv.OperationProgress("del-1"); ok {
			t.Error("a finished operation still runs")
		}
	})

	t.Run("after the point of no return", func(t *testing.T) {
		var progress Progress
		e.drv.Hooks.AtStep = func(step string) error {
			if step == HookDeleteFinalizing {
				progress, _ = e.drv.OperationProgress("del-2")
				if err := e.drv.CancelOperation("del-2"); !errors.Is(err, ErrOperationInvalid) {
					t.Errorf("cancel past the point of no return: %v", err)
				}
			}
			return nil
		}
		res, err := e.drv.DeleteSnapshot(ctx, e.name, "s2", DeleteRequest{OpID: "del-2", Bandwidth: 100 << 20})
		if err != nil {
			t.Fatal(err)
		}
		if progress.Cancellable {
			t.Errorf("cancellable past the point of no return: %+v", progress)
		}
		if res.MergedBytes != 2*64<<20 || res.OpID != "del-2" {
			t.Errorf("result: %+v", res)
		}
		if ev := evs.last(t); ev.Result != ResultSuccess || !slices.Equal(ev.Names, []string{"s2"}) || ev.MergedBytes != res.MergedBytes {
			t.Errorf("event: %+v", ev)
		}
		e.wantTree("<-s1 s1<-s3 current=s3")
	})

	t.Run("the caller goes away", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		e.drv.Hooks.AtStep = func(step string) error {
			if step == HookDeleteCopied {
				cancel()
			}
			return nil
		}
		if _, err := e.drv.DeleteSnapshot(cctx, e.name, "s3", DeleteRequest{}); err != nil {
			t.Fatalf("a merge whose caller went away: %v", err)
		}
		e.wantTree("<-s1 current=s1")
		e.wantChains(map[string][]string{"vda": {"vda.s1", "vda.qcow2"}, "vdb": {"vdb.s1", "vdb.qcow2"}})
	})

	t.Run("while waiting for the domain", func(t *testing.T) {
		held, release := e.holdAtSwitching()
		created := make(chan error, 1)
		go func() { _, err := e.create(snapXML("s4"), FlagDiskOnly|FlagAtomic); created <- err }()
		<-held
		deleted := make(chan error, 1)
		go func() {
			_, err := e.drv.DeleteSnapshot(ctx, e.name, "s1", DeleteRequest{OpID: "del-3"})
			deleted <- err
		}()
		waitFor(t, func() bool { _, ok := e.drv.OperationProgress("del-3"); return ok }, "the delete to wait")
		if err := e.drv.CancelOperation("del-3"); err != nil {
			t.Fatal(err)
		}
		if err := <-deleted; !errors.Is(err, ErrCancelled) {
			t.Errorf("got %v, want cancelled", err)
		}
		close(release)
		if err := <-created; err != nil {
			t.Fatal(err)
		}
		e.drv.Hooks.AtStep = nil
		e.wantTree("<-s1 s1<-s4 current=s4")
	})
}

// checkDeleteCancelMidCopy cancels a merge that copies data at a
// bandwidth cap (a commit below the active layer, which copies chunk by
// chunk; a mirror copies its first 16 MiB at once), while its progress
// grows.
func checkDeleteCancelMidCopy(t *testing.T) {
	e := newEnv(t, envOpts{disks: 2, style: qemutest.Legacy})
	ps := patterns{}
	e.write(ps, "vda", 0, 0x31)
	e.mustCreate(snapXML("s1"), FlagDiskOnly|FlagAtomic)
	for i := range int64(64) {
		e.write(ps, "vda", i<<16, byte(0x40+i))
	}
	e.mustCreate(snapXML("s2"), FlagDiskOnly|FlagAtomic)
	e.write(ps, "vda", 0, 0x32)
	before := e.world()
	done := make(chan error, 1)
	go func() {
		_, err := e.drv.DeleteSnapshot(testCtx(t), e.name, "s1", DeleteRequest{OpID: "slow", Bandwidth: 1 << 20})
		done <- err
	}()
	var p Progress
	waitFor(t, func() bool {
		p, _ = e.drv.OperationProgress("slow")
		return p.DoneBytes > 0
	}, "progress")
	if !p.Cancellable || p.TotalBytes != 2*64<<20 || p.DoneBytes >= p.TotalBytes {
		t.Errorf("progress mid-copy: %+v", p)
	}
	if err := e.drv.CancelOperation("slow"); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrCancelled) || !strings.Contains(err.Error(), "wrote part of its overlays into the base image of disk vda") ||
		!strings.Contains(err.Error(), "snapshot 's1' is marked merge-interrupted") {
		t.Fatalf("got %v, want cancelled, saying the base took part of the copy and s1 is marked", err)
	}
	// The base took part of the copy, and s1 says so (vdb's empty top
	// copied nothing); nothing else changed.
	e.wantMark("s1", "slow:vda")
	after := e.world()
	after.Files["vda.qcow2"] = before.Files["vda.qcow2"]
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Errorf("state changed:\nbefore %+v\nafter  %+v", before, after)
	}
	// QEMU leaks the clusters it allocated in the full base.
	e.checkData(ps, "vda.s1")
	// Deleting again completes the merge, and the mark goes with s1.
	e.mustDelete("s1", 0)
	e.wantTree("<-s2 current=s2")
	e.checkData(ps, "vda.qcow2")
}

// checkDeleteBaseOutOfSpace merges into a base on a file system that
// fills up: QEMU fails that disk's job, every other job is cancelled,
// and the error names the disk and QEMU's message.
func checkDeleteBaseOutOfSpace(t *testing.T) {
	e := newEnv(t, envOpts{disks: 2, style: qemutest.Legacy, cfg: func(c *Config) {
		c.AllowedDirs = []string{os.TempDir()}
	}})
	small := filepath.Join(e.vm.Dir, "small")
	if err := os.Mkdir(small, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", small, "tmpfs", 0, "size=2m"); err != nil {
		t.Skipf("cannot mount a small tmpfs here (%v)", err)
	}
	t.Cleanup(func() {
		e.vm.Kill()
		if err := syscall.Unmount(small, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", small, err)
		}
	})
	ps := patterns{}
	e.mustCreate(snapXML("s1", diskXML("vda", "", filepath.Join(small, "vda.s1"))), FlagDiskOnly|FlagAtomic)
	e.mustCreate(snapXML("s2", diskXML("vda", "", filepath.Join(e.vm.Dir, "vda.s2"))), FlagDiskOnly|FlagAtomic)
	// An empty overlay copies nothing: give it 4 MiB.
	for i := range int64(64) {
		e.write(ps, "vda", i<<16, byte(0x60+i))
	}
	before := e.world()
	_, err := e.delete("s2", 0)
	var de *DeleteError
	if !errors.As(err, &de) || !strings.Contains(err.Error(), "disk vda: No space left on device") {
		t.Fatalf("got %v, want vda's ENOSPC", err)
	}
	if got := outcomeSummary(de.Disks); got != "s2/vda:failed s2/vdb:unchanged" {
		t.Errorf("outcomes: %s", got)
	}
	// The job wrote into vda.s1 before it failed: s2 says so.
	if !strings.Contains(err.Error(), "snapshot 's2' is marked merge-interrupted") {
		t.Errorf("error: %v, want s2 marked", err)
	}
	e.wantMark("s2", de.OpID+":vda")
	// Nothing changed but what the job wrote into the base before it
	// failed: the base is on the small file system, outside vm.Dir.
	after := e.world()
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Errorf("state changed:\nbefore %+v\nafter  %+v", before, after)
	}
	// QEMU leaks the clusters it allocated in the full base.
	e.checkData(ps, "vda.s1")
}

// restartQEMU starts QEMU again on the VM's sockets, with each disk on
// the image active is (as -drive disks, like qemutest's Legacy style),
// as a VM restarted after a crash: nodes the daemon added are gone, the
// chains come from the image headers. Real QEMU only.
func (e *env) restartQEMU(active map[string]string) {
	e.t.Helper()
	for _, p := range []string{e.vm.QMP, e.vm.QMP2} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			e.t.Fatal(err)
		}
	}
	args := []string{"-S", "-nodefaults", "-display", "none", "-accel", "tcg", "-no-user-config", "-M", "q35", "-m", "128",
		"-qmp", "unix:" + e.vm.QMP + ",server=on,wait=off", "-qmp", "unix:" + e.vm.QMP2 + ",server=on,wait=off"}
	for _, d := range e.vm.Disks {
		args = append(args,
			"-drive", "if=none,id="+d.Drive+",file="+active[d.Target]+",format=qcow2",
			"-device", "virtio-blk-pci,drive="+d.Drive+",id="+d.Target)
	}
	cmd := exec.Command("qemu-system-x86_64", args...)
	out := &qemutest.LockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	e.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if e.t.Failed() {
			e.t.Logf("restarted qemu %v\noutput: %s", args, out)
		}
	})
	waitFor(e.t, func() bool { return e.obs.Connect(testCtx(e.t)) == nil }, "the restarted QEMU's second monitor")
}

// checkDeleteQEMUKilledMidMerge kills QEMU during a merge and starts it
// again on the same images: before the point of no return, and after
// it but before any finalize, nothing is merged; after the finalize of
// a commit below the active layer, the image above names the base in
// its header, and the merge is recorded. Either way the metadata
// agrees with the chains, no file QEMU needs is gone, and the data is
// intact. The delete itself, with QEMU away past the reconnect wait,
// answers outcome-unknown, and recovery resolves it once QEMU is back.
func checkDeleteQEMUKilledMidMerge(t *testing.T) {
	for _, tc := range []struct {
		step, snap string
		merged     bool
	}{
		{HookDeleteCopied, "s3", false},
		{HookDeleteFinalizing, "s2", false},
		{HookDeleteFinalized, "s2", true},
	} {
		t.Run(strings.TrimPrefix(tc.step, "delete:")+"/"+tc.snap, func(t *testing.T) {
			evs := newResolvedEvents()
			e := newEnv(t, envOpts{disks: 2, style: qemutest.Legacy, cfg: func(c *Config) {
				c.ReconnectWait, c.Events = 300*time.Millisecond, evs
			}})
			ps := patterns{}
			for i, s := range []string{"s1", "s2", "s3"} {
				e.write(ps, "vda", int64(i)<<20, byte(0x71+i))
				e.write(ps, "vdb", int64(i)<<20, byte(0x91+i))
				e.mustCreate(snapXML(s), FlagDiskOnly|FlagAtomic)
			}
			e.write(ps, "vda", 5<<20, 0x7f)
			active := map[string]string{}
			for _, d := range e.disks() {
				active[d.Target] = d.File
			}
			chains, tree := e.chains(), e.tree()
			e.drv.Hooks.AtStep = func(step string) error {
				if step == tc.step {
					e.vm.Kill()
				}
				return nil
			}
			_, err := e.delete(tc.snap, 0)
			var de *DeleteError
			if !errors.As(err, &de) || !errors.Is(err, ErrOutcomeUnknown) {
				t.Fatalf("got %v, want outcome-unknown: QEMU is gone", err)
			}
			e.drv.Hooks.AtStep = nil
			e.restartQEMU(active)
			want := OpFailed
			if tc.merged {
				want = OpSucceeded
			}
			if got := evs.wait(t); !slices.Equal(got, []string{e.name + " " + de.OpID + " " + want}) {
				t.Errorf("OperationResolved: %v, want %s", got, want)
			}
			waitFor(t, func() bool { return e.connected() && e.world().Active == 0 }, "recovery after QEMU's restart")
			if tc.merged {
				model := newTreeModel()
				for _, s := range []string{"s1", "s2", "s3"} {
					model.create(s)
				}
				model.delete(tc.snap)
				tree = model.String()
				for tg := range chains {
					chains[tg] = slices.DeleteFunc(chains[tg], func(f string) bool { return f == tg+"."+tc.snap })
				}
				e.wantGone("vda."+tc.snap, "vdb."+tc.snap)
			}
			e.wantChains(chains)
			e.wantTree(tree)
			checkRecordsMatchChains(t, e)
			for _, ch := range chains {
				for _, f := range ch {
					if _, err := os.Stat(filepath.Join(e.vm.Dir, f)); err != nil {
						t.Errorf("an image of the chain is gone: %v", err)
					}
				}
			}
			e.checkData(ps)
			// The jobs were lost with QEMU, after they had copied: the
			// snapshot not merged is marked (an active commit's end is
			// unknown, so its empty vdb.s3 counts too).
			if !tc.merged {
				ops, _ := e.drv.Store().Ops(false)
				e.wantMark(tc.snap, ops[len(ops)-1].ID+":vda,vdb")
			}
			// The domain works again: the delete goes through now.
			if !tc.merged {
				e.mustDelete(tc.snap, 0)
				e.checkData(ps)
			}
		})
	}
}

// checkDeleteKeepsCallersFiles: overlays the caller supplied (REUSE_EXT,
// or an empty file the daemon filled) are merged but never deleted; the
// result says where they are.
func checkDeleteKeepsCallersFiles(t *testing.T) {
	e := newEnv(t, envOpts{disks: 2, style: qemutest.Blockdev})
	reused, empty := filepath.Join(e.vm.Dir, "pre-made.qcow2"), filepath.Join(e.vm.Dir, "empty.img")
	if err := qcow2.Create(reused, qcow2.Options{VirtualSize: 64 << 20, BackingFile: e.vm.Disks[0].Path, BackingFormat: "qcow2"}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(empty, nil, 0o640); err != nil {
		t.Fatal(err)
	}
	e.mustCreate(snapXML("s1", diskXML("vda", "", reused), diskXML("vdb", "no", "")), FlagDiskOnly|FlagReuseExt)
	e.mustCreate(snapXML("s2", diskXML("vda", "no", ""), diskXML("vdb", "", empty)), FlagDiskOnly)
	for _, s := range []string{"s2", "s1"} {
		res := e.mustDelete(s, 0)
		o := res.Disks[0]
		if o.Result != MergeMerged || o.FileDeleted || o.Kept == "" || !strings.Contains(o.Reason, "did not create it") {
			t.Errorf("%s: %+v, want merged and kept", s, o)
		}
		if _, err := os.Stat(o.Kept); err != nil {
			t.Errorf("%s: the caller's file is gone: %v", s, err)
		}
	}
	e.wantChains(map[string][]string{"vda": {"vda.qcow2"}, "vdb": {"vdb.qcow2"}})
	e.wantTree("current=")
	e.wantNoStrayNodes()
}

// writeData is write, and on the fake also writes the pattern into the
// disk's active image file, so that the image holds data of its own as
// it would on real QEMU: the fake's jobs copy nothing, but whether a
// top holds data is read from its image.
func (e *env) writeData(ps patterns, target string, off int64, p byte) {
	e.t.Helper()
	e.write(ps, target, off, p)
	if e.vm.Real() {
		return
	}
	for _, d := range e.disks() {
		if d.Target != target {
			continue
		}
		out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P %#x %d 64k", p, off), d.File).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "wrote 65536/65536") {
			e.t.Fatalf("write %#x at %d into %s: %v: %s", p, off, d.File, err, out)
		}
		return
	}
	e.t.Fatalf("no disk %s", target)
}

// mark is a snapshot's merge-interrupted mark, as "op:vda,vdb", or ""
// for none.
func (e *env) mark(name string) string {
	e.t.Helper()
	rec, err := e.drv.Snapshot(e.name, name)
	if err != nil {
		e.t.Fatal(err)
	}
	m := rec.MergeInterrupted
	if m == nil {
		return ""
	}
	if m.Time.IsZero() || time.Since(m.Time) > time.Minute {
		e.t.Errorf("mark of %s at %v", name, m.Time)
	}
	return m.OpID + ":" + strings.Join(m.Disks, ",")
}

func (e *env) wantMark(name, want string) {
	e.t.Helper()
	if got := e.mark(name); got != want {
		e.t.Errorf("mark of snapshot %s: got %q, want %q", name, got, want)
	}
}

// checkDeleteInterruptedIsMarked: a merge cancelled or failed before its
// point of no return, after a job wrote into a base, marks the
// snapshot merge-interrupted in the journal's transaction and says so;
// a disk whose top holds no data copies nothing and is not marked,
// whatever QEMU counts as progress. The snapshot is otherwise as it
// was, and deleting it again completes the merge.
func checkDeleteInterruptedIsMarked(t *testing.T) {
	e := newEnv(t, envOpts{disks: 2, style: qemutest.Blockdev})
	ps := patterns{}
	e.mustCreate(snapXML("s1"), FlagDiskOnly|FlagAtomic)
	e.writeData(ps, "vda", 1<<20, 0x51) // into vda.s1; vdb.s1 stays empty
	e.mustCreate(snapXML("s2"), FlagDiskOnly|FlagAtomic)
	e.write(ps, "vda", 2<<20, 0x52)
	before, rec := e.world(), e.record("s1")
	const marked = "snapshot 's1' is marked merge-interrupted: deleting it again completes the merge"

	// s1 is below the active layer: its jobs are PENDING at copied, and
	// vda's has written into vda.qcow2 (vdb's, over an empty top, has
	// not, although QEMU counts its whole length).
	for _, tc := range []struct {
		op   string
		hook func() error
		want error
	}{
		{"cancelled", func() error { return e.drv.CancelOperation("cancelled") }, ErrCancelled},
		{"failed", func() error { return errors.New("boom") }, ErrOperationFailed},
	} {
		t.Run(tc.op, func(t *testing.T) {
			e.drv.Hooks.AtStep = func(step string) error {
				if step == HookDeleteCopied {
					return tc.hook()
				}
				return nil
			}
			_, err := e.drv.DeleteSnapshot(testCtx(t), e.name, "s1", DeleteRequest{OpID: tc.op})
			e.drv.Hooks.AtStep = nil
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), "into the base image of disk vda ("+e.vm.Disks[0].Path+")") ||
				!strings.Contains(err.Error(), marked) {
				t.Fatalf("got %v, want %v saying s1 is marked", err, tc.want)
			}
			e.wantMark("s1", tc.op+":vda")
			// Nothing changed but the base, which took part of the copy.
			after := e.world()
			after.Files["vda.qcow2"] = before.Files["vda.qcow2"]
			if !reflect.DeepEqual(before, after) {
				t.Errorf("state changed:\nbefore %+v\nafter  %+v", before, after)
			}
			got := e.record("s1")
			got.MergeInterrupted = nil
			if !reflect.DeepEqual(got, rec) {
				t.Errorf("record changed beyond its mark:\n got %+v\nwant %+v", got, rec)
			}
			// The journal says so too, and its entry ended with the mark.
			op, err := e.drv.Store().Op(tc.op)
			if err != nil || op.Phase() != transaction.PhaseFailed || !strings.Contains(op.Error, marked) {
				t.Errorf("journal: %+v, %v", op, err)
			}
			e.checkData(ps)
		})
	}

	t.Run("a redefine keeps the mark", func(t *testing.T) {
		if _, err := e.create(e.record("s1").XML, FlagRedefine); err != nil {
			t.Fatal(err)
		}
		e.wantMark("s1", "failed:vda")
	})

	t.Run("an empty top is not marked", func(t *testing.T) {
		e.mustCreate(snapXML("s3"), FlagDiskOnly|FlagAtomic) // s2's overlays hold no data on vdb, one write on vda
		e.drv.Hooks.AtStep = func(step string) error {
			if step == HookDeleteCopied {
				return e.drv.CancelOperation("empty")
			}
			return nil
		}
		defer func() { e.drv.Hooks.AtStep = nil }()
		// CHILDREN_ONLY of s2: s3 (active, empty overlays) only.
		_, err := e.drv.DeleteSnapshot(testCtx(t), e.name, "s2", DeleteRequest{OpID: "empty", Flags: DeleteChildrenOnly})
		if !errors.Is(err, ErrCancelled) || strings.Contains(err.Error(), "marked") {
			t.Fatalf("got %v, want cancelled with nothing marked", err)
		}
		e.wantMark("s3", "")
		e.wantMark("s2", "")
	})

	t.Run("deleting again completes the merge", func(t *testing.T) {
		e.mustDelete("s1", 0)
		e.wantTree("<-s2 s2<-s3 current=s3")
		e.wantChains(map[string][]string{"vda": {"vda.s3", "vda.s2", "vda.qcow2"}, "vdb": {"vdb.s3", "vdb.s2", "vdb.qcow2"}})
		e.wantMark("s2", "")
		checkRecordsMatchChains(t, e)
		e.checkData(ps)
	})
}

// record reads a snapshot's record.
func (e *env) record(name string) SnapshotRecord {
	e.t.Helper()
	rec, err := e.drv.Snapshot(e.name, name)
	if err != nil {
		e.t.Fatal(err)
	}
	return rec
}
