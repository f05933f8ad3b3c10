package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/qsnapd/qsnapd/qmp"
	"github.com/qsnapd/qsnapd/transaction"
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
		if err := d.recoverOp(ctx, dom, op); err != nil {
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
	exec := d.executor(dom, op)
	rbErr := exec.Rollback(ctx, plan)
	cleanErr := exec.Cleanup(ctx, plan)
	plan.Phase = transaction.PhaseFailed
	op.Error = ErrInterrupted.Error()
	if err := errors.Join(rbErr, cleanErr); err != nil {
		op.Error += ": " + err.Error()
	}
	if err := d.store.SaveOp(op); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
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
