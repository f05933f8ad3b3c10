package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/api/server"
	"github.com/qsnapd/qsnapd/qmp"
)

// response is an answer as sent, headers included.
type response struct {
	status int
	header http.Header
	body   []byte
}

// send sends a request as given and returns the whole answer.
func send(t *testing.T, socket, method, path string, body []byte, hdr map[string]string) response {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx(t), method, "http://qsnapd"+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read the answer: %v", method, path, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: data}
}

// accepted checks a 202 answer and returns its operation, running.
func accepted(t *testing.T, r response) api.Operation {
	t.Helper()
	var op api.Operation
	if err := json.Unmarshal(r.body, &op); err != nil {
		t.Fatalf("status %d, body %q: %v", r.status, r.body, err)
	}
	if r.status != http.StatusAccepted || op.State != api.OpRunning || op.ID == "" ||
		r.header.Get("Location") != "/v1/operations/"+op.ID || r.header.Get(api.OperationHeader) != op.ID ||
		r.header.Get(api.PreferenceAppliedHeader) != api.PreferAsync {
		t.Fatalf("want 202 with a running operation, its Location and id: got %d %+v, headers %v", r.status, op, r.header)
	}
	return op
}

// wait reads an operation until it ends.
func (d *daemon) wait(id string) api.Operation {
	d.t.Helper()
	op, err := d.client.WaitOperation(ctx(d.t), id, 10*time.Millisecond, nil)
	if err != nil {
		d.t.Fatalf("operation %s: %v", id, err)
	}
	return op
}

