package agentfake_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/guestagent/agentfake"
)

// What qemu-ga 7.2 answers, byte for byte, without the final "\n".
const (
	strayFF    = `{"error": {"class": "GenericError", "desc": "JSON parse error, stray '\uFFFD'"}}`
	frozenErr  = `{"error": {"class": "CommandNotFound", "desc": "Command guest-fsfreeze-freeze has been disabled: the agent is in frozen state"}}`
	ping       = `{"execute":"guest-ping"}`
	freeze     = `{"execute":"guest-fsfreeze-freeze"}`
	thaw       = `{"execute":"guest-fsfreeze-thaw"}`
	status     = `{"execute":"guest-fsfreeze-status"}`
	isFrozen   = `{"return": "frozen"}`
	isThawed   = `{"return": "thawed"}`
	empty      = `{"return": {}}`
	quietSpell = 150 * time.Millisecond
)

func start(t *testing.T) *agentfake.Agent {
	t.Helper()
	a, err := agentfake.Start(filepath.Join(t.TempDir(), "qga.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := a.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return a
}

// client is a bare qemu-ga client: raw bytes out, lines in.
type client struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, a *agentfake.Agent) *client {
	t.Helper()
	c, err := net.Dial("unix", a.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{t, c, bufio.NewReader(c)}
}

func (c *client) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.c, s); err != nil {
		c.t.Fatalf("write %q: %v", s, err)
	}
}

// read returns the next line, without its "\n".
func (c *client) read() string {
	c.t.Helper()
	c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (after %q)", err, line)
	}
	return strings.TrimSuffix(line, "\n")
}

// do sends req and checks the next line is want.
func (c *client) do(req, want string) {
	c.t.Helper()
	c.send(req + "\n")
	if got := c.read(); got != want {
		c.t.Errorf("%s:\n got %q\nwant %q", req, got, want)
	}
}

// quiet checks that nothing arrives for a while.
func (c *client) quiet() {
	c.t.Helper()
	c.c.SetReadDeadline(time.Now().Add(quietSpell))
	line, err := c.r.ReadString('\n')
	if ne := net.Error(nil); !errors.As(err, &ne) || !ne.Timeout() {
		c.t.Fatalf("got %q, %v; want nothing", line, err)
	}
}

// resync does the guest-sync-delimited handshake and returns the lines it
// skipped before the sentinel-prefixed reply.
func (c *client) resync(id int) []string {
	c.t.Helper()
	c.send(fmt.Sprintf("\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":%d}}\n", id))
	var skipped []string
	for want := fmt.Sprintf("\xff{\"return\": %d}", id); ; {
		line := c.read()
		if line == want {
			return skipped
		}
		if skipped = append(skipped, line); len(skipped) > 10 {
			c.t.Fatalf("no %q after %q", want, skipped)
		}
	}
}

func TestResync(t *testing.T) {
	a := start(t)
	c := dial(t, a)
	if got, want := c.resync(42), []string{strayFF}; !slices.Equal(got, want) {
		t.Errorf("before the sync reply: got %q, want %q", got, want)
	}
	c.do(`{"execute":"guest-sync","arguments":{"id":-7}}`, `{"return": -7}`)
	c.do(`{"execute":"guest-sync","arguments":{"id":"x"}}`,
		`{"error": {"class": "GenericError", "desc": "Invalid parameter type for 'id', expected: integer"}}`)
	c.do(`{"execute":"guest-sync-delimited","arguments":{}}`,
		`{"error": {"class": "GenericError", "desc": "Parameter 'id' is missing"}}`)
	c.do(`{"execute":"guest-ping","id":"r1"}`, `{"return": {}, "id": "r1"}`)
	c.send(ping) // no newline needed: qemu-ga answers when the braces balance
	if got := c.read(); got != empty {
		t.Errorf("ping without newline: got %q", got)
	}
	want := []string{"guest-sync-delimited", "guest-sync", "guest-sync", "guest-sync-delimited", "guest-ping", "guest-ping"}
	if got := a.Calls(); !slices.Equal(got, want) {
		t.Errorf("Calls() = %q, want %q", got, want)
	}
}

