package driver

import (
	"context"
	"fmt"

	"github.com/qsnapd/qsnapd/qmp"
)

// Snapshots returns a domain's snapshot records, oldest first, XML
// included; ListSnapshots lists them for a reader. The domain need not
// be connected: metadata is the daemon's own.
func (d *Driver) Snapshots(domain string) ([]SnapshotRecord, error) {
	if _, err := d.domain(domain); err != nil {
		return nil, err
	}
	return d.store.Snapshots(domain)
}

// Snapshot returns one snapshot record.
func (d *Driver) Snapshot(domain, name string) (SnapshotRecord, error) {
	if _, err := d.domain(domain); err != nil {
		return SnapshotRecord{}, err
	}
	return d.store.Snapshot(domain, name)
}

// SnapshotInfo returns one snapshot with its children and XML, reading
// no other snapshot's record.
func (d *Driver) SnapshotInfo(domain, name string) (SnapshotInfo, error) {
	if _, err := d.domain(domain); err != nil {
		return SnapshotInfo{}, err
	}
	return d.store.SnapshotInfo(domain, name)
}

// CurrentInfo returns the domain's current snapshot with its children
// and XML; ErrNoSnapshot if none.
func (d *Driver) CurrentInfo(domain string) (SnapshotInfo, error) {
	if _, err := d.domain(domain); err != nil {
		return SnapshotInfo{}, err
	}
	return d.store.CurrentInfo(domain)
}

// ListSnapshots lists a domain's snapshots, or a page of them, in
// creation order (ListQuery says what that is), without their XML, at
// a cost that grows with the page, not with the domain's snapshots.
func (d *Driver) ListSnapshots(domain string, q ListQuery) (SnapshotPage, error) {
	if _, err := d.domain(domain); err != nil {
		return SnapshotPage{}, err
	}
	return d.store.ListSnapshots(domain, q)
}

// Current returns the domain's current snapshot; ErrNoSnapshot if none.
func (d *Driver) Current(domain string) (SnapshotRecord, error) {
	if _, err := d.domain(domain); err != nil {
		return SnapshotRecord{}, err
	}
	name, err := d.store.Current(domain)
	if err != nil {
		return SnapshotRecord{}, err
	}
	if name == "" {
		return SnapshotRecord{}, fmt.Errorf("%w: domain '%s' has no current snapshot", ErrNoSnapshot, domain)
	}
	return d.store.Snapshot(domain, name)
}

// SetCurrent makes a snapshot the current one.
func (d *Driver) SetCurrent(ctx context.Context, domain, name string) error {
	_, release, err := d.lockDomain(ctx, domain)
	if err != nil {
		return err
	}
	defer release()
	return d.store.SetCurrent(domain, name)
}

// Disks lists a connected domain's disks as QEMU sees them now.
func (d *Driver) Disks(ctx context.Context, domain string) ([]qmp.Disk, error) {
	dom, err := d.domain(domain)
	if err != nil {
		return nil, err
	}
	if err := dom.awaitFirstAttempt(ctx); err != nil {
		return nil, err
	}
	client, err := dom.ready()
	if err != nil {
		return nil, err
	}
	disks, err := client.Disks(ctx)
	if err != nil {
		return nil, qmpErr("list disks", err)
	}
	return disks, nil
}

// Runtime is what QEMU says of a running domain, for libvirt's
// virDomainGetInfo: its run state, memory and vCPUs.
type Runtime struct {
	// Status is query-status's: running, paused, prelaunch, ...
	Status      string
	Running     bool
	MemoryBytes int64
	VCPUs       int
	// KVM is set when the guest runs under KVM rather than TCG.
	KVM bool
}

// Runtime asks the domain's QEMU for its run state, memory and vCPUs.
func (d *Driver) Runtime(ctx context.Context, domain string) (Runtime, error) {
	dom, err := d.domain(domain)
	if err != nil {
		return Runtime{}, err
	}
	client, err := dom.ready()
	if err != nil {
		return Runtime{}, err
	}
	st, err := client.QueryStatus(ctx)
	if err != nil {
		return Runtime{}, fmt.Errorf("%w: domain '%s': query-status: %w", ErrOperationFailed, domain, err)
	}
	rt := Runtime{Status: st.Status, Running: st.Running}
	if rt.MemoryBytes, err = client.QueryMemorySizeSummary(ctx); err != nil {
		return Runtime{}, fmt.Errorf("%w: domain '%s': query-memory-size-summary: %w", ErrOperationFailed, domain, err)
	}
	if rt.VCPUs, err = client.QueryCPUCount(ctx); err != nil {
		return Runtime{}, fmt.Errorf("%w: domain '%s': query-cpus-fast: %w", ErrOperationFailed, domain, err)
	}
	if rt.KVM, err = client.QueryKVM(ctx); err != nil {
		return Runtime{}, fmt.Errorf("%w: domain '%s': query-kvm: %w", ErrOperationFailed, domain, err)
	}
	return rt, nil
}
