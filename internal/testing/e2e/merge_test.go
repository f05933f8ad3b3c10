package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/guestagent/agentfake"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/qmp"
)

// TestBackupThenMerge runs the README's live backup through the
// binaries: a quiesced atomic snapshot, a copy of the frozen images,
// then snapshot-delete merging the overlays back while the CLI shows
// progress; the guest's writes since the snapshot end up in the base.
func TestBackupThenMerge(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{Disks: 2, Style: qemutest.Blockdev, SecondMonitor: true})
	agent, err := agentfake.Start(filepath.Join(vm.Dir, "qga.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	d := startDaemon(t)
	d.mustCtl("attach", "vm1", "--qmp", vm.QMP, "--agent", agent.Path)
	d.mustCtl("snapshot-create-as", "vm1", "backup", "--disk-only", "--atomic", "--quiesce")
	for i, disk := range observe(t, vm) {
		if disk.File == vm.Disks[i].Path {
			t.Fatalf("disk %s still on its base after the snapshot", disk.Target)
		}
	}

	// The backup: the bases hold the snapshot's point in time.
	backup := t.TempDir()
	for _, disk := range vm.Disks {
		out, err := exec.Command("qemu-img", "convert", "-U", "-O", "qcow2", disk.Path, filepath.Join(backup, disk.Target+".qcow2")).CombinedOutput()
		if err != nil {
			t.Fatalf("copy %s: %v: %s", disk.Path, err, out)
		}
	}
	// The guest writes on meanwhile: 8 MiB per disk, into the overlays.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	mon, err := qmp.Dial(ctx, vm.QMP2)
	if err != nil {
		t.Fatal(err)
	}
	hmp := func(cmd string) {
		t.Helper()
		if _, err := mon.HumanMonitorCommand(ctx, cmd); err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
	}
	for _, disk := range vm.Disks {
		hmp(fmt.Sprintf(`qemu-io -d /machine/peripheral/%s/virtio-backend "write -P 0x7c 1M 8M"`, disk.Target))
		hmp(fmt.Sprintf(`qemu-io -d /machine/peripheral/%s/virtio-backend "flush"`, disk.Target))
	}
	mon.Close() // a monitor serves one client: observe needs it

	// The merge, capped so that the CLI sees it run; stdout is not a
	// terminal, so progress comes as plain lines.
	out := d.mustCtl("snapshot-delete", "vm1", "backup", "--bandwidth", "4M")
	if !strings.Contains(out, "Domain snapshot backup deleted") || !strings.Contains(out, "progress:") {
		t.Errorf("snapshot-delete output lacks the result or progress lines:\n%s", out)
	}
	for i, disk := range observe(t, vm) {
		if disk.File != vm.Disks[i].Path || len(disk.Backing) != 0 {
			t.Errorf("disk %s: on %s over %v, want back on %s alone", disk.Target, disk.File, disk.Backing, vm.Disks[i].Path)
		}
		if _, err := os.Stat(filepath.Join(vm.Dir, disk.Target+".backup")); !os.IsNotExist(err) {
			t.Errorf("overlay of %s still there: %v", disk.Target, err)
		}
		// The writes made after the snapshot are in the base now; the
		// backup copy does not have them.
		read := func(file, pattern string) error {
			out, err := exec.Command("qemu-io", "-U", "-r", "-f", "qcow2", file, "-c", "read -P "+pattern+" 1M 8M").CombinedOutput()
			if err != nil || strings.Contains(string(out), "Pattern verification failed") {
				return fmt.Errorf("%v: %s", err, out)
			}
			return nil
		}
		if err := read(vm.Disks[i].Path, "0x7c"); err != nil {
			t.Errorf("base of %s lacks the merged writes: %v", disk.Target, err)
		}
		if err := read(filepath.Join(backup, disk.Target+".qcow2"), "0x00"); err != nil {
			t.Errorf("backup of %s is not the snapshot's point in time: %v", disk.Target, err)
		}
	}
	var snaps api.SnapshotList
	if err := json.Unmarshal([]byte(d.mustCtl("--json", "snapshot-list", "vm1")), &snaps); err != nil {
		t.Fatal(err)
	}
	if len(snaps.Snapshots) != 0 {
		t.Errorf("snapshots left after the merge: %+v", snaps.Snapshots)
	}

	// --no-wait gives the operation; operation --wait follows it to the end.
	d.mustCtl("snapshot-create-as", "vm1", "again", "--disk-only", "--atomic")
	id := strings.TrimSpace(d.mustCtl("snapshot-delete", "vm1", "again", "--no-wait"))
	if id == "" || strings.ContainsAny(id, " \n") {
		t.Fatalf("--no-wait printed %q, want an operation id", id)
	}
	if out := d.mustCtl("operation", id, "--wait"); !strings.Contains(out, "succeeded") {
		t.Errorf("operation --wait: %q", out)
	}
}
