package qemutest

import (
	"slices"
	"testing"
)

func TestRunSuiteFake(t *testing.T) {
	if got, want := ranOn(t, Fake), []string{"any"}; !slices.Equal(got, want) {
		t.Errorf("ran %v, want %v: the fake skips what needs real QEMU", got, want)
	}
}

func TestRunSuiteReal(t *testing.T) {
	if got, want := ranOn(t, Real), []string{"any", "real-only"}; !slices.Equal(got, want) {
		t.Errorf("ran %v, want %v", got, want)
	}
}

// ranOn runs a suite of two checks on b, each asserting that it sees b
// at any depth, and returns the checks that ran. It starts no VM.
func ranOn(t *testing.T, b Backend) []string {
	var ran []string
	see := func(name string) func(*testing.T) {
		return func(t *testing.T) {
			ran = append(ran, name)
			if got := SuiteBackend(t); got != b {
				t.Errorf("SuiteBackend %v, want %v", got, b)
			}
			t.Run("nested", func(t *testing.T) {
				if got := SuiteBackend(t); got != b {
					t.Errorf("SuiteBackend in a subtest %v, want %v", got, b)
				}
			})
		}
	}
	RunSuite(t, b, []Check{
		{Name: "any", Run: see("any")},
		{Name: "real-only", Run: see("real-only"), RealOnly: "a test of RealOnly"},
	})
	return ran
}

func TestSuiteBackendOutsideASuite(t *testing.T) {
	if got := SuiteBackend(t); got != Real {
		t.Errorf("SuiteBackend outside a suite %v, want %v", got, Real)
	}
}
