// Package api is qsnapd's HTTP/JSON protocol on unix sockets: the wire
// types and their vocabulary, and the client qsnapctl uses.
//
// It stands alone: it imports nothing of the engine, so that a client
// does not carry the daemon. Package api/server maps the engine onto it.
package api

import (
	"encoding/json"
	"time"
)

// APIVersion is the path prefix and version of this API.
const APIVersion = "v1"

// Default socket paths, as libvirt has libvirt-sock and libvirt-sock-ro.
const (
	DefaultSocket   = "/run/qsnapd/qsnapd.sock"
	DefaultSocketRO = "/run/qsnapd/qsnapd-ro.sock"
)

// MaxBodyBytes bounds request bodies.
const MaxBodyBytes = 1 << 20

// OperationHeader carries an operation id: a client may choose one, so
// that it can read the outcome even if it loses the connection; the
// server echoes it on every response of an operation.
const OperationHeader = "X-Operation-ID"

// Asynchronous requests. Every mutating request that is an operation
// may ask not to wait: with "async": true in its JSON body, the header
// "Prefer: respond-async" (RFC 7240) or ?async=true (the way for a
// request without a body). The answer is then 202 Accepted with the
// Operation, still running, and Location: /v1/operations/{id}; the
// server says "Preference-Applied: respond-async".
const (
	PreferHeader            = "Prefer"
	PreferenceAppliedHeader = "Preference-Applied"
	PreferAsync             = "respond-async"
)

// VersionInfo answers GET /v1/version.
type VersionInfo struct {
	Version    string `json:"version"`
	GoVersion  string `json:"go_version"`
	APIVersion string `json:"api_version"`
}

// ErrorBody is every error response.
type ErrorBody struct {
	Error ErrorInfo `json:"error"`
}

// ErrorInfo says what went wrong; Details carries per-disk outcomes when
// an operation left something behind.
type ErrorInfo struct {
	Code    string        `json:"code"`
	Message string        `json:"message"`
	Details *ErrorDetails `json:"details,omitempty"`
}

// ErrorDetails are the structured parts of an operation's failure.
type ErrorDetails struct {
	Operation string        `json:"operation,omitempty"`
	Step      string        `json:"step,omitempty"`
	Disks     []DiskOutcome `json:"disks,omitempty"`
	// Merges are a failed delete's outcomes, disk by disk.
	Merges []MergeOutcome `json:"merges,omitempty"`
	// Deleted are the snapshots a failed delete deleted before it
	// failed (with children, the rounds that merged), deepest first.
	Deleted []string `json:"deleted,omitempty"`
}

// DiskOutcome is what an operation did to one disk.
type DiskOutcome struct {
	Target  string     `json:"target"`
	Source  string     `json:"source"`
	Overlay string     `json:"overlay"`
	Result  DiskResult `json:"result"`
	Error   string     `json:"error,omitempty"`
}

// Domain is a registered domain. The fields keep the order in which
// the daemon has always written them.
type Domain struct {
	Freeze FreezeInfo `json:"freeze"`
	// AgentState is what the daemon knows of the guest agent, from its
	// channel and the last exchange on it (asking the guest nothing):
	// none, unknown, syncing, responsive, unresponsive or not-connected.
	AgentState string `json:"agent_state"`
	Name       string `json:"name"`
	QMP        string `json:"qmp"`
	Agent      string `json:"agent,omitempty"`
	// AgentChannel is AgentChannelHold or AgentChannelPerOperation;
	// empty without an agent.
	AgentChannel string    `json:"agent_channel,omitempty"`
	Connected    bool      `json:"connected"`
	Since        time.Time `json:"since,omitzero"`
	QEMUVersion  string    `json:"qemu_version,omitempty"`
	UUID         string    `json:"uuid,omitempty"`
	// HasTransaction says whether QEMU has the QMP transaction command,
	// so that atomic snapshots can switch every disk at once.
	HasTransaction bool `json:"transaction"`
	// Error is why the domain is not connected.
	Error string `json:"error,omitempty"`
	// AgentConfigured says whether an agent socket was registered.
	AgentConfigured bool `json:"agent_configured"`
}

