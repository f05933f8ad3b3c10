// Package api is qsnapd's HTTP/JSON interface on unix sockets: the wire
// types, the server that maps them onto the driver, and the client that
// qsnapctl uses.
package api

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/transaction"
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

// VersionInfo answers GET /v1/version.
type VersionInfo struct {
	Version    string `json:"version"`
	GoVersion  string `json:"go_version"`
	APIVersion string `json:"api_version"`
}

// Error codes, after libvirt's error names where one fits.
const (
	CodeNoDomain             = "no-domain"
	CodeNoDomainSnapshot     = "no-domain-snapshot"
	CodeInvalidArg           = "invalid-arg"
	CodeOperationInvalid     = "operation-invalid"
	CodeOperationUnsupported = "operation-unsupported"
	CodeOperationFailed      = "operation-failed"
	CodeAgentUnresponsive    = "agent-unresponsive"
	CodeOperationInProgress  = "operation-in-progress"
	CodeSnapshotExists       = "snapshot-exists"
	CodeNoOperation          = "no-operation"
	CodeForbidden            = "forbidden"
	CodeInternalError        = "internal-error"
)

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
	Operation string                `json:"operation,omitempty"`
	Step      string                `json:"step,omitempty"`
	Disks     []transaction.Outcome `json:"disks,omitempty"`
}

// Domain is a registered domain.
type Domain struct {
	driver.DomainInfo
	// AgentConfigured says whether an agent socket was registered.
	AgentConfigured bool `json:"agent_configured"`
}

// AttachRequest registers a domain.
type AttachRequest struct {
	Name  string `json:"name"`
	QMP   string `json:"qmp"`
	Agent string `json:"agent,omitempty"`
}

// Disk is a disk as QEMU sees it now.
type Disk struct {
	Target   string   `json:"target"`
	Source   string   `json:"source"`
	Format   string   `json:"format"`
	NodeName string   `json:"node_name"`
	Backing  []string `json:"backing"`
}

// Flags are snapshot creation flags: on the wire either a list of names
// ("disk-only", "atomic", ...) or the integer of
// virDomainSnapshotCreateFlags.
type Flags driver.CreateFlags

// UnmarshalJSON accepts a list of names or an integer.
func (f *Flags) UnmarshalJSON(b []byte) error {
	s := strings.TrimSpace(string(b))
	if s == "null" {
		*f = 0
		return nil
	}
	if strings.HasPrefix(s, "[") {
		var names []string
		if err := json.Unmarshal(b, &names); err != nil {
			return fmt.Errorf("flags: a list of names or an integer: %w", err)
		}
		v, err := driver.ParseFlags(names)
		if err != nil {
			return err
		}
		*f = Flags(v)
		return nil
	}
	var n uint32
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("flags: a list of names or an unsigned integer: %w", err)
	}
	*f = Flags(n)
	return nil
}

// MarshalJSON writes the names.
func (f Flags) MarshalJSON() ([]byte, error) {
	names := driver.CreateFlags(f).Names()
	if names == nil {
		names = []string{}
	}
	return json.Marshal(names)
}

// CreateSnapshotRequest asks for a snapshot. An empty XML means
// <domainsnapshot/>.
type CreateSnapshotRequest struct {
	XML     string `json:"xml"`
	Flags   Flags  `json:"flags"`
	Quiesce string `json:"quiesce,omitempty"` // require, prefer or skip
}

// Timings of an operation, in milliseconds.
type Timings struct {
	TotalMS  float64 `json:"total_ms"`
	SwitchMS float64 `json:"switch_ms"`
	FreezeMS float64 `json:"freeze_ms"`
}

// CreateSnapshotResponse describes the snapshot taken.
type CreateSnapshotResponse struct {
	Name        string                `json:"name"`
	XML         string                `json:"xml"`
	Operation   string                `json:"operation"`
	Mode        string                `json:"mode,omitempty"`
	Quiesced    bool                  `json:"quiesced"`
	Disks       []transaction.Outcome `json:"disks"`
	Indications []driver.Indication   `json:"indications"`
	Timings     Timings               `json:"timings"`
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
}

// SnapshotList answers GET /v1/domains/{name}/snapshots. Tree is set with
// ?tree.
type SnapshotList struct {
	Snapshots []Snapshot      `json:"snapshots"`
	Tree      []*SnapshotNode `json:"tree,omitempty"`
}

// SnapshotNode is one node of the snapshot tree.
type SnapshotNode struct {
	Name     string          `json:"name"`
	Children []*SnapshotNode `json:"children"`
}

// SetCurrentRequest makes a snapshot current.
type SetCurrentRequest struct {
	Name string `json:"name"`
}

// FreezeRequest freezes a guest's filesystems.
type FreezeRequest struct {
	Mountpoints []string `json:"mountpoints,omitempty"`
	// Timeout is the auto-thaw deadline, as a Go duration ("30s").
	Timeout string `json:"timeout,omitempty"`
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
)

// Operation is the outcome of a mutating request, readable for at least
// an hour, also by a client that lost its connection.
type Operation struct {
	ID      string          `json:"id"`
	Kind    string          `json:"kind"`
	Domain  string          `json:"domain,omitempty"`
	State   string          `json:"state"`
	Started time.Time       `json:"started"`
	Ended   time.Time       `json:"ended,omitzero"`
	Error   *ErrorInfo      `json:"error,omitempty"`
	Result  json.RawMessage `json:"result,omitempty"`
}
