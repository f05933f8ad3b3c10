package driver

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/qsnapd/qsnapd/guestagent"
	"github.com/qsnapd/qsnapd/internal/revert"
	"github.com/qsnapd/qsnapd/qmp"
	"github.com/qsnapd/qsnapd/transaction"
)

// snapshotOp is one validated snapshot from its journal entry to its
// end: the plan, the undo of every side effect so far, and what the
// steps learned on the way.
type snapshotOp struct {
	d     *Driver
	dom   *Domain
	spec  *createSpec
	op    *OpRecord
	plan  *transaction.Plan
	exec  *transaction.Executor
	undo  *revert.Stack
	log   *zap.Logger
	start time.Time

	gf          *guestFreeze // held across the switch; nil if not frozen
	indications []Indication
	quiesced    bool
	rec         SnapshotRecord
	qemuGone    bool // QEMU exited mid-operation (abandon)

	freezeWindow, freezeCall, thawCall, prepareTook time.Duration
}

// stepError names the step a failure belongs to, for the OpError.
type stepError struct {
	step string
	err  error
}

func (e *stepError) Error() string { return e.err.Error() }

func (e *stepError) Unwrap() error { return e.err }

// atStep tags a step's error; nil stays nil.
func atStep(step string, err error) error {
	if err == nil {
		return nil
	}
	return &stepError{step: step, err: err}
}

// create runs a validated snapshot: prepare → freeze → switch → thaw →
// record. Whatever step fails, the one deferred call undoes the steps
// before it and reports.
//
// A failure that leaves the disks' state unknown is an *OpError with
// pending set: the caller releases the domain and waits for recovery
// (awaitCreate). One whose QEMU exited ends here (abandon), and may yet
// be a snapshot.
func (d *Driver) create(ctx context.Context, dom *Domain, spec *createSpec, start time.Time) (res *CreateResult, err error) {
	s, err := d.beginSnapshot(dom, spec, start)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			res, err = s.fail(ctx, err)
		}
	}()
	if err := s.prepare(ctx); err != nil {
		return nil, err
	}
	if err := s.freeze(ctx); err != nil {
		return nil, err
	}
	switchErr := s.switchDisks(ctx)
	// The thaw follows the switch whatever it did: the guest must not
	// stay frozen through a rollback.
	if err := cmp.Or(switchErr, s.thaw()); err != nil {
		return nil, err
	}
	if err := s.record(); err != nil {
		return nil, err
	}
	s.undo.Success()
	dom.chainsSwitched(s.plan)
	return s.finish(ctx), nil
}

// beginSnapshot plans the operation and journals it as prepared, before
// any side effect.
func (d *Driver) beginSnapshot(dom *Domain, spec *createSpec, start time.Time) (*snapshotOp, error) {
	op := &OpRecord{ID: spec.opID, Domain: dom.cfg.Name, Kind: KindSnapshot, Snapshot: spec.name, Flags: spec.flags, Started: start.UTC()}
	// Node names come from a fresh random tag, not the operation id a
	// client may have chosen: they must differ between operations.
	tag := newOpID()
	plan := &transaction.Plan{OpID: op.ID, Domain: dom.cfg.Name, Mode: spec.mode, Switch: spec.switchPath, Phase: transaction.PhasePrepared}
	for i := range spec.disks {
		ds := &spec.disks[i]
		if !ds.external {
			continue
		}
		plan.Disks = append(plan.Disks, &transaction.Disk{
			Target: ds.Target, Node: ds.NodeName, Source: ds.File, SourceFormat: ds.Format,
			VirtualSize: ds.VirtualSize, Overlay: ds.overlay, OverlayNode: transaction.NodeName(tag, i),
			Reuse: ds.reuse, WasEmpty: ds.wasEmpty, FileID: ds.fileID, State: transaction.DiskPlanned,
		})
	}
	op.Plan = plan
	if err := d.store.SaveOp(op); err != nil {
		return nil, &OpError{OpID: op.ID, Step: StepPrepare, Err: fmt.Errorf("%w: journal: %w", ErrOperationFailed, err)}
	}
	s := &snapshotOp{
		d: d, dom: dom, spec: spec, op: op, plan: plan, exec: d.executor(dom, op),
		undo: revert.New(), log: dom.log.With(zap.String("op", op.ID), zap.String("snapshot", spec.name)),
		start: start, indications: spec.indications,
	}
	s.log.Debug("switch path chosen", zap.String("switch", string(plan.Switch)), zap.String("why", spec.switchWhy),
		zap.String("mode", string(plan.Mode)), zap.Int("disks", len(plan.Disks)))
	return s, nil
}

