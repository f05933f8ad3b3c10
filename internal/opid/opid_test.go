package opid

import (
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"my-op-1", true},
		{"a", true},
		{"A.b_c-9", true},
		{strings.Repeat("x", MaxLen), true},
		{"", false},
		{strings.Repeat("x", MaxLen+1), false},
		{"a/b", false},
		{"a b", false},
		{"ä", false},
		{"a\n", false},
	} {
		if err := Check(tc.id); (err == nil) != tc.ok {
			t.Errorf("Check(%q) = %v, want ok=%v", tc.id, err, tc.ok)
		}
	}
}

func TestNew(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		id := New()
		if err := Check(id); err != nil || len(id) != 24 {
			t.Fatalf("New() = %q: %v", id, err)
		}
		// The first 8 characters name QEMU nodes: they must differ.
		if seen[id[:8]] {
			t.Fatalf("prefix %q repeated", id[:8])
		}
		seen[id[:8]] = true
	}
}
