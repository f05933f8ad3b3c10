package qemutest

import (
	"strings"
	"sync"
	"testing"
)

// Check is one named check of a suite that runs once per backend: on
// the fake (under -short too) and on real QEMU. The check starts its
// VMs on SuiteBackend(t).
type Check struct {
	Name string
	Run  func(t *testing.T)
	// RealOnly, if set, says why the check needs real QEMU; the fake's
	// suite skips it with that reason.
	RealOnly string
}

// suites maps a suite's top-level test name to its backend.
var suites sync.Map

// RunSuite runs each check as a subtest of t on backend b. t must be a
// top-level test: the suite is known by its name, so that SuiteBackend
// finds it from any depth of subtests.
func RunSuite(t *testing.T, b Backend, checks []Check) {
	t.Helper()
	if strings.Contains(t.Name(), "/") {
		t.Fatalf("RunSuite in subtest %s: run a suite from a top-level test", t.Name())
	}
	suites.Store(t.Name(), b)
	for _, c := range checks {
		t.Run(c.Name, func(t *testing.T) {
			if c.RealOnly != "" && b != Real {
				t.Skipf("needs real QEMU: %s", c.RealOnly)
			}
			c.Run(t)
		})
	}
}

// SuiteBackend is the backend of the suite tb runs in, at any depth of
// subtests; real QEMU outside a suite.
func SuiteBackend(tb testing.TB) Backend {
	root, _, _ := strings.Cut(tb.Name(), "/")
	if b, ok := suites.Load(root); ok {
		return b.(Backend)
	}
	return Real
}
