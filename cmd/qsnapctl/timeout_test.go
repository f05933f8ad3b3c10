package main

import (
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestCommandBounds: a command that only reads waits answerTimeout for
// the daemon's answer, one that changes state changeTimeout, and
// --timeout sets the bound of every one. Every command is in the table:
// a new one must say which it is.
func TestCommandBounds(t *testing.T) {
	const given = 7 * time.Second
	tests := []struct {
		argv []string
		want time.Duration
	}{
		{[]string{"attach", "vm1", "--qmp", "/run/vm1.qmp"}, changeTimeout},
		{[]string{"detach", "vm1"}, changeTimeout},
		{[]string{"list"}, answerTimeout},
		{[]string{"domblklist", "vm1"}, answerTimeout},
		{[]string{"snapshot-create-as", "vm1", "s1"}, changeTimeout},
		{[]string{"snapshot-create", "vm1", "s1.xml"}, changeTimeout},
		{[]string{"snapshot-list", "vm1"}, answerTimeout},
		{[]string{"snapshot-dumpxml", "vm1", "s1"}, answerTimeout},
		{[]string{"snapshot-current", "vm1"}, answerTimeout},
		{[]string{"snapshot-current", "vm1", "s1"}, changeTimeout},
		{[]string{"snapshot-delete", "vm1", "s1", "--no-wait"}, changeTimeout},
		{[]string{"domfsfreeze", "vm1", "--timeout", "5s"}, changeTimeout},
		{[]string{"domfsthaw", "vm1"}, changeTimeout},
		{[]string{"domfsstatus", "vm1"}, answerTimeout},
		{[]string{"operation", "op-1"}, answerTimeout},
		{[]string{"operation", "op-1", "--cancel"}, changeTimeout},
		{[]string{"event", "--loop"}, answerTimeout}, // for the answer; the stream has no bound
		{[]string{"version"}, answerTimeout},
	}
	seen := map[string]bool{}
	for _, tc := range tests {
		cmd := lookup(tc.argv[0])
		if cmd == nil || cmd.changes == nil {
			t.Fatalf("%s: no such command, or it does not say whether it changes state", tc.argv[0])
		}
		seen[cmd.name] = true
		a, err := parseArgs(cmd, tc.argv[1:])
		if err != nil {
			t.Fatalf("%q: %v", tc.argv, err)
		}
		if got := (&cli{}).bound(cmd.changes(a)); got != tc.want {
			t.Errorf("%q waits %v, want %v", tc.argv, got, tc.want)
		}
		if got := (&cli{timeout: given}).bound(cmd.changes(a)); got != given {
			t.Errorf("--timeout %v %q waits %v, want %v", given, tc.argv, got, given)
		}
	}
	for _, cmd := range commands {
		if !seen[cmd.name] {
			t.Errorf("command %s is not in the table: say whether it changes state", cmd.name)
		}
	}
}

// silentSocket is a unix socket that takes connections and never
// answers: with accept, a daemon stuck; without, a socket that systemd
// holds for a daemon that failed to start, where the kernel queues the
// connections.
func silentSocket(t *testing.T, accept bool) string {
	t.Helper()
	sock := socketPath(t)
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var conns []net.Conn // held open, unanswered, until the test ends
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
	})
	if accept {
		wg.Go(func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return // closed at the end of the test
				}
				conns = append(conns, c)
			}
		})
	}
	return sock
}

