package driver

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/qsnapd/qsnapd/guestagent"
	"github.com/qsnapd/qsnapd/qmp"
)

// QuiesceScope is what a quiesced snapshot freezes.
type QuiesceScope string

const (
	// ScopeAll freezes every filesystem of the guest, as libvirt does.
	ScopeAll QuiesceScope = "all"
	// ScopeSnapshotDisks freezes only the filesystems on the disks the
	// snapshot takes, found with guest-get-fsinfo; where they cannot all
	// be found, it freezes every filesystem and says why
	// (IndQuiesceScopeFallback).
	ScopeSnapshotDisks QuiesceScope = "snapshot-disks"
)

// resolveScope checks a request's scope; empty means the daemon's.
func resolveScope(requested, def QuiesceScope) (QuiesceScope, error) {
	switch requested {
	case "":
		return def, nil
	case ScopeAll, ScopeSnapshotDisks:
		return requested, nil
	}
	return "", fmt.Errorf("%w: quiesce scope must be all or snapshot-disks, not '%s'", ErrInvalidArg, requested)
}

// scopeFreeze decides what a quiesced snapshot with the snapshot-disks
// scope freezes: the mountpoints of the filesystems on the snapshot's
// disks, with the indication that lists them, or nil (every filesystem)
// with the indication that says why. The caller holds the domain's
// lock; nothing has changed yet.
func (d *Driver) scopeFreeze(ctx context.Context, dom *Domain, client *qmp.Client, spec *createSpec) ([]string, Indication) {
	mountpoints, summary, err := mapScope(ctx, dom.agent, client, spec)
	if err != nil {
		return nil, Indication{Code: IndQuiesceScopeFallback, Message: err.Error() + "; every filesystem is frozen"}
	}
	return mountpoints, Indication{Code: IndQuiesceScoped, Message: summary}
}

// mapScope asks the agent for the guest's filesystems and QEMU for what
// identifies each disk, and matches them (planScope).
func mapScope(ctx context.Context, agent *guestagent.Client, client *qmp.Client, spec *createSpec) ([]string, string, error) {
	info, err := agent.Info(ctx)
	if err != nil {
		return nil, "", err
	}
	for _, cmd := range []string{"guest-get-fsinfo", "guest-fsfreeze-freeze-list"} {
		if !info.Enabled(cmd) {
			return nil, "", fmt.Errorf("the guest agent lacks %s, or has it disabled", cmd)
		}
	}
	fss, err := agent.FSInfo(ctx)
	if err != nil {
		return nil, "", err
	}
	disks := make([]qmp.Disk, len(spec.disks))
	var snapshotted []string
	for i, ds := range spec.disks {
		disks[i] = ds.Disk
		if ds.external {
			snapshotted = append(snapshotted, ds.Target)
		}
	}
	ids, err := diskIdentities(ctx, client, disks)
	if err != nil {
		return nil, "", err
	}
	return planScope(ids, snapshotted, fss)
}

// diskIdentity is what QEMU says of a disk that the guest may say too.
type diskIdentity struct {
	target string
	serial string   // the device's serial property; "" if none
	pci    *pciFunc // the device's own PCI function; nil if it has none (a disk on a SCSI controller, say)
}

// pciFunc is a PCI function as the guest numbers it, in PCI domain 0.
type pciFunc struct{ bus, slot, function int }

// diskIdentities reads each disk's serial and PCI function: query-pci,
// and a qom-get of the serial per disk (and of addr and parent_bus for
// a device without an id). A property QEMU does not have leaves that
// part of the identity empty; any other failure fails the whole.
func diskIdentities(ctx context.Context, c *qmp.Client, disks []qmp.Disk) ([]diskIdentity, error) {
	pci, err := c.QueryPCI(ctx)
	if err != nil {
		return nil, err
	}
	ids := make([]diskIdentity, len(disks))
	for i, qd := range disks {
		ids[i].target = qd.Target
		if qd.QOMPath == "" {
			continue // a drive without a device
		}
		if err := qomProperty(ctx, c, qd.QOMPath, "serial", &ids[i].serial); err != nil {
			return nil, fmt.Errorf("serial of disk '%s': %w", qd.Target, err)
		}
		if ids[i].pci, err = pciFunction(ctx, c, pci, qd); err != nil {
			return nil, fmt.Errorf("PCI address of disk '%s': %w", qd.Target, err)
		}
	}
	return ids, nil
}

// qomProperty reads a property, leaving out untouched if QEMU says the
// object has no such property (or no such object).
func qomProperty(ctx context.Context, c *qmp.Client, object, property string, out any) error {
	err := c.QOMGet(ctx, object, property, out)
	if qe := (*qmp.Error)(nil); errors.As(err, &qe) {
		return nil
	}
	return err
}

