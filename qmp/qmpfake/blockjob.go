// Block jobs: block-commit and the job-control commands.

package qmpfake

import (
	"fmt"
	"slices"
)

// job is a block-commit job. Its life, as QEMU 7.2 reports it in
// JOB_STATUS_CHANGE: created, running, ready (active commit only),
// waiting, pending, concluded, null.
type job struct {
	id                        string
	device                    *node // the root node the job was started on
	top, base                 *node
	active                    bool // top is the active layer
	status                    string
	autoFinalize, autoDismiss bool
	pivot                     bool
	filter                    string // the mirror_top node above an active commit
	filterSeq                 int
	length, offset            int64
	speed                     int64
	err                       string // why the job failed, once it has
}

// live reports whether the job still holds its nodes.
func (j *job) live() bool { return j.status != "concluded" && j.status != "null" }

func (j *job) holds(n *node) bool {
	for m := j.top; m != nil; m = m.backing {
		if m == n {
			return true
		}
		if m == j.base {
			break
		}
	}
	return false
}

func (b *BlockLayer) setStatus(j *job, status string) {
	j.status = status
	b.emit("JOB_STATUS_CHANGE", map[string]any{"status": status, "id": j.id})
}

func (b *BlockLayer) jobEvent(name string, j *job) {
	b.emit(name, map[string]any{"device": j.id, "len": j.length, "offset": j.offset, "speed": j.speed, "type": "commit"})
}

func (b *BlockLayer) blockCommit(x *call) (any, error) {
	var a struct {
		JobID        *string `json:"job-id"`
		Device       string  `json:"device"`
		TopNode      string  `json:"top-node"`
		BaseNode     string  `json:"base-node"`
		AutoFinalize *bool   `json:"auto-finalize"`
		AutoDismiss  *bool   `json:"auto-dismiss"`
		Speed        int64   `json:"speed"`
	}
	if err := x.decode(&a); err != nil {
		return nil, err
	}
	if a.Speed < 0 {
		return nil, gerr("Parameter 'speed' expects a non-negative value")
	}
	if err := required("device", a.Device); err != nil {
		return nil, err
	}
	bs, _, err := b.lookup(a.Device, a.Device)
	if err != nil {
		return nil, &qmpError{"DeviceNotFound", fmt.Sprintf("Device '%s' not found", a.Device)}
	}
	// A job's main node has the job as a parent: it is no root any more.
	if b.jobHolding(bs) != nil || b.jobOn(bs) != nil || b.parentNode(bs, "backing") != nil || b.parentNode(bs, "file") != nil {
		return nil, gerr("Need a root block node")
	}
	top, base := bs, (*node)(nil)
	if a.TopNode != "" {
		if top = b.node(a.TopNode); top == nil {
			return nil, gerr("Cannot find device='' nor node-name='%s'", a.TopNode)
		}
		if !chainHas(bs, top) {
			return nil, gerr("'%s' is not in this backing file chain", a.TopNode)
		}
	}
	if a.BaseNode != "" {
		if base = b.node(a.BaseNode); base == nil {
			return nil, gerr("Cannot find device='' nor node-name='%s'", a.BaseNode)
		}
		if !chainHas(top, base) {
			return nil, gerr("'%s' is not in this backing file chain", a.BaseNode)
		}
	} else {
		for base = top; base.backing != nil; base = base.backing {
		}
	}
	if top == base {
		return nil, gerr("cannot commit an image into itself")
	}
	var id string
	if a.JobID != nil {
		id = *a.JobID
	} else if d := b.diskOf(bs); d != nil {
		id = d.Drive
	}
	if !wellFormed(id) {
		return nil, gerr("Invalid job ID '%s'", id)
	}
	if b.job(id) != nil {
		return nil, gerr("Job ID '%s' already in use", id)
	}
	j := &job{id: id, device: bs, top: top, base: base, active: top == bs, speed: a.Speed,
		autoFinalize: a.AutoFinalize == nil || *a.AutoFinalize, autoDismiss: a.AutoDismiss == nil || *a.AutoDismiss}
	if j.active {
		j.filter = b.autoName()
		j.filterSeq = b.seq
		// The base is reopened read-write, and stays so even on cancel.
		base.ro = false
		if !base.file.owned {
			base.file.ro = false
		}
	} else {
		j.length = top.size
	}
	b.jobs = append([]*job{j}, b.jobs...) // QEMU lists the newest first
	b.setStatus(j, "created")
	b.setStatus(j, "running")
	x.after = append(x.after, func() {
		x.srv.Go(func() error {
			b.mu.Lock()
			defer b.mu.Unlock()
			b.progress(j)
			return nil
		})
	})
	return struct{}{}, nil
}

// jobOn finds the live job started on device n.
func (b *BlockLayer) jobOn(n *node) *job {
	for _, j := range b.jobs {
		if j.live() && j.device == n {
			return j
		}
	}
	return nil
}

func chainHas(from, n *node) bool {
	for m := from; m != nil; m = m.backing {
		if m == n {
			return true
		}
	}
	return false
}

// progress is the job's run, after block-commit has replied: an active
// commit becomes ready, one below the active layer completes.
func (b *BlockLayer) progress(j *job) {
	if j.status != "running" {
		return // cancelled meanwhile
	}
	if j.active {
		b.setStatus(j, "ready")
		b.jobEvent("BLOCK_JOB_READY", j)
		return
	}
	j.offset = j.length
	b.finish(j, true)
}

func (b *BlockLayer) finish(j *job, pivot bool) {
	b.setStatus(j, "waiting")
	b.setStatus(j, "pending")
	j.pivot = pivot
	if !j.autoFinalize {
		b.emit("BLOCK_JOB_PENDING", map[string]any{"type": "commit", "id": j.id})
		return
	}
	b.finalize(j)
}

