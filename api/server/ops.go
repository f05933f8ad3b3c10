package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/errkind"
	"github.com/qsnapd/qsnapd/internal/opid"
)

// DefaultOpRetention is how long finished operations stay readable, and
// how long a retry under the same id gets the same answer.
const DefaultOpRetention = 24 * time.Hour

// opRegistry is the operations of mutating requests: each one durably,
// as a request record in the store, so that a retry under its id gets
// its answer again, after a restart too; and the running ones in
// memory, for their waiters and their progress.
type opRegistry struct {
	store     *driver.Store
	retention time.Duration

	// onState, if set, hears each state an operation enters (running,
	// then succeeded, failed or unknown), for the event stream. It must
	// not block.
	onState func(id, kind, domain, state string)

	mu        sync.Mutex
	running   map[string]*liveOp
	lastPrune time.Time
}

// liveOp is an operation running in this process.
type liveOp struct {
	rec  driver.RequestRecord
	done chan struct{} // closed once the record has its answer, or is gone
}

func newOpRegistry(store *driver.Store, retention time.Duration) *opRegistry {
	if retention <= 0 {
		retention = DefaultOpRetention
	}
	return &opRegistry{store: store, retention: retention, running: map[string]*liveOp{}}
}

// begin starts an operation under rec.ID, or, if that id has one
// already, returns its record instead: running (here, or left by a
// previous run of the daemon) or ended.
func (r *opRegistry) begin(rec driver.RequestRecord) (*liveOp, *driver.RequestRecord, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.prune()
	if op, ok := r.running[rec.ID]; ok {
		prior := op.rec
		return nil, &prior, nil
	}
	prior, err := r.store.BeginRequest(rec)
	if err != nil || prior != nil {
		return nil, prior, err
	}
	rec.State = driver.RequestRunning
	op := &liveOp{rec: rec, done: make(chan struct{})}
	r.running[rec.ID] = op
	r.tell(rec, driver.RequestRunning)
	return op, nil, nil
}

func (r *opRegistry) tell(rec driver.RequestRecord, state string) {
	if r.onState != nil {
		r.onState(rec.ID, rec.Kind, rec.Domain, state)
	}
}

// finish stores the answer of a running operation and wakes its waiters.
// A request refused without effect and worth retrying (QEMU away, the
// domain busy) is forgotten instead, so that a retry under the same id
// runs anew.
func (r *opRegistry) finish(op *liveOp, state string, status int, body []byte, forget bool) error {
	var err error
	if forget {
		err = r.store.ForgetRequest(op.rec.ID)
	} else {
		rec := op.rec
		rec.State, rec.Status, rec.Response = state, status, body
		if state != driver.RequestUnknown { // unknown has not ended
			rec.Ended = time.Now().UTC()
		}
		err = r.store.FinishRequest(rec)
	}
	r.mu.Lock()
	delete(r.running, op.rec.ID)
	r.mu.Unlock()
	if !forget {
		r.tell(op.rec, state)
	}
	close(op.done)
	return err
}

// wait waits for the operation id if it runs in this process, and says
// whether it did: false if it does not run here, or ctx ended first.
func (r *opRegistry) wait(ctx context.Context, id string) bool {
	r.mu.Lock()
	op, ok := r.running[id]
	r.mu.Unlock()
	if !ok {
		return false
	}
	select {
	case <-op.done:
		return true
	case <-ctx.Done():
		return false
	}
}

// live returns the operation id if it runs in this process.
func (r *opRegistry) live(id string) (driver.RequestRecord, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	op, ok := r.running[id]
	if !ok {
		return driver.RequestRecord{}, false
	}
	return op.rec, true
}

// prune drops the records that ended longer than the retention ago, at
// most once a minute.
func (r *opRegistry) prune() {
	now := time.Now()
	if now.Sub(r.lastPrune) < time.Minute {
		return
	}
	r.lastPrune = now
	// A failed prune leaves old records a while longer; nothing else.
	_ = r.store.PruneRequests(now.Add(-r.retention))
}

