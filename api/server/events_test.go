package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/api/server"
	"github.com/qsnapd/qsnapd/qmp"
)

// eventWait bounds the wait for one event.
const eventWait = 20 * time.Second

// events reads a stream on a goroutine of its own.
type events struct {
	t      *testing.T
	stream *api.EventStream
	c      chan api.Event
	end    chan error // the error that ended the stream, io.EOF at its end
	cancel context.CancelFunc
}

func openEvents(t *testing.T, c *api.Client, f api.EventFilter) *events {
	t.Helper()
	sctx, cancel := context.WithCancel(context.Background())
	s, err := c.Events(sctx, f)
	if err != nil {
		cancel()
		t.Fatalf("open the event stream %v: %v", f.Query(), err)
	}
	ev := &events{t: t, stream: s, c: make(chan api.Event, 100000), end: make(chan error, 1), cancel: cancel}
	go func() {
		for {
			e, err := s.Next()
			if err != nil {
				ev.end <- err
				close(ev.c)
				return
			}
			ev.c <- e
		}
	}()
	t.Cleanup(ev.close)
	return ev
}

func (ev *events) close() {
	ev.cancel()
	ev.stream.Close()
}

// next is the next event; the stream must not end before it.
func (ev *events) next() api.Event {
	ev.t.Helper()
	select {
	case e, ok := <-ev.c:
		if !ok {
			ev.t.Fatalf("the stream ended: %v", <-ev.end)
		}
		return e
	case <-time.After(eventWait):
		ev.t.Fatalf("no event within %v", eventWait)
	}
	return api.Event{}
}

// until reads events up to and with the first that stop accepts, and
// returns them all.
func (ev *events) until(stop func(api.Event) bool) []api.Event {
	ev.t.Helper()
	var out []api.Event
	for {
		e := ev.next()
		out = append(out, e)
		if stop(e) {
			return out
		}
	}
}

// quiet fails if an event comes within d.
func (ev *events) quiet(d time.Duration) {
	ev.t.Helper()
	select {
	case e, ok := <-ev.c:
		if ok {
			ev.t.Errorf("unexpected event %s", eventString(e))
		}
	case <-time.After(d):
	}
}

// eventString is an event in one line, for messages: its seq, type,
// domain and data, without its time and operation id.
func eventString(e api.Event) string {
	return fmt.Sprintf("%d %s %s %s", e.Seq, e.Type, e.Domain, e.Data)
}

func eventStrings(evs []api.Event) string {
	var b strings.Builder
	for _, e := range evs {
		b.WriteString("\n  " + eventString(e))
	}
	return b.String()
}

func isType(typ string) func(api.Event) bool { return func(e api.Event) bool { return e.Type == typ } }

func data[T any](t *testing.T, e api.Event) T {
	t.Helper()
	var v T
	if err := e.DecodeData(&v); err != nil {
		t.Fatalf("event %s: %v", eventString(e), err)
	}
	return v
}

// summary is an event as the checks compare it: type and the data that
// matter, operation states by kind.
func summary(t *testing.T, e api.Event) string {
	t.Helper()
	switch e.Type {
	case api.EventSnapshotCreated, api.EventSnapshotFailed:
		d := data[api.SnapshotEventData](t, e)
		return e.Type + " " + d.Snapshot + " " + d.Result
	case api.EventSnapshotDeleted:
		d := data[api.DeleteEventData](t, e)
		return fmt.Sprintf("%s %v merged=%v %s", e.Type, d.Snapshots, d.Merged, d.Result)
	case api.EventOperationState:
		d := data[api.OperationStateData](t, e)
		return e.Type + " " + d.Kind + " " + d.State
	}
	return e.Type
}

