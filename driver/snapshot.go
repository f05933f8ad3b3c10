package driver

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"libvirt.org/go/libvirtxml"

	"github.com/qsnapd/qsnapd/guestagent"
	"github.com/qsnapd/qsnapd/internal/revert"
	"github.com/qsnapd/qsnapd/qmp"
	"github.com/qsnapd/qsnapd/transaction"
)

// Steps of the snapshot lifecycle, as hooks, logs and errors name them.
const (
	StepValidate = "validate"
	StepPrepare  = "prepare"
	StepFreeze   = "freeze"
	StepSwitch   = "switch"
	StepThaw     = "thaw"
	StepRecord   = "record"
	StepRollback = "rollback"
	StepHalt     = "halt"
)

// Hook points, each right after the journal records the phase before it.
const (
	HookPrepared  = "prepared"  // journal says prepared; no file yet
	HookOverlays  = "overlays"  // files created and nodes added
	HookSwitching = "switching" // journal says switching; disks not switched
	HookFrozen    = "frozen"    // guest frozen (QUIESCE); disks not switched
	HookSwitched  = "switched"  // disks switched; no metadata yet
	HookCommitted = "committed" // metadata durable
)

// CreateResult describes a snapshot that was taken.
type CreateResult struct {
	Name        string                `json:"name"`
	XML         string                `json:"xml"`
	OpID        string                `json:"operation"`
	Mode        transaction.Mode      `json:"mode"`
	Disks       []transaction.Outcome `json:"disks"`
	Quiesced    bool                  `json:"quiesced"`
	Indications []Indication          `json:"indications"`
	// Total is the whole request; Switch the block graph change; Freeze
	// the freeze window, from freeze sent to thaw reply.
	Total  time.Duration `json:"total_ns"`
	Switch time.Duration `json:"switch_ns"`
	Freeze time.Duration `json:"freeze_ns"`

	// The agent's round trips inside the freeze window, for benchmarks.
	freezeCall, thawCall time.Duration
}

// OpError is a failed operation with each disk's outcome.
type OpError struct {
	OpID  string
	Step  string
	Disks []transaction.Outcome
	Err   error
}

func (e *OpError) Error() string { return e.Err.Error() }

func (e *OpError) Unwrap() error { return e.Err }

// CreateSnapshot takes a snapshot as virDomainSnapshotCreateXML does.
// Everything is checked before anything changes; on failure nothing is
// left behind except what the error lists as stuck on an overlay.
func (d *Driver) CreateSnapshot(ctx context.Context, domain string, req CreateRequest) (*CreateResult, error) {
	start := time.Now()
	dom, err := d.domain(domain)
	if err != nil {
		return nil, err
	}
	if err := req.Flags.check(); err != nil {
		return nil, err
	}
	quiesce, err := resolveQuiesce(req.Flags, req.Quiesce, d.cfg.Quiesce)
	if err != nil {
		return nil, err
	}
	def, err := parseSnapshotXML(req.XML)
	if err != nil {
		return nil, err
	}
	release, err := dom.acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer release()

	if req.Flags&FlagRedefine != 0 {
		return d.redefine(dom, def, req.Flags)
	}
	client, err := dom.ready()
	if err != nil {
		return nil, err
	}
	// Both queries go out at once: QEMU answers them in turn, without a
	// round trip in between.
	var disks []qmp.Disk
	var jobs []qmp.BlockJob
	var g errgroup.Group
	g.Go(func() (err error) { disks, err = client.Disks(ctx); return err })
	g.Go(func() (err error) { jobs, err = client.QueryBlockJobs(ctx); return err })
	if err := g.Wait(); err != nil {
		return nil, qmpErr("list disks and block jobs", err)
	}
	busy := busyDisks(ctx, client, disks, jobs)
	spec, err := d.validateCreate(def, req.Flags, domainView{name: domain, disks: disks, busy: busy, mode: dom.mode()})
	if err != nil {
		return nil, err
	}
	spec.quiesce, spec.opID = quiesce, req.OpID
	if spec.opID == "" {
		spec.opID = newOpID()
	} else if _, err := d.store.Op(spec.opID); err == nil {
		return nil, fmt.Errorf("%w: operation id '%s' is in use", ErrInvalidArg, spec.opID)
	}
	// The agent channel is shared with whoever else manages the guest:
	// hold it only for the operation.
	defer dom.agent.Close()
	if quiesce == QuiesceSkip {
		spec.indications = append(spec.indications, Indication{Code: IndNotRequested})
	} else if ind, err := d.checkQuiesce(ctx, dom); err != nil {
		if quiesce == QuiesceRequire {
			return nil, fmt.Errorf("%w: %w", ErrQuiesce, err)
		}
		spec.quiesce = QuiesceSkip
		spec.indications = append(spec.indications, *ind)
	}
	// From the first side effect on, the operation completes or rolls
	// back even if the caller goes away; each QMP command keeps its own
	// ceiling.
	d.cfg.Events.OperationsInFlight(1)
	defer d.cfg.Events.OperationsInFlight(-1)
	res, err := d.create(context.WithoutCancel(ctx), dom, spec, start)
	d.cfg.Events.SnapshotFinished(snapshotEvent(dom.cfg.Name, spec, res, err, time.Since(start)))
	return res, err
}

