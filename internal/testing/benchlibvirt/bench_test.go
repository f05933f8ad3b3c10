//go:build benchlibvirt

package benchlibvirt

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/internal/testing/testguest"
)

// The run, from the environment: RUNS measured snapshots per side and
// case (each case starts with one more, unmeasured); CASES, a comma
// separated subset of quiesced, 8 and 24; BENCH_LIBVIRT_OUT, a file for
// the report.
var (
	runs      = envInt("RUNS", 10)
	onlyCases = os.Getenv("CASES")
	outFile   = os.Getenv("BENCH_LIBVIRT_OUT")
)

// benchTimeout bounds the whole run; go test's own -timeout must be
// longer, since its panic would skip the cleanup.
const benchTimeout = 60 * time.Minute

// A benchCase is one line of the side-by-side table, with the issue's
// target for the ratio qsnapd/libvirt.
type benchCase struct {
	key     string
	title   string
	disks   int
	quiesce bool
	target  float64
}

var cases = []benchCase{
	{key: "quiesced", title: "quiesced, 2 disks", disks: 2, quiesce: true, target: 0.8},
	{key: "8", title: "unquiesced, 8 disks", disks: 8, target: 0.2},
	{key: "24", title: "unquiesced, 24 disks", disks: 24, target: 0.15},
}

// freezeSlackMS is the target for the freeze window: at most the
// raw freeze and thaw plus this.
const freezeSlackMS = 3.0

// caseResult holds one case's samples, in milliseconds.
type caseResult struct {
	benchCase
	libvirt, qsnapd       []float64 // CLI to CLI
	total, switched, held []float64 // qsnapd's in-daemon total, switch and freeze window
	// The raw agent's freeze and thaw on qsnapd's guest, and how many
	// rounds came before attaching and after detaching.
	rawFreeze, rawThaw  []float64
	rawBefore, rawAfter int
}

// bench is what every case shares.
type bench struct {
	lv             *libvirt
	qs             *qsnapd
	work           string
	kernel, initrd string // the test guest for libvirt: copies it may relabel
}

// TestBenchLibvirt times the same snapshots through virsh and through
// qsnapctl, each side on its own copy of the same VM, runs interleaved,
// and prints the medians, the ratios and the targets.
func TestBenchLibvirt(t *testing.T) {
	ctx := benchContext(t)

	selected := selectCases(t)
	work := workDir(t)
	daemonBin, ctlBin := binaries(t, work)
	kernel, initrd := testguest.Build(t)
	b := &bench{work: work, kernel: filepath.Join(work, "vmlinux"), initrd: filepath.Join(work, "initrd")}
	copyFile(t, kernel, b.kernel)
	copyFile(t, initrd, b.initrd)
	b.lv = startLibvirt(ctx, t, work)
	b.qs = startQsnapd(t, daemonBin, ctlBin, work)

	rep := &report{
		versions:  []string{b.lv.version(ctx), b.qs.version(ctx)},
		runs:      runs,
		loadStart: loadAverage(),
	}
	for _, c := range selected {
		var res *caseResult
		t.Run(c.key, func(t *testing.T) { res = b.run(ctx, t, c) })
		if res != nil {
			rep.cases = append(rep.cases, res)
		}
		if ctx.Err() != nil {
			t.Fatalf("stopped: %v", context.Cause(ctx))
		}
	}
	rep.loadEnd = loadAverage()

	var sb strings.Builder
	rep.write(&sb)
	fmt.Print("\n" + sb.String())
	if outFile != "" {
		if err := os.WriteFile(outFile, []byte(sb.String()), 0o644); err != nil {
			t.Errorf("write the report: %v", err)
		}
	}
}

// benchContext checks that a side-by-side bench can run here (root,
// QEMU) and returns its context: ended by Ctrl-C, SIGTERM or SIGHUP (the
// bench then cleans up) or after benchTimeout.
func benchContext(t *testing.T) context.Context {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the side-by-side bench needs root: it drives libvirt's system instance")
	}
	qemutest.Require(t)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	t.Cleanup(stop)
	ctx, cancel := context.WithTimeout(ctx, benchTimeout)
	t.Cleanup(cancel)
	return ctx
}

// side is one VM as one side sees it: its domain name, its disk targets
// and where its overlays go.
type side struct {
	dom     string
	targets []string
	dir     string
}

func (s side) overlays(run int) map[string]string {
	m := map[string]string{}
	for _, tgt := range s.targets {
		m[tgt] = filepath.Join(s.dir, fmt.Sprintf("%s.s%d", tgt, run))
	}
	return m
}

