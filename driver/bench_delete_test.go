package driver

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/qmp"
)

// BenchmarkDelete measures snapshot delete by merge against real QEMU:
// the latency of deleting a snapshot whose overlays are empty (1 and 8
// disks), and the throughput of merging an overlay that holds 1 GiB,
// against qemu-img commit of the same data offline.
func BenchmarkDelete(b *testing.B) {
	for _, n := range []int{1, 8} {
		b.Run(fmt.Sprintf("empty/disks=%d", n), func(b *testing.B) { benchDeleteEmpty(b, n) })
	}
	b.Run("merge-1GiB", benchMerge)
}

// benchDeleteEmpty times DeleteSnapshot of a snapshot just taken: the
// chain goes from depth 1 back to 0 each time, on one QEMU.
func benchDeleteEmpty(b *testing.B, disks int) {
	drv, err := Open(Config{StateDir: filepath.Join(qemutest.TempDir(b), "state")}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer drv.Close()
	ctx := context.Background()
	vm := qemutest.Start(b, qemutest.Options{Disks: disks, Style: qemutest.Blockdev})
	if _, err := drv.AttachDomain(ctx, DomainConfig{Name: "vm", QMP: vm.QMP}); err != nil {
		b.Fatal(err)
	}
	var totals []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		name := fmt.Sprintf("s%d", i)
		if _, err := drv.CreateSnapshot(ctx, "vm", CreateRequest{XML: snapXML(name), Flags: FlagDiskOnly | FlagAtomic}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		if _, err := drv.DeleteSnapshot(ctx, "vm", name, DeleteRequest{}); err != nil {
			b.Fatal(err)
		}
		totals = append(totals, time.Since(start))
	}
	b.StopTimer()
	b.ReportMetric(ms(median(totals)), "median-ms")
}

const mergeBytes = 1 << 30

// benchMerge merges 1 GiB live, on a fresh QEMU each time, and commits
// the same data with qemu-img offline; it reports both throughputs and
// live/offline, which should be at least 0.8.
func benchMerge(b *testing.B) {
	for _, tool := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Fatalf("%s is needed: run make deps", tool)
		}
	}
	ctx := context.Background()
	var live, offline []time.Duration
	b.ResetTimer()
	b.StopTimer()
	for i := 0; i < b.N; i++ {
		live = append(live, mergeLive(ctx, b))
		offline = append(offline, commitOffline(b))
	}
	liveRate := float64(mergeBytes) / median(live).Seconds() / (1 << 20)
	offlineRate := float64(mergeBytes) / median(offline).Seconds() / (1 << 20)
	b.ReportMetric(liveRate, "live-MiB/s")
	b.ReportMetric(offlineRate, "offline-MiB/s")
	b.ReportMetric(liveRate/offlineRate, "live/offline")
}

// mergeLive writes 1 GiB into a fresh snapshot's overlay through QEMU,
// then times its merge.
func mergeLive(ctx context.Context, b *testing.B) time.Duration {
	vm := qemutest.Start(b, qemutest.Options{Disks: 1, Style: qemutest.Blockdev, DiskSize: "2G", SecondMonitor: true})
	defer vm.Kill()
	drv, err := Open(Config{StateDir: filepath.Join(vm.Dir, "state")}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer drv.Close()
	if _, err := drv.AttachDomain(ctx, DomainConfig{Name: "vm", QMP: vm.QMP}); err != nil {
		b.Fatal(err)
	}
	if _, err := drv.CreateSnapshot(ctx, "vm", CreateRequest{XML: snapXML("s"), Flags: FlagDiskOnly | FlagAtomic}); err != nil {
		b.Fatal(err)
	}
	obs, err := qmp.Dial(ctx, vm.QMP2)
	if err != nil {
		b.Fatal(err)
	}
	defer obs.Close()
	// 64 MiB a command: qemu-io holds the whole buffer in QEMU.
	target := vm.Disks[0].Target
	for off := 0; off < mergeBytes; off += 64 << 20 {
		cmd := fmt.Sprintf(`qemu-io -d /machine/peripheral/%s/virtio-backend "write -P 0x5a %d 64M"`, target, off)
		if _, err := obs.HumanMonitorCommand(ctx, cmd); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := obs.HumanMonitorCommand(ctx, fmt.Sprintf(`qemu-io -d /machine/peripheral/%s/virtio-backend "flush"`, target)); err != nil {
		b.Fatal(err)
	}
	b.StartTimer()
	start := time.Now()
	res, err := drv.DeleteSnapshot(ctx, "vm", "s", DeleteRequest{})
	took := time.Since(start)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	if res.MergedBytes < mergeBytes {
		b.Fatalf("merged %d bytes, want at least %d: the writes did not reach the overlay", res.MergedBytes, mergeBytes)
	}
	return took
}

// commitOffline makes the same base and overlay with qemu-img and
// qemu-io and times qemu-img commit.
func commitOffline(b *testing.B) time.Duration {
	dir := b.TempDir()
	base, overlay := filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "overlay.qcow2")
	run := func(name string, args ...string) {
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			b.Fatalf("%s %v: %v: %s", name, args, err, out)
		}
	}
	run("qemu-img", "create", "-q", "-f", "qcow2", base, "2G")
	run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", overlay)
	run("qemu-io", "-f", "qcow2", overlay, "-c", fmt.Sprintf("write -P 0x5a 0 %d", mergeBytes))
	start := time.Now()
	run("qemu-img", "commit", "-q", "-f", "qcow2", overlay)
	return time.Since(start)
}