// FreezeInfo is a domain's frozen state as the daemon knows it.
type FreezeInfo struct {
	Frozen   bool      `json:"frozen"`
	Owner    string    `json:"owner,omitempty"`
	OpID     string    `json:"operation,omitempty"`
	Since    time.Time `json:"since,omitzero"`
	Deadline time.Time `json:"deadline,omitzero"`
	// ThawPending is set once a thaw was sent and until one succeeds:
	// a slow or failing thaw (retried in the background) shows here.
	ThawPending bool `json:"thaw_pending,omitempty"`
	// Agent is what the agent itself says ("frozen" or "thawed"), when
	// asked.
	Agent string `json:"agent,omitempty"`
}

// AttachRequest registers a domain.
type AttachRequest struct {
	Name  string `json:"name"`
	QMP   string `json:"qmp"`
	Agent string `json:"agent,omitempty"`
	// AgentChannel is AgentChannelHold (the default, empty) or
	// AgentChannelPerOperation.
	AgentChannel string `json:"agent_channel,omitempty"`
	Async        bool   `json:"async,omitempty"`
}

// Agent channel modes of a domain.
const (
	// AgentChannelHold keeps the agent's socket open between
	// operations, as libvirt does.
	AgentChannelHold = "hold"
	// AgentChannelPerOperation opens it for each operation and closes
	// it after, for hosts where another manager shares the socket.
	AgentChannelPerOperation = "per-operation"
)

// Disk is a disk as QEMU sees it now.
type Disk struct {
	Target   string   `json:"target"`
	Source   string   `json:"source"`
	Format   string   `json:"format"`
	NodeName string   `json:"node_name"`
	Backing  []string `json:"backing"`
}

// CreateSnapshotRequest asks for a snapshot. An empty XML means
// <domainsnapshot/>.
type CreateSnapshotRequest struct {
	XML     string `json:"xml"`
	Flags   Flags  `json:"flags"`
	Quiesce string `json:"quiesce,omitempty"` // QuiesceRequire, QuiescePrefer or QuiesceSkip
	// QuiesceScope is QuiesceScopeAll or QuiesceScopeSnapshotDisks;
	// empty means the daemon's quiesce_scope.
	QuiesceScope string `json:"quiesce_scope,omitempty"`
	Async        bool   `json:"async,omitempty"`
}

// Timings of an operation, in milliseconds.
type Timings struct {
	TotalMS  float64 `json:"total_ms"`
	SwitchMS float64 `json:"switch_ms"`
	FreezeMS float64 `json:"freeze_ms"`
}

// CreateSnapshotResponse describes the snapshot taken.
type CreateSnapshotResponse struct {
	Name        string        `json:"name"`
	XML         string        `json:"xml"`
	Operation   string        `json:"operation"`
	Mode        string        `json:"mode,omitempty"`
	Switch      string        `json:"switch,omitempty"` // overlays opened in the switch command ("sync") or added before it ("preadd")
	Quiesced    bool          `json:"quiesced"`
	Disks       []DiskOutcome `json:"disks"`
	Indications []Indication  `json:"indications"`
	Timings     Timings       `json:"timings"`
}

// Snapshot is a snapshot's metadata.
type Snapshot struct {
	Name         string    `json:"name"`
	Description  string    `json:"description,omitempty"`
	CreationTime time.Time `json:"creation_time"`
	State        string    `json:"state"`
	Parent       string    `json:"parent,omitempty"`
	Current      bool      `json:"current"`
	Children     []string  `json:"children"`
	XML          string    `json:"xml,omitempty"`
	// MergeInterrupted is set when a delete that merges the snapshot
	// stopped after writing into the images below its overlays: they
	// no longer hold its point in time exactly. Deleting it again
	// completes the merge.
	MergeInterrupted *MergeInterruption `json:"merge_interrupted,omitempty"`
}

