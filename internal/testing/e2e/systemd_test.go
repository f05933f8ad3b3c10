package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/guestagent/agentfake"
	"github.com/qsnapd/qsnapd/internal/testing/nspawn"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
)

// vmRun is where the container sees the VM's sockets: under /run, as
// on a host, and read-only to the service like all of /run.
const vmRun = "/run/qemu-test"

// pkgUnits are the package's units: the sockets, then the service.
var pkgUnits = []string{"qsnapd.socket", "qsnapd-ro.socket", "qsnapd-libvirt.socket", "qsnapd-libvirt-ro.socket", "qsnapd.service"}

// TestServiceUnderSystemd installs the Debian package in a Debian 12
// root booted with systemd as PID 1 and meets the service as an
// operator does: the sockets before the daemon, socket activation, a
// snapshot through the hardened unit, the stock virsh through the
// libvirt sockets, a restart after SIGKILL, the
// watchdog, a stop that thaws the guest, and remove and purge. QEMU and
// the guest agent run outside the container, the service inside; the
// VM's directory is bound at the same path (its images, which the
// images drop-in makes writable) and under /run (its sockets).
func TestServiceUnderSystemd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a container under systemd: not with -short")
	}
	if err := nspawn.Available(); err != nil {
		t.Skipf("systemd-nspawn cannot run here: %v", err)
	}
	qemutest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	root, err := nspawn.Root(ctx)
	if err != nil {
		t.Fatalf("container root: %v", err)
	}
	base := srvDir(t)
	vmDir, apiDir := filepath.Join(base, "vm"), filepath.Join(base, "api")
	for _, d := range []string{vmDir, apiDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	deb := packageDeb(t)
	vm := qemutest.Start(t, qemutest.Options{Disks: 1, Style: qemutest.Blockdev, SecondMonitor: true, Dir: vmDir})
	agent, err := agentfake.Start(filepath.Join(vmDir, "qga.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()

	c := nspawn.Boot(t, root, nspawn.Options{Binds: []string{filepath.Dir(deb), vmDir, vmDir + ":" + vmRun, apiDir + ":/run/qsnapd"}})
	s := &systemTest{t: t, ctx: ctx, c: c}

	s.step("dpkg -i")
	s.sh("dpkg -i " + deb)
	// A watchdog short enough for a test; the images drop-in comes later.
	s.sh("mkdir -p /etc/systemd/system/qsnapd.service.d && " +
		"printf '[Service]\\nWatchdogSec=2s\\nTimeoutAbortSec=2s\\n' > /etc/systemd/system/qsnapd.service.d/watchdog.conf && " +
		"systemctl daemon-reload")
	s.logf("units: %s", s.states(pkgUnits...))

	s.step("sockets before the daemon")
	if got := s.states(pkgUnits...); got != "active active active active inactive" {
		t.Fatalf("after install: %s = %s, want the sockets active, the service inactive", strings.Join(pkgUnits, ", "), got)
	}
	gid := s.groupID("qsnapd")
	for _, sock := range []struct {
		name string
		mode os.FileMode
		gid  uint32
	}{{"qsnapd.sock", 0o660, gid}, {"qsnapd-ro.sock", 0o666, 0}, {"libvirt-sock", 0o660, gid}, {"libvirt-sock-ro", 0o666, 0}} {
		fi, err := os.Stat(filepath.Join(apiDir, sock.name))
		if err != nil {
			t.Fatalf("socket: %v", err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		s.logf("%s: %v uid %d gid %d", sock.name, fi.Mode(), st.Uid, st.Gid)
		if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != sock.mode || st.Uid != 0 || st.Gid != sock.gid {
			t.Errorf("%s: %v uid %d gid %d, want a socket %v root:%d", sock.name, fi.Mode(), st.Uid, st.Gid, sock.mode, sock.gid)
		}
	}

	s.step("socket activation")
	s.logf("qsnapctl list:\n%s", s.sh("qsnapctl list"))
	if got := s.states("qsnapd.service"); got != "active" {
		t.Fatalf("after the first connection the service is %s", got)
	}
	s.logf("service: %s; status %q", s.states("qsnapd.service"), s.prop("qsnapd.service", "StatusText"))
	ro := api.NewClient(filepath.Join(apiDir, "qsnapd-ro.sock"))
	defer ro.Close()
	if _, err := ro.Version(ctx); err != nil {
		t.Errorf("read-only socket from outside: %v", err)
	}

	s.step("snapshot through the hardened unit")
	s.sh(fmt.Sprintf("qsnapctl attach vm1 --qmp %s/qmp.sock --agent %s/qga.sock", vmRun, vmRun))
	overlay := filepath.Join(vmDir, "vda.s1.qcow2")
	create := "qsnapctl snapshot-create-as vm1 s1 --disk-only --atomic --diskspec vda,file=" + overlay
	// Without the images drop-in the image directory is read-only to
	// the daemon: the snapshot fails and changes nothing.
	out, err := s.c.Exec(ctx, "sh", "-c", create)
	s.logf("without images.conf: %v\n%s", err, out)
	if err == nil || !strings.Contains(string(out), "read-only file system") {
		t.Errorf("a snapshot without the images drop-in: %v\n%s", err, out)
	}
	if _, err := os.Stat(overlay); !os.IsNotExist(err) {
		t.Errorf("the failed snapshot left its overlay: %v", err)
	}
	s.sh("printf '[Service]\\nReadWritePaths=-%s\\n' " + vmDir + " > /etc/systemd/system/qsnapd.service.d/images.conf && " +
		"systemctl daemon-reload && systemctl restart qsnapd.service")
	s.logf("with images.conf:\n%s", s.sh(create))
	if disks := observe(t, vm); disks[0].File != overlay {
		t.Errorf("QEMU writes to %s, want the overlay %s", disks[0].File, overlay)
	}
	s.checkSandbox(vmDir)

	s.step("who may use which socket")
	// alice is in group qsnapd, bob is not: the read-write socket's mode
	// and allow_group let alice change things; bob may only read.
	s.sh("useradd --system --no-create-home --groups qsnapd alice && useradd --system --no-create-home bob")
	for _, c := range []struct{ who, cmd, want string }{
		{"alice", "qsnapctl detach no-such-vm", "no-such-vm"},
		{"bob", "qsnapctl detach no-such-vm", "permission denied"},
		{"bob", "qsnapctl --socket /run/qsnapd/qsnapd-ro.sock detach no-such-vm", "read-only"},
		{"bob", "qsnapctl --socket /run/qsnapd/qsnapd-ro.sock snapshot-list vm1 --name", "s1"},
	} {
		out, err := s.c.Exec(ctx, "runuser", "-u", c.who, "--", "sh", "-c", c.cmd)
		s.logf("%s: %s: %s", c.who, c.cmd, strings.TrimSpace(string(out)))
		if !strings.Contains(strings.ToLower(string(out)), c.want) {
			t.Errorf("%s: %s: %v: %s; want %q", c.who, c.cmd, err, out, c.want)
		}
	}

	s.step("virsh from the host")
	// The stock virsh outside, through the bound libvirt sockets: the
	// first connection starts the stopped service, which lists the
	// snapshot qsnapctl took. bob is refused the read-write socket by
	// its mode, and reads through the read-only one.
	s.sh("systemctl stop qsnapd.service")
	lvRW, lvRO := filepath.Join(apiDir, "libvirt-sock"), filepath.Join(apiDir, "libvirt-sock-ro")
	if r := virsh(t, nil, lvRW, "snapshot-list", "vm1", "--name"); r.code != 0 || strings.TrimSpace(r.out) != "s1" {
		t.Errorf("virsh snapshot-list vm1 through %s: exit %d, want s1:\n%s", lvRW, r.code, r.out)
	}
	s.logf("after virsh: %s", s.states("qsnapd-libvirt.socket", "qsnapd.service"))
	if got := s.states("qsnapd.service"); got != "active" {
		t.Errorf("the libvirt socket's connection left the service %s", got)
	}
	// bob is the container's, with the same ids outside; the test's
	// directory lets any user through to the sockets.
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	bob := &syscall.Credential{Uid: s.id("-u", "bob"), Gid: s.id("-g", "bob")}
	if r := virsh(t, bob, lvRW, "snapshot-list", "vm1", "--name"); r.code == 0 || !strings.Contains(strings.ToLower(r.out), "permission denied") {
		t.Errorf("bob: virsh snapshot-list through %s: exit %d, want permission denied:\n%s", lvRW, r.code, r.out)
	}
	if r := virsh(t, bob, lvRO, "snapshot-list", "vm1", "--name"); r.code != 0 || strings.TrimSpace(r.out) != "s1" {
		t.Errorf("bob: virsh snapshot-list through %s: exit %d, want s1:\n%s", lvRO, r.code, r.out)
	}

	s.step("SIGKILL")
	pid := s.mainPID()
	s.sh("systemctl kill -s SIGKILL qsnapd")
	newPID := s.waitRestart(pid)
	s.logf("main pid %d killed; back as %d after %s restarts; %s", pid, newPID, s.prop("qsnapd.service", "NRestarts"),
		s.states("qsnapd.service"))
	if out := s.sh("qsnapctl snapshot-list vm1 --name"); strings.TrimSpace(out) != "s1" {
		t.Errorf("after the restart, snapshots of vm1: %q, want s1", out)
	}

	s.step("watchdog")
	pid = s.mainPID()
	s.sh("systemctl kill -s SIGSTOP qsnapd")
	newPID = s.waitRestart(pid)
	journal := s.sh("journalctl -u qsnapd.service --no-pager -o cat")
	if !strings.Contains(journal, "Watchdog timeout") {
		t.Errorf("no watchdog timeout in the journal:\n%s", journal)
	}
	s.logf("main pid %d stopped; watchdog restarted it as %d; %s", pid, newPID, s.states("qsnapd.service"))
	s.sh("qsnapctl domblklist vm1")

	s.step("upgrade")
	// dpkg -i over the installed package runs the upgrade path of the
	// maintainer scripts: the running daemon is restarted.
	pid = s.mainPID()
	s.sh("dpkg -i " + deb)
	newPID = s.waitRestart(pid)
	s.logf("main pid %d restarted as %d; %s", pid, newPID, s.states(pkgUnits...))
	if out := s.sh("qsnapctl snapshot-list vm1 --name"); strings.TrimSpace(out) != "s1" {
		t.Errorf("after the upgrade, snapshots of vm1: %q, want s1", out)
	}

	s.step("stop thaws")
	frozeAt := time.Now()
	s.sh("qsnapctl domfsfreeze vm1 --timeout 10s")
	if !agent.Frozen() {
		t.Fatal("domfsfreeze did not freeze the guest")
	}
	s.sh("systemctl stop qsnapd.service")
	// The hard freeze deadline is 10 s: a thaw before it came from the stop.
	if took := time.Since(frozeAt); agent.Frozen() || took > 9*time.Second {
		t.Errorf("after systemctl stop (%s after the freeze) the guest is frozen: %v; agent calls %v", took, agent.Frozen(), agent.Calls())
	}
	s.logf("guest thawed by the stop; %s", s.states("qsnapd.service", "qsnapd.socket"))
	// The socket units listen on, and the next connection starts it.
	s.sh("qsnapctl list")
	s.logf("next connection: %s", s.states("qsnapd.service"))

	s.step("dpkg -r")
	s.sh("dpkg -r qsnapd")
	s.logf("units: %s", s.states(pkgUnits...))
	if entries, _ := os.ReadDir(apiDir); len(entries) != 0 {
		t.Errorf("sockets left after dpkg -r: %v", entries)
	}
	s.sh("test -f /etc/qsnapd/qsnapd.toml && test -d /var/lib/qsnapd && ! test -e /usr/bin/qsnapd")

	s.step("dpkg --purge")
	// The drop-ins are the operator's; an operator removes them.
	s.sh("rm -r /etc/systemd/system/qsnapd.service.d && dpkg --purge qsnapd")
	left := s.sh("find / /run -xdev -name '*qsnapd*' -not -path /run/qsnapd -not -path '/srv/*' 2>/dev/null; getent group qsnapd || true")
	if strings.TrimSpace(left) != "" {
		t.Errorf("left after purge:\n%s", left)
	}
	s.logf("after purge: nothing named qsnapd, no group qsnapd")
	if out, err := os.ReadFile(vm.Disks[0].Path); err != nil || len(out) == 0 {
		t.Errorf("the VM's base image is gone after purge: %v", err)
	}
	if _, err := os.Stat(overlay); err != nil {
		t.Errorf("the VM's overlay is gone after purge: %v", err)
	}
}

// systemTest drives one container.
type systemTest struct {
	t   *testing.T
	ctx context.Context
	c   *nspawn.Container
}

func (s *systemTest) step(name string) { s.t.Helper(); s.t.Logf("== %s", name) }

func (s *systemTest) logf(format string, args ...any) { s.t.Helper(); s.t.Logf("   "+format, args...) }

// sh runs a shell command inside and fails the test if it fails.
func (s *systemTest) sh(cmd string) string {
	s.t.Helper()
	out, err := s.c.Exec(s.ctx, "sh", "-c", cmd)
	if err != nil {
		s.t.Fatalf("%s: %v\njournal:\n%s", cmd, err, s.journal())
	}
	return string(out)
}

func (s *systemTest) journal() string {
	args := []string{"journalctl", "--no-pager", "-n", "60"}
	for _, u := range pkgUnits {
		args = append(args, "-u", u)
	}
	out, _ := s.c.Exec(s.ctx, args...)
	return string(out)
}

// states is the ActiveState of each unit, space-separated.
func (s *systemTest) states(units ...string) string {
	s.t.Helper()
	var got []string
	for _, u := range units {
		got = append(got, s.prop(u, "ActiveState"))
	}
	return strings.Join(got, " ")
}

func (s *systemTest) prop(unit, name string) string {
	s.t.Helper()
	return strings.TrimSpace(s.sh("systemctl show -p " + name + " --value " + unit))
}

func (s *systemTest) mainPID() int {
	s.t.Helper()
	pid, err := strconv.Atoi(s.prop("qsnapd.service", "MainPID"))
	if err != nil || pid == 0 {
		s.t.Fatalf("qsnapd.service has no main process (%v): %s", err, s.states("qsnapd.service"))
	}
	return pid
}

// waitRestart waits until the service runs again, under another main
// process than old, and has said READY.
func (s *systemTest) waitRestart(old int) int {
	s.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		pid, _ := strconv.Atoi(s.prop("qsnapd.service", "MainPID"))
		if pid != 0 && pid != old && s.states("qsnapd.service") == "active" {
			return pid
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.t.Fatalf("qsnapd.service not back within 60s: %s\n%s", s.states("qsnapd.service"), s.journal())
	return 0
}

// id is a user's id inside, as id(1) prints it with flag.
func (s *systemTest) id(flag, user string) uint32 {
	s.t.Helper()
	n, err := strconv.ParseUint(strings.TrimSpace(s.sh("id "+flag+" "+user)), 10, 32)
	if err != nil {
		s.t.Fatal(err)
	}
	return uint32(n)
}

func (s *systemTest) groupID(name string) uint32 {
	s.t.Helper()
	fields := strings.Split(strings.TrimSpace(s.sh("getent group "+name)), ":")
	if len(fields) < 3 {
		s.t.Fatalf("group %s: %q", name, fields)
	}
	gid, err := strconv.ParseUint(fields[2], 10, 32)
	if err != nil {
		s.t.Fatal(err)
	}
	return uint32(gid)
}

// checkSandbox reads the daemon's mounts: / and the VM's socket
// directory under /run are read-only to it, the images drop-in's
// directory writable.
func (s *systemTest) checkSandbox(images string) {
	s.t.Helper()
	info := s.sh(fmt.Sprintf("cat /proc/%d/mountinfo", s.mainPID()))
	opts := map[string]string{}
	for _, line := range strings.Split(info, "\n") {
		f := strings.Fields(line)
		if len(f) > 5 {
			opts[f[4]] = f[5] // mount point: its per-mount options
		}
	}
	s.logf("the daemon's mounts: / %s; /run %s; %s %s; %s %s", opts["/"], opts["/run"], vmRun, opts[vmRun], images, opts[images])
	for _, m := range []struct{ path, want string }{{"/", "ro"}, {"/run", "ro"}, {vmRun, "ro"}, {images, "rw"}} {
		if !strings.HasPrefix(opts[m.path], m.want+",") {
			s.t.Errorf("sandbox: %s mounted %q for the daemon, want %s", m.path, opts[m.path], m.want)
		}
	}
}

// srvDir makes a short directory outside /tmp, which the service's
// PrivateTmp= would hide, at the same path inside the container.
func srvDir(t *testing.T) string {
	t.Helper()
	if err := os.MkdirAll("/srv/qsnapd-test", 0o755); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("/srv/qsnapd-test", "sd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