func TestMalformed(t *testing.T) {
	c := dial(t, start(t))
	for _, tc := range []struct{ req, want string }{
		{`{"execute":"foo","id":3}`, `{"id": 3, "error": {"class": "CommandNotFound", "desc": "The command foo has not been found"}}`},
		{`[1]`, `{"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}`},
		{`{"arguments":{}}`, `{"error": {"class": "GenericError", "desc": "QMP input lacks member 'execute'"}}`},
		{`}`, `{"error": {"class": "GenericError", "desc": "JSON parse error, expecting value"}}`},
	} {
		c.do(tc.req, tc.want)
	}
}

func TestFreezeThaw(t *testing.T) {
	a := start(t)
	c := dial(t, a)
	c.do(status, isThawed)
	c.do(freeze, `{"return": 3}`)
	if !a.Frozen() {
		t.Error("not frozen after guest-fsfreeze-freeze")
	}
	c.do(status, isFrozen)
	c.do(freeze, frozenErr)
	c.do(`{"execute":"guest-exec","arguments":{"path":"/bin/true"}}`,
		`{"error": {"class": "CommandNotFound", "desc": "Command guest-exec has been disabled: the agent is in frozen state"}}`)
	c.send(`{"execute":"guest-info"}` + "\n")
	if info := c.read(); !strings.Contains(info, `{"enabled": false, "name": "guest-fsfreeze-freeze", "success-response": true}`) ||
		!strings.Contains(info, `{"enabled": true, "name": "guest-fsfreeze-thaw", "success-response": true}`) {
		t.Errorf("guest-info while frozen: %s", info)
	}
	c.do(ping, empty)
	c.do(thaw, `{"return": 3}`)
	c.do(status, isThawed)
	c.do(thaw, `{"return": 0}`)
}

func TestFreezeList(t *testing.T) {
	a := start(t)
	c := dial(t, a)
	c.do(`{"execute":"guest-fsfreeze-freeze-list","arguments":{"mountpoints":["/mnt/data2","/nope"]}}`, `{"return": 1}`)
	c.do(status, isFrozen)
	c.do(thaw, `{"return": 1}`)
	c.do(`{"execute":"guest-fsfreeze-freeze-list","arguments":{"mountpoints":["/nope"]}}`, `{"return": 0}`)
	c.do(status, isThawed) // nothing frozen: qemu-ga unsets the frozen state
	a.SetMountpoints([]string{"/", "/srv"})
	c.do(`{"execute":"guest-fsfreeze-freeze-list"}`, `{"return": 2}`)
	if !a.Frozen() {
		t.Error("not frozen")
	}
}

// fsinfoReply is what qemu-ga 7.2 answered guest-get-fsinfo in the test
// guest with three data disks, with neither serials (no udev database)
// nor a root file system of its own.
const fsinfoReply = `{"return": [` +
	`{"name": "vdc", "total-bytes": 52685824, "mountpoint": "/mnt/data3", "disk": [{"bus-type": "virtio", "bus": 0, "unit": 0, "pci-controller": {"bus": 0, "slot": 4, "domain": 0, "function": 0}, "dev": "/dev/vdc", "target": 0}], "used-bytes": 15360, "type": "ext4"}, ` +
	`{"name": "vdb", "total-bytes": 52685824, "mountpoint": "/mnt/data2", "disk": [{"bus-type": "virtio", "bus": 0, "unit": 0, "pci-controller": {"bus": 0, "slot": 3, "domain": 0, "function": 0}, "dev": "/dev/vdb", "target": 0}], "used-bytes": 15360, "type": "ext4"}, ` +
	`{"name": "vda", "total-bytes": 52685824, "mountpoint": "/mnt/data1", "disk": [{"bus-type": "virtio", "bus": 0, "unit": 0, "pci-controller": {"bus": 0, "slot": 2, "domain": 0, "function": 0}, "dev": "/dev/vda", "target": 0}], "used-bytes": 15360, "type": "ext4"}]}`