// fingerprint identifies a request, so that a retry can be told from a
// reuse of its id: the verb, the path, the query but for async, and the
// decoded body, whose async field the caller cleared. Whether to wait
// for the answer is not part of what was asked.
func fingerprint(r *http.Request, body any) string {
	h := sha256.New()
	q := url.Values{}
	for k, vs := range r.URL.Query() {
		if k != api.QueryAsync {
			q[k] = vs
		}
	}
	fmt.Fprintf(h, "%s\n%s\n%s\n", r.Method, r.URL.Path, q.Encode())
	if body != nil {
		// Marshalling a decoded request cannot fail.
		b, _ := json.Marshal(body)
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// opRequest is a mutating request, run as an operation.
type opRequest struct {
	kind, domain string
	// request is the decoded body (its async field cleared), for the
	// fingerprint; nil for a request without one.
	request any
	// async answers 202 with the operation instead of waiting.
	async bool
	// status is the answer of a synchronous success; a nil result
	// answers it without a body.
	status int
}

// run runs f as the operation of a mutating request, once per operation
// id: a request under the id of an earlier one with the same content
// gets that one's answer (waiting for it while it runs) and runs
// nothing; under the id of another request it is refused with
// operation-id-reused. Without async it waits and answers o.status with
// the result. With async it answers 202 Accepted with the operation,
// still running, and a Location to read it from; f goes on with the
// request's values but not its end, and Serve waits for it.
func (s *Server) run(w http.ResponseWriter, r *http.Request, o opRequest, f func(ctx context.Context, id string) (any, error)) {
	id := r.Header.Get(api.OperationHeader)
	if id == "" {
		id = opid.New()
	} else if err := opid.Check(id); err != nil {
		s.writeErr(w, fmt.Errorf("%w: %w", errBadRequest, err))
		return
	}
	rec := driver.RequestRecord{ID: id, Kind: o.kind, Domain: o.domain, Fingerprint: fingerprint(r, o.request), Started: time.Now().UTC()}
	// A second look after waiting: the operation waited for may have
	// been forgotten (refused, worth a retry), and then this one runs.
	for range 2 {
		op, prior, err := s.ops.begin(rec)
		if err != nil {
			s.writeErr(w, err)
			return
		}
		if op != nil {
			s.execute(w, r, o, op, f)
			return
		}
		if prior.Fingerprint != rec.Fingerprint {
			s.writeErr(w, fmt.Errorf("%w: operation id '%s' was used for %s of '%s' at %s; use a new id for another request",
				errIDReused, id, prior.Kind, prior.Domain, prior.Started.Format(time.RFC3339)))
			return
		}
		if prior.State == driver.RequestRunning {
			if _, here := s.ops.live(id); here {
				if o.async {
					s.acceptedAgain(w, id)
					return
				}
				if !s.ops.wait(r.Context(), id) {
					return // the caller is gone
				}
				continue
			}
		}
		s.replay(w, o, s.resolve(*prior))
		return
	}
	// Forgotten twice in a row: the domain stays busy or away.
	if prior, ok, err := s.drv.Store().Request(id); err == nil && ok {
		s.replay(w, o, s.resolve(prior))
		return
	}
	s.writeErr(w, fmt.Errorf("%w: operation '%s' was refused; retry it", driver.ErrBusy, id))
}

// execute runs a new operation and answers it.
func (s *Server) execute(w http.ResponseWriter, r *http.Request, o opRequest, op *liveOp, f func(ctx context.Context, id string) (any, error)) {
	id := op.rec.ID
	w.Header().Set(api.OperationHeader, id)
	if !o.async {
		res, err := f(r.Context(), id)
		status, body := s.answer(o, res, err)
		// Refused and worth a retry: nothing happened to remember.
		s.finish(op, err, status, body, transient(err))
		writeBody(w, status, body)
		return
	}
	ctx := context.WithoutCancel(r.Context())
	s.running.Add(1)
	go func() {
		defer s.running.Done()
		res, err := f(ctx, id)
		status, body := s.answer(o, res, err)
		// The 202 named this operation: its record stays, whatever came.
		s.finish(op, err, status, body, false)
	}()
	w.Header().Set("Location", opLocation(id))
	w.Header().Set(api.PreferenceAppliedHeader, api.PreferAsync)
	writeJSON(w, http.StatusAccepted, toOperation(op.rec))
}

// finish stores an operation's answer; a store that fails to keep it is
// logged, since the caller still gets the answer.
func (s *Server) finish(op *liveOp, err error, status int, body []byte, forget bool) {
	if ferr := s.ops.finish(op, stateOf(err), status, body, forget); ferr != nil {
		s.log.Error("cannot record an operation's answer", zap.String("op", op.rec.ID), zap.Error(ferr))
	}
	if err != nil && kindOf(err) == errkind.InternalError {
		s.log.Error("operation failed with an internal error", zap.String("op", op.rec.ID),
			zap.String("kind", op.rec.Kind), zap.String("domain", op.rec.Domain), zap.Error(err))
	}
}

// answer renders an operation's result or error as the status and body
// of its answer, once, so that a replay is byte for byte the same.
func (s *Server) answer(o opRequest, res any, err error) (int, []byte) {
	if err != nil {
		status, info := errorInfo(err)
		return status, encodeJSON(api.ErrorBody{Error: info})
	}
	if res == nil {
		return o.status, nil
	}
	return o.status, encodeJSON(res)
}

// stateOf is the state an operation ended in.
func stateOf(err error) string {
	switch {
	case err == nil:
		return driver.RequestSucceeded
	case kindOf(err) == errkind.OutcomeUnknown:
		return driver.RequestUnknown
	}
	return driver.RequestFailed
}

// transient says whether an error refused a request without effect, and
// a retry later may succeed.
func transient(err error) bool {
	switch kindOf(err) {
	case errkind.Unavailable, errkind.OperationTimeout:
		return true
	}
	return false
}

// acceptedAgain answers an asynchronous retry of a running operation as
// its first request was answered: 202 with the operation.
func (s *Server) acceptedAgain(w http.ResponseWriter, id string) {
	op, _ := s.operation(id)
	w.Header().Set(api.OperationHeader, id)
	w.Header().Set("Location", opLocation(id))
	w.Header().Set(api.PreferenceAppliedHeader, api.PreferAsync)
	writeJSON(w, http.StatusAccepted, op)
}

// replay answers a retry with the answer its operation got. An
// asynchronous retry of an ended operation gets the operation, as it
// would by polling.
func (s *Server) replay(w http.ResponseWriter, o opRequest, rec driver.RequestRecord) {
	w.Header().Set(api.OperationHeader, rec.ID)
	if o.async || rec.State == driver.RequestRunning {
		s.acceptedAgain(w, rec.ID)
		return
	}
	writeBody(w, rec.Status, rec.Response)
}

// resolve completes a record that its request could not: left running
// by a daemon that stopped, or answered unknown because QEMU went away.
// The engine's journal has what became of it, once recovery reconciled
// the disks; until then the record stays as it is.
func (s *Server) resolve(rec driver.RequestRecord) driver.RequestRecord {
	if rec.State != driver.RequestRunning && rec.State != driver.RequestUnknown {
		return rec
	}
	if _, here := s.ops.live(rec.ID); here {
		return rec
	}
	final, ok := s.fromJournal(rec)
	if !ok {
		return rec
	}
	if err := s.drv.Store().FinishRequest(final); err != nil && !errors.Is(err, driver.ErrRequestEnded) {
		s.log.Error("cannot record an operation's resolved answer", zap.String("op", rec.ID), zap.Error(err))
	}
	return final
}

// fromJournal reads what became of a request's operation from the
// engine's journal: ok is false while the journal has no final word.
// A request the journal does not know (an attach, a freeze) that a
// stopped daemon left running failed as far as anyone can tell: the
// answer says so, and what to check.
func (s *Server) fromJournal(rec driver.RequestRecord) (driver.RequestRecord, bool) {
	jop, err := s.drv.Store().Op(rec.ID)
	if err != nil {
		if rec.State == driver.RequestUnknown {
			return rec, false
		}
		err := fmt.Errorf("%w: the daemon stopped before operation '%s' (%s of '%s') answered; read the domain's state",
			driver.ErrOperationFailed, rec.ID, rec.Kind, rec.Domain)
		rec.State, rec.Ended = driver.RequestFailed, time.Now().UTC()
		rec.Status, rec.Response = s.answer(opRequest{}, nil, err)
		return rec, true
	}
	op, status := s.journalOperation(jop)
	if op.State == api.OpRunning || op.State == api.OpUnknown {
		return rec, false
	}
	rec.State, rec.Ended, rec.Status = op.State, op.Ended, status
	if op.Error != nil {
		rec.Response = encodeJSON(api.ErrorBody{Error: *op.Error})
	} else {
		rec.Status, rec.Response = successStatus(rec.Kind), op.Result
	}
	return rec, true
}

// successStatus is the status a successful request of kind answers.
func successStatus(kind string) int {
	switch kind {
	case api.OpDomainAttach, api.OpSnapshotCreate:
		return http.StatusCreated
	case api.OpDomainDetach:
		return http.StatusNoContent
	}
	return http.StatusOK
}

// operation is the operation id as the API shows it: running here (with
// its progress), or its record, or, for one no request record knows
// (started through another front end), the engine's journal.
func (s *Server) operation(id string) (api.Operation, bool) {
	if rec, ok := s.ops.live(id); ok {
		op := toOperation(rec)
		s.withProgress(&op)
		return op, true
	}
	rec, ok, err := s.drv.Store().Request(id)
	if err == nil && ok {
		return toOperation(s.resolve(rec)), true
	}
	jop, err := s.drv.Store().Op(id)
	if err != nil {
		return api.Operation{}, false
	}
	op, _ := s.journalOperation(jop)
	s.withProgress(&op)
	return op, true
}

// toOperation shows a request record as an operation: its result if it
// succeeded, its error if it failed or is unknown.
func toOperation(rec driver.RequestRecord) api.Operation {
	op := api.Operation{ID: rec.ID, Kind: rec.Kind, Domain: rec.Domain, State: rec.State, Started: rec.Started, Ended: rec.Ended}
	switch rec.State {
	case driver.RequestSucceeded:
		if len(rec.Response) > 0 {
			op.Result = rec.Response
		}
	case driver.RequestFailed, driver.RequestUnknown:
		var body api.ErrorBody
		if json.Unmarshal(rec.Response, &body) == nil {
			op.Error = &body.Error
		}
	}
	return op
}
