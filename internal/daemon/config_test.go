package daemon

import (
	"errors"
	"os"
	"os/user"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/driver"
)

func TestExampleConfigLoads(t *testing.T) {
	c := Default()
	if err := c.LoadFile("../../configs/qsnapd.toml"); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.AllowGroups, []string{"qsnapd"}) {
		t.Errorf("the example allows groups %q, want the package's qsnapd", c.AllowGroups)
	}
	withoutPackageGroup(&c)
	if err := c.Check(nil); err != nil {
		t.Fatal(err)
	}
	if len(c.Domains) != 0 {
		t.Errorf("the example attaches domains: %+v", c.Domains)
	}
	if d := Default(); c.LibvirtSocket != d.LibvirtSocket || c.LibvirtSocketRO != d.LibvirtSocketRO {
		t.Errorf("the example's libvirt sockets %q, %q; want the defaults %q, %q", c.LibvirtSocket, c.LibvirtSocketRO, d.LibvirtSocket, d.LibvirtSocketRO)
	}
	// Its commented-out [[domain]] entries are valid once uncommented.
	data, _ := os.ReadFile("../../configs/qsnapd.toml")
	var lines []string
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, "# [[domain]]") || strings.HasPrefix(l, "# name =") || strings.HasPrefix(l, "# qmp =") || strings.HasPrefix(l, "# agent =") || strings.HasPrefix(l, "# agent_channel =") {
			l = strings.TrimPrefix(l, "# ")
		}
		lines = append(lines, l)
	}
	path := filepath.Join(t.TempDir(), "qsnapd.toml")
	writeFile(t, path, []byte(strings.Join(lines, "\n")))
	c = Default()
	if err := c.LoadFile(path); err != nil {
		t.Fatal(err)
	}
	withoutPackageGroup(&c)
	if err := c.Check(nil); err != nil {
		t.Fatal(err)
	}
	if len(c.Domains) != 2 || c.Domains[0].Name != "web1" || c.Domains[0].AgentChannel != "per-operation" || c.Domains[1].Agent != "" {
		t.Errorf("domains: %+v", c.Domains)
	}
	if time.Duration(c.MaxFreeze) != 10*time.Second || c.LogFormat != "json" || c.MetricsListen != "127.0.0.1:9477" {
		t.Errorf("values: %+v", c)
	}
	dc := c.DriverConfig()
	if dc.MaxFreeze != 10*time.Second || dc.StateDir != "/var/lib/qsnapd" || len(dc.AllowedDirs) != 0 || dc.QuiesceScope != driver.ScopeAll {
		t.Errorf("driver config: %+v", dc)
	}
}

func TestConfigErrorsNameKeyAndLine(t *testing.T) {
	for _, tc := range []struct {
		name, file, want string
	}{
		{"unknown key", "state_dir = \"/var/lib/q\"\nsnapshot_dir = \"/x\"\n", ":2: snapshot_dir: unknown key"},
		{"negative duration", "# c\n\nmax_freeze = \"-3s\"\n", ":3: max_freeze:"},
		{"not a duration", "agent_timeout = \"soon\"\n", ":1:"},
		{"relative path", "state_dir = \"var/lib/q\"\n", ":1: state_dir: \"var/lib/q\" is not an absolute path"},
		{"wrong type", "allow_uid = \"root\"\n", ":1:"},
		{"bad enum", "transaction = \"sometimes\"\n", ":1: transaction:"},
		{"bad quiesce scope", "\nquiesce_scope = \"disks\"\n", ":2: quiesce_scope: \"disks\" is not one of all, snapshot-disks"},
		{"bad switch", "# c\nswitch = \"later\"\n", ":2: switch: \"later\" is not one of auto, preadd, sync"},
		{"bad log level", "log_level = \"loud\"\n", ":1: log_level:"},
		{"domain without qmp", "[[domain]]\nname = \"a\"\nqmp = \"/q\"\n\n[[domain]]\nname = \"b\"\nqmp = \"rel\"\n", ":7: domain[1].qmp:"},
		{"unknown key in a domain", "[[domain]]\nname = \"a\"\nqmp = \"/q\"\ncpu = 2\n", ":4: domain.cpu: unknown key"},
		{"bad agent channel", "[[domain]]\nname = \"a\"\nqmp = \"/q\"\nagent = \"/g\"\nagent_channel = \"shared\"\n", ":5: domain[0].agent_channel:"},
		{"malformed", "socket = \n", ":1:"},
		{"relative libvirt socket", "# c\nlibvirt_socket = \"libvirt-sock\"\n", ":2: libvirt_socket: \"libvirt-sock\" is not an absolute path"},
		{"libvirt socket on the API's", "libvirt_socket_ro = \"/run/qsnapd/qsnapd-ro.sock\"\n", ":1: libvirt_socket_ro: must differ from socket_ro"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "qsnapd.toml")
			writeFile(t, path, []byte(tc.file))
			c := Default()
			err := c.LoadFile(path)
			if err == nil {
				err = c.Check(nil)
			}
			if err == nil || !strings.Contains(err.Error(), path+tc.want) {
				t.Errorf("got %v, want %q", err, path+tc.want)
			}
		})
	}
}

func TestFlagOverridesFileAndLosesItsLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "qsnapd.toml")
	writeFile(t, path, []byte("transaction = \"never\"\nmax_freeze = \"3s\"\n"))
	c := Default()
	if err := c.LoadFile(path); err != nil {
		t.Fatal(err)
	}
	// A flag replaced the file's value with a bad one: the error names
	// the key, not the file's line, which is not where the value is.
	c.MaxFreeze = Duration(-time.Second)
	err := c.Check(map[string]bool{"max_freeze": true})
	var ke *KeyError
	if !errors.As(err, &ke) || ke.Key != "max_freeze" || ke.Line != 0 {
		t.Errorf("got %#v", err)
	}
	c.MaxFreeze = Duration(time.Second)
	if err := c.Check(nil); err != nil || c.Transaction != "never" {
		t.Errorf("got %v, transaction %q", err, c.Transaction)
	}
}

func TestQuiesceScopeReachesTheDriver(t *testing.T) {
	path := filepath.Join(t.TempDir(), "qsnapd.toml")
	writeFile(t, path, []byte("quiesce_scope = \"snapshot-disks\"\n"))
	c := Default()
	if err := c.LoadFile(path); err != nil {
		t.Fatal(err)
	}
	withoutPackageGroup(&c)
	if err := c.Check(nil); err != nil {
		t.Fatal(err)
	}
	if dc := c.DriverConfig(); dc.QuiesceScope != driver.ScopeSnapshotDisks {
		t.Errorf("driver config: quiesce scope %q", dc.QuiesceScope)
	}
}

// TestDefaultsAreTheDrivers: the daemon's defaults for the driver's
// settings are the driver's, not a second copy.
func TestDefaultsAreTheDrivers(t *testing.T) {
	c := Default()
	got := c.DriverConfig()
	want := driver.DefaultConfig()
	want.StateDir = got.StateDir
	for _, dc := range []*driver.Config{&got, &want} {
		if err := dc.Validate(); err != nil {
			t.Fatal(err)
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("daemon defaults: %+v\ndriver defaults: %+v", got, want)
	}
}

// writeFile writes a test's input file.
func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// withoutPackageGroup allows root instead of group qsnapd, which the
// package creates, when this host has no such group.
func withoutPackageGroup(c *Config) {
	if _, err := user.LookupGroup("qsnapd"); err != nil {
		c.AllowGroups = []string{"root"}
	}
}

func TestAllowGroup(t *testing.T) {
	c := Default()
	c.AllowGIDs = []int{4242}
	c.AllowGroups = []string{"root"}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := c.AllowedGIDs(); !reflect.DeepEqual(got, []int{4242, 0}) {
		t.Errorf("AllowedGIDs = %v, want [4242 0]", got)
	}
	c.AllowGroups = []string{"root", "no-such-group-here"}
	var ke *KeyError
	if err := c.Validate(); !errors.As(err, &ke) || ke.Key != "allow_group" || !strings.Contains(err.Error(), "no-such-group-here") {
		t.Errorf("an unknown group: %v, want an allow_group error naming it", err)
	}
}

func TestLibvirtSocketConfig(t *testing.T) {
	d := Default()
	if d.LibvirtSocket != "/run/qsnapd/libvirt-sock" || d.LibvirtSocketRO != "/run/qsnapd/libvirt-sock-ro" {
		t.Errorf("defaults %q, %q; want /run/qsnapd/libvirt-sock, /run/qsnapd/libvirt-sock-ro", d.LibvirtSocket, d.LibvirtSocketRO)
	}
	long := "/run/" + strings.Repeat("x", 103)
	for _, tc := range []struct {
		name    string
		rw, ro  string
		wantKey string // "" when valid
		wantMsg string
	}{
		{"defaults", d.LibvirtSocket, d.LibvirtSocketRO, "", ""},
		{"read-write off", "", d.LibvirtSocketRO, "", ""},
		{"read-only off", d.LibvirtSocket, "", "", ""},
		{"both off", "", "", "", ""},
		{"relative", "libvirt-sock", "", "libvirt_socket", "is not an absolute path"},
		{"too long", "", long, "libvirt_socket_ro", "under 108 bytes"},
		{"the same twice", "/run/l.sock", "/run/l.sock", "libvirt_socket_ro", "must differ from libvirt_socket"},
		{"the API's", api.DefaultSocket, "", "libvirt_socket", "must differ from socket"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			c.LibvirtSocket, c.LibvirtSocketRO = tc.rw, tc.ro
			err := c.Validate()
			var ke *KeyError
			switch {
			case tc.wantKey == "" && err != nil:
				t.Errorf("got %v, want valid", err)
			case tc.wantKey != "" && (!errors.As(err, &ke) || ke.Key != tc.wantKey || !strings.Contains(ke.Msg, tc.wantMsg)):
				t.Errorf("got %v, want a %s error saying %q", err, tc.wantKey, tc.wantMsg)
			}
		})
	}
	// An empty value in the file turns a socket off, as the flag does.
	path := filepath.Join(t.TempDir(), "qsnapd.toml")
	writeFile(t, path, []byte("libvirt_socket = \"\"\n"))
	c := Default()
	if err := c.LoadFile(path); err != nil {
		t.Fatal(err)
	}
	if err := c.Check(nil); err != nil || c.LibvirtSocket != "" || c.LibvirtSocketRO != d.LibvirtSocketRO {
		t.Errorf("libvirt_socket = \"\": %v; sockets %q, %q", err, c.LibvirtSocket, c.LibvirtSocketRO)
	}
}
