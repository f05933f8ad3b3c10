package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoEngineDeps: qsnapctl speaks the wire protocol and nothing more;
// the engine, and what it pulls in, stays in the daemon.
func TestNoEngineDeps(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go binary to list the dependencies with")
	}
	out, err := exec.Command(goBin, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	engine := []string{
		"github.com/qsnapd/qsnapd/driver",
		"github.com/qsnapd/qsnapd/transaction",
		"github.com/qsnapd/qsnapd/qmp",
		"github.com/qsnapd/qsnapd/guestagent",
		"github.com/digitalocean/go-qemu",
		"go.etcd.io/bbolt",
		"go.uber.org/zap",
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 {
		t.Fatal("go list -deps listed nothing")
	}
	for _, dep := range deps {
		for _, e := range engine {
			if dep == e || strings.HasPrefix(dep, e+"/") {
				t.Errorf("qsnapctl depends on %s", dep)
			}
		}
	}
}
