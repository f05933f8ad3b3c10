package qmpfake_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp/raw"

	"github.com/qsnapd/qsnapd/internal/qcow2"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/qmp"
	"github.com/qsnapd/qsnapd/qmp/qmpfake"
)

const size64M = 64 << 20

// fakeVM is a block layer behind a fake QMP socket, with a client.
type fakeVM struct {
	dir string
	bl  *qmpfake.BlockLayer
	c   *qmp.Client
}

// startFake serves a block layer with -blockdev disks vda, vdb, ... whose
// base images exist in a fresh short directory.
func startFake(t *testing.T, disks int) *fakeVM { return startFakeStyle(t, disks, qemutest.Blockdev) }

// startFakeStyle starts qemutest's fake VM, which lays out disks as real
// QEMU gets them for style.
func startFakeStyle(t *testing.T, disks int, style qemutest.Style) *fakeVM {
	t.Helper()
	vm := qemutest.Start(t, qemutest.Options{Backend: qemutest.Fake, Disks: disks, Style: style})
	return &fakeVM{dir: vm.Dir, bl: vm.Fake, c: dial(t, vm.QMP)}
}

// serveFake serves a block layer with disks on a socket in dir.
func serveFake(t *testing.T, dir string, disks []qmpfake.FakeDisk) *fakeVM {
	t.Helper()
	bl := qmpfake.NewBlockLayer(disks)
	srv, err := qmpfake.Start(filepath.Join(dir, "qmp.sock"))
	if err != nil {
		t.Fatal(err)
	}
	bl.Install(srv)
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("fake QMP peer: %v", err)
		}
	})
	return &fakeVM{dir: dir, bl: bl, c: dial(t, srv.Path)}
}

func dial(t *testing.T, path string) *qmp.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, path)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// addOverlay creates an empty image whose header names backing (empty
// for none) and adds it as a node opened without its backing.
func addOverlay(t *testing.T, ctx context.Context, c *qmp.Client, node, file, backing string) {
	t.Helper()
	format := ""
	if backing != "" {
		format = "qcow2"
	}
	if err := qmpfake.CreateQcow2(file, size64M, backing, format); err != nil {
		t.Fatal(err)
	}
	if err := c.BlockdevAdd(ctx, qmp.BlockdevOptions{Driver: "qcow2", NodeName: node, NoBacking: true,
		FileOptions: &qmp.BlockdevOptions{Driver: "file", Filename: file}}); err != nil {
		t.Fatalf("blockdev-add %s: %v", node, err)
	}
}

func syncSnapshot(t *testing.T, ctx context.Context, c *qmp.Client, node, file, overlay string) {
	t.Helper()
	if err := c.Transaction(ctx, qmp.SnapshotSync(node, file, overlay, raw.NewImageModeAbsolutePaths)); err != nil {
		t.Fatalf("snapshot %s: %v", node, err)
	}
}

func wantQMPError(t *testing.T, err error, class, desc string) {
	t.Helper()
	var qe *qmp.Error
	if !errors.As(err, &qe) || qe.Class != class || qe.Desc != desc {
		t.Errorf("got error %v, want %s: %s", err, class, desc)
	}
}

func TestBlockdevSnapshotSwitchesDisk(t *testing.T) {
	for _, tc := range []struct {
		name          string
		headerBacking bool
	}{
		// QEMU names an image by a json: pseudo-filename when its backing
		// node is not the one its header names.
		{"header without backing", false},
		{"header naming the base", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm := startFake(t, 1)
			ctx := testCtx(t)
			base, ov := filepath.Join(vm.dir, "vda.qcow2"), filepath.Join(vm.dir, "vda.ov1")
			backing := ""
			if tc.headerBacking {
				backing = base
			}
			addOverlay(t, ctx, vm.c, "ov-vda", ov, backing)
			if err := vm.c.Transaction(ctx, qmp.Snapshot("fmt-vda", "ov-vda")); err != nil {
				t.Fatal(err)
			}
			if node, file := vm.bl.Active("vda"); node != "ov-vda" || file != ov {
				t.Errorf("active: got %s %s, want ov-vda %s", node, file, ov)
			}
			if got, want := vm.bl.Chain("vda"), []string{ov, base}; !slices.Equal(got, want) {
				t.Errorf("chain: got %v, want %v", got, want)
			}
			disks, err := vm.c.Disks(ctx)
			if err != nil {
				t.Fatal(err)
			}
			d := disks[0]
			wantFile := ov
			if !tc.headerBacking {
				wantFile = fmt.Sprintf(`json:{"backing": {"driver": "qcow2", "file": {"driver": "file", "filename": %q}}, `+
					`"driver": "qcow2", "file": {"driver": "file", "filename": %q}}`, base, ov)
			}
			if d.Target != "vda" || d.NodeName != "ov-vda" || d.File != wantFile ||
				len(d.Backing) != 1 || d.Backing[0] != (qmp.Image{File: base, Format: "qcow2"}) {
				t.Errorf("disk: got %+v\nwant node ov-vda, file %s, backing %s", d, wantFile, base)
			}
		})
	}
}

func TestFailedTransactionLeavesDisksUnchanged(t *testing.T) {
	vm := startFake(t, 2)
	ctx := testCtx(t)
	addOverlay(t, ctx, vm.c, "ov-vdb", filepath.Join(vm.dir, "vdb.ov1"), "")
	for _, tc := range []struct {
		name   string
		second raw.TransactionAction
		desc   string
	}{
		{"unknown node", qmp.SnapshotSync("no-such-node", filepath.Join(vm.dir, "x.ov1"), "ov-x", raw.NewImageModeAbsolutePaths),
			"Cannot find device='' nor node-name='no-such-node'"},
		{"unknown overlay", qmp.Snapshot("fmt-vdb", "no-such-overlay"),
			"Cannot find device='no-such-overlay' nor node-name='no-such-overlay'"},
		{"node made busy by the first action", qmp.Snapshot("fmt-vda", "ov-vdb"),
			"Node 'fmt-vda' is busy: node is used as backing hd of 'ov-vda'"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := vm.c.Transaction(ctx,
				qmp.SnapshotSync("fmt-vda", filepath.Join(vm.dir, "vda.ov1"), "ov-vda", raw.NewImageModeAbsolutePaths),
				tc.second)
			wantQMPError(t, err, "GenericError", tc.desc)
			for _, tg := range []string{"vda", "vdb"} {
				want := filepath.Join(vm.dir, tg+".qcow2")
				if got := vm.bl.Chain(tg); !slices.Equal(got, []string{want}) {
					t.Errorf("%s chain after rollback: got %v, want [%s]", tg, got, want)
				}
			}
			if slices.Contains(vm.bl.Nodes(), "ov-vda") {
				t.Errorf("nodes after rollback: got %v, want no ov-vda", vm.bl.Nodes())
			}
		})
	}
}

