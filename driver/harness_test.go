package driver

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/qsnapd/qsnapd/guestagent/agentfake"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/internal/testing/qmpproxy"
	"github.com/qsnapd/qsnapd/qmp"
)

// env is one QEMU, real or fake as the suite runs, a driver attached to
// it (through a fault proxy when asked) and a second monitor to check
// QEMU independently.
type env struct {
	t     *testing.T
	vm    *qemutest.VM
	drv   *Driver
	obs   *qmp.Client
	proxy *qmpproxy.Proxy
	agent *agentfake.Agent
	cfg   Config
	name  string
}

type envOpts struct {
	disks int
	style qemutest.Style
	proxy bool
	cfg   func(*Config)
	// detached leaves the driver closed and the domain unattached, for
	// tests that run the engine in another process first.
	detached bool
	// agent attaches a fake guest agent.
	agent bool
	// agentChannel is the domain's agent channel mode; empty for the
	// default (hold).
	agentChannel string
}

func newEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	if o.disks == 0 {
		o.disks = 1
	}
	return newEnvWith(t, qemutest.Options{Disks: o.disks, Style: o.style, SecondMonitor: true}, o)
}

// newEnvWith starts the VM on the backend of the suite t runs in,
// unless vmOpts asks for the fake.
func newEnvWith(t *testing.T, vmOpts qemutest.Options, o envOpts) *env {
	t.Helper()
	if vmOpts.Backend == qemutest.Real {
		vmOpts.Backend = qemutest.SuiteBackend(t)
	}
	vm := qemutest.Start(t, vmOpts)
	e := &env{t: t, vm: vm, name: "vm1"}
	qmpPath := vm.QMP
	if o.proxy {
		p, err := qmpproxy.Start(filepath.Join(vm.Dir, "proxy.sock"), vm.QMP)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := p.Close(); err != nil {
				t.Errorf("proxy: %v", err)
			}
		})
		e.proxy, qmpPath = p, p.Path()
	}
	e.cfg = Config{StateDir: filepath.Join(vm.Dir, "state"), ReconnectMin: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond}
	if o.cfg != nil {
		o.cfg(&e.cfg)
	}
	agentPath := ""
	if o.agent {
		a, err := agentfake.Start(filepath.Join(vm.Dir, "qga.sock"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := a.Close(); err != nil {
				t.Errorf("fake agent: %v", err)
			}
		})
		e.agent, agentPath = a, a.Path
	}
	ctx := testCtx(t)
	if !o.detached {
		e.open()
		if _, err := e.drv.AttachDomain(ctx, DomainConfig{Name: e.name, QMP: qmpPath, Agent: agentPath, AgentChannel: o.agentChannel}); err != nil {
			t.Fatalf("attach: %v", err)
		}
		if err := e.drv.WaitRecovered(ctx, e.name); err != nil {
			t.Fatal(err)
		}
	}
	obs, err := qmp.Dial(ctx, vm.QMP2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { obs.Close() })
	e.obs = obs
	return e
}

// open (re)opens the driver on the env's state dir.
func (e *env) open() {
	e.t.Helper()
	drv, err := Open(e.cfg, zaptest.NewLogger(e.t))
	if err != nil {
		e.t.Fatal(err)
	}
	// Every check runs on the record of the chains wherever a domain
	// can keep one, however shallow its chains: each operation then
	// checks the record against QEMU (chains.go).
	drv.alwaysRecordChains = true
	e.drv = drv
	e.t.Cleanup(func() { drv.Close() })
}

