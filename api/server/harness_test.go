package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/api/server"
	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/qmp"
)

// daemon is an in-process API server over a real driver, whose domains
// run on QEMU, real or fake as the suite the test runs in.
type daemon struct {
	t        *testing.T
	dir      string
	rw, ro   string
	access   server.Access
	drv      *driver.Driver
	client   *api.Client
	roClient *api.Client
	vms      map[string]*qemutest.VM
	stop     context.CancelFunc
	done     chan error
	opts     daemonOpts
	srv      *server.Server
}

// daemonOpts tune a daemon for a test.
type daemonOpts struct {
	cfg server.Config // Access is startDaemon's
	// sendBuffer, if set, is every accepted connection's socket send
	// buffer (SO_SNDBUF): a client that does not read blocks the
	// server's writes sooner.
	sendBuffer int
	// server, if set, adjusts the server before it serves.
	server func(*server.Server)
	// tune, if set, changes the driver's configuration.
	tune func(*driver.Config)
}

func startDaemon(t *testing.T, access server.Access) *daemon {
	t.Helper()
	return startDaemonWith(t, daemonOpts{cfg: server.Config{Access: access}})
}

func startDaemonWith(t *testing.T, o daemonOpts) *daemon {
	t.Helper()
	dir := qemutest.TempDir(t)
	d := &daemon{t: t, dir: dir, rw: filepath.Join(dir, "rw.sock"), ro: filepath.Join(dir, "ro.sock"), access: o.cfg.Access,
		vms: map[string]*qemutest.VM{}, opts: o}
	d.start()
	t.Cleanup(d.close)
	return d
}

// smallSendBuffers sets each accepted connection's send buffer.
type smallSendBuffers struct {
	net.Listener
	size int
}

func (l smallSendBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if uc, ok := c.(*net.UnixConn); ok && err == nil {
		if err := uc.SetWriteBuffer(l.size); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, err
}

// start opens a driver on d's state and serves it.
func (d *daemon) start() {
	d.t.Helper()
	dcfg := driver.Config{StateDir: filepath.Join(d.dir, "state")}
	if d.opts.tune != nil {
		d.opts.tune(&dcfg)
	}
	drv, err := driver.Open(dcfg, nil)
	if err != nil {
		d.t.Fatal(err)
	}
	d.drv = drv
	rwl, err := net.Listen("unix", d.rw)
	if err != nil {
		d.t.Fatal(err)
	}
	rol, err := net.Listen("unix", d.ro)
	if err != nil {
		d.t.Fatal(err)
	}
	if d.opts.sendBuffer > 0 {
		rwl, rol = smallSendBuffers{rwl, d.opts.sendBuffer}, smallSendBuffers{rol, d.opts.sendBuffer}
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.stop, d.done = cancel, make(chan error, 1)
	cfg := d.opts.cfg
	cfg.Access = d.access
	srv := server.New(drv, cfg, nil)
	if d.opts.server != nil {
		d.opts.server(srv)
	}
	d.srv = srv
	go func() { d.done <- srv.Serve(ctx, rwl, rol) }()
	d.client, d.roClient = api.NewClient(d.rw), api.NewClient(d.ro)
}

// restart stops the daemon and starts another on the same state, as a
// restarted qsnapd: the operations of the one before are in the
// journal only. It waits for the domains' recovery.
func (d *daemon) restart() {
	d.t.Helper()
	d.close()
	d.start()
	for name := range d.vms {
		if err := d.drv.WaitRecovered(ctx(d.t), name); err != nil {
			d.t.Fatal(err)
		}
	}
}

func (d *daemon) close() {
	d.client.Close()
	d.roClient.Close()
	d.stop()
	if err := <-d.done; err != nil {
		d.t.Errorf("serve: %v", err)
	}
	d.drv.Close()
}

// vm starts a QEMU on the backend of the suite d's test runs in and
// attaches it under name.
func (d *daemon) vm(name string, disks int) *qemutest.VM {
	d.t.Helper()
	vm := qemutest.Start(d.t, qemutest.Options{Backend: qemutest.SuiteBackend(d.t), Disks: disks, Style: qemutest.Blockdev, SecondMonitor: true})
	if _, err := d.client.Attach(ctx(d.t), api.AttachRequest{Name: name, QMP: vm.QMP}); err != nil {
		d.t.Fatal(err)
	}
	d.vms[name] = vm
	return vm
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

// raw sends a request as given, for inputs the client cannot produce,
// and decodes the error body every refusal carries.
func raw(t *testing.T, socket, method, path string, body []byte, hdr map[string]string) (int, api.ErrorBody) {
	t.Helper()
	r := send(t, socket, method, path, body, hdr)
	var eb api.ErrorBody
	if err := json.Unmarshal(r.body, &eb); err != nil {
		t.Fatalf("%s %s: status %d, the answer is not JSON: %v: %q", method, path, r.status, err, r.body)
	}
	return r.status, eb
}

// state is what a bad request must not change.
func (d *daemon) state(name string) string {
	d.t.Helper()
	vm := d.vms[name]
	obs, err := qmp.Dial(ctx(d.t), vm.QMP2)
	if err != nil {
		d.t.Fatal(err)
	}
	defer obs.Close()
	disks, err := obs.Disks(ctx(d.t))
	if err != nil {
		d.t.Fatal(err)
	}
	entries, err := os.ReadDir(vm.Dir)
	if err != nil {
		d.t.Fatal(err)
	}
	var files []string
	for _, e := range entries {
		files = append(files, e.Name())
	}
	snaps, err := d.drv.Snapshots(name)
	if err != nil {
		d.t.Fatal(err)
	}
	doms := d.drv.Domains()
	return fmt.Sprintf("disks=%v files=%v snaps=%d domains=%d", disks, files, len(snaps), len(doms))
}

// holdAtSwitching makes the next snapshot stop just before its switch:
// inside is closed when it gets there, and closing leave lets it go on.
func (d *daemon) holdAtSwitching() (inside, leave chan struct{}) {
	inside, leave = make(chan struct{}), make(chan struct{})
	d.drv.Hooks.AtStep = func(step string) error {
		if step == driver.HookSwitching {
			close(inside)
			<-leave
		}
		return nil
	}
	return inside, leave
}
