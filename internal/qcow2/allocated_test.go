package qcow2

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestAllocated(t *testing.T) {
	dir := t.TempDir()
	write := func(path, cmd string) {
		t.Helper()
		if out := run(t, "qemu-io", "-f", "qcow2", "-c", cmd, path); bytes.Contains(out, []byte("fail")) {
			t.Fatalf("qemu-io -c %q %s: %s", cmd, path, out)
		}
	}
	for _, tc := range []struct {
		name   string
		create func(path string)
		want   bool
	}{
		{"made by Create", func(p string) {
			if err := Create(p, Options{VirtualSize: 64 * MiB, BackingFile: "base.qcow2", BackingFormat: "qcow2"}); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"made by qemu-img", func(p string) { run(t, "qemu-img", "create", "-q", "-f", "qcow2", p, "1G") }, false},
		{"written once", func(p string) {
			run(t, "qemu-img", "create", "-q", "-f", "qcow2", p, "64M")
			write(p, "write -P 0xab 1M 4k")
		}, true},
		// Past the first L1 entry: 512 MiB per entry with 64 KiB clusters.
		{"written far in", func(p string) {
			run(t, "qemu-img", "create", "-q", "-f", "qcow2", p, "4G")
			write(p, "write -P 0xab 3G 64k")
		}, true},
		// Zeros written are data of the image's own: they hide the
		// backing file's, and a commit copies them.
		{"written with zeros", func(p string) {
			run(t, "qemu-img", "create", "-q", "-f", "qcow2", p, "64M")
			write(p, "write -z 0 64k")
		}, true},
		{"small clusters", func(p string) {
			run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", p, "64M")
			write(p, "write -P 0xcd 32M 512")
		}, true},
		{"version 2", func(p string) {
			run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", p, "64M")
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.name+".qcow2")
			tc.create(path)
			got, err := Allocated(path)
			if err != nil || got != tc.want {
				t.Errorf("Allocated = %v, %v; want %v", got, err, tc.want)
			}
		})
	}

	raw := filepath.Join(dir, "raw.img")
	if err := os.WriteFile(raw, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Allocated(raw); !errors.Is(err, ErrNotQcow2) {
		t.Errorf("raw image: %v, want ErrNotQcow2", err)
	}
	if _, err := Allocated(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing image: %v, want ErrNotExist", err)
	}
}
