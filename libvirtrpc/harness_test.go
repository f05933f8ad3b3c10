package libvirtrpc_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/libvirtrpc"
	"github.com/qsnapd/qsnapd/qmp"
)

// endpoint is an in-process libvirt endpoint over a real driver, whose
// domains run on QEMU, real or fake as the suite the test runs in.
type endpoint struct {
	t      *testing.T
	dir    string
	rw, ro string
	drv    *driver.Driver
	srv    *libvirtrpc.Server
	vms    map[string]*qemutest.VM
	served chan error
}

// endpointOpts tune an endpoint for a test.
type endpointOpts struct {
	cfg  libvirtrpc.Config
	tune func(*driver.Config)
}

func startEndpoint(t *testing.T, o endpointOpts) *endpoint {
	t.Helper()
	dir := qemutest.TempDir(t)
	e := &endpoint{t: t, dir: dir, rw: filepath.Join(dir, "lv.sock"), ro: filepath.Join(dir, "lv-ro.sock"),
		vms: map[string]*qemutest.VM{}, served: make(chan error, 2)}
	dcfg := driver.Config{StateDir: filepath.Join(dir, "state")}
	if o.tune != nil {
		o.tune(&dcfg)
	}
	drv, err := driver.Open(dcfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.drv = drv
	e.srv = libvirtrpc.New(drv, o.cfg, nil)
	for path, ro := range map[string]bool{e.rw: false, e.ro: true} {
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		go func() { e.served <- e.srv.Serve(ln, ro) }()
	}
	t.Cleanup(e.close)
	return e
}

func (e *endpoint) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		e.t.Errorf("shutdown: %v", err)
	}
	for range 2 {
		if err := <-e.served; err != libvirtrpc.ErrServerClosed {
			e.t.Errorf("serve: %v", err)
		}
	}
	e.drv.Close()
}

// vm starts a QEMU on the suite's backend and attaches it under name.
func (e *endpoint) vm(name string, disks int) *qemutest.VM {
	e.t.Helper()
	vm := qemutest.Start(e.t, qemutest.Options{Backend: qemutest.SuiteBackend(e.t), Disks: disks, Style: qemutest.Blockdev, SecondMonitor: true})
	if _, err := e.drv.AttachDomain(testCtx(e.t), driver.DomainConfig{Name: name, QMP: vm.QMP}); err != nil {
		e.t.Fatal(err)
	}
	e.vms[name] = vm
	return vm
}

// uri is the libvirt URI of the read-write (or read-only) socket.
func (e *endpoint) uri(ro bool) string {
	sock := e.rw
	if ro {
		sock = e.ro
	}
	return "qemu+unix:///system?socket=" + sock
}

// virshResult is one virsh run.
type virshResult struct {
	stdout, stderr string
	exit           int
}

// virsh runs the stock virsh against the endpoint.
func (e *endpoint) virsh(args ...string) virshResult {
	e.t.Helper()
	return e.virshURI(e.uri(false), nil, args...)
}

func (e *endpoint) virshURI(uri string, env []string, args ...string) virshResult {
	e.t.Helper()
	path := requireTool(e.t, "virsh")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, append([]string{"-c", uri}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	res := virshResult{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		res.exit = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("virsh %v: %v", args, err)
	}
	return res
}

// requireTool finds a stock client, or skips: make deps installs them.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed (make deps installs libvirt-clients and python3-libvirt)", name)
	}
	return path
}

func testCtx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

func execOut(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

// qemuDisks are a VM's disks as QEMU has them, read through its second
// monitor, which the endpoint does not use.
func qemuDisks(t *testing.T, vm *qemutest.VM) []qmp.Disk {
	t.Helper()
	obs, err := qmp.Dial(testCtx(t), vm.QMP2)
	if err != nil {
		t.Fatal(err)
	}
	defer obs.Close()
	disks, err := obs.Disks(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	return disks
}
