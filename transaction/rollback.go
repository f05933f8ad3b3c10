package transaction

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.uber.org/zap"

	"github.com/qsnapd/qsnapd/qmp"
)

// Rollback commits every switched disk back into its original image, in
// reverse order, and verifies each with query-block. Writes the guest
// made to an overlay meanwhile are merged, not lost. A disk whose
// rollback fails is marked stuck and the others still go on. Rollback
// does not stop when ctx is cancelled: a half-done rollback is worse
// than a late one; each disk is bounded by RollbackTimeout instead.
func (e *Executor) Rollback(ctx context.Context, p *Plan) error {
	ctx = context.WithoutCancel(ctx)
	var todo []*Disk
	for i := len(p.Disks) - 1; i >= 0; i-- {
		// A disk whose overlay holds the writes of a QEMU that exited
		// has nothing to commit into: it stays as it is.
		if s := p.Disks[i].State; s.OnOverlay() && s != DiskHoldsGuestWrites {
			todo = append(todo, p.Disks[i])
		}
	}
	if len(todo) == 0 {
		return nil
	}
	p.Phase = PhaseRollingBack
	if err := e.save(ctx, p); err != nil {
		// Without the journal a crash mid-rollback would go unnoticed;
		// rolling back is still better than leaving the disks switched.
		e.log().Warn("journal before rollback failed", zap.String("op", p.OpID), zap.Error(err))
	}
	var errs []error
	for _, d := range todo {
		timeout := e.RollbackTimeout
		if timeout <= 0 {
			timeout = DefaultRollbackTimeout
		}
		dctx, cancel := context.WithTimeout(ctx, timeout)
		err := e.rollbackDisk(dctx, d)
		cancel()
		if err != nil {
			d.State, d.Error = DiskStuck, err.Error()
			errs = append(errs, fmt.Errorf("disk %s: %w", d.Target, err))
		} else {
			d.State, d.Error = DiskRolledBack, ""
		}
		if e.OnRollback != nil {
			e.OnRollback(err == nil)
		}
		if err := e.save(ctx, p); err != nil {
			e.log().Warn("journal after disk rollback failed", zap.String("op", p.OpID), zap.String("disk", d.Target), zap.Error(err))
		}
	}
	if len(errs) > 0 {
		return &RollbackError{Err: fmt.Errorf("%w: %w", ErrRollbackFailed, errors.Join(errs...)), Disks: p.Outcomes()}
	}
	return nil
}

var jobEvents = []string{"BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED", "BLOCK_JOB_ERROR"}

func (e *Executor) rollbackDisk(ctx context.Context, d *Disk) error {
	id := JobID(d)
	// Subscribe first: the job's events may precede block-commit's reply.
	sub, err := e.QMP.Subscribe(qmp.Filter{Names: jobEvents, ID: id})
	if err != nil {
		return err
	}
	defer sub.Close()
	yes := true
	err = e.QMP.BlockCommit(ctx, qmp.BlockCommitArgs{
		JobID:        id,
		Device:       d.OverlayNode,
		TopNode:      d.OverlayNode,
		BaseNode:     d.Node, // without it the commit would go to the deepest image
		AutoFinalize: &yes,
		AutoDismiss:  &yes,
	})
	if err != nil {
		return fmt.Errorf("start commit: %w", err)
	}
	if e.AfterCommitStart != nil {
		if err := e.AfterCommitStart(d); err != nil {
			e.cancelJob(ctx, id)
			return err
		}
	}
	if err := waitJob(ctx, sub, "BLOCK_JOB_READY"); err != nil {
		e.cancelJob(ctx, id)
		return fmt.Errorf("commit: %w", err)
	}
	if err := e.QMP.BlockJobComplete(ctx, id); err != nil {
		e.cancelJob(ctx, id)
		return fmt.Errorf("pivot: %w", err)
	}
	if err := waitJob(ctx, sub, "BLOCK_JOB_COMPLETED"); err != nil {
		return fmt.Errorf("pivot: %w", err)
	}
	// A job cancelled after READY also ends with COMPLETED, without the
	// pivot: only query-block proves the original is active again.
	disks, err := e.QMP.Disks(ctx)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	for _, qd := range disks {
		if qd.Target != d.Target {
			continue
		}
		if qd.NodeName != d.Node || qd.File != d.Source {
			return fmt.Errorf("%w: active image is %s (node %s), want %s (node %s)",
				ErrRollbackUnverified, qd.File, qd.NodeName, d.Source, d.Node)
		}
		return nil
	}
	return fmt.Errorf("%w: disk %s is gone", ErrRollbackUnverified, d.Target)
}

// waitJob waits for the named event of the subscribed job. An error on
// the way, or the job ending first, fails it.
func waitJob(ctx context.Context, sub *qmp.Subscription, want string) error {
	for {
		ev, err := sub.Next(ctx)
		if err != nil {
			return err
		}
		if msg, ok := ev.Data["error"].(string); ok && msg != "" {
			return fmt.Errorf("job %s: %s", ev.Event, msg)
		}
		switch ev.Event {
		case want:
			return nil
		case "BLOCK_JOB_ERROR":
			return fmt.Errorf("job I/O error during %v", ev.Data["operation"])
		case "BLOCK_JOB_CANCELLED", "BLOCK_JOB_COMPLETED":
			return fmt.Errorf("job ended with %s before %s", ev.Event, want)
		}
	}
}

// cancelJob stops a commit that went wrong, so it does not linger; the
// disk stays on its overlay either way.
func (e *Executor) cancelJob(ctx context.Context, id string) {
	if err := e.QMP.BlockJobCancel(context.WithoutCancel(ctx), id, true); err != nil && !qmp.IsClass(err, "DeviceNotActive") {
		e.log().Warn("cancel rollback job failed", zap.String("job", id), zap.Error(err))
	}
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
