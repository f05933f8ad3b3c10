package driver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/internal/testing/testguest"
)

// Tests with a real Linux guest and qemu-ga. A boot costs about 4 s of
// TCG, so they are few and share guests where they can.

// guestDriver opens a driver on a fresh state dir and attaches the guest.
func guestDriver(t *testing.T, g *testguest.Guest, cfg func(*Config)) *Driver {
	t.Helper()
	c := Config{StateDir: filepath.Join(g.Dir, "state"), ReconnectMin: 20 * time.Millisecond}
	if cfg != nil {
		cfg(&c)
	}
	drv, err := Open(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { drv.Close() })
	if _, err := drv.AttachDomain(testCtx(t), DomainConfig{Name: "guest", QMP: g.QMP, Agent: g.QGA}); err != nil {
		t.Fatal(err)
	}
	return drv
}

// through is the guest as a test speaks to it while drv holds its agent
// channel: through drv's client, the one connection QEMU serves.
func through(t *testing.T, drv *Driver, domain string, g *testguest.Guest) *testguest.Guest {
	t.Helper()
	dom, err := drv.domain(domain)
	if err != nil {
		t.Fatal(err)
	}
	return g.Through(dom.agent)
}

// snapshotPointImage converts the image a disk's snapshot sits on (with
// its chain) to a raw file the host can check, while QEMU holds it.
func snapshotPointImage(t *testing.T, image string) string {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "point.raw")
	if out, err := exec.Command("qemu-img", "convert", "-U", "-O", "raw", image, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v: %s", err, out)
	}
	return raw
}

// fsState reports whether an ext4 image is clean (no journal to
// recover, e2fsck -fn finds nothing) and the content of a file in it.
func fsState(t *testing.T, raw, file string) (clean bool, content string) {
	t.Helper()
	head, err := exec.Command("dumpe2fs", "-h", raw).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs: %v: %s", err, head)
	}
	fsck := exec.Command("e2fsck", "-fn", raw).Run()
	clean = !strings.Contains(string(head), "needs_recovery") && fsck == nil
	out, _ := exec.Command("debugfs", "-R", "cat "+file, raw).Output()
	return clean, string(out)
}

func checkGuestQuiesceMakesTheSnapshotConsistent(t *testing.T) {
	g := testguest.Boot(t, testguest.Options{DataDisks: []string{"data1", "data2"}, SecondMonitor: true})
	drv := guestDriver(t, g, nil)
	g = through(t, drv, "guest", g)
	ctx := testCtx(t)
	write := func(name string) {
		t.Helper()
		// No sync: the data sits in the guest's page cache and the
		// metadata in its unwritten ext4 journal.
		if _, code, err := g.Exec(ctx, "sh", "-c", "echo "+name+"-data > /mnt/data1/"+name); err != nil || code != 0 {
			t.Fatalf("guest write: %v, exit %d", err, code)
		}
	}

	write("quiesced")
	res, err := drv.CreateSnapshot(ctx, "guest", CreateRequest{XML: snapXML("q1"), Flags: FlagDiskOnly | FlagAtomic | FlagQuiesce})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Quiesced || res.Indications[0].Code != IndQuiesced || res.Freeze <= 0 {
		t.Fatalf("result: quiesced %v, indications %+v, freeze %v", res.Quiesced, res.Indications, res.Freeze)
	}
	if res.Freeze < res.Switch {
		t.Errorf("freeze window %v shorter than the switch %v it encloses", res.Freeze, res.Switch)
	}
	// The snapshot point is the original image, now the overlay's backing.
	clean, content := fsState(t, snapshotPointImage(t, g.Disks[0].Path), "/quiesced")
	if !clean || content != "quiesced-data\n" {
		t.Errorf("quiesced snapshot: clean %v, /quiesced %q; want a clean file system with the file", clean, content)
	}
	if status := agentStatus(t, g); status != "thawed" {
		t.Errorf("guest after the snapshot: %s", status)
	}

	// The control: the same without QUIESCE.
	write("control")
	if _, err := drv.CreateSnapshot(ctx, "guest", CreateRequest{XML: snapXML("c1"), Flags: FlagDiskOnly | FlagAtomic}); err != nil {
		t.Fatal(err)
	}
	q1Overlay := filepath.Join(filepath.Dir(g.Disks[0].Path), "data1.q1")
	clean, content = fsState(t, snapshotPointImage(t, q1Overlay), "/control")
	if clean && content == "control-data\n" {
		t.Errorf("the unquiesced control came out clean and complete, so this test shows nothing")
	}
	t.Logf("control without quiesce: clean %v, /control %q", clean, content)
}

