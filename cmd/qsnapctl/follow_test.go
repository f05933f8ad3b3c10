package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/api"
)

// mergeDaemon runs a merge of vm1's s1 as operation op-m: the readings
// of op-m answer the progresses in turn, then the merge's end.
func mergeDaemon(t *testing.T, progresses []string, end string) *fakeDaemon {
	t.Helper()
	var then []fakeReply
	for _, p := range progresses[1:] {
		then = append(then, fakeReply{body: p})
	}
	then = append(then, fakeReply{body: end})
	f := newFakeDaemon(t, map[string]fakeReply{
		"DELETE /v1/domains/vm1/snapshots/s1": {status: http.StatusAccepted, body: runningOp("op-m")},
		"GET /v1/operations/op-m":             {body: progresses[0], then: then},
	})
	t.Setenv(socketEnv, f.socket)
	return f
}

// mergeProgress is op-m running, with progress if total is not -1.
func mergeProgress(done, total int64, cancellable bool) string {
	if total < 0 {
		return runningOp("op-m")
	}
	return strings.ReplaceAll(runningMergeOp(done, total, cancellable), "op-running", "op-m")
}

var mergedEnd = strings.ReplaceAll(mergedOp, "op-merged", "op-m")

// TestDeleteProgressLines: off a terminal, the progress is a line each
// time the whole percentage changes, then the outcome and the disks.
func TestDeleteProgressLines(t *testing.T) {
	mergeDaemon(t, []string{
		mergeProgress(0, -1, false), // not started: nothing to show
		mergeProgress(0, 96<<20, true),
		mergeProgress(48<<20, 96<<20, true),
		mergeProgress(48<<20+1, 96<<20, true), // still 50%
		mergeProgress(96<<20, 96<<20, false),
	}, mergedEnd)
	code, stdout, stderr := runCLI(t, "snapshot-delete", "vm1", "s1", "--bandwidth", "100M")
	want := "" +
		"progress:   0% (0 B of 96.0 MiB)\n" +
		"progress:  50% (48.0 MiB of 96.0 MiB)\n" +
		"progress: 100% (96.0 MiB of 96.0 MiB)\n" +
		"Domain snapshot s1 deleted\n" +
		"Merged 96.0 MiB in 12.346s\n" + mergeTable
	if code != 0 || stdout != want || stderr != "" {
		t.Errorf("exit %d\nstdout:\n%s\nwant:\n%s\nstderr: %q", code, stdout, want, stderr)
	}
}

// TestDeleteJSON: with --json, stdout is the result alone.
func TestDeleteJSON(t *testing.T) {
	mergeDaemon(t, []string{mergeProgress(0, 96<<20, true), mergeProgress(48<<20, 96<<20, true)}, mergedEnd)
	code, stdout, stderr := runCLI(t, "snapshot-delete", "vm1", "s1", "--json")
	var got api.DeleteSnapshotResponse
	if err := json.Unmarshal([]byte(stdout), &got); err != nil || code != 0 || stderr != "" || len(got.Disks) != 2 ||
		got.MergedBytes != 96<<20 || !strings.HasPrefix(stdout, "{\n  \"operation\": \"op-m\"") {
		t.Errorf("exit %d, stdout %q (%v), stderr %q", code, stdout, err, stderr)
	}
}

// TestProgressBar: on a terminal, the bar is redrawn in place, and the
// line is ended before anything else is written.
func TestProgressBar(t *testing.T) {
	var out bytes.Buffer
	p := &progressView{w: &out, tty: true}
	op := func(done, total int64) api.Operation {
		return api.Operation{State: api.OpRunning, Progress: &api.Progress{DoneBytes: done, TotalBytes: total, Cancellable: true}}
	}
	p.show(api.Operation{State: api.OpRunning}) // no progress: nothing
	p.show(op(0, 0))
	p.show(op(3<<30, 4<<30))
	p.breakLine()
	p.breakLine() // once
	p.show(op(4<<30, 4<<30))
	p.end()
	want := "" +
		"\r[>                             ]   0%  0 B of 0 B\x1b[K" +
		"\r[======================>       ]  75%  3.0 GiB of 4.0 GiB\x1b[K\n" +
		"\r[==============================] 100%  4.0 GiB of 4.0 GiB\x1b[K\n"
	if out.String() != want {
		t.Errorf("got  %q\nwant %q", out.String(), want)
	}
	out.Reset()
	quiet := &progressView{w: &out, tty: true, quiet: true}
	quiet.show(op(1, 2))
	quiet.end()
	if out.Len() != 0 {
		t.Errorf("--json: %q, want nothing", out.String())
	}
}

