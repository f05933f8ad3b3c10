package driver

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/internal/eventlog"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
)

// sinkCalls records what the sink behind the event log hears, one line
// per call.
type sinkCalls struct {
	mu    sync.Mutex
	calls []string
}

func (s *sinkCalls) note(format string, a ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, fmt.Sprintf(format, a...))
}

func (s *sinkCalls) all() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.calls...)
}

func (s *sinkCalls) SnapshotFinished(e SnapshotEvent) { s.note("snapshot %s %s", e.Name, e.Result) }
func (s *sinkCalls) SnapshotDeleted(e DeleteEvent)    { s.note("deleted %v %s", e.Names, e.Result) }
func (s *sinkCalls) MergeProgress(dom, op string, done, total int64) {
	s.note("progress %s %d/%d", op, done, total)
}
func (s *sinkCalls) GuestFrozen(dom, owner string) { s.note("frozen %s %s", dom, owner) }
func (s *sinkCalls) GuestThawed(dom string, d time.Duration) {
	s.note("thawed %s %v", dom, d)
}
func (s *sinkCalls) FreezeDeadlineExceeded(dom string) { s.note("deadline %s", dom) }
func (s *sinkCalls) RollbackFinished(ok bool)          { s.note("rollback %v", ok) }
func (s *sinkCalls) OperationRecovered(action string)  { s.note("recovered %s", action) }
func (s *sinkCalls) OperationResolved(dom, op, state string) {
	s.note("resolved %s %s", op, state)
}
func (s *sinkCalls) DomainsChanged(up, down int) { s.note("domains %d/%d", up, down) }
func (s *sinkCalls) OperationsInFlight(d int)    { s.note("inflight %d", d) }

var _ Events = (*sinkCalls)(nil)

// logged are the events a subscription holds now, one line each.
func logged(s *eventlog.Subscription) []string {
	var out []string
	for _, e := range s.Replay {
		out = append(out, eventLine(e))
	}
	for {
		select {
		case e, ok := <-s.C():
			if !ok {
				return out
			}
			out = append(out, eventLine(e))
		default:
			return out
		}
	}
}

func eventLine(e eventlog.Event) string {
	return fmt.Sprintf("%d %s %s %s %+v", e.Seq, e.Type, e.Domain, e.Operation, e.Data)
}

