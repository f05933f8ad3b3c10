package driver

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/qsnapd/qsnapd/internal/revert"
	"github.com/qsnapd/qsnapd/qmp"
	"github.com/qsnapd/qsnapd/transaction"
)

// DeleteFlags are virDomainSnapshotDeleteFlags, with libvirt's values.
type DeleteFlags uint32

const (
	// DeleteChildren deletes the snapshot and all its descendants,
	// deepest first, as one operation. libvirt refuses it for external
	// snapshots; qsnapd merges them all.
	DeleteChildren DeleteFlags = 1 << iota
	// DeleteMetadataOnly forgets the snapshot's metadata and leaves
	// every disk and file as it is.
	DeleteMetadataOnly
	// DeleteChildrenOnly deletes the descendants and keeps the snapshot.
	DeleteChildrenOnly

	deleteFlagsKnown = DeleteChildrenOnly<<1 - 1
)

// DeleteRequest asks for a snapshot's deletion.
type DeleteRequest struct {
	Flags DeleteFlags
	// Bandwidth caps each commit job, in bytes per second; 0 is no cap.
	Bandwidth int64
	// OpID is the caller's operation id; empty for a new one.
	OpID string
}

// Merge results of one disk of one deleted snapshot.
const (
	MergeMerged    = "merged"    // the overlay was committed into its base and left the chain
	MergeUnchanged = "unchanged" // nothing was done to this disk
	MergeFailed    = "failed"    // the commit failed or was cancelled; the disk is as it was
	MergeUnknown   = "unknown"   // the outcome is not known; recovery reconciles it
	MergeUnlinked  = "unlinked"  // a leaf's overlay outside every chain: its file was deleted
)

// MergeOutcome is what a delete did to one disk of one snapshot.
type MergeOutcome struct {
	Snapshot string `json:"snapshot"`
	Target   string `json:"target"`
	// Overlay is the snapshot's overlay (the commit's top), Base the
	// image it was merged into.
	Overlay string `json:"overlay"`
	Base    string `json:"base,omitempty"`
	Result  string `json:"result"`
	// FileDeleted says the overlay's file is gone; a file the caller
	// supplied (REUSE_EXT) is merged but kept, and Kept says where.
	FileDeleted bool   `json:"file_deleted"`
	Kept        string `json:"kept,omitempty"`
	// Reason says why a file was kept.
	Reason string `json:"reason,omitempty"`
	Error  string `json:"error,omitempty"`
}

// DeleteResult describes a delete that was carried out.
type DeleteResult struct {
	OpID string `json:"operation"`
	// Deleted are the snapshots whose metadata is gone, deepest first.
	Deleted     []string       `json:"deleted"`
	Disks       []MergeOutcome `json:"disks"`
	MergedBytes int64          `json:"merged_bytes"`
	Total       time.Duration  `json:"total_ns"`
}

// DeleteError is a delete that failed after validation: each disk's
// outcome, and the snapshots deleted before the failure (with CHILDREN,
// earlier rounds may have merged).
type DeleteError struct {
	OpID    string
	Step    string
	Deleted []string
	Disks   []MergeOutcome
	Err     error

	// pending: QEMU's word is missing and the journal entry open for
	// recovery, whose outcome the caller waits for (awaitDelete).
	pending bool
}

func (e *DeleteError) Error() string { return e.Err.Error() }

func (e *DeleteError) Unwrap() error { return e.Err }

// Steps of a snapshot delete, as errors name them.
const (
	StepMerge    = "merge"    // start the jobs and wait until they copied
	StepFinalize = "finalize" // past the point of no return
	StepCleanup  = "cleanup"  // nodes and files of merged overlays
)

// Hook points of a snapshot delete, in each round, right after the
// journal records the state the next side effect starts from.
const (
	HookDeletePlanned    = "delete:planned"    // round journaled with its nodes; no job yet
	HookDeleteStarted    = "delete:started"    // every commit job started
	HookDeleteCopied     = "delete:copied"     // active commits READY, the others PENDING
	HookDeleteFinalizing = "delete:finalizing" // past the point of no return; nothing completed or finalized yet
	HookDeleteCompleted  = "delete:completed"  // active commits completed: every job PENDING, no chain changed yet
	HookDeleteFinalized  = "delete:finalized"  // jobs finalized and dismissed; nodes and files still there
	HookDeleteCleaned    = "delete:cleaned"    // nodes and files removed; metadata not yet recorded
	HookDeleteRecorded   = "delete:recorded"   // the round's metadata and journal are durable
)

// check applies the rules on flag combinations.
func (f DeleteFlags) check() error {
	switch {
	case f&^deleteFlagsKnown != 0:
		return fmt.Errorf("%w: unknown delete flag bits %#x", ErrInvalidArg, uint32(f&^deleteFlagsKnown))
	case f&DeleteChildren != 0 && f&DeleteChildrenOnly != 0:
		return fmt.Errorf("%w: CHILDREN and CHILDREN_ONLY are mutually exclusive", ErrInvalidArg)
	case f&DeleteMetadataOnly != 0 && f&(DeleteChildren|DeleteChildrenOnly) != 0:
		// libvirt allows it; qsnapd keeps metadata-only to one snapshot,
		// so that it never forgets overlays that a merge would need.
		return fmt.Errorf("%w: METADATA_ONLY deletes one snapshot's metadata; delete each descendant's first, or merge them with CHILDREN or CHILDREN_ONLY", ErrUnsupported)
	}
	return nil
}

