package transaction

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/qsnapd/qsnapd/internal/qcow2"
	"github.com/qsnapd/qsnapd/qmp"
)

// A merge plan deletes snapshots by committing their overlays into the
// images below them. It runs in rounds, one per snapshot; each round
// starts one commit job per disk and changes every disk or none:
//
//	start → every active commit READY, every other PENDING → complete
//	the active ones → every job PENDING → (point of no return)
//	finalize each → the overlays leave their chains → delete nodes and
//	files → record
//
// Until the point of no return a failure cancels every job of the
// round, and no disk changes. All jobs run with auto-finalize and
// auto-dismiss off, so that QEMU changes no chain before the finalize
// and keeps each job's end until the daemon has read it.

// Phases of a merge plan.
const (
	// PhaseMerging: a round's jobs may run; it has not passed its point
	// of no return, so recovery cancels them.
	PhaseMerging Phase = "merging"
	// PhaseFinalizing: the round is past its point of no return;
	// recovery finalizes what is pending and records what merged.
	PhaseFinalizing Phase = "finalizing"
)

// MergeState is where one disk of a merge round stands.
type MergeState string

// The merge states of a disk.
const (
	MergePlanned   MergeState = "planned"   // no job started
	MergeStarted   MergeState = "started"   // block-commit sent: the job may run
	MergeReady     MergeState = "ready"     // an active commit is READY
	MergePending   MergeState = "pending"   // the job waits in PENDING for its finalize
	MergeMerged    MergeState = "merged"    // the overlay left the chain; its data is in the base
	MergeCancelled MergeState = "cancelled" // the job was cancelled: the disk is as it was
	MergeFailed    MergeState = "failed"    // QEMU refused or failed the job: the disk is as it was
	MergeUnknown   MergeState = "unknown"   // QEMU did not answer; recovery reconciles
	MergeUnlinked  MergeState = "unlinked"  // an overlay in no chain: only its file went
)

// MergeDisk is one disk of a merge round.
type MergeDisk struct {
	Target string `json:"target"`
	// Job is the commit job's id; empty when Unlink is set.
	Job string `json:"job,omitempty"`
	// Device is the disk's root node when the round started.
	Device string `json:"device,omitempty"`
	// Active is set when Top was the disk's active image.
	Active bool `json:"active,omitempty"`
	// Top is the overlay merged away, Base the image it is merged into.
	Top        string `json:"top"`
	TopNode    string `json:"top_node,omitempty"`
	Base       string `json:"base,omitempty"`
	BaseFormat string `json:"base_format,omitempty"`
	BaseNode   string `json:"base_node,omitempty"`
	// Unlink is set for an overlay in no chain (a leaf's branch left
	// behind): no job, its file is deleted.
	Unlink bool `json:"unlink,omitempty"`
	// DeleteFile says the daemon may delete Top once it left every
	// chain; otherwise Keep says why it stays.
	DeleteFile bool   `json:"delete_file,omitempty"`
	Keep       string `json:"keep,omitempty"`

	// TopEmpty says a top below the active layer held no data of its
	// own when the round started (its image has no L2 table): its
	// commit copies nothing, although QEMU counts its whole length as
	// progress.
	TopEmpty bool `json:"top_empty,omitempty"`

	State       MergeState `json:"state"`
	Error       string     `json:"error,omitempty"`
	FileDeleted bool       `json:"file_deleted,omitempty"`
	// Done and Total are the job's progress as QEMU last reported it.
	Done  int64 `json:"done,omitempty"`
	Total int64 `json:"total,omitempty"`
	// Wrote says the job may have written into the base (see
	// NoteJob); a cancel does not take that back.
	Wrote bool `json:"wrote,omitempty"`
}

// MergeRound deletes one snapshot.
type MergeRound struct {
	Snapshot string       `json:"snapshot"`
	Disks    []*MergeDisk `json:"disks"`
}

// MergePlan is one snapshot delete, as the journal keeps it.
type MergePlan struct {
	OpID   string        `json:"op_id"`
	Domain string        `json:"domain"`
	Phase  Phase         `json:"phase"`
	Speed  int64         `json:"speed,omitempty"`
	Rounds []*MergeRound `json:"rounds"`
	// Round is the round under way; those before it are recorded.
	Round int `json:"round"`
}