// prepare creates the overlays and, on the preadd path, adds their
// nodes, then journals that the disks are about to switch.
func (s *snapshotOp) prepare(ctx context.Context) error {
	start := time.Now()
	defer func() { s.prepareTook = time.Since(start) }()
	s.undo.Add(func(ctx context.Context) error { return s.exec.Cleanup(ctx, s.plan) })
	if err := s.d.hook(HookPrepared); err != nil {
		return atStep(StepPrepare, err)
	}
	if err := s.exec.Prepare(ctx, s.plan); err != nil {
		return atStep(StepPrepare, qmpErr("prepare", err))
	}
	if err := s.d.hook(HookOverlays); err != nil {
		return atStep(StepPrepare, err)
	}
	s.plan.Phase = transaction.PhaseSwitching
	if err := s.d.store.SaveOp(s.op); err != nil {
		return atStep(StepSwitch, fmt.Errorf("%w: journal: %w", ErrOperationFailed, err))
	}
	return atStep(StepSwitch, s.d.hook(HookSwitching))
}

// freeze freezes the guest for the switch, if the snapshot quiesces,
// once the agent has said that a freeze can work. Under prefer a failed
// check or freeze only adds an indication; under require a failed check
// refuses the snapshot as validation would have.
func (s *snapshotOp) freeze(ctx context.Context) error {
	if s.spec.quiesce == QuiesceSkip {
		return nil
	}
	if ind, err := s.spec.check.wait(); err != nil {
		if s.spec.quiesce == QuiesceRequire {
			return atStep(StepFreeze, &refusal{fmt.Errorf("%w: %w", ErrQuiesce, err)})
		}
		s.spec.quiesce = QuiesceSkip
		s.indications = append(s.indications, *ind)
		return nil
	}
	gf, _, err := s.d.freezeGuest(ctx, s.dom, OwnerSnapshot, s.op.ID, s.spec.mountpoints, s.d.cfg.MaxFreeze)
	if err != nil {
		if s.spec.quiesce == QuiesceRequire {
			return atStep(StepFreeze, fmt.Errorf("%w: freeze: %w", ErrQuiesce, agentErr(err)))
		}
		ind := notQuiesced(err)
		if errors.Is(err, guestagent.ErrUnresponsive) {
			ind.Code = IndFreezeTimeout
		}
		s.indications = append(s.indications, ind)
		return nil
	}
	if err := s.d.hook(HookFrozen); err != nil {
		s.d.thawGuest(s.dom, gf, false)
		return atStep(StepFreeze, err)
	}
	s.gf = gf
	return nil
}

// switchDisks puts every disk on its overlay.
func (s *snapshotOp) switchDisks(ctx context.Context) error {
	// Registered before the switch: a switch whose reply was lost may
	// still have happened, and Rollback acts only on switched disks.
	s.undo.Add(func(ctx context.Context) error { return s.exec.Rollback(ctx, s.plan) })
	err := s.exec.Switch(ctx, s.plan)
	if err == nil || errors.Is(err, transaction.ErrStateUnknown) {
		return atStep(StepSwitch, err) // fail leaves an unknown state to recovery
	}
	return atStep(StepSwitch, qmpErr("switch", err))
}

