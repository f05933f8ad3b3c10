// Package version holds the build's version string, stamped by the
// Makefile through -ldflags and otherwise read from the module build info.
package version

import (
	"runtime"
	"runtime/debug"
)

// Version is set with -ldflags "-X github.com/qsnapd/qsnapd/internal/version.Version=...".
var Version = ""

// String returns the version, falling back to the module version or the
// VCS revision Go embedded in the binary.
func String() string {
	if Version != "" {
		return Version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return "dev-" + s.Value[:12]
		}
	}
	return "dev"
}

// Go is the Go version the binary was built with.
func Go() string { return runtime.Version() }
