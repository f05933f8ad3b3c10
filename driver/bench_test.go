package driver

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp/raw"

	"github.com/qsnapd/qsnapd/internal/qcow2"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/internal/testing/testguest"
	"github.com/qsnapd/qsnapd/qmp"
	"github.com/qsnapd/qsnapd/transaction"
)

// layersPerVM bounds the backing chains a benchmark grows: every
// snapshot adds a layer, and what a snapshot costs QEMU grows with the
// chain (its full read, query-block, about 2.7 ms for 8 disks 8 layers
// deep; the switch, whose permission update walks every layer), which
// would measure the chain rather than the snapshot. Real chains are a
// few layers deep; BenchmarkSnapshotDepth measures deep ones.
const layersPerVM = 4

// BenchmarkSnapshot measures a disk-only snapshot inside the daemon
// (validate, prepare, journal, switch, record) against real QEMU, and
// reports the medians of the total, of the prepare step and of the
// switch window. Unquiesced, the overlays enter QEMU in the switch
// (blockdev-snapshot-sync); atomic-preadd adds their nodes while
// preparing instead, as a quiesced snapshot does. The floor
// sub-benchmark is the bare QMP transaction of blockdev-snapshot actions
// on nodes added beforehand: the least a switch under a freeze can cost.
func BenchmarkSnapshot(b *testing.B) {
	for _, n := range []int{1, 8, 24} {
		for _, mode := range []string{"atomic", "atomic-preadd", "sequential"} {
			b.Run(fmt.Sprintf("%s/disks=%d", mode, n), func(b *testing.B) { benchSnapshot(b, n, mode) })
		}
		b.Run(fmt.Sprintf("floor/disks=%d", n), func(b *testing.B) { benchFloor(b, n) })
	}
}

func benchSnapshot(b *testing.B, disks int, mode string) {
	stateDir := filepath.Join(qemutest.TempDir(b), "state")
	cfg := Config{StateDir: stateDir, Transaction: "auto", Switch: SwitchAuto}
	switch mode {
	case "sequential":
		cfg.Transaction = "never"
	case "atomic-preadd":
		cfg.Switch, mode = string(transaction.SwitchPreadd), "atomic"
	}
	drv, err := Open(cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer drv.Close()
	ctx := context.Background()
	var totals, prepares, switches []time.Duration
	domain := ""
	var vm *qemutest.VM
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%layersPerVM == 0 {
			b.StopTimer()
			// One QEMU at a time: idle ones still cost CPU.
			if vm != nil {
				if err := drv.DetachDomain(ctx, domain); err != nil {
					b.Fatal(err)
				}
				vm.Kill()
			}
			vm = qemutest.Start(b, qemutest.Options{Disks: disks, Style: qemutest.Blockdev})
			domain = fmt.Sprintf("vm%d", i)
			if _, err := drv.AttachDomain(ctx, DomainConfig{Name: domain, QMP: vm.QMP}); err != nil {
				b.Fatal(err)
			}
			// The last VM's files go to disk now, not under the timed
			// fsyncs.
			syscall.Sync()
			b.StartTimer()
		}
		flags := FlagDiskOnly
		if mode == "atomic" {
			flags |= FlagAtomic
		}
		start := time.Now()
		res, err := drv.CreateSnapshot(ctx, domain, CreateRequest{XML: snapXML(fmt.Sprintf("s%d", i)), Flags: flags})
		if err != nil {
			b.Fatal(err)
		}
		totals = append(totals, time.Since(start))
		prepares = append(prepares, res.prepare)
		switches = append(switches, res.Switch)
	}
	b.StopTimer()
	b.ReportMetric(ms(median(totals)), "median-ms")
	b.ReportMetric(ms(median(prepares)), "prepare-ms")
	b.ReportMetric(ms(median(switches)), "switch-ms")
}

// BenchmarkSwitchPath compares the two ways overlays enter QEMU on
// unquiesced atomic snapshots, taking turns: every layersPerVM
// snapshots a fresh VM and the other path, so that the load of the
// machine falls on both alike. It reports each path's medians (total,
// prepare, switch) and the ratio of the totals, sync/preadd.
func BenchmarkSwitchPath(b *testing.B) {
	for _, n := range []int{8, 24} {
		b.Run(fmt.Sprintf("disks=%d", n), func(b *testing.B) { benchSwitchPath(b, n) })
	}
}