// thaw ends the switch's freeze and settles whether the snapshot is
// quiesced; a required quiesce that did not hold fails here.
func (s *snapshotOp) thaw() error {
	if gf := s.gf; gf != nil {
		thawed := s.d.awaitThaw(s.dom, gf)
		f := thawFacts{maxFreeze: s.d.cfg.MaxFreeze, sent: gf.sent, switchEnd: s.plan.SwitchEnd, thawed: thawed}
		s.freezeWindow = time.Since(gf.sent)
		if thawed { // the thaw's fields are the thaw goroutine's until then
			f.byTimer, f.err = gf.byTimer, gf.err
			s.freezeWindow = gf.thawedAt.Sub(gf.sent)
			s.freezeCall, s.thawCall = gf.frozenAt.Sub(gf.sent), gf.thawedAt.Sub(gf.thawSent)
		}
		var ind *Indication
		s.quiesced, ind = classifyThaw(f)
		if ind != nil {
			s.indications = append(s.indications, *ind)
		}
	}
	if s.spec.quiesce == QuiesceRequire && !s.quiesced {
		last := s.indications[len(s.indications)-1]
		return atStep(StepThaw, fmt.Errorf("%w: %s: %s", ErrQuiesce, last.Code, last.Message))
	}
	if s.quiesced {
		s.indications = append([]Indication{{Code: IndQuiesced}}, s.indications...)
	}
	return nil
}

// thawFacts is what the thaw step knows once the thaw answered or its
// wait gave up.
type thawFacts struct {
	maxFreeze time.Duration
	sent      time.Time // freeze sent
	switchEnd time.Time // last switch reply
	thawed    bool      // the first thaw attempt ended
	byTimer   bool      // the deadline timer thawed, not the snapshot
	err       error     // of the first thaw attempt
}

// classifyThaw says whether a switch under freeze was quiesced, and the
// indication that explains why not or what went wrong, if any.
func classifyThaw(f thawFacts) (quiesced bool, ind *Indication) {
	// The timer thaws at the deadline; a switch that ended after it ran
	// (at least partly) with the guest thawed.
	late := f.switchEnd.After(f.sent.Add(f.maxFreeze)) || (f.thawed && f.byTimer)
	switch {
	case late:
		return false, &Indication{Code: IndDeadlineExceeded,
			Message: fmt.Sprintf("the switch outlasted the %v freeze deadline; the guest was thawed first", f.maxFreeze)}
	case !f.thawed:
		return true, &Indication{Code: IndThawFailed, Message: "the thaw has not answered yet; the daemon keeps trying"}
	case holdExpired(f.err):
		return false, &Indication{Code: IndHoldExpired, Message: f.err.Error()}
	case f.err != nil:
		return true, &Indication{Code: IndThawFailed, Message: f.err.Error()}
	}
	return true, nil
}

// record makes the snapshot durable: the overlays' directory entries,
// then its metadata and the journal's end in one store transaction.
func (s *snapshotOp) record() error {
	if err := s.d.hook(HookSwitched); err != nil {
		return atStep(StepSwitch, err)
	}
	return s.recordMetadata()
}

// recordMetadata is record past its hook point.
func (s *snapshotOp) recordMetadata() error {
	if err := s.exec.SyncDirs(s.plan); err != nil {
		return atStep(StepRecord, fmt.Errorf("%w: %w", ErrOperationFailed, err))
	}
	rec := s.d.record(s.dom, s.spec, s.plan)
	s.plan.Phase = transaction.PhaseDone
	var err error
	if s.spec.flags&FlagNoMetadata != 0 {
		err = s.d.store.SaveOp(s.op)
	} else if rec.XML, err = snapshotXML(&rec); err == nil {
		err = s.d.store.PutSnapshot(rec, true, s.op)
	}
	if err != nil {
		s.plan.Phase = transaction.PhaseSwitching
		return atStep(StepRecord, fmt.Errorf("%w: record metadata: %w", ErrOperationFailed, err))
	}
	s.rec = rec
	return nil
}