// interruptible runs a command line on its own goroutine with an
// injected signal channel.
type interruptible struct {
	signals chan os.Signal
	done    chan struct{}
	code    int
	stdout  string
	stderr  string
}

func startCLI(t *testing.T, argv ...string) *interruptible {
	t.Helper()
	r := &interruptible{signals: make(chan os.Signal, 2), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.code, r.stdout, r.stderr = runCLIWith(t, func(c *cli) { c.signals = r.signals }, argv...)
	}()
	return r
}

func (r *interruptible) wait(t *testing.T) {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(20 * time.Second):
		t.Fatal("qsnapctl did not end")
	}
}

// waitFor waits until the fake daemon has received n requests of
// method and path.
func waitFor(t *testing.T, f *fakeDaemon, method, path string, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		got := 0
		for _, r := range f.requests() {
			if r.method == method && r.path == path {
				got++
			}
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d requests %s %s, want %d", got, method, path, n)
		}
	}
}

// cancelled says whether the fake daemon was asked to cancel op.
func cancelled(reqs []fakeRequest, op string) bool {
	for _, r := range reqs {
		if r.method == http.MethodDelete && r.path == "/v1/operations/"+op {
			return true
		}
	}
	return false
}

const abortedOp = `{"id": "op-c", "kind": "snapshot-delete", "domain": "vm1", "state": "failed",
  "started": "2024-03-01T10:00:00Z", "ended": "2024-03-01T10:00:05Z",
  "error": {"code": "operation-aborted", "message": "operation cancelled: merge of snapshot 's1' cancelled; no disk changed"}}`

// TestInterruptCancels: Ctrl-C while a merge runs asks the daemon to
// cancel it, then waits for its end and reports it.
func TestInterruptCancels(t *testing.T) {
	running := strings.ReplaceAll(runningMergeOp(1<<20, 96<<20, true), "op-running", "op-c")
	f := newFakeDaemon(t, map[string]fakeReply{
		"DELETE /v1/domains/vm1/snapshots/s1": {status: http.StatusAccepted, body: running},
		"DELETE /v1/operations/op-c":          {status: http.StatusAccepted, body: running},
		"GET /v1/operations/op-c": {fn: func(reqs []fakeRequest) fakeReply {
			if cancelled(reqs, "op-c") {
				return fakeReply{body: abortedOp}
			}
			return fakeReply{body: running}
		}},
	})
	t.Setenv(socketEnv, f.socket)
	r := startCLI(t, "snapshot-delete", "vm1", "s1")
	waitFor(t, f, http.MethodGet, "/v1/operations/op-c", 1)
	r.signals <- os.Interrupt
	r.wait(t)
	wantErr := "cancelling operation op-c; interrupt again to leave it running\n" +
		"error: operation cancelled: merge of snapshot 's1' cancelled; no disk changed\n"
	if r.code != 1 || r.stderr != wantErr || !strings.HasPrefix(r.stdout, "progress:   1% (1.0 MiB of 96.0 MiB)\n") {
		t.Errorf("exit %d, stdout %q, stderr %q; want 1 and\n%s", r.code, r.stdout, r.stderr, wantErr)
	}
	if !cancelled(f.requests(), "op-c") {
		t.Error("no cancel was sent")
	}
}

