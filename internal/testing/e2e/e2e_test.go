package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/guestagent/agentfake"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/qmp"
)

var binDir string

// TestMain builds the two binaries once.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "qse2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	for _, cmd := range []string{"qsnapd", "qsnapctl"} {
		out, err := exec.Command("go", "build", "-o", filepath.Join(dir, cmd), "github.com/qsnapd/qsnapd/cmd/"+cmd).CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", cmd, err, out)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	removeDeb()
	os.Exit(code)
}

// daemon is a running bin/qsnapd.
type daemon struct {
	t      *testing.T
	dir    string
	socket string
	args   []string
	env    []string
	cmd    *exec.Cmd
	log    qemutest.LockedBuffer
	exited chan error
}

func startDaemon(t *testing.T, extra ...string) *daemon {
	return startDaemonEnv(t, nil, extra...)
}

// startDaemonEnv starts bin/qsnapd with extra environment and flags;
// metrics are off unless the flags turn them on.
func startDaemonEnv(t *testing.T, env []string, extra ...string) *daemon {
	t.Helper()
	dir := qemutest.TempDir(t)
	d := &daemon{t: t, dir: dir, socket: filepath.Join(dir, "rw.sock"), env: env, exited: make(chan error, 1)}
	d.args = append([]string{"--socket", d.socket, "--socket-ro", filepath.Join(dir, "ro.sock"),
		"--libvirt-socket", filepath.Join(dir, "libvirt-sock"), "--libvirt-socket-ro", filepath.Join(dir, "libvirt-sock-ro"),
		"--state-dir", filepath.Join(dir, "state"), "--log-format", "json", "--log-level", "debug",
		"--metrics-listen", ""}, extra...)
	d.launch()
	t.Cleanup(func() {
		_ = d.cmd.Process.Signal(syscall.SIGTERM) // fails only if it exited: then d.exited is ready
		select {
		case err := <-d.exited:
			if err != nil {
				t.Logf("qsnapd exited: %v", err) // a test may have killed it on purpose
			}
		case <-time.After(30 * time.Second):
			_ = d.cmd.Process.Kill()
		}
		if t.Failed() {
			t.Logf("qsnapd log:\n%s", d.log.String())
		}
	})
	d.waitAccepting()
	return d
}

// launch starts the process; its exit status goes to d.exited.
func (d *daemon) launch() {
	d.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "qsnapd"), d.args...)
	cmd.Env = append(os.Environ(), d.env...)
	cmd.Stderr = &d.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	d.cmd = cmd
	go func() { d.exited <- cmd.Wait() }()
}

// kill SIGKILLs the daemon, as a crash would, and returns its exit
// status once it has exited. It may run on any goroutine, but not with
// restart.
func (d *daemon) kill() error {
	_ = d.cmd.Process.Kill() // fails only if it exited already
	return <-d.exited
}

// restart starts a killed daemon again with the same flags, on the same
// state directory and sockets, as systemd restarts a crashed service,
// and waits until it accepts connections.
func (d *daemon) restart() {
	d.t.Helper()
	d.launch()
	d.waitAccepting()
}