func snapBody(t *testing.T, name string, async bool) []byte {
	t.Helper()
	b, err := json.Marshal(api.CreateSnapshotRequest{XML: "<domainsnapshot><name>" + name + "</name></domainsnapshot>",
		Flags: api.FlagDiskOnly | api.FlagAtomic, Async: async})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkAsyncOperations: every way of asking for an asynchronous answer
// gets 202 and the operation, whose outcome reads as a synchronous
// answer would have been; an operation that copies no data cannot be
// cancelled, and one that ended neither.
func checkAsyncOperations(t *testing.T) {
	d := startDaemon(t, server.Access{})
	d.vm("vm1", 2)

	// A snapshot held before its switch: running, without progress (it
	// copies nothing), and not cancellable.
	inside, leave := d.holdAtSwitching()
	op := accepted(t, send(t, d.rw, "POST", "/v1/domains/vm1/snapshots", snapBody(t, "a1", false),
		map[string]string{"Prefer": "wait=10, respond-async", api.OperationHeader: "async-1"}))
	if op.ID != "async-1" || op.Kind != api.OpSnapshotCreate || op.Domain != "vm1" {
		t.Errorf("operation %+v", op)
	}
	<-inside
	if got, err := d.client.Operation(ctx(t), "async-1"); err != nil || got.State != api.OpRunning || got.Progress != nil {
		t.Errorf("while held: %+v, %v; want running, no progress", got, err)
	}
	if _, err := d.client.CancelOperation(ctx(t), "async-1"); api.Code(err) != api.CodeOperationInvalid {
		t.Errorf("cancel a snapshot: %v, want operation-invalid", err)
	}
	close(leave)
	op = d.wait("async-1")
	d.drv.Hooks.AtStep = nil // the operation ended: nothing reads it
	var res api.CreateSnapshotResponse
	if op.State != api.OpSucceeded || json.Unmarshal(op.Result, &res) != nil || res.Name != "a1" || len(res.Disks) != 2 {
		t.Errorf("ended: %+v (result %s)", op, op.Result)
	}
	if _, err := d.client.CancelOperation(ctx(t), "async-1"); api.Code(err) != api.CodeOperationInvalid ||
		!strings.Contains(err.Error(), "has ended") {
		t.Errorf("cancel an ended operation: %v, want operation-invalid", err)
	}

	// "async": true in the body; a failure is the operation's.
	op = accepted(t, send(t, d.rw, "POST", "/v1/domains/vm1/snapshots", snapBody(t, "a1", true), nil))
	if op = d.wait(op.ID); op.State != api.OpFailed || op.Error == nil || op.Error.Code != api.CodeSnapshotExists {
		t.Errorf("async snapshot of an existing name: %+v", op)
	}
	// The client's call.
	op, err := d.client.CreateSnapshotAsync(ctx(t), "vm1", api.CreateSnapshotRequest{
		XML: "<domainsnapshot><name>a2</name></domainsnapshot>", Flags: api.FlagDiskOnly}, "")
	if err != nil || op.State != api.OpRunning {
		t.Fatalf("CreateSnapshotAsync: %+v, %v", op, err)
	}
	if op = d.wait(op.ID); op.State != api.OpSucceeded {
		t.Errorf("CreateSnapshotAsync: %+v", op)
	}

	// A delete has no body: ?async=true, or the client's call.
	op = accepted(t, send(t, d.rw, "DELETE", "/v1/domains/vm1/snapshots/a2?metadata-only=true&async=true", nil, nil))
	var del api.DeleteSnapshotResponse
	if op = d.wait(op.ID); op.State != api.OpSucceeded || op.Kind != api.OpSnapshotDelete ||
		json.Unmarshal(op.Result, &del) != nil || del.Operation != op.ID || len(del.Deleted) != 1 || del.Deleted[0] != "a2" {
		t.Errorf("async metadata-only delete: %+v (result %s)", op, op.Result)
	}
	op, err = d.client.DeleteSnapshotAsync(ctx(t), "vm1", "nope", api.DeleteOptions{Flags: api.DeleteMetadataOnly, OpID: "del-nope"})
	if err != nil || op.ID != "del-nope" {
		t.Fatalf("DeleteSnapshotAsync: %+v, %v", op, err)
	}
	if op = d.wait("del-nope"); op.State != api.OpFailed || op.Error.Code != api.CodeNoDomainSnapshot {
		t.Errorf("async delete of an unknown snapshot: %+v", op)
	}

	// fsthaw and detach have no body either.
	op = accepted(t, send(t, d.rw, "POST", "/v1/domains/vm1/fsthaw?async", nil, nil))
	if op = d.wait(op.ID); op.State != api.OpFailed || op.Kind != api.OpFSThaw {
		t.Errorf("async thaw without an agent: %+v", op)
	}
	op = accepted(t, send(t, d.rw, "DELETE", "/v1/domains/vm1", nil, map[string]string{"Prefer": "respond-async"}))
	if op = d.wait(op.ID); op.State != api.OpSucceeded || op.Kind != api.OpDomainDetach {
		t.Errorf("async detach: %+v", op)
	}
	if _, err := d.client.Domain(ctx(t), "vm1"); api.Code(err) != api.CodeNoDomain {
		t.Errorf("after the async detach: %v", err)
	}

	// Without asking, the answers are as they always were.
	if r := send(t, d.rw, "POST", "/v1/domains/nope/fsthaw?async=false", nil, nil); r.status != http.StatusNotFound {
		t.Errorf("synchronous thaw of an unknown domain: %d %s", r.status, r.body)
	}
}

// checkShutdownWaitsForAsync: a daemon that stops lets an asynchronous
// operation finish before Serve returns, as it does a request.
func checkShutdownWaitsForAsync(t *testing.T) {
	d := startDaemon(t, server.Access{})
	d.vm("vm1", 1)
	inside, leave := d.holdAtSwitching()
	accepted(t, send(t, d.rw, "POST", "/v1/domains/vm1/snapshots", snapBody(t, "late", true), nil))
	<-inside
	d.stop()
	select {
	case err := <-d.done:
		d.done <- err
		t.Fatalf("Serve returned while an operation ran: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(leave)
	select {
	case err := <-d.done:
		d.done <- err // for close
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not return once the operation ended")
	}
	if _, err := d.drv.Snapshot("vm1", "late"); err != nil {
		t.Errorf("the operation did not finish: %v", err)
	}
}

// mergeOrSkip skips a check on an engine that cannot delete a
// snapshot's data yet, as the request's error or its operation's says:
// these checks wait for delete-by-merge.
func mergeOrSkip(t *testing.T, err error, op *api.Operation) {
	t.Helper()
	if op != nil && op.Error != nil && op.Error.Code == api.CodeOperationUnsupported {
		err = &api.Error{Info: *op.Error}
	}
	if api.Code(err) == api.CodeOperationUnsupported {
		t.Skipf("needs the engine's delete-by-merge: %v", err)
	}
}

// checkDeleteMerge [needs the engine's delete-by-merge]: a synchronous
// delete merges every disk's overlay back, answers 200 with each disk's
// outcome, and the disks run on their base images again.
func checkDeleteMerge(t *testing.T) {
	d := startDaemon(t, server.Access{})
	vm := d.vm("vm1", 2)
	created, err := d.client.CreateSnapshot(ctx(t), "vm1", api.CreateSnapshotRequest{
		XML: "<domainsnapshot><name>m1</name></domainsnapshot>", Flags: api.FlagDiskOnly | api.FlagAtomic}, "")
	if err != nil {
		t.Fatal(err)
	}
	// Without a freeze QEMU opens the overlays in the switch: their
	// nodes are QEMU's own, and the merge removes them all the same.
	if created.Switch != "sync" {
		t.Errorf("unquiesced snapshot switched %q, want sync", created.Switch)
	}
	res, err := d.client.DeleteSnapshot(ctx(t), "vm1", "m1", api.DeleteOptions{OpID: "merge-1"})
	mergeOrSkip(t, err, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Operation != "merge-1" || len(res.Deleted) != 1 || res.Deleted[0] != "m1" || len(res.Disks) != 2 {
		t.Fatalf("delete: %+v", res)
	}
	for _, o := range res.Disks {
		if o.Result != api.MergeMerged || !o.FileDeleted || o.Snapshot != "m1" {
			t.Errorf("disk %+v, want merged and its file deleted", o)
		}
		if _, err := os.Stat(o.Overlay); !os.IsNotExist(err) {
			t.Errorf("overlay %s: %v, want gone", o.Overlay, err)
		}
	}
	disks, err := d.client.Disks(ctx(t), "vm1")
	if err != nil {
		t.Fatal(err)
	}
	for i, disk := range disks {
		if disk.Source != vm.Disks[i].Path {
			t.Errorf("disk %s runs on %s, want its base %s (the overlay was %s)", disk.Target, disk.Source,
				vm.Disks[i].Path, created.Disks[i].Overlay)
		}
	}
	if op, err := d.client.Operation(ctx(t), "merge-1"); err != nil || op.State != api.OpSucceeded {
		t.Errorf("the operation: %+v, %v", op, err)
	}
}

// checkMergeProgressAndCancel [needs the engine's delete-by-merge; real
// QEMU, whose overlays hold data]: an asynchronous merge capped at 4
// MiB/s shows its progress while it runs, and a cancel before its point
// of no return ends it as operation-aborted with nothing changed; the
// delete then goes through.
func checkMergeProgressAndCancel(t *testing.T) {
	d := startDaemon(t, server.Access{})
	vm := d.vm("vm1", 2)
	if !vm.Real() {
		t.Skip("the fake backend has no data to merge")
	}
	if _, err := d.client.CreateSnapshot(ctx(t), "vm1", api.CreateSnapshotRequest{
		XML: "<domainsnapshot><name>big</name></domainsnapshot>", Flags: api.FlagDiskOnly | api.FlagAtomic}, ""); err != nil {
		t.Fatal(err)
	}
	// 48 MiB in each overlay: 24 s at the cap.
	obs, err := qmp.Dial(ctx(t), vm.QMP2)
	if err != nil {
		t.Fatal(err)
	}
	for _, disk := range vm.Disks {
		cmd := `qemu-io -d /machine/peripheral/` + disk.Target + `/virtio-backend "write -P 0xa5 0 48M"`
		if out, err := obs.HumanMonitorCommand(ctx(t), cmd); err != nil || strings.Contains(out, "rror") {
			t.Fatalf("%s: %q, %v", cmd, out, err)
		}
	}
	obs.Close() // the second monitor takes one client: d.state's
	before := d.state("vm1")

	op, err := d.client.DeleteSnapshotAsync(ctx(t), "vm1", "big", api.DeleteOptions{Bandwidth: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if op.State == api.OpRunning {
		cancelled := false
		op, err = d.client.WaitOperation(ctx(t), op.ID, 10*time.Millisecond, func(o api.Operation) {
			if !cancelled && o.Progress != nil && o.Progress.DoneBytes > 0 && o.Progress.Cancellable {
				cancelled = true
				if _, err := d.client.CancelOperation(ctx(t), o.ID); err != nil {
					t.Errorf("cancel at %+v: %v", *o.Progress, err)
				}
			}
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	mergeOrSkip(t, nil, &op)
	if op.State != api.OpFailed || op.Error == nil || op.Error.Code != api.CodeOperationAborted {
		t.Fatalf("the cancelled merge: %+v", op)
	}
	if after := d.state("vm1"); after != before {
		t.Errorf("a cancelled merge changed the domain:\nbefore %s\nafter  %s", before, after)
	}
	// But the bases took part of the copy: the snapshot says so.
	if !strings.Contains(op.Error.Message, "snapshot 'big' is marked merge-interrupted") {
		t.Errorf("the cancelled merge's error: %s, want big marked", op.Error.Message)
	}
	if sn, err := d.client.Snapshot(ctx(t), "vm1", "big"); err != nil || sn.MergeInterrupted == nil ||
		sn.MergeInterrupted.Operation != op.ID || len(sn.MergeInterrupted.Disks) == 0 {
		t.Errorf("big after the cancel: %+v, %v; want merge_interrupted by %s", sn.MergeInterrupted, err, op.ID)
	}

	// Uncapped, the merge goes through; its progress was readable.
	var seen *api.Progress
	op, err = d.client.DeleteSnapshotAsync(ctx(t), "vm1", "big", api.DeleteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	op, err = d.client.WaitOperation(ctx(t), op.ID, 5*time.Millisecond, func(o api.Operation) {
		if o.Progress != nil {
			seen = o.Progress
		}
	})
	var res api.DeleteSnapshotResponse
	if err != nil || op.State != api.OpSucceeded || json.Unmarshal(op.Result, &res) != nil || res.MergedBytes < 2*48<<20 {
		t.Fatalf("the merge: %+v (result %s), %v", op, op.Result, err)
	}
	if seen != nil && seen.DoneBytes > seen.TotalBytes {
		t.Errorf("progress %+v: done past the total", *seen)
	}
	if _, err := d.client.CancelOperation(ctx(t), op.ID); api.Code(err) != api.CodeOperationInvalid {
		t.Errorf("cancel after the end: %v, want operation-invalid", err)
	}
	if _, err := d.drv.Snapshot("vm1", "big"); err == nil {
		t.Error("the merged snapshot is still there")
	}
}
