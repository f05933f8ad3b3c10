package dbusapi_test

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/introspect"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/qsnapd/qsnapd/dbusapi"
	"github.com/qsnapd/qsnapd/dbusapi/dbustest"
	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
)

var _ dbusapi.Driver = (*driver.Driver)(nil)

// fakeDriver knows domains vm1 (connected, frozen) and vm2 (no agent),
// and sends the events the real driver would.
// Tests set its fields under mu: calls come in on godbus's goroutines.
type fakeDriver struct {
	mu        sync.Mutex
	events    driver.Events
	deadlines map[string]time.Duration // method: time left when called
	started   chan struct{}            // a snapshot is in flight
	finish    chan struct{}            // if set, a snapshot waits for it
}

func (f *fakeDriver) set(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn()
}

func (f *fakeDriver) ev() driver.Events {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.events
}

func (f *fakeDriver) called(ctx context.Context, method string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if dl, ok := ctx.Deadline(); ok {
		f.deadlines[method] = time.Until(dl)
	}
}

func (f *fakeDriver) Domains() []driver.DomainInfo {
	return []driver.DomainInfo{
		{Name: "vm1", QMP: "/run/vm1.qmp", Connected: true, Freeze: driver.FreezeInfo{Frozen: true}},
		{Name: "vm2", QMP: "/run/vm2.qmp"},
	}
}

func known(domain string) error {
	if domain != "vm1" && domain != "vm2" {
		return fmt.Errorf("%w: no domain named '%s'", driver.ErrNoDomain, domain)
	}
	return nil
}

func (f *fakeDriver) Snapshots(domain string) ([]driver.SnapshotRecord, error) {
	if err := known(domain); err != nil {
		return nil, err
	}
	return []driver.SnapshotRecord{{Name: "s1", State: "disk-snapshot"}, {Name: "s2", Parent: "s1", State: "disk-snapshot"}}, nil
}

func (f *fakeDriver) CreateSnapshot(ctx context.Context, domain string, req driver.CreateRequest) (*driver.CreateResult, error) {
	f.called(ctx, "CreateSnapshot")
	if err := known(domain); err != nil {
		return nil, err
	}
	var def struct {
		Name string `xml:"name"`
	}
	if err := xml.Unmarshal([]byte(req.XML), &def); err != nil {
		return nil, fmt.Errorf("%w: snapshot XML: %w", driver.ErrInvalidArg, err)
	}
	switch {
	case def.Name == "s1":
		return nil, fmt.Errorf("%w: snapshot 's1' exists", driver.ErrSnapshotExists)
	case def.Name == "bug":
		return nil, errors.New("something unforeseen")
	case req.Flags&driver.FlagDiskOnly == 0:
		return nil, fmt.Errorf("%w: qsnapd takes disk-only snapshots", driver.ErrUnsupported)
	case domain == "vm2" && req.Flags&driver.FlagQuiesce != 0:
		// A failed quiesce wraps the agent's error: the agent's kind wins.
		return nil, fmt.Errorf("%w: %w", driver.ErrQuiesce, driver.ErrAgentUnresponsive)
	}
	f.ev().OperationsInFlight(1)
	defer f.ev().OperationsInFlight(-1)
	f.mu.Lock()
	started, finish := f.started, f.finish
	f.mu.Unlock()
	if started != nil {
		close(started)
	}
	if finish != nil {
		<-finish
	}
	f.ev().SnapshotFinished(driver.SnapshotEvent{Domain: domain, Name: def.Name, Result: driver.ResultSuccess})
	return &driver.CreateResult{Name: def.Name, XML: "<domainsnapshot><name>" + def.Name + "</name></domainsnapshot>"}, nil
}

