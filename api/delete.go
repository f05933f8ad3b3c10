package api

import (
	"strconv"
	"strings"
)

// DeleteFlags are snapshot deletion flags, virDomainSnapshotDeleteFlags
// with libvirt's bits. On the wire they are query parameters of
// DELETE /v1/domains/{name}/snapshots/{snap}: ?children=true,
// ?metadata-only=true, ?children-only=true, or ?flags=N with the
// integer a libvirt client would pass.
type DeleteFlags uint32

// The deletion flags, with libvirt's bits.
const (
	DeleteChildren     DeleteFlags = 1 << iota // CHILDREN: the snapshot and all its descendants
	DeleteMetadataOnly                         // METADATA_ONLY: forget the metadata, touch no disk
	DeleteChildrenOnly                         // CHILDREN_ONLY: the descendants, not the snapshot

	// KnownDeleteFlags are all of them; other bits are refused.
	KnownDeleteFlags = DeleteChildrenOnly<<1 - 1
)

// deleteFlagNames names the deletion flags as their query parameters
// (virsh's options are --children, --metadata and --children-only).
var deleteFlagNames = []struct {
	flag DeleteFlags
	name string
}{
	{DeleteChildren, "children"},
	{DeleteMetadataOnly, "metadata-only"},
	{DeleteChildrenOnly, "children-only"},
}

// Names lists the set flags by their query parameter, in libvirt's bit
// order; unknown bits have no name.
func (f DeleteFlags) Names() []string {
	var names []string
	for _, fn := range deleteFlagNames {
		if f&fn.flag != 0 {
			names = append(names, fn.name)
		}
	}
	return names
}

// String joins the names with "|"; no flag is "none".
func (f DeleteFlags) String() string {
	if f == 0 {
		return "none"
	}
	return strings.Join(f.Names(), "|")
}

// Query parameters of a snapshot delete besides the flags' names.
const (
	// QueryFlags is the flags' integer form, OR-ed with the named ones.
	QueryFlags = "flags"
	// QueryBandwidth caps each commit job, in bytes per second.
	QueryBandwidth = "bandwidth"
	// QueryAsync asks for 202 Accepted and the running operation, as
	// the header "Prefer: respond-async" does; it is the way to ask on
	// a request without a body.
	QueryAsync = "async"
)

// DeleteOptions are the caller's choices for a snapshot delete.
type DeleteOptions struct {
	Flags DeleteFlags
	// Bandwidth caps each commit job, in bytes per second; 0 is no cap.
	Bandwidth int64
	// OpID names the operation; empty for one the daemon picks.
	OpID string
}

// query is the delete's query string, without the leading "?".
func (o DeleteOptions) query() string {
	var q []string
	for _, n := range o.Flags.Names() {
		q = append(q, n+"=true")
	}
	if unknown := o.Flags &^ KnownDeleteFlags; unknown != 0 {
		// Sent as given, for the daemon to refuse.
		q = append(q, QueryFlags+"="+strconv.FormatUint(uint64(unknown), 10))
	}
	if o.Bandwidth != 0 {
		q = append(q, QueryBandwidth+"="+strconv.FormatInt(o.Bandwidth, 10))
	}
	return strings.Join(q, "&")
}

// MergeResult is what a delete did to one disk of one snapshot.
type MergeResult string

// Merge results.
const (
	MergeMerged    MergeResult = "merged"    // the overlay was committed into its base and left the chain
	MergeUnchanged MergeResult = "unchanged" // nothing was done to this disk
	MergeFailed    MergeResult = "failed"    // the commit failed or was cancelled; the disk is as it was
	MergeUnknown   MergeResult = "unknown"   // not known yet; the daemon's recovery reconciles it
	MergeUnlinked  MergeResult = "unlinked"  // a leaf's overlay outside every chain: its file was deleted
)

// MergeOutcome is what a delete did to one disk of one snapshot.
type MergeOutcome struct {
	Snapshot string `json:"snapshot"`
	Target   string `json:"target"`
	// Overlay is the snapshot's overlay (the commit's top), Base the
	// image it was merged into.
	Overlay string      `json:"overlay"`
	Base    string      `json:"base,omitempty"`
	Result  MergeResult `json:"result"`
	// FileDeleted says the overlay's file is gone; a file the caller
	// supplied (REUSE_EXT) is merged but kept, and Kept says where.
	FileDeleted bool   `json:"file_deleted"`
	Kept        string `json:"kept,omitempty"`
	Error       string `json:"error,omitempty"`
}

// DeleteSnapshotResponse describes a delete that was carried out: the
// answer of DELETE /v1/domains/{name}/snapshots/{snap}, and the result
// of its operation.
type DeleteSnapshotResponse struct {
	Operation string `json:"operation"`
	// Deleted are the snapshots whose metadata is gone, deepest first.
	Deleted     []string       `json:"deleted"`
	Disks       []MergeOutcome `json:"disks"`
	MergedBytes int64          `json:"merged_bytes"`
	TotalMS     float64        `json:"total_ms"`
}
