package eventlog

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// appendN appends n events of type typ on domain dom.
func appendN(l *Log, n int, dom, typ string) {
	for range n {
		l.Append(Event{Type: typ, Domain: dom})
	}
}

// seqs are the sequence numbers of events.
func seqs(evs []Event) []uint64 {
	out := make([]uint64, len(evs))
	for i, e := range evs {
		out[i] = e.Seq
	}
	return out
}

// drain reads what is in a subscription's channel now, and whether it
// is closed.
func drain(s *Subscription) (evs []Event, closed bool) {
	for {
		select {
		case e, ok := <-s.C():
			if !ok {
				return evs, true
			}
			evs = append(evs, e)
		default:
			return evs, false
		}
	}
}

func span(from, to uint64) []uint64 {
	var out []uint64
	for s := from; s <= to; s++ {
		out = append(out, s)
	}
	return out
}

func TestSequenceAndRing(t *testing.T) {
	l := New(5, "run-1")
	if l.Last() != 0 {
		t.Fatalf("Last of an empty log: %d", l.Last())
	}
	before := time.Now()
	for i := 1; i <= 8; i++ {
		e := l.Append(Event{Type: "t"})
		if e.Seq != uint64(i) || e.Time.Before(before) {
			t.Fatalf("append %d: seq %d, time %v", i, e.Seq, e.Time)
		}
	}
	given := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	if e := l.Append(Event{Type: "t", Time: given}); !e.Time.Equal(given) {
		t.Errorf("a given time was replaced: %v", e.Time)
	}
	// Size 5: seqs 5 to 9 are kept.
	s := l.Subscribe(Options{Replay: true, Since: 4, Buffer: 1})
	defer s.Close()
	if got := fmt.Sprint(seqs(s.Replay)); got != fmt.Sprint(span(5, 9)) || s.Gap != nil {
		t.Errorf("replay after 4: %v, gap %+v; want 5..9, no gap", got, s.Gap)
	}
}

func TestReplayAndGaps(t *testing.T) {
	l := New(10, "run-1")
	appendN(l, 25, "vm1", "t") // 16..25 kept
	for _, tc := range []struct {
		name   string
		opts   Options
		want   []uint64
		gap    *Gap
		filter Filter
	}{
		{"no replay", Options{}, nil, nil, Filter{}},
		{"since the last", Options{Replay: true, Since: 25}, nil, nil, Filter{}},
		{"since in the ring", Options{Replay: true, Since: 20}, span(21, 25), nil, Filter{}},
		{"since just before the oldest", Options{Replay: true, Since: 15}, span(16, 25), nil, Filter{}},
		{"since left the ring", Options{Replay: true, Since: 14}, span(16, 25), &Gap{Since: 14, Resume: 16}, Filter{}},
		{"since 0 after evictions", Options{Replay: true, Since: 0}, span(16, 25), &Gap{Since: 0, Resume: 16}, Filter{}},
		{"since past the last: another run", Options{Replay: true, Since: 99}, span(16, 25),
			&Gap{Since: 99, Resume: 16, OtherRun: true}, Filter{}},
		{"another run named", Options{Replay: true, Since: 20, Run: "run-0"}, span(16, 25),
			&Gap{Since: 20, Resume: 16, OtherRun: true}, Filter{}},
		{"this run named", Options{Replay: true, Since: 20, Run: "run-1"}, span(21, 25), nil, Filter{}},
		{"filtered out", Options{Replay: true, Since: 20}, nil, nil, Filter{Domains: []string{"vm2"}}},
	} {
		tc.opts.Filter, tc.opts.Buffer = tc.filter, 4
		s := l.Subscribe(tc.opts)
		if got := fmt.Sprint(seqs(s.Replay)); got != fmt.Sprint(tc.want) {
			t.Errorf("%s: replay %v, want %v", tc.name, got, tc.want)
		}
		if fmt.Sprint(s.Gap) != fmt.Sprint(tc.gap) {
			t.Errorf("%s: gap %+v, want %+v", tc.name, s.Gap, tc.gap)
		}
		s.Close()
	}
	// An empty log: since 0 loses nothing; another run's since is a gap
	// resuming at 1.
	e := New(3, "r")
	if s := e.Subscribe(Options{Replay: true, Buffer: 1}); s.Gap != nil || len(s.Replay) != 0 {
		t.Errorf("empty log since 0: %+v %v", s.Gap, s.Replay)
	}
	if s := e.Subscribe(Options{Replay: true, Since: 7, Buffer: 1}); s.Gap == nil || *s.Gap != (Gap{Since: 7, Resume: 1, OtherRun: true}) {
		t.Errorf("empty log since 7: %+v", s.Gap)
	}
}