// DeleteSnapshot deletes s1 (with CHILDREN, s2 then s1) as operation
// op-1, and sends the event; s9 is cancelled, any other snapshot
// unknown.
func (f *fakeDriver) DeleteSnapshot(ctx context.Context, domain, name string, req driver.DeleteRequest) (*driver.DeleteResult, error) {
	f.called(ctx, "DeleteSnapshot")
	if err := known(domain); err != nil {
		return nil, err
	}
	switch {
	case req.Flags&driver.DeleteChildren != 0 && req.Flags&driver.DeleteChildrenOnly != 0:
		return nil, fmt.Errorf("%w: CHILDREN and CHILDREN_ONLY are mutually exclusive", driver.ErrInvalidArg)
	case req.OpID == "":
		return nil, fmt.Errorf("%w: no operation id", driver.ErrInvalidArg)
	case name == "s9":
		f.ev().SnapshotDeleted(driver.DeleteEvent{Domain: domain, Names: []string{name}, OpID: req.OpID, Merged: true,
			Result: driver.ResultCancelled, Err: driver.ErrCancelled})
		return nil, fmt.Errorf("merge: %w", driver.ErrCancelled)
	case name != "s1":
		return nil, fmt.Errorf("%w: no snapshot named '%s'", driver.ErrNoSnapshot, name)
	}
	deleted := []string{"s1"}
	if req.Flags&driver.DeleteChildren != 0 {
		deleted = []string{"s2", "s1"}
	}
	f.ev().SnapshotDeleted(driver.DeleteEvent{Domain: domain, Names: deleted, OpID: "op-1",
		Merged: req.Flags&driver.DeleteMetadataOnly == 0, Result: driver.ResultSuccess})
	return &driver.DeleteResult{OpID: "op-1", Deleted: deleted}, nil
}

func (f *fakeDriver) FSFreeze(ctx context.Context, domain string, mountpoints []string, hold time.Duration) (int, error) {
	f.called(ctx, "FSFreeze")
	if err := known(domain); err != nil {
		return 0, err
	}
	if domain == "vm2" {
		return 0, fmt.Errorf("freeze: %w", driver.ErrAgentUnresponsive)
	}
	f.ev().GuestFrozen(domain, driver.OwnerFSFreeze)
	return max(len(mountpoints), 2), nil
}

func (f *fakeDriver) FSThaw(ctx context.Context, domain string) (int, error) {
	f.called(ctx, "FSThaw")
	if err := known(domain); err != nil {
		return 0, err
	}
	f.ev().GuestThawed(domain, 1500*time.Millisecond)
	return 2, nil
}

type env struct {
	bus    *dbustest.Bus
	drv    *fakeDriver
	svc    *dbusapi.Service
	client *dbus.Conn
}