// DeleteSnapshot deletes a snapshot as virDomainSnapshotDelete does.
// With DeleteMetadataOnly only the metadata goes; otherwise each of the
// snapshot's overlays is merged into its base, all disks or none.
//
// A merge goes on when ctx ends; only CancelOperation with the
// operation's id stops it, and only before its point of no return.
func (d *Driver) DeleteSnapshot(ctx context.Context, domain, name string, req DeleteRequest) (*DeleteResult, error) {
	start := time.Now()
	dom, err := d.domain(domain)
	if err != nil {
		return nil, err
	}
	if err := req.Flags.check(); err != nil {
		return nil, err
	}
	if req.Bandwidth < 0 {
		return nil, fmt.Errorf("%w: bandwidth must not be negative", ErrInvalidArg)
	}
	if req.Flags&DeleteMetadataOnly != 0 {
		return d.deleteMetadata(ctx, dom, name, req, start)
	}
	opID := req.OpID
	if opID == "" {
		opID = newOpID()
	} else if _, err := d.store.Op(opID); err == nil {
		return nil, fmt.Errorf("%w: operation id '%s' is in use", ErrInvalidArg, opID)
	}
	run, err := d.running.begin(opID, domain)
	if err != nil {
		return nil, err
	}
	defer d.running.end(run)
	// Waiting for the domain and validating can be cancelled too.
	wctx, stopWait := context.WithCancelCause(ctx)
	defer stopWait(nil)
	run.setCancel(stopWait)
	if err := dom.awaitFirstAttempt(wctx); err != nil {
		return nil, cancelledOr(wctx, err)
	}
	release, err := dom.acquire(wctx)
	if err != nil {
		return nil, cancelledOr(wctx, err)
	}
	release = sync.OnceFunc(release)
	defer release()
	dp, err := d.planDelete(wctx, dom, name, req.Flags)
	if err != nil {
		return nil, cancelledOr(wctx, err)
	}
	if len(dp.rounds) == 0 { // CHILDREN_ONLY of a leaf
		return &DeleteResult{OpID: opID, Deleted: []string{}, Disks: []MergeOutcome{}, Total: time.Since(start)}, nil
	}
	// From the first side effect on, the merge goes on whatever the
	// caller's ctx does; CancelOperation ends mctx until the point of
	// no return.
	mctx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancel(nil)
	run.setCancel(cancel)
	if errors.Is(context.Cause(wctx), ErrCancelled) { // cancelled just before the swap
		return nil, cancelledOr(wctx, wctx.Err())
	}
	d.cfg.Events.OperationsInFlight(1)
	defer d.cfg.Events.OperationsInFlight(-1)
	res, err := d.merge(context.WithoutCancel(ctx), mctx, dom, dp, opID, req, run, start)
	if de := (*DeleteError)(nil); errors.As(err, &de) && de.pending {
		// QEMU may answer again: wait for recovery's outcome, which no
		// cancel changes any more.
		run.setCancel(nil)
		res, err = d.awaitDelete(ctx, dom, de, release)
	}
	d.cfg.Events.SnapshotDeleted(deleteEvent(domain, opID, dp, res, err, time.Since(start)))
	return res, err
}

// cancelledOr names a cancellation by CancelOperation as such.
func cancelledOr(ctx context.Context, err error) error {
	if errors.Is(context.Cause(ctx), ErrCancelled) {
		return fmt.Errorf("%w: the delete was cancelled before it started; nothing changed", ErrCancelled)
	}
	return err
}

// deleteMetadata forgets one snapshot's record; disks and files stay.
func (d *Driver) deleteMetadata(ctx context.Context, dom *Domain, name string, req DeleteRequest, start time.Time) (*DeleteResult, error) {
	release, err := dom.acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	err = d.store.DeleteSnapshotMetadata(dom.cfg.Name, name)
	if errors.Is(err, ErrNoSnapshot) {
		return nil, err
	}
	res := &DeleteResult{OpID: req.OpID, Deleted: []string{name}, Disks: []MergeOutcome{}, Total: time.Since(start)}
	ev := DeleteEvent{Domain: dom.cfg.Name, Names: res.Deleted, OpID: req.OpID, Result: ResultSuccess, Duration: res.Total}
	if err != nil {
		err = fmt.Errorf("%w: delete metadata of snapshot '%s': %w", ErrOperationFailed, name, err)
		res, ev.Result, ev.Err, ev.Names = nil, ResultFailure, err, nil
	}
	d.cfg.Events.SnapshotDeleted(ev)
	return res, err
}

// deletePlan is a validated delete: the snapshots to delete, deepest
// first, each a round of commits (or unlinks), planned on the chains
// QEMU showed and as each earlier round will leave them.
type deletePlan struct {
	name   string
	flags  DeleteFlags
	rounds []*transaction.MergeRound
}

