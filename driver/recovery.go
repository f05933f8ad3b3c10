package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/qsnapd/qsnapd/qmp"
	"github.com/qsnapd/qsnapd/transaction"
)

// Actions of recovery on an interrupted delete, for OperationRecovered.
const (
	RecoveredMergeCancelled = "merge_cancelled" // before the point of no return: jobs cancelled
	RecoveredMergeFinished  = "merge_finished"  // after it: pending jobs finalized, what merged recorded
)

// ErrInterrupted is the reason recorded for an operation that recovery
// finished: the daemon stopped in the middle of it.
var ErrInterrupted = errors.New("interrupted")

// recoverDomain reconciles the domain's unfinished operations with
// QEMU's truth. It runs under the domain's lock.
func (d *Driver) recoverDomain(ctx context.Context, dom *Domain) error {
	ops, err := d.store.Ops(true)
	if err != nil {
		return fmt.Errorf("read journal: %w", err)
	}
	var errs []error
	for _, op := range ops {
		if op.Domain != dom.cfg.Name {
			continue
		}
		recoverOp := d.recoverOp
		if op.Kind == KindSnapshotDelete {
			recoverOp = d.recoverDelete
		}
		if err := recoverOp(ctx, dom, op); err != nil {
			errs = append(errs, fmt.Errorf("operation %s: %w", op.ID, err))
		}
	}
	return errors.Join(errs...)
}

// recoverOp rolls an unfinished operation back to its start: no
// committed snapshot exists for it, so whatever switched goes back, and
// overlays the daemon created that no disk uses are deleted.
func (d *Driver) recoverOp(ctx context.Context, dom *Domain, op *OpRecord) error {
	client := dom.client
	plan := op.Plan
	log := dom.log.With(zap.String("op", op.ID))
	disks, err := client.Disks(ctx)
	if err != nil {
		return qmpErr("list disks", err)
	}
	nodes, err := client.QueryNamedBlockNodes(ctx, true)
	if err != nil {
		return qmpErr("list nodes", err)
	}
	transaction.Reconcile(plan, disks)
	present := map[string]bool{}
	for _, n := range nodes {
		present[n.NodeName] = true
	}
	for _, pd := range plan.Disks {
		// The journal was written before each side effect, so it may
		// not know the effect happened: QEMU and the filesystem tell.
		if present[pd.OverlayNode] {
			pd.NodeAdded = true
		}
		if !pd.Reuse && !pd.FileCreated {
			if _, err := os.Stat(pd.Overlay); err == nil {
				pd.FileCreated = true
			}
		}
	}
	if err := clearStaleJobs(ctx, client, plan); err != nil {
		return err
	}
	switched := 0
	for _, pd := range plan.Disks {
		if pd.State.OnOverlay() {
			switched++
		}
	}
	// A QEMU restarted since may have left the guest's writes in an
	// overlay it no longer has: that file is not deleted.
	kept := transaction.KeepAfterRestart(plan, present)
	exec := d.executor(dom, op)
	rbErr := exec.Rollback(ctx, plan)
	cleanErr := exec.Cleanup(ctx, plan)
	plan.Phase = transaction.PhaseFailed
	op.Error, op.ErrorKind, op.OutcomeUnknown = ErrInterrupted.Error(), Kind(ErrOperationFailed).String(), false
	if err := errors.Join(rbErr, cleanErr); err != nil {
		op.Error += ": " + err.Error()
	}
	if len(kept) > 0 {
		var paths []string
		for _, pd := range kept {
			paths = append(paths, pd.Target+" "+pd.Overlay)
		}
		op.Error += "; QEMU was restarted since, and these overlays hold writes the guest was told were durable and are kept: " +
			strings.Join(paths, ", ")
	}
	if err := d.store.SaveOp(op); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	d.opResolved(op)
	action := "cleaned"
	if switched > 0 {
		action = "rolled_back"
	}
	d.cfg.Events.OperationRecovered(action)
	log.Info("recovered interrupted operation", zap.String("action", action),
		zap.Int("rolled_back", switched-len(plan.Stuck())), zap.Int("stuck", len(plan.Stuck())))
	return nil
}