// commitEvents subscribes to a job's events.
func commitEvents(t *testing.T, c *qmp.Client, job string) *qmp.Subscription {
	t.Helper()
	sub, err := c.Subscribe(qmp.Filter{Names: []string{"JOB_STATUS_CHANGE", "BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"}, ID: job})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Close)
	return sub
}

// eventTrace names the events up to and including last, such as
// "JOB_STATUS_CHANGE:created BLOCK_JOB_READY".
func eventTrace(t *testing.T, ctx context.Context, sub *qmp.Subscription, last string) string {
	t.Helper()
	var trace []string
	for {
		ev, err := sub.Next(ctx)
		if err != nil {
			t.Fatalf("after %v: %v", trace, err)
		}
		name := ev.Event
		if s, ok := ev.Data["status"].(string); ok {
			name += ":" + s
		}
		trace = append(trace, name)
		if name == last {
			return strings.Join(trace, " ")
		}
	}
}

// queued names the events queued on sub.
func queued(t *testing.T, ctx context.Context, sub *qmp.Subscription) string {
	t.Helper()
	var names []string
	for n := sub.Len(); n > 0; n-- {
		ev, err := sub.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, fmt.Sprintf("%s:%v", ev.Event, ev.Data["status"]))
	}
	return strings.Join(names, " ")
}

// TestMonitorsShareTheModel installs one block layer on two servers, as
// QEMU with two -qmp sockets: one graph, events on both, and quit or
// Kill ends both.
func TestMonitorsShareTheModel(t *testing.T) {
	for _, end := range []string{"quit", "kill"} {
		t.Run(end, func(t *testing.T) {
			vm := startFake(t, 1)
			srv2, err := qmpfake.Start(filepath.Join(vm.dir, "qmp2.sock"))
			if err != nil {
				t.Fatal(err)
			}
			vm.bl.Install(srv2)
			t.Cleanup(func() {
				if err := srv2.Close(); err != nil {
					t.Errorf("second monitor: %v", err)
				}
			})
			c2 := dial(t, srv2.Path)
			ctx := testCtx(t)
			sub1, sub2 := commitEvents(t, vm.c, "c1"), commitEvents(t, c2, "c1")
			syncSnapshot(t, ctx, vm.c, "fmt-vda", filepath.Join(vm.dir, "vda.ov1"), "ov-vda")
			if err := vm.c.BlockCommit(ctx, qmp.BlockCommitArgs{JobID: "c1", Device: "ov-vda"}); err != nil {
				t.Fatal(err)
			}
			for i, sub := range []*qmp.Subscription{sub1, sub2} {
				if got := eventTrace(t, ctx, sub, "BLOCK_JOB_READY"); got != "JOB_STATUS_CHANGE:created JOB_STATUS_CHANGE:running JOB_STATUS_CHANGE:ready BLOCK_JOB_READY" {
					t.Errorf("monitor %d: %s", i+1, got)
				}
			}
			if jobs, err := c2.QueryBlockJobs(ctx); err != nil || len(jobs) != 1 {
				t.Errorf("second monitor's jobs: %+v, %v", jobs, err)
			}
			shutdown, err := vm.c.Subscribe(qmp.Filter{Names: []string{"SHUTDOWN"}})
			if err != nil {
				t.Fatal(err)
			}
			defer shutdown.Close()
			if end == "quit" {
				if err := c2.Quit(ctx); err != nil && !errors.Is(err, qmp.ErrDisconnected) {
					t.Fatal(err)
				}
			} else {
				vm.bl.Kill()
				vm.bl.Kill() // QEMU dies once
			}
			for i, c := range []*qmp.Client{vm.c, c2} {
				select {
				case <-c.Disconnected():
				case <-ctx.Done():
					t.Fatalf("monitor %d still connected after %s", i+1, end)
				}
			}
			select {
			case <-vm.bl.Gone():
			default:
				t.Errorf("Gone not closed after %s", end)
			}
			if want := map[string]int{"quit": 1, "kill": 0}[end]; shutdown.Len() != want {
				t.Errorf("SHUTDOWN events after %s: %d, want %d", end, shutdown.Len(), want)
			}
			for _, path := range []string{vm.c.Path(), srv2.Path} {
				if _, err := qmp.Dial(ctx, path); err == nil {
					t.Errorf("%s accepts after %s", path, end)
				}
			}
		})
	}
}