// MergeJobID names the commit job of disk i in round r of an operation.
func MergeJobID(opID string, r, i int) string {
	if len(opID) > 8 {
		opID = opID[:8]
	}
	return fmt.Sprintf("qsm%s-%d-%d", opID, r, i)
}

// Commits lists the disks that get a commit job.
func (r *MergeRound) Commits() []*MergeDisk {
	var out []*MergeDisk
	for _, md := range r.Disks {
		if !md.Unlink {
			out = append(out, md)
		}
	}
	return out
}

// Bytes is what the round's jobs have copied, as QEMU counts it.
func (r *MergeRound) Bytes() (done, total int64) {
	for _, md := range r.Disks {
		done += md.Done
		total += md.Total
	}
	return done, total
}

// ErrJobFailed means a commit job failed, was cancelled or vanished
// before the round's point of no return.
var ErrJobFailed = errors.New("commit job failed")

// MergeFormatNodes maps each host file to the format nodes that open
// it: protocol nodes and filters are left out, so that a file has one
// node unless QEMU opened it twice.
func MergeFormatNodes(nodes []qmp.BlockDeviceInfo) map[string][]string {
	out := map[string][]string{}
	for _, n := range nodes {
		if isProtocolOrFilter(n.Drv) || n.NodeName == "" {
			continue
		}
		f := filepath.Clean(n.File)
		out[f] = append(out[f], n.NodeName)
	}
	return out
}

func isProtocolOrFilter(drv string) bool {
	switch drv {
	case "file", "host_device", "host_cdrom", "nbd", "iscsi", "rbd", "nfs", "ssh", "http", "https",
		"null-co", "null-aio", "copy-on-read", "throttle", "compress", "preallocate", "blkdebug",
		"blkverify", "blklogwrites", "quorum", "replication", "snapshot-access", "copy-before-write":
		return true
	}
	return strings.HasSuffix(drv, "_top") // mirror_top, commit_top
}

// ChainFiles lists a disk's chain, active image first.
func ChainFiles(qd qmp.Disk) []string {
	chain := []string{filepath.Clean(qd.File)}
	for _, img := range qd.Backing {
		chain = append(chain, filepath.Clean(img.File))
	}
	return chain
}

// ResolveMerge finds in QEMU, by file, the nodes of each disk of the
// round: its root (the commit's device), the top and the base, and
// checks the top still sits on the base where the plan expects it. It
// changes nothing, and returns the disks as QEMU showed them.
func (e *Executor) ResolveMerge(ctx context.Context, r *MergeRound) ([]qmp.Disk, error) {
	disks, err := e.QMP.Disks(ctx)
	if err != nil {
		return nil, err
	}
	nodes, err := e.QMP.QueryNamedBlockNodes(ctx, true)
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	byFile := MergeFormatNodes(nodes)
	node := func(md *MergeDisk, file string) (string, error) {
		names := byFile[filepath.Clean(file)]
		switch len(names) {
		case 1:
			return names[0], nil
		case 0:
			return "", fmt.Errorf("disk %s: no node in QEMU opens %s", md.Target, file)
		}
		return "", fmt.Errorf("disk %s: %s is open in QEMU as nodes %s; cannot tell which to merge", md.Target, file, strings.Join(names, ", "))
	}
	for _, md := range r.Commits() {
		i := slices.IndexFunc(disks, func(qd qmp.Disk) bool { return qd.Target == md.Target })
		if i < 0 {
			return nil, fmt.Errorf("disk %s is gone", md.Target)
		}
		chain := ChainFiles(disks[i])
		at := slices.Index(chain, filepath.Clean(md.Top))
		switch {
		case at < 0:
			return nil, fmt.Errorf("disk %s: overlay %s is no longer in its chain", md.Target, md.Top)
		case at+1 >= len(chain) || chain[at+1] != filepath.Clean(md.Base):
			return nil, fmt.Errorf("disk %s: overlay %s no longer sits on %s", md.Target, md.Top, md.Base)
		case (at == 0) != md.Active:
			return nil, fmt.Errorf("disk %s: overlay %s moved in its chain since the delete was planned", md.Target, md.Top)
		}
		md.Device = cmp.Or(disks[i].NodeName, disks[i].Device)
		md.BaseFormat = disks[i].Backing[at].Format
		if md.TopNode, err = node(md, md.Top); err != nil {
			return nil, err
		}
		if md.BaseNode, err = node(md, md.Base); err != nil {
			return nil, err
		}
		// A top below the active layer is a backing file, which QEMU
		// opened read-only: what its image holds now is what the
		// commit will find. Unreadable, it may hold anything.
		if !md.Active {
			allocated, err := qcow2.Allocated(md.Top)
			md.TopEmpty = err == nil && !allocated
		}
	}
	return disks, nil
}

