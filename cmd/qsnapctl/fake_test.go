package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/api"
)

// fakeReply is a canned answer of the fake daemon.
type fakeReply struct {
	status int    // 200 if zero
	body   string // JSON
	hang   bool   // wait until the client gives up
	// then are the answers to the route's next requests, in turn; the
	// last one answers all the others.
	then []fakeReply
	// fn, if set, answers from the requests received so far, this one
	// included.
	fn func(reqs []fakeRequest) fakeReply
	// serve, if set, answers instead, as it likes: a stream.
	serve http.HandlerFunc
}

// fakeRequest is what the fake daemon received.
type fakeRequest struct {
	method, path, query, opID, prefer, body string
}

// fakeDaemon serves canned JSON on a unix socket, keyed by
// "METHOD /path", and records the requests. It knows nothing of the
// API beyond that: it checks what qsnapctl sends and how it prints what
// it gets.
type fakeDaemon struct {
	socket string
	routes map[string]fakeReply

	mu     sync.Mutex
	reqs   []fakeRequest
	counts map[string]int // requests by route
}

// socketPath is a path for a test's unix socket in a short directory:
// unix socket paths must be under 108 bytes, which t.TempDir does not
// promise.
func socketPath(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "qs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "s")
}

func newFakeDaemon(t *testing.T, routes map[string]fakeReply) *fakeDaemon {
	t.Helper()
	f := &fakeDaemon{socket: socketPath(t), routes: routes, counts: map[string]int{}}
	l, err := net.Listen("unix", f.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return f
}

func (f *fakeDaemon) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	route := r.Method + " " + r.URL.Path
	f.mu.Lock()
	f.reqs = append(f.reqs, fakeRequest{method: r.Method, path: r.URL.Path, query: r.URL.RawQuery,
		opID: r.Header.Get(api.OperationHeader), prefer: r.Header.Get(api.PreferHeader), body: string(body)})
	n := f.counts[route]
	f.counts[route]++
	reqs := append([]fakeRequest(nil), f.reqs...)
	f.mu.Unlock()
	reply, ok := f.routes[route]
	switch {
	case !ok:
		reply = fakeReply{status: http.StatusNotFound,
			body: `{"error":{"code":"internal-error","message":"fake: no route for ` + route + `"}}`}
	case reply.fn != nil:
		reply = reply.fn(reqs)
	case n > 0 && len(reply.then) > 0:
		reply = reply.then[min(n, len(reply.then))-1]
	}
	if reply.hang {
		<-r.Context().Done()
		return
	}
	if reply.serve != nil {
		reply.serve(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if reply.status == 0 {
		reply.status = http.StatusOK
	}
	w.WriteHeader(reply.status)
	_, _ = io.WriteString(w, reply.body) // the CLI under test reports a short body
}

func (f *fakeDaemon) requests() []fakeRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeRequest(nil), f.reqs...)
}

// testZone is the zone of printed times in tests.
var testZone = time.FixedZone("TEST", 2*60*60)

// runCLI runs a command line as main does, with times in testZone.
func runCLI(t *testing.T, argv ...string) (code int, stdout, stderr string) {
	t.Helper()
	return runCLITimeout(t, 30*time.Second, argv...)
}

func runCLITimeout(t *testing.T, timeout time.Duration, argv ...string) (code int, stdout, stderr string) {
	t.Helper()
	return runCLIWith(t, func(c *cli) { c.timeout = timeout }, argv...)
}

// runCLIWith runs a command line with a cli that set changed first; it
// may run on another goroutine than the test's.
func runCLIWith(t *testing.T, set func(*cli), argv ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	c := &cli{stdout: &out, stderr: &errOut, getenv: os.Getenv, loc: testZone, timeout: 30 * time.Second, poll: time.Millisecond}
	if set != nil {
		set(c)
	}
	code = c.main(context.Background(), argv)
	return code, out.String(), errOut.String()
}
