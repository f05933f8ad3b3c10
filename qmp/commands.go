package qmp

import (
	"context"
	"encoding/json"

	"github.com/digitalocean/go-qemu/qmp/raw"
)

// Typed helpers for the commands the snapshot engine needs. They use
// go-qemu's qmp/raw types where those match QEMU 7.2, and our own JSON
// where raw's QEMU 2.11 schema is wrong or crashes (blockdev-add,
// block-commit, query-named-block-nodes with flat) or is brittle.

// BlockInfo is one entry of query-block. raw.BlockInfo decodes the
// image's format-specific union strictly and fails the whole reply on a
// subtype newer than QEMU 2.11 (QEMU 8 added "file"), so qsnapd keeps
// only the members it reads.
type BlockInfo struct {
	Device   string           `json:"device"`
	Qdev     string           `json:"qdev,omitempty"`
	Type     string           `json:"type"`
	Inserted *BlockDeviceInfo `json:"inserted,omitempty"`
}

// BlockDeviceInfo is a node as query-block and query-named-block-nodes
// describe it.
type BlockDeviceInfo struct {
	File             string    `json:"file"`
	NodeName         string    `json:"node-name,omitempty"`
	Drv              string    `json:"drv"`
	Ro               bool      `json:"ro"`
	BackingFile      string    `json:"backing_file,omitempty"`
	BackingFileDepth int       `json:"backing_file_depth"`
	Image            ImageInfo `json:"image"`
}

// ImageInfo describes an image and, nested, its backing chain.
type ImageInfo struct {
	Filename              string     `json:"filename"`
	Format                string     `json:"format"`
	VirtualSize           int64      `json:"virtual-size"`
	BackingFilename       string     `json:"backing-filename,omitempty"`
	FullBackingFilename   string     `json:"full-backing-filename,omitempty"`
	BackingFilenameFormat string     `json:"backing-filename-format,omitempty"`
	BackingImage          *ImageInfo `json:"backing-image,omitempty"`
}

// QueryBlock runs query-block.
func (c *Client) QueryBlock(ctx context.Context) ([]BlockInfo, error) {
	var out []BlockInfo
	err := c.Execute(ctx, "query-block", nil, &out)
	return out, err
}

// QueryNamedBlockNodes runs query-named-block-nodes; flat leaves out the
// nested backing-image trees.
func (c *Client) QueryNamedBlockNodes(ctx context.Context, flat bool) ([]BlockDeviceInfo, error) {
	var out []BlockDeviceInfo
	args := struct {
		Flat bool `json:"flat"`
	}{flat}
	err := c.Execute(ctx, "query-named-block-nodes", args, &out)
	return out, err
}

// ObjectProperty is one property of a QOM object as qom-list lists it;
// a child object has the type "child<its type>".
type ObjectProperty struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

// QOMList runs qom-list: the properties of the object at path.
func (c *Client) QOMList(ctx context.Context, path string) ([]ObjectProperty, error) {
	var out []ObjectProperty
	args := struct {
		Path string `json:"path"`
	}{path}
	err := c.Execute(ctx, "qom-list", args, &out)
	return out, err
}

// QOMGet runs qom-get and decodes the property's value into out.
func (c *Client) QOMGet(ctx context.Context, path, property string, out any) error {
	args := struct {
		Path     string `json:"path"`
		Property string `json:"property"`
	}{path, property}
	return c.Execute(ctx, "qom-get", args, out)
}

// QueryCommands returns the set of command names QEMU accepts.
func (c *Client) QueryCommands(ctx context.Context) (map[string]bool, error) {
	infos, err := raw.NewMonitor(c.Bind(ctx)).QueryCommands()
	if err != nil {
		return nil, err
	}
	set := make(map[string]bool, len(infos))
	for _, ci := range infos {
		set[ci.Name] = true
	}
	return set, nil
}

// Status is the reply of query-status. raw.StatusInfo decodes the state
// into an enum frozen at QEMU 2.11, which fails on newer states.
type Status struct {
	Status  string `json:"status"`
	Running bool   `json:"running"`
}