func TestFSInfo(t *testing.T) {
	a := start(t)
	c := dial(t, a)
	const fsinfo = `{"execute":"guest-get-fsinfo"}`
	c.do(fsinfo, `{"return": [`+
		`{"name": "", "total-bytes": 52685824, "mountpoint": "/mnt/data2", "disk": [], "used-bytes": 15360, "type": "ext4"}, `+
		`{"name": "", "total-bytes": 52685824, "mountpoint": "/mnt/data1", "disk": [], "used-bytes": 15360, "type": "ext4"}, `+
		`{"name": "", "total-bytes": 52685824, "mountpoint": "/", "disk": [], "used-bytes": 15360, "type": "ext4"}]}`)
	var fss []agentfake.Filesystem
	for i, dev := range []string{"vda", "vdb", "vdc"} {
		fss = append(fss, agentfake.Filesystem{Name: dev, Mountpoint: fmt.Sprintf("/mnt/data%d", i+1),
			Disks: []agentfake.Disk{{PCI: [4]int{0, 0, i + 2, 0}, Dev: "/dev/" + dev}}})
	}
	a.SetFilesystems(fss)
	c.do(fsinfo, fsinfoReply)
	// The mountpoints are the freezable ones; each freeze-list is noted.
	c.do(`{"execute":"guest-fsfreeze-freeze-list","arguments":{"mountpoints":["/mnt/data2","/"]}}`, `{"return": 1}`)
	c.do(fsinfo, `{"error": {"class": "CommandNotFound", "desc": "Command guest-get-fsinfo has been disabled: the agent is in frozen state"}}`)
	c.do(thaw, `{"return": 1}`)
	c.do(freeze, `{"return": 3}`)
	c.do(thaw, `{"return": 3}`)
	fss[0].Disks[0].Serial = "data1"
	a.SetFilesystems(fss[:1])
	c.do(fsinfo, `{"return": [{"name": "vda", "total-bytes": 52685824, "mountpoint": "/mnt/data1", "disk": [{"serial": "data1", "bus-type": "virtio", "bus": 0, "unit": 0, "pci-controller": {"bus": 0, "slot": 2, "domain": 0, "function": 0}, "dev": "/dev/vda", "target": 0}], "used-bytes": 15360, "type": "ext4"}]}`)
	if got, want := a.FreezeLists(), [][]string{{"/mnt/data2", "/"}}; !reflect.DeepEqual(got, want) {
		t.Errorf("FreezeLists() = %q, want %q", got, want)
	}
	a.Disable("guest-get-fsinfo")
	c.do(fsinfo, `{"error": {"class": "CommandNotFound", "desc": "Command guest-get-fsinfo has been disabled"}}`)
}

func TestInfo(t *testing.T) {
	a := start(t)
	a.Disable("guest-exec")
	c := dial(t, a)
	c.send(`{"execute":"guest-info"}` + "\n")
	info := c.read()
	if !strings.HasPrefix(info, `{"return": {"version": "7.2.0", "supported_commands": [{"enabled": true, "name": "guest-sync-delimited", "success-response": true}, `) {
		t.Errorf("guest-info: %s", info)
	}
	for _, want := range []string{
		`{"enabled": false, "name": "guest-exec", "success-response": true}`,
		`{"enabled": true, "name": "guest-shutdown", "success-response": false}`,
	} {
		if !strings.Contains(info, want) {
			t.Errorf("guest-info lacks %s", want)
		}
	}
}

