package qemutest

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp/raw"

	"github.com/qsnapd/qsnapd/qmp"
)

func TestTargetName(t *testing.T) {
	for i, want := range map[int]string{0: "vda", 1: "vdb", 25: "vdz", 26: "vdaa", 27: "vdab", 51: "vdaz", 52: "vdba"} {
		if got := TargetName(i); got != want {
			t.Errorf("TargetName(%d) = %s, want %s", i, got, want)
		}
	}
}

func TestCleanupKillsQEMU(t *testing.T) {
	Require(t)
	var pid int
	var qmpPath string
	t.Run("vm", func(t *testing.T) {
		vm := Start(t, Options{Disks: 2, Style: Blockdev, SecondMonitor: true})
		pid, qmpPath = vm.PID, vm.QMP
		if err := syscall.Kill(pid, 0); err != nil {
			t.Fatalf("qemu %d not running: %v", pid, err)
		}
		out, err := exec.Command("qemu-img", "info", "-U", vm.Disks[1].Path).CombinedOutput()
		if err != nil {
			t.Fatalf("qemu-img info -U: %v: %s", err, out)
		}
	})
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("qemu %d still running after the test's cleanup", pid)
	}
	if qmpPath == "" {
		t.Fatal("no QMP path")
	}
}

// TestFakeLaysOutDisksAsQEMU starts each style on both backends: the
// files, VM.Disks and what a client sees must match, bar the directory.
func TestFakeLaysOutDisksAsQEMU(t *testing.T) {
	Require(t)
	for _, style := range []Style{Legacy, Blockdev, MachineNone} {
		t.Run(style.String(), func(t *testing.T) {
			var got [2]string
			for i, b := range []Backend{Real, Fake} {
				vm := Start(t, Options{Backend: b, Disks: 2, Style: style})
				disks, err := dial(t, vm.QMP).Disks(testCtx(t))
				if err != nil {
					t.Fatal(err)
				}
				files, _ := filepath.Glob(filepath.Join(vm.Dir, "*.qcow2"))
				got[i] = strings.ReplaceAll(fmt.Sprintf("%+v %+v %v", vm.Disks, disks, files), vm.Dir, "$DIR")
			}
			if got[0] != got[1] {
				t.Errorf("fake:\n%s\nqemu:\n%s", got[1], got[0])
			}
		})
	}
}

// TestFakeMonitorsShareOneQEMU runs under -short: both monitors see one
// block graph and both get its events; Kill closes them as QEMU's death
// does.
func TestFakeMonitorsShareOneQEMU(t *testing.T) {
	vm := Start(t, Options{Backend: Fake, Disks: 1, Style: Blockdev, SecondMonitor: true})
	if vm.Real() || vm.PID != 0 || vm.Output() != "" {
		t.Errorf("fake VM: real %v, pid %d, output %q", vm.Real(), vm.PID, vm.Output())
	}
	ctx := testCtx(t)
	c, obs := dial(t, vm.QMP), dial(t, vm.QMP2)
	sub, err := obs.Subscribe(qmp.Filter{Names: []string{"RESUME"}})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	overlay := filepath.Join(vm.Dir, "vda.ov")
	if err := c.Transaction(ctx, qmp.SnapshotSync("fmt-vda", overlay, "ov", raw.NewImageModeAbsolutePaths)); err != nil {
		t.Fatal(err)
	}
	if err := c.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	if disks, err := obs.Disks(ctx); err != nil || disks[0].File != overlay {
		t.Errorf("observer sees %+v, %v; want vda on %s", disks, err, overlay)
	}
	if _, err := sub.Next(ctx); err != nil {
		t.Errorf("observer got no RESUME: %v", err)
	}
	vm.Kill()
	select {
	case <-vm.Exited():
	default:
		t.Error("Exited not closed after Kill")
	}
	for _, cl := range []*qmp.Client{c, obs} {
		select {
		case <-cl.Disconnected():
		case <-ctx.Done():
			t.Fatalf("%s still connected after Kill", cl.Path())
		}
	}
	if _, err := qmp.Dial(ctx, vm.QMP); err == nil {
		t.Error("the monitor accepts after Kill")
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"512": 512, "64M": 64 << 20, "1G": 1 << 30, "4k": 4096, "2T": 2 << 40, "": -1, "M": -1, "-1M": -1, "1.5G": -1} {
		got, err := parseSize(in)
		if want < 0 && err == nil || want >= 0 && (err != nil || got != want) {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
}

func dial(t *testing.T, path string) *qmp.Client {
	t.Helper()
	c, err := qmp.Dial(testCtx(t), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}
