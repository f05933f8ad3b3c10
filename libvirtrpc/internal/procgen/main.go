// Command procgen writes libvirtrpc's table of libvirt's remote
// procedures from go-libvirt's generated constants, whose package is
// internal to go-libvirt and so cannot be imported.
//
// Usage: go run ./libvirtrpc/internal/procgen > libvirtrpc/procnames.gen.go
package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/qsnapd/qsnapd/libvirtrpc/internal/procgen/procs"
)

func main() {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", procs.Module).Output()
	if err != nil {
		fmt.Fprintf(os.Stderr, "procgen: find %s: %v\n", procs.Module, err)
		os.Exit(1)
	}
	src, err := os.ReadFile(procs.ConstantsFile(strings.TrimSpace(string(out))))
	if err != nil {
		fmt.Fprintf(os.Stderr, "procgen: %v\n", err)
		os.Exit(1)
	}
	gen, err := procs.Generate(src)
	if err != nil {
		fmt.Fprintf(os.Stderr, "procgen: %v\n", err)
		os.Exit(1)
	}
	os.Stdout.Write(gen)
}
