package transaction

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/digitalocean/go-qemu/qmp/raw"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/qsnapd/qsnapd/internal/qcow2"
	"github.com/qsnapd/qsnapd/qmp"
)

// Monitor is the part of the QMP client the executor uses.
type Monitor interface {
	Transaction(ctx context.Context, actions ...raw.TransactionAction) error
	BlockdevSnapshot(ctx context.Context, node, overlay string) error
	BlockdevSnapshotSync(ctx context.Context, node, file, overlayNode string) error
	BlockdevAdd(ctx context.Context, o qmp.BlockdevOptions) error
	BlockdevDel(ctx context.Context, nodeName string) error
	BlockCommit(ctx context.Context, a qmp.BlockCommitArgs) error
	BlockJobComplete(ctx context.Context, device string) error
	BlockJobCancel(ctx context.Context, device string, force bool) error
	Subscribe(f qmp.Filter) (*qmp.Subscription, error)
	Disks(ctx context.Context) ([]qmp.Disk, error)
	QueryNamedBlockNodes(ctx context.Context, flat bool) ([]qmp.BlockDeviceInfo, error)
	QueryJobs(ctx context.Context) ([]qmp.JobInfo, error)
	JobComplete(ctx context.Context, id string) error
	JobFinalize(ctx context.Context, id string) error
	JobCancel(ctx context.Context, id string) error
	JobDismiss(ctx context.Context, id string) error
}

var _ Monitor = (*qmp.Client)(nil)

// Journal durably records a plan before each side effect.
type Journal interface {
	Save(ctx context.Context, p *Plan) error
}

// DefaultRollbackTimeout bounds the rollback of one disk: commit, pivot,
// verify.
const DefaultRollbackTimeout = 60 * time.Second

// Executor carries out plans on one domain.
type Executor struct {
	QMP     Monitor
	Journal Journal // may be nil
	Log     *zap.Logger
	// RollbackTimeout bounds each disk's rollback; zero means the default.
	RollbackTimeout time.Duration
	// BeforeSwitch, when set, runs right before each disk's switch (once,
	// with the first disk, in atomic mode); an error fails that disk.
	BeforeSwitch func(d *Disk) error
	// AfterCommitStart, when set, runs once a disk's rollback commit has
	// started; an error fails that disk's rollback. Both hooks exist so
	// tests can inject faults and crashes at exact steps.
	AfterCommitStart func(d *Disk) error
	// OnRollback, when set, hears each disk's rollback outcome.
	OnRollback func(ok bool)
}

func (e *Executor) log() *zap.Logger {
	if e.Log == nil {
		return zap.NewNop()
	}
	return e.Log
}

func (e *Executor) save(ctx context.Context, p *Plan) error {
	if e.Journal == nil {
		return nil
	}
	if err := e.Journal.Save(ctx, p); err != nil {
		return fmt.Errorf("journal %s: %w", p.Phase, err)
	}
	return nil
}

