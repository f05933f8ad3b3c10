package nspawn

import "errors"

var (
	// ErrUnavailable means containers cannot run here: the process is not
	// root, there is no cgroup file system, or the tools cannot be
	// installed. Tests skip with it.
	ErrUnavailable = errors.New("nspawn: cannot run containers here")

	// ErrKilled means a container did not power off in time and Stop
	// killed it.
	ErrKilled = errors.New("nspawn: container killed")
)