// pciFunction finds the PCI function of a disk's device: by its id in
// query-pci, or for a device without one, by its addr property on its
// parent bus (the root bus, or the bus behind a bridge with an id). A
// device that is not a PCI function, or that cannot be told apart, has
// none.
func pciFunction(ctx context.Context, c *qmp.Client, pci qmp.PCI, qd qmp.Disk) (*pciFunc, error) {
	match := func(ok func(qmp.PCIDevice) bool) *pciFunc {
		var found []qmp.PCIDevice
		for _, p := range pci.Devices {
			if ok(p) {
				found = append(found, p)
			}
		}
		if len(found) != 1 {
			return nil
		}
		return &pciFunc{found[0].Bus, found[0].Slot, found[0].Function}
	}
	if qd.QdevID != "" {
		return match(func(p qmp.PCIDevice) bool { return p.QdevID == qd.QdevID }), nil
	}
	// /machine/peripheral-anon/device[N], the device the disk is in.
	parts := strings.SplitN(strings.TrimPrefix(qd.QOMPath, "/"), "/", 4)
	if len(parts) < 3 || parts[1] != "peripheral-anon" {
		return nil, nil
	}
	dev := "/" + strings.Join(parts[:3], "/")
	devfn, bus := -1, ""
	if err := qomProperty(ctx, c, dev, "addr", &devfn); err != nil || devfn < 0 {
		return nil, err
	}
	if err := qomProperty(ctx, c, dev, "parent_bus", &bus); err != nil || bus == "" {
		return nil, err
	}
	// The bus belongs to a host bridge (a root bus) or to a bridge.
	owner := path.Dir(bus)
	busNr := -1
	if id, ok := strings.CutPrefix(owner, "/machine/peripheral/"); ok {
		for _, p := range pci.Devices {
			if p.Bridge && p.QdevID == id && p.Secondary > 0 { // 0: not numbered yet
				busNr = p.Secondary
			}
		}
	} else if !strings.HasPrefix(owner, "/machine/peripheral") && len(pci.Roots) == 1 {
		busNr = pci.Roots[0]
	}
	if busNr < 0 {
		return nil, nil
	}
	return match(func(p qmp.PCIDevice) bool { return p.QdevID == "" && p.Bus == busNr && p.DevFn() == devfn }), nil
}

// matches tells whether the guest's disk a is the domain's disk id, by
// the first identity both sides have: the serial, else the PCI
// function, else the guest's device node against the disk's target (a
// device with the id vda is the guest's /dev/vda, with its partitions
// /dev/vda1 and on).
func (id diskIdentity) matches(a guestagent.DiskAddress) bool {
	switch {
	case id.serial != "" && a.Serial != "":
		return id.serial == a.Serial
	case id.pci != nil && a.PCIController.Valid():
		p := a.PCIController
		return p.Domain == 0 && *id.pci == pciFunc{p.Bus, p.Slot, p.Function}
	}
	dev, ok := strings.CutPrefix(a.Dev, "/dev/")
	if !ok || id.target == "" {
		return false
	}
	part, ok := strings.CutPrefix(dev, id.target)
	if !ok {
		return false
	}
	// A partition: vda1 of vda, nvme0n1p1 of nvme0n1.
	if last := id.target[len(id.target)-1]; part != "" && last >= '0' && last <= '9' {
		if part, ok = strings.CutPrefix(part, "p"); !ok || part == "" {
			return false
		}
	}
	return strings.Trim(part, "0123456789") == ""
}

// planScope picks the filesystems to freeze: every one that lies on a
// snapshotted disk, including one that spans other disks too (it holds
// data of the snapshot; freezing it is what freezing all would have
// done to it). It fails, for a fallback to freezing all, when a
// snapshotted disk is on no filesystem the guest lists (none mounted,
// or its address matches nothing), or when a disk of the guest matches
// several of the domain's disks, one of them snapshotted. A disk of the
// guest that matches none of the domain's is taken for one the snapshot
// does not include: qemu-ga describes a disk alike in every filesystem
// on it.
func planScope(ids []diskIdentity, snapshotted []string, fss []guestagent.Filesystem) ([]string, string, error) {
	found := map[string]bool{}
	var mountpoints, described []string
	for _, fs := range fss {
		var on []string // the domain's disks the filesystem lies on
		selected := false
		for _, a := range fs.Disks {
			var hits []string
			for _, id := range ids {
				if id.matches(a) {
					hits = append(hits, id.target)
				}
			}
			snap := slices.ContainsFunc(hits, func(t string) bool { return slices.Contains(snapshotted, t) })
			if len(hits) > 1 && snap {
				return nil, "", fmt.Errorf("the guest's disk %s under %s matches disks %s alike", describeAddress(a), fs.Mountpoint, strings.Join(hits, ", "))
			}
			if snap {
				selected, found[hits[0]] = true, true
			}
			if len(hits) == 1 && !slices.Contains(on, hits[0]) {
				on = append(on, hits[0])
			}
		}
		if selected && !slices.Contains(mountpoints, fs.Mountpoint) {
			mountpoints = append(mountpoints, fs.Mountpoint)
			described = append(described, fmt.Sprintf("%s (%s)", fs.Mountpoint, strings.Join(on, ", ")))
		}
	}
	for _, t := range snapshotted {
		if !found[t] {
			return nil, "", fmt.Errorf("disk '%s' could not be mapped to a filesystem of the guest: guest-get-fsinfo lists none on it", t)
		}
	}
	return mountpoints, fmt.Sprintf("the freeze covers %d of the guest's %d filesystems, those on the snapshot's disks: %s",
		len(mountpoints), len(fss), strings.Join(described, ", ")), nil
}

// describeAddress names a guest disk for a message.
func describeAddress(a guestagent.DiskAddress) string {
	switch {
	case a.Dev != "":
		return a.Dev
	case a.Serial != "":
		return "serial " + a.Serial
	}
	p := a.PCIController
	return fmt.Sprintf("%04x:%02x:%02x.%x", p.Domain, p.Bus, p.Slot, p.Function)
}