func TestFilter(t *testing.T) {
	l := New(100, "r")
	s := l.Subscribe(Options{Filter: Filter{Domains: []string{"vm1", "vm3"}, Types: []string{"a", "c"}}, Buffer: 100})
	defer s.Close()
	all := l.Subscribe(Options{Buffer: 100})
	defer all.Close()
	for _, dom := range []string{"vm1", "vm2", "vm3", ""} {
		for _, typ := range []string{"a", "b", "c"} {
			l.Append(Event{Domain: dom, Type: typ})
		}
	}
	got, _ := drain(s)
	var names []string
	for _, e := range got {
		names = append(names, e.Domain+"/"+e.Type)
	}
	if fmt.Sprint(names) != "[vm1/a vm1/c vm3/a vm3/c]" {
		t.Errorf("filtered: %v", names)
	}
	if got, _ := drain(all); len(got) != 12 {
		t.Errorf("unfiltered got %d events, want 12", len(got))
	}
}

// TestReplayThenLiveRace: while a producer appends without pause,
// subscribers that join with a replay see every event after their
// since exactly once, in order: nothing falls between the replay and
// the channel.
func TestReplayThenLiveRace(t *testing.T) {
	const total = 20000
	l := New(total, "r")
	var wg sync.WaitGroup
	wg.Go(func() { appendN(l, total, "vm1", "t") })
	errs := make(chan error, 20)
	for i := range 20 {
		wg.Go(func() {
			since := l.Last() / 2
			if i%2 == 0 {
				since = l.Last()
			}
			s := l.Subscribe(Options{Replay: true, Since: since, Buffer: total})
			defer s.Close()
			next := since + 1
			check := func(e Event) bool {
				if e.Seq != next {
					errs <- fmt.Errorf("subscriber since %d: got seq %d, want %d", since, e.Seq, next)
					return false
				}
				next++
				return true
			}
			for _, e := range s.Replay {
				if !check(e) {
					return
				}
			}
			for next <= total {
				e, ok := <-s.C()
				if !ok {
					errs <- fmt.Errorf("subscriber since %d: channel closed at %d", since, next)
					return
				}
				if !check(e) {
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestOverflow: a subscriber that does not read gets its buffer's worth
// and is dropped, with where to resume; the producer never waits, and
// the others go on.
func TestOverflow(t *testing.T) {
	l := New(100, "r")
	slow := l.Subscribe(Options{Buffer: 4})
	fast := l.Subscribe(Options{Buffer: 1000})
	defer fast.Close()
	start := time.Now()
	appendN(l, 10, "vm1", "t")
	if took := time.Since(start); took > time.Second {
		t.Errorf("appending with a stuck subscriber took %v", took)
	}
	select {
	case <-slow.Done():
	default:
		t.Fatal("the slow subscriber is not done")
	}
	got, closed := drain(slow)
	if !closed || fmt.Sprint(seqs(got)) != fmt.Sprint(span(1, 4)) {
		t.Errorf("slow subscriber: %v, closed %v; want 1..4, closed", seqs(got), closed)
	}
	if over, resume := slow.Overflowed(); !over || resume != 4 {
		t.Errorf("Overflowed() = %v, %d; want true, 4", over, resume)
	}
	if l.Subscribers() != 1 {
		t.Errorf("%d subscribers, want the fast one", l.Subscribers())
	}
	if got, closed := drain(fast); closed || len(got) != 10 {
		t.Errorf("fast subscriber: %d events, closed %v", len(got), closed)
	}
	// Resuming where it was told misses nothing kept.
	again := l.Subscribe(Options{Replay: true, Since: 4, Buffer: 4})
	defer again.Close()
	if fmt.Sprint(seqs(again.Replay)) != fmt.Sprint(span(5, 10)) || again.Gap != nil {
		t.Errorf("resumed: %v, gap %+v", seqs(again.Replay), again.Gap)
	}
	// A filter counts only what passes it toward the buffer.
	picky := l.Subscribe(Options{Filter: Filter{Domains: []string{"vm2"}}, Buffer: 2})
	defer picky.Close()
	appendN(l, 50, "vm1", "t")
	appendN(l, 2, "vm2", "t")
	if over, _ := picky.Overflowed(); over {
		t.Error("events filtered out filled the buffer")
	}
	appendN(l, 1, "vm2", "t")
	if over, resume := picky.Overflowed(); !over || resume != l.Last()-1 {
		t.Errorf("picky: Overflowed() = %v, %d; want true, %d", over, resume, l.Last()-1)
	}
}

func TestCloseEndsSubscriptions(t *testing.T) {
	l := New(10, "r")
	appendN(l, 3, "vm1", "t")
	s := l.Subscribe(Options{Buffer: 2})
	s.Close()
	s.Close() // twice is fine
	if _, closed := drain(s); !closed {
		t.Error("closed subscription's channel is open")
	}
	if over, _ := s.Overflowed(); over {
		t.Error("a closed subscription says it overflowed")
	}
	live := l.Subscribe(Options{Buffer: 2})
	l.Close()
	if _, closed := drain(live); !closed {
		t.Error("the log's Close left a channel open")
	}
	late := l.Subscribe(Options{Replay: true, Buffer: 2})
	if _, closed := drain(late); !closed || len(late.Replay) != 3 {
		t.Errorf("after Close: closed %v, replay %d; want closed, 3", closed, len(late.Replay))
	}
	if l.Append(Event{}).Seq != 4 {
		t.Error("Append after Close does not number on")
	}
	if l.Subscribers() != 0 {
		t.Errorf("%d subscribers after Close", l.Subscribers())
	}
}