// finish reports a durable snapshot: nothing from here on undoes it.
func (s *snapshotOp) finish(ctx context.Context) *CreateResult {
	_ = s.d.hook(HookCommitted)
	plan := s.plan
	res := &CreateResult{
		Name: s.spec.name, XML: s.rec.XML, OpID: s.op.ID, Mode: plan.Mode, SwitchPath: plan.Switch, Disks: plan.Outcomes(),
		Quiesced: s.quiesced, Indications: s.indications, Switch: plan.SwitchWindow(), Freeze: s.freezeWindow,
		freezeCall: s.freezeCall, thawCall: s.thawCall, prepare: s.prepareTook,
	}
	if res.XML == "" { // NO_METADATA: still show what was taken
		res.XML, _ = snapshotXML(&s.rec)
	}
	if s.spec.flags&FlagHalt != 0 && !s.qemuGone {
		if err := s.dom.client.Quit(ctx); err != nil {
			res.Indications = append(res.Indications, Indication{Code: IndHaltFailed, Message: err.Error()})
		} else {
			res.Indications = append(res.Indications, Indication{Code: IndHalted})
		}
	}
	res.Total = time.Since(s.start)
	for _, pd := range plan.Disks {
		s.log.Debug("disk switched", zap.String("disk", pd.Target), zap.String("overlay", pd.Overlay), zap.String("backing", pd.Source))
	}
	s.log.Info("snapshot created", zap.String("mode", string(plan.Mode)), zap.String("switch", string(plan.Switch)), zap.Int("disks", len(plan.Disks)),
		zap.Bool("quiesced", s.quiesced), zap.Float64("freeze_seconds", res.Freeze.Seconds()),
		zap.Float64("switch_seconds", res.Switch.Seconds()), zap.Float64("duration_seconds", res.Total.Seconds()))
	return res
}

// fail is the one owner of a failed snapshot's end: it undoes what the
// steps did, unless the disks' state is unknown, and reports every
// disk's outcome. With the state unknown, the journal entry stays open
// for recovery and the *OpError is pending: the caller waits for
// recovery's outcome, unless QEMU exited, which abandon settles here.
func (s *snapshotOp) fail(ctx context.Context, cause error) (*CreateResult, error) {
	// Whatever the steps and their undo left, the next operation reads
	// the chains from QEMU.
	s.dom.forgetChains()
	step := StepPrepare
	var se *stepError
	if errors.As(cause, &se) {
		step, cause = se.step, se.err
	}
	err, unknown := cause, false
	if errors.Is(cause, transaction.ErrStateUnknown) {
		// Deleting files QEMU may use would be worse than leaving them:
		// the journal keeps the operation for recovery.
		s.undo.Release()
		unknown = true
	} else if rerr := s.undo.Fail(ctx); rerr != nil {
		err = fmt.Errorf("%w; undo: %w", cause, rerr)
		// QEMU went away, or stopped answering, before the undo
		// finished: recovery finishes it.
		unknown = errors.Is(rerr, qmp.ErrDisconnected) || errors.Is(rerr, transaction.ErrStateUnknown)
	}
	if unknown && s.dom.qemuGone() {
		return s.abandon(ctx, step, err)
	}
	if rf := (*refusal)(nil); !unknown && err == cause && errors.As(cause, &rf) {
		// Undone, the snapshot refused by the agent's check leaves as
		// a refusal in validation does: no journal entry either.
		derr := s.d.store.DeleteOp(s.op.ID)
		if derr == nil {
			return nil, rf
		}
		s.log.Warn("journal entry of a refused snapshot not removed; closing it", zap.Error(derr))
	}
	var sw *transaction.SwitchError
	if !unknown && errors.As(cause, &sw) && errors.Is(err, ErrDisconnected) {
		// The connection dropped at the switch and came back before the
		// disks were read back and undone: a definitive failure, not an
		// unreachable QEMU to retry later.
		err = fmt.Errorf("%w: the connection to QEMU was lost during the %s step and came back; the disks were read back and undone: %s (%s)",
			ErrOperationFailed, step, transaction.Describe(s.plan.Outcomes()), err.Error())
	}
	s.plan.Phase = transaction.PhaseFailed
	if unknown {
		err = fmt.Errorf("%w: %w; recovery will reconcile the disks", ErrOperationFailed, err)
		s.plan.Phase = transaction.PhaseSwitching
		s.dom.requestRecovery()
	}
	s.op.Error, s.op.Step, s.op.ErrorKind = err.Error(), step, Kind(err).String()
	if serr := s.d.store.SaveOp(s.op); serr != nil {
		s.log.Error("journal of failed operation not saved", zap.Error(serr))
	}
	s.log.Info("snapshot failed", zap.String("step", step), zap.String("mode", string(s.plan.Mode)),
		zap.Int("stuck", len(s.plan.Stuck())), zap.Bool("unknown", unknown))
	return nil, &OpError{OpID: s.op.ID, Step: step, Disks: s.plan.Outcomes(), Err: err, pending: unknown}
}