// run measures one case on fresh VMs: one warm-up snapshot per side, then
// RUNS each, the side that goes first alternating. Each run adds a layer
// to every disk on both sides (fresh overlay files, --no-metadata), so the
// chains are equally deep at every run.
func (b *bench) run(ctx context.Context, t *testing.T, c benchCase) *caseResult {
	res := &caseResult{benchCase: c}
	// Each side's overlays go next to its images: libvirt's in the run's
	// directory, qsnapd's in its VM's (where qsnapd allows them when no
	// directory is configured).
	lvDir := filepath.Join(b.work, c.key)
	if err := os.Mkdir(lvDir, 0o755); err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("qsbench-%s-%d", c.key, os.Getpid())
	lvSide := side{dom: name, dir: lvDir}
	qsSide := side{dom: name}

	if c.quiesce {
		// The test guest on both sides, booted together.
		disks := []string{"data1", "data2"}
		d := domain{Name: name, Emulator: b.lv.emulator, MemoryMiB: 256,
			Kernel: b.kernel, Initrd: b.initrd, Cmdline: "console=ttyS0 quiet panic=-1",
			SerialLog: filepath.Join(lvDir, "serial.log"), Agent: true}
		for i, s := range disks {
			tgt := qemutest.TargetName(i)
			path := filepath.Join(lvDir, s+".qcow2")
			makeGuestDisk(t, lvDir, s, path)
			d.Disks = append(d.Disks, domainDisk{Target: tgt, Path: path, Serial: s})
			lvSide.targets = append(lvSide.targets, tgt)
		}
		b.lv.create(ctx, t, d, lvDir, false)
		g := testguest.Boot(t, testguest.Options{DataDisks: disks})
		qsSide.targets = disks // qsnapd names a disk by its device id, the serial here
		qsSide.dir = g.Dir
		b.lv.waitAgent(ctx, t, name, []string{"/mnt/data1", "/mnt/data2"})

		actx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		f, th, err := rawFreezeThaw(actx, g.QGA, runs)
		cancel()
		if err != nil {
			t.Fatalf("raw freeze and thaw: %v", err)
		}
		res.rawFreeze, res.rawThaw, res.rawBefore = f, th, len(f)
		b.qs.attach(ctx, t, name, g.QMP, g.QGA)
		defer func() {
			// Detached, qsnapd lets go of the agent socket: time the
			// raw agent once more, so the figure brackets the runs.
			b.qs.detach(ctx, name)
			actx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			f, th, err := rawFreezeThaw(actx, g.QGA, runs)
			if err != nil {
				t.Logf("raw freeze and thaw after the runs: %v (left out)", err)
			}
			res.rawFreeze, res.rawThaw = append(res.rawFreeze, f...), append(res.rawThaw, th...)
			res.rawAfter = len(f)
		}()
	} else {
		// Paused VMs without a guest OS: q35, TCG, empty qcow2 disks.
		vm := qemutest.Start(t, qemutest.Options{Disks: c.disks, Style: qemutest.Blockdev})
		d := domain{Name: name, Emulator: b.lv.emulator, MemoryMiB: 128}
		paths := blankImages(t, lvDir, c.disks)
		for i, path := range paths {
			tgt := qemutest.TargetName(i)
			d.Disks = append(d.Disks, domainDisk{Target: tgt, Path: path})
			lvSide.targets = append(lvSide.targets, tgt)
		}
		for _, disk := range vm.Disks {
			qsSide.targets = append(qsSide.targets, disk.Target)
		}
		qsSide.dir = vm.Dir
		b.lv.create(ctx, t, d, lvDir, true)
		b.qs.attach(ctx, t, name, vm.QMP, "")
	}

	for i := 0; i <= runs; i++ {
		snap := fmt.Sprintf("s%d", i)
		var lvMS, qsMS float64
		var got qsnapdTimings
		lvStep := func() {
			args := snapshotArgs(lvSide.dom, snap, c.quiesce, lvSide.targets, lvSide.overlays(i))
			cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			defer cancel()
			_, took, err := timed(b.lv.command(cctx, args...))
			if err != nil {
				t.Fatalf("libvirt, run %d: %v", i, err)
			}
			lvMS = ms(took)
		}
		qsStep := func() {
			args := append([]string{"--json"}, snapshotArgs(qsSide.dom, snap, c.quiesce, qsSide.targets, qsSide.overlays(i))...)
			cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			defer cancel()
			out, took, err := timed(b.qs.command(cctx, args...))
			if err != nil {
				t.Fatalf("qsnapd, run %d: %v", i, err)
			}
			ans, err := decodeSnapshot(out, c.quiesce)
			if err != nil {
				t.Fatalf("qsnapd, run %d: %v", i, err)
			}
			qsMS = ms(took)
			got = qsnapdTimings{ans.Timings.TotalMS, ans.Timings.SwitchMS, ans.Timings.FreezeMS}
		}
		if i%2 == 0 {
			lvStep()
			qsStep()
		} else {
			qsStep()
			lvStep()
		}
		if i == 0 {
			t.Logf("warm-up: libvirt %.1f ms, qsnapd %.1f ms (not counted)", lvMS, qsMS)
			continue
		}
		held := ""
		if c.quiesce {
			held = fmt.Sprintf(", freeze window %.1f", got.held)
		}
		t.Logf("run %2d: libvirt %7.1f ms, qsnapd %7.1f ms (in-daemon total %.1f, switch %.1f%s)",
			i, lvMS, qsMS, got.total, got.switched, held)
		res.libvirt, res.qsnapd = append(res.libvirt, lvMS), append(res.qsnapd, qsMS)
		res.total, res.switched = append(res.total, got.total), append(res.switched, got.switched)
		if c.quiesce {
			res.held = append(res.held, got.held)
		}
	}

	// Every disk of both sides runs on its last overlay.
	b.checkSources(ctx, t, "libvirt", lvSide, b.lv.sources)
	b.checkSources(ctx, t, "qsnapd", qsSide, b.qs.sources)
	return res
}