// QueryStatus runs query-status.
func (c *Client) QueryStatus(ctx context.Context) (Status, error) {
	var st Status
	err := c.Execute(ctx, "query-status", nil, &st)
	return st, err
}

// QueryChardev runs query-chardev.
func (c *Client) QueryChardev(ctx context.Context) ([]raw.ChardevInfo, error) {
	return raw.NewMonitor(c.Bind(ctx)).QueryChardev()
}

// Transaction runs the actions as one all-or-nothing QMP transaction.
func (c *Client) Transaction(ctx context.Context, actions ...raw.TransactionAction) error {
	args := struct {
		Actions []raw.TransactionAction `json:"actions"`
	}{actions}
	return c.Execute(ctx, "transaction", args, nil)
}

// SnapshotSync is a blockdev-snapshot-sync action: switch the node (or
// device) to a new overlay file.
func SnapshotSync(node, file, overlayNode string, mode raw.NewImageMode) raw.TransactionAction {
	return raw.TransactionActionBlockdevSnapshotSync(snapshotSyncArgs(node, file, overlayNode, mode))
}

func snapshotSyncArgs(node, file, overlayNode string, mode raw.NewImageMode) raw.BlockdevSnapshotSync {
	format := "qcow2"
	return raw.BlockdevSnapshotSync{
		NodeName:         &node,
		SnapshotFile:     file,
		SnapshotNodeName: optional(overlayNode),
		Format:           &format,
		Mode:             &mode,
	}
}

// Snapshot is a blockdev-snapshot action: put the already added overlay
// node on top of node.
func Snapshot(node, overlay string) raw.TransactionAction {
	return raw.TransactionActionBlockdevSnapshot{Node: node, Overlay: overlay}
}