func openForEvents(t *testing.T, sink Events, ring int) *Driver {
	t.Helper()
	d, err := Open(Config{StateDir: t.TempDir(), Events: sink, EventRing: ring}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// TestEventLogOneSource: every event the engine reports goes to the
// ring, numbered, and to the sink (metrics, D-Bus, the inhibitor) from
// the same call; the events only the metrics use go to the sink alone.
func TestEventLogOneSource(t *testing.T) {
	sink := &sinkCalls{}
	d := openForEvents(t, sink, 0)
	sub := d.SubscribeEvents(EventOptions{Buffer: 100})
	defer sub.Close()
	ev := d.cfg.Events
	ev.OperationsInFlight(1)
	ev.SnapshotFinished(SnapshotEvent{Domain: "vm1", Name: "s1", OpID: "op1", Mode: "atomic", Result: ResultSuccess})
	ev.SnapshotFinished(SnapshotEvent{Domain: "vm1", Name: "s2", OpID: "op2", Result: ResultRolledBack, Err: errors.New("boom")})
	ev.GuestFrozen("vm1", OwnerFSFreeze)
	ev.GuestThawed("vm1", 2*time.Second)
	ev.SnapshotDeleted(DeleteEvent{Domain: "vm1", Names: []string{"s1"}, OpID: "op3", Merged: true, Result: ResultSuccess})
	ev.FreezeDeadlineExceeded("vm1")
	ev.RollbackFinished(true)
	ev.OperationRecovered("thawed")
	ev.OperationResolved("vm1", "op4", "succeeded")
	d.OperationStateChanged("op5", "snapshot-create", "vm1", "running")
	d.domainsChanged()

	wantSink := []string{
		"inflight 1", "snapshot s1 success", "snapshot s2 rolled_back", "frozen vm1 fsfreeze", "thawed vm1 2s",
		"deleted [s1] success", "deadline vm1", "rollback true", "recovered thawed", "resolved op4 succeeded",
		"domains 0/0",
	}
	if got := sink.all(); strings.Join(got, "\n") != strings.Join(wantSink, "\n") {
		t.Errorf("the sink heard:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantSink, "\n"))
	}
	got := logged(sub)
	wantTypes := []string{
		"1 snapshot-created vm1 op1", "2 snapshot-failed vm1 op2", "3 guest-frozen vm1 ", "4 guest-thawed vm1 ",
		"5 snapshot-deleted vm1 op3", "6 operation-state vm1 op4", "7 operation-state vm1 op5",
	}
	if len(got) != len(wantTypes) {
		t.Fatalf("logged:\n%s\nwant %d events", strings.Join(got, "\n"), len(wantTypes))
	}
	for i, w := range wantTypes {
		if !strings.HasPrefix(got[i], w+" ") {
			t.Errorf("event %d: %s, want %s ...", i, got[i], w)
		}
	}
	if !strings.Contains(got[5], "{Kind: State:succeeded}") || !strings.Contains(got[6], "{Kind:snapshot-create State:running}") {
		t.Errorf("operation states: %s; %s", got[5], got[6])
	}
	if !strings.Contains(got[3], "FrozenFor:2s") || !strings.Contains(got[2], "Owner:fsfreeze") {
		t.Errorf("freeze events: %s; %s", got[2], got[3])
	}
}

// TestOperationResolvedKind: an operation the engine resolves is named
// with its journal's kind.
func TestOperationResolvedKind(t *testing.T) {
	d := openForEvents(t, nil, 0)
	if err := d.store.SaveOp(&OpRecord{ID: "op-j", Domain: "vm1", Kind: KindSnapshot, Started: time.Now()}); err != nil {
		t.Fatal(err)
	}
	sub := d.SubscribeEvents(EventOptions{Buffer: 10})
	defer sub.Close()
	d.cfg.Events.OperationResolved("vm1", "op-j", "failed")
	got := logged(sub)
	if len(got) != 1 || !strings.Contains(got[0], "{Kind:snapshot State:failed}") {
		t.Errorf("logged %q", got)
	}
}

// TestMergeProgressThrottled: a merge read every few milliseconds gives
// at most 4 events a second, the first and the completed copy always,
// and nothing while the total is unknown or for a reading that says
// nothing new.
func TestMergeProgressThrottled(t *testing.T) {
	sink := &sinkCalls{}
	d := openForEvents(t, sink, 0)
	sub := d.SubscribeEvents(EventOptions{Filter: eventlog.Filter{Types: []string{EventMergeProgress}}, Buffer: 1000})
	defer sub.Close()
	ev := d.cfg.Events
	ev.MergeProgress("vm1", "op1", 0, 0) // jobs not started
	start := time.Now()
	var done int64
	for time.Since(start) < 600*time.Millisecond {
		done += 1000
		ev.MergeProgress("vm1", "op1", done, 1<<30)
		ev.MergeProgress("vm1", "op2", done, 1<<30) // another operation: its own pace
		time.Sleep(2 * time.Millisecond)
	}
	ev.MergeProgress("vm1", "op1", 1<<30, 1<<30)
	ev.MergeProgress("vm1", "op1", 1<<30, 1<<30) // nothing new
	var op1, op2 []string
	for _, l := range logged(sub) {
		switch {
		case strings.Contains(l, " op1 "):
			op1 = append(op1, l)
		case strings.Contains(l, " op2 "):
			op2 = append(op2, l)
		}
	}
	// 600 ms: the first, 2 more at 250 and 500 ms, and the completion.
	if len(op1) < 3 || len(op1) > 5 {
		t.Errorf("op1 has %d events, want 3 to 5:\n%s", len(op1), strings.Join(op1, "\n"))
	}
	if len(op1) > 0 && !strings.Contains(op1[0], "{Done:1000 Total:1073741824}") {
		t.Errorf("the first event: %s", op1[0])
	}
	if last := op1[len(op1)-1]; !strings.Contains(last, "{Done:1073741824 Total:1073741824}") {
		t.Errorf("the last event is not the completed copy: %s", last)
	}
	if len(op2) < 2 || len(op2) > 4 {
		t.Errorf("op2 has %d events, want 2 to 4", len(op2))
	}
	sinkProgress := 0
	for _, c := range sink.all() {
		if strings.HasPrefix(c, "progress ") {
			sinkProgress++
		}
	}
	if sinkProgress != len(op1)+len(op2) {
		t.Errorf("the sink heard %d merge-progress, the log has %d", sinkProgress, len(op1)+len(op2))
	}
	// The delete's end forgets the operation: a new one with the same
	// id starts over.
	ev.SnapshotDeleted(DeleteEvent{Domain: "vm1", OpID: "op1", Result: ResultSuccess})
	ev.MergeProgress("vm1", "op1", 5, 10)
	if got := logged(sub); len(got) != 1 || !strings.Contains(got[0], "{Done:5 Total:10}") {
		t.Errorf("after the delete's end: %q", got)
	}
}

// TestDomainConnectionEvents: attach, QEMU going away, coming back,
// detach: one event per change, in order.
func TestDomainConnectionEvents(t *testing.T) {
	d, err := Open(Config{StateDir: t.TempDir(), ReconnectMin: 10 * time.Millisecond, ReconnectMax: 20 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	sub := d.SubscribeEvents(EventOptions{Buffer: 100})
	defer sub.Close()
	next := func(want string) {
		t.Helper()
		select {
		case e := <-sub.C():
			if got := e.Type + " " + e.Domain; got != want {
				t.Fatalf("event %s (%+v), want %s", got, e.Data, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no %s event", want)
		}
	}
	vm := qemutest.Start(t, qemutest.Options{Backend: qemutest.Fake, Disks: 1, Style: qemutest.Blockdev})
	ctx := testCtx(t)
	if _, err := d.AttachDomain(ctx, DomainConfig{Name: "vm1", QMP: vm.QMP}); err != nil {
		t.Fatal(err)
	}
	next("domain-connected vm1")
	vm.Kill()
	next("domain-disconnected vm1")
	if err := d.DetachDomain(ctx, "vm1"); err != nil {
		t.Fatal(err)
	}
	vm2 := qemutest.Start(t, qemutest.Options{Backend: qemutest.Fake, Disks: 1, Style: qemutest.Blockdev})
	if _, err := d.AttachDomain(ctx, DomainConfig{Name: "vm2", QMP: vm2.QMP}); err != nil {
		t.Fatal(err)
	}
	next("domain-connected vm2") // vm1's detach, disconnected already, said nothing
	if err := d.DetachDomain(ctx, "vm2"); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-sub.C():
		if e.Type != EventDomainDisconnected || e.Data.(DomainStateEvent).Reason != "detached" {
			t.Errorf("after detaching vm2: %s %+v", e.Type, e.Data)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no event for detaching a connected domain")
	}
	select {
	case e := <-sub.C():
		t.Errorf("extra event %s %s", e.Type, e.Domain)
	default:
	}
}

// TestEventRingConfig: the ring keeps event_ring events, 10 000 unless
// set; a negative size is refused.
func TestEventRingConfig(t *testing.T) {
	c := Config{StateDir: "/x"}
	if err := c.Validate(); err != nil || c.EventRing != 10000 {
		t.Errorf("default ring: %d, %v", c.EventRing, err)
	}
	c = Config{StateDir: "/x", EventRing: -1}
	if err := c.Validate(); err == nil {
		t.Error("a negative ring size is accepted")
	}
	d := openForEvents(t, nil, 3)
	for i := range 5 {
		d.OperationStateChanged(fmt.Sprint("op", i), "fsfreeze", "vm1", "running")
	}
	sub := d.SubscribeEvents(EventOptions{Replay: true, Buffer: 1})
	defer sub.Close()
	if len(sub.Replay) != 3 || sub.Replay[0].Seq != 3 || sub.Gap == nil || sub.Gap.Resume != 3 {
		t.Errorf("ring of 3 after 5 events: replay %d from %d, gap %+v", len(sub.Replay), sub.Replay[0].Seq, sub.Gap)
	}
}
