package qmp

import (
	"context"
	"fmt"
	"strings"
)

// Disk is a guest disk as the snapshot engine sees it: what to call it,
// and which image is active on top of which chain.
type Disk struct {
	// Target names the disk: the qdev id, else the drive id, else the
	// root node-name.
	Target string
	// Device is the BlockBackend (drive) name; empty for -blockdev disks.
	Device string
	// QdevID is the id of the guest device; empty when it has none.
	QdevID string
	// QOMPath is the QOM path of the guest device (for qom-get); empty
	// for a drive without a device.
	QOMPath string
	// NodeName is the root node of the active image.
	NodeName string
	// File and Format describe the active image.
	File   string
	Format string
	// VirtualSize is the guest-visible size in bytes.
	VirtualSize int64
	// ReadOnly is set for read-only media.
	ReadOnly bool
	// Backing is the chain below the active image, nearest first.
	Backing []Image
}

// Image is one image of a backing chain.
type Image struct {
	File   string
	Format string
}

// Disks turns query-block into the list of disks with a medium.
func (c *Client) Disks(ctx context.Context) ([]Disk, error) {
	infos, err := c.QueryBlock(ctx)
	if err != nil {
		return nil, fmt.Errorf("list disks: %w", err)
	}
	return DisksFromBlockInfo(infos), nil
}

// DisksFromBlockInfo converts query-block entries, skipping empty drives
// such as a CD-ROM without a medium.
func DisksFromBlockInfo(infos []BlockInfo) []Disk {
	var disks []Disk
	for _, bi := range infos {
		ins := bi.Inserted
		if ins == nil {
			continue
		}
		d := Disk{
			Device:   bi.Device,
			QdevID:   qdevID(bi.Qdev),
			QOMPath:  QOMPath(bi.Qdev),
			NodeName: ins.NodeName,
			File:     ins.File,
			Format:   ins.Drv,

			VirtualSize: ins.Image.VirtualSize,
			ReadOnly:    ins.Ro,
		}
		switch {
		case d.QdevID != "":
			d.Target = d.QdevID
		case d.Device != "":
			d.Target = d.Device
		default:
			d.Target = d.NodeName
		}
		for img := ins.Image.BackingImage; img != nil; img = img.BackingImage {
			d.Backing = append(d.Backing, Image{File: img.Filename, Format: img.Format})
		}
		disks = append(disks, d)
	}
	return disks
}

// DeviceDrive returns the drive property of the guest device at qomPath:
// the name of its BlockBackend, or, for an anonymous BlockBackend (a
// device given a node with -blockdev or blockdev-add), the node-name of
// its root node; "" when it has no medium. It is one cheap question,
// whatever the depth of the chain, where query-block describes every
// image of every chain.
func (c *Client) DeviceDrive(ctx context.Context, qomPath string) (string, error) {
	var drive string
	if err := c.QOMGet(ctx, qomPath, "drive", &drive); err != nil {
		return "", fmt.Errorf("drive of %s: %w", qomPath, err)
	}
	return drive, nil
}

// QOMPath turns query-block's qdev into the device's QOM path: QEMU
// reports the id of a device that has one, which lives under
// /machine/peripheral, and the QOM path of any other.
func QOMPath(qdev string) string {
	if qdev == "" || strings.HasPrefix(qdev, "/") {
		return qdev
	}
	return "/machine/peripheral/" + qdev
}

// qdevID extracts the device id from a qdev path. QEMU reports either
// the id itself or a QOM path such as
// /machine/peripheral/vda/virtio-backend; devices without an id live
// under /machine/peripheral-anon and have none.
func qdevID(qdev string) string {
	if qdev == "" {
		return ""
	}
	if !strings.HasPrefix(qdev, "/") {
		return qdev
	}
	const prefix = "/machine/peripheral/"
	if !strings.HasPrefix(qdev, prefix) {
		return ""
	}
	id, _, _ := strings.Cut(strings.TrimPrefix(qdev, prefix), "/")
	return id
}
