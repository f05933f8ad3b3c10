package main

import (
	"net"
	"syscall"
	"testing"
)

// TestFullBacklog: a socket whose queue of connections is full, as one
// that systemd holds for a daemon that failed to start ends up after
// enough tries, refuses at once on Linux; the error says why.
func TestFullBacklog(t *testing.T) {
	sock := socketPath(t)
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: sock}); err != nil {
		t.Fatal(err)
	}
	// A backlog of 0 queues one connection: take it, and the next one
	// finds the queue full.
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	first, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { first.Close() })

	code, stdout, stderr := runCLI(t, "--socket", sock, "list")
	want := "error: cannot connect to qsnapd on " + sock + ": its queue of connections is full: " +
		"no daemon takes them (is qsnapd.service running? see: systemctl status qsnapd)\n"
	if code != 1 || stdout != "" || stderr != want {
		t.Errorf("exit %d, stdout %q, stderr %q; want 1 and %q", code, stdout, stderr, want)
	}
}