// planDelete applies libvirt's rules (and qsnapd's for CHILDREN) to a
// delete, against the metadata and QEMU's chains as they are now.
// Nothing changes. The caller holds the domain's lock.
func (d *Driver) planDelete(ctx context.Context, dom *Domain, name string, flags DeleteFlags) (*deletePlan, error) {
	recs, err := d.store.Snapshots(dom.cfg.Name)
	if err != nil {
		return nil, fmt.Errorf("%w: read metadata: %w", ErrOperationFailed, err)
	}
	byName := map[string]*SnapshotRecord{}
	children := map[string][]string{}
	for i := range recs {
		byName[recs[i].Name] = &recs[i]
	}
	for _, r := range recs { // oldest first: children are listed in creation order
		if r.Parent != "" {
			children[r.Parent] = append(children[r.Parent], r.Name)
		}
	}
	if byName[name] == nil {
		return nil, errNoSnapshot(dom.cfg.Name, name)
	}
	var order []string
	if flags&(DeleteChildren|DeleteChildrenOnly) != 0 {
		// Deepest first; of siblings, the newest first.
		var walk func(string)
		walk = func(n string) {
			kids := children[n]
			for i := len(kids) - 1; i >= 0; i-- {
				walk(kids[i])
			}
			order = append(order, n)
		}
		walk(name)
		if flags&DeleteChildrenOnly != 0 {
			order = order[:len(order)-1]
		}
	} else {
		if kids := children[name]; len(kids) > 1 {
			return nil, fmt.Errorf("%w: snapshot '%s' has %d children (%s); merging it needs at most one: delete the others first, or pass CHILDREN",
				ErrUnsupported, name, len(kids), strings.Join(kids, ", "))
		}
		order = []string{name}
	}
	dp := &deletePlan{name: name, flags: flags}
	if len(order) == 0 {
		return dp, nil
	}
	for _, n := range order {
		if err := checkMergeable(byName[n]); err != nil {
			return nil, err
		}
	}

	client, err := dom.ready()
	if err != nil {
		return nil, err
	}
	// The whole graph, never the record of deep chains: a merge plan
	// rests on every file of every chain.
	view, err := dom.readAll(ctx, client)
	if err != nil {
		return nil, qmpErr("list disks and block jobs", err)
	}
	disks := view.disks
	busy := busyDisks(ctx, client, disks, view.jobs)
	chains := map[string][]qmp.Image{}
	for _, qd := range disks {
		chains[qd.Target] = append([]qmp.Image{{File: qd.File, Format: qd.Format}}, qd.Backing...)
	}
	// The tree as each round leaves it: which snapshots remain, and
	// their parents.
	remaining := map[string]string{}
	for _, r := range recs {
		remaining[r.Name] = r.Parent
	}
	tag := newOpID()
	for ri, n := range order {
		rec := byName[n]
		leaf := true
		for _, parent := range remaining {
			if parent == n {
				leaf = false
			}
		}
		round := &transaction.MergeRound{Snapshot: n}
		for di, sd := range rec.Disks {
			if sd.Snapshot != "external" {
				continue
			}
			md, err := planDisk(n, sd, leaf, chains, busy, remaining, byName)
			if err != nil {
				return nil, err
			}
			if !md.Unlink {
				md.Job = transaction.MergeJobID(tag, ri, di)
			}
			round.Disks = append(round.Disks, md)
		}
		dp.rounds = append(dp.rounds, round)
		for child, parent := range remaining {
			if parent == n {
				remaining[child] = remaining[n]
			}
		}
		delete(remaining, n)
	}
	return dp, nil
}

// checkMergeable refuses snapshots whose data a merge cannot delete.
func checkMergeable(rec *SnapshotRecord) error {
	if rec.State != "disk-snapshot" {
		return fmt.Errorf("%w: snapshot '%s' is in state '%s': only external disk-only snapshots can be merged; delete its metadata only",
			ErrUnsupported, rec.Name, rec.State)
	}
	for _, sd := range rec.Disks {
		switch sd.Snapshot {
		case "external":
			if sd.Overlay == "" {
				return fmt.Errorf("%w: disk '%s' of snapshot '%s' names no overlay file; delete its metadata only", ErrUnsupported, sd.Target, rec.Name)
			}
		case "no", "":
		default:
			return fmt.Errorf("%w: disk '%s' of snapshot '%s' is a %s snapshot: only external snapshots can be merged",
				ErrUnsupported, sd.Target, rec.Name, sd.Snapshot)
		}
	}
	return nil
}