// Prepare creates the overlay files and, unless QEMU opens them in the
// switch (SwitchSync), adds their nodes to QEMU, so that the switch only
// flips the block graph. Each disk's node is added as soon as its file
// exists, so that QEMU opening one overlay overlaps the host creating
// the next. On failure the caller runs Cleanup, which undoes what was
// done.
func (e *Executor) Prepare(ctx context.Context, p *Plan) error {
	g, gctx := errgroup.WithContext(ctx)
	for _, d := range p.Disks {
		g.Go(func() error {
			if d.Reuse {
				// QEMU opens it by path: check it is still the file
				// validation saw, as late as the daemon can.
				if err := checkReused(d); err != nil {
					return err
				}
			} else if err := createOverlay(d); err != nil {
				return err
			}
			if p.Sync() {
				return nil
			}
			// Until QEMU says no, the node may exist: a lost reply or a
			// lost connection leaves its fate unknown, and Cleanup must
			// then try to delete it.
			d.NodeAdded = true
			err := e.QMP.BlockdevAdd(gctx, qmp.BlockdevOptions{
				Driver:      "qcow2",
				NodeName:    d.OverlayNode,
				FileOptions: &qmp.BlockdevOptions{Driver: "file", Filename: d.Overlay},
				// blockdev-snapshot wants an overlay with no backing yet;
				// it attaches the disk's current node as the backing.
				NoBacking: true,
			})
			if isQEMUError(err) {
				d.NodeAdded = false
			}
			if err != nil {
				return fmt.Errorf("add overlay node for disk %s: %w", d.Target, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("prepare overlays: %w", err)
	}
	return nil
}

// SyncDirs makes the new overlays' directory entries durable: one fsync
// per directory covers all of them. It belongs after the switch and
// before the snapshot is recorded, so that no fsync stands right before
// the switch.
func (e *Executor) SyncDirs(p *Plan) error {
	dirs := map[string]bool{}
	for _, d := range p.Disks {
		if d.FileCreated && !d.WasEmpty {
			dirs[filepath.Dir(d.Overlay)] = true
		}
	}
	for dir := range dirs {
		if err := qcow2.SyncDir(dir); err != nil {
			return fmt.Errorf("sync overlay directory: %w", err)
		}
	}
	return nil
}

func createOverlay(d *Disk) error {
	o := qcow2.Options{VirtualSize: uint64(d.VirtualSize), BackingFile: d.Source, BackingFormat: d.SourceFormat}
	if !d.WasEmpty {
		if err := qcow2.CreateFile(d.Overlay, o); err != nil {
			return fmt.Errorf("create overlay %s for disk %s: %w", d.Overlay, d.Target, err)
		}
		d.FileCreated = true
		return nil
	}
	f, fi, err := openValidated(d, os.O_RDWR)
	if err != nil {
		return err
	}
	defer f.Close()
	// Empty it again on failure only if it was empty: what someone wrote
	// into it since validation is not the daemon's to destroy.
	if fi.Size() != 0 {
		return fmt.Errorf("%w: overlay %s of disk %s is no longer empty", ErrOverlayChanged, d.Overlay, d.Target)
	}
	d.FileCreated = true // from here on Cleanup must empty it again
	if err := qcow2.WriteTo(f, o); err != nil {
		return fmt.Errorf("write overlay %s for disk %s: %w", d.Overlay, d.Target, err)
	}
	return nil
}

// Switch puts every disk on its overlay, in the plan's mode. It returns
// a *SwitchError naming each disk's outcome on failure; a sequential
// switch has then already rolled back the disks it switched.
func (e *Executor) Switch(ctx context.Context, p *Plan) error {
	if p.Mode == ModeAtomic {
		return e.switchAtomic(ctx, p)
	}
	return e.switchSequential(ctx, p)
}

func (e *Executor) switchAtomic(ctx context.Context, p *Plan) error {
	actions := make([]raw.TransactionAction, len(p.Disks))
	for i, d := range p.Disks {
		if p.Sync() {
			actions[i] = qmp.SnapshotSync(d.Node, d.Overlay, d.OverlayNode, raw.NewImageModeExisting)
		} else {
			actions[i] = qmp.Snapshot(d.Node, d.OverlayNode)
		}
	}
	if e.BeforeSwitch != nil {
		if err := e.BeforeSwitch(p.Disks[0]); err != nil {
			return &SwitchError{Mode: p.Mode, Cause: err, Disks: p.Outcomes()}
		}
	}
	if p.Sync() {
		// From here until QEMU answers, the nodes may exist.
		for _, d := range p.Disks {
			d.NodeAdded = true
		}
	}
	p.SwitchStart = time.Now()
	err := e.QMP.Transaction(ctx, actions...)
	p.SwitchEnd = time.Now()
	if err == nil {
		for _, d := range p.Disks {
			d.State = DiskSwitched
		}
		return nil
	}
	if p.Sync() && isQEMUError(err) {
		// QEMU undid the whole transaction: the nodes it opened are gone.
		for _, d := range p.Disks {
			d.NodeAdded = false
		}
	}
	// QEMU undoes a failed transaction, but a command that timed out
	// may yet have run: only query-block tells.
	if rerr := e.reconcile(ctx, p); rerr != nil {
		return &SwitchError{Mode: p.Mode, Cause: errors.Join(err, rerr), Disks: p.Outcomes()}
	}
	return &SwitchError{Mode: p.Mode, Cause: err, Disks: p.Outcomes()}
}

func (e *Executor) switchSequential(ctx context.Context, p *Plan) error {
	p.SwitchStart = time.Now()
	var cause error
	for _, d := range p.Disks {
		if e.BeforeSwitch != nil {
			if cause = e.BeforeSwitch(d); cause != nil {
				d.State, d.Error = DiskFailed, cause.Error()
				break
			}
		}
		if cause = e.switchDisk(ctx, p, d); cause != nil {
			d.State, d.Error = DiskFailed, cause.Error()
			cause = fmt.Errorf("switch disk %s: %w", d.Target, cause)
			break
		}
		d.State = DiskSwitched
	}
	p.SwitchEnd = time.Now()
	if cause == nil {
		return nil
	}
	if rerr := e.reconcile(ctx, p); rerr != nil {
		return &SwitchError{Mode: p.Mode, Cause: errors.Join(cause, rerr), Disks: p.Outcomes()}
	}
	if err := e.Rollback(ctx, p); err != nil {
		cause = errors.Join(cause, err)
	}
	return &SwitchError{Mode: p.Mode, Cause: cause, Disks: p.Outcomes()}
}

// switchDisk puts one disk on its overlay.
func (e *Executor) switchDisk(ctx context.Context, p *Plan, d *Disk) error {
	if !p.Sync() {
		return e.QMP.BlockdevSnapshot(ctx, d.Node, d.OverlayNode)
	}
	d.NodeAdded = true // until QEMU answers, the node may exist
	err := e.QMP.BlockdevSnapshotSync(ctx, d.Node, d.Overlay, d.OverlayNode)
	if isQEMUError(err) {
		d.NodeAdded = false
	}
	return err
}

// isQEMUError reports an answer of QEMU's refusing a command, which it
// then did not run; a timeout or a lost connection leaves that unknown.
func isQEMUError(err error) bool {
	var qe *qmp.Error
	return errors.As(err, &qe)
}

// reconcile reads from query-block which disks are on their overlay,
// for when a command's fate is unknown.
func (e *Executor) reconcile(ctx context.Context, p *Plan) error {
	// The caller's context may be what ran out; the truth is worth a
	// short grace of its own.
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), qmp.DefaultQueryCeiling)
	defer cancel()
	disks, err := e.QMP.Disks(qctx)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrStateUnknown, err)
	}
	Reconcile(p, disks)
	return nil
}