func TestDisable(t *testing.T) {
	a := start(t)
	a.Disable("guest-fsfreeze-freeze")
	c := dial(t, a)
	c.do(freeze, `{"error": {"class": "CommandNotFound", "desc": "Command guest-fsfreeze-freeze has been disabled"}}`)
	if a.Frozen() {
		t.Error("frozen by a disabled command")
	}
	c.do(`{"execute":"guest-fsfreeze-freeze-list"}`, `{"return": 3}`)
	c.do(freeze, frozenErr) // frozen, the frozen reason wins
}

func TestFailFreeze(t *testing.T) {
	a := start(t)
	a.FailFreeze("fsfreeze hook has failed with status 1")
	c := dial(t, a)
	c.do(freeze, `{"error": {"class": "GenericError", "desc": "fsfreeze hook has failed with status 1"}}`)
	c.do(status, isThawed)
	a.FailFreeze("")
	c.do(freeze, `{"return": 3}`)
}

func TestStaleRepliesFirst(t *testing.T) {
	a := start(t)
	a.QueueStale("{\"return\": 99}\n\xff{\"return\": 7}\n")
	c := dial(t, a)
	want := []string{`{"return": 99}`, "\xff{\"return\": 7}", strayFF}
	if got := c.resync(8); !slices.Equal(got, want) {
		t.Errorf("skipped %q, want %q", got, want)
	}
	c.do(ping, empty)
}

func TestLateReplyGoesToNextClient(t *testing.T) {
	a := start(t)
	a.SetDelay("guest-fsfreeze-freeze", 200*time.Millisecond)
	c1 := dial(t, a)
	c1.send(`{"execute":"guest-fsfreeze-freeze","id":"f1"}` + "\n")
	c1.c.Close() // the client gave up before the reply
	c2 := dial(t, a)
	if got, want := c2.read(), `{"return": 3, "id": "f1"}`; got != want {
		t.Errorf("first line on the next connection: got %q, want %q", got, want)
	}
	c2.do(status, isFrozen)
}

func TestHalfWrittenCommand(t *testing.T) {
	a := start(t)
	c1 := dial(t, a)
	c1.send(`{"execute":"guest-fsfreeze-freeze`)
	c1.c.Close()

	c2 := dial(t, a) // does not resync: its ping lands in the leftover string
	c2.do(ping, `{"error": {"class": "GenericError", "desc": "JSON parse error, stray '\"}\n'"}}`)
	c2.do(ping, empty)
	c2.c.Close()

	c3 := dial(t, a)
	c3.send(`{"execute":"guest-fsfreeze-freeze`)
	c3.c.Close()
	c4 := dial(t, a) // resyncs: the 0xFF ends the leftover, which is reported
	want := []string{`{"error": {"class": "GenericError", "desc": "JSON parse error, stray '\"guest-fsfreeze-freeze\uFFFD'"}}`}
	if got := c4.resync(1); !slices.Equal(got, want) {
		t.Errorf("skipped %q, want %q", got, want)
	}
	c4.do(ping, empty)
	if a.Frozen() || slices.Contains(a.Calls(), "guest-fsfreeze-freeze") {
		t.Errorf("half-written freeze ran: calls %q", a.Calls())
	}
}

func TestHangAfterEffect(t *testing.T) {
	a := start(t)
	a.HangAfterEffect("guest-fsfreeze-freeze")
	c := dial(t, a)
	c.send(freeze + "\n")
	c.quiet()
	if !a.Frozen() {
		t.Error("not frozen")
	}
	c.send(ping + "\n") // qemu-ga is stuck in the freeze
	c.quiet()
	a.Release()
	if got := c.read(); got != empty { // the freeze's reply is dropped
		t.Errorf("after Release: got %q, want the ping's reply", got)
	}
	c.do(status, isFrozen)
}

func TestHangOn(t *testing.T) {
	a := start(t)
	a.HangOn("guest-fsfreeze-freeze")
	c := dial(t, a)
	c.send(freeze + "\n")
	c.quiet()
	if a.Frozen() {
		t.Error("frozen by a command hung before its effect")
	}
	a.Release()
	c.do(freeze, `{"return": 3}`)
}