func benchSwitchPath(b *testing.B, disks int) {
	paths := []transaction.Switch{transaction.SwitchSync, transaction.SwitchPreadd}
	drvs := make([]*Driver, len(paths))
	for k, p := range paths {
		drv, err := Open(Config{StateDir: filepath.Join(qemutest.TempDir(b), "state"), Switch: string(p)}, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { drv.Close() })
		drvs[k] = drv
	}
	ctx := context.Background()
	type figures struct{ totals, prepares, switches []time.Duration }
	got := make([]figures, len(paths))
	var vm *qemutest.VM
	var drv *Driver
	domain, k := "", 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%layersPerVM == 0 {
			b.StopTimer()
			if vm != nil {
				if err := drv.DetachDomain(ctx, domain); err != nil {
					b.Fatal(err)
				}
				vm.Kill()
			}
			k = (i / layersPerVM) % len(paths)
			drv, domain = drvs[k], fmt.Sprintf("vm%d", i)
			vm = qemutest.Start(b, qemutest.Options{Disks: disks, Style: qemutest.Blockdev})
			if _, err := drv.AttachDomain(ctx, DomainConfig{Name: domain, QMP: vm.QMP}); err != nil {
				b.Fatal(err)
			}
			syscall.Sync()
			b.StartTimer()
		}
		start := time.Now()
		res, err := drv.CreateSnapshot(ctx, domain, CreateRequest{XML: snapXML(fmt.Sprintf("s%d", i)), Flags: FlagDiskOnly | FlagAtomic})
		if err != nil {
			b.Fatal(err)
		}
		f := &got[k]
		f.totals = append(f.totals, time.Since(start))
		f.prepares = append(f.prepares, res.prepare)
		f.switches = append(f.switches, res.Switch)
	}
	b.StopTimer()
	for k, p := range paths {
		b.ReportMetric(ms(median(got[k].totals)), string(p)+"-ms")
		b.ReportMetric(ms(median(got[k].prepares)), string(p)+"-prepare-ms")
		b.ReportMetric(ms(median(got[k].switches)), string(p)+"-switch-ms")
	}
	if s, p := median(got[0].totals), median(got[1].totals); s > 0 && p > 0 {
		b.ReportMetric(float64(s)/float64(p), "ratio-sync/preadd")
	}
}

func benchFloor(b *testing.B, disks int) {
	ctx := context.Background()
	var vm *qemutest.VM
	var c *qmp.Client
	var windows []time.Duration
	b.ResetTimer()
	b.StopTimer()
	for i := 0; i < b.N; i++ {
		if i%layersPerVM == 0 {
			if vm != nil {
				c.Close()
				vm.Kill()
			}
			vm = qemutest.Start(b, qemutest.Options{Disks: disks, Style: qemutest.Blockdev})
			var err error
			if c, err = qmp.Dial(ctx, vm.QMP); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { c.Close() })
		}
		infos, err := c.Disks(ctx)
		if err != nil {
			b.Fatal(err)
		}
		actions := make([]raw.TransactionAction, len(infos))
		for j, d := range infos {
			node := fmt.Sprintf("fl%d-%d", i, j)
			file := filepath.Join(vm.Dir, node)
			if err := qcow2.Create(file, qcow2.Options{VirtualSize: uint64(d.VirtualSize), BackingFile: d.File, BackingFormat: d.Format}); err != nil {
				b.Fatal(err)
			}
			if err := c.BlockdevAdd(ctx, qmp.BlockdevOptions{Driver: "qcow2", NodeName: node,
				FileOptions: &qmp.BlockdevOptions{Driver: "file", Filename: file}, NoBacking: true}); err != nil {
				b.Fatal(err)
			}
			actions[j] = qmp.Snapshot(d.NodeName, node)
		}
		b.StartTimer()
		start := time.Now()
		if err := c.Transaction(ctx, actions...); err != nil {
			b.Fatal(err)
		}
		windows = append(windows, time.Since(start))
		b.StopTimer()
	}
	b.ReportMetric(ms(median(windows)), "median-ms")
	b.ReportMetric(ms(median(windows)), "switch-ms")
}

// depths are the chain depths BenchmarkSnapshotDepth compares: images
// in each disk's chain when a snapshot is taken.
var depths = []int{1, 50, 100}