// StartCommits starts one commit job per disk of the round. A refusal
// from QEMU fails that disk and stops; the caller cancels the jobs
// started so far.
func (e *Executor) StartCommits(ctx context.Context, r *MergeRound, speed int64) error {
	no := false
	for _, md := range r.Commits() {
		md.State = MergeStarted
		err := e.QMP.BlockCommit(ctx, qmp.BlockCommitArgs{
			JobID: md.Job, Device: md.Device, TopNode: md.TopNode, BaseNode: md.BaseNode,
			AutoFinalize: &no, AutoDismiss: &no, Speed: speed,
		})
		if err != nil {
			md.State, md.Error = stateAfter(err), err.Error()
			return fmt.Errorf("start commit of disk %s: %w", md.Target, err)
		}
	}
	return nil
}

// stateAfter is a disk's state after a job command failed: QEMU's
// refusal changed nothing; a lost reply leaves it unknown.
func stateAfter(err error) MergeState {
	var qe *qmp.Error
	if errors.As(err, &qe) {
		return MergeFailed
	}
	return MergeUnknown
}

// pollInterval is how often a wait reads the jobs' progress when no
// status change wakes it first.
const pollInterval = 200 * time.Millisecond

// AwaitCopied waits until every job of the round has copied its data:
// an active commit READY, any other PENDING. progress hears the sum of
// the jobs' progress on every poll. A job that ends first fails the
// wait with QEMU's error; so does wait's end, with its cause.
func (e *Executor) AwaitCopied(ctx, wait context.Context, r *MergeRound, progress func(done, total int64)) error {
	return e.awaitJobs(ctx, wait, r.Commits(), progress, func(md *MergeDisk, j qmp.JobInfo) (bool, error) {
		want, state := "pending", MergePending
		if md.Active {
			want, state = "ready", MergeReady
		}
		switch j.Status {
		case want:
			md.State = state
			return true, nil
		case "aborting", "concluded", "null":
			md.State, md.Error = MergeFailed, cmp.Or(j.Error, "the job ended before it was "+want)
			return false, fmt.Errorf("%w: disk %s: %s", ErrJobFailed, md.Target, md.Error)
		}
		return false, nil
	})
}

// CompleteActive completes the round's active commits, which then wait
// in PENDING like the others; it returns once every job is PENDING.
// Nothing has changed yet: the jobs can still be cancelled.
func (e *Executor) CompleteActive(ctx context.Context, r *MergeRound) error {
	for _, md := range r.Commits() {
		if !md.Active {
			continue
		}
		if err := e.QMP.JobComplete(ctx, md.Job); err != nil {
			// Refused, the job is still READY (the cancel ends it) and
			// the disk as it was; unanswered, who knows.
			md.State, md.Error = stateAfter(err), err.Error()
			return fmt.Errorf("complete commit of disk %s: %w", md.Target, err)
		}
	}
	limit, cancel := context.WithTimeout(ctx, e.rollbackTimeout())
	defer cancel()
	return e.awaitJobs(ctx, limit, r.Commits(), nil, func(md *MergeDisk, j qmp.JobInfo) (bool, error) {
		switch j.Status {
		case "pending":
			md.State = MergePending
			return true, nil
		case "aborting", "concluded", "null":
			md.State, md.Error = MergeFailed, cmp.Or(j.Error, "the job ended before it was pending")
			return false, fmt.Errorf("%w: disk %s: %s", ErrJobFailed, md.Target, md.Error)
		}
		return false, nil
	})
}

func (e *Executor) rollbackTimeout() time.Duration {
	if e.RollbackTimeout > 0 {
		return e.RollbackTimeout
	}
	return DefaultRollbackTimeout
}

