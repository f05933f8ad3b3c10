package api

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"sync"
	"time"
)

// DefaultOpRetention is how long finished operations stay readable.
const DefaultOpRetention = 2 * time.Hour

var opIDRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// opRegistry keeps the outcome of recent operations in memory.
type opRegistry struct {
	retention time.Duration

	mu  sync.Mutex
	ops map[string]*Operation
}

func newOpRegistry(retention time.Duration) *opRegistry {
	if retention <= 0 {
		retention = DefaultOpRetention
	}
	return &opRegistry{retention: retention, ops: map[string]*Operation{}}
}

// start registers a running operation under id, or a new id if empty.
func (r *opRegistry) start(id, kind, domain string) (string, error) {
	if id == "" {
		b := make([]byte, 12)
		rand.Read(b)
		id = hex.EncodeToString(b)
	} else if !opIDRE.MatchString(id) {
		return "", fmt.Errorf("%w: operation id must be 1 to 64 of [A-Za-z0-9._-]", errBadRequest)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.prune()
	if _, ok := r.ops[id]; ok {
		return "", fmt.Errorf("%w: operation id %q is in use", errBadRequest, id)
	}
	r.ops[id] = &Operation{ID: id, Kind: kind, Domain: domain, State: OpRunning, Started: time.Now().UTC()}
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
	if err != nil {
		op.State = OpFailed
		_, info := errorInfo(err)
		op.Error = &info
		return
	}
	op.State = OpSucceeded
	if result != nil {
		op.Result, _ = json.Marshal(result)
	}
}

func (r *opRegistry) get(id string) (Operation, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	op, ok := r.ops[id]
	if !ok {
		return Operation{}, false
	}
	return *op, true
}

func (r *opRegistry) prune() {
	cutoff := time.Now().Add(-r.retention)
	for id, op := range r.ops {
		if op.State != OpRunning && op.Ended.Before(cutoff) {
			delete(r.ops, id)
		}
	}
}
