// Package testguest boots a real Linux guest with qemu-ga under QEMU for tests.
//
// The guest is a Debian kernel and a busybox initramfs built by build.sh
// from Debian packages and cached between runs (see Build). Under TCG a
// guest takes about 3 s from QEMU's start to its first guest-ping reply,
// so tests should share one guest where they can.
//
// Inside the guest, /init loads the virtio and ext4 modules, mounts each
// data disk at /mnt/<serial>, and runs qemu-ga on the virtio-serial port
// org.qemu.guest_agent.0, with guest-exec allowed. /sbin/shutdown powers
// the guest off, which ends QEMU (-no-reboot).
package testguest

import (
	"bytes"
	"context"
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
)

//go:embed build.sh
var buildScript []byte

const (
	// BuildTimeout bounds build.sh: a cold build downloads about 72 MB.
	BuildTimeout = 15 * time.Minute
	// BootTimeout bounds the wait for the agent's first reply.
	BootTimeout = 90 * time.Second
	// DiskSize is the size of each data disk's ext4 file system.
	DiskSize = "64M"
)

var build struct {
	once           sync.Once
	kernel, initrd string
	output         string
	err            error
}

// Build runs build.sh once per test binary and returns the kernel and
// initramfs it built. The cache directory is
// $QSNAPD_GUEST_CACHE, by default /var/cache/qsnapd-testguest (or
// ~/.cache/qsnapd-testguest when that is not writable). A cached build
// costs about 50 ms; a cold one downloads the packages and takes about
// 10 s. It skips tb under -short and fails it when the build fails.
func Build(tb testing.TB) (kernel, initrd string) {
	tb.Helper()
	if testing.Short() {
		tb.Skip("test guest skipped under -short")
	}
	build.once.Do(func() {
		build.kernel, build.initrd, build.output, build.err = runBuild()
	})
	if build.err != nil {
		tb.Fatalf("build test guest: %v\n%s", build.err, build.output)
	}
	return build.kernel, build.initrd
}

func runBuild() (kernel, initrd, output string, err error) {
	dir, err := os.MkdirTemp("", "qsguest")
	if err != nil {
		return "", "", "", err
	}
	defer os.RemoveAll(dir)
	script := filepath.Join(dir, "build.sh")
	// The embedded copy is byte for byte the script in the source tree,
	// so it computes the same cache key as `make guest`.
	if err := os.WriteFile(script, buildScript, 0o755); err != nil {
		return "", "", "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), BuildTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", "", stderr.String() + stdout.String(), fmt.Errorf("build.sh: %w", err)
	}
	lines := strings.Fields(stdout.String())
	if len(lines) == 0 {
		return "", "", stderr.String(), fmt.Errorf("build.sh printed no cache directory")
	}
	out := lines[len(lines)-1]
	kernel, initrd = filepath.Join(out, "vmlinux"), filepath.Join(out, "initrd")
	for _, f := range []string{kernel, initrd} {
		if _, err := os.Stat(f); err != nil {
			return "", "", stderr.String(), fmt.Errorf("build.sh output: %w", err)
		}
	}
	return kernel, initrd, stderr.String(), nil
}

// Options describe the guest to boot.
type Options struct {
	// DataDisks are the serials of the data disks, for example "data1".
	// Each disk is a fresh 64 MiB ext4 file system in a qcow2 image,
	// mounted in the guest at /mnt/<serial>. A serial has at most 20
	// characters out of [A-Za-z0-9_-].
	DataDisks []string
	// SecondMonitor adds a second QMP socket, so a test can look at QEMU
	// independently of the client under test.
	SecondMonitor bool
	// FailFreezeHook runs qemu-ga with an fsfreeze hook that fails on
	// freeze, so guest-fsfreeze-freeze returns an error.
	FailFreezeHook bool
	// Extra arguments for qemu-system-x86_64.
	Extra []string
}

// Disk is one data disk of a guest.
type Disk struct {
	// Serial is the virtio serial, also the device id and the mount
	// point's name in the guest.
	Serial string
	// Path is the qcow2 image.
	Path string
	// NodeName is the qcow2 node's name, "fmt-<serial>"; the file node
	// is "file-<serial>".
	NodeName string
}

// Guest is a running QEMU with a booted guest whose agent answers.
type Guest struct {
	Dir   string
	QMP   string // the monitor for the client under test
	QMP2  string // the second monitor, if asked for
	QGA   string // the guest agent's socket
	Disks []Disk
	PID   int
	// BootTime is the time from QEMU's start to the agent's first reply.
	BootTime time.Duration

	serial string
	via    Executor // Through's client; nil for a connection per call
	cmd    *exec.Cmd
	done   chan struct{}
	out    *qemutest.LockedBuffer
}

var serialRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,20}$`)

// Boot starts QEMU under TCG with the test guest, waits until the agent
// answers guest-ping, and kills QEMU by PID when tb ends (logging QEMU's
// output and the guest's serial console if tb failed). It costs about
// 3 s of one CPU on an idle host (4 s and more on a loaded one), and up
// to 256 MiB of host memory while the guest runs.
func Boot(tb testing.TB, o Options) *Guest {
	tb.Helper()
	qemutest.Require(tb)
	kernel, initrd := Build(tb)

	dir := qemutest.TempDir(tb)
	g := &Guest{
		Dir:    dir,
		QMP:    filepath.Join(dir, "qmp.sock"),
		QGA:    filepath.Join(dir, "qga.sock"),
		serial: filepath.Join(dir, "serial.log"),
		done:   make(chan struct{}),
		out:    &qemutest.LockedBuffer{},
	}
	appendArgs := "console=ttyS0 quiet panic=-1"
	if o.FailFreezeHook {
		appendArgs += " qsnap.failhook=1"
	}
	args := []string{
		"-M", "q35", "-m", "256", "-accel", "tcg",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", kernel, "-initrd", initrd, "-append", appendArgs,
		"-serial", "file:" + g.serial,
		"-qmp", "unix:" + g.QMP + ",server=on,wait=off",
	}
	if o.SecondMonitor {
		g.QMP2 = filepath.Join(dir, "qmp2.sock")
		args = append(args, "-qmp", "unix:"+g.QMP2+",server=on,wait=off")
	}
	args = append(args,
		"-chardev", "socket,path="+g.QGA+",server=on,wait=off,id=qga0",
		"-device", "virtio-serial-pci",
		"-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0,id=qga0port")

	seen := map[string]bool{}
	for _, s := range o.DataDisks {
		if !serialRE.MatchString(s) || seen[s] {
			tb.Fatalf("testguest: bad or repeated disk serial %q", s)
		}
		seen[s] = true
		d := Disk{Serial: s, Path: filepath.Join(dir, s+".qcow2"), NodeName: "fmt-" + s}
		if err := makeDisk(dir, d); err != nil {
			tb.Fatalf("testguest: disk %s: %v", s, err)
		}
		args = append(args,
			"-blockdev", "driver=file,filename="+d.Path+",node-name=file-"+s,
			"-blockdev", "driver=qcow2,file=file-"+s+",node-name="+d.NodeName,
			"-device", "virtio-blk-pci,drive="+d.NodeName+",id="+s+",serial="+s)
		g.Disks = append(g.Disks, d)
	}
	args = append(args, o.Extra...)

	g.cmd = exec.Command("qemu-system-x86_64", args...)
	g.cmd.Stdout, g.cmd.Stderr = g.out, g.out
	// If the test binary dies, so does QEMU.
	g.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := g.cmd.Start(); err != nil {
		tb.Fatalf("testguest: start qemu: %v", err)
	}
	g.PID = g.cmd.Process.Pid
	go func() { _ = g.cmd.Wait(); close(g.done) }() // killed at cleanup: the status says nothing
	tb.Cleanup(func() {
		g.Kill()
		if tb.Failed() {
			tb.Logf("qemu %s\nqemu output:\n%s\nguest serial console:\n%s",
				strings.Join(args, " "), g.out.String(), g.SerialLog())
		}
	})

	if err := g.waitAgent(); err != nil {
		tb.Fatalf("testguest: %v", err)
	}
	g.BootTime = time.Since(start)
	return g
}

// makeDisk makes d's qcow2 image from a fresh ext4 file system holding
// one file, /serial, with the disk's serial.
func makeDisk(dir string, d Disk) error {
	seed := filepath.Join(dir, d.Serial+".seed")
	raw := filepath.Join(dir, d.Serial+".raw")
	defer os.RemoveAll(seed)
	defer os.Remove(raw)
	if err := os.Mkdir(seed, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(seed, "serial"), []byte(d.Serial+"\n"), 0o644); err != nil {
		return err
	}
	mkfs, err := lookSbin("mkfs.ext4")
	if err != nil {
		return err
	}
	// Inode tables and journal are written now, so the guest's
	// ext4lazyinit does not write to the disk behind the test's back.
	steps := [][]string{
		{mkfs, "-F", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0", "-d", seed, raw, DiskSize},
		{"qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, d.Path},
	}
	for _, s := range steps {
		if out, err := exec.Command(s[0], s[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %w: %s", filepath.Base(s[0]), err, out)
		}
	}
	return nil
}

// lookSbin finds a tool that may live in an sbin directory missing from
// PATH.
func lookSbin(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found: run make deps", name)
}

// waitAgent pings the agent until it answers. Each attempt keeps its
// connection open for a while: QEMU holds the request until qemu-ga opens
// the port, so the reply comes as soon as the agent runs.
func (g *Guest) waitAgent() error {
	ctx, cancel := context.WithTimeout(context.Background(), BootTimeout)
	defer cancel()
	// End the wait as soon as QEMU exits.
	go func() {
		select {
		case <-g.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	var last error
	for {
		attempt, stop := context.WithTimeout(ctx, 3*time.Second)
		err := g.Agent(attempt, "guest-ping", nil, nil)
		stop()
		if err == nil {
			return nil
		}
		last = err
		select {
		case <-g.done:
			return fmt.Errorf("qemu exited while waiting for the guest agent: %v", last)
		case <-ctx.Done():
			return fmt.Errorf("guest agent did not answer within %v: %v", BootTimeout, last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Kill kills QEMU by PID and waits for it to exit.
func (g *Guest) Kill() {
	if g.cmd.Process != nil {
		_ = g.cmd.Process.Kill() // fails only if it has exited already
	}
	<-g.done
}

// Exited is closed once QEMU has exited.
func (g *Guest) Exited() <-chan struct{} { return g.done }

// Output is what QEMU itself printed so far.
func (g *Guest) Output() string { return g.out.String() }

// SerialLog is what the guest printed on its serial console so far.
func (g *Guest) SerialLog() string {
	b, err := os.ReadFile(g.serial)
	if err != nil {
		return fmt.Sprintf("(no serial log: %v)", err)
	}
	return string(b)
}