// snapshotEvent summarises a finished snapshot for metrics and signals.
func snapshotEvent(domain string, spec *createSpec, res *CreateResult, err error, took time.Duration) SnapshotEvent {
	ev := SnapshotEvent{Domain: domain, Name: spec.name, OpID: spec.opID, Mode: string(spec.mode), Duration: took, Err: err}
	if err == nil {
		ev.Result, ev.Quiesced, ev.Freeze = ResultSuccess, res.Quiesced, res.Freeze
		return ev
	}
	ev.Result = ResultFailure
	var oe *OpError
	if errors.As(err, &oe) {
		for _, o := range oe.Disks {
			switch {
			case o.Result.OnOverlay():
				ev.Result = ResultPartial
			case o.Result == transaction.DiskRolledBack && ev.Result != ResultPartial:
				ev.Result = ResultRolledBack
			}
		}
	}
	return ev
}

func (d *Driver) create(ctx context.Context, dom *Domain, spec *createSpec, start time.Time) (*CreateResult, error) {
	op := &OpRecord{ID: spec.opID, Domain: dom.cfg.Name, Kind: "snapshot", Snapshot: spec.name, Flags: spec.flags, Started: start.UTC()}
	// Node names come from a fresh random tag, not the operation id a
	// client may have chosen: they must differ between operations.
	tag := newOpID()
	plan := &transaction.Plan{OpID: op.ID, Domain: dom.cfg.Name, Mode: spec.mode, Phase: transaction.PhasePrepared}
	for i, ds := range spec.disks {
		if !ds.external {
			continue
		}
		plan.Disks = append(plan.Disks, &transaction.Disk{
			Target: ds.Target, Node: ds.NodeName, Source: ds.File, SourceFormat: ds.Format,
			VirtualSize: ds.VirtualSize, Overlay: ds.overlay, OverlayNode: transaction.NodeName(tag, i),
			Reuse: ds.reuse, WasEmpty: ds.wasEmpty, State: transaction.DiskPlanned,
		})
	}
	op.Plan = plan
	log := dom.log.With(zap.String("op", op.ID), zap.String("snapshot", spec.name))
	exec := d.executor(dom, op)

	if err := d.store.SaveOp(op); err != nil {
		return nil, &OpError{OpID: op.ID, Step: StepPrepare, Err: fmt.Errorf("%w: journal: %w", ErrOperationFailed, err)}
	}
	var undo revert.Stack
	undo.Add(func(ctx context.Context) error { return exec.Cleanup(ctx, plan) })
	if err := d.hook(HookPrepared); err != nil {
		return nil, d.fail(ctx, dom, op, &undo, StepPrepare, err)
	}
	if err := exec.Prepare(ctx, plan); err != nil {
		return nil, d.fail(ctx, dom, op, &undo, StepPrepare, qmpErr("prepare", err))
	}
	if err := d.hook(HookOverlays); err != nil {
		return nil, d.fail(ctx, dom, op, &undo, StepPrepare, err)
	}

	plan.Phase = transaction.PhaseSwitching
	if err := d.store.SaveOp(op); err != nil {
		return nil, d.fail(ctx, dom, op, &undo, StepSwitch, fmt.Errorf("%w: journal: %w", ErrOperationFailed, err))
	}
	if err := d.hook(HookSwitching); err != nil {
		return nil, d.fail(ctx, dom, op, &undo, StepSwitch, err)
	}
	indications := spec.indications
	var gf *guestFreeze
	if spec.quiesce != QuiesceSkip {
		var err error
		gf, _, err = d.freezeGuest(ctx, dom, OwnerSnapshot, op.ID, nil, d.cfg.MaxFreeze)
		if err != nil {
			if spec.quiesce == QuiesceRequire {
				return nil, d.fail(ctx, dom, op, &undo, StepFreeze, fmt.Errorf("%w: freeze: %w", ErrQuiesce, agentErr(err)))
			}
			ind := notQuiesced(err)
			if errors.Is(err, guestagent.ErrUnresponsive) {
				ind.Code = IndFreezeTimeout
			}
			indications = append(indications, ind)
		} else if err := d.hook(HookFrozen); err != nil {
			d.thawGuest(dom, gf, false)
			return nil, d.fail(ctx, dom, op, &undo, StepFreeze, err)
		}
	}
	// Registered before the switch: a switch whose reply was lost may
	// still have happened, and Rollback acts only on switched disks.
	undo.Add(func(ctx context.Context) error { return exec.Rollback(ctx, plan) })
	switchErr := exec.Switch(ctx, plan)
	quiesced, freezeWindow := false, time.Duration(0)
	var freezeCall, thawCall time.Duration
	if gf != nil {
		thawed := d.awaitThaw(dom, gf)
		// The timer thaws at the deadline; a switch that ended after it
		// ran (at least partly) with the guest thawed.
		late := plan.SwitchEnd.After(gf.sent.Add(d.cfg.MaxFreeze)) || (thawed && gf.byTimer)
		switch {
		case late:
			indications = append(indications, Indication{Code: IndDeadlineExceeded,
				Message: fmt.Sprintf("the switch outlasted the %v freeze deadline; the guest was thawed first", d.cfg.MaxFreeze)})
		case !thawed:
			quiesced = true
			indications = append(indications, Indication{Code: IndThawFailed, Message: "the thaw has not answered yet; the daemon keeps trying"})
		case holdExpired(gf.err):
			indications = append(indications, Indication{Code: IndHoldExpired, Message: gf.err.Error()})
		default:
			quiesced = true
			if gf.err != nil {
				indications = append(indications, Indication{Code: IndThawFailed, Message: gf.err.Error()})
			}
		}
		freezeWindow = time.Since(gf.sent)
		if thawed {
			freezeWindow = gf.thawedAt.Sub(gf.sent)
			freezeCall, thawCall = gf.frozenAt.Sub(gf.sent), gf.thawedAt.Sub(gf.thawSent)
		}
	}
	if err := switchErr; err != nil {
		if errors.Is(err, transaction.ErrStateUnknown) {
			// Deleting files QEMU may use would be worse than leaving
			// them: the journal keeps the operation for recovery.
			dom.requestRecovery()
			return nil, &OpError{OpID: op.ID, Step: StepSwitch, Disks: plan.Outcomes(),
				Err: fmt.Errorf("%w: %w; recovery will reconcile the disks", ErrOperationFailed, err)}
		}
		return nil, d.fail(ctx, dom, op, &undo, StepSwitch, qmpErr("switch", err))
	}
	if spec.quiesce == QuiesceRequire && !quiesced {
		last := indications[len(indications)-1]
		return nil, d.fail(ctx, dom, op, &undo, StepThaw, fmt.Errorf("%w: %s: %s", ErrQuiesce, last.Code, last.Message))
	}
	if quiesced {
		indications = append([]Indication{{Code: IndQuiesced}}, indications...)
	}
	if err := d.hook(HookSwitched); err != nil {
		return nil, d.fail(ctx, dom, op, &undo, StepSwitch, err)
	}

	if err := exec.SyncDirs(plan); err != nil {
		return nil, d.fail(ctx, dom, op, &undo, StepRecord, fmt.Errorf("%w: %w", ErrOperationFailed, err))
	}
	rec := d.record(dom, spec, plan)
	plan.Phase = transaction.PhaseDone
	var err error
	if spec.flags&FlagNoMetadata != 0 {
		err = d.store.SaveOp(op)
	} else if rec.XML, err = snapshotXML(&rec); err == nil {
		err = d.store.PutSnapshot(rec, true, op)
	}
	if err != nil {
		plan.Phase = transaction.PhaseSwitching
		return nil, d.fail(ctx, dom, op, &undo, StepRecord, fmt.Errorf("%w: record metadata: %w", ErrOperationFailed, err))
	}
	undo.Release()
	// The snapshot is durable: a failure from here on does not undo it.
	_ = d.hook(HookCommitted)

	res := &CreateResult{
		Name: spec.name, XML: rec.XML, OpID: op.ID, Mode: plan.Mode, Disks: plan.Outcomes(),
		Quiesced: quiesced, Indications: indications, Switch: plan.SwitchWindow(), Freeze: freezeWindow,
		freezeCall: freezeCall, thawCall: thawCall,
	}
	if res.XML == "" { // NO_METADATA: still show what was taken
		res.XML, _ = snapshotXML(&rec)
	}
	if spec.flags&FlagHalt != 0 {
		if err := dom.client.Quit(ctx); err != nil {
			// The snapshot is durable; HALT failing does not undo it.
			res.Indications = append(res.Indications, Indication{Code: IndHaltFailed, Message: err.Error()})
		} else {
			res.Indications = append(res.Indications, Indication{Code: IndHalted})
		}
	}
	res.Total = time.Since(start)
	for _, pd := range plan.Disks {
		log.Debug("disk switched", zap.String("disk", pd.Target), zap.String("overlay", pd.Overlay), zap.String("backing", pd.Source))
	}
	log.Info("snapshot created", zap.String("mode", string(plan.Mode)), zap.Int("disks", len(plan.Disks)),
		zap.Bool("quiesced", quiesced), zap.Float64("freeze_seconds", res.Freeze.Seconds()),
		zap.Float64("switch_seconds", res.Switch.Seconds()), zap.Float64("duration_seconds", res.Total.Seconds()))
	return res, nil
}