func (b *BlockLayer) finalize(j *job) {
	var dropped *node
	if j.pivot {
		dropped = b.pivot(j)
	}
	b.jobEvent("BLOCK_JOB_COMPLETED", j)
	b.conclude(j)
	b.release(dropped) // once the job has let go of it
}

// pivot drops the committed images from the chain and returns the top
// one. They keep their own backing links: an image the monitor added
// stays, with its chain, until blockdev-del, and keeps the base busy.
func (b *BlockLayer) pivot(j *job) *node {
	if j.active {
		for _, d := range b.disks {
			if d.root == j.top {
				d.root = j.base
			}
		}
		return j.top
	}
	if above := b.parentNode(j.top, "backing"); above != nil {
		// QEMU rewrites the backing file name in the image above.
		name := j.base.filename()
		above.backing, above.hdrBacking, above.autoBacking, above.hdrBackingFmt = j.base, name, name, j.base.drv
	}
	return j.top
}

func (b *BlockLayer) conclude(j *job) {
	b.setStatus(j, "concluded")
	if j.autoDismiss {
		b.dismiss(j)
	}
}

func (b *BlockLayer) dismiss(j *job) {
	b.setStatus(j, "null")
	b.jobs = slices.DeleteFunc(b.jobs, func(k *job) bool { return k == j })
}

func verbError(j *job, verb string) error {
	return gerr("Job '%s' in state '%s' cannot accept command verb '%s'", j.id, j.status, verb)
}

// findJob finds a job by the "device" (block-job-*) or "id" (job-*)
// argument, failing as QEMU does for each family.
func (b *BlockLayer) findJob(x *call, key string) (*job, error) {
	var a map[string]any
	if err := x.decode(&a); err != nil {
		return nil, err
	}
	id, _ := a[key].(string)
	if j := b.job(id); j != nil {
		return j, nil
	}
	if key == "id" {
		return nil, gerr("Job not found")
	}
	return nil, &qmpError{"DeviceNotActive", fmt.Sprintf("Block job '%s' not found", id)}
}

// complete ends a ready active commit's copy: it goes on to pending,
// and pivots when finalized (block-job-complete by "device",
// job-complete by "id").
func (b *BlockLayer) complete(key string) func(*call) (any, error) {
	return func(x *call) (any, error) { return b.completeJob(x, key) }
}

func (b *BlockLayer) completeJob(x *call, key string) (any, error) {
	j, err := b.findJob(x, key)
	if err != nil {
		return nil, err
	}
	if j.status != "ready" {
		return nil, verbError(j, "complete")
	}
	x.after = append(x.after, func() { b.finish(j, true) })
	return struct{}{}, nil
}

// blockJobCancel ends a ready job without pivoting (QEMU reports it
// COMPLETED), unless forced, and aborts one not yet ready (CANCELLED).
func (b *BlockLayer) blockJobCancel(x *call) (any, error) {
	var a struct {
		Force bool `json:"force"`
	}
	if err := x.decode(&a); err != nil {
		return nil, err
	}
	j, err := b.findJob(x, "device")
	if err != nil {
		return nil, err
	}
	return b.cancel(x, j, a.Force)
}

// jobCancel is job-cancel: always forced, so a ready job aborts too.
func (b *BlockLayer) jobCancel(x *call) (any, error) {
	j, err := b.findJob(x, "id")
	if err != nil {
		return nil, err
	}
	return b.cancel(x, j, true)
}

func (b *BlockLayer) cancel(x *call, j *job, force bool) (any, error) {
	switch j.status {
	case "ready", "created", "running", "pending":
		if j.status == "ready" && !force {
			x.after = append(x.after, func() { b.finish(j, false) })
			break
		}
		x.after = append(x.after, func() {
			b.setStatus(j, "aborting")
			j.err = "Operation canceled"
			b.jobEvent("BLOCK_JOB_CANCELLED", j)
			b.conclude(j)
		})
	default:
		return nil, verbError(j, "cancel")
	}
	return struct{}{}, nil
}

func (b *BlockLayer) jobFinalize(x *call) (any, error) {
	j, err := b.findJob(x, "id")
	if err != nil {
		return nil, err
	}
	if j.status != "pending" {
		return nil, verbError(j, "finalize")
	}
	b.finalize(j)
	return struct{}{}, nil
}

func (b *BlockLayer) jobDismiss(x *call) (any, error) {
	j, err := b.findJob(x, "id")
	if err != nil {
		return nil, err
	}
	if j.status != "concluded" {
		return nil, verbError(j, "dismiss")
	}
	b.dismiss(j)
	return struct{}{}, nil
}

func (b *BlockLayer) queryBlockJobs(*call) (any, error) {
	out := []map[string]any{}
	for _, j := range b.jobs {
		info := map[string]any{"type": "commit", "device": j.id, "len": j.length, "offset": j.offset,
			"busy": j.status == "running", "paused": false, "speed": j.speed, "io-status": "ok",
			"ready": j.status == "ready", "status": j.status,
			"auto-finalize": j.autoFinalize, "auto-dismiss": j.autoDismiss}
		if j.err != "" {
			info["error"] = j.err
		}
		out = append(out, info)
	}
	return out, nil
}

// queryJobs answers query-jobs: every job, the newest first, with its
// progress as QEMU counts it (a commit below the active layer counts
// the top's whole length).
func (b *BlockLayer) queryJobs(*call) (any, error) {
	out := []map[string]any{}
	for _, j := range b.jobs {
		info := map[string]any{"id": j.id, "type": "commit", "status": j.status,
			"current-progress": j.offset, "total-progress": j.length}
		if j.err != "" {
			info["error"] = j.err
		}
		out = append(out, info)
	}
	return out, nil
}