func TestActiveCommit(t *testing.T) {
	yes := true
	for _, tc := range []struct {
		name       string
		end        func(ctx context.Context, c *qmp.Client, job string) error
		wantActive string
		wantEvents string
	}{
		{"complete pivots", func(ctx context.Context, c *qmp.Client, job string) error { return c.BlockJobComplete(ctx, job) },
			"fmt-vda", "JOB_STATUS_CHANGE:waiting JOB_STATUS_CHANGE:pending BLOCK_JOB_COMPLETED JOB_STATUS_CHANGE:concluded JOB_STATUS_CHANGE:null"},
		{"cancel keeps the overlay", func(ctx context.Context, c *qmp.Client, job string) error { return c.BlockJobCancel(ctx, job, false) },
			"ov2-vda", "JOB_STATUS_CHANGE:waiting JOB_STATUS_CHANGE:pending BLOCK_JOB_COMPLETED JOB_STATUS_CHANGE:concluded JOB_STATUS_CHANGE:null"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm := startFake(t, 1)
			ctx := testCtx(t)
			syncSnapshot(t, ctx, vm.c, "fmt-vda", filepath.Join(vm.dir, "vda.ov1"), "ov1-vda")
			syncSnapshot(t, ctx, vm.c, "ov1-vda", filepath.Join(vm.dir, "vda.ov2"), "ov2-vda")
			const job = "commit-vda"
			sub := commitEvents(t, vm.c, job)
			// No base-node: the commit goes to the deepest image.
			if err := vm.c.BlockCommit(ctx, qmp.BlockCommitArgs{JobID: job, Device: "ov2-vda", TopNode: "ov2-vda",
				AutoFinalize: &yes, AutoDismiss: &yes}); err != nil {
				t.Fatal(err)
			}
			if n := sub.Len(); n < 2 {
				t.Errorf("events queued at the reply: got %d, want created and running", n)
			}
			if got, want := eventTrace(t, ctx, sub, "BLOCK_JOB_READY"),
				"JOB_STATUS_CHANGE:created JOB_STATUS_CHANGE:running JOB_STATUS_CHANGE:ready BLOCK_JOB_READY"; got != want {
				t.Errorf("events to READY:\n got %s\nwant %s", got, want)
			}
			jobs, err := vm.c.QueryBlockJobs(ctx)
			if err != nil || len(jobs) != 1 || !jobs[0].Ready || jobs[0].Status != "ready" || jobs[0].Device != job {
				t.Errorf("query-block-jobs while ready: got %+v, %v", jobs, err)
			}
			err = vm.c.Transaction(ctx, qmp.SnapshotSync("ov2-vda", filepath.Join(vm.dir, "vda.ov3"), "ov3-vda", raw.NewImageModeAbsolutePaths))
			wantQMPError(t, err, "GenericError", "Node 'ov2-vda' is busy: block device is in use by block job: commit")
			// QEMU drains the job twice around a failed snapshot.
			eventTrace(t, ctx, sub, "JOB_STATUS_CHANGE:ready")
			eventTrace(t, ctx, sub, "JOB_STATUS_CHANGE:ready")

			if err := tc.end(ctx, vm.c, job); err != nil {
				t.Fatal(err)
			}
			if got := eventTrace(t, ctx, sub, "JOB_STATUS_CHANGE:null"); got != tc.wantEvents {
				t.Errorf("events to the end:\n got %s\nwant %s", got, tc.wantEvents)
			}
			if node, _ := vm.bl.Active("vda"); node != tc.wantActive {
				t.Errorf("active: got %s, want %s", node, tc.wantActive)
			}
			if jobs, err := vm.c.QueryBlockJobs(ctx); err != nil || len(jobs) != 0 {
				t.Errorf("jobs after auto-dismiss: got %v, %v", jobs, err)
			}
			if tc.wantActive == "fmt-vda" && slices.ContainsFunc(vm.bl.Nodes(), func(n string) bool { return strings.HasPrefix(n, "ov") }) {
				t.Errorf("nodes after commit: got %v, want the overlays gone with their last user", vm.bl.Nodes())
			}
		})
	}
}

