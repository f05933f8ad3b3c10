// Package eventlog keeps the events of one daemon run in a bounded ring,
// numbered from 1, and hands them to subscribers without ever making
// the producer wait.
//
// A subscriber asks for the events after a sequence number it has seen:
// it gets those still in the ring (its replay) and then every later one
// (its channel), with no gap and no duplicate between the two, since
// both are taken under the lock that numbers events. Its channel is
// bounded: a subscriber that falls behind by a whole buffer is dropped,
// and told so when it reads to the end of its channel.
package eventlog

import (
	"slices"
	"sync"
	"time"
)

// Event is one thing the daemon did.
type Event struct {
	// Seq numbers the events of a run, from 1, without gaps.
	Seq  uint64
	Time time.Time
	// Type names what happened; Domain and Operation, which domain and
	// operation it concerns, if any.
	Type      string
	Domain    string
	Operation string
	// Data holds the details of the type, as the producer gave them.
	Data any
}

// Filter selects events by domain and by type; an empty list selects
// any.
type Filter struct {
	Domains []string
	Types   []string
}

// Match says whether e passes the filter. An event of no domain passes
// no domain filter.
func (f Filter) Match(e *Event) bool {
	if len(f.Domains) > 0 && !slices.Contains(f.Domains, e.Domain) {
		return false
	}
	return len(f.Types) == 0 || slices.Contains(f.Types, e.Type)
}

// DefaultSize is the ring's size unless the daemon says otherwise.
const DefaultSize = 10000

// Log is the ring of one run's events and their subscribers.
type Log struct {
	run string

	mu     sync.Mutex
	ring   []Event // len(ring) is the size; the n newest are kept
	head   int     // index of the oldest
	n      int
	last   uint64 // the newest's seq; 0 before the first
	subs   map[*Subscription]struct{}
	closed bool
}

// New returns a log keeping the last size events (DefaultSize if size
// is not positive) of the run named run.
func New(size int, run string) *Log {
	if size <= 0 {
		size = DefaultSize
	}
	return &Log{run: run, ring: make([]Event, size), subs: map[*Subscription]struct{}{}}
}

// Run names the run: sequence numbers start again at 1 in each.
func (l *Log) Run() string { return l.run }

// Append numbers e, stamps it with the time if it has none, keeps it
// and hands it to every subscriber whose filter it passes, and returns
// it as kept. It never waits for a subscriber: one whose buffer is full
// is dropped.
func (l *Log) Append(e Event) Event {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.last++
	e.Seq = l.last
	if l.n < len(l.ring) {
		l.ring[(l.head+l.n)%len(l.ring)] = e
		l.n++
	} else {
		l.ring[l.head] = e
		l.head = (l.head + 1) % len(l.ring)
	}
	for s := range l.subs {
		if !s.filter.Match(&e) {
			continue
		}
		if len(s.c) == cap(s.c) {
			// Only Append sends, under mu: the send below never blocks.
			s.overflow, s.resume = true, e.Seq-1
			l.endLocked(s)
			continue
		}
		s.c <- e
	}
	return e
}

// Last is the newest event's sequence number, 0 before the first.
func (l *Log) Last() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last
}

// Options say what a subscriber wants.
type Options struct {
	Filter Filter
	// Replay asks for the kept events after Since first. Without it
	// the subscription starts with the next event.
	Replay bool
	Since  uint64
	// Run, if set, is the run Since was seen in: from another run, every
	// kept event is new to the subscriber, and some it never saw are
	// lost.
	Run string
	// Buffer bounds the events waiting in the channel; at least 1.
	Buffer int
}

// Gap says that events a subscriber asked for are no longer kept: they
// left the ring, or belong to another run. The subscription starts at
// Resume.
type Gap struct {
	Since  uint64
	Resume uint64
	// OtherRun says Since was not from this run (its Run differed, or
	// Since is past this run's last event).
	OtherRun bool
}

// Subscription is one subscriber's view of the log.
type Subscription struct {
	// Replay are the kept events it asked for, oldest first, filtered;
	// every event in the channel comes after them.
	Replay []Event
	// Gap, if set, says the replay does not start where asked.
	Gap *Gap

	log    *Log
	filter Filter
	c      chan Event
	done   chan struct{}
	// Under log.mu:
	ended    bool
	overflow bool
	resume   uint64
}

// Subscribe adds a subscriber.
func (l *Log) Subscribe(o Options) *Subscription {
	s := &Subscription{log: l, filter: o.Filter, c: make(chan Event, max(o.Buffer, 1)), done: make(chan struct{})}
	l.mu.Lock()
	defer l.mu.Unlock()
	if o.Replay {
		oldest := l.last + 1 // of the kept ones
		if l.n > 0 {
			oldest = l.ring[l.head].Seq
		}
		since := o.Since
		switch {
		case o.Run != "" && o.Run != l.run || since > l.last:
			s.Gap = &Gap{Since: o.Since, Resume: oldest, OtherRun: true}
			since = 0
		case since+1 < oldest:
			s.Gap = &Gap{Since: o.Since, Resume: oldest}
		}
		for i := range l.n {
			e := &l.ring[(l.head+i)%len(l.ring)]
			if e.Seq > since && s.filter.Match(e) {
				s.Replay = append(s.Replay, *e)
			}
		}
	}
	if l.closed {
		l.endLocked(s)
		return s
	}
	l.subs[s] = struct{}{}
	return s
}

// C delivers the events after the replay. It is closed when the
// subscription ends: Close, the log's Close, or an overflow.
func (s *Subscription) C() <-chan Event { return s.c }

// Done is closed when the subscription ends, as C is, but before its
// events are read: a consumer blocked elsewhere can learn of it.
func (s *Subscription) Done() <-chan struct{} { return s.done }

// Overflowed says, once C is closed, whether the subscription ended
// because its buffer was full, and the sequence number up to which it
// got every event it asked for: resubscribing with that Since misses
// nothing still kept.
func (s *Subscription) Overflowed() (bool, uint64) {
	s.log.mu.Lock()
	defer s.log.mu.Unlock()
	return s.overflow, s.resume
}

// Close ends the subscription; it may be called more than once.
func (s *Subscription) Close() {
	s.log.mu.Lock()
	defer s.log.mu.Unlock()
	s.log.endLocked(s)
}

func (l *Log) endLocked(s *Subscription) {
	if s.ended {
		return
	}
	s.ended = true
	delete(l.subs, s)
	close(s.c)
	close(s.done)
}

// Subscribers counts the subscriptions that have not ended.
func (l *Log) Subscribers() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.subs)
}

// Close ends every subscription; later ones start ended, with their
// replay. Append still keeps events.
func (l *Log) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	for s := range l.subs {
		l.endLocked(s)
	}
}