// BenchmarkSnapshotDepth measures a disk-only atomic snapshot of 4 disks
// at chain depths 1, 50 and 100 against real QEMU, and reports the
// median total at each depth, the ratio depth100/depth1 (target <= 1.5)
// and the median switch at each depth: QEMU's own part, whose permission
// update walks every layer of the chains. The depths take turns, one VM each, in every round of
// 4*len(depths) iterations, so that noise from other work on the
// machine falls on all of them alike. A chain is built on a second
// monitor with blockdev-snapshot-sync, which costs a fraction of a
// snapshot through the daemon; then the daemon looks at the domain once
// (warmChains), as a daemon that took the chain's snapshots itself has,
// and the timed snapshots follow at depths D, D+1, D+2, D+3. Run it with
// a fixed -benchtime that is a multiple of 12 (make bench uses 48x).
func BenchmarkSnapshotDepth(b *testing.B) {
	qemutest.Require(b)
	const disks = 4
	drv, err := Open(Config{StateDir: filepath.Join(qemutest.TempDir(b), "state")}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer drv.Close()
	ctx := context.Background()
	totals := make([][]time.Duration, len(depths))
	switches := make([][]time.Duration, len(depths))
	var vm *qemutest.VM
	domain := ""
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		round, j := i/(layersPerVM*len(depths)), i%(layersPerVM*len(depths))
		k := j / layersPerVM
		if j%layersPerVM == 0 {
			b.StopTimer()
			if vm != nil { // one QEMU at a time: idle ones still cost CPU
				if err := drv.DetachDomain(ctx, domain); err != nil {
					b.Fatal(err)
				}
				vm.Kill()
			}
			vm = qemutest.Start(b, qemutest.Options{Disks: disks, Style: qemutest.Blockdev, SecondMonitor: true})
			growChains(b, vm, depths[k]-1)
			domain = fmt.Sprintf("vm%d-%d", round, depths[k])
			if _, err := drv.AttachDomain(ctx, DomainConfig{Name: domain, QMP: vm.QMP}); err != nil {
				b.Fatal(err)
			}
			if err := drv.WaitRecovered(ctx, domain); err != nil {
				b.Fatal(err)
			}
			warmChains(b, drv, domain)
			// The files the chain was built with go to disk now, not
			// under the timed fsyncs.
			syscall.Sync()
			b.StartTimer()
		}
		start := time.Now()
		res, err := drv.CreateSnapshot(ctx, domain, CreateRequest{XML: snapXML(fmt.Sprintf("s%d", i)), Flags: FlagDiskOnly | FlagAtomic})
		if err != nil {
			b.Fatal(err)
		}
		totals[k] = append(totals[k], time.Since(start))
		switches[k] = append(switches[k], res.Switch)
	}
	b.StopTimer()
	for k, d := range depths {
		b.ReportMetric(ms(median(totals[k])), fmt.Sprintf("depth%d-ms", d))
		b.ReportMetric(ms(median(switches[k])), fmt.Sprintf("switch%d-ms", d))
	}
	if first, last := median(totals[0]), median(totals[len(depths)-1]); first > 0 && last > 0 {
		b.ReportMetric(float64(last)/float64(first), fmt.Sprintf("ratio-%d/%d", depths[len(depths)-1], depths[0]))
	}
}

// growChains puts layers overlays on every disk of vm, through its
// second monitor, with one QMP transaction of blockdev-snapshot-sync
// per layer: QEMU writes the files.
func growChains(b *testing.B, vm *qemutest.VM, layers int) {
	b.Helper()
	ctx := context.Background()
	c, err := qmp.Dial(ctx, vm.QMP2)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	tops := make([]string, len(vm.Disks))
	for i, d := range vm.Disks {
		tops[i] = d.NodeName
	}
	actions := make([]raw.TransactionAction, len(vm.Disks))
	for l := 0; l < layers; l++ {
		for i, d := range vm.Disks {
			node := fmt.Sprintf("g%d-%s", l, d.Target)
			actions[i] = qmp.SnapshotSync(tops[i], filepath.Join(vm.Dir, fmt.Sprintf("%s.g%d", d.Target, l)), node, raw.NewImageModeAbsolutePaths)
			tops[i] = node
		}
		if err := c.Transaction(ctx, actions...); err != nil {
			b.Fatalf("grow chains to %d: %v", l+1, err)
		}
	}
}