// waitAccepting waits until the daemon accepts connections on its
// socket. The file alone proves nothing: it exists from bind() on, a
// moment before listen(), and a killed daemon leaves it behind.
func (d *daemon) waitAccepting() {
	d.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if conn, err := net.Dial("unix", d.socket); err == nil {
			conn.Close()
			return
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("qsnapd does not accept on %s:\n%s", d.socket, d.log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ctl runs bin/qsnapctl against the daemon.
func (d *daemon) ctl(args ...string) (stdout, stderr string, code int) {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "qsnapctl"), args...)
	cmd.Env = append(os.Environ(), "QSNAPD_SOCKET="+d.socket)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		d.t.Fatalf("qsnapctl %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

func (d *daemon) mustCtl(args ...string) string {
	d.t.Helper()
	out, errs, code := d.ctl(args...)
	if code != 0 {
		d.t.Fatalf("qsnapctl %v: exit %d\nstdout: %s\nstderr: %s", args, code, out, errs)
	}
	return out
}

func observe(t *testing.T, vm *qemutest.VM) []qmp.Disk {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, vm.QMP2)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	disks, err := c.Disks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return disks
}

func TestCLIEndToEnd(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{Disks: 2, Style: qemutest.Blockdev, SecondMonitor: true})
	agent, err := agentfake.Start(filepath.Join(vm.Dir, "qga.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	d := startDaemon(t)

	if out := d.mustCtl("attach", "vm1", "--qmp", vm.QMP, "--agent", agent.Path); !strings.Contains(out, "Domain vm1 attached") {
		t.Errorf("attach: %q", out)
	}
	if out := d.mustCtl("list"); !strings.Contains(out, "vm1") {
		t.Errorf("list: %q", out)
	}
	if out := d.mustCtl("domblklist", "vm1"); !strings.Contains(out, "vda") || !strings.Contains(out, vm.Disks[0].Path) {
		t.Errorf("domblklist: %q", out)
	}

	// --print-xml prints and creates nothing.
	out := d.mustCtl("snapshot-create-as", "--print-xml", "vm1", "px", "--disk-only", "--diskspec", "vda,file=/x/y")
	if !strings.Contains(out, "<name>px</name>") || !strings.Contains(out, `file="/x/y"`) {
		t.Errorf("--print-xml: %q", out)
	}

	// Every flag, flags before and after the positionals, and a comma
	// in a file name escaped as ",,".
	comma := filepath.Join(vm.Dir, "vda,s1.qcow2")
	out = d.mustCtl("snapshot-create-as", "--disk-only", "vm1", "s1", "first snapshot", "--atomic", "--quiesce",
		"--diskspec", "vda,snapshot=external,driver=qcow2,stype=file,file="+strings.ReplaceAll(comma, ",", ",,"),
		"--diskspec", "vdb,snapshot=no")
	if !strings.Contains(out, "Domain snapshot s1 created") {
		t.Errorf("snapshot-create-as: %q", out)
	}
	disks := observe(t, vm)
	if disks[0].File != comma || disks[1].File != vm.Disks[1].Path {
		t.Errorf("after s1: vda %s, vdb %s", disks[0].File, disks[1].File)
	}
	if agent.Frozen() {
		t.Error("guest left frozen")
	}

	// --reuse-external with a file made beforehand.
	reused := filepath.Join(vm.Dir, "vdb.pre")
	if o, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", vm.Disks[1].Path, reused).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, o)
	}
	d.mustCtl("snapshot-create-as", "vm1", "--name", "s2", "--description", "reused", "--disk-only", "--reuse-external",
		"--diskspec", "vda,snapshot=no", "--diskspec", "vdb,file="+reused)
	if disks := observe(t, vm); disks[1].File != reused {
		t.Errorf("after s2: vdb %s, want %s", disks[1].File, reused)
	}

	// --no-metadata switches the disk and records nothing.
	d.mustCtl("snapshot-create-as", "vm1", "nm", "--disk-only", "--no-metadata", "--diskspec", "vdb,snapshot=no")
	if out := d.mustCtl("snapshot-list", "vm1", "--name"); strings.Contains(out, "nm") {
		t.Errorf("--no-metadata recorded a snapshot: %q", out)
	}

	// snapshot-create from an XML file.
	xmlFile := filepath.Join(d.dir, "s3.xml")
	writeFile(t, xmlFile, []byte("<domainsnapshot><name>s3</name><disks><disk name='vdb' snapshot='no'/></disks></domainsnapshot>"))
	if out := d.mustCtl("snapshot-create", "vm1", xmlFile, "--disk-only"); !strings.Contains(out, "s3") {
		t.Errorf("snapshot-create: %q", out)
	}

	// Listing, tree, parents, dumpxml, current.
	if out := d.mustCtl("snapshot-list", "vm1"); !strings.Contains(out, "s1") || !strings.Contains(out, "disk-snapshot") {
		t.Errorf("snapshot-list: %q", out)
	}
	if out := d.mustCtl("snapshot-list", "vm1", "--tree"); !strings.Contains(out, "+- s2") {
		t.Errorf("snapshot-list --tree: %q", out)
	}
	if out := d.mustCtl("snapshot-list", "vm1", "--parent"); !strings.Contains(out, "Parent") {
		t.Errorf("snapshot-list --parent: %q", out)
	}
	if out := d.mustCtl("snapshot-list", "vm1", "--roots", "--name"); strings.TrimSpace(out) != "s1" {
		t.Errorf("snapshot-list --roots: %q", out)
	}
	if out := d.mustCtl("snapshot-list", "vm1", "--leaves", "--name"); strings.TrimSpace(out) != "s3" {
		t.Errorf("snapshot-list --leaves: %q", out)
	}
	dump := d.mustCtl("snapshot-dumpxml", "vm1", "s1")
	validate(t, dump)
	if !strings.Contains(dump, "<description>first snapshot</description>") {
		t.Errorf("dumpxml: %s", dump)
	}
	if out := d.mustCtl("snapshot-current", "vm1", "--name"); strings.TrimSpace(out) != "s3" {
		t.Errorf("snapshot-current --name: %q", out)
	}
	d.mustCtl("snapshot-current", "vm1", "s2")
	if out := d.mustCtl("snapshot-current", "vm1", "--name"); strings.TrimSpace(out) != "s2" {
		t.Errorf("current after setting s2: %q", out)
	}
	if out := d.mustCtl("snapshot-delete", "vm1", "s2", "--metadata"); !strings.Contains(out, "deleted") {
		t.Errorf("snapshot-delete: %q", out)
	}
	if out := d.mustCtl("snapshot-list", "vm1", "--parent"); !strings.Contains(out, "s3") || strings.Contains(out, " s2 ") {
		t.Errorf("after delete: %q", out)
	}

	// --json gives the API's JSON.
	var snaps struct {
		Snapshots []struct{ Name string } `json:"snapshots"`
	}
	if err := json.Unmarshal([]byte(d.mustCtl("--json", "snapshot-list", "vm1")), &snaps); err != nil || len(snaps.Snapshots) != 2 {
		t.Errorf("--json snapshot-list: %+v, %v", snaps, err)
	}

	// Freeze and thaw through the fake agent.
	if out := d.mustCtl("domfsfreeze", "vm1", "--mountpoint", "/mnt/data1", "--timeout", "10s"); !strings.Contains(out, "Froze 1 filesystem") {
		t.Errorf("domfsfreeze: %q", out)
	}
	if out := d.mustCtl("domfsstatus", "vm1"); !strings.Contains(out, "frozen") || !agent.Frozen() {
		t.Errorf("domfsstatus: %q", out)
	}
	if out := d.mustCtl("domfsthaw", "vm1"); !strings.Contains(out, "Thawed 1 filesystem") || agent.Frozen() {
		t.Errorf("domfsthaw: %q", out)
	}

	// Failures: exit 1 and "error: ..." on stderr.
	_, errs, code := d.ctl("snapshot-create-as", "vm1", "s1", "--disk-only")
	if code != 1 || !strings.HasPrefix(errs, "error: ") || !strings.Contains(errs, "already exists") {
		t.Errorf("duplicate name: exit %d, stderr %q", code, errs)
	}
	_, errs, code = d.ctl("snapshot-create-as", "nope", "--disk-only")
	if code != 1 || !strings.Contains(errs, "no domain") {
		t.Errorf("unknown domain: exit %d, stderr %q", code, errs)
	}

	// --halt stops the guest after a durable snapshot.
	d.mustCtl("snapshot-create-as", "vm1", "h", "--disk-only", "--halt", "--diskspec", "vdb,snapshot=no")
	select {
	case <-vm.Exited():
	case <-time.After(10 * time.Second):
		t.Error("QEMU still running after --halt")
	}
	d.mustCtl("detach", "vm1")

	// SIGTERM: the daemon exits 0 and removes its sockets.
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-d.exited:
		if err != nil {
			t.Errorf("qsnapd after SIGTERM: %v", err)
		}
		d.exited <- err // for the cleanup
	case <-time.After(30 * time.Second):
		t.Fatal("qsnapd did not stop on SIGTERM")
	}
	if _, err := os.Stat(d.socket); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
}

func validate(t *testing.T, doc string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "s.xml")
	writeFile(t, f, []byte(doc))
	if out, err := exec.Command("virt-xml-validate", f, "domainsnapshot").CombinedOutput(); err != nil {
		t.Errorf("virt-xml-validate: %v: %s\n%s", err, out, doc)
	}
}

// TestSIGTERMThawsWhatTheDaemonFroze: a freeze the daemon holds for a
// caller is thawed when the daemon stops.
func TestSIGTERMThawsWhatTheDaemonFroze(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{Disks: 1, SecondMonitor: true})
	agent, err := agentfake.Start(filepath.Join(vm.Dir, "qga.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	d := startDaemon(t, "--max-freeze", "1h") // the freeze must outlast the test
	d.mustCtl("attach", "vm1", "--qmp", vm.QMP, "--agent", agent.Path)
	d.mustCtl("domfsfreeze", "vm1", "--timeout", "1h")
	if !agent.Frozen() {
		t.Fatal("not frozen")
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err = <-d.exited
	d.exited <- err
	if err != nil {
		t.Errorf("exit: %v", err)
	}
	if agent.Frozen() {
		t.Error("guest left frozen after SIGTERM")
	}
}

// writeFile writes a test's input file.
func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