// checkEventStream: a stream filtered by domain sees a snapshot and its
// delete as they happen, in order, and nothing of another domain; a
// client that reconnects with ?since misses nothing and repeats
// nothing, and one from another run is told what it lost.
func checkEventStream(t *testing.T) {
	d := startDaemon(t, server.Access{})
	all := openEvents(t, d.roClient, api.EventFilter{}) // everything, from the start
	vm := d.vm("vm1", 1)
	d.vm("vm2", 1)
	if e := all.next(); e.Type != api.EventOperationState || e.Seq != 1 {
		t.Errorf("the first event: %s, want seq 1, vm1's attach running", eventString(e))
	}
	evs := openEvents(t, d.roClient, api.EventFilter{Domains: []string{"vm1"}})
	if evs.stream.Run == "" || evs.stream.Run != d.drv.EventRun() {
		t.Errorf("the stream's run %q, want the driver's %q", evs.stream.Run, d.drv.EventRun())
	}

	snap := func(dom, name string) {
		t.Helper()
		if _, err := d.client.CreateSnapshot(ctx(t), dom, api.CreateSnapshotRequest{
			XML: "<domainsnapshot><name>" + name + "</name></domainsnapshot>", Flags: api.FlagDiskOnly | api.FlagAtomic}, ""); err != nil {
			t.Fatal(err)
		}
	}
	snap("vm2", "other")
	snap("vm1", "s1")
	// Data to merge on real QEMU, and a cap, so that the merge takes a
	// second: merge-progress shows.
	var bandwidth int64
	if vm.Real() {
		obs, err := qmp.Dial(ctx(t), vm.QMP2)
		if err != nil {
			t.Fatal(err)
		}
		cmd := `qemu-io -d /machine/peripheral/` + vm.Disks[0].Target + `/virtio-backend "write -P 0x5a 0 8M"`
		if out, err := obs.HumanMonitorCommand(ctx(t), cmd); err != nil || strings.Contains(out, "rror") {
			t.Fatalf("%s: %q, %v", cmd, out, err)
		}
		obs.Close()
		bandwidth = 8 << 20
	}
	_, err := d.client.DeleteSnapshot(ctx(t), "vm1", "s1", api.DeleteOptions{Bandwidth: bandwidth})
	mergeOrSkip(t, err, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := evs.until(isType(api.EventSnapshotDeleted))
	got = append(got, evs.next()) // the delete's operation ends
	var sums []string
	progress := 0
	for i, e := range got {
		if e.Domain != "vm1" {
			t.Errorf("event of domain %q on a stream of vm1: %s", e.Domain, eventString(e))
		}
		if i > 0 && e.Seq <= got[i-1].Seq {
			t.Errorf("seq %d after %d", e.Seq, got[i-1].Seq)
		}
		if e.Type == api.EventMergeProgress {
			progress++
			p := data[api.MergeProgressData](t, e)
			if p.TotalBytes <= 0 || p.DoneBytes > p.TotalBytes || p.Percent < 0 || p.Percent > 100 {
				t.Errorf("merge progress %+v", p)
			}
			continue
		}
		sums = append(sums, summary(t, e))
	}
	want := []string{
		"operation-state snapshot-create running", "snapshot-created s1 success", "operation-state snapshot-create succeeded",
		"operation-state snapshot-delete running", "snapshot-deleted [s1] merged=true success",
		"operation-state snapshot-delete succeeded",
	}
	if strings.Join(sums, "\n") != strings.Join(want, "\n") {
		t.Errorf("vm1's events:%s\nwant:\n  %s", eventStrings(got), strings.Join(want, "\n  "))
	}
	// Merge progress: a few events while the capped merge ran, never 4
	// a second more than it lasted.
	if vm.Real() && progress == 0 {
		t.Errorf("no merge-progress during a merge of 8 MiB at 8 MiB/s:%s", eventStrings(got))
	}
	if progress > 12 {
		t.Errorf("%d merge-progress events for a merge of a second or so", progress)
	}

	// Reconnect: events after the one last seen, while away included,
	// each once.
	seen := got[1].Seq // snapshot-created s1
	evs.close()
	snap("vm1", "s2")
	snap("vm2", "other2")
	again := openEvents(t, d.roClient, api.EventFilter{Domains: []string{"vm1"}, Since: new(seen), Run: evs.stream.Run})
	resumed := again.until(func(e api.Event) bool {
		return e.Type == api.EventOperationState && summary(t, e) == "operation-state snapshot-create succeeded" && e.Seq > got[len(got)-1].Seq
	})
	var wantResumed []api.Event
	for _, e := range all.until(func(e api.Event) bool { return e.Seq == resumed[len(resumed)-1].Seq }) {
		if e.Domain == "vm1" && e.Seq > seen {
			wantResumed = append(wantResumed, e)
		}
	}
	if eventStrings(resumed) != eventStrings(wantResumed) {
		t.Errorf("resumed after %d:%s\nwant what the unfiltered stream saw of vm1:%s", seen, eventStrings(resumed), eventStrings(wantResumed))
	}
	again.quiet(200 * time.Millisecond)

	// From another run: told, then everything kept.
	lost := openEvents(t, d.roClient, api.EventFilter{Domains: []string{"vm1"}, Since: new(uint64(3)), Run: "another-run"})
	e := lost.next()
	if e.Type != api.EventEventsLost || e.Seq != 0 {
		t.Fatalf("the first event from another run: %s, want events-lost", eventString(e))
	}
	if l := data[api.EventsLostData](t, e); l != (api.EventsLostData{Since: 3, Resume: 1, Run: d.drv.EventRun(), OtherRun: true}) {
		t.Errorf("events-lost: %+v", l)
	}
	if first := lost.next(); first.Seq != 1 || first.Domain != "vm1" {
		t.Errorf("after events-lost: %s, want the oldest kept of vm1, seq 1", eventString(first))
	}
}

// rawStream is an event stream read byte by byte, as a client that
// reads when it wants to.
type rawStream struct {
	conn net.Conn
	resp *http.Response
}

func openRaw(t *testing.T, socket, query string, hdr map[string]string) *rawStream {
	t.Helper()
	conn, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	req := "GET " + api.EventsPath + query + " HTTP/1.1\r\nHost: qsnapd\r\n"
	for k, v := range hdr {
		req += k + ": " + v + "\r\n"
	}
	if _, err := io.WriteString(conn, req+"\r\n"); err != nil {
		t.Fatal(err)
	}
	// A small reader: the header only, nothing the test means to leave
	// unread.
	resp, err := http.ReadResponse(bufio.NewReaderSize(conn, 16), nil)
	if err != nil {
		t.Fatal(err)
	}
	return &rawStream{conn: conn, resp: resp}
}

// lines reads the rest of the stream's body, as lines, until the
// server ends it (or within limit).
func (r *rawStream) lines(t *testing.T, limit time.Duration) (lines []string, err error) {
	t.Helper()
	if err := r.conn.SetReadDeadline(time.Now().Add(limit)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(r.resp.Body)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return lines, err
		}
		lines = append(lines, strings.TrimSuffix(line, "\n"))
	}
}

