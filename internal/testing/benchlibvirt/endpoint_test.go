//go:build benchlibvirt

package benchlibvirt

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
)

// TestBenchEndpoint times one command, `snapshot-create-as --disk-only
// --atomic --no-metadata`, three ways in one run (issue 14): the stock
// virsh through qsnapd's libvirt endpoint, qsnapctl through qsnapd's
// API, and the stock virsh through libvirtd, for 1 and 8 disks of paused
// VMs. Each run takes one snapshot per way, the order rotating, and adds
// a layer to every disk of every VM, so the chains stay equally deep.
func TestBenchEndpoint(t *testing.T) {
	ctx := benchContext(t)

	work := workDir(t)
	daemonBin, ctlBin := binaries(t, work)
	lv := startLibvirt(ctx, t, work)
	qs := startQsnapd(t, daemonBin, ctlBin, work)
	virsh := lookSbin(t, "virsh")
	endpointURI := "qemu+unix:///system?socket=" + qs.libvirtSocket

	type result struct {
		disks                      int
		endpoint, qsnapctl, libvrt []float64
	}
	var results []result
	for _, n := range []int{1, 8} {
		r := result{disks: n}
		name := fmt.Sprintf("qsbench-ep%d-%d", n, os.Getpid())
		lvDir := filepath.Join(work, fmt.Sprintf("ep%d", n))
		if err := os.Mkdir(lvDir, 0o755); err != nil {
			t.Fatal(err)
		}
		d := domain{Name: name, Emulator: lv.emulator, MemoryMiB: 128}
		lvSide := side{dom: name, dir: lvDir}
		for i, path := range blankImages(t, lvDir, n) {
			tgt := qemutest.TargetName(i)
			d.Disks = append(d.Disks, domainDisk{Target: tgt, Path: path})
			lvSide.targets = append(lvSide.targets, tgt)
		}
		lv.create(ctx, t, d, lvDir, true)
		// Two VMs on qsnapd, one per way, so that each chain grows by
		// one layer per run as libvirt's does.
		epName, ctlName := name+"-lv", name+"-ctl"
		epSide, ctlSide := side{dom: epName}, side{dom: ctlName}
		for _, s := range []*side{&epSide, &ctlSide} {
			vm := qemutest.Start(t, qemutest.Options{Disks: n, Style: qemutest.Blockdev})
			for _, disk := range vm.Disks {
				s.targets = append(s.targets, disk.Target)
			}
			s.dir = vm.Dir
			qs.attach(ctx, t, s.dom, vm.QMP, "")
		}

		ways := []struct {
			label string
			out   *[]float64
			cmd   func(ctx context.Context, snap string, run int) *exec.Cmd
		}{
			{"virsh → qsnapd", &r.endpoint, func(ctx context.Context, snap string, run int) *exec.Cmd {
				return exec.CommandContext(ctx, virsh, append([]string{"-c", endpointURI},
					snapshotArgs(epSide.dom, snap, false, epSide.targets, epSide.overlays(run))...)...)
			}},
			{"qsnapctl → qsnapd", &r.qsnapctl, func(ctx context.Context, snap string, run int) *exec.Cmd {
				return qs.command(ctx, snapshotArgs(ctlSide.dom, snap, false, ctlSide.targets, ctlSide.overlays(run))...)
			}},
			{"virsh → libvirtd", &r.libvrt, func(ctx context.Context, snap string, run int) *exec.Cmd {
				return lv.command(ctx, snapshotArgs(lvSide.dom, snap, false, lvSide.targets, lvSide.overlays(run))...)
			}},
		}
		for i := 0; i <= runs; i++ {
			snap := fmt.Sprintf("s%d", i)
			var line []string
			for k := range ways {
				w := ways[(i+k)%len(ways)]
				cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
				out, took, err := timed(w.cmd(cctx, snap, i))
				cancel()
				if err != nil {
					t.Fatalf("%d disks, %s, run %d: %v\n%s", n, w.label, i, err, out)
				}
				if i > 0 {
					*w.out = append(*w.out, ms(took))
				}
				line = append(line, fmt.Sprintf("%s %.1f ms", w.label, ms(took)))
			}
			if i == 0 {
				t.Logf("%d disks, warm-up (not counted): %s", n, strings.Join(line, ", "))
				continue
			}
			t.Logf("%d disks, run %2d: %s", n, i, strings.Join(line, ", "))
		}
		checkSources := func(who string, s side, sources func(context.Context, string) (map[string]string, error)) {
			got, err := sources(ctx, s.dom)
			if err != nil {
				t.Errorf("%s: list disks: %v", who, err)
				return
			}
			for tgt, want := range s.overlays(runs) {
				if got[tgt] != want {
					t.Errorf("%s: disk %s runs on %q, want %q", who, tgt, got[tgt], want)
				}
			}
		}
		checkSources("libvirtd", lvSide, lv.sources)
		checkSources("qsnapd (virsh)", epSide, qs.sources)
		checkSources("qsnapd (qsnapctl)", ctlSide, qs.sources)
		results = append(results, r)
	}

	var sb strings.Builder
	fmt.Fprintf(&sb, "virsh through qsnapd's libvirt endpoint vs qsnapctl vs libvirtd (issue 14)\n")
	fmt.Fprintf(&sb, "  %s; %s\n", lv.version(ctx), qs.version(ctx))
	fmt.Fprintf(&sb, "  snapshot-create-as --disk-only --atomic --no-metadata, paused TCG VMs, %d runs per way after one warm-up,\n", runs)
	fmt.Fprintf(&sb, "  the order of the three rotating; %d CPUs; times in ms, CLI to CLI: median [min..max]\n\n", numCPU())
	tw := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "disks\tvirsh → qsnapd\tqsnapctl → qsnapd\tvirsh → libvirtd\tendpoint/libvirtd\tendpoint/qsnapctl\t")
	for _, r := range results {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%.2f\t%.2f\t\n", r.disks, spread(r.endpoint), spread(r.qsnapctl), spread(r.libvrt),
			median(r.endpoint)/median(r.libvrt), median(r.endpoint)/median(r.qsnapctl))
	}
	tw.Flush()
	fmt.Print("\n" + sb.String())
	if outFile != "" {
		if err := os.WriteFile(outFile, []byte(sb.String()), 0o644); err != nil {
			t.Errorf("write the report: %v", err)
		}
	}
}
