package qmp_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp/raw"

	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/qmp"
)

// Tests against a real qemu-system-x86_64. They are part of make test
// and skipped only under -short.

func TestQEMUSchema(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{})
	c := dial(t, vm.QMP)
	var schema []struct {
		Name     string `json:"name"`
		MetaType string `json:"meta-type"`
	}
	if err := c.Execute(testCtx(t), "query-qmp-schema", nil, &schema); err != nil {
		t.Fatal(err)
	}
	// Command names are masked in the schema, so count the kinds.
	commands := 0
	for _, e := range schema {
		if e.MetaType == "command" {
			commands++
		}
	}
	if len(schema) < 500 || commands < 100 {
		t.Errorf("schema: got %d entries, %d commands; want a full schema", len(schema), commands)
	}
	g, _ := c.Greeting()
	if g.Version.QEMU.Major < 7 {
		t.Logf("running against QEMU %s", g.Version)
	}
}

func TestQEMUTwoDiskTransaction(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{Disks: 2, Style: qemutest.Blockdev, SecondMonitor: true})
	c := dial(t, vm.QMP)
	observer := dial(t, vm.QMP2)
	ctx := testCtx(t)

	var actions []raw.TransactionAction
	var overlays []string
	for _, d := range vm.Disks {
		ov := filepath.Join(vm.Dir, d.Target+".snap1")
		overlays = append(overlays, ov)
		actions = append(actions, qmp.SnapshotSync(d.NodeName, ov, "ov-"+d.Target, raw.NewImageModeAbsolutePaths))
	}
	if err := c.Transaction(ctx, actions...); err != nil {
		t.Fatal(err)
	}
	disks, err := observer.Disks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(disks) != 2 {
		t.Fatalf("disks: got %d, want 2", len(disks))
	}
	for i, d := range disks {
		if d.File != overlays[i] || d.NodeName != "ov-"+vm.Disks[i].Target {
			t.Errorf("disk %s: active %s (%s), want %s (ov-%s)", d.Target, d.File, d.NodeName, overlays[i], vm.Disks[i].Target)
		}
		if len(d.Backing) != 1 || d.Backing[0].File != vm.Disks[i].Path {
			t.Errorf("disk %s: backing %v, want [%s]", d.Target, d.Backing, vm.Disks[i].Path)
		}
		if _, err := os.Stat(overlays[i]); err != nil {
			t.Errorf("overlay file: %v", err)
		}
	}
}

func TestQEMUFailedTransactionKeepsClass(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{Disks: 1, Style: qemutest.Legacy, SecondMonitor: true})
	c := dial(t, vm.QMP)
	ctx := testCtx(t)
	ov := filepath.Join(vm.Dir, "vda.snap1")
	err := c.Transaction(ctx,
		qmp.SnapshotSync(vm.Disks[0].NodeName, ov, "ov-vda", raw.NewImageModeAbsolutePaths),
		qmp.SnapshotSync("no-such-node", filepath.Join(vm.Dir, "x.snap1"), "", raw.NewImageModeAbsolutePaths))
	var qe *qmp.Error
	if !errors.As(err, &qe) {
		t.Fatalf("got %T %v, want *qmp.Error", err, err)
	}
	if qe.Class != "GenericError" || qe.Command != "transaction" || !strings.Contains(qe.Desc, "no-such-node") {
		t.Errorf("got %+v, want a GenericError naming no-such-node", qe)
	}
	// QEMU rolled the graph back.
	disks, err := dial(t, vm.QMP2).Disks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if disks[0].File != vm.Disks[0].Path {
		t.Errorf("after failed transaction: active %s, want %s", disks[0].File, vm.Disks[0].Path)
	}
	// The session is still usable.
	if _, err := c.QueryStatus(ctx); err != nil {
		t.Errorf("query-status after a failed transaction: %v", err)
	}
}

