//go:build benchlibvirt

package benchlibvirt

import (
	"context"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/internal/testing/virshscript"
)

// goldenFile is libvirtd's transcript of virshscript.Snapshots, the
// reference for other servers of libvirt's protocol.
const goldenFile = "../virshscript/testdata/libvirtd-9.0.golden"

// TestGoldenTranscripts runs virshscript.Snapshots with the real virsh
// against the real libvirtd and writes its transcript to goldenFile
// (make golden-libvirt; GOLDEN_WRITE=1, root). The domain is destroyed
// and the daemons started for it stopped when it ends.
func TestGoldenTranscripts(t *testing.T) {
	if os.Getenv("GOLDEN_WRITE") != "1" {
		t.Skip("GOLDEN_WRITE=1 records libvirtd's transcripts: make golden-libvirt")
	}
	if os.Geteuid() != 0 {
		t.Fatal("recording libvirtd needs root: it drives libvirt's system instance")
	}
	qemutest.Require(t)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()

	work := workDir(t)
	lv := startLibvirt(ctx, t, work)
	server := lv.version(ctx)
	// The file's name says which libvirt it records.
	if !strings.HasPrefix(server, "libvirt 9.0.") {
		t.Fatalf("the daemon is %q; %s records libvirt 9.0", server, goldenFile)
	}

	dir := filepath.Join(work, "vm")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	d := domain{Name: virshscript.Domain, UUID: virshscript.UUID, Emulator: lv.emulator, MemoryMiB: 128}
	for _, disk := range virshscript.Disks {
		path := filepath.Join(dir, disk.File)
		if _, err := output(exec.Command("qemu-img", "create", "-q", "-f", "qcow2", path, strconv.FormatInt(disk.Size, 10))); err != nil {
			t.Fatal(err)
		}
		d.Disks = append(d.Disks, domainDisk{Target: disk.Target, Path: path})
	}
	lv.create(ctx, t, d, dir, true)

	r := &virshscript.Runner{Virsh: lv.virsh, URI: uri, Dir: dir}
	steps, err := r.Run(ctx, virshscript.Snapshots)
	if err != nil {
		t.Fatal(err)
	}
	tr := &virshscript.Transcript{Command: "make golden-libvirt", Server: server, Steps: steps}
	if err := virshscript.Write(goldenFile, tr); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s: %d steps", goldenFile, len(steps))
}