// fail undoes what the operation did and closes its journal entry. The
// error carries every disk's outcome.
func (d *Driver) fail(ctx context.Context, dom *Domain, op *OpRecord, undo *revert.Stack, step string, cause error) error {
	rerr := undo.Revert(ctx)
	plan := op.Plan
	plan.Phase = transaction.PhaseFailed
	err := cause
	if rerr != nil {
		err = fmt.Errorf("%w; undo: %w", cause, rerr)
	}
	if errors.Is(rerr, qmp.ErrDisconnected) || errors.Is(rerr, transaction.ErrStateUnknown) {
		// QEMU went away before the undo finished: the journal entry
		// stays open, and recovery finishes the undo on reconnect.
		plan.Phase = transaction.PhaseSwitching
		dom.requestRecovery()
	}
	op.Error = err.Error()
	if serr := d.store.SaveOp(op); serr != nil {
		dom.log.Error("journal of failed operation not saved", zap.String("op", op.ID), zap.Error(serr))
	}
	dom.log.Info("snapshot failed", zap.String("op", op.ID), zap.String("step", step),
		zap.String("mode", string(plan.Mode)), zap.Int("stuck", len(plan.Stuck())))
	return &OpError{OpID: op.ID, Step: step, Disks: plan.Outcomes(), Err: err}
}

