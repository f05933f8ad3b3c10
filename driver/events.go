package driver

import (
	"sync"
	"time"
)

// Snapshot results, as metrics and signals report them.
const (
	ResultSuccess    = "success"
	ResultFailure    = "failure"     // refused or failed before any disk switched
	ResultRolledBack = "rolled_back" // switched disks were committed back
	ResultPartial    = "partial"     // a disk is left on its overlay
)

// SnapshotEvent describes a finished snapshot request that got past
// validation.
type SnapshotEvent struct {
	Domain   string
	Name     string
	OpID     string
	Mode     string // atomic or sequential
	Result   string
	Duration time.Duration
	// Quiesced and Freeze describe the freeze, if there was one.
	Quiesced bool
	Freeze   time.Duration
	Err      error
}

// DeleteEvent describes a finished snapshot delete that got past
// validation: a merge of overlays, or metadata only.
type DeleteEvent struct {
	Domain string
	// Names are the snapshots deleted, deepest first.
	Names []string
	OpID  string
	// Merged says whether overlays were merged (not metadata only).
	Merged   bool
	Result   string // ResultSuccess, ResultFailure, ResultCancelled or ResultPartial
	Duration time.Duration
	// MergedBytes is what the commit jobs copied.
	MergedBytes int64
	Err         error
}

// ResultCancelled is a delete cancelled before its point of no return:
// nothing changed.
const ResultCancelled = "cancelled"

// Events receives what the driver does, for metrics and D-Bus signals.
// Calls are synchronous and must return quickly. The driver's event log
// (eventlog.go) is the one the engine calls: it records each event for
// the API's stream and passes it on to Config.Events.
type Events interface {
	SnapshotFinished(SnapshotEvent)
	SnapshotDeleted(DeleteEvent)
	// MergeProgress reports a delete's block-commit jobs, all rounds so
	// far added up, at every reading; the log passes on at most 4 a
	// second per operation.
	MergeProgress(domain, opID string, done, total int64)
	GuestFrozen(domain, owner string)
	GuestThawed(domain string, frozenFor time.Duration)
	FreezeDeadlineExceeded(domain string)
	RollbackFinished(ok bool)
	OperationRecovered(action string) // thawed, rolled_back or cleaned
	// OperationResolved: recovery completed an operation whose caller
	// got no definitive answer (outcome-unknown, or the daemon stopped
	// under it); state is OpSucceeded or OpFailed, and the journal entry
	// of opID has the outcome. An operation whose waiting caller got
	// the outcome is not reported again.
	OperationResolved(domain, opID, state string)
	DomainsChanged(connected, disconnected int)
	OperationsInFlight(delta int)
}

// NopEvents ignores everything; embed it to implement only some events.
type NopEvents struct{}

// SnapshotFinished does nothing.
func (NopEvents) SnapshotFinished(SnapshotEvent) {}

// SnapshotDeleted does nothing.
func (NopEvents) SnapshotDeleted(DeleteEvent) {}

// MergeProgress does nothing.
func (NopEvents) MergeProgress(string, string, int64, int64) {}

// GuestFrozen does nothing.
func (NopEvents) GuestFrozen(string, string) {}

// GuestThawed does nothing.
func (NopEvents) GuestThawed(string, time.Duration) {}

// FreezeDeadlineExceeded does nothing.
func (NopEvents) FreezeDeadlineExceeded(string) {}

// RollbackFinished does nothing.
func (NopEvents) RollbackFinished(bool) {}

// OperationRecovered does nothing.
func (NopEvents) OperationRecovered(string) {}

// OperationResolved does nothing.
func (NopEvents) OperationResolved(string, string, string) {}

// DomainsChanged does nothing.
func (NopEvents) DomainsChanged(int, int) {}

// OperationsInFlight does nothing.
func (NopEvents) OperationsInFlight(int) {}

var _ Events = NopEvents{}

// MultiEvents sends every event to each of its members.
type MultiEvents []Events

// SnapshotFinished implements Events.
func (m MultiEvents) SnapshotFinished(e SnapshotEvent) {
	for _, x := range m {
		x.SnapshotFinished(e)
	}
}

