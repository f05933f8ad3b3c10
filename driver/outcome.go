package driver

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/qsnapd/qsnapd/qmp"
	"github.com/qsnapd/qsnapd/transaction"
)

// Definitive answers. An operation that loses QEMU in the middle (the
// monitor connection drops, or a reply is lost so that the disks' state
// is unknown) leaves its journal entry open and asks for recovery, as a
// crash would. Its caller does not get that half answer: the request
// releases the domain and waits, at most Config.ReconnectWait, for the
// supervisor to reconnect and for recovery to reconcile the entry, then
// answers with the outcome recovery wrote to the journal. Only when QEMU
// stays away longer is the answer ErrOutcomeUnknown, and the entry stays
// open, flagged, until recovery completes it and reports it with
// Events.OperationResolved. A QEMU that exited is not waited for: the
// snapshot settles its overlays by their files (snapshotOp.abandon).

// States of an operation as its journal entry tells them; OpSucceeded
// and OpFailed are what Events.OperationResolved reports.
const (
	OpRunning   = "running"
	OpUnknown   = "unknown" // its caller was answered ErrOutcomeUnknown; recovery will complete it
	OpSucceeded = "succeeded"
	OpFailed    = "failed"
)

// State is the operation's state as its journal entry tells it.
func (op *OpRecord) State() string {
	switch phase := op.Phase(); {
	case phase.Active() && op.OutcomeUnknown:
		return OpUnknown
	case phase.Active():
		return OpRunning
	case phase == transaction.PhaseDone:
		return OpSucceeded
	}
	return OpFailed
}

// CreateOutcome is a finished snapshot as its journal entry keeps it, for
// a front end that did not see it end: the result of one that succeeded
// (without its XML, which the snapshot's metadata has, and without the
// quiesce's indications), or the *OpError of one that failed, with each
// disk's outcome, its step and its kind. It is nil, nil for an entry of
// no snapshot (op.Plan is nil), and for one that has not ended.
func (op *OpRecord) CreateOutcome() (*CreateResult, error) {
	p := op.Plan
	if p == nil || p.Phase.Active() {
		return nil, nil
	}
	if p.Phase == transaction.PhaseDone {
		return &CreateResult{Name: op.Snapshot, OpID: op.ID, Mode: p.Mode, SwitchPath: cmp.Or(p.Switch, transaction.SwitchPreadd),
			Disks: p.Outcomes(), Indications: []Indication{},
			Switch: p.SwitchWindow(), Total: op.Updated.Sub(op.Started)}, nil
	}
	return nil, &OpError{OpID: op.ID, Step: op.Step, Disks: p.Outcomes(),
		Err: &kindError{sentinel: sentinelNamed(op.ErrorKind), err: errors.New(op.Error)}}
}

// waiters are the requests waiting for recovery to close their
// operation's journal entry, by operation id.
type waiters struct {
	mu sync.Mutex
	m  map[string]chan struct{}
}

// add registers a waiter for id; its channel is closed when recovery
// closes the entry.
func (w *waiters) add(id string) <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.m == nil {
		w.m = map[string]chan struct{}{}
	}
	ch := make(chan struct{})
	w.m[id] = ch
	return ch
}

// remove forgets the waiter of id, which gives up.
func (w *waiters) remove(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.m, id)
}

// signal wakes the waiter of id, if one waits, and reports whether one
// did.
func (w *waiters) signal(id string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	ch, ok := w.m[id]
	if ok {
		close(ch)
		delete(w.m, id)
	}
	return ok
}

// opResolved is recovery's report that it closed op's journal entry:
// the request waiting for it answers with the outcome, or, if none
// waits, Events.OperationResolved tells whoever listens.
func (d *Driver) opResolved(op *OpRecord) {
	if d.waiting.signal(op.ID) {
		return
	}
	d.cfg.Events.OperationResolved(op.Domain, op.ID, op.State())
}