func TestQEMUActiveCommitReadyBeforeReply(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{Disks: 1, Style: qemutest.Legacy, SecondMonitor: true})
	c := dial(t, vm.QMP)
	ctx := testCtx(t)
	d := vm.Disks[0]
	ov := filepath.Join(vm.Dir, "vda.snap1")
	if err := c.Transaction(ctx, qmp.SnapshotSync(d.NodeName, ov, "ov-vda", raw.NewImageModeAbsolutePaths)); err != nil {
		t.Fatal(err)
	}

	const job = "commit-vda"
	sub, err := c.Subscribe(qmp.Filter{Names: []string{"JOB_STATUS_CHANGE", "BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED"}, ID: job})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	yes := true
	if err := c.BlockCommit(ctx, qmp.BlockCommitArgs{
		JobID: job, Device: d.Drive, TopNode: "ov-vda", BaseNode: d.NodeName,
		AutoFinalize: &yes, AutoDismiss: &yes,
	}); err != nil {
		t.Fatal(err)
	}
	// QEMU sends the job's first events (JOB_STATUS_CHANGE "created" and
	// "running", and with an empty overlay at times BLOCK_JOB_READY)
	// before the command's reply; a client that subscribes after the
	// reply misses them.
	if n := sub.Len(); n == 0 {
		t.Error("no job event queued when block-commit returned; QEMU sends JOB_STATUS_CHANGE before the reply")
	}
	if _, err := sub.Wait(ctx, func(ev qmp.Event) bool { return ev.Event == "BLOCK_JOB_READY" }); err != nil {
		t.Fatalf("READY: %v", err)
	}
	if err := c.BlockJobComplete(ctx, job); err != nil {
		t.Fatal(err)
	}
	ev, err := sub.Wait(ctx, func(ev qmp.Event) bool { return ev.Event == "BLOCK_JOB_COMPLETED" })
	if err != nil {
		t.Fatalf("COMPLETED: %v", err)
	}
	if msg, ok := ev.Data["error"]; ok {
		t.Fatalf("COMPLETED with error %v", msg)
	}
	disks, err := dial(t, vm.QMP2).Disks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if disks[0].File != d.Path || disks[0].NodeName != d.NodeName {
		t.Errorf("after commit: active %s (%s), want %s (%s)", disks[0].File, disks[0].NodeName, d.Path, d.NodeName)
	}
	jobs, err := c.QueryBlockJobs(ctx)
	if err != nil || len(jobs) != 0 {
		t.Errorf("jobs after auto-dismiss: got %v, %v", jobs, err)
	}
}

func TestQEMUConcurrentCommandsWhileEventsFlow(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{Disks: 2, Style: qemutest.Legacy})
	c := dial(t, vm.QMP)
	ctx := testCtx(t)
	sub, err := c.Subscribe(qmp.Filter{Names: []string{"STOP", "RESUME"}})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()

	stopFlip := make(chan struct{})
	flipped := make(chan error, 1)
	go func() {
		// stop and cont make QEMU send STOP and RESUME, the former
		// before stop's own reply.
		n := 0
		for {
			select {
			case <-stopFlip:
				flipped <- nil
				return
			default:
			}
			var err error
			if n%2 == 0 {
				err = c.Cont(ctx)
			} else {
				err = c.Stop(ctx)
			}
			if err != nil {
				flipped <- err
				return
			}
			n++
		}
	}()

	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 40; i++ {
				switch (g + i) % 3 {
				case 0:
					st, err := c.QueryStatus(ctx)
					if err != nil || st.Status == "" {
						errs <- errors.Join(err, errors.New("query-status without a status"))
						return
					}
				case 1:
					disks, err := c.Disks(ctx)
					if err != nil || len(disks) != 2 {
						errs <- errors.Join(err, errors.New("query-block without two disks"))
						return
					}
				case 2:
					cmds, err := c.QueryCommands(ctx)
					if err != nil || !cmds["transaction"] {
						errs <- errors.Join(err, errors.New("query-commands without transaction"))
						return
					}
				}
			}
		}(g)
	}
	wg.Wait()
	close(stopFlip)
	if err := <-flipped; err != nil {
		t.Fatalf("stop/cont: %v", err)
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if sub.Len() < 2 {
		t.Errorf("STOP/RESUME events seen: %d, want events flowing during the test", sub.Len())
	}
	if st := c.Stats(); st.LateReply != 0 || st.Garbage != 0 {
		t.Errorf("stats: %+v, want no late replies or garbage", st)
	}
}

