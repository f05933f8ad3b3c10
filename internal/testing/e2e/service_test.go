package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/dbusapi/dbustest"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
)

// TestNotify sees READY=1 only once the socket accepts, watchdog pings
// at half of WATCHDOG_USEC, and STOPPING=1 on SIGTERM.
func TestNotify(t *testing.T) {
	dir := qemutest.TempDir(t)
	notifyPath := filepath.Join(dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msgs := make(chan string, 100)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			for _, line := range strings.Split(string(buf[:n]), "\n") {
				msgs <- line
			}
		}
	}()
	d := startDaemonEnv(t, []string{"NOTIFY_SOCKET=" + notifyPath, "WATCHDOG_USEC=400000"})
	want := func(prefix string) string {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case m := <-msgs:
				if strings.HasPrefix(m, prefix) {
					return m
				}
			case <-timeout:
				t.Fatalf("no %s from qsnapd; log:\n%s", prefix, d.log.String())
			}
		}
	}
	want("READY=1")
	// Ready means the socket accepts.
	if _, err := api.NewClient(d.socket).Version(context.Background()); err != nil {
		t.Errorf("not serving at READY=1: %v", err)
	}
	want("STATUS=serving")
	want("WATCHDOG=1")
	want("WATCHDOG=1")
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	want("STOPPING=1")
}