// QEMU 7.2 keeps an overlay that blockdev-add made, with its backing
// link, after a commit drops it from the chain: the base stays busy
// until the overlay is deleted.
func TestCommittedAddedOverlayKeepsBaseBusy(t *testing.T) {
	vm := startFake(t, 1)
	ctx := testCtx(t)
	addOverlay(t, ctx, vm.c, "ov-vda", filepath.Join(vm.dir, "vda.ov1"), "")
	if err := vm.c.BlockdevSnapshot(ctx, "fmt-vda", "ov-vda"); err != nil {
		t.Fatal(err)
	}
	sub := commitEvents(t, vm.c, "c1")
	no := false
	if err := vm.c.BlockCommit(ctx, qmp.BlockCommitArgs{JobID: "c1", Device: "ov-vda", BaseNode: "fmt-vda", AutoDismiss: &no}); err != nil {
		t.Fatal(err)
	}
	eventTrace(t, ctx, sub, "BLOCK_JOB_READY")
	if err := vm.c.BlockJobComplete(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	eventTrace(t, ctx, sub, "JOB_STATUS_CHANGE:concluded")
	if jobs, err := vm.c.QueryBlockJobs(ctx); err != nil || len(jobs) != 1 || jobs[0].Status != "concluded" {
		t.Errorf("jobs before dismiss: got %+v, %v", jobs, err)
	}
	if err := vm.c.JobDismiss(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	ov2 := filepath.Join(vm.dir, "vda.ov2")
	err := vm.c.Transaction(ctx, qmp.SnapshotSync("fmt-vda", ov2, "ov2-vda", raw.NewImageModeAbsolutePaths))
	wantQMPError(t, err, "GenericError", "Node 'fmt-vda' is busy: node is used as backing hd of 'ov-vda'")
	if err := vm.c.BlockdevDel(ctx, "ov-vda"); err != nil {
		t.Fatal(err)
	}
	syncSnapshot(t, ctx, vm.c, "fmt-vda", ov2, "ov2-vda")
}

func TestBlockdevDel(t *testing.T) {
	vm := startFake(t, 1)
	ctx := testCtx(t)
	addOverlay(t, ctx, vm.c, "ov-vda", filepath.Join(vm.dir, "vda.ov1"), "")
	addOverlay(t, ctx, vm.c, "spare", filepath.Join(vm.dir, "spare"), "")
	if err := vm.c.BlockdevSnapshot(ctx, "fmt-vda", "ov-vda"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ node, desc string }{
		{"ov-vda", "Node ov-vda is in use"},
		{"fmt-vda", "Node 'fmt-vda' is busy: node is used as backing hd of 'ov-vda'"},
		{"file-vda", "Block device file-vda is in use"},
		{"nope", "Failed to find node with node-name='nope'"},
		{"spare", ""},
		{"spare", "Failed to find node with node-name='spare'"},
	} {
		err := vm.c.BlockdevDel(ctx, tc.node)
		if tc.desc == "" {
			if err != nil {
				t.Errorf("blockdev-del %s: %v", tc.node, err)
			}
			continue
		}
		wantQMPError(t, err, "GenericError", tc.desc)
	}
	// The inline protocol node went with its parent.
	if nodes := vm.bl.Nodes(); len(nodes) != 4 {
		t.Errorf("nodes: got %v, want file-vda fmt-vda and ov-vda with its protocol node", nodes)
	}
}

func TestQueryBlockNestsChain(t *testing.T) {
	vm := startFake(t, 1)
	ctx := testCtx(t)
	files := []string{filepath.Join(vm.dir, "vda.qcow2")}
	for i, node := range []string{"fmt-vda", "ov1", "ov2"} {
		if i > 0 {
			files = append([]string{filepath.Join(vm.dir, node)}, files...)
			syncSnapshot(t, ctx, vm.c, []string{"fmt-vda", "ov1"}[i-1], files[0], node)
		}
	}
	infos, err := vm.c.QueryBlock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ins := infos[0].Inserted
	if ins.NodeName != "ov2" || ins.File != files[0] || ins.BackingFileDepth != 2 || ins.BackingFile != files[1] {
		t.Errorf("inserted: got %+v", ins)
	}
	img := &ins.Image
	for i, f := range files {
		if img == nil || img.Filename != f || img.VirtualSize != size64M {
			t.Fatalf("image %d: got %+v, want %s", i, img, f)
		}
		if i+1 < len(files) && (img.BackingFilename != files[i+1] || img.BackingFilenameFormat != "qcow2") {
			t.Errorf("image %d: backing %q (%s), want %s", i, img.BackingFilename, img.BackingFilenameFormat, files[i+1])
		}
		img = img.BackingImage
	}
	if img != nil {
		t.Errorf("chain deeper than 3: %+v", img)
	}
	nodes, err := vm.c.QueryNamedBlockNodes(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range nodes {
		names = append(names, n.NodeName)
	}
	if len(names) != 6 || names[0] != "ov2" || names[5] != "file-vda" {
		t.Errorf("named nodes: got %v, want the 3 format and 3 protocol nodes, newest first", names)
	}
}

func TestBlockGraphShowsJob(t *testing.T) {
	vm := startFake(t, 2)
	ctx := testCtx(t)
	syncSnapshot(t, ctx, vm.c, "fmt-vdb", filepath.Join(vm.dir, "vdb.ov1"), "ov-vdb")
	sub := commitEvents(t, vm.c, "c1")
	if err := vm.c.BlockCommit(ctx, qmp.BlockCommitArgs{JobID: "c1", Device: "ov-vdb"}); err != nil {
		t.Fatal(err)
	}
	eventTrace(t, ctx, sub, "BLOCK_JOB_READY")
	g, err := vm.c.QueryBlockGraph(ctx)
	if err != nil {
		t.Fatal(err)
	}
	names := map[uint64]string{}
	var jobID uint64
	for _, n := range g.Nodes {
		names[n.ID] = n.Name
		if n.Type == "block-job" {
			jobID = n.ID
		}
	}
	var held []string
	for _, e := range g.Edges {
		if e.Parent == jobID {
			held = append(held, names[e.Child])
		}
	}
	if !slices.Contains(held, "ov-vdb") || !slices.Contains(held, "fmt-vdb") || slices.Contains(held, "fmt-vda") {
		t.Errorf("job c1 holds %v, want ov-vdb and fmt-vdb only", held)
	}
}

func TestRunStateAndCommands(t *testing.T) {
	vm := startFake(t, 0)
	ctx := testCtx(t)
	vm.bl.Disable("transaction")
	cmds, err := vm.c.QueryCommands(ctx)
	if err != nil || cmds["transaction"] || !cmds["blockdev-snapshot"] {
		t.Errorf("query-commands: got %v, %v; want blockdev-snapshot without transaction", cmds, err)
	}
	wantQMPError(t, vm.c.Transaction(ctx), "CommandNotFound", "The command transaction has not been found")
	wantQMPError(t, vm.c.Execute(ctx, "drive-mirror", nil, nil), "CommandNotFound", "The command drive-mirror has not been found")

	sub, err := vm.c.Subscribe(qmp.Filter{Names: []string{"STOP", "RESUME"}})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	for _, step := range []struct {
		do   func(context.Context) error
		want string
	}{{vm.c.Stop, "prelaunch"}, {vm.c.Cont, "running"}, {vm.c.Stop, "paused"}} {
		if err := step.do(ctx); err != nil {
			t.Fatal(err)
		}
		if st, err := vm.c.QueryStatus(ctx); err != nil || st.Status != step.want || st.Running != (step.want == "running") {
			t.Errorf("status: got %+v, %v; want %s", st, err, step.want)
		}
	}
	if n := sub.Len(); n != 2 {
		t.Errorf("STOP and RESUME events: got %d, want 2 (none for a stop in prelaunch)", n)
	}
	if err := vm.c.Quit(ctx); err != nil && !errors.Is(err, qmp.ErrDisconnected) {
		t.Fatalf("quit: %v", err)
	}
	<-vm.c.Disconnected()
	if err := vm.c.Connect(ctx); err == nil {
		t.Error("reconnect after quit succeeded")
	}
}

// TestCreatedImagesOpenInQEMU checks the images absolute-paths mode
// writes with qemu-img.
func TestCreatedImagesOpenInQEMU(t *testing.T) {
	qemutest.Require(t)
	vm := startFake(t, 1)
	ctx := testCtx(t)
	ov := filepath.Join(vm.dir, "vda.ov1")
	syncSnapshot(t, ctx, vm.c, "fmt-vda", ov, "ov-vda")
	for _, args := range [][]string{{"check", "-q", ov}, {"info", "--backing-chain", ov}} {
		out, err := exec.Command("qemu-img", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
		}
		if args[0] == "info" && !strings.Contains(string(out), "backing file: "+filepath.Join(vm.dir, "vda.qcow2")) {
			t.Errorf("qemu-img info: %s", out)
		}
	}
}

// TestParityWithQEMU runs one sequence against real QEMU and the fake
// and compares what a client sees.
func TestParityWithQEMU(t *testing.T) {
	for _, style := range []qemutest.Style{qemutest.Blockdev, qemutest.Legacy} {
		t.Run(style.String(), func(t *testing.T) {
			for _, script := range []struct {
				name string
				run  func(t *testing.T, dir string, c *qmp.Client) []string
			}{{"graph", parityScript}, {"grouped commit", groupedCommitScript}, {"existing overlay", existingOverlayScript}} {
				realVM := qemutest.Start(t, qemutest.Options{Disks: 2, Style: style})
				fake := startFakeStyle(t, 2, style)
				got := script.run(t, fake.dir, fake.c)
				want := script.run(t, realVM.Dir, dial(t, realVM.QMP))
				for i := range max(len(got), len(want)) {
					if i >= len(got) || i >= len(want) || got[i] != want[i] {
						t.Errorf("%s step %d:\nfake: %s\nqemu: %s", script.name, i, at(got, i), at(want, i))
					}
				}
			}
		})
	}
}

// groupedCommitScript is a snapshot delete's commits on two disks: an
// active commit on vda and one below the active layer on vdb, both
// with auto-finalize and auto-dismiss off, held at ready and pending,
// then completed, cancelled and finalized with the job-* commands.
func groupedCommitScript(t *testing.T, dir string, c *qmp.Client) []string {
	ctx := testCtx(t)
	var obs []string
	note := func(v any) {
		obs = append(obs, strings.ReplaceAll(fmt.Sprintf("%+v", v), dir, "$DIR"))
	}
	disks := func() {
		d, err := c.Disks(ctx)
		note(fmt.Sprint(d, err))
	}
	query := func(cmd string) {
		var reply any
		err := c.Execute(ctx, cmd, nil, &reply)
		note(fmt.Sprint(normalize(reply), err))
	}
	nodes := func() {
		nodes, err := c.QueryNamedBlockNodes(ctx, true)
		var names []string
		for _, n := range nodes {
			if !strings.HasPrefix(n.NodeName, "#") {
				names = append(names, fmt.Sprintf("%s(ro=%v,backing=%s)", n.NodeName, n.Ro, n.BackingFile))
			}
		}
		note(fmt.Sprint(names, err))
	}
	job := func(verb, id string) {
		note(c.Execute(ctx, verb, map[string]string{"id": id}, nil))
	}
	addOverlay(t, ctx, c, "ov1-vda", filepath.Join(dir, "vda.ov1"), filepath.Join(dir, "vda.qcow2"))
	addOverlay(t, ctx, c, "ov1-vdb", filepath.Join(dir, "vdb.ov1"), filepath.Join(dir, "vdb.qcow2"))
	addOverlay(t, ctx, c, "ov2-vdb", filepath.Join(dir, "vdb.ov2"), filepath.Join(dir, "vdb.ov1"))
	for _, s := range [][2]string{{"fmt-vda", "ov1-vda"}, {"fmt-vdb", "ov1-vdb"}, {"ov1-vdb", "ov2-vdb"}} {
		if err := c.BlockdevSnapshot(ctx, s[0], s[1]); err != nil {
			t.Fatal(err)
		}
	}
	no := false
	commit := func(id, device, top, base string, speed int64) {
		note(c.BlockCommit(ctx, qmp.BlockCommitArgs{JobID: id, Device: device, TopNode: top, BaseNode: base,
			AutoFinalize: &no, AutoDismiss: &no, Speed: speed}))
	}
	subA, subB := commitEvents(t, c, "ca"), commitEvents(t, c, "cb")
	commit("ca", "ov1-vda", "ov1-vda", "fmt-vda", 1<<20)
	commit("cb", "ov2-vdb", "ov1-vdb", "fmt-vdb", 0)
	note(eventTrace(t, ctx, subA, "BLOCK_JOB_READY"))
	note(eventTrace(t, ctx, subB, "JOB_STATUS_CHANGE:pending"))
	query("query-jobs")
	query("query-block-jobs")
	// Verbs out of turn, and a job that is not there.
	job("job-finalize", "ca")
	job("job-complete", "cb")
	job("job-dismiss", "ca")
	job("job-complete", "nope")
	job("job-cancel", "nope")
	commit("cb", "ov2-vdb", "ov1-vdb", "fmt-vdb", 0)
	disks()

	// Completed, the active commit waits in pending too; the chains
	// have not changed yet.
	job("job-complete", "ca")
	note(eventTrace(t, ctx, subA, "JOB_STATUS_CHANGE:pending"))
	query("query-jobs")
	disks()

	// Cancelled in pending: no change, the job stays until dismissed.
	job("job-cancel", "cb")
	note(eventTrace(t, ctx, subB, "JOB_STATUS_CHANGE:concluded"))
	query("query-jobs")
	job("job-cancel", "cb")
	job("job-dismiss", "cb")
	note(eventTrace(t, ctx, subB, "JOB_STATUS_CHANGE:null"))
	disks()

	// Again, then both finalized: vda runs on its base, ov1-vdb leaves
	// vdb's chain, and both overlays stay as nodes until blockdev-del.
	commit("cb", "ov2-vdb", "ov1-vdb", "fmt-vdb", 0)
	note(eventTrace(t, ctx, subB, "JOB_STATUS_CHANGE:pending"))
	job("job-finalize", "ca")
	job("job-finalize", "cb")
	note(eventTrace(t, ctx, subA, "JOB_STATUS_CHANGE:concluded"))
	note(eventTrace(t, ctx, subB, "JOB_STATUS_CHANGE:concluded"))
	query("query-jobs")
	job("job-dismiss", "ca")
	job("job-dismiss", "cb")
	note(eventTrace(t, ctx, subA, "JOB_STATUS_CHANGE:null"))
	note(eventTrace(t, ctx, subB, "JOB_STATUS_CHANGE:null"))
	disks()
	nodes()
	note(c.BlockdevDel(ctx, "ov1-vda"))
	note(c.BlockdevDel(ctx, "ov1-vdb"))
	nodes()

	// A ready active commit that job-cancel ends: no pivot.
	subC := commitEvents(t, c, "cc")
	commit("cc", "ov2-vdb", "ov2-vdb", "fmt-vdb", 0)
	note(eventTrace(t, ctx, subC, "BLOCK_JOB_READY"))
	job("job-cancel", "cc")
	note(eventTrace(t, ctx, subC, "JOB_STATUS_CHANGE:concluded"))
	query("query-block-jobs")
	job("job-dismiss", "cc")
	disks()
	nodes()
	query("query-block")
	return obs
}

// existingOverlayScript is qsnapd's switch without a freeze:
// blockdev-snapshot-sync in mode existing on overlays written as
// internal/qcow2 writes them (the header names the backing file and
// format), in a transaction and alone; its failures; the nodes it makes,
// which are QEMU's own; and the rollback of one by an active commit,
// after which its node is gone.
func existingOverlayScript(t *testing.T, dir string, c *qmp.Client) []string {
	ctx := testCtx(t)
	o := &observer{ctx: ctx, dir: dir, c: c}
	note, disks, replies := o.note, o.disks, o.replies
	overlay := func(name, backing string) string {
		file := filepath.Join(dir, name)
		if err := qcow2.Create(file, qcow2.Options{VirtualSize: size64M, BackingFile: backing, BackingFormat: "qcow2"}); err != nil {
			t.Fatal(err)
		}
		return file
	}
	existing := func(node, file, overlay string) raw.TransactionAction {
		return qmp.SnapshotSync(node, file, overlay, raw.NewImageModeExisting)
	}
	vda, vdb := filepath.Join(dir, "vda.qcow2"), filepath.Join(dir, "vdb.qcow2")
	junk := filepath.Join(dir, "junk")
	if err := os.WriteFile(junk, []byte("not an image"), 0o644); err != nil {
		t.Fatal(err)
	}
	ova, ovb := overlay("vda.ov1", vda), overlay("vdb.ov1", vdb)
	for _, err := range []error{
		// Each fails, and the transaction leaves vda as it was.
		c.Transaction(ctx, existing("fmt-vda", ova, "ov-vda"), existing("fmt-vdb", junk, "ov-vdb")),
		c.Transaction(ctx, existing("fmt-vda", ova, "ov-vda"), existing("fmt-vdb", filepath.Join(dir, "missing"), "ov-vdb")),
		c.Transaction(ctx, existing("fmt-vda", ova, "ov-vda"), existing("fmt-vdb", ova, "ov-vdb")),
		c.Transaction(ctx, existing("fmt-vda", ova, "fmt-vdb")),
		c.Transaction(ctx, existing("fmt-vda", ova, "")),
	} {
		note(err)
	}
	disks()
	note(c.Transaction(ctx, existing("fmt-vda", ova, "ov-vda"), existing("fmt-vdb", ovb, "ov-vdb")))
	disks()
	replies()
	// The nodes are QEMU's, not the monitor's.
	note(c.BlockdevDel(ctx, "ov-vda"))
	ovb2 := overlay("vdb.ov2", ovb)
	note(c.BlockdevSnapshotSync(ctx, "ov-vdb", ovb2, "ov-vdb"))
	note(c.BlockdevSnapshotSync(ctx, "ov-vdb", ovb2, "ov2-vdb"))
	disks()
	// Rolled back as the executor does: the overlay's node goes.
	sub := commitEvents(t, c, "rb")
	yes := true
	note(c.BlockCommit(ctx, qmp.BlockCommitArgs{JobID: "rb", Device: "ov2-vdb", TopNode: "ov2-vdb", BaseNode: "ov-vdb", AutoFinalize: &yes, AutoDismiss: &yes}))
	note(eventTrace(t, ctx, sub, "BLOCK_JOB_READY"))
	note(c.BlockJobComplete(ctx, "rb"))
	note(eventTrace(t, ctx, sub, "JOB_STATUS_CHANGE:null"))
	disks()
	note(c.BlockdevDel(ctx, "ov2-vdb"))
	replies()
	return o.obs
}

// TestParityStartOnChain starts QEMU and the fake on an image whose
// header names a backing chain, by relative paths.
func TestParityStartOnChain(t *testing.T) {
	qemutest.Require(t)
	dir := qemutest.TempDir(t)
	top := filepath.Join(dir, "vdz.top")
	for _, img := range [][2]string{{"vdz.base", ""}, {"vdz.mid", "vdz.base"}, {"vdz.top", "vdz.mid"}} {
		format := ""
		if img[1] != "" {
			format = "qcow2"
		}
		if err := qmpfake.CreateQcow2(filepath.Join(dir, img[0]), size64M, img[1], format); err != nil {
			t.Fatal(err)
		}
	}
	realVM := qemutest.Start(t, qemutest.Options{Extra: []string{
		"-drive", "if=none,id=drive-vdz,file=" + top + ",format=qcow2,node-name=fmt-vdz",
		"-device", "virtio-blk-pci,drive=drive-vdz,id=vdz"}})
	fake := serveFake(t, qemutest.TempDir(t), []qmpfake.FakeDisk{{Target: "vdz", Drive: "drive-vdz", NodeName: "fmt-vdz", File: top}})
	ctx, rc := testCtx(t), dial(t, realVM.QMP)
	for _, c := range []struct {
		cmd  string
		args any
	}{{"query-block", nil}, {"query-named-block-nodes", map[string]bool{"flat": true}}} {
		var got, want any
		if err := fake.c.Execute(ctx, c.cmd, c.args, &got); err != nil {
			t.Fatal(err)
		}
		if err := rc.Execute(ctx, c.cmd, c.args, &want); err != nil {
			t.Fatal(err)
		}
		if g, w := fmt.Sprint(normalize(got)), fmt.Sprint(normalize(want)); g != w {
			t.Errorf("%s:\nfake: %s\nqemu: %s", c.cmd, g, w)
		}
	}
}

func at(s []string, i int) string {
	if i < len(s) {
		return s[i]
	}
	return "(none)"
}

// observer notes what a parity script sees, one observation per step,
// with its directory written $DIR, so that the fake's and QEMU's compare.
type observer struct {
	ctx context.Context
	dir string
	c   *qmp.Client
	obs []string
}

func (o *observer) note(v any) {
	o.obs = append(o.obs, strings.ReplaceAll(fmt.Sprintf("%+v", v), o.dir, "$DIR"))
}

// disks notes the disks as the client reads them.
func (o *observer) disks() {
	d, err := o.c.Disks(o.ctx)
	o.note(fmt.Sprint(d, err))
}

// replies notes query-block and query-named-block-nodes whole.
func (o *observer) replies() {
	for _, q := range []struct {
		cmd  string
		args any
	}{{"query-block", nil}, {"query-named-block-nodes", map[string]bool{"flat": true}}} {
		var reply any
		err := o.c.Execute(o.ctx, q.cmd, q.args, &reply)
		o.note(fmt.Sprint(normalize(reply), err))
	}
}

// parityScript returns one observation per step, with dir written $DIR.
func parityScript(t *testing.T, dir string, c *qmp.Client) []string {
	ctx := testCtx(t)
	o := &observer{ctx: ctx, dir: dir, c: c}
	note, disks, replies := o.note, o.disks, o.replies
	// qom notes each disk's device's drive (what qsnapd checks instead of
	// walking the chains), the devices, and qom-get's errors.
	qom := func() {
		var bis []qmp.BlockInfo
		if err := c.Execute(ctx, "query-block", nil, &bis); err != nil {
			t.Fatal(err)
		}
		for _, bi := range bis {
			if bi.Qdev == "" {
				continue
			}
			drive, err := c.DeviceDrive(ctx, qmp.QOMPath(bi.Qdev))
			note(fmt.Sprint(bi.Qdev, " drive=", drive, " ", err))
		}
		for _, path := range []string{"/machine/peripheral", "/machine/peripheral-anon"} {
			props, err := c.QOMList(ctx, path)
			sort.Slice(props, func(i, k int) bool { return props[i].Name < props[k].Name })
			note(fmt.Sprint(path, props, err))
		}
		for _, path := range []string{"/machine/peripheral", "/machine/peripheral/vda", "/machine/peripheral/vda/virtio-backend"} {
			var typ string
			err := c.QOMGet(ctx, path, "type", &typ)
			note(fmt.Sprint(path, " type=", typ, " ", err))
		}
		var v any
		note(c.QOMGet(ctx, "/machine/peripheral/nodev", "drive", &v))
		note(c.QOMGet(ctx, "/machine/peripheral/vda", "nodrive", &v))
		note(c.QOMGet(ctx, "/machine/peripheral", "drive", &v))
		drive, err := c.DeviceDrive(ctx, "vda")
		note(fmt.Sprint("vda drive=", drive, " ", err))
	}
	qom()
	sub := commitEvents(t, c, "c1")
	ov := filepath.Join(dir, "vda.ov1")
	if err := qmpfake.CreateQcow2(ov, size64M, "", ""); err != nil {
		t.Fatal(err)
	}
	add := qmp.BlockdevOptions{Driver: "qcow2", NodeName: "ov-vda", NoBacking: true,
		FileOptions: &qmp.BlockdevOptions{Driver: "file", Filename: ov}}
	junk := filepath.Join(dir, "junk")
	if err := os.WriteFile(junk, []byte("not an image"), 0o644); err != nil {
		t.Fatal(err)
	}
	image := func(name, file string) qmp.BlockdevOptions {
		return qmp.BlockdevOptions{Driver: "qcow2", NodeName: name, NoBacking: true,
			FileOptions: &qmp.BlockdevOptions{Driver: "file", Filename: file}}
	}
	for _, err := range []error{
		c.BlockdevAdd(ctx, image("x", filepath.Join(dir, "missing"))),
		c.BlockdevAdd(ctx, image("x", junk)),
		c.BlockdevAdd(ctx, image("x", filepath.Join(dir, "vdb.qcow2"))),
		c.BlockdevAdd(ctx, image("1x", ov)),
		c.BlockdevAdd(ctx, image(strings.Repeat("x", 32), ov)),
		c.BlockdevAdd(ctx, qmp.BlockdevOptions{Driver: "raw", NodeName: "x", File: "file-vda"}),
		c.Transaction(ctx, qmp.SnapshotSync("fmt-vda", filepath.Join(dir, "y"), "", raw.NewImageModeAbsolutePaths)),
		c.Transaction(ctx, qmp.SnapshotSync("fmt-vda", filepath.Join(dir, "y"), "y", raw.NewImageModeExisting)),
		c.Transaction(ctx, qmp.SnapshotSync("fmt-vda", filepath.Join(dir, "y"), "fmt-vdb", raw.NewImageModeAbsolutePaths)),
		c.Transaction(ctx, qmp.Snapshot("fmt-vda", "fmt-vdb")),
		c.Transaction(ctx, qmp.Snapshot("fmt-vda", "file-vdb")),
		c.Transaction(ctx, raw.TransactionActionAbort{}),
		c.Transaction(ctx),
		c.BlockCommit(ctx, qmp.BlockCommitArgs{JobID: "c0", Device: "vda"}),
		c.BlockCommit(ctx, qmp.BlockCommitArgs{JobID: "c0", Device: "fmt-vda"}),
		c.BlockCommit(ctx, qmp.BlockCommitArgs{JobID: "c0", Device: "fmt-vda", TopNode: "fmt-vdb"}),
		c.BlockJobComplete(ctx, "c0"),
		c.JobDismiss(ctx, "c0"),
	} {
		note(err)
	}
	note(c.BlockdevAdd(ctx, add))
	note(c.BlockdevAdd(ctx, add))
	note(c.Transaction(ctx, qmp.Snapshot("fmt-vda", "ov-vda"),
		qmp.SnapshotSync("fmt-vdb", filepath.Join(dir, "vdb.ov1"), "ov-vdb", raw.NewImageModeAbsolutePaths)))
	disks()
	qom()
	note(c.Transaction(ctx, qmp.SnapshotSync("ov-vdb", filepath.Join(dir, "vdb.ov2"), "ov2-vdb", raw.NewImageModeAbsolutePaths),
		qmp.Snapshot("fmt-vda", "ov-vdb")))
	disks()
	note(c.BlockdevDel(ctx, "fmt-vda"))
	note(c.BlockdevDel(ctx, "ov-vda"))
	note(c.BlockCommit(ctx, qmp.BlockCommitArgs{JobID: "c1", Device: "ov-vda"}))
	note(eventTrace(t, ctx, sub, "BLOCK_JOB_READY"))
	jobs, err := c.QueryBlockJobs(ctx)
	note(fmt.Sprint(jobs, err))
	note(c.JobDismiss(ctx, "c1"))
	note(c.BlockCommit(ctx, qmp.BlockCommitArgs{JobID: "c9", Device: "ov-vda"}))
	// Each transaction drains the ready job, and a snapshot of its node
	// drains it again.
	for _, actions := range [][]raw.TransactionAction{
		nil,
		{raw.TransactionActionAbort{}},
		{qmp.Snapshot("fmt-vdb", "nonode")},
		{qmp.SnapshotSync("ov-vda", filepath.Join(dir, "vda.ov9"), "ov9", raw.NewImageModeAbsolutePaths)},
	} {
		if actions == nil {
			note(c.Execute(ctx, "transaction", map[string]any{"actions": []any{}}, nil))
		} else {
			note(c.Transaction(ctx, actions...))
		}
		note(queued(t, ctx, sub))
	}
	replies()
	note(c.BlockCommit(ctx, qmp.BlockCommitArgs{JobID: "c1", Device: "ov-vdb"}))
	note(c.BlockJobComplete(ctx, "c1"))
	note(eventTrace(t, ctx, sub, "JOB_STATUS_CHANGE:null"))
	disks()
	note(c.Transaction(ctx, qmp.SnapshotSync("fmt-vda", filepath.Join(dir, "vda.ov2"), "ov2-vda", raw.NewImageModeAbsolutePaths)))
	note(c.BlockdevDel(ctx, "ov-vda"))
	note(c.Transaction(ctx, qmp.SnapshotSync("fmt-vda", filepath.Join(dir, "vda.ov2"), "ov2-vda", raw.NewImageModeAbsolutePaths)))
	disks()
	// A commit below the active layer completes by itself.
	sub2 := commitEvents(t, c, "c2")
	syncSnapshot(t, ctx, c, "ov-vdb", filepath.Join(dir, "vdb.ov3"), "ov3-vdb")
	note(c.BlockCommit(ctx, qmp.BlockCommitArgs{JobID: "c2", Device: "ov3-vdb", TopNode: "ov-vdb"}))
	note(eventTrace(t, ctx, sub2, "JOB_STATUS_CHANGE:null"))
	disks()
	// Without a job id, the job takes the drive's name, if there is one.
	sub3 := commitEvents(t, c, "drive-vdb")
	note(c.BlockCommit(ctx, qmp.BlockCommitArgs{Device: "fmt-vdb"}))
	if err := c.BlockCommit(ctx, qmp.BlockCommitArgs{Device: "ov3-vdb"}); err != nil {
		note(err)
	} else {
		note(eventTrace(t, ctx, sub3, "BLOCK_JOB_READY"))
		note(c.BlockJobCancel(ctx, "drive-vdb", false))
		note(eventTrace(t, ctx, sub3, "JOB_STATUS_CHANGE:null"))
	}
	disks()
	nodes, err := c.QueryNamedBlockNodes(ctx, true)
	var names []string
	for _, n := range nodes {
		if !strings.HasPrefix(n.NodeName, "#") {
			names = append(names, fmt.Sprintf("%s(ro=%v)", n.NodeName, n.Ro))
		}
	}
	note(fmt.Sprint(names, err))
	replies()
	qom()
	return o.obs
}

// normalize drops what the fake does not model from a reply, and the
// numbers in auto-generated node names.
func normalize(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for _, k := range []string{"format-specific", "actual-size", "dirty-bitmaps"} {
			delete(v, k)
		}
		for k, e := range v {
			v[k] = normalize(e)
		}
	case []any:
		for i, e := range v {
			v[i] = normalize(e)
		}
	case string:
		if strings.HasPrefix(v, "#block") {
			return "#block"
		}
	}
	return v
}

// TestDeviceParityWithQEMU compares what identifies a disk's device to
// the guest (query-pci, and the serial, addr and parent_bus properties)
// on real QEMU and the fake, with and without serials.
func TestDeviceParityWithQEMU(t *testing.T) {
	for _, serials := range []bool{false, true} {
		t.Run(fmt.Sprintf("serials=%v", serials), func(t *testing.T) {
			var got [2][]string
			for i, backend := range []qemutest.Backend{qemutest.Fake, qemutest.Real} {
				vm := qemutest.Start(t, qemutest.Options{Backend: backend, Disks: 3, Style: qemutest.Blockdev, Serials: serials})
				got[i] = deviceScript(t, dial(t, vm.QMP))
			}
			for i := range max(len(got[0]), len(got[1])) {
				if i >= len(got[0]) || i >= len(got[1]) || got[0][i] != got[1][i] {
					t.Errorf("step %d:\nfake: %s\nqemu: %s", i, at(got[0], i), at(got[1], i))
				}
			}
		})
	}
}

func deviceScript(t *testing.T, c *qmp.Client) []string {
	ctx := testCtx(t)
	var obs []string
	pci, err := c.QueryPCI(ctx)
	obs = append(obs, fmt.Sprintf("%+v %v", pci, err))
	disks, err := c.Disks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range disks {
		dev := strings.TrimSuffix(d.QOMPath, "/virtio-backend")
		for _, q := range [][2]string{{d.QOMPath, "serial"}, {dev, "serial"}, {dev, "addr"}, {dev, "parent_bus"}, {d.QOMPath, "addr"}} {
			var v any
			err := c.QOMGet(ctx, q[0], q[1], &v)
			obs = append(obs, fmt.Sprintf("%s %s: %v %v", q[0], q[1], v, err))
		}
	}
	return obs
}