// planDisk decides what deleting snapshot n does to one of its disks,
// and updates the disk's chain as the commit will leave it.
func planDisk(n string, sd SnapshotDisk, leaf bool, chains map[string][]qmp.Image, busy map[string]bool,
	remaining map[string]string, byName map[string]*SnapshotRecord) (*transaction.MergeDisk, error) {
	top := filepath.Clean(sd.Overlay)
	md := &transaction.MergeDisk{Target: sd.Target, Top: top, State: transaction.MergePlanned}
	chain := chains[sd.Target]
	at := slices.IndexFunc(chain, func(img qmp.Image) bool { return filepath.Clean(img.File) == top })
	switch {
	case at < 0 && !leaf:
		return nil, fmt.Errorf("%w: disk '%s': overlay %s of snapshot '%s' is not in the disk's current chain, and the snapshot has children: nothing to merge it into",
			ErrOperationInvalid, sd.Target, sd.Overlay, n)
	case at < 0:
		// A branch left behind: its file goes, unless another snapshot
		// still needs it.
		for other := range remaining {
			if other == n {
				continue
			}
			for _, od := range byName[other].Disks {
				if filepath.Clean(od.Overlay) == top || filepath.Clean(od.Backing) == top {
					return nil, fmt.Errorf("%w: disk '%s': overlay %s of snapshot '%s' is in no chain, but snapshot '%s' still uses it",
						ErrOperationInvalid, sd.Target, sd.Overlay, n, other)
				}
			}
		}
		md.Unlink = true
		return md, nil
	case at+1 >= len(chain):
		return nil, fmt.Errorf("%w: disk '%s': overlay %s of snapshot '%s' is the bottom of the disk's chain: nothing to merge it into",
			ErrOperationInvalid, sd.Target, sd.Overlay, n)
	case sd.Backing != "" && filepath.Clean(sd.Backing) != filepath.Clean(chain[at+1].File):
		return nil, fmt.Errorf("%w: disk '%s': overlay %s of snapshot '%s' sits on %s, but the snapshot was taken on %s",
			ErrOperationInvalid, sd.Target, sd.Overlay, n, chain[at+1].File, sd.Backing)
	case busy[sd.Target]:
		return nil, fmt.Errorf("%w: disk '%s' has an active block job", ErrOperationInvalid, sd.Target)
	}
	md.Active = at == 0
	md.Base, md.BaseFormat = filepath.Clean(chain[at+1].File), chain[at+1].Format
	chains[sd.Target] = slices.Delete(slices.Clone(chain), at, at+1)
	return md, nil
}

// deleteOp is one validated delete from its journal entry to its end.
type deleteOp struct {
	d      *Driver
	dom    *Domain
	dp     *deletePlan
	op     *OpRecord
	plan   *transaction.MergePlan
	exec   *transaction.Executor
	run    *runningOp
	log    *zap.Logger
	start  time.Time
	cancel context.Context // ended by CancelOperation, until the point of no return

	undo      *revert.Stack // the current round's: cancel its jobs
	recorded  bool          // the current round's metadata is durable
	deleted   []string
	prevBytes [2]int64 // done and total of the rounds before
	// marked says which snapshots the current round's record marked
	// merge-interrupted, and why, for the error.
	marked string
}

// merge runs the rounds of a validated delete. Whatever step fails, the
// one deferred call ends the operation and reports.
func (d *Driver) merge(ctx, cancel context.Context, dom *Domain, dp *deletePlan, opID string, req DeleteRequest,
	run *runningOp, start time.Time) (_ *DeleteResult, err error) {
	o, err := d.beginDelete(dom, dp, opID, req, run, start, cancel)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = o.fail(ctx, err)
		}
	}()
	for o.plan.Round < len(o.plan.Rounds) {
		if err := o.round(ctx, o.plan.Rounds[o.plan.Round]); err != nil {
			return nil, err
		}
	}
	return o.finish(), nil
}

// beginDelete journals the plan before any side effect.
func (d *Driver) beginDelete(dom *Domain, dp *deletePlan, opID string, req DeleteRequest, run *runningOp,
	start time.Time, cancel context.Context) (*deleteOp, error) {
	plan := &transaction.MergePlan{OpID: opID, Domain: dom.cfg.Name, Phase: transaction.PhaseMerging,
		Speed: req.Bandwidth, Rounds: dp.rounds}
	op := &OpRecord{ID: opID, Domain: dom.cfg.Name, Kind: KindSnapshotDelete, Snapshot: dp.name,
		DeleteFlags: req.Flags, Started: start.UTC(), Merge: plan}
	if err := d.store.SaveOp(op); err != nil {
		return nil, &DeleteError{OpID: opID, Step: StepMerge, Disks: outcomes(plan, false),
			Err: fmt.Errorf("%w: journal: %w", ErrOperationFailed, err)}
	}
	return &deleteOp{
		d: d, dom: dom, dp: dp, op: op, plan: plan, exec: d.executor(dom, op), run: run,
		log:   dom.log.With(zap.String("op", opID), zap.String("snapshot", dp.name)),
		start: start, cancel: cancel, undo: revert.New(),
	}, nil
}

// save journals the plan; a failure is the step's failure.
func (o *deleteOp) save(step string) error {
	if err := o.d.store.SaveOp(o.op); err != nil {
		return atStep(step, fmt.Errorf("%w: journal: %w", ErrOperationFailed, err))
	}
	return nil
}

// saveAndHook journals, then runs the hook point that follows.
func (o *deleteOp) saveAndHook(step, hook string) error {
	if err := o.save(step); err != nil {
		return err
	}
	return atStep(step, o.d.hook(hook))
}

