package api

import (
	"strings"
	"testing"

	"github.com/qsnapd/qsnapd/errkind"
)

// TestErrorTable: one row per kind, every kind but OK has one, and the
// rows are well formed.
func TestErrorTable(t *testing.T) {
	seen := map[errkind.Kind]bool{}
	for _, c := range errorTable {
		if seen[c.Kind] {
			t.Errorf("%v has two rows", c.Kind)
		}
		seen[c.Kind] = true
		if c.Code == "" || c.Status < 400 || c.LibvirtFrom == 0 || c.DBus != "" && !strings.HasPrefix(c.DBus, DBusErrorPrefix) {
			t.Errorf("row %+v", c)
		}
	}
	for _, k := range errkind.All() {
		if k != errkind.OK && !seen[k] {
			t.Errorf("%v has no row", k)
		}
	}
	for _, k := range []errkind.Kind{errkind.OK, errkind.Kind(200)} {
		if c := ClassOf(k); c.Kind != errkind.InternalError || c.Code != CodeInternalError || c.Status != 500 || c.DBus != DBusInternalError {
			t.Errorf("ClassOf(%v) = %+v, want the internal error", k, c)
		}
	}
}