// SnapshotDeleted implements Events.
func (m MultiEvents) SnapshotDeleted(e DeleteEvent) {
	for _, x := range m {
		x.SnapshotDeleted(e)
	}
}

// MergeProgress implements Events.
func (m MultiEvents) MergeProgress(domain, opID string, done, total int64) {
	for _, x := range m {
		x.MergeProgress(domain, opID, done, total)
	}
}

// GuestFrozen implements Events.
func (m MultiEvents) GuestFrozen(domain, owner string) {
	for _, x := range m {
		x.GuestFrozen(domain, owner)
	}
}

// GuestThawed implements Events.
func (m MultiEvents) GuestThawed(domain string, d time.Duration) {
	for _, x := range m {
		x.GuestThawed(domain, d)
	}
}

// FreezeDeadlineExceeded implements Events.
func (m MultiEvents) FreezeDeadlineExceeded(domain string) {
	for _, x := range m {
		x.FreezeDeadlineExceeded(domain)
	}
}

// RollbackFinished implements Events.
func (m MultiEvents) RollbackFinished(ok bool) {
	for _, x := range m {
		x.RollbackFinished(ok)
	}
}

// OperationRecovered implements Events.
func (m MultiEvents) OperationRecovered(action string) {
	for _, x := range m {
		x.OperationRecovered(action)
	}
}

// OperationResolved implements Events.
func (m MultiEvents) OperationResolved(domain, opID, state string) {
	for _, x := range m {
		x.OperationResolved(domain, opID, state)
	}
}

// DomainsChanged implements Events.
func (m MultiEvents) DomainsChanged(connected, disconnected int) {
	for _, x := range m {
		x.DomainsChanged(connected, disconnected)
	}
}

// OperationsInFlight implements Events.
func (m MultiEvents) OperationsInFlight(delta int) {
	for _, x := range m {
		x.OperationsInFlight(delta)
	}
}

// Hub is a MultiEvents that members can join while the driver runs,
// such as a D-Bus service that needs the driver before it can listen.
type Hub struct {
	mu      sync.RWMutex
	members MultiEvents
}

var _ Events = (*Hub)(nil)

// Add makes e hear every event from now on.
func (h *Hub) Add(e Events) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.members = append(h.members, e)
}

func (h *Hub) all() MultiEvents {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.members
}

// SnapshotFinished implements Events.
func (h *Hub) SnapshotFinished(e SnapshotEvent) { h.all().SnapshotFinished(e) }

// SnapshotDeleted implements Events.
func (h *Hub) SnapshotDeleted(e DeleteEvent) { h.all().SnapshotDeleted(e) }

// MergeProgress implements Events.
func (h *Hub) MergeProgress(domain, opID string, done, total int64) {
	h.all().MergeProgress(domain, opID, done, total)
}

// GuestFrozen implements Events.
func (h *Hub) GuestFrozen(domain, owner string) { h.all().GuestFrozen(domain, owner) }

// GuestThawed implements Events.
func (h *Hub) GuestThawed(domain string, d time.Duration) { h.all().GuestThawed(domain, d) }

// FreezeDeadlineExceeded implements Events.
func (h *Hub) FreezeDeadlineExceeded(domain string) { h.all().FreezeDeadlineExceeded(domain) }

// RollbackFinished implements Events.
func (h *Hub) RollbackFinished(ok bool) { h.all().RollbackFinished(ok) }

// OperationRecovered implements Events.
func (h *Hub) OperationRecovered(action string) { h.all().OperationRecovered(action) }

// OperationResolved implements Events.
func (h *Hub) OperationResolved(domain, opID, state string) {
	h.all().OperationResolved(domain, opID, state)
}

// DomainsChanged implements Events.
func (h *Hub) DomainsChanged(connected, disconnected int) {
	h.all().DomainsChanged(connected, disconnected)
}

// OperationsInFlight implements Events.
func (h *Hub) OperationsInFlight(delta int) { h.all().OperationsInFlight(delta) }
