package guestagent

import (
	"context"
	"fmt"
)

// Ping checks that the agent answers.
func (c *Client) Ping(ctx context.Context) error {
	return c.Execute(ctx, "guest-ping", nil, nil)
}

// Info is the reply of guest-info.
type Info struct {
	Version  string `json:"version"`
	Commands []struct {
		Name    string `json:"name"`
		Enabled bool   `json:"enabled"`
	} `json:"supported_commands"`
}

// Enabled reports whether the agent has the command and allows it.
func (i Info) Enabled(command string) bool {
	for _, c := range i.Commands {
		if c.Name == command {
			return c.Enabled
		}
	}
	return false
}

// Info runs guest-info.
func (c *Client) Info(ctx context.Context) (Info, error) {
	var info Info
	err := c.Execute(ctx, "guest-info", nil, &info)
	return info, err
}

// CheckFreeze fails with ErrDisabled unless the agent can freeze and
// thaw: a freeze that cannot be undone must not start.
func (c *Client) CheckFreeze(ctx context.Context, withList bool) error {
	info, err := c.Info(ctx)
	if err != nil {
		return err
	}
	need := []string{"guest-fsfreeze-freeze", "guest-fsfreeze-thaw", "guest-fsfreeze-status"}
	if withList {
		need[0] = "guest-fsfreeze-freeze-list"
	}
	for _, cmd := range need {
		if !info.Enabled(cmd) {
			return fmt.Errorf("guest agent %s: %w: not enabled in the guest", cmd, ErrDisabled)
		}
	}
	return nil
}

// FreezeStatus returns "frozen" or "thawed".
func (c *Client) FreezeStatus(ctx context.Context) (string, error) {
	var status string
	err := c.Execute(ctx, "guest-fsfreeze-status", nil, &status)
	return status, err
}

// Freeze freezes the guest's filesystems (those at mountpoints, if
// given; the agent ignores unknown ones) and returns how many froze.
func (c *Client) Freeze(ctx context.Context, mountpoints []string) (int, error) {
	var n int
	if len(mountpoints) == 0 {
		err := c.Execute(ctx, "guest-fsfreeze-freeze", nil, &n)
		return n, err
	}
	args := struct {
		Mountpoints []string `json:"mountpoints"`
	}{mountpoints}
	err := c.Execute(ctx, "guest-fsfreeze-freeze-list", args, &n)
	return n, err
}

// Thaw thaws the guest's filesystems and returns how many thawed.
func (c *Client) Thaw(ctx context.Context) (int, error) {
	var n int
	err := c.Execute(ctx, "guest-fsfreeze-thaw", nil, &n)
	return n, err
}

// Filesystem is one filesystem of guest-get-fsinfo: where it is
// mounted and the disks it lies on.
type Filesystem struct {
	Name       string        `json:"name"`
	Mountpoint string        `json:"mountpoint"`
	Type       string        `json:"type"`
	Disks      []DiskAddress `json:"disk"`
}

// DiskAddress is how the guest sees one disk (GuestDiskAddress).
type DiskAddress struct {
	// PCIController is the PCI function of the disk's controller: of
	// the disk itself for virtio-blk; every field is -1 when unknown.
	PCIController PCIAddress `json:"pci-controller"`
	BusType       string     `json:"bus-type"`
	Bus           int        `json:"bus"`
	Target        int        `json:"target"`
	Unit          int        `json:"unit"`
	// Serial is the disk's serial, where the guest knows it (on Linux,
	// from udev's database); Dev the device node, such as /dev/vda1.
	Serial string `json:"serial,omitempty"`
	Dev    string `json:"dev,omitempty"`
}

// PCIAddress is a PCI function as the guest numbers it.
type PCIAddress struct {
	Domain   int `json:"domain"`
	Bus      int `json:"bus"`
	Slot     int `json:"slot"`
	Function int `json:"function"`
}

// Valid reports whether the guest gave a PCI address at all.
func (p PCIAddress) Valid() bool {
	return p.Domain >= 0 && p.Bus >= 0 && p.Slot >= 0 && p.Function >= 0
}

// FSInfo runs guest-get-fsinfo: the guest's mounted filesystems, whose
// mountpoints guest-fsfreeze-freeze-list takes.
func (c *Client) FSInfo(ctx context.Context) ([]Filesystem, error) {
	var fss []Filesystem
	err := c.Execute(ctx, "guest-get-fsinfo", nil, &fss)
	return fss, err
}
