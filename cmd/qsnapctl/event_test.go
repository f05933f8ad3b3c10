package main

import (
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/api"
)

// Events as the daemon sends them, one JSON line each.
const (
	evCreated = `{"seq":41,"time":"2030-01-02T03:04:05.5Z","type":"snapshot-created","domain":"vm1","operation":"op-1",` +
		`"data":{"snapshot":"s1","mode":"atomic","result":"success","quiesced":true,"freeze_ms":12.5,"duration_ms":40}}`
	evProgress = `{"seq":42,"time":"2030-01-02T03:04:06Z","type":"merge-progress","domain":"vm1","operation":"op-2",` +
		`"data":{"done_bytes":1073741824,"total_bytes":2147483648,"percent":50}}`
	evThawed = `{"seq":43,"time":"2030-01-02T03:04:07Z","type":"guest-thawed","domain":"vm1","data":{"frozen_for_ms":1500}}`
	evLost   = `{"seq":0,"time":"2030-01-02T03:04:07Z","type":"events-lost","data":{"since":3,"resume":40,"run":"r1"}}`
	evOver   = `{"seq":0,"time":"2030-01-02T03:04:08Z","type":"overflow","data":{"since":43,"buffer":1024}}`
)

// streamOf is a daemon's event stream: the lines, each after pause,
// then, unless end, nothing until the client leaves.
func streamOf(pause time.Duration, end bool, lines ...string) fakeReply {
	return fakeReply{serve: func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", api.MediaNDJSON)
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		_ = rc.Flush() // the fake's client reports a broken stream
		for _, l := range lines {
			select {
			case <-time.After(pause):
			case <-r.Context().Done():
				return
			}
			_, _ = w.Write([]byte(l + "\n"))
			_ = rc.Flush()
		}
		if !end {
			<-r.Context().Done()
		}
	}}
}

func TestEventFirst(t *testing.T) {
	f := newFakeDaemon(t, map[string]fakeReply{"GET /v1/events": streamOf(0, false, evCreated, evProgress)})
	code, out, errOut := runCLI(t, "--socket", f.socket, "event", "--domain", "vm1", "--type", "snapshot-created",
		"--type", "merge-progress,guest-thawed")
	want := "event 'snapshot-created' for domain 'vm1': s1 quiesced (op op-1) seq 41\nevents received: 1\n"
	if code != 0 || out != want || errOut != "" {
		t.Errorf("exit %d, stdout %q, stderr %q; want 0, %q", code, out, errOut, want)
	}
	reqs := f.requests()
	q, _ := url.ParseQuery(reqs[0].query)
	if len(reqs) != 1 || q.Get("domain") != "vm1" || strings.Join(q["type"], " ") != "snapshot-created merge-progress,guest-thawed" || q.Has("since") {
		t.Errorf("requests %+v", reqs)
	}
}

// TestEventLoop: --loop prints every event until --timeout, which is
// seconds as virsh's; the read bound (30s, or --timeout before the
// command) is for the daemon's answer, not for the stream.
func TestEventLoop(t *testing.T) {
	f := newFakeDaemon(t, map[string]fakeReply{"GET /v1/events": streamOf(300*time.Millisecond, false, evLost, evCreated, evProgress, evThawed)})
	start := time.Now()
	code, out, errOut := runCLITimeout(t, 200*time.Millisecond, "--socket", f.socket, "event", "--loop", "--timeout", "2", "--since", "3")
	took := time.Since(start)
	want := "event 'events-lost': the events after seq 3 are no longer kept; resuming at seq 40 of run r1\n" +
		"event 'snapshot-created' for domain 'vm1': s1 quiesced (op op-1) seq 41\n" +
		"event 'merge-progress' for domain 'vm1': 50% (1.0 GiB of 2.0 GiB) (op op-2) seq 42\n" +
		"event 'guest-thawed' for domain 'vm1': frozen for 1.5s seq 43\n" +
		"event loop timed out\nevents received: 3\n"
	if code != 0 || out != want || errOut != "" {
		t.Errorf("exit %d, stdout:\n%s\nstderr %q; want 0, stdout:\n%s", code, out, errOut, want)
	}
	if took < 2*time.Second || took > 10*time.Second {
		t.Errorf("took %v, want the 2s of --timeout", took)
	}
	if q, _ := url.ParseQuery(f.requests()[0].query); q.Get("since") != "3" {
		t.Errorf("query %q", f.requests()[0].query)
	}
}

