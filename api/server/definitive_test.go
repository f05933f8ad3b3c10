package server_test

import (
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/internal/testing/qmpproxy"
)

// checkDefinitiveAnswersOverHTTP: a snapshot whose monitor connection
// drops with the switch's reply is answered, by the same request, with
// what recovery reconciled: 409 operation-failed, every disk rolled
// back. One whose QEMU stays unreachable past the reconnect wait is
// answered 504 outcome-unknown with its operation id; the operation
// reads unknown until QEMU is back, then failed, with each disk's
// outcome.
func checkDefinitiveAnswersOverHTTP(t *testing.T) {
	const wait = 700 * time.Millisecond
	d := startDaemonWith(t, daemonOpts{tune: func(c *driver.Config) {
		c.ReconnectWait, c.ReconnectMin, c.ReconnectMax = wait, 20*time.Millisecond, 200*time.Millisecond
	}})
	vm := qemutest.Start(t, qemutest.Options{Backend: qemutest.SuiteBackend(t), Disks: 2, Style: qemutest.Blockdev, SecondMonitor: true})
	p, err := qmpproxy.Start(filepath.Join(vm.Dir, "proxy.sock"), vm.QMP)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("proxy: %v", err)
		}
	})
	if _, err := d.client.Attach(ctx(t), api.AttachRequest{Name: "vm1", QMP: p.Path()}); err != nil {
		t.Fatal(err)
	}
	d.vms["vm1"] = vm
	before := d.state("vm1")
	req := api.CreateSnapshotRequest{XML: "<domainsnapshot><name>s1</name></domainsnapshot>", Flags: api.FlagDiskOnly | api.FlagAtomic}
	wantDisks := func(what string, disks []api.DiskOutcome, want api.DiskResult) {
		t.Helper()
		if len(disks) != 2 {
			t.Errorf("%s: disks %+v", what, disks)
		}
		for _, o := range disks {
			if o.Result != want {
				t.Errorf("%s: disk %s %s, want %s", what, o.Target, o.Result, want)
			}
		}
	}

	t.Run("reply lost with the connection", func(t *testing.T) {
		p.Add(qmpproxy.Rule{Command: "transaction", Times: 1, Action: qmpproxy.CloseAfterReply{}})
		_, err := d.client.CreateSnapshot(ctx(t), "vm1", req, "op-lost")
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != http.StatusConflict || ae.Info.Code != api.CodeOperationFailed ||
			ae.Info.Details == nil || ae.Info.Details.Operation != "op-lost" {
			t.Fatalf("got %#v, want 409 operation-failed with the disks", err)
		}
		wantDisks("answer", ae.Info.Details.Disks, api.DiskRolledBack)
		if got := d.state("vm1"); got != before {
			t.Errorf("state changed:\nbefore %s\nafter  %s", before, got)
		}
		op, err := d.client.Operation(ctx(t), "op-lost")
		if err != nil || op.State != api.OpFailed || op.Error == nil || op.Error.Details == nil {
			t.Fatalf("operation: %+v, %v", op, err)
		}
		wantDisks("operation", op.Error.Details.Disks, api.DiskRolledBack)
	})

	t.Run("QEMU away past the wait", func(t *testing.T) {
		p.Add(qmpproxy.Rule{Command: "transaction", Times: 1, Action: qmpproxy.Hook(func() { p.SetDown(true) })})
		start := time.Now()
		_, err := d.client.CreateSnapshot(ctx(t), "vm1", req, "op-away")
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != http.StatusGatewayTimeout || ae.Info.Code != api.CodeOutcomeUnknown ||
			ae.Info.Details == nil || ae.Info.Details.Operation != "op-away" || !strings.Contains(ae.Info.Message, "op-away") {
			t.Fatalf("got %#v, want 504 outcome-unknown naming op-away", err)
		}
		if took := time.Since(start); took < wait {
			t.Errorf("answered after %v, before the reconnect wait of %v", took, wait)
		}
		op, err := d.client.Operation(ctx(t), "op-away")
		if err != nil || op.State != api.OpUnknown || op.Error == nil || op.Error.Code != api.CodeOutcomeUnknown {
			t.Fatalf("operation while QEMU is away: %+v, %v", op, err)
		}
		p.SetDown(false)
		deadline := time.Now().Add(20 * time.Second)
		for op.State == api.OpUnknown && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
			if op, err = d.client.Operation(ctx(t), "op-away"); err != nil {
				t.Fatal(err)
			}
		}
		if op.State != api.OpFailed || op.Error == nil || op.Error.Code != api.CodeOperationFailed || op.Error.Details == nil {
			t.Fatalf("operation once QEMU is back: %+v", op)
		}
		wantDisks("operation", op.Error.Details.Disks, api.DiskUntouched)
		if got := d.state("vm1"); got != before {
			t.Errorf("state changed:\nbefore %s\nafter  %s", before, got)
		}
		// After a restart the journal tells the same.
		d.restart()
		if op, err = d.client.Operation(ctx(t), "op-away"); err != nil || op.State != api.OpFailed || op.Error == nil ||
			op.Error.Details == nil || op.Error.Details.Step != driver.StepSwitch {
			t.Fatalf("operation after a restart: %+v, %v", op, err)
		}
		wantDisks("operation after a restart", op.Error.Details.Disks, api.DiskUntouched)
	})
}