// TestSocketActivation passes four listening sockets the way systemd
// does: LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES with fds 3 to 6, at
// the paths of the config, as the units do, in an order that only
// their names make right. The socket files are systemd's: they outlive
// the daemon, for the next one.
func TestSocketActivation(t *testing.T) {
	dir := qemutest.TempDir(t)
	var files []*os.File
	paths := map[string]string{}
	names := []string{"libvirt-ro", "rw", "libvirt", "ro"}
	for _, name := range names {
		p := filepath.Join(dir, name+".sock")
		ln, err := net.Listen("unix", p)
		if err != nil {
			t.Fatal(err)
		}
		ul := ln.(*net.UnixListener)
		f, err := ul.File()
		if err != nil {
			t.Fatal(err)
		}
		ul.SetUnlinkOnClose(false) // the socket file belongs to the daemon now
		ul.Close()                 // the dup in f stays open
		files = append(files, f)
		paths[name] = p
	}
	// LISTEN_PID must be the daemon's pid: the shell sets it, then execs.
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`, filepath.Join(binDir, "qsnapd"),
		"--state-dir", filepath.Join(dir, "state"), "--metrics-listen", "", "--log-format", "json",
		"--socket", paths["rw"], "--socket-ro", paths["ro"],
		"--libvirt-socket", paths["libvirt"], "--libvirt-socket-ro", paths["libvirt-ro"])
	cmd.Env = append(os.Environ(), fmt.Sprintf("LISTEN_FDS=%d", len(files)), "LISTEN_FDNAMES="+strings.Join(names, ":"))
	cmd.ExtraFiles = files
	var log qemutest.LockedBuffer
	cmd.Stderr = &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		f.Close()
	}
	exited := false
	defer func() {
		if !exited {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait() // only reaps
		}
		if t.Failed() {
			t.Logf("qsnapd log:\n%s", log.String())
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := api.NewClient(paths["rw"]).Version(ctx); err != nil {
		t.Fatalf("passed read-write socket: %v", err)
	}
	_, err := api.NewClient(paths["ro"]).Attach(ctx, api.AttachRequest{Name: "x", QMP: "/x"})
	if api.Code(err) != api.CodeForbidden {
		t.Errorf("passed read-only socket took a mutating request: %v", err)
	}
	if r := virsh(t, nil, paths["libvirt"], "list", "--all"); r.code != 0 {
		t.Errorf("passed libvirt socket: virsh list: exit %d:\n%s", r.code, r.out)
	}
	if r := virsh(t, nil, paths["libvirt-ro"], "list", "--all"); r.code != 0 {
		t.Errorf("passed read-only libvirt socket: virsh list: exit %d:\n%s", r.code, r.out)
	}
	// Which is which, by name: the ready line says.
	if want := fmt.Sprintf(`"libvirt_socket":%q,"libvirt_socket_ro":%q`, paths["libvirt"], paths["libvirt-ro"]); !waitLogged(&log, want) {
		t.Errorf("the ready line does not say %s", want)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited = true
	if err := cmd.Wait(); err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
	for name, p := range paths {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("the %s socket systemd passed is gone after the daemon's exit: %v", name, err)
		}
	}
}

// TestUnitFiles runs systemd-analyze verify on the units, with ExecStart
// pointing at the binary just built.
func TestUnitFiles(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Fatal("systemd-analyze is needed (Debian's systemd): run make deps")
	}
	dir := t.TempDir()
	units := []string{"qsnapd.service", "qsnapd.socket", "qsnapd-ro.socket", "qsnapd-libvirt.socket", "qsnapd-libvirt-ro.socket"}
	for _, name := range units {
		data, err := os.ReadFile(filepath.Join("..", "..", "..", "configs", name))
		if err != nil {
			t.Fatal(err)
		}
		data = []byte(strings.ReplaceAll(string(data), "/usr/bin/qsnapd", filepath.Join(binDir, "qsnapd")))
		writeFile(t, filepath.Join(dir, name), data)
	}
	args := []string{"verify", "--man=no"}
	for _, name := range units {
		args = append(args, filepath.Join(dir, name))
	}
	out, err := exec.Command("systemd-analyze", args...).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestPrometheusScrapesTheDaemon takes two snapshots through the daemon,
// lints its /metrics with promtool, and has a real Prometheus scrape it.
func TestPrometheusScrapesTheDaemon(t *testing.T) {
	for _, bin := range []string{"prometheus", "promtool"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is needed (Debian's prometheus): run make deps", bin)
		}
	}
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	vm := qemutest.Start(t, qemutest.Options{Disks: 2, SecondMonitor: true})
	d := startDaemon(t, "--metrics-listen", metricsAddr)
	d.mustCtl("attach", "vm1", "--qmp", vm.QMP)
	d.mustCtl("snapshot-create-as", "vm1", "m1", "--disk-only", "--atomic")
	d.mustCtl("snapshot-create-as", "vm1", "m2", "--disk-only", "--atomic")
	d.ctl("snapshot-create-as", "vm1", "m2", "--disk-only") // refused: exists

	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	lint := exec.Command("promtool", "check", "metrics")
	lint.Stdin = strings.NewReader(string(body))
	if out, err := lint.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	for _, want := range []string{
		`qsnapd_snapshots_total{mode="atomic",result="success"} 2`,
		`qsnapd_domains{state="connected"} 1`,
		`qsnapd_guests_frozen 0`,
		`qsnapd_qmp_command_duration_seconds_count{command="transaction"} 2`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	promPort := freePort(t)
	promDir := t.TempDir()
	cfg := fmt.Sprintf("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: qsnapd\n    static_configs:\n      - targets: ['%s']\n", metricsAddr)
	writeFile(t, filepath.Join(promDir, "prometheus.yml"), []byte(cfg))
	prom := exec.Command("prometheus", "--config.file="+filepath.Join(promDir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(promDir, "data"), fmt.Sprintf("--web.listen-address=127.0.0.1:%d", promPort))
	var promLog qemutest.LockedBuffer
	prom.Stdout, prom.Stderr = &promLog, &promLog
	prom.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := prom.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = prom.Process.Kill()
		_ = prom.Wait() // killed: the status says nothing
		if t.Failed() {
			t.Logf("prometheus log:\n%s", promLog.String())
		}
	}()
	query := func(q string) (float64, bool) {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/api/v1/query?query=%s", promPort, url.QueryEscape(q)))
		if err != nil {
			return 0, false
		}
		defer resp.Body.Close()
		var r struct {
			Data struct {
				Result []struct {
					Value [2]any `json:"value"`
				} `json:"result"`
			} `json:"data"`
		}
		if json.NewDecoder(resp.Body).Decode(&r) != nil || len(r.Data.Result) != 1 {
			return 0, false
		}
		s, _ := r.Data.Result[0].Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		return v, err == nil
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		up, ok1 := query(`up{job="qsnapd"}`)
		n, ok2 := query(`qsnapd_snapshots_total{job="qsnapd",mode="atomic",result="success"}`)
		if ok1 && ok2 && up == 1 && n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus: up %v (%v), snapshots %v (%v)", up, ok1, n, ok2)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// TestDBusAndInhibitor exports the API on a private bus that stands in
// for both the session and the system bus, calls it with busctl, and
// checks the logind inhibitor held during a snapshot.
func TestDBusAndInhibitor(t *testing.T) {
	bus := dbustest.Start(t)
	logind := dbustest.StartLogind(t, bus)
	vm := qemutest.Start(t, qemutest.Options{Disks: 1, SecondMonitor: true})
	d := startDaemonEnv(t, []string{"DBUS_SESSION_BUS_ADDRESS=" + bus.Address, "DBUS_SYSTEM_BUS_ADDRESS=" + bus.Address}, "--dbus", "session")
	d.mustCtl("attach", "vm1", "--qmp", vm.QMP)

	busctl := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("busctl", append([]string{"--address=" + bus.Address, "call", "io.github.qsnapd",
			"/io/github/qsnapd", "io.github.qsnapd.Manager1"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("busctl %v: %v: %s", args, err, out)
		}
		return string(out)
	}
	if out := busctl("ListDomains"); !strings.Contains(out, `"vm1"`) {
		t.Errorf("ListDomains: %s", out)
	}
	// Watch for the signal while creating a snapshot over D-Bus.
	mon := exec.Command("dbus-monitor", "--address", bus.Address, "type='signal',interface='io.github.qsnapd.Manager1'")
	monOut, _ := mon.StdoutPipe()
	if err := mon.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = mon.Process.Kill(); _ = mon.Wait() }() // killed: the status says nothing
	signals := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(monOut)
		for sc.Scan() {
			signals <- sc.Text()
		}
	}()
	// And on the event stream: the signal and the event are one.
	stream := d.ctlBackground("event", "--domain", "vm1", "--type", "snapshot-created", "--timeout", "30")
	time.Sleep(200 * time.Millisecond) // let the monitor and the stream subscribe
	if out := busctl("CreateSnapshot", "ssu", "vm1", "<domainsnapshot><name>viabus</name></domainsnapshot>", "16"); !strings.Contains(out, `"viabus"`) {
		t.Errorf("CreateSnapshot: %s", out)
	}
	timeout := time.After(10 * time.Second)
	for seen := false; !seen; {
		select {
		case line := <-signals:
			seen = strings.Contains(line, "member=SnapshotCreated")
		case <-timeout:
			t.Fatal("no SnapshotCreated signal")
		}
	}
	if out, errOut, code := stream(); code != 0 || !strings.HasPrefix(out, "event 'snapshot-created' for domain 'vm1': viabus (op ") {
		t.Errorf("the event stream of a snapshot made over D-Bus: exit %d\n%s%s", code, out, errOut)
	}
	// The snapshot held a delay inhibitor for shutdown and sleep, and let
	// it go when done.
	locks := logind.Locks()
	if len(locks) != 1 || locks[0].What != "shutdown:sleep" || locks[0].Mode != "delay" {
		t.Fatalf("inhibitor locks: %+v", locks)
	}
	select {
	case <-locks[0].Closed():
	case <-time.After(10 * time.Second):
		t.Error("inhibitor lock still held after the snapshot")
	}
	if out := d.mustCtl("snapshot-list", "vm1", "--name"); !strings.Contains(out, "viabus") {
		t.Errorf("snapshot made over D-Bus not listed: %q", out)
	}
}

// TestOneInfoLinePerSnapshot reads the daemon's JSON log: one info line
// per snapshot with typed fields, and no info line per QMP command.
func TestOneInfoLinePerSnapshot(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{Disks: 2, SecondMonitor: true})
	d := startDaemon(t, "--log-level", "info")
	d.mustCtl("attach", "vm1", "--qmp", vm.QMP)
	d.mustCtl("snapshot-create-as", "vm1", "l1", "--disk-only", "--atomic")
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := <-d.exited
	d.exited <- err
	var created int
	for _, line := range strings.Split(strings.TrimSpace(d.log.String()), "\n") {
		var entry map[string]any
		if err := json.Unmarshal([]byte(line), &entry); err != nil {
			t.Fatalf("not a JSON log line: %q", line)
		}
		if entry["level"] == "debug" {
			t.Errorf("debug line at --log-level info: %q", line)
		}
		msg, _ := entry["msg"].(string)
		if strings.Contains(strings.ToLower(msg), "qmp") {
			t.Errorf("a log line per QMP command: %q", line)
		}
		if msg == "snapshot created" {
			created++
			for _, field := range []string{"domain", "op", "mode", "disks", "freeze_seconds", "switch_seconds", "duration_seconds"} {
				if _, ok := entry[field]; !ok {
					t.Errorf("snapshot line lacks %s: %q", field, line)
				}
			}
			if _, ok := entry["duration_seconds"].(float64); !ok {
				t.Errorf("duration_seconds is not a number: %q", line)
			}
		}
	}
	if created != 1 {
		t.Errorf("%d 'snapshot created' lines, want 1", created)
	}
}

// TestMakeInstall stages an install and checks that everything lands
// where Debian expects it.
func TestMakeInstall(t *testing.T) {
	stage := t.TempDir()
	out, err := exec.Command("make", "-C", "../../..", "install", "DESTDIR="+stage, "PREFIX=/usr").CombinedOutput()
	if err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	for _, f := range []string{
		"usr/bin/qsnapd", "usr/bin/qsnapctl", "lib/systemd/system/qsnapd.service", "lib/systemd/system/qsnapd.socket",
		"lib/systemd/system/qsnapd-ro.socket", "lib/systemd/system/qsnapd-libvirt.socket", "lib/systemd/system/qsnapd-libvirt-ro.socket",
		"usr/lib/sysusers.d/qsnapd.conf", "usr/lib/tmpfiles.d/qsnapd.conf",
		"usr/share/dbus-1/system.d/io.github.qsnapd.conf", "usr/share/qsnapd/qsnapd-alerts.yml", "etc/qsnapd/qsnapd.toml",
		"usr/share/man/man8/qsnapd.8.gz", "usr/share/man/man1/qsnapctl.1.gz", "usr/share/doc/qsnapd/copyright",
		"usr/share/doc/qsnapd/examples/images.conf",
	} {
		if _, err := os.Stat(filepath.Join(stage, f)); err != nil {
			t.Errorf("not installed: %s", f)
		}
	}
	// The installed config is the one the unit points at, and it loads.
	if out, err := exec.Command(filepath.Join(stage, "usr", "bin", "qsnapd"), "--config", filepath.Join(stage, "etc", "qsnapd", "qsnapd.toml"), "--version").CombinedOutput(); err != nil {
		t.Errorf("qsnapd --config with the installed config: %v: %s", err, out)
	}
}

// TestConfigDomainsAttachedAtStartup: [[domain]] entries are attached at
// startup, whether or not their QEMU is up yet; one that comes up later
// is connected by the supervisor.
func TestConfigDomainsAttachedAtStartup(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{Disks: 1, SecondMonitor: true})
	later := filepath.Join(qemutest.TempDir(t), "qmp.sock")
	cfg := filepath.Join(t.TempDir(), "qsnapd.toml")
	writeFile(t, cfg, []byte(fmt.Sprintf("[[domain]]\nname = \"up\"\nqmp = %q\n\n[[domain]]\nname = \"later\"\nqmp = %q\n", vm.QMP, later)))
	d := startDaemon(t, "--config", cfg)
	// The socket accepts before the first connection attempts are over:
	// a request waits for its domain's attempt rather than fail.
	d.mustCtl("snapshot-create-as", "up", "s1", "--disk-only")
	if _, errs, code := d.ctl("snapshot-create-as", "later", "s1", "--disk-only"); code != 1 || !strings.Contains(errs, "disconnected") {
		t.Errorf("snapshot of a domain whose QEMU is not up: exit %d, %q", code, errs)
	}
	// Both attempts are over now: the list says which domain is up, in
	// its State column ("connected" is part of "disconnected").
	out := d.mustCtl("list")
	state := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 2 {
			state[f[0]] = f[1]
		}
	}
	if state["up"] != "connected" || state["later"] != "disconnected" {
		t.Errorf("list: up %q, later %q; want connected, disconnected:\n%s", state["up"], state["later"], out)
	}
	// Its QEMU appears; the daemon connects on its own.
	qemutest.Start(t, qemutest.Options{Disks: 1, Extra: []string{"-qmp", "unix:" + later + ",server=on,wait=off"}})
	deadline := time.Now().Add(60 * time.Second)
	for {
		var doms []api.Domain
		if err := json.Unmarshal([]byte(d.mustCtl("--json", "list")), &doms); err != nil {
			t.Fatal(err)
		}
		connected := 0
		for _, dom := range doms {
			if dom.Connected {
				connected++
			}
		}
		if connected == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the later domain never connected: %+v", doms)
		}
		time.Sleep(100 * time.Millisecond)
	}
	d.mustCtl("snapshot-create-as", "later", "s1", "--disk-only")
}