// awaitRecovery waits for recovery to close the journal entry of
// operation id, which failed with the disks' state unknown: it releases
// the domain's lock, which recovery needs, and waits at most the
// reconnect wait, and not past ctx. It returns the entry as recovery
// left it, or nil if it is still open: it is then flagged, for the
// caller to answer ErrOutcomeUnknown. The caller holds the domain's
// lock; release gives it up.
func (d *Driver) awaitRecovery(ctx context.Context, dom *Domain, id string, release func()) *OpRecord {
	woken := d.waiting.add(id)
	dom.waiters.Add(1)
	defer dom.waiters.Add(-1)
	release()
	t := time.NewTimer(d.cfg.ReconnectWait)
	defer t.Stop()
	select {
	case <-woken:
	case <-t.C:
	case <-ctx.Done():
	case <-d.ctx.Done():
	}
	d.waiting.remove(id)
	for {
		op, err := d.store.Op(id)
		if err == nil && !op.Phase().Active() {
			return op
		}
		if err != nil {
			dom.log.Error("journal entry of a waiting operation not read", zap.String("op", id), zap.Error(err))
			return nil
		}
		marked, err := d.store.markOutcomeUnknown(id)
		if err != nil {
			dom.log.Error("journal entry of an unknown outcome not flagged", zap.String("op", id), zap.Error(err))
		}
		if marked || err != nil {
			return nil
		}
		// Closed between the read and the flag: read it again.
	}
}

// lostReason says how QEMU went missing, for the answers.
func lostReason(err error) string {
	if errors.Is(err, qmp.ErrDisconnected) || errors.Is(err, ErrDisconnected) {
		return "the connection to QEMU was lost"
	}
	return "QEMU's answer was lost"
}

// unknownErr is the answer when QEMU stayed away past the wait.
func (d *Driver) unknownErr(id, reason, step string) error {
	return fmt.Errorf("%w: operation %s: %s during the %s step, and QEMU did not answer again within %v: "+
		"what it did to the disks is not known; the operation stays open and will be reconciled when QEMU returns",
		ErrOutcomeUnknown, id, reason, step, d.cfg.ReconnectWait)
}

// recoveryNote is what recovery itself reported of a create, beyond
// that it ended it: "" when it rolled back cleanly.
func recoveryNote(op *OpRecord) string {
	note := strings.TrimPrefix(op.Error, ErrInterrupted.Error())
	return strings.TrimLeft(note, ":; ")
}

// awaitCreate turns a snapshot that failed with its disks' state
// unknown (oe.pending) into a definitive answer: the outcome recovery
// reconciled, or ErrOutcomeUnknown.
func (d *Driver) awaitCreate(ctx context.Context, dom *Domain, oe *OpError, release func()) (*CreateResult, error) {
	reason := lostReason(oe.Err)
	rec := d.awaitRecovery(ctx, dom, oe.OpID, release)
	if rec == nil {
		return nil, &OpError{OpID: oe.OpID, Step: oe.Step, Err: d.unknownErr(oe.OpID, reason, oe.Step)}
	}
	res, err := rec.CreateOutcome()
	if err == nil {
		if snap, serr := d.store.Snapshot(dom.cfg.Name, rec.Snapshot); serr == nil {
			res.XML = snap.XML
		}
		return res, nil
	}
	var roe *OpError
	if !errors.As(err, &roe) {
		return nil, err
	}
	msg := fmt.Sprintf("%s during the %s step; recovery then read the disks from QEMU and reconciled them: %s",
		reason, oe.Step, transaction.Describe(roe.Disks))
	if note := recoveryNote(rec); note != "" {
		msg += " (" + note + ")"
	}
	roe.Step = oe.Step
	roe.Err = &kindError{sentinel: sentinelNamed(rec.ErrorKind), err: fmt.Errorf("%w: %s", ErrOperationFailed, msg)}
	return nil, roe
}

// awaitDelete is awaitCreate for a delete whose merge lost QEMU.
func (d *Driver) awaitDelete(ctx context.Context, dom *Domain, de *DeleteError, release func()) (*DeleteResult, error) {
	reason := lostReason(de.Err)
	rec := d.awaitRecovery(ctx, dom, de.OpID, release)
	if rec == nil {
		return nil, &DeleteError{OpID: de.OpID, Step: de.Step, Deleted: de.Deleted, Disks: de.Disks,
			Err: d.unknownErr(de.OpID, reason, de.Step)}
	}
	res, err := rec.DeleteOutcome()
	if err == nil {
		return res, nil
	}
	var rde *DeleteError
	if !errors.As(err, &rde) {
		return nil, err
	}
	rde.Step = de.Step
	rde.Err = &kindError{sentinel: sentinelNamed(rec.ErrorKind), err: fmt.Errorf("%w: %s during the %s step; recovery then read the jobs and chains from QEMU and reconciled the merge: %s",
		ErrOperationFailed, reason, de.Step, rec.Error)}
	return nil, rde
}