func decodeLines(t *testing.T, lines []string) []api.Event {
	t.Helper()
	out := make([]api.Event, len(lines))
	for i, l := range lines {
		if err := json.Unmarshal([]byte(l), &out[i]); err != nil {
			t.Fatalf("line %d %q: %v", i, l, err)
		}
	}
	return out
}

// checkSlowEventConsumer: a client that stops reading does not slow
// snapshots down: once its buffer is full it is dropped; when it reads
// again it gets what was queued for it, then overflow and the end of
// the stream, and reconnecting with the overflow's since it misses
// nothing.
func checkSlowEventConsumer(t *testing.T) {
	// A grace long enough for the burst: the client reads after it.
	d := startDaemonWith(t, daemonOpts{cfg: server.Config{EventBuffer: 8}, sendBuffer: 4096,
		server: func(s *server.Server) { server.SetStreamGraces(s, 2*time.Minute, time.Second) }})
	d.vm("vm1", 1)
	n := 0
	snap := func() time.Duration {
		t.Helper()
		n++
		start := time.Now()
		if _, err := d.client.CreateSnapshot(ctx(t), "vm1", api.CreateSnapshotRequest{
			XML: fmt.Sprintf("<domainsnapshot><name>s%d</name></domainsnapshot>", n), Flags: api.FlagDiskOnly | api.FlagAtomic}, ""); err != nil {
			t.Fatal(err)
		}
		return time.Since(start)
	}
	median := func(ds []time.Duration) time.Duration {
		slices.Sort(ds)
		return ds[len(ds)/2]
	}
	var alone []time.Duration
	for range 5 {
		alone = append(alone, snap())
	}
	stuck := openRaw(t, d.ro, "?domain=vm1", nil)
	if stuck.resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", stuck.resp.StatusCode)
	}
	var withStuck []time.Duration
	const burst = 60 // 180 events, far past 8 events and 8 KiB of socket
	for range burst {
		withStuck = append(withStuck, snap())
	}
	if a, s := median(alone), median(withStuck); s > 5*a+200*time.Millisecond {
		t.Errorf("snapshots took %v (median) with a client that does not read, %v without", s, a)
	}
	lines, err := stuck.lines(t, eventWait)
	if !errors.Is(err, io.EOF) {
		t.Errorf("the stream ended with %v, want its end", err)
	}
	if len(lines) == 0 {
		t.Fatal("the slow client got nothing")
	}
	got := decodeLines(t, lines)
	last := got[len(got)-1]
	if last.Type != api.EventOverflow {
		t.Fatalf("the last event: %s, want overflow", eventString(last))
	}
	over := data[api.OverflowData](t, last)
	got = got[:len(got)-1]
	created := 0
	for i, e := range got {
		if i > 0 && e.Seq != got[i-1].Seq+1 {
			t.Errorf("seq %d after %d: the events before the overflow have a gap", e.Seq, got[i-1].Seq)
		}
		if e.Type == api.EventSnapshotCreated {
			created++
		}
	}
	if over.Buffer != 8 || len(got) == 0 || over.Since != got[len(got)-1].Seq {
		t.Errorf("overflow %+v after seq %d", over, got[len(got)-1].Seq)
	}
	if created >= burst {
		t.Errorf("the slow client got all %d snapshots: no overflow while they ran", created)
	}
	// Reconnecting where it was told: the rest, none twice.
	rest := openEvents(t, d.roClient, api.EventFilter{Domains: []string{"vm1"}, Since: new(over.Since)})
	names := map[string]int{}
	for _, e := range append(got, rest.until(func(e api.Event) bool {
		return e.Type == api.EventSnapshotCreated && data[api.SnapshotEventData](t, e).Snapshot == fmt.Sprintf("s%d", n)
	})...) {
		if e.Type == api.EventSnapshotCreated {
			names[data[api.SnapshotEventData](t, e).Snapshot]++
		}
	}
	for i := 6; i <= n; i++ {
		if c := names[fmt.Sprintf("s%d", i)]; c != 1 {
			t.Errorf("snapshot s%d seen %d times across the overflow", i, c)
		}
	}
}

