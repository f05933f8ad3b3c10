// The QOM composition tree, as far as the disks' devices go.

package qmpfake

import "strings"

// qomProperty is one entry of qom-list.
type qomProperty struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

// qomObject is an object the model knows: a container of devices, or a
// disk's device (virtio-blk-pci) or the virtio-blk-device inside it,
// which holds the drive property.
type qomObject struct {
	typ       string
	container string // for a container: its path
	disk      *disk  // for a device
}

// qomResolve finds the object at path: an absolute path, or a device id
// (QEMU resolves a partial path that matches one object).
func (b *BlockLayer) qomResolve(path string) (qomObject, bool) {
	switch path {
	case "/machine/peripheral", "/machine/peripheral-anon":
		return qomObject{typ: "container", container: path}, true
	}
	for _, d := range b.disks {
		if d.Target == "" {
			continue
		}
		dev := "/machine/peripheral/" + d.Target
		switch path {
		case dev, d.Target:
			return qomObject{typ: "virtio-blk-pci", disk: d}, true
		case dev + "/virtio-backend":
			return qomObject{typ: "virtio-blk-device", disk: d}, true
		}
	}
	return qomObject{}, false
}

func deviceNotFound(path string) error {
	return &qmpError{"DeviceNotFound", "Device '" + path + "' not found"}
}

// qomGet answers qom-get of a device's drive property: the drive's id
// for a -drive disk, else its root node's name, as QEMU's drive
// property getter does.
func (b *BlockLayer) qomGet(x *call) (any, error) {
	var a struct {
		Path     string `json:"path"`
		Property string `json:"property"`
	}
	if err := x.decode(&a); err != nil {
		return nil, err
	}
	if err := required("path", a.Path, "property", a.Property); err != nil {
		return nil, err
	}
	o, ok := b.qomResolve(a.Path)
	if !ok {
		return nil, deviceNotFound(a.Path)
	}
	pciDev := o.typ == "virtio-blk-pci"
	switch {
	case a.Property == "type":
		return o.typ, nil
	case o.disk == nil:
	case a.Property == "drive" && o.disk.Drive != "":
		return o.disk.Drive, nil
	case a.Property == "drive":
		return o.disk.root.name, nil
	case a.Property == "serial":
		return o.disk.Serial, nil
	case a.Property == "addr" && pciDev:
		return b.pciSlot(o.disk) << 3, nil
	case a.Property == "parent_bus" && pciDev:
		return "/machine/q35/pcie.0", nil
	}
	return nil, gerr("Property '%s.%s' not found", o.typ, a.Property)
}

// qomList answers qom-list of the two containers of devices: their
// type, then their children, the newest first.
func (b *BlockLayer) qomList(x *call) (any, error) {
	var a struct {
		Path string `json:"path"`
	}
	if err := x.decode(&a); err != nil {
		return nil, err
	}
	if err := required("path", a.Path); err != nil {
		return nil, err
	}
	o, ok := b.qomResolve(a.Path)
	if !ok {
		return nil, deviceNotFound(a.Path)
	}
	if o.container == "" {
		return nil, gerr("qmpfake: qom-list of a device (%s) is not modelled", strings.TrimSpace(a.Path))
	}
	out := []qomProperty{{Name: "type", Type: "string"}}
	if o.container != "/machine/peripheral" {
		return out, nil
	}
	for i := len(b.disks) - 1; i >= 0; i-- {
		if d := b.disks[i]; d.Target != "" {
			out = append(out, qomProperty{Name: d.Target, Type: "child<virtio-blk-pci>"})
		}
	}
	return out, nil
}