// FinalizeCommits finalizes every pending job of the round: this is
// where QEMU changes the chains. Each disk's outcome is its own: a
// finalize QEMU refuses leaves that disk as it was (its job is then
// cancelled), and the others go on. Every concluded job is dismissed.
// The states it sets are QEMU's word on the jobs; ReconcileMerge checks
// them against the chains.
func (e *Executor) FinalizeCommits(ctx context.Context, r *MergeRound) error {
	var errs []error
	var finalized, refused []*MergeDisk
	for _, md := range r.Commits() {
		if md.State != MergePending {
			continue
		}
		if err := e.QMP.JobFinalize(ctx, md.Job); err != nil {
			md.Error = err.Error()
			errs = append(errs, fmt.Errorf("finalize commit of disk %s: %w", md.Target, err))
			if stateAfter(err) == MergeUnknown {
				md.State = MergeUnknown
				continue
			}
			refused = append(refused, md)
			continue
		}
		finalized = append(finalized, md)
	}
	// A refused finalize leaves its job pending: cancel it, so that
	// the disk stays as it was and no job lingers.
	for _, md := range refused {
		if err := e.QMP.JobCancel(ctx, md.Job); err != nil && !jobGone(err) {
			errs = append(errs, fmt.Errorf("cancel commit of disk %s: %w", md.Target, err))
		}
	}
	limit, cancel := context.WithTimeout(ctx, e.rollbackTimeout())
	defer cancel()
	waitFor := slices.Concat(finalized, refused)
	err := e.awaitJobs(ctx, limit, waitFor, nil, func(md *MergeDisk, j qmp.JobInfo) (bool, error) {
		if j.Status != "concluded" && j.Status != "null" {
			return false, nil
		}
		switch {
		case slices.Contains(refused, md):
			md.State = MergeFailed
		case j.Error != "":
			md.State, md.Error = MergeFailed, j.Error
			errs = append(errs, fmt.Errorf("%w: disk %s: %s", ErrJobFailed, md.Target, j.Error))
		default:
			md.State, md.Error = MergeMerged, ""
		}
		return true, nil
	})
	if err != nil {
		for _, md := range waitFor {
			if md.State == MergePending {
				md.State = MergeUnknown
			}
		}
		errs = append(errs, err)
	}
	if err := e.dismiss(ctx, r); err != nil {
		e.log().Warn("dismiss of concluded commit jobs failed", zap.Error(err))
	}
	return errors.Join(errs...)
}

// CancelCommits cancels every job of the round that may run, waits for
// each to end and dismisses it: the disks stay as they were. It returns
// an error only if a job's end could not be learned.
func (e *Executor) CancelCommits(ctx context.Context, r *MergeRound) error {
	ctx = context.WithoutCancel(ctx)
	var live []*MergeDisk
	var errs []error
	for _, md := range r.Commits() {
		switch md.State {
		case MergePlanned, MergeCancelled, MergeMerged:
			continue
		}
		if err := e.QMP.JobCancel(ctx, md.Job); err != nil && !jobGone(err) {
			if stateAfter(err) == MergeUnknown {
				errs = append(errs, fmt.Errorf("cancel commit of disk %s: %w", md.Target, err))
				continue
			}
		}
		live = append(live, md)
	}
	limit, cancel := context.WithTimeout(ctx, e.rollbackTimeout())
	defer cancel()
	err := e.awaitJobs(ctx, limit, live, nil, func(md *MergeDisk, j qmp.JobInfo) (bool, error) {
		return j.Status == "concluded" || j.Status == "null", nil
	})
	if err != nil {
		errs = append(errs, err)
	}
	if err := e.dismiss(ctx, r); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	for _, md := range live {
		if md.State != MergeFailed {
			md.State = MergeCancelled
		}
	}
	return nil
}

// jobGone reports QEMU's answer to a job verb for a job that is not
// there, or has concluded already.
func jobGone(err error) bool {
	var qe *qmp.Error
	return errors.As(err, &qe) && (qe.Desc == "Job not found" || strings.Contains(qe.Desc, "in state 'concluded'"))
}

