package qemutest

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/qsnapd/qsnapd/internal/qcow2"
	"github.com/qsnapd/qsnapd/qmp/qmpfake"
)

// startFake lays out the VM as Start does for real QEMU (same files,
// sockets, node and drive names) and serves one block layer model on
// every monitor socket, so that the client under test and the observer
// see one block graph and both get its events.
func startFake(tb testing.TB, o Options) *VM {
	tb.Helper()
	if len(o.Extra) > 0 {
		tb.Fatalf("the fake backend has no model of QEMU arguments %q: run this test on real QEMU only", o.Extra)
	}
	size, err := parseSize(o.DiskSize)
	if err != nil {
		tb.Fatal(err)
	}
	dir := TempDir(tb)
	vm := &VM{Dir: dir, QMP: filepath.Join(dir, "qmp.sock"), log: &LockedBuffer{}}
	if o.SecondMonitor {
		vm.QMP2 = filepath.Join(dir, "qmp2.sock")
	}
	var fds []qmpfake.FakeDisk
	for i := 0; i < o.Disks; i++ {
		t := TargetName(i)
		d := Disk{Target: t, NodeName: "fmt-" + t, Path: filepath.Join(dir, t+".qcow2")}
		if err := qcow2.Create(d.Path, qcow2.Options{VirtualSize: uint64(size)}); err != nil {
			tb.Fatal(err)
		}
		fd := qmpfake.FakeDisk{Target: t, NodeName: d.NodeName, File: d.Path, VirtualSize: size}
		if o.Serials {
			fd.Serial = t
		}
		switch o.Style {
		case Legacy:
			d.Drive = "drive-" + t
			fd.Drive = d.Drive
		case Blockdev:
			// The protocol node is file-<target>, as Start names it.
		case MachineNone:
			d.Drive = "drive-" + t
			d.Target = d.Drive
			fd.Drive, fd.Target = d.Drive, ""
		default:
			tb.Fatalf("the fake backend has no disk style %v", o.Style)
		}
		vm.Disks = append(vm.Disks, d)
		fds = append(fds, fd)
	}

	vm.Fake = qmpfake.NewBlockLayer(fds)
	vm.done = vm.Fake.Gone()
	for _, path := range []string{vm.QMP, vm.QMP2} {
		if path == "" {
			continue
		}
		srv, err := qmpfake.Start(path)
		if err != nil {
			tb.Fatal(err)
		}
		vm.Fake.Install(srv)
		tb.Cleanup(func() {
			if err := srv.Close(); err != nil {
				tb.Errorf("fake QEMU on %s: %v", filepath.Base(path), err)
			}
			if tb.Failed() {
				tb.Logf("fake QEMU on %s received: %s", filepath.Base(path), commandNames(srv.Received()))
			}
		})
	}
	tb.Cleanup(vm.Fake.Kill)
	return vm
}

func commandNames(cmds []qmpfake.Command) string {
	names := make([]string, len(cmds))
	for i, c := range cmds {
		names[i] = c.Execute
	}
	return strings.Join(names, " ")
}

// parseSize reads a size as qemu-img takes it: bytes, or a number with
// a binary suffix (k or K, M, G, T).
func parseSize(size string) (int64, error) {
	s, shift := size, 0
	if n := len(s); n > 0 {
		switch s[n-1] {
		case 'k', 'K':
			shift = 10
		case 'M':
			shift = 20
		case 'G':
			shift = 30
		case 'T':
			shift = 40
		}
		if shift > 0 {
			s = s[:n-1]
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("disk size %q: want a positive number of bytes, with an optional K, M, G or T suffix", size)
	}
	return n << shift, nil
}