// round deletes one snapshot: every disk merged, or none before the
// point of no return.
func (o *deleteOp) round(ctx context.Context, r *transaction.MergeRound) error {
	o.undo, o.recorded, o.marked = revert.New(), false, ""
	o.plan.Phase = transaction.PhaseMerging
	disks, err := o.exec.ResolveMerge(ctx, r)
	if err != nil {
		return atStep(StepMerge, qmpErr("find the nodes to merge", err))
	}
	if err := o.decideFiles(r, disks); err != nil {
		return atStep(StepMerge, err)
	}
	if err := o.saveAndHook(StepMerge, HookDeletePlanned); err != nil {
		return err
	}
	// Registered before the first job starts: a lost reply may still
	// have started it.
	o.undo.Add(func(ctx context.Context) error { return o.exec.CancelCommits(ctx, r) })
	if err := o.exec.StartCommits(ctx, r, o.plan.Speed); err != nil {
		return atStep(StepMerge, qmpErr("merge", err))
	}
	if err := o.saveAndHook(StepMerge, HookDeleteStarted); err != nil {
		return err
	}
	if err := o.exec.AwaitCopied(ctx, o.cancel, r, o.progress); err != nil {
		return atStep(StepMerge, o.copyErr(err))
	}
	if err := o.saveAndHook(StepMerge, HookDeleteCopied); err != nil {
		return err
	}
	// The point of no return is journaled before the first complete:
	// from the complete to the finalize QEMU holds the guest's I/O on
	// an active commit's disk, and no journal write belongs in there.
	if err := o.pointOfNoReturn(); err != nil {
		return err
	}
	if err := o.save(StepFinalize); err != nil {
		o.plan.Phase = transaction.PhaseMerging // nothing finalized: the jobs are cancelled
		return err
	}
	if err := atStep(StepFinalize, o.d.hook(HookDeleteFinalizing)); err != nil {
		return err
	}
	held := time.Now()
	if err := o.exec.CompleteActive(ctx, r); err != nil {
		// Nothing is finalized yet: unless a reply was lost, every job
		// is cancelled and no disk changes, as before the point of no
		// return. A daemon that dies meanwhile finishes the merge.
		if !slices.ContainsFunc(r.Disks, func(md *transaction.MergeDisk) bool { return md.State == transaction.MergeUnknown }) {
			o.plan.Phase = transaction.PhaseMerging
		}
		return atStep(StepMerge, o.copyErr(err))
	}
	if err := atStep(StepFinalize, o.d.hook(HookDeleteCompleted)); err != nil {
		return err
	}
	// Past this point nothing is cancelled: what QEMU finalizes stays
	// merged, and the metadata records exactly that.
	o.undo.Release()
	ferr := o.exec.FinalizeCommits(ctx, r)
	o.log.Debug("commit jobs finalized", zap.String("round", r.Snapshot),
		zap.Float64("io_held_seconds", time.Since(held).Seconds()))
	if slices.ContainsFunc(r.Disks, func(md *transaction.MergeDisk) bool { return md.State == transaction.MergeUnknown }) {
		// A finalize whose reply was lost: recovery asks QEMU.
		return atStep(StepFinalize, qmpErr("finalize", cmp.Or(ferr, errors.New("a job's end is unknown"))))
	}
	if disks, err = o.dom.client.Disks(ctx); err != nil {
		return atStep(StepFinalize, qmpErr("verify the chains", errors.Join(ferr, err)))
	}
	transaction.ReconcileMerge(r, disks)
	if err := o.saveAndHook(StepFinalize, HookDeleteFinalized); err != nil {
		return err
	}
	cerr := o.exec.CleanupMerge(ctx, r)
	if errors.Is(cerr, qmp.ErrDisconnected) || errors.Is(cerr, qmp.ErrTimeout) {
		// Without QEMU's word no file goes: recovery cleans up and
		// records once QEMU answers again.
		return atStep(StepCleanup, qmpErr("clean up merged overlays", cerr))
	}
	if cerr != nil {
		o.log.Warn("cleanup of merged overlays incomplete", zap.Error(cerr))
	}
	if err := o.saveAndHook(StepCleanup, HookDeleteCleaned); err != nil {
		return err
	}
	if err := o.record(r, disks); err != nil {
		return err
	}
	if err := atStep(StepRecord, o.d.hook(HookDeleteRecorded)); err != nil {
		return err
	}
	if ferr != nil {
		return atStep(StepFinalize, fmt.Errorf("%w: %w", ErrOperationFailed, ferr))
	}
	return nil
}

// copyErr names why the copy ended: CancelOperation, or a job or QEMU.
func (o *deleteOp) copyErr(err error) error {
	if errors.Is(context.Cause(o.cancel), ErrCancelled) {
		return fmt.Errorf("%w: the delete was cancelled before its point of no return", ErrCancelled)
	}
	if errors.Is(err, transaction.ErrJobFailed) {
		return fmt.Errorf("%w: %w", ErrOperationFailed, err)
	}
	return qmpErr("merge", err)
}

// pointOfNoReturn makes the operation no longer cancellable, unless it
// was cancelled already, and moves the round to finalizing: a daemon
// that dies from here on finishes the merge on restart. Once one round
// passed it, later rounds are not cancellable either: the operation
// has changed disks.
func (o *deleteOp) pointOfNoReturn() error {
	o.run.setCancel(nil)
	if errors.Is(context.Cause(o.cancel), ErrCancelled) {
		return atStep(StepMerge, fmt.Errorf("%w: the delete was cancelled before its point of no return", ErrCancelled))
	}
	o.plan.Phase = transaction.PhaseFinalizing
	return nil
}

