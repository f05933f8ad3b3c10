package driver

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp/raw"

	"github.com/qsnapd/qsnapd/internal/qcow2"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/internal/testing/testguest"
	"github.com/qsnapd/qsnapd/qmp"
)

// layersPerVM bounds the backing chains a benchmark grows: every
// snapshot adds a layer, and query-block's cost grows with the chain
// (about 2.7 ms for 8 disks 8 layers deep), which would measure the
// chain rather than the snapshot. Real chains are a few layers deep.
const layersPerVM = 4

// BenchmarkSnapshot measures a disk-only snapshot inside the daemon
// (validate, prepare, journal, switch, record) against real QEMU, and
// reports the medians of the total and of the switch window. The floor
// sub-benchmark is the bare QMP transaction of blockdev-snapshot actions
// on nodes added beforehand: the least any switch can cost.
func BenchmarkSnapshot(b *testing.B) {
	for _, n := range []int{1, 8, 24} {
		for _, mode := range []string{"atomic", "sequential"} {
			b.Run(fmt.Sprintf("%s/disks=%d", mode, n), func(b *testing.B) { benchSnapshot(b, n, mode) })
		}
		b.Run(fmt.Sprintf("floor/disks=%d", n), func(b *testing.B) { benchFloor(b, n) })
	}
}

func benchSnapshot(b *testing.B, disks int, mode string) {
	stateDir := filepath.Join(qemutest.TempDir(b), "state")
	transactionMode := "auto"
	if mode == "sequential" {
		transactionMode = "never"
	}
	drv, err := Open(Config{StateDir: stateDir, Transaction: transactionMode}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer drv.Close()
	ctx := context.Background()
	var totals, switches []time.Duration
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
		switches = append(switches, res.Switch)
	}
	b.StopTimer()
	b.ReportMetric(ms(median(totals)), "median-ms")
	b.ReportMetric(ms(median(switches)), "switch-ms")
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

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkQuiesce measures the freeze window of a QUIESCE snapshot with
// a real guest, from freeze sent to thaw reply, for 1 and 8 disks, next
// to its parts: the freeze and thaw round trips and the switch. The
// target is window <= freeze + 1-disk switch + thaw + 5 ms whatever the
// number of disks. Run it with a fixed -benchtime (make bench uses 24x):
// every iteration adds a layer to each disk's chain.
func BenchmarkQuiesce(b *testing.B) {
	for _, n := range []int{1, 8} {
		b.Run(fmt.Sprintf("disks=%d", n), func(b *testing.B) {
			var serials []string
			for i := 0; i < n; i++ {
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
			var windows, freezes, thaws, switches []time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				res, err := drv.CreateSnapshot(ctx, "g", CreateRequest{XML: snapXML(fmt.Sprintf("q%d", i)), Flags: FlagDiskOnly | FlagAtomic | FlagQuiesce})
				if err != nil {
					b.Fatal(err)
				}
				windows = append(windows, res.Freeze)
				freezes = append(freezes, res.freezeCall)
				thaws = append(thaws, res.thawCall)
				switches = append(switches, res.Switch)
			}
			b.StopTimer()
			b.ReportMetric(ms(median(windows)), "window-ms")
			b.ReportMetric(ms(median(freezes)), "freeze-ms")
			b.ReportMetric(ms(median(thaws)), "thaw-ms")
			b.ReportMetric(ms(median(switches)), "switch-ms")
		})
	}
}