// restart closes the driver and opens a new one on the same state.
func (e *env) restart() {
	e.t.Helper()
	if err := e.drv.Close(); err != nil {
		e.t.Fatalf("close driver: %v", err)
	}
	e.open()
	if err := e.drv.WaitRecovered(testCtx(e.t), e.name); err != nil {
		e.t.Fatal(err)
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func (e *env) create(xml string, flags CreateFlags) (*CreateResult, error) {
	return e.drv.CreateSnapshot(testCtx(e.t), e.name, CreateRequest{XML: xml, Flags: flags})
}

func (e *env) mustCreate(xml string, flags CreateFlags) *CreateResult {
	e.t.Helper()
	res, err := e.create(xml, flags)
	if err != nil {
		e.t.Fatalf("create snapshot: %v", err)
	}
	return res
}

// disks reads the disks through the second monitor.
func (e *env) disks() []qmp.Disk {
	e.t.Helper()
	disks, err := e.obs.Disks(testCtx(e.t))
	if err != nil {
		e.t.Fatal(err)
	}
	return disks
}

// world is everything a snapshot may change.
type world struct {
	Disks   []qmp.Disk
	Nodes   []string
	Files   map[string]int64
	Snaps   []string
	Current string
	Active  int // unfinished journal entries
	Jobs    int
}

func (e *env) world() world {
	e.t.Helper()
	ctx := testCtx(e.t)
	w := world{Disks: e.disks(), Files: map[string]int64{}}
	nodes, err := e.obs.QueryNamedBlockNodes(ctx, true)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, n := range nodes {
		w.Nodes = append(w.Nodes, n.NodeName)
	}
	sort.Strings(w.Nodes)
	entries, err := os.ReadDir(e.vm.Dir)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, de := range entries {
		if fi, err := de.Info(); err == nil && fi.Mode().IsRegular() {
			w.Files[de.Name()] = fi.Size()
		}
	}
	if e.drv == nil {
		return w
	}
	snaps, err := e.drv.Store().Snapshots(e.name)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, s := range snaps {
		w.Snaps = append(w.Snaps, s.Name)
	}
	w.Current, _ = e.drv.Store().Current(e.name)
	ops, err := e.drv.Store().Ops(true)
	if err != nil {
		e.t.Fatal(err)
	}
	w.Active = len(ops)
	jobs, err := e.obs.QueryBlockJobs(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	w.Jobs = len(jobs)
	return w
}

func (e *env) assertUnchanged(before world) {
	e.t.Helper()
	after := e.world()
	if !reflect.DeepEqual(before, after) {
		e.t.Errorf("state changed:\nbefore %+v\nafter  %+v", before, after)
	}
}

// hmp runs an HMP command through the second monitor.
func (e *env) hmp(cmd string) string {
	e.t.Helper()
	out, err := e.obs.HumanMonitorCommand(testCtx(e.t), cmd)
	if err != nil {
		e.t.Fatalf("hmp %s: %v", cmd, err)
	}
	return out
}

// qemuIO runs an HMP qemu-io command on disk target and returns what it
// printed: QEMU prints qemu-io's output on its stdout, not the monitor.
// Real QEMU only: the fake has no data and no HMP.
func (e *env) qemuIO(target, cmd string) string {
	e.t.Helper()
	if !e.vm.Real() {
		return "qemu-io: the fake backend has no data; check e.vm.Real() first"
	}
	mark := len(e.vm.Output())
	e.hmp(fmt.Sprintf(`qemu-io -d /machine/peripheral/%s/virtio-backend %q`, target, cmd))
	// It may run in a fault proxy's goroutine, so it reports by its
	// return value, never t.Fatal.
	deadline := time.Now().Add(10 * time.Second)
	for {
		out := e.vm.Output()[mark:]
		if strings.Contains(out, "bytes at offset") || strings.Contains(out, "rror") || time.Now().After(deadline) {
			return out
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// imageInfo runs qemu-img info -U on a file.
func imageBacking(t *testing.T, path string) string {
	t.Helper()
	out, err := exec.Command("qemu-img", "info", "-U", "--output=json", path).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img info %s: %v: %s", path, err, out)
	}
	s := string(out)
	const key = `"backing-filename": "`
	i := strings.Index(s, key)
	if i < 0 {
		return ""
	}
	s = s[i+len(key):]
	return s[:strings.IndexByte(s, '"')]
}

// diskXML is a <disks> entry for a snapshot XML.
func diskXML(name, snapshot, file string) string {
	attr := ""
	if snapshot != "" {
		attr = fmt.Sprintf(" snapshot='%s'", snapshot)
	}
	if file == "" {
		return fmt.Sprintf("<disk name='%s'%s/>", name, attr)
	}
	return fmt.Sprintf("<disk name='%s'%s><source file='%s'/></disk>", name, attr, file)
}

func snapXML(name string, disks ...string) string {
	n := ""
	if name != "" {
		n = "<name>" + name + "</name>"
	}
	return "<domainsnapshot>" + n + "<disks>" + strings.Join(disks, "") + "</disks></domainsnapshot>"
}

// holdAtSwitching makes the next snapshot stop where the journal says
// switching, holding the domain, until release is closed; held closes
// once it got there.
func (e *env) holdAtSwitching() (held, release chan struct{}) {
	held, release = make(chan struct{}), make(chan struct{})
	e.drv.Hooks.AtStep = func(step string) error {
		if step == HookSwitching {
			close(held)
			<-release
		}
		return nil
	}
	return held, release
}
