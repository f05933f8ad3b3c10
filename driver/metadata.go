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
	client, err := d.connectedClient(ctx, domain)
	if err != nil {
		return nil, err
	}
	disks, err := client.Disks(ctx)
	if err != nil {
		return nil, qmpErr("list disks", err)
	}
	return disks, nil
}

// connectedClient is a domain's QMP client once its first connection
// attempt is over; ErrDisconnected while QEMU cannot be reached.
func (d *Driver) connectedClient(ctx context.Context, domain string) (*qmp.Client, error) {
	dom, err := d.domain(domain)
	if err != nil {
		return nil, err
	}
	if err := dom.awaitFirstAttempt(ctx); err != nil {
		return nil, err
	}
	return dom.ready()
}

// RunState asks the domain's QEMU for its run state (query-status), all
// a listing of domains needs.
func (d *Driver) RunState(ctx context.Context, domain string) (qmp.Status, error) {
	client, err := d.connectedClient(ctx, domain)
	if err != nil {
		return qmp.Status{}, err
	}
	st, err := client.QueryStatus(ctx)
	if err != nil {
		return qmp.Status{}, qmpErr("query-status", err)
	}
	return st, nil
}

// Runtime is what QEMU says of a running domain, for libvirt's
// virDomainGetInfo: its run state, memory and vCPUs.
type Runtime struct {
	qmp.Status
	MemoryBytes int64
	VCPUs       int
	// KVM is set when the guest runs under KVM rather than TCG.
	KVM bool
}

// Runtime asks the domain's QEMU for its run state, memory and vCPUs.
func (d *Driver) Runtime(ctx context.Context, domain string) (Runtime, error) {
	client, err := d.connectedClient(ctx, domain)
	if err != nil {
		return Runtime{}, err
	}
	var rt Runtime
	if rt.Status, err = client.QueryStatus(ctx); err != nil {
		return Runtime{}, qmpErr("query-status", err)
	}
	if rt.MemoryBytes, err = client.QueryMemorySizeSummary(ctx); err != nil {
		return Runtime{}, qmpErr("query-memory-size-summary", err)
	}
	if rt.VCPUs, err = client.QueryCPUCount(ctx); err != nil {
		return Runtime{}, qmpErr("query-cpus-fast", err)
	}
	if rt.KVM, err = client.QueryKVM(ctx); err != nil {
		return Runtime{}, qmpErr("query-kvm", err)
	}
	return rt, nil
}