// progress reports the jobs' progress, with the rounds before.
func (o *deleteOp) progress(done, total int64) {
	o.run.setProgress(o.prevBytes[0]+done, o.prevBytes[1]+total)
	o.d.cfg.Events.MergeProgress(o.dom.cfg.Name, o.op.ID, o.prevBytes[0]+done, o.prevBytes[1]+total)
}

// decideFiles says, for each overlay of the round, whether its file may
// go once merged: only if the daemon created it and no other snapshot
// needs it. A snapshot whose overlay is in the chain right above it is
// rebased by QEMU; one outside the chain would be left without its
// backing file.
func (o *deleteOp) decideFiles(r *transaction.MergeRound, disks []qmp.Disk) error {
	return o.d.deleteDecideFiles(o.dom, r, disks)
}

// deleteDecideFiles is decideFiles, for recovery too: whether the
// daemon created each overlay comes from the snapshot's record.
func (d *Driver) deleteDecideFiles(dom *Domain, r *transaction.MergeRound, disks []qmp.Disk) error {
	recs, err := d.store.Snapshots(dom.cfg.Name)
	if err != nil {
		return fmt.Errorf("%w: read metadata: %w", ErrOperationFailed, err)
	}
	created := map[string]bool{}
	for _, rec := range recs {
		if rec.Name == r.Snapshot {
			for _, sd := range rec.Disks {
				created[sd.Target] = sd.Snapshot == "external" && sd.Created && filepath.Clean(sd.Overlay) != "."
			}
		}
	}
	for _, md := range r.Disks {
		if md.FileDeleted {
			continue
		}
		md.DeleteFile, md.Keep = created[md.Target], ""
		if !md.DeleteFile {
			md.Keep = "the daemon did not create it (REUSE_EXT or a file the caller gave)"
			continue
		}
		var chain []string
		if i := slices.IndexFunc(disks, func(qd qmp.Disk) bool { return qd.Target == md.Target }); i >= 0 {
			chain = transaction.ChainFiles(disks[i])
		}
		for _, rec := range recs {
			if rec.Name == r.Snapshot {
				continue
			}
			for _, sd := range rec.Disks {
				switch {
				case filepath.Clean(sd.Overlay) == md.Top:
					md.DeleteFile, md.Keep = false, "it is also the overlay of snapshot '"+rec.Name+"'"
				case filepath.Clean(sd.Backing) == md.Top && !slices.Contains(chain, filepath.Clean(sd.Overlay)):
					md.DeleteFile, md.Keep = false, "snapshot '"+rec.Name+"' has an overlay outside the chain on it"
				}
			}
		}
	}
	return nil
}

// record makes the round durable: the metadata as the chains now are,
// and the journal's next round, in one store transaction.
func (o *deleteOp) record(r *transaction.MergeRound, disks []qmp.Disk) error {
	ch, err := o.d.mergeChange(o.dom.cfg.Name, o.op.ID, r, disks)
	if err != nil {
		return atStep(StepRecord, err)
	}
	ch.record = len(ch.gone) > 0 || len(r.Disks) == 0
	done, total := r.Bytes()
	phase := o.plan.Phase
	o.plan.Round++
	o.plan.Phase = transaction.PhaseMerging
	if o.plan.Round == len(o.plan.Rounds) {
		o.plan.Phase = transaction.PhaseDone
	}
	if err := o.d.store.applyMerge(o.dom.cfg.Name, ch, o.op); err != nil {
		o.plan.Round--
		o.plan.Phase = phase
		return atStep(StepRecord, fmt.Errorf("%w: record metadata: %w", ErrOperationFailed, err))
	}
	o.recorded, o.marked = true, interruptedNote(r, ch)
	if whole(r) {
		o.deleted = append(o.deleted, r.Snapshot)
	}
	o.prevBytes[0] += done
	o.prevBytes[1] += total
	return nil
}

// whole reports whether every disk of the round left its chain.
func whole(r *transaction.MergeRound) bool {
	for _, md := range r.Disks {
		if md.State != transaction.MergeMerged && md.State != transaction.MergeUnlinked {
			return false
		}
	}
	return true
}

