package driver

import (
	"sync"
	"time"

	"github.com/qsnapd/qsnapd/internal/eventlog"
)

// Event types: what the event log records, named as the API's event
// stream names them.
const (
	EventSnapshotCreated    = "snapshot-created"    // Data: SnapshotEvent
	EventSnapshotFailed     = "snapshot-failed"     // Data: SnapshotEvent
	EventSnapshotDeleted    = "snapshot-deleted"    // Data: DeleteEvent
	EventMergeProgress      = "merge-progress"      // Data: MergeProgressEvent
	EventGuestFrozen        = "guest-frozen"        // Data: GuestFrozenEvent
	EventGuestThawed        = "guest-thawed"        // Data: GuestThawedEvent
	EventDomainConnected    = "domain-connected"    // Data: DomainStateEvent
	EventDomainDisconnected = "domain-disconnected" // Data: DomainStateEvent
	EventOperationState     = "operation-state"     // Data: OperationStateEvent
)

// EventTypes are every type the log records.
var EventTypes = []string{
	EventSnapshotCreated, EventSnapshotFailed, EventSnapshotDeleted, EventMergeProgress,
	EventGuestFrozen, EventGuestThawed, EventDomainConnected, EventDomainDisconnected, EventOperationState,
}

// MergeProgressEvent is how far a delete's block-commit jobs have come,
// all rounds so far added up.
type MergeProgressEvent struct{ Done, Total int64 }

// GuestFrozenEvent says who froze a guest: OwnerSnapshot or
// OwnerFSFreeze.
type GuestFrozenEvent struct{ Owner string }

// GuestThawedEvent says how long a guest was frozen.
type GuestThawedEvent struct{ FrozenFor time.Duration }

// DomainStateEvent is a domain's QMP connection coming or going.
type DomainStateEvent struct {
	QEMUVersion string // of a connected domain
	// Reason says why a domain is disconnected: the last error, or
	// that it was detached.
	Reason string
}

// OperationStateEvent is an operation's state: running, succeeded,
// failed or unknown (the API's operation states).
type OperationStateEvent struct {
	// Kind is the operation's kind as its caller named it (the API's
	// operation kinds), or the journal's (KindSnapshot, ...).
	Kind  string
	State string
}

// mergeProgressEvery is the least time between two merge-progress
// events of one operation: at most 4 a second.
const mergeProgressEvery = 250 * time.Millisecond

// eventLog is the one source of the driver's events: each goes into the
// ring of the run, numbered, for the API's stream, and to the sink (the
// metrics, D-Bus signals and the logind inhibitor), synchronously. It
// sits where Config.Events was, so the engine calls it as it called
// the sink. Neither the ring nor its subscribers ever make the engine
// wait; only the sink can, as it always could.
type eventLog struct {
	log  *eventlog.Log
	sink Events
	// kindOf is the journal's kind of an operation, "" if unknown.
	kindOf func(opID string) string

	mu       sync.Mutex
	progress map[string]progressMark // by operation: the last merge-progress sent
}

// progressMark is a merge-progress event sent.
type progressMark struct {
	at   time.Time
	done int64
}

var _ Events = (*eventLog)(nil)

func newEventLog(size int, run string, sink Events) *eventLog {
	return &eventLog{log: eventlog.New(size, run), sink: sink, kindOf: func(string) string { return "" },
		progress: map[string]progressMark{}}
}

func (l *eventLog) add(typ, domain, op string, data any) {
	l.log.Append(eventlog.Event{Type: typ, Domain: domain, Operation: op, Data: data})
}

// SnapshotFinished records snapshot-created or snapshot-failed.
func (l *eventLog) SnapshotFinished(e SnapshotEvent) {
	typ := EventSnapshotFailed
	if e.Result == ResultSuccess {
		typ = EventSnapshotCreated
	}
	l.add(typ, e.Domain, e.OpID, e)
	l.sink.SnapshotFinished(e)
}

// SnapshotDeleted records snapshot-deleted, and ends the operation's
// merge-progress.
func (l *eventLog) SnapshotDeleted(e DeleteEvent) {
	l.mu.Lock()
	delete(l.progress, e.OpID)
	l.mu.Unlock()
	l.add(EventSnapshotDeleted, e.Domain, e.OpID, e)
	l.sink.SnapshotDeleted(e)
}

