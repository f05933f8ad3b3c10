package libvirtrpc_test

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/libvirtrpc"
)

// TestMaxClients: past MaxClients a connection is closed at once, as
// libvirtd drops one past max_clients; one slot freed, the next gets in.
func TestMaxClients(t *testing.T) {
	e := startEndpoint(t, endpointOpts{cfg: libvirtrpc.Config{MaxClients: 2}})
	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("unix", e.ro)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	// closedSoon reports whether the server closed c within a while.
	closedSoon := func(c net.Conn) bool {
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		_, err := c.Read(make([]byte, 1))
		return err == io.EOF
	}
	a, b := dial(), dial()
	defer a.Close()
	if closedSoon(a) || closedSoon(b) {
		t.Fatal("a connection within the limit was closed")
	}
	if c := dial(); !closedSoon(c) {
		t.Error("a connection past the limit stayed open")
	}
	b.Close()
	time.Sleep(100 * time.Millisecond) // the server sees b go
	d := dial()
	defer d.Close()
	if closedSoon(d) {
		t.Error("a connection was refused after one left")
	}
}