// TestEventStreamNeverRead: a client that never reads is dropped once
// its buffer is full, and its connection closed once the grace after
// the overflow has passed, though the server's write to it blocks;
// emitting events meanwhile never waits.
func TestEventStreamNeverRead(t *testing.T) {
	d := startDaemonWith(t, daemonOpts{cfg: server.Config{EventBuffer: 16}, sendBuffer: 4096,
		server: func(s *server.Server) { server.SetStreamGraces(s, 200*time.Millisecond, time.Second) }})
	stuck := openRaw(t, d.ro, "", nil)
	// Paced, so that the server writes each until the socket is full
	// and its write blocks; then at full speed.
	for i := range 200 {
		d.drv.OperationStateChanged(fmt.Sprint("paced-", i), api.OpFSFreeze, "vm1", api.OpRunning)
		time.Sleep(time.Millisecond)
	}
	start := time.Now()
	for i := range 5000 {
		d.drv.OperationStateChanged(fmt.Sprint("op-", i), api.OpFSFreeze, "vm1", api.OpRunning)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("5000 events took %v with a client that does not read", took)
	}
	time.Sleep(time.Second) // past the grace
	lines, err := stuck.lines(t, 5*time.Second)
	if err == nil || errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		t.Fatalf("the stream of a client that never read is still open after the grace: %v", err)
	}
	if n := len(lines); n == 0 || n >= 200 {
		t.Errorf("the client got %d lines, want what its socket held", n)
	}
	// Its socket filled before its buffer did: the write that blocked
	// never ended, and no overflow was sent.
	for _, l := range lines {
		if strings.Contains(l, `"overflow"`) {
			t.Errorf("the server wrote to a client that never read after its socket was full: %s", l)
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestEventStreamSSE: with Accept: text/event-stream each event is an
// SSE message with its seq as id; Last-Event-ID resumes after it; the
// stream's own events have no id.
func TestEventStreamSSE(t *testing.T) {
	d := startDaemon(t, server.Access{})
	d.drv.OperationStateChanged("op-a", api.OpFSFreeze, "vm1", api.OpRunning)
	d.drv.OperationStateChanged("op-a", api.OpFSFreeze, "vm1", api.OpSucceeded)
	read := func(s *rawStream, n int) string {
		t.Helper()
		br := bufio.NewReader(s.resp.Body)
		var b strings.Builder
		for blank := 0; blank < n; {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("after %q: %v", b.String(), err)
			}
			if line == "\n" {
				blank++
			}
			b.WriteString(line)
		}
		return b.String()
	}
	s := openRaw(t, d.rw, "?since=0", map[string]string{"Accept": "text/html, text/event-stream;q=0.9"})
	if ct := s.resp.Header.Get("Content-Type"); ct != api.MediaEventStream {
		t.Errorf("Content-Type %q", ct)
	}
	got := read(s, 2)
	re := func(seq int, state string) string {
		return fmt.Sprintf("id: %d\nevent: operation-state\ndata: {\"seq\":%d,\"time\":\"TIME\",\"type\":\"operation-state\","+
			"\"domain\":\"vm1\",\"operation\":\"op-a\",\"data\":{\"kind\":\"fsfreeze\",\"state\":\"%s\"}}\n\n", seq, seq, state)
	}
	if norm := timeRE(got); norm != re(1, "running")+re(2, "succeeded") {
		t.Errorf("SSE:\n%s\nwant:\n%s", norm, re(1, "running")+re(2, "succeeded"))
	}
	// A browser's reconnect.
	s2 := openRaw(t, d.rw, "", map[string]string{"Accept": "text/event-stream", "Last-Event-ID": "1"})
	if got := timeRE(read(s2, 1)); got != re(2, "succeeded") {
		t.Errorf("after Last-Event-ID 1:\n%s", got)
	}
	// The stream's own: no id.
	s3 := openRaw(t, d.rw, "?since=9&run=other", map[string]string{"Accept": "text/event-stream"})
	if got := read(s3, 1); !strings.HasPrefix(got, "event: events-lost\ndata: {\"seq\":0,") {
		t.Errorf("events-lost in SSE:\n%s", got)
	}
	// Without Accept: JSON lines.
	s4 := openRaw(t, d.rw, "?since=1", nil)
	if ct := s4.resp.Header.Get("Content-Type"); ct != api.MediaNDJSON {
		t.Errorf("Content-Type %q", ct)
	}
	line, err := bufio.NewReader(s4.resp.Body).ReadString('\n')
	if want := strings.TrimSuffix(strings.SplitN(re(2, "succeeded"), "data: ", 2)[1], "\n"); err != nil || timeRE(line) != want {
		t.Errorf("JSON line %q, %v", line, err)
	}
}

// timeRE replaces the times of events by TIME.
func timeRE(s string) string {
	var b strings.Builder
	for {
		i := strings.Index(s, `"time":"`)
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:i+8] + "TIME")
		s = s[i+8:]
		s = s[strings.IndexByte(s, '"'):]
	}
}

