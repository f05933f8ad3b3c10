package transaction

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestValidatedOverlayIsNotWrittenThrough: filling and emptying an
// overlay that was an empty file touch only that file, never what a
// symbolic link or another file swapped in since points to.
func TestValidatedOverlayIsNotWrittenThrough(t *testing.T) {
	const precious = "precious data"
	for _, tc := range []struct {
		name string
		// swap changes the overlay path after validation; target is the
		// file whose content must survive.
		swap   func(t *testing.T, overlay, target string)
		filled bool // the daemon had filled the overlay: Cleanup empties it
	}{
		{"fill through a symlink", swapForSymlink, false},
		{"fill another file", swapForFile, false},
		{"fill a file that is no longer empty", writeInto, false},
		{"empty through a symlink", swapForSymlink, true},
		{"empty another file", swapForFile, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			overlay, target := filepath.Join(dir, "vda.s1"), filepath.Join(dir, "precious")
			if err := os.WriteFile(overlay, nil, 0o640); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(target, []byte(precious), 0o640); err != nil {
				t.Fatal(err)
			}
			fi, err := os.Lstat(overlay)
			if err != nil {
				t.Fatal(err)
			}
			d := &Disk{Target: "vda", Source: filepath.Join(dir, "vda.qcow2"), SourceFormat: "qcow2", VirtualSize: 1 << 20,
				Overlay: overlay, WasEmpty: true, FileID: IdentifyFile(fi), FileCreated: tc.filled}
			tc.swap(t, overlay, target)
			if tc.filled {
				err = removeOverlay(d)
			} else {
				err = createOverlay(d)
			}
			if !errors.Is(err, ErrOverlayChanged) {
				t.Errorf("got %v, want ErrOverlayChanged", err)
			}
			if d.FileCreated != tc.filled {
				t.Errorf("FileCreated = %v, want %v: a refused file is not the daemon's", d.FileCreated, tc.filled)
			}
			if data, err := os.ReadFile(target); err != nil || string(data) != precious {
				t.Errorf("target: %q, %v; want it untouched", data, err)
			}
		})
	}
}

func swapForSymlink(t *testing.T, overlay, target string) {
	t.Helper()
	if err := os.Symlink(target, overlay+".new"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(overlay+".new", overlay); err != nil {
		t.Fatal(err)
	}
}

// swapForFile renames the target over the overlay: another file, with
// content, at the overlay path.
func swapForFile(t *testing.T, overlay, target string) {
	t.Helper()
	if err := os.Link(target, overlay+".new"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(overlay+".new", overlay); err != nil {
		t.Fatal(err)
	}
}

// writeInto writes the target's content into the overlay itself, and
// makes the overlay the file to check.
func writeInto(t *testing.T, overlay, target string) {
	t.Helper()
	if err := os.Remove(target); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(overlay, []byte("precious data"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(overlay, target); err != nil {
		t.Fatal(err)
	}
}