// clearStaleJobs cancels rollback jobs a previous daemon left running,
// so that rolling back again can start its own.
func clearStaleJobs(ctx context.Context, client *qmp.Client, plan *transaction.Plan) error {
	ours := map[string]bool{}
	for _, pd := range plan.Disks {
		ours[transaction.JobID(pd)] = true
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		jobs, err := client.QueryBlockJobs(ctx)
		if err != nil {
			return qmpErr("list block jobs", err)
		}
		stale := 0
		for _, j := range jobs {
			if !ours[j.Device] {
				continue
			}
			stale++
			if err := client.BlockJobCancel(ctx, j.Device, true); err != nil && !qmp.IsClass(err, "DeviceNotActive") {
				return qmpErr("cancel stale job "+j.Device, err)
			}
			if j.Status == "concluded" {
				if err := client.JobDismiss(ctx, j.Device); err != nil && !qmp.IsClass(err, "DeviceNotActive") {
					return qmpErr("dismiss stale job "+j.Device, err)
				}
			}
		}
		if stale == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: stale rollback jobs still running", ErrOperationFailed)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// recoverDelete reconciles an interrupted delete with QEMU. Before the
// round's point of no return, whatever job of it runs is cancelled:
// no disk changes. After it, what is pending is finalized. Either way
// the metadata then records what the chains show, and the nodes and
// files of merged overlays go. Rounds not started yet are not run: the
// delete ends failed, and can be asked again.
func (d *Driver) recoverDelete(ctx context.Context, dom *Domain, op *OpRecord) error {
	plan := op.Merge
	log := dom.log.With(zap.String("op", op.ID))
	if plan.Round >= len(plan.Rounds) {
		plan.Phase, op.OutcomeUnknown = transaction.PhaseDone, false
		if err := d.store.SaveOp(op); err != nil {
			return err
		}
		d.opResolved(op)
		return nil
	}
	r := plan.Rounds[plan.Round]
	exec := d.executor(dom, op)
	jobs, err := dom.client.QueryJobs(ctx)
	if err != nil {
		return qmpErr("list jobs", err)
	}
	// The journal is written before each side effect, so a job it
	// calls planned may run: QEMU tells.
	var ready []*transaction.MergeDisk
	for _, md := range r.Commits() {
		i := slices.IndexFunc(jobs, func(j qmp.JobInfo) bool { return j.ID == md.Job })
		if i < 0 {
			// Never started, dismissed already, or lost with a QEMU
			// that restarted: the chain tells what merged. One that
			// started and is gone may have written into its base.
			if md.State != transaction.MergePlanned && md.State != transaction.MergeCancelled && md.State != transaction.MergeFailed {
				md.State = transaction.MergeStarted
			}
			md.NoteJob(qmp.JobInfo{}, false)
			continue
		}
		md.NoteJob(jobs[i], true)
		switch {
		case jobs[i].Status == "ready":
			md.State = transaction.MergeReady
			ready = append(ready, md)
		case jobs[i].Status == "pending":
			md.State = transaction.MergePending
		case jobs[i].Status == "concluded" && jobs[i].Error != "":
			md.State, md.Error = transaction.MergeFailed, jobs[i].Error
		case jobs[i].Status == "concluded":
			md.State = transaction.MergeMerged
		default:
			md.State = transaction.MergeStarted
		}
	}
	action := RecoveredMergeCancelled
	if plan.Phase == transaction.PhaseFinalizing {
		action = RecoveredMergeFinished
		// Active commits are completed before the point of no return;
		// one still READY is completed now.
		if len(ready) > 0 {
			if err := exec.CompleteActive(ctx, &transaction.MergeRound{Snapshot: r.Snapshot, Disks: ready}); err != nil {
				return qmpErr("complete commit", err)
			}
		}
		ferr := exec.FinalizeCommits(ctx, r)
		if slices.ContainsFunc(r.Disks, func(md *transaction.MergeDisk) bool { return md.State == transaction.MergeUnknown }) {
			return qmpErr("finalize", ferr)
		}
		if ferr != nil {
			log.Warn("finalize during recovery failed", zap.Error(ferr))
		}
	} else if err := exec.CancelCommits(ctx, r); err != nil {
		return qmpErr("cancel commit jobs", err)
	}
	disks, err := dom.client.Disks(ctx)
	if err != nil {
		return qmpErr("list disks", err)
	}
	transaction.ReconcileMerge(r, disks)
	finishing := plan.Phase == transaction.PhaseFinalizing
	if finishing || slices.ContainsFunc(r.Disks, func(md *transaction.MergeDisk) bool { return md.State == transaction.MergeMerged }) {
		if finishing { // unlinks belong after the point of no return
			if err := d.deleteDecideFiles(dom, r, disks); err != nil {
				return err
			}
		}
		if err := exec.CleanupMerge(ctx, r); errors.Is(err, qmp.ErrDisconnected) || errors.Is(err, qmp.ErrTimeout) {
			return qmpErr("clean up merged overlays", err)
		} else if err != nil {
			log.Warn("cleanup of merged overlays incomplete", zap.Error(err))
		}
	}
	// The snapshots whose base a job wrote into without merging are
	// marked, in the same transaction as the journal's end.
	ch, err := d.mergeChange(dom.cfg.Name, op.ID, r, disks)
	if err != nil {
		return err
	}
	ch.record = len(ch.gone) > 0 || (finishing && len(r.Disks) == 0)
	plan.Phase = transaction.PhaseFailed
	if ch.record {
		plan.Round++
		if plan.Round == len(plan.Rounds) && whole(r) {
			plan.Phase = transaction.PhaseDone
		}
	}
	op.Error, op.ErrorKind, op.OutcomeUnknown = "", "", false
	if plan.Phase == transaction.PhaseFailed {
		op.Error = fmt.Sprintf("%s: %s of snapshot '%s'", ErrInterrupted, action, r.Snapshot)
		if note := interruptedNote(r, ch); note != "" {
			op.Error += "; " + note
		}
		op.ErrorKind = Kind(ErrOperationFailed).String()
	}
	if err := d.store.applyMerge(dom.cfg.Name, ch, op); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	d.opResolved(op)
	d.cfg.Events.OperationRecovered(action)
	log.Info("recovered interrupted delete", zap.String("action", action), zap.String("snapshot", r.Snapshot),
		zap.Int("merged", len(ch.gone)), zap.Int("marked", len(ch.interrupted)), zap.String("phase", string(plan.Phase)))
	return nil
}
