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
