package driver

import (
	"context"
	"fmt"
	"sync"
)

// Progress is how far a running operation has come.
type Progress struct {
	// DoneBytes and TotalBytes add up the operation's block jobs
	// (current-progress and total-progress); both 0 before they start.
	DoneBytes  int64 `json:"done_bytes"`
	TotalBytes int64 `json:"total_bytes"`
	// Cancellable is false once the operation passed its point of no
	// return (or never had one to cancel).
	Cancellable bool `json:"cancellable"`
}

// runningOp is an operation in flight, as front ends may watch and
// cancel it.
type runningOp struct {
	id, domain string

	mu       sync.Mutex
	progress Progress
	cancel   context.CancelCauseFunc // set while cancellable
}

// opRegistry holds the operations in flight, by id.
type opRegistry struct {
	mu  sync.Mutex
	ops map[string]*runningOp
}

// begin registers a running operation; its id must be unique among
// running ones (the journal makes it unique among all).
func (r *opRegistry) begin(id, domain string) (*runningOp, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ops == nil {
		r.ops = map[string]*runningOp{}
	}
	if _, ok := r.ops[id]; ok {
		return nil, fmt.Errorf("%w: operation id '%s' is in use", ErrInvalidArg, id)
	}
	op := &runningOp{id: id, domain: domain}
	r.ops[id] = op
	return op, nil
}

// end forgets a finished operation.
func (r *opRegistry) end(op *runningOp) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ops[op.id] == op {
		delete(r.ops, op.id)
	}
}

func (r *opRegistry) get(id string) (*runningOp, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	op, ok := r.ops[id]
	return op, ok
}

// setCancel makes the operation cancellable through cancel, or, with
// nil, no longer: past its point of no return.
func (op *runningOp) setCancel(cancel context.CancelCauseFunc) {
	op.mu.Lock()
	defer op.mu.Unlock()
	op.cancel = cancel
	op.progress.Cancellable = cancel != nil
}

// setProgress records the block jobs' progress.
func (op *runningOp) setProgress(done, total int64) {
	op.mu.Lock()
	defer op.mu.Unlock()
	op.progress.DoneBytes, op.progress.TotalBytes = done, total
}

// OperationProgress reports a running operation's progress; false if
// no operation of that id runs.
func (d *Driver) OperationProgress(id string) (Progress, bool) {
	op, ok := d.running.get(id)
	if !ok {
		return Progress{}, false
	}
	op.mu.Lock()
	defer op.mu.Unlock()
	return op.progress, true
}

// CancelOperation cancels a running operation before its point of no
// return: it then ends as if it had never started, and its caller gets
// ErrCancelled. Past that point it is ErrOperationInvalid, and the
// operation finishes. An id that runs no operation is ErrNoOperation.
func (d *Driver) CancelOperation(id string) error {
	op, ok := d.running.get(id)
	if !ok {
		return fmt.Errorf("%w: no operation '%s' is running", ErrNoOperation, id)
	}
	op.mu.Lock()
	defer op.mu.Unlock()
	if op.cancel == nil {
		return fmt.Errorf("%w: operation '%s' is past its point of no return; it will finish", ErrOperationInvalid, id)
	}
	op.cancel(ErrCancelled)
	return nil
}