// TestNoAnswer: a socket that takes the connection but never answers
// fails the command once its bound passes, with the socket and what to
// check; a command that changes state adds where its outcome may be
// read.
func TestNoAnswer(t *testing.T) {
	for _, tc := range []struct {
		name     string
		accept   bool
		argv     []string
		wantErr  string // stderr, with SOCK for the socket
		wantLost bool   // an operation may go on
	}{
		{name: "list, kernel queue", argv: []string{"list"},
			wantErr: "error: no answer from qsnapd on SOCK within 200ms: the socket accepts but no daemon answers " +
				"(is qsnapd.service running? see: systemctl status qsnapd)\n"},
		{name: "list, accepted", accept: true, argv: []string{"list"},
			wantErr: "error: no answer from qsnapd on SOCK within 200ms: the socket accepts but no daemon answers " +
				"(is qsnapd.service running? see: systemctl status qsnapd)\n"},
		{name: "operation", accept: true, argv: []string{"operation", "op-1"},
			wantErr: "error: no answer from qsnapd on SOCK within 200ms: the socket accepts but no daemon answers " +
				"(is qsnapd.service running? see: systemctl status qsnapd)\n"},
		{name: "snapshot-create-as", argv: []string{"snapshot-create-as", "vm1", "s1", "--operation", "op-1"},
			wantErr: "error: no answer from qsnapd on SOCK within 200ms: the daemon may still be at work on it, " +
				"or no daemon answers on the socket (is qsnapd.service running? see: systemctl status qsnapd)\n" +
				"error: operation op-1 may still finish in the daemon; see 'qsnapctl operation op-1'\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := silentSocket(t, tc.accept)
			start := time.Now()
			r := startCLI(t, slices.Concat([]string{"--socket", sock, "--timeout", "200ms"}, tc.argv)...)
			r.wait(t)
			wantErr := strings.ReplaceAll(tc.wantErr, "SOCK", sock)
			if r.code != 1 || r.stdout != "" || r.stderr != wantErr {
				t.Errorf("exit %d, stdout %q, stderr:\n%s\nwant 1, nothing, and:\n%s", r.code, r.stdout, r.stderr, wantErr)
			}
			// Generous: a loaded machine is slow, but not 10 s slow.
			if took := time.Since(start); took > 10*time.Second {
				t.Errorf("took %v, with --timeout 200ms", took)
			}
		})
	}
}

// TestNoAnswerWhileFollowing: each reading of a followed operation is
// bounded as a read is; one without an answer leaves the operation to
// run on.
func TestNoAnswerWhileFollowing(t *testing.T) {
	f := newFakeDaemon(t, map[string]fakeReply{
		"DELETE /v1/domains/vm1/snapshots/s1": {status: http.StatusAccepted, body: runningOp("op-m")},
		"GET /v1/operations/op-m":             {hang: true},
	})
	code, stdout, stderr := runCLI(t, "--socket", f.socket, "--timeout", "200ms", "snapshot-delete", "vm1", "s1")
	wantErr := "error: no answer from qsnapd on " + f.socket + " within 200ms: the socket accepts but no daemon answers " +
		"(is qsnapd.service running? see: systemctl status qsnapd)\n" +
		"error: operation op-m may still finish in the daemon; see 'qsnapctl operation op-m'\n"
	if code != 1 || stdout != "" || stderr != wantErr {
		t.Errorf("exit %d, stdout %q, stderr:\n%s\nwant 1, nothing, and:\n%s", code, stdout, stderr, wantErr)
	}
}

// TestTimeoutOption: a daemon that answers in time answers as ever.
func TestTimeoutOption(t *testing.T) {
	f := newTestDaemon(t)
	for _, argv := range [][]string{
		{"--timeout", "5s", "--socket", f.socket, "list", "--name"},
		{"--socket", f.socket, "--timeout=1m", "list", "--name"},
	} {
		code, stdout, stderr := runCLIWith(t, func(c *cli) { c.timeout = 0 }, argv...)
		if code != 0 || stdout != "vm1\nvm2\n" || stderr != "" {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want the names", argv, code, stdout, stderr)
		}
	}
}

// TestChangesCarryAnOperationID: every request that changes state goes
// under an operation id, a fresh one for each command, so that the
// client may send it again after a lost connection without running it
// twice; reads go without one.
func TestChangesCarryAnOperationID(t *testing.T) {
	seen := map[string]bool{}
	for _, argv := range [][]string{
		{"attach", "vm1", "--qmp", "/run/vm1.qmp"},
		{"detach", "vm1"},
		{"snapshot-create-as", "vm1", "s1", "--disk-only"},
		{"snapshot-current", "vm1", "s1"},
		{"snapshot-delete", "vm1", "s1", "--no-wait"},
		{"domfsfreeze", "vm1"},
		{"domfsthaw", "vm1"},
		{"list"},
	} {
		f := newFakeDaemon(t, nil) // every answer is an error: only the request counts
		runCLI(t, append([]string{"--socket", f.socket}, argv...)...)
		reqs := f.requests()
		if len(reqs) == 0 {
			t.Fatalf("%v: nothing sent", argv)
		}
		r := reqs[0]
		switch {
		case r.method == http.MethodGet && r.opID != "":
			t.Errorf("%v: a read under operation id %q", argv, r.opID)
		case r.method != http.MethodGet && r.opID == "":
			t.Errorf("%v: %s %s under no operation id", argv, r.method, r.path)
		case r.method != http.MethodGet && seen[r.opID]:
			t.Errorf("%v: operation id %s used before", argv, r.opID)
		}
		seen[r.opID] = true
	}
}