func TestCloseOn(t *testing.T) {
	for _, after := range []bool{false, true} {
		t.Run(fmt.Sprint("afterEffect=", after), func(t *testing.T) {
			a := start(t)
			if after {
				a.CloseAfterEffect("guest-fsfreeze-freeze")
			} else {
				a.CloseOn("guest-fsfreeze-freeze")
			}
			c := dial(t, a)
			c.do(ping, empty)
			c.send(freeze + "\n")
			c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if line, err := c.r.ReadString('\n'); err != io.EOF {
				t.Errorf("got %q, %v; want EOF", line, err)
			}
			if a.Frozen() != after {
				t.Errorf("Frozen() = %v, want %v", a.Frozen(), after)
			}
			a.Release()
			dial(t, a).do(ping, empty)
		})
	}
}

func TestVSS(t *testing.T) {
	a := start(t)
	a.SetVSS(100 * time.Millisecond)
	c := dial(t, a)
	c.do(freeze, `{"return": 3}`)
	c.do(thaw, `{"return": 3}`) // within the hold
	c.do(freeze, `{"return": 3}`)
	time.Sleep(150 * time.Millisecond)
	c.do(status, isFrozen)
	c.do(thaw, `{"error": {"class": "GenericError", "desc": "couldn't hold writes: fsfreeze is limited up to 10 seconds"}}`)
	c.do(status, isThawed)
}

func TestSilent(t *testing.T) {
	a := start(t)
	a.Silent(true)
	c := dial(t, a)
	c.send(ping + "\n")
	c.quiet()
	a.Silent(false)
	c.quiet() // the swallowed input is gone
	if got := c.resync(5); len(got) != 1 || got[0] != strayFF {
		t.Errorf("skipped %q", got)
	}
}

func TestFrozenSurvivesDisconnect(t *testing.T) {
	a := start(t)
	c1 := dial(t, a)
	c1.do(freeze, `{"return": 3}`)
	c1.c.Close()
	c2 := dial(t, a)
	c2.do(status, isFrozen)
	c2.c.Close() // else the next client waits for this one
	a.SetFrozen(false)
	dial(t, a).do(status, isThawed)
}

func TestOneClientAtATime(t *testing.T) {
	a := start(t)
	c1 := dial(t, a)
	c1.do(ping, empty)
	c2 := dial(t, a) // accepted by the kernel, not served
	c2.send(`{"execute":"guest-ping","id":2}` + "\n")
	c2.quiet()
	c1.do(ping, empty)
	c1.c.Close()
	if got, want := c2.read(), `{"return": {}, "id": 2}`; got != want {
		t.Errorf("second client after the first left: got %q, want %q", got, want)
	}
}

func TestExec(t *testing.T) {
	c := dial(t, start(t))
	c.do(`{"execute":"guest-exec","arguments":{"path":"/bin/sync"}}`, `{"return": {"pid": 1001}}`)
	c.do(`{"execute":"guest-exec-status","arguments":{"pid":1001}}`, `{"return": {"exitcode": 0, "exited": true}}`)
	c.do(`{"execute":"guest-exec-status","arguments":{"pid":7}}`, `{"error": {"class": "GenericError", "desc": "Invalid parameter 'pid'"}}`)
	c.send(`{"execute":"guest-shutdown"}` + "\n")
	c.quiet() // success-response: false
}

func TestCloseEndsHang(t *testing.T) {
	a, err := agentfake.Start(filepath.Join(t.TempDir(), "qga.sock"))
	if err != nil {
		t.Fatal(err)
	}
	a.HangOn("guest-ping")
	c := dial(t, a)
	c.send(ping + "\n")
	c.quiet()
	done := make(chan error, 1)
	go func() { done <- a.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close blocked on a hung command")
	}
}