// MergeInterruption says which merge of a snapshot was interrupted
// after writing into its base images, and which disks it wrote into.
type MergeInterruption struct {
	// Operation and Time are the last delete that did.
	Operation string    `json:"operation"`
	Time      time.Time `json:"time"`
	Disks     []string  `json:"disks"`
}

// SnapshotList answers GET /v1/domains/{name}/snapshots (QueryLimit and
// the others say how). Tree is set with ?tree. A deep tree nests as
// deep: JSON decoders limit nesting (Go's to 10 000 levels, two a
// node), so a client of long chains builds it from the listing's pages
// with SnapshotTree instead, as qsnapctl does.
type SnapshotList struct {
	Snapshots []Snapshot      `json:"snapshots"`
	Tree      []*SnapshotNode `json:"tree,omitempty"`
	// Next, on a page that more snapshots follow, names its last
	// snapshot: QueryAfter of the next page.
	Next string `json:"next,omitempty"`
}

// SnapshotNode is one node of the snapshot tree.
type SnapshotNode struct {
	Name     string          `json:"name"`
	Children []*SnapshotNode `json:"children"`
}

// SetCurrentRequest makes a snapshot current.
type SetCurrentRequest struct {
	Name  string `json:"name"`
	Async bool   `json:"async,omitempty"`
}

// FreezeRequest freezes a guest's filesystems.
type FreezeRequest struct {
	Mountpoints []string `json:"mountpoints,omitempty"`
	// Timeout is the auto-thaw deadline, as a Go duration ("30s").
	Timeout string `json:"timeout,omitempty"`
	Async   bool   `json:"async,omitempty"`
}

// FreezeResponse counts the filesystems frozen or thawed.
type FreezeResponse struct {
	Count int `json:"count"`
}

// Operation states.
const (
	OpRunning   = "running"
	OpSucceeded = "succeeded"
	OpFailed    = "failed"
	// OpUnknown is an operation whose QEMU went away mid-switch and has
	// not come back: recovery completes it (succeeded or failed, with
	// the disks as they turned out) when QEMU returns.
	OpUnknown = "unknown"
)

// Operation kinds: what a mutating request was.
const (
	OpDomainAttach    = "domain-attach"
	OpDomainDetach    = "domain-detach"
	OpSnapshotCreate  = "snapshot-create"
	OpSnapshotDelete  = "snapshot-delete"
	OpSnapshotCurrent = "snapshot-current"
	OpFSFreeze        = "fsfreeze"
	OpFSThaw          = "fsthaw"
)

// Operation is the outcome of a mutating request, readable for at least
// an hour, also by a client that lost its connection. A cancelled
// operation failed with the code operation-aborted.
type Operation struct {
	ID      string    `json:"id"`
	Kind    string    `json:"kind"`
	Domain  string    `json:"domain,omitempty"`
	State   string    `json:"state"`
	Started time.Time `json:"started"`
	Ended   time.Time `json:"ended,omitzero"`
	// Progress is how far a running operation that copies data (a
	// merge) has come; absent for the others.
	Progress *Progress       `json:"progress,omitempty"`
	Error    *ErrorInfo      `json:"error,omitempty"`
	Result   json.RawMessage `json:"result,omitempty"`
}

// Progress is how far a running operation has come.
type Progress struct {
	// DoneBytes and TotalBytes add up the operation's block jobs; both
	// 0 before they start. TotalBytes may grow while the guest writes.
	DoneBytes  int64 `json:"done_bytes"`
	TotalBytes int64 `json:"total_bytes"`
	// Cancellable is false once the operation passed its point of no
	// return: DELETE /v1/operations/{id} then answers 409.
	Cancellable bool `json:"cancellable"`
}