func agentStatus(t *testing.T, g *testguest.Guest) string {
	t.Helper()
	var status string
	if err := g.Agent(testCtx(t), "guest-fsfreeze-status", nil, &status); err != nil {
		t.Fatal(err)
	}
	return status
}

// checkGuestFrozenByCrashedDaemonIsThawed kills the engine while the
// guest is frozen; a restarted daemon must thaw it within 2 s.
func checkGuestFrozenByCrashedDaemonIsThawed(t *testing.T) {
	g := testguest.Boot(t, testguest.Options{DataDisks: []string{"data1"}, SecondMonitor: true})
	stateDir := filepath.Join(g.Dir, "state")
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$", "-test.v")
	cmd.Env = append(os.Environ(), "QSNAPD_CRASH_HELPER=1", "QSNAPD_STATE="+stateDir, "QSNAPD_QMP="+g.QMP,
		"QSNAPD_AGENT="+g.QGA, "QSNAPD_CRASH_AT="+HookFrozen, "QSNAPD_TRANSACTION=auto",
		"QSNAPD_FLAGS="+itoa(int(FlagDiskOnly|FlagQuiesce)))
	out, err := cmd.CombinedOutput()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("helper was not killed while the guest was frozen: %v\n%s", err, out)
	}
	if status := agentStatus(t, g); status != "frozen" {
		t.Fatalf("guest after the crash: %s, want frozen", status)
	}

	start := time.Now()
	drv, err := Open(Config{StateDir: stateDir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer drv.Close()
	g = through(t, drv, "vm1", g)
	var thawedAfter time.Duration
	for {
		if s := agentStatusQuick(g); s == "thawed" {
			thawedAfter = time.Since(start)
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatal("guest still frozen 10 s after the restart")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if thawedAfter > 2*time.Second {
		t.Errorf("guest thawed %v after the restart, want within 2 s", thawedAfter)
	}
	t.Logf("guest thawed %v after the restart", thawedAfter)
	// The interrupted snapshot is rolled back too.
	if err := drv.WaitRecovered(testCtx(t), "vm1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		fr, _ := drv.Store().Freezes()
		ops, _ := drv.Store().Ops(true)
		return len(fr) == 0 && len(ops) == 0
	}, "journal emptied")
}

// agentStatusQuick asks the agent with a short deadline: the daemon's
// thaw may have the channel for a moment.
func agentStatusQuick(g *testguest.Guest) string {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var status string
	if g.Agent(ctx, "guest-fsfreeze-status", nil, &status) != nil {
		return ""
	}
	return status
}

func checkGuestFailingFreezeHook(t *testing.T) {
	g := testguest.Boot(t, testguest.Options{DataDisks: []string{"data1"}, SecondMonitor: true, FailFreezeHook: true})
	drv := guestDriver(t, g, nil)
	g = through(t, drv, "guest", g)
	ctx := testCtx(t)
	_, err := drv.CreateSnapshot(ctx, "guest", CreateRequest{XML: snapXML("s"), Flags: FlagDiskOnly | FlagQuiesce})
	if err == nil || !strings.Contains(err.Error(), "fsfreeze hook has failed") {
		t.Fatalf("got %v, want the hook's failure", err)
	}
	if d, _ := drv.Disks(ctx, "guest"); d[0].File != g.Disks[0].Path {
		t.Errorf("disk changed after a failed required quiesce: %s", d[0].File)
	}
	if _, err := os.Stat(filepath.Join(g.Dir, "data1.s")); !os.IsNotExist(err) {
		t.Errorf("overlay left behind: %v", err)
	}
	// prefer takes a crash-consistent snapshot and says why.
	res, err := drv.CreateSnapshot(ctx, "guest", CreateRequest{XML: snapXML("p"), Flags: FlagDiskOnly | FlagQuiesce, Quiesce: QuiescePrefer})
	if err != nil {
		t.Fatal(err)
	}
	if res.Quiesced || res.Indications[0].Code != IndFreezeFailed {
		t.Errorf("prefer: quiesced %v, indications %+v", res.Quiesced, res.Indications)
	}
	if status := agentStatus(t, g); status != "thawed" {
		t.Errorf("guest after a failed freeze: %s", status)
	}
}

// checkGuestDeleteWhileWriting takes a quiesced atomic snapshot of two
// data disks, lets the guest write and sync files, then deletes the
// snapshot while the guest keeps writing: the files and their checksums
// are intact, the disks run on their base images again, and the file
// systems are clean.
func checkGuestDeleteWhileWriting(t *testing.T) {
	g := testguest.Boot(t, testguest.Options{DataDisks: []string{"data1", "data2"}, SecondMonitor: true})
	drv := guestDriver(t, g, nil)
	g = through(t, drv, "guest", g)
	ctx := testCtx(t)
	sh := func(script string) string {
		t.Helper()
		res, err := g.Run(ctx, "sh", "-c", script)
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("guest: %s: %v, exit %d: %s", script, err, res.ExitCode, res.Stderr)
		}
		return res.Stdout
	}
	const sums = "cd /mnt && sha256sum data1/f* data1/g* data2/f* data2/g*"
	sh("for d in data1 data2; do for i in 1 2 3 4 5 6; do dd if=/dev/urandom of=/mnt/$d/f$i bs=64k count=8 2>/dev/null; done; done; sync")
	if _, err := drv.CreateSnapshot(ctx, "guest", CreateRequest{XML: snapXML("q1"), Flags: FlagDiskOnly | FlagAtomic | FlagQuiesce}); err != nil {
		t.Fatal(err)
	}
	sh("for d in data1 data2; do for i in 1 2 3 4 5 6; do dd if=/dev/urandom of=/mnt/$d/g$i bs=64k count=16 2>/dev/null; done; done; sync")
	before := sh(sums)
	// The writer keeps going through the merge, syncing as it goes.
	sh("(i=0; while [ ! -e /tmp/stop ]; do for d in data1 data2; do dd if=/dev/urandom of=/mnt/$d/w$((i % 8)) bs=64k count=4 conv=fsync 2>/dev/null; done; i=$((i+1)); done; touch /tmp/stopped) </dev/null >/dev/null 2>&1 &")
	time.Sleep(300 * time.Millisecond)
	res, err := drv.DeleteSnapshot(ctx, "guest", "q1", DeleteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("merged %d bytes in %v while the guest wrote", res.MergedBytes, res.Total)
	sh("touch /tmp/stop; while [ ! -e /tmp/stopped ]; do sleep 0.1; done; sync")
	if after := sh(sums); after != before {
		t.Errorf("checksums changed by the merge:\nbefore %s\nafter  %s", before, after)
	}
	disks, err := drv.Disks(ctx, "guest")
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range disks {
		if d.File != g.Disks[i].Path || len(d.Backing) != 0 {
			t.Errorf("disk %s runs on %s over %v, want its base image alone", d.Target, d.File, d.Backing)
		}
	}
	if snaps, _ := drv.Snapshots("guest"); len(snaps) != 0 {
		t.Errorf("snapshots left: %+v", snaps)
	}
	// Unmounted, each file system is clean on its image, and holds the
	// files the guest wrote.
	sh("umount /mnt/data1 && umount /mnt/data2")
	for _, d := range g.Disks {
		clean, content := fsState(t, snapshotPointImage(t, d.Path), "/g1")
		if !clean {
			t.Errorf("%s: file system not clean after the merge", d.Serial)
		}
		sum := sha256.Sum256([]byte(content))
		if !strings.Contains(before, hex.EncodeToString(sum[:])+"  "+d.Serial+"/g1") {
			t.Errorf("%s: /g1 on the image does not match the guest's checksum", d.Serial)
		}
	}
}

// checkGuestQuiesceScope snapshots one of three data disks with the
// snapshot-disks scope while a writer in the guest appends to a file on
// each: only that disk's file system stops for the freeze (a hook holds
// the guest frozen for a second), the others keep writing. The control,
// scope all, stops them all. With the disk's file system unmounted, the
// snapshot falls back to freezing all, and says why.
func checkGuestQuiesceScope(t *testing.T) {
	g := testguest.Boot(t, testguest.Options{DataDisks: []string{"data1", "data2", "data3"}, SecondMonitor: true})
	drv := guestDriver(t, g, nil)
	g = through(t, drv, "guest", g)
	ctx := testCtx(t)
	const hold = time.Second
	drv.Hooks.AtStep = func(step string) error {
		if step == HookFrozen {
			time.Sleep(hold)
		}
		return nil
	}
	sh := func(script string) string {
		t.Helper()
		res, err := g.Run(ctx, "sh", "-c", script)
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("guest: %s: %v, exit %d: %s", script, err, res.ExitCode, res.Stderr)
		}
		return res.Stdout
	}
	// beats runs a snapshot of data1 while each disk gets a line with
	// the guest's uptime (in 10 ms) as often as the shell can write it,
	// and returns each disk's beats.
	beats := func(name string, scope QuiesceScope) (*CreateResult, [3][]int) {
		t.Helper()
		sh("rm -f /tmp/stop /tmp/stopped-*; for d in data1 data2 data3; do " +
			"(exec 3>/mnt/$d/beat; while [ ! -e /tmp/stop ]; do read up _ </proc/uptime; echo ${up%.*}${up#*.} >&3; done; touch /tmp/stopped-$d) " +
			"</dev/null >/dev/null 2>&1 & done")
		time.Sleep(300 * time.Millisecond)
		xml := snapXML(name, diskXML("data1", "", ""), diskXML("data2", "no", ""), diskXML("data3", "no", ""))
		res, err := drv.CreateSnapshot(ctx, "guest", CreateRequest{XML: xml, Flags: FlagDiskOnly | FlagAtomic | FlagQuiesce, QuiesceScope: scope})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
		sh("touch /tmp/stop; while [ ! -e /tmp/stopped-data1 ] || [ ! -e /tmp/stopped-data2 ] || [ ! -e /tmp/stopped-data3 ]; do sleep 0.1; done")
		var out [3][]int
		for i, d := range []string{"data1", "data2", "data3"} {
			for _, f := range strings.Fields(sh("cat /mnt/" + d + "/beat")) {
				n, err := strconv.Atoi(f)
				if err != nil {
					t.Fatalf("%s: beat %q", d, f)
				}
				out[i] = append(out[i], n)
			}
		}
		return res, out
	}
	// gap is the longest pause between beats, in 10 ms.
	gap := func(b []int) (from, to int) {
		for i := 1; i < len(b); i++ {
			if b[i]-b[i-1] > to-from {
				from, to = b[i-1], b[i]
			}
		}
		return from, to
	}
	within := func(b []int, from, to int) (n int) {
		for _, x := range b {
			if x > from && x < to {
				n++
			}
		}
		return n
	}
	held := int(hold / (10 * time.Millisecond))

	res, b := beats("scoped", ScopeSnapshotDisks)
	ind, ok := indication(res, IndQuiesceScoped)
	if !res.Quiesced || !ok || !strings.HasSuffix(ind.Message, ": /mnt/data1 (data1)") {
		t.Errorf("scoped: quiesced %v, indications %+v", res.Quiesced, res.Indications)
	}
	from, to := gap(b[0])
	t.Logf("scoped: data1 stopped for %d0 ms; meanwhile data2 wrote %d times, data3 %d; freeze window %v",
		to-from, within(b[1], from, to), within(b[2], from, to), res.Freeze)
	if to-from < held*8/10 {
		t.Errorf("data1 stopped for %d0 ms at most, not for the %v the guest was held frozen", to-from, hold)
	}
	for i := 1; i < 3; i++ {
		if n := within(b[i], from, to); n < 3 {
			t.Errorf("data%d wrote %d times while data1 was frozen: frozen too", i+1, n)
		}
	}

	// The control: scope all stops every disk.
	res, b = beats("all", ScopeAll)
	if _, ok := indication(res, IndQuiesceScoped); ok || !res.Quiesced {
		t.Errorf("all: quiesced %v, indications %+v", res.Quiesced, res.Indications)
	}
	for i := range 3 {
		if from, to := gap(b[i]); to-from < held*8/10 {
			t.Errorf("scope all: data%d stopped for %d0 ms at most", i+1, to-from)
		}
	}

	// A disk without a mounted file system cannot be mapped.
	drv.Hooks.AtStep = nil
	sh("umount /mnt/data3")
	res, err := drv.CreateSnapshot(ctx, "guest", CreateRequest{XML: snapXML("fallback", diskXML("data1", "no", ""), diskXML("data2", "no", ""), diskXML("data3", "", "")),
		Flags: FlagDiskOnly | FlagAtomic | FlagQuiesce, QuiesceScope: ScopeSnapshotDisks})
	if err != nil {
		t.Fatal(err)
	}
	ind, ok = indication(res, IndQuiesceScopeFallback)
	if !res.Quiesced || !ok || !strings.Contains(ind.Message, "disk 'data3' could not be mapped") {
		t.Errorf("fallback: quiesced %v, indications %+v", res.Quiesced, res.Indications)
	}
	if status := agentStatus(t, g); status != "thawed" {
		t.Errorf("guest after the snapshots: %s", status)
	}
}