// mergeChange is what a round did, for the metadata: the disks whose
// overlay is gone, and the snapshots QEMU rebased onto a merged base.
//
// It also lists the snapshots to mark merge-interrupted, as operation
// opID: for each disk whose job may have written into its base without
// merging (transaction.MergeRound.BaseWritten), the round's snapshot,
// and any other taken on that base (whose overlay, outside the chain,
// sits on it too): the base held their point in time, and no longer
// holds it exactly.
func (d *Driver) mergeChange(domain, opID string, r *transaction.MergeRound, disks []qmp.Disk) (mergeChange, error) {
	ch := mergeChange{snapshot: r.Snapshot, gone: map[string]bool{}, rebase: map[string]map[string]mergedDisk{},
		interrupted: map[string][]string{}, opID: opID, at: time.Now().UTC()}
	recs, err := d.store.Snapshots(domain)
	if err != nil {
		return ch, fmt.Errorf("%w: read metadata: %w", ErrOperationFailed, err)
	}
	for _, md := range r.BaseWritten() {
		for _, rec := range recs {
			for _, sd := range rec.Disks {
				if sd.Target == md.Target && sd.Snapshot == "external" &&
					(rec.Name == r.Snapshot || filepath.Clean(sd.Backing) == filepath.Clean(md.Base)) {
					ch.interrupted[rec.Name] = append(ch.interrupted[rec.Name], md.Target)
				}
			}
		}
	}
	for _, md := range r.Disks {
		if md.State != transaction.MergeMerged && md.State != transaction.MergeUnlinked {
			continue
		}
		ch.gone[md.Target] = true
		if md.State != transaction.MergeMerged {
			continue
		}
		var chain []string
		if i := slices.IndexFunc(disks, func(qd qmp.Disk) bool { return qd.Target == md.Target }); i >= 0 {
			chain = transaction.ChainFiles(disks[i])
		}
		for _, rec := range recs {
			for _, sd := range rec.Disks {
				if sd.Target == md.Target && filepath.Clean(sd.Backing) == md.Top && slices.Contains(chain, filepath.Clean(sd.Overlay)) {
					if ch.rebase[rec.Name] == nil {
						ch.rebase[rec.Name] = map[string]mergedDisk{}
					}
					ch.rebase[rec.Name][md.Target] = mergedDisk{top: sd.Backing, base: md.Base, baseFormat: md.BaseFormat}
				}
			}
		}
	}
	return ch, nil
}

// finish reports a delete every round of which merged.
func (o *deleteOp) finish() *DeleteResult {
	res := &DeleteResult{OpID: o.op.ID, Deleted: o.deleted, Disks: outcomes(o.plan, false), MergedBytes: mergedBytes(o.plan),
		Total: time.Since(o.start)}
	o.log.Info("snapshot deleted", zap.Strings("deleted", o.deleted), zap.Int64("merged_bytes", res.MergedBytes),
		zap.Float64("duration_seconds", res.Total.Seconds()))
	return res
}

// fail is the one owner of a failed delete's end. Before the round's
// point of no return it cancels the round's jobs: no disk of the round
// changed. After it, the round has recorded what merged, or, if QEMU's
// word is missing, the journal stays open for recovery.
func (o *deleteOp) fail(ctx context.Context, cause error) error {
	step := StepMerge
	var se *stepError
	if errors.As(cause, &se) {
		step, cause = se.step, se.err
	}
	err, unknown := cause, false
	var mark *mergeChange
	switch {
	case o.recorded:
		// A failure after the round's record (a finalize QEMU refused,
		// a hook): the metadata says what merged.
	case o.plan.Phase == transaction.PhaseMerging:
		if rerr := o.undo.Fail(ctx); rerr != nil {
			err = fmt.Errorf("%w; cancel the commit jobs: %w", cause, rerr)
			unknown = true
			break
		}
		// A commit writes into its base as it goes, and a cancel does
		// not take that back: the snapshots whose base took part of
		// the copy are marked, with the journal's end.
		r := o.plan.Rounds[o.plan.Round]
		ch, merr := o.d.mergeChange(o.dom.cfg.Name, o.op.ID, r, nil)
		switch {
		case merr != nil && len(r.BaseWritten()) > 0:
			err = fmt.Errorf("%w; no disk changed, but the merge wrote into the base images of snapshot '%s', which no longer hold its point in time exactly, and it could not be marked so: %w",
				err, r.Snapshot, merr)
		case merr == nil && len(ch.interrupted) > 0:
			mark = &ch
			err = fmt.Errorf("%w; no disk changed, but %s", err, interruptedNote(r, ch))
		}
	default:
		unknown = true
	}
	if unknown {
		// QEMU went away or stopped answering: recovery learns from it
		// what happened, then cancels or finishes.
		for _, md := range o.plan.Rounds[o.plan.Round].Disks {
			if md.State != transaction.MergeMerged && md.State != transaction.MergePlanned && md.State != transaction.MergeCancelled {
				md.State = transaction.MergeUnknown
			}
		}
		err = fmt.Errorf("%w: %w; recovery will reconcile the disks", ErrOperationFailed, err)
		o.dom.requestRecovery()
	} else {
		o.plan.Phase = transaction.PhaseFailed
	}
	if o.recorded && o.marked != "" {
		err = fmt.Errorf("%w; %s", err, o.marked)
	}
	if len(o.deleted) > 0 || o.recorded {
		err = fmt.Errorf("%w (deleted before the failure: %s)", err, deletedList(o.deleted))
	}
	o.op.Error, o.op.Step, o.op.ErrorKind = err.Error(), step, Kind(err).String()
	var serr error
	if mark != nil {
		serr = o.d.store.applyMerge(o.dom.cfg.Name, *mark, o.op)
	} else {
		serr = o.d.store.SaveOp(o.op)
	}
	if serr != nil {
		o.log.Error("journal of failed delete not saved", zap.Error(serr))
		if mark != nil {
			err = fmt.Errorf("%w (but neither the mark nor the journal could be saved: %w)", err, serr)
		}
	}
	o.log.Info("snapshot delete failed", zap.String("step", step), zap.Bool("unknown", unknown),
		zap.Strings("deleted", o.deleted), zap.Error(err))
	return &DeleteError{OpID: o.op.ID, Step: step, Deleted: o.deleted, Disks: outcomes(o.plan, unknown), Err: err, pending: unknown}
}