// TestInterruptTwiceLeaves: a merge past its point of no return refuses
// the cancel; the second Ctrl-C leaves it running, and says where to
// read its outcome.
func TestInterruptTwiceLeaves(t *testing.T) {
	running := strings.ReplaceAll(runningMergeOp(90<<20, 96<<20, false), "op-running", "op-c")
	f := newFakeDaemon(t, map[string]fakeReply{
		"DELETE /v1/domains/vm1/snapshots/s1": {status: http.StatusAccepted, body: running},
		"DELETE /v1/operations/op-c": {status: http.StatusConflict, body: `{"error": {"code": "operation-invalid",
			"message": "operation invalid: operation 'op-c' is past its point of no return; it will finish"}}`},
		"GET /v1/operations/op-c": {body: running},
	})
	t.Setenv(socketEnv, f.socket)
	r := startCLI(t, "snapshot-delete", "vm1", "s1")
	waitFor(t, f, http.MethodGet, "/v1/operations/op-c", 1)
	r.signals <- os.Interrupt
	waitFor(t, f, http.MethodDelete, "/v1/operations/op-c", 1)
	r.signals <- os.Interrupt
	r.wait(t)
	wantErr := "error: cannot cancel: operation invalid: operation 'op-c' is past its point of no return; it will finish\n" +
		"waiting for operation op-c to end; interrupt again to leave it running\n" +
		"error: interrupted; not waiting any longer\n" +
		"error: operation op-c may still finish in the daemon; see 'qsnapctl operation op-c'\n"
	if r.code != 1 || r.stderr != wantErr {
		t.Errorf("exit %d, stderr:\n%s\nwant:\n%s", r.code, r.stderr, wantErr)
	}
}

// TestOperationWaitInterruptLeaves: 'operation --wait' follows; Ctrl-C
// stops following and cancels nothing.
func TestOperationWaitInterruptLeaves(t *testing.T) {
	f := newFakeDaemon(t, map[string]fakeReply{
		"GET /v1/operations/op-running": {body: runningMergeOp(48<<20, 96<<20, true)},
	})
	t.Setenv(socketEnv, f.socket)
	r := startCLI(t, "operation", "op-running", "--wait")
	waitFor(t, f, http.MethodGet, "/v1/operations/op-running", 3)
	r.signals <- syscall.SIGTERM
	r.wait(t)
	if r.code != 1 || r.stdout != "progress:  50% (48.0 MiB of 96.0 MiB)\n" ||
		!strings.Contains(r.stderr, "see 'qsnapctl operation op-running'") || cancelled(f.requests(), "op-running") {
		t.Errorf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

// TestInterruptEndsARequest: other commands end on Ctrl-C, as they did.
func TestInterruptEndsARequest(t *testing.T) {
	f := newTestDaemon(t)
	t.Setenv(socketEnv, f.socket)
	r := startCLI(t, "snapshot-create-as", "slow", "s1", "--operation", "op-slow")
	waitFor(t, f, http.MethodPost, "/v1/domains/slow/snapshots", 1)
	r.signals <- os.Interrupt
	r.wait(t)
	if r.code != 1 || !strings.HasPrefix(r.stderr, "error: interrupted: ") || !strings.Contains(r.stderr, "qsnapctl operation op-slow") {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestParseBandwidth(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64 // -1: refused
	}{
		{"0", 0},
		{"1048576", 1 << 20},
		{"512b", 512},
		{"100K", 100 << 10},
		{"100KiB", 100 << 10},
		{"100kb", 100_000},
		{"50M", 50 << 20},
		{"50M/s", 50 << 20},
		{"2GB", 2_000_000_000},
		{"1T", 1 << 40},
		{"", -1},
		{"M", -1},
		{"-5", -1},
		{"1.5M", -1},
		{"10X", -1},
		{"10Mbit", -1},
		{"9223372036854775807", 1<<63 - 1},
		{"9223372036854775807K", -1},
		{"99999999999999999999", -1},
	} {
		got, err := parseBandwidth(tc.in)
		if tc.want < 0 && err == nil || tc.want >= 0 && (err != nil || got != tc.want) {
			t.Errorf("parseBandwidth(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func TestHumanBytes(t *testing.T) {
	for _, tc := range []struct {
		in   int64
		want string
	}{
		{0, "0 B"}, {1023, "1023 B"}, {1024, "1.0 KiB"}, {1536, "1.5 KiB"}, {96 << 20, "96.0 MiB"},
		{3 << 30, "3.0 GiB"}, {5 << 40, "5.0 TiB"}, {1 << 62, "4096.0 PiB"},
	} {
		if got := humanBytes(tc.in); got != tc.want {
			t.Errorf("humanBytes(%d) = %q, want %q", tc.in, got, tc.want)
		}
	}
	for _, tc := range []struct {
		done, total int64
		want        int
	}{{0, 0, 0}, {5, 0, 0}, {1, 3, 33}, {3, 3, 100}, {4, 3, 100}, {-1, 3, 0}} {
		if got := percent(tc.done, tc.total); got != tc.want {
			t.Errorf("percent(%d, %d) = %d, want %d", tc.done, tc.total, got, tc.want)
		}
	}
}
