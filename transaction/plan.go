// Package transaction carries out a snapshot plan against QEMU: it
// prepares the overlays, switches the disks in one QMP transaction or one
// by one, and rolls switched disks back with verified active commits.
// A merge plan deletes snapshots by committing their overlays, every
// disk or none.
package transaction

import (
	"fmt"
	"strings"
	"time"
)

// Mode is how the disks switch.
type Mode string

const (
	// ModeAtomic switches every disk in one QMP transaction.
	ModeAtomic Mode = "atomic"
	// ModeSequential switches disk by disk, rolling back on failure.
	ModeSequential Mode = "sequential"
)

// Switch is how the overlays enter QEMU's block graph.
type Switch string

const (
	// SwitchPreadd adds each overlay's node (blockdev-add) while
	// preparing; the switch, blockdev-snapshot, then only attaches the
	// nodes: the shortest switch, for a guest frozen around it.
	SwitchPreadd Switch = "preadd"
	// SwitchSync has QEMU open the overlay files in the switch itself
	// (blockdev-snapshot-sync, mode existing, named with
	// snapshot-node-name): one command for every disk, the shortest
	// total, for a snapshot without a freeze. The nodes are QEMU's own:
	// they go with their last user, and blockdev-del refuses them.
	SwitchSync Switch = "sync"
)

// Phase is where an operation stands, as the journal records it before
// each side effect.
type Phase string

// The phases, in order.
const (
	PhasePrepared    Phase = "prepared"     // overlays about to be created and added
	PhaseSwitching   Phase = "switching"    // disks about to switch
	PhaseRollingBack Phase = "rolling-back" // switched disks about to be committed back
	PhaseDone        Phase = "done"         // finished; snapshot recorded
	PhaseFailed      Phase = "failed"       // finished; nothing or part left, as the disks say
)

// Active reports whether an operation in this phase still needs work:
// recovery reconciles these.
func (p Phase) Active() bool {
	switch p {
	case PhasePrepared, PhaseSwitching, PhaseRollingBack, PhaseMerging, PhaseFinalizing:
		return true
	}
	return false
}

// DiskState is what happened to one disk.
type DiskState string

// The disk states.
const (
	DiskPlanned    DiskState = "untouched"   // not switched (yet)
	DiskSwitched   DiskState = "switched"    // on its overlay
	DiskFailed     DiskState = "failed"      // its switch failed; unchanged
	DiskRolledBack DiskState = "rolled-back" // switched, then committed back
	DiskStuck      DiskState = "stuck"       // switched, rollback failed: still on the overlay
	// DiskHoldsGuestWrites is a disk whose QEMU exited after its switch:
	// its overlay holds writes the guest was told were durable, so it is
	// kept, and the disk's data is the overlay on its original image.
	DiskHoldsGuestWrites DiskState = "holds-guest-writes"
)

// OnOverlay reports whether the disk's active image is the overlay (or,
// once QEMU exited, whether its latest data is there).
func (s DiskState) OnOverlay() bool {
	return s == DiskSwitched || s == DiskStuck || s == DiskHoldsGuestWrites
}

// Disk is one disk of a plan, with what the daemon did to it so far.
type Disk struct {
	Target       string `json:"target"`
	Node         string `json:"node"`   // active node before the snapshot
	Source       string `json:"source"` // active image before the snapshot
	SourceFormat string `json:"source_format"`
	VirtualSize  int64  `json:"virtual_size"`
	Overlay      string `json:"overlay"`
	OverlayNode  string `json:"overlay_node"`
	// Reuse is set for REUSE_EXT: the file is not the daemon's and is
	// never deleted.
	Reuse bool `json:"reuse,omitempty"`
	// WasEmpty is set when the overlay path held an empty file, which
	// the daemon fills and on failure empties again rather than deletes.
	WasEmpty bool `json:"was_empty,omitempty"`
	// FileID is the file validation saw at Overlay, for Reuse and
	// WasEmpty: the daemon uses that file only if it is still there.
	FileID *FileID `json:"file_id,omitempty"`

	FileCreated bool `json:"file_created,omitempty"`
	// NodeAdded is set while the overlay's node may exist in QEMU: from
	// its blockdev-add, or (SwitchSync) from its switch being sent.
	NodeAdded bool      `json:"node_added,omitempty"`
	State     DiskState `json:"state"`
	Error     string    `json:"error,omitempty"`
}

// FileID identifies a file by device and inode.
type FileID struct {
	Dev uint64 `json:"dev"`
	Ino uint64 `json:"ino"`
}

// Plan is one snapshot operation: the disks to switch and how.
type Plan struct {
	OpID   string `json:"op_id"`
	Domain string `json:"domain"`
	Mode   Mode   `json:"mode"`
	// Switch is how the overlays enter QEMU; empty (journals from
	// before it was recorded) is SwitchPreadd.
	Switch Switch  `json:"switch,omitempty"`
	Phase  Phase   `json:"phase"`
	Disks  []*Disk `json:"disks"`
	// SwitchStart and SwitchEnd bound the switch: first switching
	// command sent to last reply.
	SwitchStart time.Time `json:"switch_start,omitzero"`
	SwitchEnd   time.Time `json:"switch_end,omitzero"`
}

// NodeName is the overlay node name for disk i of operation opID.
// QEMU limits node names to 31 characters.
func NodeName(opID string, i int) string {
	if len(opID) > 8 {
		opID = opID[:8]
	}
	return fmt.Sprintf("qs%s-%d", opID, i)
}

// Sync reports whether the plan's overlays enter QEMU in the switch
// (SwitchSync) rather than before it.
func (p *Plan) Sync() bool { return p.Switch == SwitchSync }

// JobID names the rollback commit job of a disk.
func JobID(d *Disk) string { return "qsrb-" + d.OverlayNode }

// SwitchWindow is how long the switch took.
func (p *Plan) SwitchWindow() time.Duration {
	if p.SwitchStart.IsZero() || p.SwitchEnd.IsZero() {
		return 0
	}
	return p.SwitchEnd.Sub(p.SwitchStart)
}

// Outcome is one disk's result, for reports.
type Outcome struct {
	Target  string    `json:"target"`
	Source  string    `json:"source"`
	Overlay string    `json:"overlay"`
	Result  DiskState `json:"result"`
	Error   string    `json:"error,omitempty"`
}

// Outcomes lists every disk's result.
func (p *Plan) Outcomes() []Outcome {
	out := make([]Outcome, len(p.Disks))
	for i, d := range p.Disks {
		out[i] = Outcome{Target: d.Target, Source: d.Source, Overlay: d.Overlay, Result: d.State, Error: d.Error}
	}
	return out
}

// Stuck lists the disks left on their overlay by a failed rollback.
func (p *Plan) Stuck() []*Disk {
	var stuck []*Disk
	for _, d := range p.Disks {
		if d.State == DiskStuck {
			stuck = append(stuck, d)
		}
	}
	return stuck
}

// HoldingGuestWrites lists the disks whose overlay was kept after QEMU
// exited because it holds the guest's writes.
func (p *Plan) HoldingGuestWrites() []*Disk {
	var out []*Disk
	for _, d := range p.Disks {
		if d.State == DiskHoldsGuestWrites {
			out = append(out, d)
		}
	}
	return out
}

// Describe renders outcomes as "vda rolled-back, vdb failed (why)".
func Describe(outcomes []Outcome) string {
	parts := make([]string, len(outcomes))
	for i, o := range outcomes {
		parts[i] = o.Target + " " + string(o.Result)
		if o.Error != "" {
			parts[i] += " (" + o.Error + ")"
		}
	}
	return strings.Join(parts, ", ")
}
