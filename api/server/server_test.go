package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/api/server"
	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
)

// checkBadInputChangesNothing: each refusal has its status and code and a
// message, and leaves the disks, files, snapshots and domains as they were.
func checkBadInputChangesNothing(t *testing.T) {
	d := startDaemon(t, server.Access{})
	vm := d.vm("vm1", 2)
	if _, err := d.client.CreateSnapshot(ctx(t), "vm1", api.CreateSnapshotRequest{XML: "<domainsnapshot><name>s0</name></domainsnapshot>", Flags: api.Flags(driver.FlagDiskOnly)}, ""); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(vm.Dir, "link.img")
	if err := os.Symlink("/etc/hostname", link); err != nil {
		t.Fatal(err)
	}
	outside := qemutest.TempDir(t)
	snap := func(xml string, flags any) []byte {
		b, err := json.Marshal(map[string]any{"xml": xml, "flags": flags})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	disk := func(file string) string {
		return "<domainsnapshot><name>s1</name><disks><disk name='vda'><source file='" + file + "'/></disk><disk name='vdb' snapshot='no'/></disks></domainsnapshot>"
	}
	big := bytes.Repeat([]byte("x"), 2<<20)
	for _, tc := range []struct {
		name         string
		socket       string
		method, path string
		body         []byte
		status       int
		code         string
	}{
		{"malformed JSON", d.rw, "POST", "/v1/domains/vm1/snapshots", []byte(`{"xml": `), 400, api.CodeInvalidArg},
		{"trailing JSON", d.rw, "POST", "/v1/domains/vm1/snapshots", []byte(`{} {}`), 400, api.CodeInvalidArg},
		{"unknown field", d.rw, "POST", "/v1/domains/vm1/snapshots", []byte(`{"xml": "", "flagz": 16}`), 400, api.CodeInvalidArg},
		{"malformed XML", d.rw, "POST", "/v1/domains/vm1/snapshots", snap("<domainsnapshot><name>", []string{"disk-only"}), 400, api.CodeInvalidArg},
		{"unknown flag name", d.rw, "POST", "/v1/domains/vm1/snapshots", snap("", []string{"disk-only", "turbo"}), 400, api.CodeInvalidArg},
		{"flag integer with unknown bits", d.rw, "POST", "/v1/domains/vm1/snapshots", snap("", 16|1<<20), 400, api.CodeInvalidArg},
		{"negative flag integer", d.rw, "POST", "/v1/domains/vm1/snapshots", snap("", -1), 400, api.CodeInvalidArg},
		{"2 MiB body", d.rw, "POST", "/v1/domains/vm1/snapshots", append(append([]byte(`{"xml": "`), big...), '"', '}'), 400, api.CodeInvalidArg},
		{"wrong method", d.rw, "PATCH", "/v1/domains/vm1/snapshots", nil, 405, api.CodeInvalidArg},
		{"unknown path", d.rw, "GET", "/v1/nothing", nil, 404, api.CodeNoDomain},
		{"unknown domain", d.rw, "POST", "/v1/domains/nope/snapshots", snap("", []string{"disk-only"}), 404, api.CodeNoDomain},
		{"unknown snapshot", d.rw, "GET", "/v1/domains/vm1/snapshots/nope", nil, 404, api.CodeNoDomainSnapshot},
		{"existing snapshot", d.rw, "POST", "/v1/domains/vm1/snapshots", snap("<domainsnapshot><name>s0</name></domainsnapshot>", []string{"disk-only"}), 409, api.CodeSnapshotExists},
		{"path traversal", d.rw, "POST", "/v1/domains/vm1/snapshots", snap(disk(vm.Dir+"/../etc/x"), []string{"disk-only"}), 400, api.CodeInvalidArg},
		{"symlink target", d.rw, "POST", "/v1/domains/vm1/snapshots", snap(disk(link), []string{"disk-only"}), 400, api.CodeInvalidArg},
		{"outside the allowed dirs", d.rw, "POST", "/v1/domains/vm1/snapshots", snap(disk(filepath.Join(outside, "x.img")), []string{"disk-only"}), 400, api.CodeInvalidArg},
		{"memory snapshot", d.rw, "POST", "/v1/domains/vm1/snapshots", snap("", 0), 501, api.CodeOperationUnsupported},
		{"delete with children and children-only", d.rw, "DELETE", "/v1/domains/vm1/snapshots/s0?children&children-only=true", nil, 400, api.CodeInvalidArg},
		{"delete with flags 5", d.rw, "DELETE", "/v1/domains/vm1/snapshots/s0?flags=5", nil, 400, api.CodeInvalidArg},
		{"delete with unknown flag bits", d.rw, "DELETE", "/v1/domains/vm1/snapshots/s0?metadata-only&flags=8", nil, 400, api.CodeInvalidArg},
		{"delete with a misspelt parameter", d.rw, "DELETE", "/v1/domains/vm1/snapshots/s0?metadata_only=true", nil, 400, api.CodeInvalidArg},
		{"delete with a bad boolean", d.rw, "DELETE", "/v1/domains/vm1/snapshots/s0?metadata-only=yes", nil, 400, api.CodeInvalidArg},
		{"delete with a negative bandwidth", d.rw, "DELETE", "/v1/domains/vm1/snapshots/s0?bandwidth=-1", nil, 400, api.CodeInvalidArg},
		{"delete with a bandwidth suffix", d.rw, "DELETE", "/v1/domains/vm1/snapshots/s0?bandwidth=10M", nil, 400, api.CodeInvalidArg},
		{"delete with async twice", d.rw, "DELETE", "/v1/domains/vm1/snapshots/s0?metadata-only&async=1&async=0", nil, 400, api.CodeInvalidArg},
		{"delete an unknown snapshot's metadata", d.rw, "DELETE", "/v1/domains/vm1/snapshots/nope?metadata-only", nil, 404, api.CodeNoDomainSnapshot},
		{"cancel an unknown operation", d.rw, "DELETE", "/v1/operations/nope", nil, 404, api.CodeNoOperation},
		{"cancel on the read-only socket", d.ro, "DELETE", "/v1/operations/nope", nil, 403, api.CodeForbidden},
		{"async snapshot with a bad async", d.rw, "POST", "/v1/domains/vm1/snapshots?async=maybe", snap("", []string{"disk-only"}), 400, api.CodeInvalidArg},
		{"async snapshot with a bad body", d.rw, "POST", "/v1/domains/vm1/snapshots", []byte(`{"flags": ["disk-only"], "async": "yes"}`), 400, api.CodeInvalidArg},
		{"bad quiesce mode", d.rw, "POST", "/v1/domains/vm1/snapshots", []byte(`{"flags": ["disk-only"], "quiesce": "maybe"}`), 400, api.CodeInvalidArg},
		{"quiesce without an agent", d.rw, "POST", "/v1/domains/vm1/snapshots", snap("", []string{"disk-only", "quiesce"}), 503, api.CodeAgentUnresponsive},
		{"attach with a relative path", d.rw, "POST", "/v1/domains", []byte(`{"name": "x", "qmp": "qmp.sock"}`), 400, api.CodeInvalidArg},
		{"attach twice", d.rw, "POST", "/v1/domains", []byte(`{"name": "vm1", "qmp": "` + vm.QMP + `"}`), 409, api.CodeOperationInvalid},
		{"attach to nothing", d.rw, "POST", "/v1/domains", []byte(`{"name": "x", "qmp": "/nonexistent/qmp.sock"}`), 503, api.CodeOperationInvalid},
		{"bad freeze timeout", d.rw, "POST", "/v1/domains/vm1/fsfreeze", []byte(`{"timeout": "-3s"}`), 400, api.CodeInvalidArg},
		{"bad operation id", d.rw, "GET", "/v1/operations/nope", nil, 404, api.CodeNoOperation},
		{"snapshot on the read-only socket", d.ro, "POST", "/v1/domains/vm1/snapshots", snap("", []string{"disk-only"}), 403, api.CodeForbidden},
		{"detach on the read-only socket", d.ro, "DELETE", "/v1/domains/vm1", nil, 403, api.CodeForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := d.state("vm1")
			status, eb := raw(t, tc.socket, tc.method, tc.path, tc.body, nil)
			if status != tc.status || eb.Error.Code != tc.code || eb.Error.Message == "" {
				t.Errorf("got %d %+v; want %d %s", status, eb.Error, tc.status, tc.code)
			}
			if after := d.state("vm1"); after != before {
				t.Errorf("state changed:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
	// Reads work on the read-only socket.
	if _, err := d.roClient.Snapshots(ctx(t), "vm1", nil); err != nil {
		t.Errorf("list on the read-only socket: %v", err)
	}
}

// checkOperationOutcomeOutlivesTheRequest: an operation runs to its end
// whether or not its client waits, and is read afterwards by its id.
func checkOperationOutcomeOutlivesTheRequest(t *testing.T) {
	d := startDaemon(t, server.Access{})
	d.vm("vm1", 1)
	// A client that gives up at once still gets its snapshot, and reads
	// the outcome afterwards by the id it chose. A deadline so short
	// that the request never reached the server leaves no operation:
	// such tries are repeated with a longer deadline, under a new id.
	var op api.Operation
	var id string
	req := api.CreateSnapshotRequest{Flags: api.Flags(driver.FlagDiskOnly)}
	for try, wait := 0, time.Millisecond; op.ID == ""; try, wait = try+1, wait*2 {
		if wait > 10*time.Second {
			t.Fatal("no request reached the server")
		}
		id = fmt.Sprintf("my-op-%d", try)
		c, cancel := context.WithTimeout(context.Background(), wait)
		_, err := d.client.CreateSnapshot(c, "vm1", req, id)
		cancel()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("the impatient client: %v, want its deadline or an answer", err)
		}
		// One that reached the server shows at once; give it a moment
		// to end.
		deadline := time.Now().Add(20 * time.Second)
		for {
			got, err := d.client.Operation(ctx(t), id)
			if api.Code(err) == api.CodeNoOperation && time.Since(deadline.Add(-20*time.Second)) > 2*time.Second {
				break // never arrived
			}
			if err == nil && got.State != api.OpRunning {
				op = got
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("operation %s: %+v, %v", id, got, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// Either the request was cut before anything changed, or it ran to
	// the end: never half-done.
	snaps, err := d.drv.Snapshots("vm1")
	if err != nil {
		t.Fatal(err)
	}
	switch op.State {
	case api.OpSucceeded:
		if len(snaps) != 1 {
			t.Errorf("succeeded but %d snapshots", len(snaps))
		}
	case api.OpFailed:
		if len(snaps) != 0 {
			t.Errorf("failed but %d snapshots", len(snaps))
		}
	}
	// The same request under the same id gets the same outcome and does
	// nothing again; another request under it is refused.
	_, err = d.client.CreateSnapshot(ctx(t), "vm1", req, id)
	if again, _ := d.drv.Snapshots("vm1"); len(again) != len(snaps) || (err == nil) != (op.State == api.OpSucceeded) {
		t.Errorf("a retry of operation %s (%s): %v, %d snapshots (were %d)", id, op.State, err, len(again), len(snaps))
	}
	other := req
	other.XML = "<domainsnapshot><name>other</name></domainsnapshot>"
	if _, err := d.client.CreateSnapshot(ctx(t), "vm1", other, id); api.Code(err) != api.CodeOperationIDReused {
		t.Errorf("another request under operation id %s: %v, want %s", id, err, api.CodeOperationIDReused)
	}
}

// checkSnapshotListingAndTree: listing filters, the tree, current,
// deleting metadata and detach, through the client.
func checkSnapshotListingAndTree(t *testing.T) {
	d := startDaemon(t, server.Access{})
	d.vm("vm1", 1)
	for _, n := range []string{"a", "b", "c"} {
		xml := "<domainsnapshot><name>" + n + "</name></domainsnapshot>"
		if _, err := d.client.CreateSnapshot(ctx(t), "vm1", api.CreateSnapshotRequest{XML: xml, Flags: api.Flags(driver.FlagDiskOnly)}, ""); err != nil {
			t.Fatal(err)
		}
	}
	list, err := d.client.Snapshots(ctx(t), "vm1", map[string][]string{"tree": {""}})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Snapshots) != 3 || len(list.Tree) != 1 || list.Tree[0].Name != "a" || list.Tree[0].Children[0].Children[0].Name != "c" {
		t.Errorf("list %+v tree %+v", list.Snapshots, list.Tree)
	}
	roots, err := d.client.Snapshots(ctx(t), "vm1", map[string][]string{"roots": {""}})
	if err != nil {
		t.Fatal(err)
	}
	leaves, err := d.client.Snapshots(ctx(t), "vm1", map[string][]string{"leaves": {""}})
	if err != nil {
		t.Fatal(err)
	}
	if len(roots.Snapshots) != 1 || roots.Snapshots[0].Name != "a" || len(leaves.Snapshots) != 1 || leaves.Snapshots[0].Name != "c" {
		t.Errorf("roots %+v leaves %+v", roots.Snapshots, leaves.Snapshots)
	}
	cur, err := d.client.Current(ctx(t), "vm1")
	if err != nil || cur.Name != "c" || !cur.Current || cur.XML == "" {
		t.Errorf("current: %+v, %v", cur, err)
	}
	if _, err := d.client.SetCurrent(ctx(t), "vm1", "a"); err != nil {
		t.Fatal(err)
	}
	if res, err := d.client.DeleteSnapshot(ctx(t), "vm1", "b", api.DeleteOptions{Flags: api.DeleteMetadataOnly}); err != nil {
		t.Fatal(err)
	} else if len(res.Deleted) != 1 || res.Deleted[0] != "b" || len(res.Disks) != 0 || res.Operation == "" {
		t.Errorf("metadata-only delete: %+v", res)
	}
	c, err := d.client.Snapshot(ctx(t), "vm1", "c")
	if err != nil || c.Parent != "a" {
		t.Errorf("c after deleting b: %+v, %v", c, err)
	}
	// Detach refuses nothing when idle, then the domain is gone.
	if err := d.client.Detach(ctx(t), "vm1"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.client.Domain(ctx(t), "vm1"); api.Code(err) != api.CodeNoDomain {
		t.Errorf("after detach: %v", err)
	}
}

// TestForbiddenUID runs a client as another user with setpriv: the
// read-write socket refuses it, unless it is allowed.
func TestForbiddenUID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as another uid")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv (util-linux) is missing")
	}
	for _, tc := range []struct {
		name   string
		access server.Access
		want   int
	}{
		{"refused", server.Access{}, 403},
		{"allowed by uid", server.Access{UIDs: []int{65534}}, 200},
		{"allowed by gid", server.Access{GIDs: []int{65534}}, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := startDaemon(t, tc.access)
			// Let the other user reach the socket, so that SO_PEERCRED,
			// not the file mode, decides.
			if err := os.Chmod(d.dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(d.rw, 0o666); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
				"curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", d.rw, "http://qsnapd/v1/domains").CombinedOutput()
			if err != nil {
				t.Fatalf("setpriv curl: %v: %s", err, out)
			}
			if got, _ := strconv.Atoi(strings.TrimSpace(string(out))); got != tc.want {
				t.Errorf("status %s, want %d", out, tc.want)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	d := startDaemon(t, server.Access{})
	v, err := d.client.Version(ctx(t))
	if err != nil || v.APIVersion != "v1" || v.GoVersion == "" || v.Version == "" {
		t.Errorf("version: %+v, %v", v, err)
	}
	var ae *api.Error
	_, err = d.client.Domain(ctx(t), "nope")
	if !errors.As(err, &ae) || ae.Status != 404 {
		t.Errorf("unknown domain: %v", err)
	}
}

// checkDetachRefusedWhileBusy: a domain cannot be forgotten while an
// operation runs on it; the request is refused, not queued.
func checkDetachRefusedWhileBusy(t *testing.T) {
	d := startDaemon(t, server.Access{})
	d.vm("vm1", 1)
	inside, leave := d.holdAtSwitching()
	done := make(chan error, 1)
	go func() {
		_, err := d.client.CreateSnapshot(ctx(t), "vm1", api.CreateSnapshotRequest{Flags: api.Flags(driver.FlagDiskOnly)}, "")
		done <- err
	}()
	<-inside
	err := d.client.Detach(ctx(t), "vm1")
	close(leave)
	if api.Code(err) != api.CodeOperationInProgress {
		t.Errorf("detach while busy: %v, want operation-in-progress", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("the snapshot: %v", err)
	}
	if err := d.client.Detach(ctx(t), "vm1"); err != nil {
		t.Errorf("detach when idle: %v", err)
	}
}

// checkClientGoneMidSwitch: the client hangs up while the disks are being
// switched; the operation still completes, and its outcome is readable.
func checkClientGoneMidSwitch(t *testing.T) {
	d := startDaemon(t, server.Access{})
	d.vm("vm1", 2)
	inside, leave := d.holdAtSwitching()
	c, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := d.client.CreateSnapshot(c, "vm1", api.CreateSnapshotRequest{XML: "<domainsnapshot><name>gone</name></domainsnapshot>", Flags: api.Flags(driver.FlagDiskOnly | driver.FlagAtomic)}, "gone-1")
		done <- err
	}()
	<-inside
	cancel() // the client goes away mid-operation
	if err := <-done; err == nil {
		t.Fatal("the cancelled client got an answer")
	}
	close(leave)
	deadline := time.Now().Add(20 * time.Second)
	for {
		op, err := d.client.Operation(ctx(t), "gone-1")
		if err == nil && op.State == api.OpSucceeded {
			break
		}
		if time.Now().After(deadline) || (err == nil && op.State == api.OpFailed) {
			t.Fatalf("operation: %+v, %v", op, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := d.client.Snapshot(ctx(t), "vm1", "gone"); err != nil {
		t.Errorf("the snapshot of the vanished client: %v", err)
	}
}
