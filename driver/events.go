package driver

import "time"

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

// Events receives what the driver does, for metrics and D-Bus signals.
// Calls are synchronous and must return quickly.
type Events interface {
	SnapshotFinished(SnapshotEvent)
	GuestFrozen(domain, owner string)
	GuestThawed(domain string, frozenFor time.Duration)
	FreezeDeadlineExceeded(domain string)
	RollbackFinished(ok bool)
	OperationRecovered(action string) // thawed, rolled_back or cleaned
	DomainsChanged(connected, disconnected int)
	OperationsInFlight(delta int)
}

// NopEvents ignores everything; embed it to implement only some events.
type NopEvents struct{}

func (NopEvents) SnapshotFinished(SnapshotEvent)    {}
func (NopEvents) GuestFrozen(string, string)        {}
func (NopEvents) GuestThawed(string, time.Duration) {}
func (NopEvents) FreezeDeadlineExceeded(string)     {}
func (NopEvents) RollbackFinished(bool)             {}
func (NopEvents) OperationRecovered(string)         {}
func (NopEvents) DomainsChanged(int, int)           {}
func (NopEvents) OperationsInFlight(int)            {}

var _ Events = NopEvents{}

// MultiEvents sends every event to each of its members.
type MultiEvents []Events

func (m MultiEvents) SnapshotFinished(e SnapshotEvent) {
	for _, x := range m {
		x.SnapshotFinished(e)
	}
}

func (m MultiEvents) GuestFrozen(domain, owner string) {
	for _, x := range m {
		x.GuestFrozen(domain, owner)
	}
}

func (m MultiEvents) GuestThawed(domain string, d time.Duration) {
	for _, x := range m {
		x.GuestThawed(domain, d)
	}
}

func (m MultiEvents) FreezeDeadlineExceeded(domain string) {
	for _, x := range m {
		x.FreezeDeadlineExceeded(domain)
	}
}

func (m MultiEvents) RollbackFinished(ok bool) {
	for _, x := range m {
		x.RollbackFinished(ok)
	}
}

func (m MultiEvents) OperationRecovered(action string) {
	for _, x := range m {
		x.OperationRecovered(action)
	}
}

func (m MultiEvents) DomainsChanged(connected, disconnected int) {
	for _, x := range m {
		x.DomainsChanged(connected, disconnected)
	}
}

func (m MultiEvents) OperationsInFlight(delta int) {
	for _, x := range m {
		x.OperationsInFlight(delta)
	}
}
