// The PCI functions of q35 with -nodefaults, as far as query-pci goes.

package qmpfake

// pciFunction is one entry of query-pci's devices, with the members
// qsnapd and its tests read, in QEMU's order.
type pciFunction struct {
	Bus       int          `json:"bus"`
	QdevID    string       `json:"qdev_id"`
	Slot      int          `json:"slot"`
	ClassInfo pciClassInfo `json:"class_info"`
	Function  int          `json:"function"`
	Regions   []struct{}   `json:"regions"`
}

type pciClassInfo struct {
	Class int    `json:"class"`
	Desc  string `json:"desc"`
}

// pciSlot is the slot of a disk's device: QEMU gives devices without
// an addr the first free slot in command-line order, after the host
// bridge at 0.
func (b *BlockLayer) pciSlot(d *disk) int {
	slot := 1
	for _, o := range b.disks {
		if o == d {
			return slot
		}
		if o.Target != "" {
			slot++
		}
	}
	return 0
}

// queryPCI answers query-pci: bus 0 with the host bridge, a virtio-blk
// function per disk with a device, and the ICH9 functions at 31.
func (b *BlockLayer) queryPCI(*call) (any, error) {
	devs := []pciFunction{{ClassInfo: pciClassInfo{0x600, "Host bridge"}}}
	for _, d := range b.disks {
		if d.Target != "" {
			devs = append(devs, pciFunction{QdevID: d.Target, Slot: b.pciSlot(d), ClassInfo: pciClassInfo{0x100, "SCSI controller"}})
		}
	}
	devs = append(devs,
		pciFunction{Slot: 31, ClassInfo: pciClassInfo{0x601, "ISA bridge"}},
		pciFunction{Slot: 31, Function: 2, ClassInfo: pciClassInfo{0x106, "SATA controller"}},
		pciFunction{Slot: 31, Function: 3, ClassInfo: pciClassInfo{0xc05, "SMBus"}})
	for i := range devs {
		devs[i].Regions = []struct{}{}
	}
	return []map[string]any{{"bus": 0, "devices": devs}}, nil
}
