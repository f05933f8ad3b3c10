package transaction_test

import (
	"testing"

	"github.com/qsnapd/qsnapd/qmp"
	"github.com/qsnapd/qsnapd/transaction"
)

// TestNoteJob: whether a commit job may have written into its base, from
// what QEMU lists of it, and whether the round's base images took part
// of the copy.
func TestNoteJob(t *testing.T) {
	const cancelled = "Operation canceled"
	for _, tc := range []struct {
		name   string
		md     transaction.MergeDisk
		job    qmp.JobInfo
		listed bool
		want   bool
	}{
		{"below the active layer, part of the top gone through", transaction.MergeDisk{State: transaction.MergeStarted},
			qmp.JobInfo{Status: "running", CurrentProgress: 1 << 20, TotalProgress: 64 << 20}, true, true},
		{"below the active layer, an empty top counted as progress", transaction.MergeDisk{State: transaction.MergePending, TopEmpty: true},
			qmp.JobInfo{Status: "pending", CurrentProgress: 64 << 20, TotalProgress: 64 << 20}, true, false},
		{"an empty top whose job is gone", transaction.MergeDisk{State: transaction.MergeStarted, TopEmpty: true},
			qmp.JobInfo{}, false, false},
		{"active, bytes copied", transaction.MergeDisk{State: transaction.MergeReady, Active: true, TopEmpty: true},
			qmp.JobInfo{Status: "ready", CurrentProgress: 4096, TotalProgress: 4096}, true, true},
		{"active, nothing to copy", transaction.MergeDisk{State: transaction.MergeReady, Active: true},
			qmp.JobInfo{Status: "ready"}, true, false},
		{"cancelled before any progress", transaction.MergeDisk{State: transaction.MergeStarted},
			qmp.JobInfo{Status: "concluded", Error: cancelled}, true, false},
		{"failed before any progress: a write may have begun", transaction.MergeDisk{State: transaction.MergeStarted},
			qmp.JobInfo{Status: "concluded", Error: "No space left on device"}, true, true},
		{"started, then gone unseen", transaction.MergeDisk{State: transaction.MergeStarted},
			qmp.JobInfo{}, false, true},
		{"ready, then gone unseen", transaction.MergeDisk{State: transaction.MergeReady, Active: true},
			qmp.JobInfo{}, false, true},
		{"refused by QEMU", transaction.MergeDisk{State: transaction.MergeFailed, Error: "GenericError: no"},
			qmp.JobInfo{}, false, false},
		{"block-commit unanswered, and not listed", transaction.MergeDisk{State: transaction.MergeUnknown},
			qmp.JobInfo{}, false, false},
		{"never started", transaction.MergeDisk{State: transaction.MergePlanned}, qmp.JobInfo{}, false, false},
		{"once it may have, it stays so", transaction.MergeDisk{State: transaction.MergeCancelled, Wrote: true},
			qmp.JobInfo{Status: "concluded", Error: cancelled}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			md := tc.md
			md.Target, md.Job = "vda", "j"
			md.NoteJob(tc.job, tc.listed)
			if md.Wrote != tc.want {
				t.Errorf("Wrote = %v, want %v", md.Wrote, tc.want)
			}
			if tc.listed && (md.Done != tc.job.CurrentProgress || md.Total != tc.job.TotalProgress) {
				t.Errorf("progress %d/%d, want QEMU's %d/%d", md.Done, md.Total, tc.job.CurrentProgress, tc.job.TotalProgress)
			}
			r := transaction.MergeRound{Disks: []*transaction.MergeDisk{&md, {Target: "vdb", Unlink: true}}}
			if got := len(r.BaseWritten()); got != map[bool]int{false: 0, true: 1}[tc.want] {
				t.Errorf("BaseWritten lists %d disks", got)
			}
			md.State = transaction.MergeMerged
			if got := r.BaseWritten(); len(got) != 0 {
				t.Errorf("a merged disk is listed: %+v", got)
			}
		})
	}
}
