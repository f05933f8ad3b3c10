package qcow2

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

const (
	MiB = 1 << 20
	GiB = 1 << 30
	TiB = 1 << 40
)

// run runs a qemu-utils tool and returns its stdout, failing the test on a
// non-zero exit. The test is skipped if the tool is not installed.
func run(t *testing.T, tool string, args ...string) []byte {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		t.Skipf("%s not on PATH", tool)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(tool, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\nstdout: %s\nstderr: %s", tool, strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return out
}

// info is `qemu-img info --output=json` without the fields that depend on
// the file name or on how many blocks the file system allocated.
func info(t *testing.T, path string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(run(t, "qemu-img", "info", "--output=json", path), &m); err != nil {
		t.Fatalf("parse qemu-img info: %v", err)
	}
	delete(m, "filename")
	delete(m, "actual-size")
	return m
}

// check runs `qemu-img check`; it exits non-zero on corruption or leaks.
func check(t *testing.T, path string) {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(run(t, "qemu-img", "check", "--output=json", path), &m); err != nil {
		t.Fatalf("parse qemu-img check: %v", err)
	}
	for _, k := range []string{"check-errors", "corruptions", "leaks"} {
		if v, ok := m[k]; ok && v != 0.0 {
			t.Errorf("qemu-img check %s: %s = %v, want 0", path, k, v)
		}
	}
}

func TestCreateMatchesQemuImg(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "64M")
	for _, tc := range []struct {
		name        string
		size        uint64
		clusterBits uint32
		identical   bool // qemu-img lays out more refcount blocks its own way
	}{
		{"64MiB", 64 * MiB, 0, true},
		{"1GiB", 1 * GiB, 0, true},
		{"10GiB", 10 * GiB, 0, true},
		{"100MiB+512", 100*MiB + 512, 0, true},
		{"2TiB", 2 * TiB, 0, true},
		{"2PiB-largest-L1", 2048 * TiB, 0, true},
		{"512B-clusters", 100 * MiB, 9, true},
		{"4KiB-clusters", 10 * GiB, 12, true},
		{"8KiB-clusters", 10 * GiB, 13, true},
		{"2MiB-clusters", 1 * TiB, 21, true},
		{"512B-clusters-many-refblocks", 1 * GiB, 9, false},
	} {
		for _, backed := range []bool{false, true} {
			t.Run(tc.name+"/backed="+strconv.FormatBool(backed), func(t *testing.T) {
				o := Options{VirtualSize: tc.size, ClusterBits: tc.clusterBits}
				args := []string{"create", "-q", "-f", "qcow2"}
				if tc.clusterBits != 0 {
					args = append(args, "-o", "cluster_size="+strconv.Itoa(1<<tc.clusterBits))
				}
				if backed {
					o.BackingFile, o.BackingFormat = base, "qcow2"
					args = append(args, "-F", "qcow2", "-b", base)
				}
				ours := filepath.Join(t.TempDir(), "ours.qcow2")
				ref := filepath.Join(t.TempDir(), "ref.qcow2")
				if err := Create(ours, o); err != nil {
					t.Fatalf("Create: %v", err)
				}
				run(t, "qemu-img", append(args, ref, strconv.FormatUint(tc.size, 10))...)
				check(t, ours)

				got, want := info(t, ours), info(t, ref)
				if !reflect.DeepEqual(got, want) {
					t.Errorf("qemu-img info:\n got %v\nwant %v", got, want)
				}
				cs := 1 << 16
				if tc.clusterBits != 0 {
					cs = 1 << tc.clusterBits
				}
				for k, v := range map[string]any{
					"format":       "qcow2",
					"virtual-size": float64(tc.size),
					"cluster-size": float64(cs),
				} {
					if got[k] != v {
						t.Errorf("info %s = %v, want %v", k, got[k], v)
					}
				}
				if c := got["format-specific"].(map[string]any)["data"].(map[string]any)["compat"]; c != "1.1" {
					t.Errorf("compat = %v, want 1.1", c)
				}
				if backed && (got["backing-filename"] != base || got["backing-filename-format"] != "qcow2") {
					t.Errorf("backing = %v (%v), want %s (qcow2)",
						got["backing-filename"], got["backing-filename-format"], base)
				}

				a, err := os.ReadFile(ours)
				if err != nil {
					t.Fatal(err)
				}
				b, err := os.ReadFile(ref)
				if err != nil {
					t.Fatal(err)
				}
				if same := bytes.Equal(a, b); same != tc.identical {
					t.Errorf("bytes equal to qemu-img's = %v, want %v (sizes %d, %d)", same, tc.identical, len(a), len(b))
				}
			})
		}
	}
}