func TestEventNone(t *testing.T) {
	f := newFakeDaemon(t, map[string]fakeReply{"GET /v1/events": streamOf(0, false)})
	code, out, errOut := runCLI(t, "--socket", f.socket, "event", "--timeout", "300ms")
	if code != 1 || out != "event loop timed out\nevents received: 0\n" || errOut != "error: no event received\n" {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

// TestEventJSON: --json prints the events as the daemon sent them, one
// a line, and nothing else on stdout.
func TestEventJSON(t *testing.T) {
	f := newFakeDaemon(t, map[string]fakeReply{"GET /v1/events": streamOf(0, false, evCreated, evThawed)})
	code, out, errOut := runCLI(t, "--socket", f.socket, "--json", "event", "--loop", "--timeout", "500ms")
	if code != 0 || out != evCreated+"\n"+evThawed+"\n" || errOut != "event loop timed out\nevents received: 2\n" {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

// TestEventInterrupt: Ctrl-C ends the loop, as the timeout does.
func TestEventInterrupt(t *testing.T) {
	f := newFakeDaemon(t, map[string]fakeReply{"GET /v1/events": streamOf(0, false, evCreated)})
	signals := make(chan os.Signal, 1)
	go func() {
		time.Sleep(300 * time.Millisecond)
		signals <- syscall.SIGINT
	}()
	code, out, errOut := runCLIWith(t, func(c *cli) { c.signals = signals }, "--socket", f.socket, "event", "--loop", "--timestamp")
	want := "2030-01-02 05:04:05.500+0200: event 'snapshot-created' for domain 'vm1': s1 quiesced (op op-1) seq 41\n" +
		"event loop interrupted\nevents received: 1\n"
	if code != 0 || out != want || errOut != "" {
		t.Errorf("exit %d, stdout %q, stderr %q; want %q", code, out, errOut, want)
	}
}

// TestEventStreamEnds: the daemon ending the stream, after an overflow
// or because it stops, fails the command, saying where to resume.
func TestEventStreamEnds(t *testing.T) {
	for _, tc := range []struct {
		name    string
		lines   []string
		out     string
		wantErr string
	}{
		{"overflow", []string{evCreated, evOver},
			"event 'snapshot-created' for domain 'vm1': s1 quiesced (op op-1) seq 41\n" +
				"event 'overflow': too slow: more than 1024 events waited; every event up to seq 43 was sent\nevents received: 1\n",
			"error: qsnapd ended the event stream: events came faster than they were read; resume with --since 43\n"},
		{"daemon stops", nil, "events received: 0\n", "error: qsnapd ended the event stream\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeDaemon(t, map[string]fakeReply{"GET /v1/events": streamOf(0, true, tc.lines...)})
			code, out, errOut := runCLI(t, "--socket", f.socket, "event", "--loop")
			if code != 1 || out != tc.out || errOut != tc.wantErr {
				t.Errorf("exit %d, stdout %q, stderr %q; want 1, %q, %q", code, out, errOut, tc.out, tc.wantErr)
			}
		})
	}
}

// TestEventRefusals: a bad option is a usage error; the daemon's
// refusal and a daemon that does not answer are reported.
func TestEventRefusals(t *testing.T) {
	f := newFakeDaemon(t, map[string]fakeReply{
		"GET /v1/events": {status: 400, body: `{"error":{"code":"invalid-arg","message":"bad request: unknown event type \"nope\""}}`},
	})
	for _, tc := range []struct {
		argv    []string
		wantErr string
	}{
		{[]string{"event", "--timeout", "soon"}, "error: --timeout must be a positive number of seconds, not 'soon'\n"},
		{[]string{"event", "--since", "-1"}, "error: --since must be an event's sequence number, not '-1'\n"},
		{[]string{"event", "--type", "nope"}, "error: bad request: unknown event type \"nope\"\n"},
	} {
		code, _, errOut := runCLI(t, append([]string{"--socket", f.socket}, tc.argv...)...)
		if code != 1 || !strings.HasPrefix(errOut, tc.wantErr) {
			t.Errorf("%q: exit %d, stderr %q; want 1, %q", tc.argv, code, errOut, tc.wantErr)
		}
	}
	hung := newFakeDaemon(t, map[string]fakeReply{"GET /v1/events": {hang: true}})
	code, _, errOut := runCLITimeout(t, 200*time.Millisecond, "--socket", hung.socket, "event", "--loop")
	if code != 1 || !strings.Contains(errOut, "no answer from qsnapd on "+hung.socket+" within 200ms") {
		t.Errorf("a daemon that does not answer: exit %d, stderr %q", code, errOut)
	}
}

// TestEventDetails: how each type prints.
func TestEventDetails(t *testing.T) {
	for _, tc := range []struct {
		line, want string
	}{
		{`{"seq":1,"type":"snapshot-failed","domain":"vm1","operation":"o","data":{"snapshot":"s2","result":"rolled-back",` +
			`"error":{"code":"operation-failed","message":"switch failed"}}}`,
			"event 'snapshot-failed' for domain 'vm1': s2 rolled-back: switch failed (op o) seq 1"},
		{`{"seq":2,"type":"snapshot-deleted","domain":"vm1","data":{"snapshots":["b","a"],"merged":true,"result":"success"}}`,
			"event 'snapshot-deleted' for domain 'vm1': b, a merged seq 2"},
		{`{"seq":3,"type":"snapshot-deleted","domain":"vm1","data":{"snapshots":[],"merged":false,"result":"failure"}}`,
			"event 'snapshot-deleted' for domain 'vm1': none metadata only failure seq 3"},
		{`{"seq":4,"type":"guest-frozen","domain":"vm1","data":{"owner":"fsfreeze"}}`,
			"event 'guest-frozen' for domain 'vm1': by fsfreeze seq 4"},
		{`{"seq":5,"type":"domain-connected","domain":"vm1","data":{"qemu_version":"7.2.0"}}`,
			"event 'domain-connected' for domain 'vm1': QEMU 7.2.0 seq 5"},
		{`{"seq":6,"type":"domain-disconnected","domain":"vm1","data":{"reason":"detached"}}`,
			"event 'domain-disconnected' for domain 'vm1': detached seq 6"},
		{`{"seq":7,"type":"operation-state","domain":"vm1","operation":"o","data":{"kind":"snapshot-delete","state":"unknown"}}`,
			"event 'operation-state' for domain 'vm1': snapshot-delete unknown (op o) seq 7"},
		// The stream's own events do not count: the first event follows.
		{`{"seq":0,"type":"events-lost","data":{"since":900,"resume":1,"run":"r2","other_run":true}}` + "\n" + evThawed,
			"event 'events-lost': seq 900 is from another run of qsnapd; resuming at seq 1 of run r2\n" +
				"event 'guest-thawed' for domain 'vm1': frozen for 1.5s seq 43"},
		{`{"seq":8,"type":"something-new","data":{"x":1}}`, `event 'something-new': {"x":1} seq 8`},
	} {
		f := newFakeDaemon(t, map[string]fakeReply{"GET /v1/events": streamOf(0, false, tc.line)})
		code, out, errOut := runCLI(t, "--socket", f.socket, "event")
		if want := tc.want + "\nevents received: 1\n"; code != 0 || out != want {
			t.Errorf("exit %d, stdout %q, stderr %q; want %q", code, out, errOut, want)
		}
	}
}
