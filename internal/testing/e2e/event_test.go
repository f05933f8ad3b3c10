package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
)

// ctlBackground starts bin/qsnapctl against the daemon and returns what
// it printed once it exits.
func (d *daemon) ctlBackground(args ...string) (wait func() (stdout, stderr string, code int)) {
	d.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "qsnapctl"), args...)
	cmd.Env = append(os.Environ(), "QSNAPD_SOCKET="+d.socket)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	d.t.Cleanup(func() { _ = cmd.Process.Kill() }) // ended already, or a failed test's
	return func() (string, string, int) {
		d.t.Helper()
		select {
		case err := <-exited:
			if _, failed := err.(*exec.ExitError); err != nil && !failed {
				d.t.Fatalf("qsnapctl %v: %v", args, err)
			}
		case <-time.After(time.Minute):
			d.t.Fatalf("qsnapctl %v still runs after a minute", args)
		}
		return out.String(), errb.String(), cmd.ProcessState.ExitCode()
	}
}

// TestEventEndToEnd: qsnapctl event, as virsh's, waits for the first
// matching event of a snapshot and its merge; then replays the
// domain's events of the run with --since 0.
func TestEventEndToEnd(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{Disks: 1, Style: qemutest.Blockdev, SecondMonitor: true})
	d := startDaemon(t, "--event-ring", "100")
	d.mustCtl("attach", "vm1", "--qmp", vm.QMP)

	wait := d.ctlBackground("event", "--domain", "vm1", "--type", "snapshot-deleted", "--timeout", "60")
	time.Sleep(300 * time.Millisecond) // connected; a late start would wait for the next delete
	d.mustCtl("snapshot-create-as", "vm1", "s1", "--disk-only", "--atomic")
	d.mustCtl("snapshot-delete", "vm1", "s1")
	out, errOut, code := wait()
	if code != 0 || !strings.HasPrefix(out, "event 'snapshot-deleted' for domain 'vm1': s1 merged (op ") ||
		!strings.HasSuffix(out, "\nevents received: 1\n") || errOut != "" {
		t.Errorf("event: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}

	out = d.mustCtl("event", "--domain", "vm1", "--since", "0", "--loop", "--timeout", "1")
	var types []string
	n := 0
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if !strings.HasPrefix(l, "event '") {
			continue
		}
		n++
		if typ, _, _ := strings.Cut(strings.TrimPrefix(l, "event '"), "'"); typ != "merge-progress" {
			types = append(types, typ)
		}
	}
	want := "operation-state domain-connected operation-state " +
		"operation-state snapshot-created operation-state operation-state snapshot-deleted operation-state"
	if strings.Join(types, " ") != want || !strings.HasSuffix(out, fmt.Sprintf("event loop timed out\nevents received: %d\n", n)) {
		t.Errorf("the run's events of vm1:\n%s\nwant types %s (and any merge-progress)", out, want)
	}
}
