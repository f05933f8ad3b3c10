package qmp

import (
	"context"
	"fmt"
)

// PCIDevice is one PCI function of the guest, as query-pci lists it:
// where the guest sees it, and the id of its device, if any. Bus
// numbers behind a bridge are the ones the guest's firmware or kernel
// gave it; until it did, query-pci does not look behind the bridge.
type PCIDevice struct {
	Bus      int
	Slot     int
	Function int
	QdevID   string
	// Bridge is set for a bridge, and Secondary is then the number of
	// the bus behind it.
	Bridge    bool
	Secondary int
}

// DevFn is the slot and function in one number, as the addr property
// of a PCI device reads.
func (p PCIDevice) DevFn() int { return p.Slot<<3 | p.Function }

// PCI is the guest's PCI topology: the numbers of its root buses and
// every function on them, those behind bridges included.
type PCI struct {
	Roots   []int
	Devices []PCIDevice
}

// pciDeviceInfo is the part of query-pci's PciDeviceInfo qsnapd reads.
type pciDeviceInfo struct {
	Bus      int    `json:"bus"`
	Slot     int    `json:"slot"`
	Function int    `json:"function"`
	QdevID   string `json:"qdev_id"`
	Bridge   *struct {
		Bus struct {
			Secondary int `json:"secondary"`
		} `json:"bus"`
		Devices []pciDeviceInfo `json:"devices"`
	} `json:"pci_bridge,omitempty"`
}

// QueryPCI runs query-pci.
func (c *Client) QueryPCI(ctx context.Context) (PCI, error) {
	var buses []struct {
		Bus     int             `json:"bus"`
		Devices []pciDeviceInfo `json:"devices"`
	}
	if err := c.Execute(ctx, "query-pci", nil, &buses); err != nil {
		return PCI{}, fmt.Errorf("list PCI devices: %w", err)
	}
	var out PCI
	var walk func([]pciDeviceInfo)
	walk = func(devs []pciDeviceInfo) {
		for _, d := range devs {
			pd := PCIDevice{Bus: d.Bus, Slot: d.Slot, Function: d.Function, QdevID: d.QdevID}
			if d.Bridge != nil {
				pd.Bridge, pd.Secondary = true, d.Bridge.Bus.Secondary
			}
			out.Devices = append(out.Devices, pd)
			if d.Bridge != nil {
				walk(d.Bridge.Devices)
			}
		}
	}
	for _, b := range buses {
		out.Roots = append(out.Roots, b.Bus)
		walk(b.Devices)
	}
	return out, nil
}
