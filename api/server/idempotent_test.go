package server_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"sync"
	"testing"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/api/server"
	"github.com/qsnapd/qsnapd/driver"
)

// checkIdempotentOperations: a request sent again under its operation
// id gets the first one's answer, status and body, and runs nothing:
// after it ended, while it runs (the retry waits, or, async, gets the
// operation), and after a restart of the daemon; under the id of
// another request it is refused with operation-id-reused and changes
// nothing. The record of an operation is never overwritten.
func checkIdempotentOperations(t *testing.T) {
	d := startDaemon(t, server.Access{})
	d.vm("vm1", 2)
	path := "/v1/domains/vm1/snapshots"
	create := func(name string) []byte {
		b, _ := json.Marshal(api.CreateSnapshotRequest{
			XML: "<domainsnapshot><name>" + name + "</name></domainsnapshot>", Flags: api.Flags(driver.FlagDiskOnly | driver.FlagAtomic),
		})
		return b
	}
	hdr := func(id string, extra ...string) map[string]string {
		h := map[string]string{api.OperationHeader: id}
		for i := 0; i+1 < len(extra); i += 2 {
			h[extra[i]] = extra[i+1]
		}
		return h
	}
	snapshots := func() int {
		t.Helper()
		list, err := d.drv.Snapshots("vm1")
		if err != nil {
			t.Fatal(err)
		}
		return len(list)
	}

	// Ended: the same answer, byte for byte, and one snapshot.
	first := send(t, d.rw, "POST", path, create("s1"), hdr("op-1"))
	if first.status != http.StatusCreated {
		t.Fatalf("first request: %d %s", first.status, first.body)
	}
	again := send(t, d.rw, "POST", path, create("s1"), hdr("op-1"))
	if again.status != first.status || !bytes.Equal(again.body, first.body) || again.header.Get(api.OperationHeader) != "op-1" {
		t.Errorf("retry: %d %s\nfirst: %d %s", again.status, again.body, first.status, first.body)
	}
	// The body's async field is how to answer, not what to do.
	var withAsync map[string]any
	_ = json.Unmarshal(create("s1"), &withAsync)
	withAsync["async"] = false
	b, _ := json.Marshal(withAsync)
	if r := send(t, d.rw, "POST", path, b, hdr("op-1")); r.status != first.status || !bytes.Equal(r.body, first.body) {
		t.Errorf("retry with async false: %d %s", r.status, r.body)
	}
	if n := snapshots(); n != 1 {
		t.Errorf("%d snapshots after a retry, want 1", n)
	}

	// Another request under that id: refused, nothing done.
	before := d.state("vm1")
	for _, c := range []struct{ method, path string }{
		{"POST", path},                             // another body
		{"POST", "/v1/domains/vm2/snapshots"},      // another domain
		{"DELETE", "/v1/domains/vm1/snapshots/s1"}, // another verb
		{"POST", "/v1/domains/vm1/fsfreeze"},       // another request
	} {
		body := create("s2")
		switch c.path {
		case "/v1/domains/vm1/snapshots/s1":
			body = nil
		case "/v1/domains/vm1/fsfreeze":
			body = []byte("{}")
		}
		status, eb := raw(t, d.rw, c.method, c.path, body, hdr("op-1"))
		if status != http.StatusConflict || eb.Error.Code != api.CodeOperationIDReused {
			t.Errorf("%s %s under a used id: %d %+v, want 409 %s", c.method, c.path, status, eb.Error, api.CodeOperationIDReused)
		}
	}
	if after := d.state("vm1"); after != before {
		t.Errorf("a refused reuse changed things:\n%s\n%s", before, after)
	}

	// Running: retries wait for it, or get it when async; one snapshot.
	inside, leave := d.holdAtSwitching()
	var wg sync.WaitGroup
	answers := make([]response, 3)
	for i := range answers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i] = send(t, d.rw, "POST", path, create("s2"), hdr("op-2"))
		}()
		if i == 0 {
			<-inside
		}
	}
	r := send(t, d.rw, "POST", path, create("s2"), hdr("op-2", api.PreferHeader, api.PreferAsync))
	if op := accepted(t, r); op.ID != "op-2" || op.State != api.OpRunning || op.Kind != api.OpSnapshotCreate {
		t.Errorf("async retry while it runs: %+v", op)
	}
	close(leave)
	wg.Wait()
	d.drv.Hooks.AtStep = nil
	for i, a := range answers {
		if a.status != http.StatusCreated || !bytes.Equal(a.body, answers[0].body) {
			t.Errorf("concurrent request %d under one id: %d %s\nfirst: %d %s", i, a.status, a.body, answers[0].status, answers[0].body)
		}
	}
	if n := snapshots(); n != 2 {
		t.Errorf("%d snapshots after three requests under one id, want 2", n)
	}
	r = send(t, d.rw, "POST", path, create("s2"), hdr("op-2", api.PreferHeader, api.PreferAsync))
	var ended api.Operation
	if err := json.Unmarshal(r.body, &ended); r.status != http.StatusAccepted || err != nil || ended.State != api.OpSucceeded || len(ended.Result) == 0 {
		t.Errorf("async retry after the end: %d %s", r.status, r.body)
	}

	// A failure is an outcome too: the same error again, once.
	failed := send(t, d.rw, "POST", path, create("s1"), hdr("op-3"))
	if failed.status != http.StatusConflict {
		t.Fatalf("a snapshot name taken: %d %s", failed.status, failed.body)
	}

	// After a restart: the same answers, and the operations read whole.
	d.restart()
	for _, c := range []struct {
		id   string
		body []byte
		want response
	}{{"op-1", create("s1"), first}, {"op-2", create("s2"), answers[0]}, {"op-3", create("s1"), failed}} {
		r := send(t, d.rw, "POST", path, c.body, hdr(c.id))
		if r.status != c.want.status || !bytes.Equal(r.body, c.want.body) {
			t.Errorf("%s after a restart: %d %s\nbefore: %d %s", c.id, r.status, r.body, c.want.status, c.want.body)
		}
		op, err := d.client.Operation(ctx(t), c.id)
		if err != nil || op.Kind != api.OpSnapshotCreate || op.Domain != "vm1" || op.Ended.IsZero() {
			t.Errorf("operation %s after a restart: %+v, %v", c.id, op, err)
		}
	}
	op, _ := d.client.Operation(ctx(t), "op-1")
	var res api.CreateSnapshotResponse
	if op.State != api.OpSucceeded || json.Unmarshal(op.Result, &res) != nil || res.Name != "s1" || len(res.Disks) != 2 {
		t.Errorf("op-1 after a restart: %+v (%s)", op, op.Result)
	}
	if op, _ := d.client.Operation(ctx(t), "op-3"); op.State != api.OpFailed || op.Error == nil || op.Error.Code != api.CodeSnapshotExists {
		t.Errorf("op-3 after a restart: %+v", op)
	}
	if n := snapshots(); n != 2 {
		t.Errorf("%d snapshots after retries across a restart, want 2", n)
	}
}
