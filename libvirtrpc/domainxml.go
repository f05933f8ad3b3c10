package libvirtrpc

import (
	"context"
	"errors"

	libvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/qmp"
)

func (s *Server) domainGetXMLDesc(ctx context.Context, _ *conn, args *libvirt.DomainGetXMLDescArgs) (libvirt.DomainGetXMLDescRet, error) {
	info, err := s.lookup(args.Dom)
	if err != nil {
		return libvirt.DomainGetXMLDescRet{}, err
	}
	doc, err := s.domainXML(ctx, info)
	return libvirt.DomainGetXMLDescRet{XML: doc}, err
}

// domainXML describes a domain as far as qsnapd knows it: its name and
// UUID, its memory and vCPUs, and its disks as QEMU has them now, each
// with its backing chain. That is what virsh's disk handling and
// virt-xml-validate need; everything else of the VM belongs to whoever
// started it. A domain whose QEMU is not connected has no devices.
func (s *Server) domainXML(ctx context.Context, info driver.DomainInfo) (string, error) {
	dom := libvirtxml.Domain{
		Type: "qemu",
		Name: info.Name,
		UUID: domainUUID(info).String(),
		OS:   &libvirtxml.DomainOS{Type: &libvirtxml.DomainOSType{Arch: "x86_64", Type: "hvm"}},
	}
	if info.Connected {
		dom.ID = new(int(s.ids.of(info.Name)))
	}
	var disks []qmp.Disk
	rt, err := s.drv.Runtime(ctx, info.Name)
	if err == nil {
		disks, err = s.drv.Disks(ctx, info.Name)
	}
	switch {
	case errors.Is(err, driver.ErrDisconnected):
		dom.ID = nil
	case err != nil:
		return "", err
	}
	if rt.KVM {
		dom.Type = "kvm"
	}
	kib := uint(rt.MemoryBytes >> 10)
	dom.Memory = &libvirtxml.DomainMemory{Value: kib, Unit: "KiB"}
	dom.CurrentMemory = &libvirtxml.DomainCurrentMemory{Value: kib, Unit: "KiB"}
	dom.VCPU = &libvirtxml.DomainVCPU{Placement: "static", Value: uint(max(rt.VCPUs, 1))}
	if len(disks) > 0 {
		dom.Devices = &libvirtxml.DomainDeviceList{}
		for _, d := range disks {
			dom.Devices.Disks = append(dom.Devices.Disks, diskXML(d))
		}
	}
	return dom.Marshal()
}

// diskXML is one disk: its active image, the chain below it, its target.
func diskXML(d qmp.Disk) libvirtxml.DomainDisk {
	disk := libvirtxml.DomainDisk{
		Device: "disk",
		Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: d.Format},
		Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: d.File}},
		Target: &libvirtxml.DomainDiskTarget{Dev: d.Target},
	}
	if d.ReadOnly {
		disk.ReadOnly = &libvirtxml.DomainDiskReadOnly{}
	}
	// The chain, nearest first; an empty <backingStore/> closes it, as
	// libvirt writes a chain it knows whole.
	next := &disk.BackingStore
	for _, img := range d.Backing {
		bs := &libvirtxml.DomainDiskBackingStore{
			Format: &libvirtxml.DomainDiskFormat{Type: img.Format},
			Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: img.File}},
		}
		*next = bs
		next = &bs.BackingStore
	}
	*next = &libvirtxml.DomainDiskBackingStore{}
	return disk
}