// executor binds the transaction executor to a domain and an operation's
// journal entry.
func (d *Driver) executor(dom *Domain, op *OpRecord) *transaction.Executor {
	return &transaction.Executor{
		QMP:             dom.client,
		Journal:         opJournal{store: d.store, op: op},
		Log:             dom.log,
		RollbackTimeout: d.cfg.RollbackTimeout,
		BeforeSwitch:    func(pd *transaction.Disk) error { return d.hook("switch:" + pd.Target) },
		OnRollback:      d.cfg.Events.RollbackFinished,
		AfterCommitStart: func(pd *transaction.Disk) error {
			return d.hook("rollback:" + pd.Target)
		},
	}
}

type opJournal struct {
	store *Store
	op    *OpRecord
}

func (j opJournal) Save(_ context.Context, p *transaction.Plan) error {
	j.op.Plan = p
	return j.store.SaveOp(j.op)
}

// record builds the metadata of a snapshot that was taken.
func (d *Driver) record(dom *Domain, spec *createSpec, plan *transaction.Plan) SnapshotRecord {
	parent, _ := d.store.Current(dom.cfg.Name)
	info := dom.Info()
	rec := SnapshotRecord{
		Name: spec.name, Description: spec.description, CreationTime: spec.created.Unix(),
		State: "disk-snapshot", Parent: parent,
		Domain: DomainIdentity{Name: dom.cfg.Name, UUID: info.UUID, QMP: dom.cfg.QMP},
	}
	byTarget := map[string]*transaction.Disk{}
	for _, pd := range plan.Disks {
		byTarget[pd.Target] = pd
	}
	for _, ds := range spec.disks {
		sd := SnapshotDisk{Target: ds.Target, Snapshot: "no"}
		if pd, ok := byTarget[ds.Target]; ok {
			sd = SnapshotDisk{Target: pd.Target, Snapshot: "external", Overlay: pd.Overlay, Backing: pd.Source, BackingFormat: pd.SourceFormat}
		}
		rec.Disks = append(rec.Disks, sd)
	}
	return rec
}

