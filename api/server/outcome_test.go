package server_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/api/server"
	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/qmp"
)

// writeData writes 64 KiB of a pattern at offset 0 of a disk's active
// image: through QEMU on real QEMU, into the image file on the fake
// (whose jobs copy nothing, but the engine reads whether a top holds
// data).
func (d *daemon) writeData(name, target string) {
	d.t.Helper()
	vm := d.vms[name]
	if vm.Real() {
		obs, err := qmp.Dial(ctx(d.t), vm.QMP2)
		if err != nil {
			d.t.Fatal(err)
		}
		defer obs.Close() // the second monitor takes one client
		cmd := `qemu-io -d /machine/peripheral/` + target + `/virtio-backend "write -P 0x5a 0 64k"`
		if out, err := obs.HumanMonitorCommand(ctx(d.t), cmd); err != nil || strings.Contains(out, "rror") {
			d.t.Fatalf("%s: %q, %v", cmd, out, err)
		}
		if _, err := obs.HumanMonitorCommand(ctx(d.t), `qemu-io -d /machine/peripheral/`+target+`/virtio-backend flush`); err != nil {
			d.t.Fatal(err)
		}
		return
	}
	disks, err := d.client.Disks(ctx(d.t), name)
	if err != nil {
		d.t.Fatal(err)
	}
	for _, disk := range disks {
		if disk.Target == target {
			out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k", disk.Source).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "wrote 65536/65536") {
				d.t.Fatalf("write into %s: %v: %s", disk.Source, err, out)
			}
			return
		}
	}
	d.t.Fatalf("no disk %s", target)
}

// checkDeleteOutcomesAfterRestart: a delete's outcome reads the same
// from GET /v1/operations/{id} before and after a restart, when only the
// journal has it: the result of one that merged, and the error, with
// its code, step, per-disk merges and the snapshots deleted before the
// failure, of one that failed or was cancelled. A snapshot whose merge
// was cancelled after writing into its base shows merge_interrupted,
// before and after.
func checkDeleteOutcomesAfterRestart(t *testing.T) {
	d := startDaemon(t, server.Access{})
	d.vm("vm1", 2)
	for _, name := range []string{"m1", "m2", "m3"} {
		if _, err := d.client.CreateSnapshot(ctx(t), "vm1", api.CreateSnapshotRequest{
			XML: "<domainsnapshot><name>" + name + "</name></domainsnapshot>", Flags: api.FlagDiskOnly | api.FlagAtomic}, "create-"+name); err != nil {
			t.Fatal(err)
		}
		if name == "m1" {
			d.writeData("vm1", "vda") // into m1's overlay of vda
		}
	}

	// With CHILDREN, m3 merges and m2's round fails before its jobs.
	rounds := 0
	d.drv.Hooks.AtStep = func(step string) error {
		if step == driver.HookDeletePlanned {
			rounds++
			if rounds == 2 {
				return errors.New("boom")
			}
		}
		return nil
	}
	_, err := d.client.DeleteSnapshot(ctx(t), "vm1", "m2", api.DeleteOptions{Flags: api.DeleteChildren, OpID: "children"})
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Info.Details == nil || !slices.Equal(ae.Info.Details.Deleted, []string{"m3"}) ||
		ae.Info.Details.Step != driver.StepMerge || len(ae.Info.Details.Merges) != 4 {
		t.Fatalf("the children's delete: %+v, want m3 deleted before the failure, in the details", err)
	}

	// m1's merge, cancelled once vda's job wrote into vda.qcow2.
	d.drv.Hooks.AtStep = func(step string) error {
		if step == driver.HookDeleteCopied {
			return d.drv.CancelOperation("cancelled")
		}
		return nil
	}
	_, err = d.client.DeleteSnapshot(ctx(t), "vm1", "m1", api.DeleteOptions{OpID: "cancelled"})
	if api.Code(err) != api.CodeOperationAborted || !strings.Contains(err.Error(), "snapshot 'm1' is marked merge-interrupted") {
		t.Fatalf("the cancelled delete: %v, want operation-aborted, saying m1 is marked", err)
	}
	checkMark := func(when string) {
		t.Helper()
		sn, err := d.client.Snapshot(ctx(t), "vm1", "m1")
		if err != nil {
			t.Fatal(err)
		}
		if m := sn.MergeInterrupted; m == nil || m.Operation != "cancelled" || m.Time.IsZero() || !slices.Equal(m.Disks, []string{"vda"}) {
			t.Errorf("%s: m1's merge_interrupted: %+v, want operation cancelled on vda", when, m)
		}
		list, err := d.client.Snapshots(ctx(t), "vm1", nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, sn := range list.Snapshots {
			if (sn.MergeInterrupted != nil) != (sn.Name == "m1") {
				t.Errorf("%s: listed %s with merge_interrupted %+v", when, sn.Name, sn.MergeInterrupted)
			}
		}
	}
	checkMark("before the restart")

	// m2 now merges.
	d.drv.Hooks.AtStep = nil
	if _, err := d.client.DeleteSnapshot(ctx(t), "vm1", "m2", api.DeleteOptions{OpID: "merged"}); err != nil {
		t.Fatal(err)
	}

	ids := []string{"children", "cancelled", "merged", "create-m1"}
	live := map[string]api.Operation{}
	for _, id := range ids {
		op, err := d.client.Operation(ctx(t), id)
		if err != nil {
			t.Fatal(err)
		}
		live[id] = op
	}
	d.restart()
	for _, id := range ids {
		op, err := d.client.Operation(ctx(t), id)
		if err != nil {
			t.Fatal(err)
		}
		was := live[id]
		if op.State != was.State || op.Kind != was.Kind || op.Domain != was.Domain {
			t.Errorf("%s after the restart: %s %s %s, was %s %s %s", id, op.State, op.Kind, op.Domain, was.State, was.Kind, was.Domain)
		}
		if strings.HasPrefix(id, "create-") {
			continue // the journal keeps no create's result
		}
		if !reflect.DeepEqual(op.Error, was.Error) {
			t.Errorf("%s's error after the restart:\n got %s\nwant %s", id, jsonOf(op.Error), jsonOf(was.Error))
		}
		if got, want := deleteResult(t, op.Result), deleteResult(t, was.Result); !reflect.DeepEqual(got, want) {
			t.Errorf("%s's result after the restart:\n got %s\nwant %s", id, jsonOf(got), jsonOf(want))
		}
	}
	if r := deleteResult(t, live["merged"].Result); r == nil || !slices.Equal(r.Deleted, []string{"m2"}) || len(r.Disks) != 2 {
		t.Errorf("the merge's result: %s", jsonOf(r))
	}
	checkMark("after the restart")
}

// deleteResult decodes a delete's result, its time left out: the
// journal knows the operation's, not the request's.
func deleteResult(t *testing.T, raw json.RawMessage) *api.DeleteSnapshotResponse {
	t.Helper()
	if raw == nil {
		return nil
	}
	var r api.DeleteSnapshotResponse
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatalf("result %s: %v", raw, err)
	}
	r.TotalMS = 0
	return &r
}

func jsonOf(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}