// interruptedNote says which snapshots ch marks merge-interrupted, and
// why; "" if none.
func interruptedNote(r *transaction.MergeRound, ch mergeChange) string {
	var disks []string
	for _, md := range r.BaseWritten() {
		disks = append(disks, fmt.Sprintf("%s (%s)", md.Target, md.Base))
	}
	if len(ch.interrupted) == 0 || len(disks) == 0 {
		return ""
	}
	what := "the base image of disk " + disks[0] + ", which no longer holds"
	if len(disks) > 1 {
		what = "the base images of disks " + strings.Join(disks, ", ") + ", which no longer hold"
	}
	note := fmt.Sprintf("the merge of snapshot '%s' wrote part of its overlays into %s its point in time exactly (the guest's disks are intact)",
		r.Snapshot, what)
	var names []string
	for name := range ch.interrupted {
		names = append(names, "'"+name+"'")
	}
	slices.Sort(names)
	if len(names) == 1 {
		return note + "; snapshot " + names[0] + " is marked merge-interrupted: deleting it again completes the merge"
	}
	return note + "; snapshots " + strings.Join(names, ", ") + " are marked merge-interrupted: deleting the snapshot again completes the merge"
}

func deletedList(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// outcomes lists what happened to every disk of every round.
func outcomes(p *transaction.MergePlan, unknown bool) []MergeOutcome {
	out := []MergeOutcome{}
	for _, r := range p.Rounds {
		for _, md := range r.Disks {
			o := MergeOutcome{Snapshot: r.Snapshot, Target: md.Target, Overlay: md.Top, Base: md.Base,
				FileDeleted: md.FileDeleted, Error: md.Error}
			switch md.State {
			case transaction.MergeMerged:
				o.Result = MergeMerged
			case transaction.MergeUnlinked:
				o.Result = MergeUnlinked
			case transaction.MergeFailed:
				o.Result = MergeFailed
			case transaction.MergeUnknown:
				o.Result = MergeUnknown
			default:
				o.Result = MergeUnchanged
				if unknown && md.State != transaction.MergePlanned && md.State != transaction.MergeCancelled {
					o.Result = MergeUnknown
				}
			}
			if o.Result == MergeUnlinked && !md.FileDeleted {
				o.Result = MergeUnchanged // outside every chain, and not the daemon's to delete
			}
			if (o.Result == MergeMerged || md.State == transaction.MergeUnlinked) && !md.FileDeleted {
				o.Kept, o.Reason = md.Top, md.Keep
			}
			out = append(out, o)
		}
	}
	return out
}

// DeleteOutcome is a finished delete as its journal entry keeps it, for
// a front end that did not see it end (the daemon restarted since): the
// result of one that succeeded, or the *DeleteError of one that failed,
// as DeleteSnapshot returned them, but for the total time, which is the
// entry's. It is nil, nil for an entry of no delete by merge (op.Merge
// is nil), and for one that has not ended.
func (op *OpRecord) DeleteOutcome() (*DeleteResult, error) {
	p := op.Merge
	if p == nil || p.Phase.Active() {
		return nil, nil
	}
	var deleted []string
	for _, r := range p.Rounds[:min(p.Round, len(p.Rounds))] {
		if whole(r) {
			deleted = append(deleted, r.Snapshot)
		}
	}
	if p.Phase == transaction.PhaseDone {
		return &DeleteResult{OpID: op.ID, Deleted: deleted, Disks: outcomes(p, false), MergedBytes: mergedBytes(p),
			Total: op.Updated.Sub(op.Started)}, nil
	}
	return nil, &DeleteError{OpID: op.ID, Step: op.Step, Deleted: deleted, Disks: outcomes(p, false),
		Err: &kindError{sentinel: sentinelNamed(op.ErrorKind), err: errors.New(op.Error)}}
}

// mergedBytes adds up what the merged disks' jobs copied.
func mergedBytes(p *transaction.MergePlan) int64 {
	var n int64
	for _, r := range p.Rounds {
		for _, md := range r.Disks {
			if md.State == transaction.MergeMerged {
				n += md.Done
			}
		}
	}
	return n
}

// deleteEvent summarises a finished delete for metrics and signals.
func deleteEvent(domain, opID string, dp *deletePlan, res *DeleteResult, err error, took time.Duration) DeleteEvent {
	ev := DeleteEvent{Domain: domain, OpID: opID, Merged: true, Duration: took, Err: err}
	if err == nil {
		ev.Result, ev.Names, ev.MergedBytes = ResultSuccess, res.Deleted, res.MergedBytes
		return ev
	}
	ev.Result = ResultFailure
	if errors.Is(err, ErrCancelled) {
		ev.Result = ResultCancelled
	}
	var de *DeleteError
	if errors.As(err, &de) {
		ev.Names = de.Deleted
		for _, o := range de.Disks {
			if o.Result == MergeMerged || o.Result == MergeUnlinked || o.Result == MergeUnknown {
				ev.Result = ResultPartial
			}
		}
		for _, r := range dp.rounds {
			for _, md := range r.Disks {
				if md.State == transaction.MergeMerged {
					ev.MergedBytes += md.Done
				}
			}
		}
	}
	return ev
}
