package qemutest

import (
	"os/exec"
	"syscall"
	"testing"
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