// TestEventStreamQuery: a bad filter is refused with invalid-arg.
func TestEventStreamQuery(t *testing.T) {
	d := startDaemon(t, server.Access{})
	for _, q := range []string{"?type=snapshot-made", "?type=snapshot-created,nope", "?since=x", "?since=1&since=2",
		"?domains=vm1", "?run=a&run=b"} {
		status, eb := raw(t, d.ro, http.MethodGet, api.EventsPath+q, nil, nil)
		if status != http.StatusBadRequest || eb.Error.Code != api.CodeInvalidArg {
			t.Errorf("%s: %d %+v, want 400 invalid-arg", q, status, eb.Error)
		}
	}
	// Lists and repeats are fine; a domain named with a comma matches.
	d.drv.OperationStateChanged("op-1", api.OpFSFreeze, "a,b", api.OpRunning)
	d.drv.OperationStateChanged("op-2", api.OpFSFreeze, "c", api.OpRunning)
	d.drv.OperationStateChanged("op-3", api.OpFSFreeze, "b", api.OpRunning)
	ev := openEvents(t, d.roClient, api.EventFilter{Domains: []string{"a,b", "z"},
		Types: []string{"snapshot-created,operation-state", api.EventOverflow}, Since: new(uint64(0))})
	var doms []string
	for range 2 {
		doms = append(doms, ev.next().Domain)
	}
	if strings.Join(doms, " ") != "a,b b" {
		t.Errorf("domains %q", doms)
	}
	ev.quiet(100 * time.Millisecond)
}