func TestOverlayWorks(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	overlay := filepath.Join(dir, "overlay.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "64M")
	io := func(path, cmd string) {
		t.Helper()
		out := run(t, "qemu-io", "-f", "qcow2", "-c", cmd, path)
		if bytes.Contains(out, []byte("fail")) {
			t.Fatalf("qemu-io -c %q %s: %s", cmd, path, out)
		}
	}
	io(base, "write -P 0xab 0 64k")
	if err := Create(overlay, Options{VirtualSize: 64 * MiB, BackingFile: base, BackingFormat: "qcow2"}); err != nil {
		t.Fatalf("Create: %v", err)
	}
	io(overlay, "read -P 0xab 0 64k")    // through the backing file
	io(overlay, "read -P 0 64k 64k")     // unallocated in both
	io(overlay, "write -P 0xcd 32k 64k") // half over base data, half fresh
	io(overlay, "read -P 0xab 0 32k")
	io(overlay, "read -P 0xcd 32k 64k")
	check(t, overlay)
	run(t, "qemu-img", "commit", "-q", overlay)
	check(t, base)
	io(base, "read -P 0xab 0 32k")
	io(base, "read -P 0xcd 32k 64k")
}

func TestVirtualSize(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.qcow2")
	if err := Create(img, Options{VirtualSize: 64 * MiB}); err != nil {
		t.Fatal(err)
	}
	if got, err := VirtualSize(img); err != nil || got != 64*MiB {
		t.Errorf("created: got %d, %v; want %d", got, err, 64*MiB)
	}
	run(t, "qemu-img", "resize", "-q", img, "100M")
	if got, err := VirtualSize(img); err != nil || got != 100*MiB {
		t.Errorf("after qemu-img resize: got %d, %v; want %d", got, err, 100*MiB)
	}
	plain := filepath.Join(dir, "plain.img")
	if err := os.WriteFile(plain, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{plain, filepath.Join(dir, "missing")} {
		if got, err := VirtualSize(p); err == nil {
			t.Errorf("%s: got %d, want an error", filepath.Base(p), got)
		}
	}
}

func TestCreateExisting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.qcow2")
	if err := os.WriteFile(path, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := Create(path, Options{VirtualSize: GiB})
	if !errors.Is(err, ErrExists) || !errors.Is(err, os.ErrExist) {
		t.Fatalf("Create on existing file: got %v, want ErrExists wrapping os.ErrExist", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "keep me" {
		t.Errorf("existing file now holds %q, want %q", b, "keep me")
	}
}

func TestCreateInvalidLeavesNoFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.qcow2")
	if err := Create(path, Options{VirtualSize: 1000}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Create: got %v, want ErrInvalid", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat after failed Create: got %v, want not exist", err)
	}
}

func TestWriteTo(t *testing.T) {
	dir := t.TempDir()
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", filepath.Join(dir, "base.qcow2"), "1G")
	path := filepath.Join(dir, "disk.qcow2")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := WriteTo(f, Options{VirtualSize: GiB, BackingFile: "base.qcow2", BackingFormat: "qcow2"}); err != nil {
		t.Fatalf("WriteTo empty file: %v", err)
	}
	check(t, path)
	if got := info(t, path)["backing-filename"]; got != "base.qcow2" {
		t.Errorf("backing-filename = %v, want base.qcow2", got)
	}
	before, _ := os.ReadFile(path)
	if err := WriteTo(f, Options{VirtualSize: GiB}); !errors.Is(err, ErrNotEmpty) {
		t.Errorf("WriteTo non-empty file: got %v, want ErrNotEmpty", err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Errorf("WriteTo changed a non-empty file")
	}
}

func TestValidate(t *testing.T) {
	long := strings.Repeat("x", 1024)
	for _, tc := range []struct {
		name string
		o    Options
		ok   bool
	}{
		{"minimal", Options{VirtualSize: 512}, true},
		{"backed", Options{VirtualSize: GiB, BackingFile: "b", BackingFormat: "raw"}, true},
		{"backing without format", Options{VirtualSize: GiB, BackingFile: "b"}, true},
		{"longest backing name", Options{VirtualSize: GiB, BackingFile: long[:1023], BackingFormat: "qcow2"}, true},
		{"largest size", Options{VirtualSize: 2048 * TiB}, true},
		{"zero size", Options{}, false},
		{"unaligned size", Options{VirtualSize: GiB + 1}, false},
		{"too large for L1", Options{VirtualSize: 2048*TiB + 512}, false},
		{"backing name too long", Options{VirtualSize: GiB, BackingFile: long}, false},
		{"format without backing", Options{VirtualSize: GiB, BackingFormat: "qcow2"}, false},
		{"format too long", Options{VirtualSize: GiB, BackingFile: "b", BackingFormat: long[:16]}, false},
		{"cluster bits 8", Options{VirtualSize: GiB, ClusterBits: 8}, false},
		{"cluster bits 22", Options{VirtualSize: GiB, ClusterBits: 22}, false},
		{"name over 512B cluster", Options{VirtualSize: GiB, ClusterBits: 9, BackingFile: long[:400]}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Validate(tc.o)
			if tc.ok && err != nil {
				t.Errorf("Validate(%+v) = %v, want nil", tc.o, err)
			}
			if !tc.ok && !errors.Is(err, ErrInvalid) {
				t.Errorf("Validate(%+v) = %v, want ErrInvalid", tc.o, err)
			}
		})
	}
}

func BenchmarkCreate(b *testing.B) {
	dir := b.TempDir()
	o := Options{VirtualSize: 10 * GiB, BackingFile: "/var/lib/vm/base.qcow2", BackingFormat: "qcow2"}
	i := 0
	for b.Loop() {
		i++
		if err := Create(filepath.Join(dir, strconv.Itoa(i)), o); err != nil {
			b.Fatal(err)
		}
	}
}
