package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
)

// virshResult is one run of the stock virsh.
type virshResult struct {
	out  string // stdout and stderr
	code int
}

// virsh runs the stock virsh against a libvirt socket; cred, when set,
// runs it as that user, as the kernel sees a client of the socket.
func virsh(t *testing.T, cred *syscall.Credential, socket string, args ...string) virshResult {
	t.Helper()
	path, err := exec.LookPath("virsh")
	if err != nil {
		t.Fatal("virsh is needed (Debian's libvirt-clients): run make deps")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, append([]string{"-c", "qemu+unix:///system?socket=" + socket}, args...)...)
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	out, err := cmd.CombinedOutput()
	res := virshResult{out: string(out)}
	if ee, ok := err.(*exec.ExitError); ok {
		res.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("virsh %v: %v", args, err)
	}
	t.Logf("$ virsh -c ...%s %s\n%s(exit %d)", filepath.Base(socket), strings.Join(args, " "), res.out, res.code)
	return res
}

// checkSocket fails unless path is a unix socket of the given mode.
func checkSocket(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Errorf("socket: %v", err)
		return
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != mode {
		t.Errorf("%s: %v, want a socket %v", path, fi.Mode(), mode)
	}
}

// waitReady waits for the daemon's ready line: every socket it binds
// has its mode by then, while the API's socket accepts a moment before
// the libvirt ones are chmodded.
func (d *daemon) waitReady() {
	d.t.Helper()
	if !waitLogged(&d.log, `"msg":"qsnapd ready"`) {
		d.t.Fatalf("qsnapd not ready:\n%s", d.log.String())
	}
}

// waitLogged waits up to 10 s for a JSON log to hold want.
func waitLogged(log *qemutest.LockedBuffer, want string) bool {
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(log.String(), want) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// TestLibvirtSockets drives the daemon with the stock virsh through the
// libvirt sockets it binds itself: a snapshot on the read-write one,
// which the engine then lists; reading but no snapshot on the
// read-only one; and the socket files gone with the daemon.
func TestLibvirtSockets(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{Disks: 2, Style: qemutest.Blockdev, SecondMonitor: true})
	d := startDaemon(t)
	d.waitReady()
	rw, ro := filepath.Join(d.dir, "libvirt-sock"), filepath.Join(d.dir, "libvirt-sock-ro")
	checkSocket(t, rw, 0o660)
	checkSocket(t, ro, 0o666)
	d.mustCtl("attach", "vm1", "--qmp", vm.QMP)

	if r := virsh(t, nil, rw, "list", "--all"); r.code != 0 || !strings.Contains(r.out, "vm1") {
		t.Errorf("virsh list --all: exit %d, want vm1 listed:\n%s", r.code, r.out)
	}
	if r := virsh(t, nil, rw, "snapshot-create-as", "vm1", "s1", "--disk-only", "--atomic"); r.code != 0 || !strings.Contains(r.out, "Domain snapshot s1 created") {
		t.Errorf("virsh snapshot-create-as: exit %d:\n%s", r.code, r.out)
	}
	// The engine took it: qsnapctl sees it, QEMU writes to the overlays.
	if out := d.mustCtl("snapshot-list", "vm1", "--name"); strings.TrimSpace(out) != "s1" {
		t.Errorf("qsnapctl snapshot-list after virsh's snapshot: %q, want s1", out)
	}
	bases := map[string]bool{}
	for _, disk := range vm.Disks {
		bases[disk.Path] = true
	}
	for _, disk := range observe(t, vm) {
		if bases[disk.File] {
			t.Errorf("disk %s still on its base %s after the snapshot", disk.Target, disk.File)
		}
	}
	if r := virsh(t, nil, ro, "snapshot-list", "vm1", "--name"); r.code != 0 || strings.TrimSpace(r.out) != "s1" {
		t.Errorf("virsh snapshot-list on the read-only socket: exit %d, want s1:\n%s", r.code, r.out)
	}
	if r := virsh(t, nil, ro, "snapshot-create-as", "vm1", "s2", "--disk-only"); r.code == 0 || !strings.Contains(r.out, "read only") {
		t.Errorf("virsh snapshot-create-as on the read-only socket: exit %d, want refused as read only:\n%s", r.code, r.out)
	}
	if !strings.Contains(d.log.String(), `"libvirt_socket":"`+rw+`"`) {
		t.Errorf("the ready line does not name the libvirt socket %s:\n%s", rw, d.log.String())
	}

	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-d.exited; err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
	d.exited <- nil // for the cleanup
	for _, p := range []string{rw, ro} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("the daemon's own socket %s outlives it: %v", p, err)
		}
	}
}

// TestLibvirtSocketsOff: an empty path turns a libvirt socket off, the
// other serving on; both empty, no libvirt endpoint at all.
func TestLibvirtSocketsOff(t *testing.T) {
	d := startDaemon(t, "--libvirt-socket", "")
	d.waitReady()
	rw, ro := filepath.Join(d.dir, "libvirt-sock"), filepath.Join(d.dir, "libvirt-sock-ro")
	if _, err := os.Lstat(rw); !os.IsNotExist(err) {
		t.Errorf("--libvirt-socket '': %s exists (%v)", rw, err)
	}
	checkSocket(t, ro, 0o666)
	if r := virsh(t, nil, ro, "list", "--all"); r.code != 0 {
		t.Errorf("virsh list on the read-only socket: exit %d:\n%s", r.code, r.out)
	}

	d = startDaemon(t, "--libvirt-socket", "", "--libvirt-socket-ro", "")
	d.waitReady()
	entries, err := os.ReadDir(d.dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "libvirt") {
			t.Errorf("both libvirt sockets off: %s exists", e.Name())
		}
	}
	if !strings.Contains(d.log.String(), `"libvirt_socket":"","libvirt_socket_ro":""`) {
		t.Errorf("the ready line does not say the libvirt sockets are off:\n%s", d.log.String())
	}
}