// TestEventStreamOutlivesTimeouts: a stream is not cut by the server's
// read and write timeouts.
func TestEventStreamOutlivesTimeouts(t *testing.T) {
	d := startDaemonWith(t, daemonOpts{server: func(s *server.Server) {
		server.SetTimeouts(s, 300*time.Millisecond, 300*time.Millisecond)
	}})
	ev := openEvents(t, d.client, api.EventFilter{})
	time.Sleep(time.Second)
	d.drv.OperationStateChanged("op-late", api.OpFSFreeze, "vm1", api.OpRunning)
	if e := ev.next(); e.Operation != "op-late" {
		t.Errorf("after the timeouts: %s", eventString(e))
	}
	// A plain request still has them: the timeouts are the stream's
	// alone to lift.
	if _, err := d.client.Version(ctx(t)); err != nil {
		t.Error(err)
	}
}

// TestEventStreamEndsAtShutdown: streams, one of a client that reads
// and one of a client that does not, end when the server stops, which
// does not wait for them.
func TestEventStreamEndsAtShutdown(t *testing.T) {
	d := startDaemonWith(t, daemonOpts{sendBuffer: 4096})
	reading := openEvents(t, d.roClient, api.EventFilter{})
	stuck := openRaw(t, d.rw, "", nil)
	for i := range 500 { // 150 KB: the stuck client's socket takes 8
		d.drv.OperationStateChanged(strconv.Itoa(i), api.OpFSFreeze, "vm1", api.OpRunning)
	}
	for range 500 {
		reading.next()
	}
	time.Sleep(100 * time.Millisecond) // the stuck one's server writes until its socket is full
	start := time.Now()
	d.stop()
	select {
	case err := <-d.done:
		d.done <- err // for close
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not stop within 10s: streams hold it")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the server took %v to stop", took)
	}
	for {
		select {
		case e, ok := <-reading.c:
			if ok {
				t.Errorf("event after the shutdown: %s", eventString(e))
				continue
			}
			if err := <-reading.end; !errors.Is(err, io.EOF) {
				t.Errorf("the reading client's stream ended with %v, want EOF", err)
			}
		case <-time.After(eventWait):
			t.Fatal("the reading client's stream goes on after the shutdown")
		}
		break
	}
	if _, err := stuck.lines(t, 5*time.Second); isTimeout(err) {
		t.Errorf("the stuck client's stream goes on after the shutdown: %v", err)
	}
}