// setup exports the API of a fake driver on a private bus; the driver's
// events go to the service's signals.
func setup(t *testing.T) *env {
	t.Helper()
	bus := dbustest.Start(t)
	drv := &fakeDriver{deadlines: map[string]time.Duration{}}
	svc, err := dbusapi.Export(bus.Conn(t), drv, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	drv.set(func() { drv.events = svc.Events() })
	return &env{bus: bus, drv: drv, svc: svc, client: bus.Conn(t)}
}

func (e *env) call(method string, args ...any) *dbus.Call {
	return e.client.Object(dbusapi.BusName, dbusapi.ObjectPath).Call(dbusapi.Interface+"."+method, 0, args...)
}

// cli runs a D-Bus command-line client.
func cli(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s is needed (Debian's systemd and dbus-bin): run make deps", name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// TestCallsWithBusctl calls every method with busctl and checks the
// replies against the introspection data.
func TestCallsWithBusctl(t *testing.T) {
	e := setup(t)
	node, err := introspect.Call(e.client.Object(dbusapi.BusName, dbusapi.ObjectPath))
	if err != nil {
		t.Fatal(err)
	}
	outSig := map[string]string{}
	for _, iface := range node.Interfaces {
		for _, m := range iface.Methods {
			for _, a := range m.Args {
				if a.Direction == "out" {
					outSig[m.Name] += a.Type
				}
			}
		}
	}
	for _, tc := range []struct {
		method string
		args   []string
		want   string // JSON of busctl's data
	}{
		{"ListDomains", nil, `[[["vm1","/run/vm1.qmp",true,true],["vm2","/run/vm2.qmp",false,false]]]`},
		{"ListSnapshots", []string{"s", "vm1"}, `[[["s1","","disk-snapshot"],["s2","s1","disk-snapshot"]]]`},
		{"CreateSnapshot", []string{"ssu", "vm1", "<domainsnapshot><name>s3</name></domainsnapshot>", "16"},
			`["s3","<domainsnapshot><name>s3</name></domainsnapshot>"]`},
		{"DeleteSnapshot", []string{"ssu", "vm1", "s1", "1"}, `["op-1",["s2","s1"]]`},
		{"FSFreeze", []string{"sas", "vm1", "2", "/", "/var"}, `[2]`},
		{"FSThaw", []string{"s", "vm1"}, `[2]`},
	} {
		t.Run(tc.method, func(t *testing.T) {
			args := append([]string{"--address=" + e.bus.Address, "--json=short", "call",
				dbusapi.BusName, string(dbusapi.ObjectPath), dbusapi.Interface, tc.method}, tc.args...)
			out, err := cli(t, "busctl", args...)
			if err != nil {
				t.Fatalf("busctl: %v: %s", err, out)
			}
			var reply struct {
				Type string          `json:"type"`
				Data json.RawMessage `json:"data"`
			}
			if err := json.Unmarshal([]byte(out), &reply); err != nil {
				t.Fatalf("busctl output %q: %v", out, err)
			}
			if string(reply.Data) != tc.want {
				t.Errorf("got %s, want %s", reply.Data, tc.want)
			}
			if reply.Type != outSig[tc.method] {
				t.Errorf("reply type %s, introspection says %s", reply.Type, outSig[tc.method])
			}
		})
	}
	for method, want := range map[string]time.Duration{"CreateSnapshot": 10 * time.Minute, "DeleteSnapshot": time.Hour,
		"FSFreeze": 2 * time.Minute, "FSThaw": 2 * time.Minute} {
		e.drv.mu.Lock()
		got := e.drv.deadlines[method]
		e.drv.mu.Unlock()
		if got > want || got < want-time.Minute {
			t.Errorf("%s had %v left, want about %v", method, got, want)
		}
	}
}

// TestErrorNames checks the error names with dbus-send, which prints them.
func TestErrorNames(t *testing.T) {
	e := setup(t)
	snap := func(name string) string { return "string:<domainsnapshot><name>" + name + "</name></domainsnapshot>" }
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no domain", []string{"CreateSnapshot", "string:vm9", snap("s3"), "uint32:16"}, dbusapi.ErrorNoDomain},
		{"bad xml", []string{"CreateSnapshot", "string:vm1", "string:<oops", "uint32:16"}, dbusapi.ErrorInvalidArg},
		{"exists", []string{"CreateSnapshot", "string:vm1", snap("s1"), "uint32:16"}, dbusapi.ErrorSnapshotExists},
		{"unsupported", []string{"CreateSnapshot", "string:vm1", snap("s3"), "uint32:0"}, dbusapi.ErrorOperationUnsupported},
		{"quiesce", []string{"CreateSnapshot", "string:vm2", snap("s3"), "uint32:80"}, dbusapi.ErrorAgentUnresponsive},
		{"internal", []string{"CreateSnapshot", "string:vm1", snap("bug"), "uint32:16"}, dbusapi.ErrorInternalError},
		{"list", []string{"ListSnapshots", "string:vm9"}, dbusapi.ErrorNoDomain},
		{"delete, no domain", []string{"DeleteSnapshot", "string:vm9", "string:s1", "uint32:0"}, dbusapi.ErrorNoDomain},
		{"delete, no snapshot", []string{"DeleteSnapshot", "string:vm1", "string:s7", "uint32:0"}, dbusapi.ErrorNoDomainSnapshot},
		{"delete, bad flags", []string{"DeleteSnapshot", "string:vm1", "string:s1", "uint32:5"}, dbusapi.ErrorInvalidArg},
		{"delete, cancelled", []string{"DeleteSnapshot", "string:vm1", "string:s9", "uint32:0"}, dbusapi.ErrorOperationAborted},
		{"freeze", []string{"FSFreeze", "string:vm2", "array:string:"}, dbusapi.ErrorAgentUnresponsive},
		{"thaw", []string{"FSThaw", "string:"}, dbusapi.ErrorNoDomain},
		{"no args", []string{"FSThaw"}, "org.freedesktop.DBus.Error.InvalidArgs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"--bus=" + e.bus.Address, "--print-reply", "--dest=" + dbusapi.BusName,
				string(dbusapi.ObjectPath), dbusapi.Interface + "." + tc.args[0]}, tc.args[1:]...)
			out, err := cli(t, "dbus-send", args...)
			if err == nil || !strings.HasPrefix(out, "Error "+tc.want+": ") {
				t.Errorf("got %q (%v), want error %s", out, err, tc.want)
			}
		})
	}
}