// redefine stores metadata given with REDEFINE; no disk changes.
func (d *Driver) redefine(dom *Domain, def *libvirtxml.DomainSnapshot, flags CreateFlags) (*CreateResult, error) {
	if err := d.validateRedefine(dom.cfg.Name, def); err != nil {
		return nil, err
	}
	created, _ := strconv.ParseInt(def.CreationTime, 10, 64)
	rec := SnapshotRecord{
		Name: def.Name, Description: def.Description, CreationTime: created, State: def.State,
		Domain: DomainIdentity{Name: dom.cfg.Name, UUID: dom.Info().UUID, QMP: dom.cfg.QMP},
	}
	if def.Parent != nil {
		rec.Parent = def.Parent.Name
	}
	if def.Domain != nil && def.Domain.UUID != "" {
		rec.Domain.UUID = def.Domain.UUID
	}
	if def.Disks != nil {
		for _, sd := range def.Disks.Disks {
			disk := SnapshotDisk{Target: sd.Name, Snapshot: sd.Snapshot}
			if sd.Source != nil && sd.Source.File != nil {
				disk.Overlay = sd.Source.File.File
			}
			rec.Disks = append(rec.Disks, disk)
		}
	}
	xml, err := def.Marshal()
	if err != nil {
		return nil, fmt.Errorf("%w: marshal snapshot XML: %v", ErrInvalidArg, err)
	}
	rec.XML = xml
	if err := d.store.PutSnapshot(rec, flags&FlagCurrent != 0, nil); err != nil {
		if errors.Is(err, ErrInvalidArg) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: store snapshot metadata: %w", ErrOperationFailed, err)
	}
	return &CreateResult{Name: rec.Name, XML: rec.XML, Disks: []transaction.Outcome{}, Indications: []Indication{{Code: IndRedefined}}}, nil
}