// warmChains has the daemon read a domain's chains in full once,
// untimed, as its first operation on the domain does: the record of the
// chains (chains.go) starts there.
func warmChains(b *testing.B, drv *Driver, domain string) {
	b.Helper()
	ctx := context.Background()
	dom, release, err := drv.lockDomain(ctx, domain)
	if err != nil {
		b.Fatal(err)
	}
	defer release()
	client, err := dom.ready()
	if err == nil {
		_, err = dom.readAll(ctx, client)
	}
	if err != nil {
		b.Fatal(err)
	}
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkQuiesce measures a QUIESCE snapshot with a real guest: its
// total inside the daemon, and its freeze window, from freeze sent to
// thaw reply, for 1 and 8 disks, next to the window's parts: the freeze
// and thaw round trips and the switch. The target is window <= freeze +
// 1-disk switch + thaw + 5 ms whatever the number of disks. Snapshots
// are quiesceGap apart, as a script's consecutive qsnapctl calls are at
// best. The agent channel is held (the default); per-operation/disks=1
// opens it for each snapshot, as qsnapd did before it held it: qemu-ga
// looks at a closed port every 100 ms, so a new connection waits for it
// up to that long, depending on when the last one closed. Run it with a
// fixed -benchtime (make bench uses 24x): every iteration adds a layer
// to each disk's chain.
func BenchmarkQuiesce(b *testing.B) {
	for _, n := range []int{1, 8} {
		b.Run(fmt.Sprintf("disks=%d", n), func(b *testing.B) { benchQuiesce(b, n, AgentHold) })
	}
	b.Run("per-operation/disks=1", func(b *testing.B) { benchQuiesce(b, 1, AgentPerOperation) })
}

// quiesceGap is the pause between BenchmarkQuiesce's snapshots, outside
// the timer.
const quiesceGap = 20 * time.Millisecond

func benchQuiesce(b *testing.B, disks int, channel string) {
	var serials []string
	for i := 0; i < disks; i++ {
		serials = append(serials, fmt.Sprintf("data%d", i+1))
	}
	g := testguest.Boot(b, testguest.Options{DataDisks: serials})
	drv, err := Open(Config{StateDir: filepath.Join(g.Dir, "state")}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer drv.Close()
	ctx := context.Background()
	if _, err := drv.AttachDomain(ctx, DomainConfig{Name: "g", QMP: g.QMP, Agent: g.QGA, AgentChannel: channel}); err != nil {
		b.Fatal(err)
	}
	var totals, windows, freezes, thaws, switches []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		time.Sleep(quiesceGap)
		b.StartTimer()
		res, err := drv.CreateSnapshot(ctx, "g", CreateRequest{XML: snapXML(fmt.Sprintf("q%d", i)), Flags: FlagDiskOnly | FlagAtomic | FlagQuiesce})
		if err != nil {
			b.Fatal(err)
		}
		totals = append(totals, res.Total)
		windows = append(windows, res.Freeze)
		freezes = append(freezes, res.freezeCall)
		thaws = append(thaws, res.thawCall)
		switches = append(switches, res.Switch)
	}
	b.StopTimer()
	b.ReportMetric(ms(median(totals)), "total-ms")
	b.ReportMetric(ms(median(windows)), "window-ms")
	b.ReportMetric(ms(median(freezes)), "freeze-ms")
	b.ReportMetric(ms(median(thaws)), "thaw-ms")
	b.ReportMetric(ms(median(switches)), "switch-ms")
}

// BenchmarkQuiesceScope measures the freeze window of a QUIESCE
// snapshot of one disk of a real guest with 8 data disks (8 ext4 file
// systems), with the snapshot-disks scope, which freezes that disk's
// file system alone, and with scope all, which freezes the 8: the
// scopes take turns, and it reports the medians of each window, freeze
// call and whole snapshot (the mapping, guest-get-fsinfo and QEMU's
// answers, comes before the freeze), and the ratio of the windows
// (target <= 0.3). Run it with a fixed, even -benchtime (make
// bench uses 24x): every iteration adds a layer to the disk's chain.
func BenchmarkQuiesceScope(b *testing.B) {
	var serials []string
	for i := range 8 {
		serials = append(serials, fmt.Sprintf("data%d", i+1))
	}
	g := testguest.Boot(b, testguest.Options{DataDisks: serials})
	drv, err := Open(Config{StateDir: filepath.Join(g.Dir, "state")}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer drv.Close()
	ctx := context.Background()
	if _, err := drv.AttachDomain(ctx, DomainConfig{Name: "g", QMP: g.QMP, Agent: g.QGA}); err != nil {
		b.Fatal(err)
	}
	disks := []string{diskXML("data1", "", "")}
	for _, s := range serials[1:] {
		disks = append(disks, diskXML(s, "no", ""))
	}
	scopes := []QuiesceScope{ScopeSnapshotDisks, ScopeAll}
	windows := make([][]time.Duration, len(scopes))
	freezes := make([][]time.Duration, len(scopes))
	totals := make([][]time.Duration, len(scopes))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		k := i % len(scopes)
		res, err := drv.CreateSnapshot(ctx, "g", CreateRequest{XML: snapXML(fmt.Sprintf("q%d", i), disks...),
			Flags: FlagDiskOnly | FlagAtomic | FlagQuiesce, QuiesceScope: scopes[k]})
		if err != nil {
			b.Fatal(err)
		}
		if _, fellBack := indication(res, IndQuiesceScopeFallback); fellBack {
			b.Fatalf("the scope fell back: %+v", res.Indications)
		}
		windows[k] = append(windows[k], res.Freeze)
		freezes[k] = append(freezes[k], res.freezeCall)
		totals[k] = append(totals[k], res.Total)
	}
	b.StopTimer()
	for k, s := range scopes {
		b.ReportMetric(ms(median(windows[k])), string(s)+"-window-ms")
		b.ReportMetric(ms(median(freezes[k])), string(s)+"-freeze-ms")
		b.ReportMetric(ms(median(totals[k])), string(s)+"-total-ms")
	}
	if scoped, all := median(windows[0]), median(windows[1]); all > 0 {
		b.ReportMetric(float64(scoped)/float64(all), "ratio-window")
	}
}