type qsnapdTimings struct{ total, switched, held float64 }

func (b *bench) checkSources(ctx context.Context, t *testing.T, who string, s side, sources func(context.Context, string) (map[string]string, error)) {
	t.Helper()
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

// snapshotArgs is the command line both virsh and qsnapctl take for an
// external, disk-only, atomic snapshot without metadata, one new overlay
// per disk.
func snapshotArgs(dom, name string, quiesce bool, targets []string, overlays map[string]string) []string {
	args := []string{"snapshot-create-as", dom, name, "--no-metadata", "--disk-only", "--atomic"}
	if quiesce {
		args = append(args, "--quiesce")
	}
	for _, tgt := range targets {
		args = append(args, "--diskspec", tgt+",file="+overlays[tgt])
	}
	return args
}

// makeGuestDisk makes a data disk as the test guest's own are made: a
// fresh 64 MiB ext4 file system holding /serial, in a qcow2 image.
func makeGuestDisk(t *testing.T, dir, serial, path string) {
	t.Helper()
	seed := filepath.Join(dir, serial+".seed")
	raw := filepath.Join(dir, serial+".raw")
	defer os.RemoveAll(seed)
	defer os.Remove(raw)
	if err := os.Mkdir(seed, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(seed, "serial"), []byte(serial+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	steps := [][]string{
		{lookSbin(t, "mkfs.ext4"), "-F", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0", "-d", seed, raw, testguest.DiskSize},
		{"qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, path},
	}
	for _, s := range steps {
		if _, err := output(exec.Command(s[0], s[1:]...)); err != nil {
			t.Fatalf("disk %s: %v", serial, err)
		}
	}
}

// blankImages makes n empty 64 MiB qcow2 images in dir, as qemutest
// makes those of qsnapd's VM.
func blankImages(t *testing.T, dir string, n int) []string {
	t.Helper()
	var paths []string
	for i := range n {
		path := filepath.Join(dir, qemutest.TargetName(i)+".qcow2")
		if i == 0 {
			if _, err := output(exec.Command("qemu-img", "create", "-q", "-f", "qcow2", path, "64M")); err != nil {
				t.Fatal(err)
			}
		} else {
			copyFile(t, paths[0], path)
		}
		paths = append(paths, path)
	}
	return paths
}

// workDir is the run's directory, removed at the end. libvirt's QEMU
// runs as libvirt-qemu, which must reach the images and overlays in it.
func workDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "qslv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		t.Fatalf("copy %s: %v", from, err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

func selectCases(t *testing.T) []benchCase {
	t.Helper()
	if onlyCases == "" {
		return cases
	}
	var sel []benchCase
	for _, key := range strings.Split(onlyCases, ",") {
		found := false
		for _, c := range cases {
			if c.key == strings.TrimSpace(key) {
				sel, found = append(sel, c), true
			}
		}
		if !found {
			t.Fatalf("CASES: no case %q (cases: quiesced, 8, 24)", key)
		}
	}
	return sel
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// loadAverage is the host's one-minute load average, a hint of how noisy
// the run was.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	if f := strings.Fields(string(b)); len(f) > 0 {
		return f[0]
	}
	return "?"
}

func numCPU() int { return runtime.NumCPU() }
