// Package qemutest gives tests and benchmarks a VM with qcow2 disks: a
// real QEMU process, killed by PID when the test ends, or a fake one
// served in the test process by qmpfake's model of QEMU's block layer.
package qemutest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/qmp/qmpfake"
)

// Style is how the disks are given to QEMU.
type Style int

const (
	// Legacy uses -drive if=none with a node-name, plus a virtio-blk device.
	Legacy Style = iota
	// Blockdev uses -blockdev file and qcow2 nodes, plus a virtio-blk device.
	Blockdev
	// MachineNone uses -machine none and bare -drive if=none, no device.
	MachineNone
)

func (s Style) String() string {
	switch s {
	case Legacy:
		return "legacy"
	case Blockdev:
		return "blockdev"
	case MachineNone:
		return "machine-none"
	}
	return "style(" + strconv.Itoa(int(s)) + ")"
}

// Backend is what stands in for QEMU.
type Backend int

const (
	// Real runs qemu-system-x86_64; tests on it skip under -short.
	Real Backend = iota
	// Fake serves qmpfake's block layer model of QEMU 7.2 on the VM's
	// monitor sockets, from the test process; it runs under -short.
	Fake
)

func (b Backend) String() string {
	switch b {
	case Real:
		return "qemu"
	case Fake:
		return "fake"
	}
	return "backend(" + strconv.Itoa(int(b)) + ")"
}

// Options describe the VM to start.
type Options struct {
	// Backend is real QEMU unless set.
	Backend Backend
	Disks   int
	Style   Style
	// DiskSize is the virtual size of each disk, as qemu-img takes it.
	// Default 64M.
	DiskSize string
	// SecondMonitor adds a second QMP socket, so a test can look at QEMU
	// independently of the client under test.
	SecondMonitor bool
	// Serials gives each disk's device the serial property, its target
	// (not with MachineNone, which has no devices).
	Serials bool
	// Extra arguments for qemu-system-x86_64. The fake has no model of
	// them and fails the test.
	Extra []string
	// Dir holds the sockets and images of real QEMU instead of a new
	// temporary directory, for a test that shares it with a container.
	Dir string
}

// Disk is one disk image of a started VM.
type Disk struct {
	// Target is the name qsnapd gives the disk: the device id for
	// Legacy and Blockdev, the drive id for MachineNone.
	Target string
	// Drive is the -drive id (empty for Blockdev).
	Drive string
	// NodeName is the qcow2 node's name.
	NodeName string
	// Path is the image file.
	Path string
}

// VM is a running QEMU process, or the fake's model of one.
type VM struct {
	Dir   string
	QMP   string // the monitor for the client under test
	QMP2  string // the second monitor, if asked for
	Disks []Disk
	PID   int // 0 on the fake
	// Fake is the fake's block layer, for checks of its model; nil on
	// real QEMU.
	Fake *qmpfake.BlockLayer

	cmd  *exec.Cmd
	done <-chan struct{}
	log  *LockedBuffer
}

// LockedBuffer collects a process's output while tests may read it.
type LockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *LockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *LockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Available reports whether qemu-system-x86_64 and qemu-img are on PATH.
func Available() bool {
	for _, bin := range []string{"qemu-system-x86_64", "qemu-img"} {
		if _, err := exec.LookPath(bin); err != nil {
			return false
		}
	}
	return true
}

// Require skips tb under -short and fails it when QEMU is missing:
// real-QEMU tests are part of the suite, not optional extras.
func Require(tb testing.TB) {
	tb.Helper()
	if testing.Short() {
		tb.Skip("real QEMU test skipped under -short")
	}
	if !Available() {
		tb.Fatal("qemu-system-x86_64 and qemu-img are needed: run make deps")
	}
}

// TempDir makes a short temporary directory, removed when tb ends. Unix
// socket paths must stay under 108 bytes, which t.TempDir does not
// promise.
func TempDir(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "qs")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// TargetName is the name of the i-th disk: vda, vdb, ..., vdz, vdaa.
func TargetName(i int) string {
	name := ""
	for i++; i > 0; i = (i - 1) / 26 {
		name = string(rune('a'+(i-1)%26)) + name
	}
	return "vd" + name
}