// dismiss removes the round's concluded jobs.
func (e *Executor) dismiss(ctx context.Context, r *MergeRound) error {
	jobs, err := e.QMP.QueryJobs(ctx)
	if err != nil {
		return fmt.Errorf("list jobs: %w", err)
	}
	var errs []error
	for _, j := range jobs {
		if j.Status != "concluded" || !slices.ContainsFunc(r.Disks, func(md *MergeDisk) bool { return md.Job == j.ID }) {
			continue
		}
		if err := e.QMP.JobDismiss(ctx, j.ID); err != nil && !jobGone(err) {
			errs = append(errs, fmt.Errorf("dismiss job %s: %w", j.ID, err))
		}
	}
	return errors.Join(errs...)
}

// awaitJobs polls query-jobs, woken early by status changes, until
// check says every disk's job is where it should be. A job missing
// from QEMU fails the wait, unless check accepts "null" for it.
func (e *Executor) awaitJobs(ctx, wait context.Context, mds []*MergeDisk, progress func(done, total int64),
	check func(md *MergeDisk, j qmp.JobInfo) (bool, error)) error {
	if len(mds) == 0 {
		return nil
	}
	sub, err := e.QMP.Subscribe(qmp.Filter{Names: []string{"JOB_STATUS_CHANGE"}})
	if err != nil {
		return err
	}
	defer sub.Close()
	for {
		jobs, err := e.QMP.QueryJobs(ctx)
		if err != nil {
			return fmt.Errorf("list jobs: %w", err)
		}
		all := true
		var done, total int64
		for _, md := range mds {
			i := slices.IndexFunc(jobs, func(j qmp.JobInfo) bool { return j.ID == md.Job })
			j := qmp.JobInfo{ID: md.Job, Status: "null"}
			if i >= 0 {
				j = jobs[i]
			}
			md.NoteJob(j, i >= 0)
			done, total = done+md.Done, total+md.Total
			ok, err := check(md, j)
			if err != nil {
				return err
			}
			if !ok && i < 0 {
				md.State, md.Error = MergeFailed, "the job vanished from QEMU"
				return fmt.Errorf("%w: disk %s: job %s vanished", ErrJobFailed, md.Target, md.Job)
			}
			all = all && ok
		}
		if progress != nil {
			progress(done, total)
		}
		if all {
			return nil
		}
		if wait.Err() != nil {
			return context.Cause(wait)
		}
		next, cancel := context.WithTimeout(wait, pollInterval)
		_, err = sub.Next(next)
		cancel()
		if errors.Is(err, qmp.ErrDisconnected) {
			return err
		}
	}
}

// qemuCancelled is the error QEMU reports for a job that was cancelled
// (strerror(ECANCELED)): the job stopped between two writes.
const qemuCancelled = "Operation canceled"

// NoteJob takes in what QEMU lists of the disk's job (listed false when
// it lists no such job): its progress, and whether it may have written
// into the base, which stays so once it may have. A commit writes into
// its base as it goes, before the finalize, and a cancel does not take
// that back. It may have written if:
//   - it made progress: an active commit counts the bytes it wrote, one
//     below the active layer the part of the top it went through (and
//     wrote, unless TopEmpty: then it writes nothing at all);
//   - it failed other than by a cancel: a write that fails may have
//     written part of its chunk, which QEMU does not count;
//   - it existed (block-commit answered) and is gone without QEMU
//     having said how it ended: QEMU restarted, or someone dismissed it.
//
// A job that was refused, or whose block-commit got no answer and that
// QEMU does not list, never ran.
func (md *MergeDisk) NoteJob(j qmp.JobInfo, listed bool) {
	if listed {
		md.Done, md.Total = j.CurrentProgress, j.TotalProgress
	}
	if md.Wrote || (!md.Active && md.TopEmpty) {
		return
	}
	switch {
	case !listed:
		md.Wrote = md.State == MergeStarted || md.State == MergeReady || md.State == MergePending
	case j.CurrentProgress > 0:
		md.Wrote = true
	case j.Error != "" && j.Error != qemuCancelled:
		md.Wrote = true
	}
}

// BaseWritten lists the disks of the round that did not merge but whose
// job may have written into the base: those bases no longer hold the
// snapshot's point in time exactly.
func (r *MergeRound) BaseWritten() []*MergeDisk {
	var out []*MergeDisk
	for _, md := range r.Commits() {
		if md.Wrote && md.State != MergeMerged {
			out = append(out, md)
		}
	}
	return out
}

