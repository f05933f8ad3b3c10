package driver

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"libvirt.org/go/libvirtxml"

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
	SwitchPath  transaction.Switch    `json:"switch_path"` // overlays opened in the switch (sync) or before it (preadd)
	Disks       []transaction.Outcome `json:"disks"`
	Quiesced    bool                  `json:"quiesced"`
	Indications []Indication          `json:"indications"`
	// Total is the whole request; Switch the block graph change; Freeze
	// the freeze window, from freeze sent to thaw reply.
	Total  time.Duration `json:"total_ns"`
	Switch time.Duration `json:"switch_ns"`
	Freeze time.Duration `json:"freeze_ns"`

	// The agent's round trips inside the freeze window, and the prepare
	// step, for benchmarks.
	freezeCall, thawCall, prepare time.Duration
}

// OpError is a failed operation with each disk's outcome.
type OpError struct {
	OpID  string
	Step  string
	Disks []transaction.Outcome
	Err   error

	// pending: the disks' state is unknown and the journal entry open
	// for recovery, whose outcome the caller waits for (awaitCreate).
	pending bool
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
	if req.QuiesceScope, err = resolveScope(req.QuiesceScope, d.cfg.QuiesceScope); err != nil {
		return nil, err
	}
	def, err := parseSnapshotXML(req.XML)
	if err != nil {
		return nil, err
	}
	if err := dom.awaitFirstAttempt(ctx); err != nil {
		return nil, err
	}
	unlock, err := dom.acquire(ctx)
	if err != nil {
		return nil, err
	}
	if req.Flags&FlagRedefine != 0 {
		defer unlock()
		return d.redefine(dom, def, req.Flags)
	}
	// What the agent must say before a freeze is asked now, and heard
	// at the freeze step: meanwhile QEMU is queried and the overlays
	// prepared. It outlives the caller's interest, as the steps do.
	var check *quiesceCheck
	if quiesce != QuiesceSkip {
		check = d.startQuiesceCheck(context.WithoutCancel(ctx), dom)
	}
	// The operation ends with the domain's lock (before the wait for
	// recovery, if there is one), once the agent check is over: a
	// per-operation agent channel is released then.
	release := sync.OnceFunc(func() {
		_, _ = check.wait() // its answer matters to the freeze step alone
		dom.releaseAgent()
		unlock()
	})
	defer release()

	spec, err := d.specFor(ctx, dom, def, req, quiesce)
	if err != nil {
		return nil, err
	}
	spec.check = check
	// From the first side effect on, the operation completes or rolls
	// back even if the caller goes away; each QMP command keeps its own
	// ceiling.
	d.cfg.Events.OperationsInFlight(1)
	defer d.cfg.Events.OperationsInFlight(-1)
	res, err := d.create(context.WithoutCancel(ctx), dom, spec, start)
	if oe := (*OpError)(nil); errors.As(err, &oe) && oe.pending {
		// QEMU may answer again: wait for recovery's outcome.
		res, err = d.awaitCreate(ctx, dom, oe, release)
	}
	if rf := (*refusal)(nil); errors.As(err, &rf) {
		return nil, rf.err // refused before the freeze: no snapshot was tried
	}
	d.cfg.Events.SnapshotFinished(snapshotEvent(dom.cfg.Name, spec, res, err, time.Since(start)))
	return res, err
}

// specFor checks a request against the domain as QEMU sees it now,
// before anything changes. The caller holds the domain's lock.
func (d *Driver) specFor(ctx context.Context, dom *Domain, def *libvirtxml.DomainSnapshot, req CreateRequest, quiesce QuiesceMode) (*createSpec, error) {
	client, err := dom.ready()
	if err != nil {
		return nil, err
	}
	view, err := dom.readDisks(ctx, client)
	if err != nil {
		return nil, qmpErr("list disks and block jobs", err)
	}
	validate := func(view diskView) (*createSpec, error) {
		busy := busyDisks(ctx, client, view.disks, view.jobs)
		return d.validateCreate(def, req.Flags, domainView{name: dom.cfg.Name, disks: view.disks, busy: busy, mode: dom.mode()})
	}
	spec, err := validate(view)
	if view.recorded && (err != nil || spec.overlayExists()) {
		// No refusal rests on the record, nor the acceptance of an
		// overlay that exists: the chains below the active images
		// matter for these, and only QEMU's full answer has them.
		if view, err = dom.readAll(ctx, client); err != nil {
			return nil, qmpErr("list disks and block jobs", err)
		}
		spec, err = validate(view)
	}
	if err != nil {
		return nil, err
	}
	spec.quiesce, spec.opID = quiesce, req.OpID
	if spec.opID == "" {
		spec.opID = newOpID()
	} else if _, err := d.store.Op(spec.opID); err == nil {
		return nil, fmt.Errorf("%w: operation id '%s' is in use", ErrInvalidArg, spec.opID)
	}
	if quiesce == QuiesceSkip {
		spec.indications = append(spec.indications, Indication{Code: IndNotRequested})
	}
	// The agent's answer (checkQuiesce) comes at the freeze step.
	if spec.quiesce != QuiesceSkip && req.QuiesceScope == ScopeSnapshotDisks {
		var ind Indication
		spec.mountpoints, ind = d.scopeFreeze(ctx, dom, client, spec)
		spec.indications = append(spec.indications, ind)
	}
	spec.switchPath, spec.switchWhy = d.switchFor(dom, spec.quiesce)
	return spec, nil
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
			sd = SnapshotDisk{Target: pd.Target, Snapshot: "external", Overlay: pd.Overlay, Backing: pd.Source, BackingFormat: pd.SourceFormat,
				Created: !pd.Reuse && !pd.WasEmpty}
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