// Reconcile sets each disk's state from QEMU's view: a disk whose active
// node is its overlay node has switched, whatever the plan believed.
func Reconcile(p *Plan, disks []qmp.Disk) {
	active := make(map[string]string, len(disks))
	for _, qd := range disks {
		active[qd.Target] = qd.NodeName
	}
	for _, d := range p.Disks {
		onOverlay := active[d.Target] == d.OverlayNode
		switch {
		case onOverlay && !d.State.OnOverlay():
			d.State = DiskSwitched
		case !onOverlay && d.State == DiskSwitched:
			d.State = DiskPlanned
		}
	}
}

// Cleanup removes the overlay nodes and files of every disk that is not
// on its overlay: nodes the daemon added, files it created. A disk left
// on its overlay keeps both. Missing nodes and files are not errors, so
// Cleanup can run again after a crash. A node QEMU opened in the switch
// (SwitchSync) went with its last user, the rolled-back disk, so
// blockdev-del finds none; any other answer means something still uses
// it, and its file stays.
func (e *Executor) Cleanup(ctx context.Context, p *Plan) error {
	var errs []error
	for _, d := range p.Disks {
		if d.State.OnOverlay() {
			continue
		}
		if d.NodeAdded {
			err := e.QMP.BlockdevDel(ctx, d.OverlayNode)
			if err != nil && !isNodeMissing(err) {
				errs = append(errs, fmt.Errorf("remove overlay node of disk %s: %w", d.Target, err))
				continue // the file stays while QEMU may hold it
			}
			d.NodeAdded = false
		}
		if err := removeOverlay(d); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func removeOverlay(d *Disk) error {
	if d.Reuse || !d.FileCreated {
		return nil
	}
	var err error
	if d.WasEmpty {
		err = emptyOverlay(d)
	} else {
		err = os.Remove(d.Overlay)
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove overlay file of disk %s: %w", d.Target, err)
	}
	d.FileCreated = false
	return nil
}

// emptyOverlay empties a filled overlay again, through no symbolic link
// and only if it is the file the daemon filled.
func emptyOverlay(d *Disk) error {
	f, _, err := openValidated(d, os.O_WRONLY)
	if err != nil {
		return err
	}
	return errors.Join(f.Truncate(0), f.Close())
}

// checkReused requires a reused overlay to be the file validation saw.
func checkReused(d *Disk) error {
	fi, err := os.Lstat(d.Overlay)
	if err != nil {
		return fmt.Errorf("reused overlay %s of disk %s: %w", d.Overlay, d.Target, err)
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		return fmt.Errorf("%w: overlay %s of disk %s is now a symbolic link", ErrOverlayChanged, d.Overlay, d.Target)
	}
	return d.checkIdentity(fi)
}

// isNodeMissing reports QEMU's answer to blockdev-del of an unknown node.
func isNodeMissing(err error) bool {
	var qe *qmp.Error
	return errors.As(err, &qe) && (qe.Class == "DeviceNotFound" ||
		(qe.Class == "GenericError" && containsAny(qe.Desc, "Failed to find node", "Cannot find node")))
}