// MergeProgress records merge-progress at most every
// mergeProgressEvery per operation, and when the copy completes; a
// reading that says nothing new, or before the jobs know their total,
// is dropped.
func (l *eventLog) MergeProgress(domain, opID string, done, total int64) {
	if total <= 0 {
		return
	}
	now := time.Now()
	l.mu.Lock()
	last, seen := l.progress[opID]
	send := !seen || done != last.done && (now.Sub(last.at) >= mergeProgressEvery || done == total)
	if send {
		l.progress[opID] = progressMark{at: now, done: done}
	}
	l.mu.Unlock()
	if !send {
		return
	}
	l.add(EventMergeProgress, domain, opID, MergeProgressEvent{Done: done, Total: total})
	l.sink.MergeProgress(domain, opID, done, total)
}

// GuestFrozen records guest-frozen.
func (l *eventLog) GuestFrozen(domain, owner string) {
	l.add(EventGuestFrozen, domain, "", GuestFrozenEvent{Owner: owner})
	l.sink.GuestFrozen(domain, owner)
}

// GuestThawed records guest-thawed.
func (l *eventLog) GuestThawed(domain string, frozenFor time.Duration) {
	l.add(EventGuestThawed, domain, "", GuestThawedEvent{FrozenFor: frozenFor})
	l.sink.GuestThawed(domain, frozenFor)
}

// OperationResolved records operation-state for an operation the
// engine resolved on its own, such as one recovery completed.
func (l *eventLog) OperationResolved(domain, opID, state string) {
	l.operationState(domain, opID, l.kindOf(opID), state)
	l.sink.OperationResolved(domain, opID, state)
}

func (l *eventLog) operationState(domain, opID, kind, state string) {
	l.add(EventOperationState, domain, opID, OperationStateEvent{Kind: kind, State: state})
}

// domainState records domain-connected or domain-disconnected.
func (l *eventLog) domainState(domain string, connected bool, e DomainStateEvent) {
	typ := EventDomainDisconnected
	if connected {
		typ = EventDomainConnected
	}
	l.add(typ, domain, "", e)
}

// The events that only the sink hears: counts and outcomes for the
// metrics, with nothing to tell a client that the events above do not.

// FreezeDeadlineExceeded implements Events.
func (l *eventLog) FreezeDeadlineExceeded(domain string) { l.sink.FreezeDeadlineExceeded(domain) }

// RollbackFinished implements Events.
func (l *eventLog) RollbackFinished(ok bool) { l.sink.RollbackFinished(ok) }

// OperationRecovered implements Events.
func (l *eventLog) OperationRecovered(action string) { l.sink.OperationRecovered(action) }

// DomainsChanged implements Events.
func (l *eventLog) DomainsChanged(connected, disconnected int) {
	l.sink.DomainsChanged(connected, disconnected)
}

// OperationsInFlight implements Events.
func (l *eventLog) OperationsInFlight(delta int) { l.sink.OperationsInFlight(delta) }

// EventOptions say which events a subscriber wants; see
// eventlog.Options.
type EventOptions = eventlog.Options

// SubscribeEvents subscribes to the driver's events: those still in the
// ring after o.Since first if o.Replay, then every later one. The
// subscriber reads them from the subscription's channel and closes it
// when done; one that lets its buffer fill is dropped.
func (d *Driver) SubscribeEvents(o EventOptions) *eventlog.Subscription {
	return d.events.log.Subscribe(o)
}

// EventRun names this run of the driver: the events' sequence numbers
// start at 1 in each.
func (d *Driver) EventRun() string { return d.events.log.Run() }

// OperationStateChanged records an operation-state event: the API's
// operation registry calls it when an operation starts (running) and
// when it ends (succeeded, failed or unknown). kind is the API's name
// of the operation's kind. It does not wait.
func (d *Driver) OperationStateChanged(id, kind, domain, state string) {
	d.events.operationState(domain, id, kind, state)
}