// abandon ends a snapshot whose QEMU exited in the middle of it: there
// is nothing to roll back with and nothing to wait for. The overlays
// that hold no data go, those that hold the guest's writes stay
// (transaction.Executor.Abandon), the freeze is forgotten and the
// journal entry closed, so that nothing is left for recovery to trip on
// when QEMU returns.
//
// If every disk's overlay holds guest writes, every disk switched: the
// snapshot happened, as libvirt would have it, and is recorded and
// answered as taken, with the indication qemu-gone (QEMU must start on
// the overlays). It is not if its required quiesce did not hold. Any
// other mix fails, naming the overlays that hold writes.
func (s *snapshotOp) abandon(ctx context.Context, step string, cause error) (*CreateResult, error) {
	s.qemuGone = true
	s.undo.Release()
	s.d.guestGone(s.dom)
	aerr := s.exec.Abandon(s.plan)
	held := s.plan.HoldingGuestWrites()
	s.log.Warn("QEMU exited mid-snapshot", zap.String("step", step), zap.Error(cause),
		zap.Int("holding_guest_writes", len(held)), zap.NamedError("abandon", aerr))
	whole := aerr == nil && len(held) == len(s.plan.Disks)
	var note string
	switch {
	case whole && s.spec.quiesce == QuiesceRequire && !s.quiesced:
		note = "the snapshot is not recorded: its required quiesce did not hold"
	case whole:
		s.indications = append(s.indications, Indication{Code: IndQEMUGone,
			Message: "QEMU exited after the switch, and every overlay holds writes of the guest's: the snapshot is recorded; start QEMU on the overlays"})
		err := s.recordMetadata()
		if err == nil {
			return s.finish(ctx), nil
		}
		note = "the snapshot could not be recorded: " + err.Error()
	case len(held) > 0:
		note = "the snapshot is not recorded: not every disk switched"
	}
	var paths []string
	for _, pd := range held {
		paths = append(paths, pd.Target+" "+pd.Overlay)
	}
	msg := fmt.Sprintf("QEMU exited during the %s step; disks: %s", step, transaction.Describe(s.plan.Outcomes()))
	if len(paths) > 0 {
		msg += fmt.Sprintf("; these overlays hold writes the guest was told were durable and are kept: start QEMU on them, not on their backing images: %s",
			strings.Join(paths, ", "))
	}
	if note != "" {
		msg += "; " + note
	}
	err := fmt.Errorf("%w: %s", ErrOperationFailed, msg)
	if aerr != nil {
		err = fmt.Errorf("%w; %w", err, aerr)
	}
	s.plan.Phase = transaction.PhaseFailed
	s.op.Error, s.op.Step, s.op.ErrorKind = err.Error(), step, Kind(err).String()
	if serr := s.d.store.SaveOp(s.op); serr != nil {
		s.log.Error("journal of abandoned operation not saved", zap.Error(serr))
	}
	return nil, &OpError{OpID: s.op.ID, Step: step, Disks: s.plan.Outcomes(), Err: err}
}