// ReconcileMerge sets each commit's outcome from the chains QEMU shows:
// a disk whose chain no longer holds the top has merged, one whose
// chain still does has not, whatever the jobs said.
func ReconcileMerge(r *MergeRound, disks []qmp.Disk) {
	for _, md := range r.Commits() {
		i := slices.IndexFunc(disks, func(qd qmp.Disk) bool { return qd.Target == md.Target })
		inChain := i >= 0 && slices.Contains(ChainFiles(disks[i]), filepath.Clean(md.Top))
		switch {
		case !inChain:
			md.State = MergeMerged
		case md.State != MergePlanned && md.State != MergeCancelled && md.State != MergeFailed:
			md.State = MergeFailed
			md.Error = cmp.Or(md.Error, "the overlay is still in the disk's chain")
		}
	}
}

// CleanupMerge removes what the round merged away: the top's node, if
// QEMU keeps it (it keeps the ones the monitor added), and the top's
// file where the plan allows it and no node in QEMU uses it, checked
// right before each unlink. Missing nodes and files are not errors, so
// it can run again after a crash.
func (e *Executor) CleanupMerge(ctx context.Context, r *MergeRound) error {
	var errs []error
	for _, md := range r.Disks {
		if md.State != MergeMerged && md.State != MergeUnlinked && !md.Unlink {
			continue
		}
		if !md.Unlink && md.TopNode != "" {
			err := e.QMP.BlockdevDel(ctx, md.TopNode)
			if err != nil && !isNodeMissing(err) && !isNotOwned(err) {
				errs = append(errs, fmt.Errorf("remove node %s of disk %s: %w", md.TopNode, md.Target, err))
				md.Keep = cmp.Or(md.Keep, "its node could not be removed from QEMU")
				continue
			}
		}
		if md.Unlink {
			md.State = MergeUnlinked
		}
		if !md.DeleteFile || md.FileDeleted {
			continue
		}
		user, err := e.FileUser(ctx, md.Top)
		if err != nil {
			errs = append(errs, err)
			md.Keep = cmp.Or(md.Keep, "QEMU could not be asked whether it uses the file")
			continue
		}
		if user != "" {
			md.Keep = "node " + user + " in QEMU uses it"
			continue
		}
		if !md.Unlink {
			// The guest's writes in Top were durable there; their copies
			// in Base must be before Top goes, whatever QEMU's cache mode.
			if err := syncFile(md.Base); err != nil {
				errs = append(errs, fmt.Errorf("flush base %s of disk %s: %w", md.Base, md.Target, err))
				md.Keep = "its base could not be flushed: " + err.Error()
				continue
			}
		}
		if err := os.Remove(md.Top); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("delete overlay %s of disk %s: %w", md.Top, md.Target, err))
			md.Keep = err.Error()
			continue
		}
		md.FileDeleted, md.Keep = true, ""
	}
	return errors.Join(errs...)
}

// syncFile flushes a file's data to stable storage: fsync through any
// descriptor covers what QEMU wrote through its own.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// FileUser names a node of QEMU that opens path, or returns "" if none
// does, asking QEMU now.
func (e *Executor) FileUser(ctx context.Context, path string) (string, error) {
	nodes, err := e.QMP.QueryNamedBlockNodes(ctx, true)
	if err != nil {
		return "", fmt.Errorf("ask QEMU whether it uses %s: %w", path, err)
	}
	clean := filepath.Clean(path)
	fi, statErr := os.Stat(clean)
	for _, n := range nodes {
		f := n.File
		switch {
		case strings.HasPrefix(f, "json:") && strings.Contains(f, `"`+clean+`"`),
			filepath.Clean(f) == clean:
			return cmp.Or(n.NodeName, f), nil
		}
		if statErr == nil && !strings.HasPrefix(f, "json:") {
			if other, err := os.Stat(f); err == nil && os.SameFile(fi, other) {
				return cmp.Or(n.NodeName, f), nil
			}
		}
	}
	return "", nil
}

// isNotOwned is QEMU's refusal to blockdev-del a node it made itself;
// such a node goes away with its last user.
func isNotOwned(err error) bool {
	var qe *qmp.Error
	return errors.As(err, &qe) && strings.Contains(qe.Desc, "is not owned by the monitor")
}
