// Package dbustest runs a private dbus-daemon, and a fake logind on it,
// for tests of D-Bus services and clients.
package dbustest

import (
	"bufio"
	"bytes"
	"encoding/xml"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
)

// Bus is a private dbus-daemon, killed when the test ends.
type Bus struct {
	// Address is the bus address, "unix:path=...".
	Address string
	// Dir holds the socket and the configuration; it is mode 0700.
	Dir string
	log qemutest.LockedBuffer
}

const busConfig = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>custom</type>
  <listen>unix:path=%s</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
%s</busconfig>
`

// Start runs a bus on which anyone may connect, own any name and call
// anything, then applies the configuration files given, as <include>s.
// It fails the test if dbus-daemon is missing or refuses to start.
func Start(tb testing.TB, include ...string) *Bus {
	tb.Helper()
	if _, err := exec.LookPath("dbus-daemon"); err != nil {
		tb.Fatal("dbus-daemon is needed (Debian's dbus-daemon): run make deps")
	}
	// Not t.TempDir: unix socket paths must stay under 108 bytes.
	dir, err := os.MkdirTemp("", "qs")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	b := &Bus{Dir: dir}
	var incs strings.Builder
	for _, f := range include {
		fmt.Fprintf(&incs, "  <include>%s</include>\n", escape(f))
	}
	conf := filepath.Join(dir, "bus.conf")
	err = os.WriteFile(conf, fmt.Appendf(nil, busConfig, escape(filepath.Join(dir, "bus")), incs.String()), 0o644)
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command("dbus-daemon", "--config-file="+conf, "--nofork", "--nosyslog", "--print-address")
	cmd.Stderr = &b.log
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { stopProcess(cmd) })
	// dbus-daemon prints its address once it listens.
	addr := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		addr <- strings.TrimSpace(line)
	}()
	select {
	case b.Address = <-addr:
	case <-time.After(10 * time.Second):
	}
	if b.Address == "" {
		stopProcess(cmd) // for the whole log
		tb.Fatalf("dbus-daemon did not start: %s", b.Log())
	}
	return b
}

// Log returns what dbus-daemon wrote to stderr so far.
func (b *Bus) Log() string { return b.log.String() }

// Conn connects to the bus; the connection is closed when the test ends.
func (b *Bus) Conn(tb testing.TB) *dbus.Conn {
	tb.Helper()
	conn, err := dbus.Connect(b.Address)
	if err != nil {
		tb.Fatalf("connect to %s: %v", b.Address, err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

// stopProcess kills a helper process and reaps it; its exit status is
// the kill's, so it says nothing.
func stopProcess(cmd *exec.Cmd) {
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
}

func escape(s string) string {
	var buf bytes.Buffer
	_ = xml.EscapeText(&buf, []byte(s)) // a bytes.Buffer does not fail
	return buf.String()
}