// Start starts a VM on o.Backend and ends it when tb ends. Real QEMU
// starts paused (-S), with no guest OS, under TCG.
func Start(tb testing.TB, o Options) *VM {
	tb.Helper()
	if o.DiskSize == "" {
		o.DiskSize = "64M"
	}
	if o.Backend == Fake {
		return startFake(tb, o)
	}
	Require(tb)
	dir := o.Dir
	if dir == "" {
		dir = TempDir(tb)
	}
	done := make(chan struct{})
	vm := &VM{Dir: dir, QMP: filepath.Join(dir, "qmp.sock"), done: done, log: &LockedBuffer{}}

	args := []string{"-S", "-nodefaults", "-display", "none", "-accel", "tcg", "-no-user-config"}
	if o.Style == MachineNone {
		args = append(args, "-machine", "none")
	} else {
		args = append(args, "-M", "q35", "-m", "128")
	}
	args = append(args, "-qmp", "unix:"+vm.QMP+",server=on,wait=off")
	if o.SecondMonitor {
		vm.QMP2 = filepath.Join(dir, "qmp2.sock")
		args = append(args, "-qmp", "unix:"+vm.QMP2+",server=on,wait=off")
	}

	if o.Disks > 0 {
		first := filepath.Join(dir, TargetName(0)+".qcow2")
		if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", first, o.DiskSize).CombinedOutput(); err != nil {
			tb.Fatalf("qemu-img create: %v: %s", err, out)
		}
		blank, err := os.ReadFile(first)
		if err != nil {
			tb.Fatal(err)
		}
		for i := 0; i < o.Disks; i++ {
			t := TargetName(i)
			d := Disk{Target: t, NodeName: "fmt-" + t, Path: filepath.Join(dir, t+".qcow2")}
			// Copying the blank image costs far less than a qemu-img
			// process per disk.
			if i > 0 {
				if err := os.WriteFile(d.Path, blank, 0o644); err != nil {
					tb.Fatal(err)
				}
			}
			serial := ""
			if o.Serials {
				serial = ",serial=" + t
			}
			switch o.Style {
			case Legacy:
				d.Drive = "drive-" + t
				args = append(args,
					"-drive", "if=none,id="+d.Drive+",file="+d.Path+",format=qcow2,node-name="+d.NodeName,
					"-device", "virtio-blk-pci,drive="+d.Drive+",id="+t+serial)
			case Blockdev:
				args = append(args,
					"-blockdev", "driver=file,filename="+d.Path+",node-name=file-"+t,
					"-blockdev", "driver=qcow2,file=file-"+t+",node-name="+d.NodeName,
					"-device", "virtio-blk-pci,drive="+d.NodeName+",id="+t+serial)
			case MachineNone:
				d.Drive = "drive-" + t
				d.Target = d.Drive
				args = append(args, "-drive", "if=none,id="+d.Drive+",file="+d.Path+",format=qcow2,node-name="+d.NodeName)
			}
			vm.Disks = append(vm.Disks, d)
		}
	}
	args = append(args, o.Extra...)

	vm.cmd = exec.Command("qemu-system-x86_64", args...)
	vm.cmd.Stdout = vm.log
	vm.cmd.Stderr = vm.log
	// If the test binary dies, so does QEMU.
	vm.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := vm.cmd.Start(); err != nil {
		tb.Fatalf("start qemu: %v", err)
	}
	vm.PID = vm.cmd.Process.Pid
	go func() { _ = vm.cmd.Wait(); close(done) }() // killed at cleanup: the status says nothing
	tb.Cleanup(func() {
		vm.Kill()
		if tb.Failed() {
			tb.Logf("qemu %v\noutput: %s", args, vm.log.String())
		}
	})

	for _, sock := range []string{vm.QMP, vm.QMP2} {
		if sock != "" {
			if err := vm.waitSocket(sock, 10*time.Second); err != nil {
				tb.Fatalf("qemu: %v\nargs: %v\noutput: %s", err, args, vm.log.String())
			}
		}
	}
	return vm
}

func (vm *VM) waitSocket(path string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		// QEMU creates the socket file a moment before it accepts on
		// it, so only a connection proves it is ready.
		if conn, err := net.Dial("unix", path); err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-vm.done:
			return fmt.Errorf("exited before creating %s", path)
		case <-time.After(5 * time.Millisecond):
		}
	}
	return fmt.Errorf("no socket %s after %v", path, limit)
}

// Kill kills QEMU by PID and waits for it to exit. The fake drops its
// connections and stops accepting, as a killed QEMU does.
func (vm *VM) Kill() {
	switch {
	case vm.Fake != nil:
		vm.Fake.Kill()
	case vm.cmd.Process != nil:
		_ = vm.cmd.Process.Kill() // fails only if it has exited already
	}
	<-vm.done
}

// Exited is closed once QEMU has exited: killed, or after quit.
func (vm *VM) Exited() <-chan struct{} { return vm.done }

// Real reports whether vm is a real QEMU process. The fake has no guest
// data, no HMP (human-monitor-command answers "") and no output, so a
// check that needs them runs on real QEMU only.
func (vm *VM) Real() bool { return vm.Fake == nil }

// Output is what QEMU printed so far; the fake prints nothing.
func (vm *VM) Output() string { return vm.log.String() }