func optional(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// BlockdevOptions is the subset of blockdev-add's arguments qsnapd uses:
// a protocol node (Filename set) or a format node on top of one (File
// set). raw.BlockdevOptions overflows the stack when marshalled.
type BlockdevOptions struct {
	Driver   string `json:"driver"`
	NodeName string `json:"node-name,omitempty"`
	// Filename is the path, for the "file" protocol driver.
	Filename string `json:"filename,omitempty"`
	// File is the node-name of the protocol node, for format drivers.
	File string `json:"-"`
	// FileOptions defines the protocol node inline instead; QEMU names
	// it and deletes it with its parent.
	FileOptions *BlockdevOptions `json:"-"`
	// NoBacking opens the image without its backing file ("backing":
	// null), as blockdev-snapshot requires of the overlay.
	NoBacking bool  `json:"-"`
	ReadOnly  *bool `json:"read-only,omitempty"`
}

// MarshalJSON writes "file" as a reference or inline definition, and
// "backing": null when NoBacking is set.
func (o BlockdevOptions) MarshalJSON() ([]byte, error) {
	type plain BlockdevOptions
	var file any
	switch {
	case o.FileOptions != nil:
		file = o.FileOptions
	case o.File != "":
		file = o.File
	}
	var backing *json.RawMessage
	if o.NoBacking {
		null := json.RawMessage("null")
		backing = &null
	}
	return json.Marshal(struct {
		plain
		File    any              `json:"file,omitempty"`
		Backing *json.RawMessage `json:"backing,omitempty"`
	}{plain(o), file, backing})
}

// BlockdevAdd runs blockdev-add.
func (c *Client) BlockdevAdd(ctx context.Context, o BlockdevOptions) error {
	return c.Execute(ctx, "blockdev-add", o, nil)
}

// BlockdevSnapshot runs blockdev-snapshot on its own, outside a
// transaction: the overlay node goes on top of node.
func (c *Client) BlockdevSnapshot(ctx context.Context, node, overlay string) error {
	return c.Execute(ctx, "blockdev-snapshot", raw.BlockdevSnapshot{Node: node, Overlay: overlay}, nil)
}

// BlockdevSnapshotSync runs blockdev-snapshot-sync on its own, outside
// a transaction, with mode "existing": QEMU opens the qcow2 file, names
// its node overlayNode and puts it on top of node. The file's header
// must name the backing file already; QEMU does not write it.
func (c *Client) BlockdevSnapshotSync(ctx context.Context, node, file, overlayNode string) error {
	return c.Execute(ctx, "blockdev-snapshot-sync", snapshotSyncArgs(node, file, overlayNode, raw.NewImageModeExisting), nil)
}

// BlockdevDel runs blockdev-del.
func (c *Client) BlockdevDel(ctx context.Context, nodeName string) error {
	args := struct {
		NodeName string `json:"node-name"`
	}{nodeName}
	return c.Execute(ctx, "blockdev-del", args, nil)
}

// BlockCommitArgs are block-commit's arguments. raw.BlockCommit lacks
// base-node, top-node, auto-finalize and auto-dismiss; without base-node
// a commit goes to the deepest image.
type BlockCommitArgs struct {
	JobID        string `json:"job-id,omitempty"`
	Device       string `json:"device"`
	TopNode      string `json:"top-node,omitempty"`
	BaseNode     string `json:"base-node,omitempty"`
	AutoFinalize *bool  `json:"auto-finalize,omitempty"`
	AutoDismiss  *bool  `json:"auto-dismiss,omitempty"`
	Speed        int64  `json:"speed,omitempty"`
}

// BlockCommit starts a block-commit job.
func (c *Client) BlockCommit(ctx context.Context, a BlockCommitArgs) error {
	return c.Execute(ctx, "block-commit", a, nil)
}

// BlockJobComplete pivots a ready job.
func (c *Client) BlockJobComplete(ctx context.Context, device string) error {
	return raw.NewMonitor(c.Bind(ctx)).BlockJobComplete(device)
}

// BlockJobCancel cancels a job; after READY it ends without pivoting.
func (c *Client) BlockJobCancel(ctx context.Context, device string, force bool) error {
	return raw.NewMonitor(c.Bind(ctx)).BlockJobCancel(device, &force)
}

// BlockJob is one entry of query-block-jobs. raw.BlockJobInfo predates
// the job status and auto-finalize members.
type BlockJob struct {
	Type         string `json:"type"`
	Device       string `json:"device"`
	Len          int64  `json:"len"`
	Offset       int64  `json:"offset"`
	Busy         bool   `json:"busy"`
	Paused       bool   `json:"paused"`
	Ready        bool   `json:"ready"`
	Status       string `json:"status"`
	AutoFinalize bool   `json:"auto-finalize"`
	AutoDismiss  bool   `json:"auto-dismiss"`
	Error        string `json:"error,omitempty"`
}

// QueryBlockJobs runs query-block-jobs.
func (c *Client) QueryBlockJobs(ctx context.Context) ([]BlockJob, error) {
	var jobs []BlockJob
	err := c.Execute(ctx, "query-block-jobs", nil, &jobs)
	return jobs, err
}

// JobDismiss removes a concluded job.
func (c *Client) JobDismiss(ctx context.Context, id string) error {
	// raw has no job-dismiss: it came in QEMU 2.12.
	return c.jobVerb(ctx, "job-dismiss", id)
}

// JobInfo is one entry of query-jobs: any job, with its progress as
// QEMU counts it.
type JobInfo struct {
	ID     string `json:"id"`
	Type   string `json:"type"`
	Status string `json:"status"`
	// CurrentProgress and TotalProgress are in QEMU's job units, bytes
	// for block jobs; the total may grow while the job runs.
	CurrentProgress int64 `json:"current-progress"`
	TotalProgress   int64 `json:"total-progress"`
	// Error says why a concluded job failed or was cancelled.
	Error string `json:"error,omitempty"`
}

// QueryJobs runs query-jobs.
func (c *Client) QueryJobs(ctx context.Context) ([]JobInfo, error) {
	var jobs []JobInfo
	err := c.Execute(ctx, "query-jobs", nil, &jobs)
	return jobs, err
}

// jobVerb runs one of the job-* commands that take only the job's id.
func (c *Client) jobVerb(ctx context.Context, verb, id string) error {
	args := struct {
		ID string `json:"id"`
	}{id}
	return c.Execute(ctx, verb, args, nil)
}

// JobComplete tells a ready job to finish its work: an active commit
// then goes on to pending (without auto-finalize) or pivots.
func (c *Client) JobComplete(ctx context.Context, id string) error {
	return c.jobVerb(ctx, "job-complete", id)
}

// JobFinalize finalizes a pending job: a commit's graph change happens
// here.
func (c *Client) JobFinalize(ctx context.Context, id string) error {
	return c.jobVerb(ctx, "job-finalize", id)
}

// JobCancel cancels a job, forced: a ready or pending job aborts
// without changing the graph.
func (c *Client) JobCancel(ctx context.Context, id string) error {
	return c.jobVerb(ctx, "job-cancel", id)
}

// Stop pauses the guest's CPUs.
func (c *Client) Stop(ctx context.Context) error { return raw.NewMonitor(c.Bind(ctx)).Stop() }

// Cont resumes the guest's CPUs.
func (c *Client) Cont(ctx context.Context) error { return raw.NewMonitor(c.Bind(ctx)).Cont() }

// Quit ends QEMU. The connection closes right after the reply.
func (c *Client) Quit(ctx context.Context) error { return raw.NewMonitor(c.Bind(ctx)).Quit() }

// HumanMonitorCommand runs an HMP command line and returns its output.
func (c *Client) HumanMonitorCommand(ctx context.Context, cmdline string) (string, error) {
	return raw.NewMonitor(c.Bind(ctx)).HumanMonitorCommand(cmdline, nil)
}

// QueryUUID returns the VM's UUID (all zeros when QEMU was given none).
func (c *Client) QueryUUID(ctx context.Context) (string, error) {
	info, err := raw.NewMonitor(c.Bind(ctx)).QueryUUID()
	return info.UUID, err
}

// QueryName returns the VM's -name, empty when it has none.
func (c *Client) QueryName(ctx context.Context) (string, error) {
	var info struct {
		Name string `json:"name"`
	}
	err := c.Execute(ctx, "query-name", nil, &info)
	return info.Name, err
}

// BlockGraph is the block graph as x-debug-query-block-graph gives it.
type BlockGraph struct {
	Nodes []struct {
		ID   uint64 `json:"id"`
		Type string `json:"type"` // block-backend, block-job or block-driver
		Name string `json:"name"`
	} `json:"nodes"`
	Edges []struct {
		Parent uint64 `json:"parent"`
		Child  uint64 `json:"child"`
	} `json:"edges"`
}

// QueryBlockGraph runs x-debug-query-block-graph, the one command that
// says which nodes a block job holds. It is unstable by QEMU's policy,
// so callers treat a failure as "unknown".
func (c *Client) QueryBlockGraph(ctx context.Context) (BlockGraph, error) {
	var g BlockGraph
	err := c.Execute(ctx, "x-debug-query-block-graph", nil, &g)
	return g, err
}

// QueryMemorySizeSummary returns the guest's base memory in bytes
// (query-memory-size-summary), hotplugged memory left out.
func (c *Client) QueryMemorySizeSummary(ctx context.Context) (int64, error) {
	var info struct {
		BaseMemory int64 `json:"base-memory"`
	}
	err := c.Execute(ctx, "query-memory-size-summary", nil, &info)
	return info.BaseMemory, err
}

// QueryCPUCount returns the number of the guest's vCPUs (query-cpus-fast).
func (c *Client) QueryCPUCount(ctx context.Context) (int, error) {
	var cpus []struct {
		CPUIndex int `json:"cpu-index"`
	}
	err := c.Execute(ctx, "query-cpus-fast", nil, &cpus)
	return len(cpus), err
}

// QueryKVM reports whether the guest runs under KVM (query-kvm), not TCG.
func (c *Client) QueryKVM(ctx context.Context) (bool, error) {
	var info struct {
		Enabled bool `json:"enabled"`
	}
	err := c.Execute(ctx, "query-kvm", nil, &info)
	return info.Enabled, err
}