// TestEveryEngineKindHasAName: whatever kind the driver reports, D-Bus
// answers a specific error name, not InternalError.
func TestEveryEngineKindHasAName(t *testing.T) {
	for _, k := range driver.Kinds() {
		if name := dbusapi.NameOf(k); name == dbusapi.ErrorInternalError || !strings.HasPrefix(name, dbusapi.ErrorPrefix) {
			t.Errorf("%v (libvirt %d) is %q", k, k.Number(), name)
		}
	}
}

func TestSignals(t *testing.T) {
	e := setup(t)
	sub := e.bus.Conn(t)
	if err := sub.AddMatchSignal(dbus.WithMatchObjectPath(dbusapi.ObjectPath), dbus.WithMatchInterface(dbusapi.Interface)); err != nil {
		t.Fatal(err)
	}
	got := make(chan *dbus.Signal, 10)
	sub.Signal(got)

	for _, c := range []*dbus.Call{
		e.call("FSFreeze", "vm1", []string{}),
		e.call("CreateSnapshot", "vm1", "<domainsnapshot><name>s3</name></domainsnapshot>", uint32(driver.FlagDiskOnly)),
		e.call("FSThaw", "vm1"),
		e.call("DeleteSnapshot", "vm1", "s1", uint32(driver.DeleteMetadataOnly)),
	} {
		if c.Err != nil {
			t.Fatal(c.Err)
		}
	}
	e.svc.Events().SnapshotFinished(driver.SnapshotEvent{Domain: "vm2", Name: "s4", Result: driver.ResultRolledBack,
		Err: fmt.Errorf("%w: switch failed", driver.ErrOperationFailed)})

	for _, want := range []struct {
		name string
		body []any
	}{
		{"GuestFrozen", []any{"vm1", "fsfreeze"}},
		{"SnapshotCreated", []any{"vm1", "s3"}},
		{"GuestThawed", []any{"vm1", 1.5}},
		{"SnapshotDeleted", []any{"vm1", []string{"s1"}, "op-1", "success"}},
		{"SnapshotFailed", []any{"vm2", "s4", "operation failed: switch failed"}},
	} {
		select {
		case s := <-got:
			if s.Name != dbusapi.Interface+"."+want.name || !reflect.DeepEqual(s.Body, want.body) {
				t.Errorf("got %s%v, want %s%v", s.Name, s.Body, want.name, want.body)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no signal %s", want.name)
		}
	}
}

// TestSnapshotDeletedWithDbusMonitor: a bus client that knows nothing of
// qsnapd sees SnapshotDeleted with its arguments as introspection
// declares them.
func TestSnapshotDeletedWithDbusMonitor(t *testing.T) {
	e := setup(t)
	if _, err := exec.LookPath("dbus-monitor"); err != nil {
		t.Fatal("dbus-monitor is needed (Debian's dbus-bin): run make deps")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out qemutest.LockedBuffer
	mon := exec.CommandContext(ctx, "dbus-monitor", "--address", e.bus.Address,
		"type='signal',interface='"+dbusapi.Interface+"',member='SnapshotDeleted'")
	mon.Stdout, mon.Stderr = &out, &out
	if err := mon.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		_ = mon.Wait() // killed: its status says nothing
	}()
	const want = "member=SnapshotDeleted\n" +
		"   string \"vm2\"\n" +
		"   array [\n" +
		"      string \"s3\"\n" +
		"      string \"s2\"\n" +
		"   ]\n" +
		"   string \"op-9\"\n" +
		"   string \"partial\"\n"
	// The monitor listens some time after it starts: signal until it
	// has heard one.
	for !strings.Contains(out.String(), want) {
		e.svc.Events().SnapshotDeleted(driver.DeleteEvent{Domain: "vm2", Names: []string{"s3", "s2"}, OpID: "op-9",
			Merged: true, Result: driver.ResultPartial, Err: driver.ErrOperationFailed})
		select {
		case <-ctx.Done():
			t.Fatalf("dbus-monitor heard no SnapshotDeleted; it printed:\n%s", out.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func TestIntrospectionWithBusctl(t *testing.T) {
	e := setup(t)
	out, err := cli(t, "busctl", "--address="+e.bus.Address, "introspect", dbusapi.BusName, string(dbusapi.ObjectPath), dbusapi.Interface)
	if err != nil {
		t.Fatalf("busctl: %v: %s", err, out)
	}
	for _, want := range []string{".CreateSnapshot", "ssu", ".GuestThawed", "sd", ".ListDomains", "a(ssbb)",
		".DeleteSnapshot", "sas", ".SnapshotDeleted", "sass"} {
		if !strings.Contains(out, want) {
			t.Errorf("introspection lacks %q:\n%s", want, out)
		}
	}
}

func TestNameTaken(t *testing.T) {
	e := setup(t)
	if _, err := dbusapi.Export(e.bus.Conn(t), e.drv, nil); err == nil {
		t.Fatal("a second Export took the name")
	}
	// The first service still answers.
	if c := e.call("ListDomains"); c.Err != nil {
		t.Fatal(c.Err)
	}
	if err := e.svc.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := dbusapi.Export(e.bus.Conn(t), e.drv, nil); err != nil {
		t.Fatalf("Export after Close: %v", err)
	}
}

// waitCalls waits until logind has received n Inhibit calls.
func waitCalls(t *testing.T, logind *dbustest.Logind, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); len(logind.Locks()) < n; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d Inhibit calls, want %d", len(logind.Locks()), n)
		}
	}
}

// lockClosed waits for the holder to close a lock.
func lockClosed(l *dbustest.Lock) bool {
	select {
	case <-l.Closed():
		return true
	case <-time.After(10 * time.Second):
		return false
	}
}

// stillHeld checks that a lock stays held a moment.
func stillHeld(t *testing.T, l *dbustest.Lock) {
	t.Helper()
	select {
	case <-l.Closed():
		t.Fatal("lock released too early")
	case <-time.After(50 * time.Millisecond):
	}
}

func TestInhibitor(t *testing.T) {
	e := setup(t)
	logind := dbustest.StartLogind(t, e.bus)
	inh := dbusapi.NewInhibitor(e.bus.Conn(t), zaptest.NewLogger(t))
	e.drv.set(func() { e.drv.events = driver.MultiEvents{e.svc.Events(), inh} })

	// A freeze takes the lock.
	if c := e.call("FSFreeze", "vm1", []string{}); c.Err != nil {
		t.Fatal(c.Err)
	}
	inh.Settle()
	locks := logind.Locks()
	if len(locks) != 1 {
		t.Fatalf("%d Inhibit calls, want 1", len(locks))
	}
	lock := locks[0]
	if lock.What != "shutdown:sleep" || lock.Mode != "delay" || lock.Who != "qsnapd" || lock.Why == "" {
		t.Errorf("Inhibit(%q, %q, %q, %q)", lock.What, lock.Who, lock.Why, lock.Mode)
	}

	// A snapshot meanwhile shares it, and keeps it past the thaw.
	started, finish := make(chan struct{}), make(chan struct{})
	e.drv.set(func() { e.drv.started, e.drv.finish = started, finish })
	snap := e.client.Object(dbusapi.BusName, dbusapi.ObjectPath).Go(dbusapi.Interface+".CreateSnapshot", 0, nil,
		"vm1", "<domainsnapshot><name>s3</name></domainsnapshot>", uint32(driver.FlagDiskOnly))
	<-started
	if c := e.call("FSThaw", "vm1"); c.Err != nil {
		t.Fatal(c.Err)
	}
	inh.Settle()
	stillHeld(t, lock)

	// The snapshot's end releases it.
	close(finish)
	if c := <-snap.Done; c.Err != nil {
		t.Fatal(c.Err)
	}
	if !lockClosed(lock) {
		t.Fatal("lock not released after the last operation")
	}
	if n := len(logind.Locks()); n != 1 {
		t.Errorf("%d Inhibit calls, want 1", n)
	}
}

// TestInhibitorInProgress releases while logind has not answered yet.
func TestInhibitorInProgress(t *testing.T) {
	bus := dbustest.Start(t)
	logind := dbustest.StartLogind(t, bus)
	logind.SetDelay(200 * time.Millisecond)
	inh := dbusapi.NewInhibitor(bus.Conn(t), zaptest.NewLogger(t))

	// Released before the lock arrives: the lock is closed on arrival.
	inh.Acquire()
	waitCalls(t, logind, 1)
	inh.Release()
	inh.Settle()
	if locks := logind.Locks(); len(locks) != 1 || !lockClosed(locks[0]) {
		t.Fatalf("%d Inhibit calls, want 1, closed", len(locks))
	}

	// Released and taken again before the lock arrives: one lock, held.
	inh.OperationsInFlight(1)
	waitCalls(t, logind, 2)
	inh.GuestFrozen("vm1", "fsfreeze")
	inh.OperationsInFlight(-1)
	inh.GuestFrozen("vm1", "snapshot") // counted once
	inh.Settle()
	locks := logind.Locks()
	if len(locks) != 2 {
		t.Fatalf("%d Inhibit calls, want 2", len(locks))
	}
	stillHeld(t, locks[1])
	inh.GuestThawed("vm2", time.Second) // not frozen: ignored
	inh.Settle()
	stillHeld(t, locks[1])
	inh.GuestThawed("vm1", time.Second)
	if !lockClosed(locks[1]) {
		t.Fatal("lock not released after the thaw")
	}
}

func TestInhibitorWithoutLogind(t *testing.T) {
	bus := dbustest.Start(t)
	core, logs := observer.New(zapcore.DebugLevel)
	inh := dbusapi.NewInhibitor(bus.Conn(t), zap.New(core))
	for range 3 {
		inh.Acquire()
		inh.Settle()
		inh.Release()
		inh.Settle()
	}
	if n := logs.Len(); n != 1 {
		t.Fatalf("%d log entries, want 1: %v", n, logs.All())
	}
	if entry := logs.All()[0]; entry.Level != zapcore.DebugLevel {
		t.Errorf("logged at %v: %s", entry.Level, entry.Message)
	}
}

// TestPolicy loads the system bus policy into a private dbus-daemon and,
// as root, checks what it lets root and another user do.
func TestPolicy(t *testing.T) {
	policy, err := filepath.Abs("../configs/io.github.qsnapd.conf")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile(policy)
	if err != nil {
		t.Fatal(err)
	}
	d := xml.NewDecoder(strings.NewReader(string(doc)))
	for {
		if _, err := d.Token(); err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("policy is not well-formed XML: %v", err)
			}
			break
		}
	}

	// dbus-daemon refuses to start on a configuration it rejects; an
	// unknown group (no qsnapd group here) only warns.
	bus := dbustest.Start(t, policy)
	if os.Geteuid() != 0 {
		t.Skip("needs root to check the policy as root and as another user")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv (util-linux) is missing")
	}
	if _, err := dbusapi.Export(bus.Conn(t), &fakeDriver{}, nil); err != nil {
		t.Fatalf("root may not own the name: %v", err)
	}
	// The socket's mode must not decide.
	for path, mode := range map[string]os.FileMode{bus.Dir: 0o755, filepath.Join(bus.Dir, "bus"): 0o777} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
	}
	send := func(asNobody bool, dest, path, method string, args ...string) (string, error) {
		cmd := []string{"dbus-send", "--bus=" + bus.Address, "--print-reply", "--dest=" + dest, path, method}
		if asNobody {
			cmd = append([]string{"--reuid=65534", "--regid=65534", "--clear-groups"}, cmd...)
			return cli(t, "setpriv", append(cmd, args...)...)
		}
		return cli(t, cmd[0], append(cmd[1:], args...)...)
	}
	const denied = "Error org.freedesktop.DBus.Error.AccessDenied"
	for _, tc := range []struct {
		name    string
		nobody  bool
		dest    string
		path    string
		method  string
		args    []string
		refused bool
	}{
		{"root calls", false, dbusapi.BusName, string(dbusapi.ObjectPath), dbusapi.Interface + ".ListDomains", nil, false},
		{"nobody calls", true, dbusapi.BusName, string(dbusapi.ObjectPath), dbusapi.Interface + ".ListDomains", nil, true},
		{"nobody introspects", true, dbusapi.BusName, string(dbusapi.ObjectPath), "org.freedesktop.DBus.Introspectable.Introspect", nil, false},
		{"nobody owns", true, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus.RequestName",
			[]string{"string:" + dbusapi.BusName, "uint32:4"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := send(tc.nobody, tc.dest, tc.path, tc.method, tc.args...)
			if refused := strings.HasPrefix(out, denied); refused != tc.refused || (err != nil && !refused) {
				t.Errorf("got %q (%v), want refused %v", out, err, tc.refused)
			}
		})
	}
}