func TestQEMUDiskDiscovery(t *testing.T) {
	for _, style := range []qemutest.Style{qemutest.Legacy, qemutest.Blockdev, qemutest.MachineNone} {
		t.Run(style.String(), func(t *testing.T) {
			vm := qemutest.Start(t, qemutest.Options{Disks: 3, Style: style})
			c := dial(t, vm.QMP)
			ctx := testCtx(t)
			// Give one disk a backing chain, so discovery walks it.
			ov := filepath.Join(vm.Dir, "vda.snap1")
			if err := c.Transaction(ctx, qmp.SnapshotSync(vm.Disks[0].NodeName, ov, "ov-vda", raw.NewImageModeAbsolutePaths)); err != nil {
				t.Fatal(err)
			}
			disks, err := c.Disks(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(disks) != len(vm.Disks) {
				t.Fatalf("got %d disks, want %d", len(disks), len(vm.Disks))
			}
			for i, got := range disks {
				want := vm.Disks[i]
				wantFile, wantNode := want.Path, want.NodeName
				var wantBacking []qmp.Image
				if i == 0 {
					wantFile, wantNode = ov, "ov-vda"
					wantBacking = []qmp.Image{{File: want.Path, Format: "qcow2"}}
				}
				if got.Target != want.Target || got.Device != want.Drive || got.NodeName != wantNode ||
					got.File != wantFile || got.Format != "qcow2" || !equalImages(got.Backing, wantBacking) {
					t.Errorf("disk %d:\n got %+v\nwant target=%s device=%s node=%s file=%s backing=%v",
						i, got, want.Target, want.Drive, wantNode, wantFile, wantBacking)
				}
			}
		})
	}
}

func equalImages(a, b []qmp.Image) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestQEMUSecondClientWaits(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{})
	_ = dial(t, vm.QMP)
	// QEMU serves one client per QMP socket; the second gets no greeting
	// and must time out rather than hang.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := qmp.Dial(ctx, vm.QMP)
	if !errors.Is(err, qmp.ErrGreeting) || !errors.Is(err, qmp.ErrTimeout) {
		t.Errorf("second client: got %v, want ErrGreeting and ErrTimeout", err)
	}
}

func TestQEMUQuitDisconnects(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{})
	c := dial(t, vm.QMP)
	ctx := testCtx(t)
	if err := c.Quit(ctx); err != nil && !errors.Is(err, qmp.ErrDisconnected) {
		t.Fatalf("quit: %v", err)
	}
	select {
	case <-c.Disconnected():
	case <-time.After(10 * time.Second):
		t.Fatal("no disconnect after quit")
	}
	select {
	case <-vm.Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("QEMU still running after quit")
	}
	if _, err := c.QueryStatus(ctx); !errors.Is(err, qmp.ErrDisconnected) {
		t.Errorf("after quit: got %v, want ErrDisconnected", err)
	}
	if err := c.Connect(ctx); err == nil {
		t.Error("reconnect to an exited QEMU succeeded")
	}
}

// TestQEMUPCI lists the disks' PCI functions with their device ids, and
// a bridge with the number of the bus behind it: none in a VM that has
// not run its firmware, which numbers that bus.
func TestQEMUPCI(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{Disks: 2, Style: qemutest.Blockdev, Extra: []string{
		"-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,addr=0x10"}})
	c := dial(t, vm.QMP)
	pci, err := c.QueryPCI(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]qmp.PCIDevice{}
	for _, d := range pci.Devices {
		if d.QdevID != "" {
			byID[d.QdevID] = d
		}
	}
	// q35 with -nodefaults: the disks take the first free slots in order.
	for _, want := range []qmp.PCIDevice{{Slot: 1, QdevID: "vda"}, {Slot: 2, QdevID: "vdb"}, {Slot: 0x10, QdevID: "rp1", Bridge: true}} {
		if got := byID[want.QdevID]; got != want {
			t.Errorf("got %+v, want %+v", got, want)
		}
	}
	if len(pci.Roots) != 1 || pci.Roots[0] != 0 || len(pci.Devices) != 7 { // host bridge, 2 disks, root port, LPC, SATA, SMBus
		t.Errorf("got %+v", pci)
	}
}
