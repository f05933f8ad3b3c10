package server

import (
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/internal/opid"
)

// DefaultOpRetention is how long finished operations stay readable.
const DefaultOpRetention = 2 * time.Hour

// opRegistry keeps the outcome of recent operations in memory. It is
// where an id is checked against the others in memory; the driver checks
// a snapshot's id against its journal.
type opRegistry struct {
	retention time.Duration
	// onState, if set, hears each operation's state as it changes (the
	// driver's operation-state events); it must not wait.
	onState func(id, kind, domain, state string)

	mu  sync.Mutex
	ops map[string]*api.Operation
}

func newOpRegistry(retention time.Duration) *opRegistry {
	if retention <= 0 {
		retention = DefaultOpRetention
	}
	return &opRegistry{retention: retention, ops: map[string]*api.Operation{}}
}

// start registers a running operation under id, or a new id if empty.
func (r *opRegistry) start(id, kind, domain string) (string, error) {
	if id == "" {
		id = opid.New()
	} else if err := opid.Check(id); err != nil {
		return "", fmt.Errorf("%w: %w", errBadRequest, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.prune()
	if _, ok := r.ops[id]; ok {
		return "", fmt.Errorf("%w: operation id %q is in use", errBadRequest, id)
	}
	r.ops[id] = &api.Operation{ID: id, Kind: kind, Domain: domain, State: api.OpRunning, Started: time.Now().UTC()}
	r.stateChanged(r.ops[id])
	return id, nil
}

// finish records the outcome.
func (r *opRegistry) finish(id string, result any, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	op, ok := r.ops[id]
	if !ok {
		return
	}
	op.Ended = time.Now().UTC()
	defer r.stateChanged(op) // under mu: an operation's states in order
	if err != nil {
		op.State = api.OpFailed
		_, info := errorInfo(err)
		op.Error = &info
		return
	}
	op.State = api.OpSucceeded
	if result != nil {
		op.Result, _ = json.Marshal(result)
	}
}

func (r *opRegistry) stateChanged(op *api.Operation) {
	if r.onState != nil {
		r.onState(op.ID, op.Kind, op.Domain, op.State)
	}
}

func (r *opRegistry) get(id string) (api.Operation, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	op, ok := r.ops[id]
	if !ok {
		return api.Operation{}, false
	}
	return *op, true
}

func (r *opRegistry) prune() {
	cutoff := time.Now().Add(-r.retention)
	for id, op := range r.ops {
		if op.State != api.OpRunning && op.Ended.Before(cutoff) {
			delete(r.ops, id)
		}
	}
}
