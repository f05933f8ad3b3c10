package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/api"
)

const disksJSON = `[
  {"target": "vda", "source": "/var/lib/images/vm1.qcow2", "format": "qcow2", "node_name": "n1", "backing": []},
  {"target": "vdb", "source": "/var/lib/images/data.qcow2", "format": "qcow2", "node_name": "n2", "backing": []},
  {"target": "sda", "source": "", "format": "", "node_name": "n3", "backing": []}
]`

// snapshotsJSON is a tree, oldest first as the daemon lists it:
//
//	base -> s1 -> s1a
//	     -> S2
//	other
const snapshotsJSON = `{
  "snapshots": [
    {"name": "base", "creation_time": "2024-03-01T10:00:00Z", "state": "disk-snapshot", "current": false, "children": ["s1", "S2"]},
    {"name": "s1", "creation_time": "2024-03-01T11:00:00Z", "state": "disk-snapshot", "parent": "base", "current": false, "children": ["s1a"]},
    {"name": "S2", "creation_time": "2024-03-01T12:00:00Z", "state": "disk-snapshot", "parent": "base", "current": false, "children": []},
    {"name": "s1a", "creation_time": "2024-03-01T13:00:00Z", "state": "disk-snapshot", "parent": "s1", "current": true, "children": []},
    {"name": "other", "creation_time": "2024-03-01T14:00:00Z", "state": "disk-snapshot", "current": false, "children": []}
  ],
  "tree": [
    {"name": "base", "children": [
      {"name": "S2", "children": []},
      {"name": "s1", "children": [{"name": "s1a", "children": []}]}
    ]},
    {"name": "other", "children": []}
  ]
}`

// interruptedSnapshotsJSON lists a snapshot whose merge was cancelled
// after writing into its bases.
const interruptedSnapshotsJSON = `{"snapshots": [
  {"name": "a", "creation_time": "2024-03-01T10:00:00Z", "state": "disk-snapshot", "current": false, "children": ["b"],
   "merge_interrupted": {"operation": "op-5", "time": "2024-03-01T11:00:00Z", "disks": ["vda", "vdb"]}},
  {"name": "b", "creation_time": "2024-03-01T10:30:00Z", "state": "disk-snapshot", "parent": "a", "current": true, "children": []}],
  "tree": [{"name": "a", "children": [{"name": "b", "children": []}]}]}`

const snapshotXMLDoc = "<domainsnapshot>\n  <name>s1a</name>\n  <state>disk-snapshot</state>\n</domainsnapshot>"

const snapshotJSON = `{"name": "s1a", "creation_time": "2024-03-01T13:00:00Z", "state": "disk-snapshot", "parent": "s1",
  "current": true, "children": [], "xml": "<domainsnapshot>\n  <name>s1a</name>\n  <state>disk-snapshot</state>\n</domainsnapshot>"}`

func newTestDaemon(t *testing.T) *fakeDaemon {
	return newFakeDaemon(t, map[string]fakeReply{
		"GET /v1/domains": {body: `[
			{"name": "vm2", "qmp": "/run/vm2.qmp", "connected": false, "transaction": false, "freeze": {"frozen": false}, "agent_configured": false},
			{"name": "vm1", "qmp": "/run/vm1.qmp", "agent": "/run/vm1.ga", "connected": true, "transaction": true,
			 "freeze": {"frozen": true, "owner": "fsfreeze"}, "agent_configured": true}]`},
		"POST /v1/domains": {status: http.StatusCreated, body: `{"name": "vm1", "qmp": "/run/vm1.qmp", "connected": true,
			"transaction": true, "freeze": {"frozen": false}, "agent_configured": false}`},
		"DELETE /v1/domains/vm1":                {status: http.StatusNoContent},
		"GET /v1/domains/vm1/disks":             {body: disksJSON},
		"GET /v1/domains/vm1/snapshots":         {body: snapshotsJSON},
		"GET /v1/domains/vm1/snapshots/s1a":     {body: snapshotJSON},
		"GET /v1/domains/vm1/snapshots/current": {body: snapshotJSON},
		"PUT /v1/domains/vm1/snapshots/current": {body: snapshotJSON},
		"DELETE /v1/domains/vm1/snapshots/s1a":  {status: http.StatusAccepted, body: runningOp("op-meta")},
		"GET /v1/operations/op-meta":            {body: metaDeletedOp},
		"DELETE /v1/domains/bad/snapshots/s1":   {status: http.StatusAccepted, body: runningOp("op-badmerge")},
		"GET /v1/operations/op-badmerge":        {body: failedMergeOp},
		"GET /v1/operations/op-merged":          {body: mergedOp},
		"GET /v1/operations/op-running":         {body: runningMergeOp(48<<20, 96<<20, true)},
		"DELETE /v1/operations/op-running":      {status: http.StatusAccepted, body: runningMergeOp(48<<20, 96<<20, true)},
		"POST /v1/domains/vm1/fsfreeze":         {body: `{"count": 2}`},
		"POST /v1/domains/vm1/fsthaw":           {body: `{"count": 2}`},
		"GET /v1/domains/vm1/fsfreeze":          {body: `{"frozen": true, "owner": "fsfreeze", "operation": "op-9", "since": "2024-03-01T10:00:00Z", "deadline": "2024-03-01T10:00:30Z", "agent": "frozen"}`},
		"GET /v1/domains/vm2/fsfreeze":          {body: `{"frozen": false}`},
		"GET /v1/domains/vm3/snapshots":         {body: interruptedSnapshotsJSON},
		"GET /v1/domains/nope/snapshots":        {status: http.StatusNotFound, body: `{"error": {"code": "no-domain", "message": "no domain with matching name 'nope'"}}`},
		"POST /v1/domains/vm1/snapshots":        {status: http.StatusCreated, body: `{"name": "s1", "xml": "<domainsnapshot/>", "operation": "op-7", "quiesced": false, "disks": [], "indications": [{"code": "no-agent", "message": "no guest agent configured"}], "timings": {"total_ms": 1, "switch_ms": 0.5, "freeze_ms": 0}}`},
		"POST /v1/domains/bad/snapshots":        {status: http.StatusConflict, body: failedSnapshotJSON},
		"POST /v1/domains/slow/snapshots":       {hang: true},
		"GET /v1/operations/op-7":               {body: `{"id": "op-7", "kind": "snapshot-create", "domain": "bad", "state": "failed", "started": "2024-03-01T10:00:00Z", "ended": "2024-03-01T10:00:02Z", "error": ` + failedErrorJSON + `}`},
		"GET /v1/version":                       {body: `{"version": "1.2.3", "go_version": "go1.26.0", "api_version": "v1"}`},
	})
}

const failedErrorJSON = `{"code": "operation-failed", "message": "snapshot of domain 'bad' failed at vdb; vda rolled back",
  "details": {"operation": "op-7", "step": "switch", "disks": [
    {"target": "vda", "source": "/img/vda.qcow2", "overlay": "/img/vda.s1", "result": "rolled-back"},
    {"target": "vdb", "source": "/img/vdb.qcow2", "overlay": "/img/vdb.s1", "result": "failed", "error": "Permission denied"},
    {"target": "vdc", "source": "/img/vdc.qcow2", "overlay": "", "result": "untouched"}]}}`

var failedSnapshotJSON = `{"error": ` + failedErrorJSON + `}`

// runningOp is the 202 answer of an operation started.
func runningOp(id string) string {
	return `{"id": "` + id + `", "kind": "snapshot-delete", "domain": "vm1", "state": "running", "started": "2024-03-01T10:00:00Z"}`
}

// runningMergeOp is a merge's operation as it runs.
func runningMergeOp(done, total int64, cancellable bool) string {
	return fmt.Sprintf(`{"id": "op-running", "kind": "snapshot-delete", "domain": "vm1", "state": "running", "started": "2024-03-01T10:00:00Z",
	  "progress": {"done_bytes": %d, "total_bytes": %d, "cancellable": %v}}`, done, total, cancellable)
}

const metaDeletedOp = `{"id": "op-meta", "kind": "snapshot-delete", "domain": "vm1", "state": "succeeded",
  "started": "2024-03-01T10:00:00Z", "ended": "2024-03-01T10:00:00Z",
  "result": {"operation": "op-meta", "deleted": ["s1a"], "disks": [], "merged_bytes": 0, "total_ms": 0.4}}`

const mergeResultJSON = `{"operation": "op-merged", "deleted": ["s1"], "merged_bytes": 100663296, "total_ms": 12345.6, "disks": [
    {"snapshot": "s1", "target": "vda", "overlay": "/img/vda.s1", "base": "/img/vda.qcow2", "result": "merged", "file_deleted": true},
    {"snapshot": "s1", "target": "vdb", "overlay": "/img/vdb.s1", "base": "/img/vdb.qcow2", "result": "merged", "file_deleted": false, "kept": "/img/vdb.s1"}]}`

const mergedOp = `{"id": "op-merged", "kind": "snapshot-delete", "domain": "vm1", "state": "succeeded",
  "started": "2024-03-01T10:00:00Z", "ended": "2024-03-01T10:00:12Z", "result": ` + mergeResultJSON + `}`

const failedMergeErrorJSON = `{"code": "operation-failed", "message": "merge of snapshot 's1' failed at vdb: No space left on device; no disk changed",
  "details": {"operation": "op-badmerge", "step": "commit", "deleted": ["s2"], "merges": [
    {"snapshot": "s1", "target": "vda", "overlay": "/img/vda.s1", "base": "/img/vda.qcow2", "result": "unchanged", "file_deleted": false},
    {"snapshot": "s1", "target": "vdb", "overlay": "/img/vdb.s1", "base": "/img/vdb.qcow2", "result": "failed", "file_deleted": false, "error": "No space left on device"}]}}`

const failedMergeOp = `{"id": "op-badmerge", "kind": "snapshot-delete", "domain": "bad", "state": "failed",
  "started": "2024-03-01T10:00:00Z", "ended": "2024-03-01T10:00:03Z", "error": ` + failedMergeErrorJSON + `}`

// interruptedWarning is what snapshot-list says of interruptedSnapshotsJSON.
const interruptedWarning = "warning: snapshot a: merge interrupted (operation op-5, 2024-03-01 13:00:00 +0200) after writing into" +
	" the base images of vda, vdb, which no longer hold its point in time exactly; delete it again to complete the merge\n"

// mergeTable is mergeResultJSON's disks as qsnapctl prints them.
const mergeTable = "" +
	" Snapshot   Target   Overlay       Base             Result   File      Error\n" +
	"------------------------------------------------------------------------------\n" +
	" s1         vda      /img/vda.s1   /img/vda.qcow2   merged   deleted   -\n" +
	" s1         vdb      /img/vdb.s1   /img/vdb.qcow2   merged   kept      -\n"

func TestOutput(t *testing.T) {
	f := newTestDaemon(t)
	t.Setenv(socketEnv, f.socket)
	for _, tc := range []struct {
		name       string
		argv       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{name: "domblklist", argv: []string{"domblklist", "vm1"}, wantStdout: "" +
			" Target   Source\n" +
			dashes(38) +
			" vda      /var/lib/images/vm1.qcow2\n" +
			" vdb      /var/lib/images/data.qcow2\n" +
			" sda      -\n"},
		{name: "domblklist --details", argv: []string{"domblklist", "--details", "vm1"}, wantStdout: "" +
			" Type   Device   Target   Source\n" +
			dashes(54) +
			" file   disk     vda      /var/lib/images/vm1.qcow2\n" +
			" file   disk     vdb      /var/lib/images/data.qcow2\n" +
			" file   disk     sda      -\n"},
		{name: "snapshot-list sorts by name, case-insensitively", argv: []string{"snapshot-list", "vm1"}, wantStdout: "" +
			" Name    Creation Time               State\n" +
			dashes(52) +
			" base    2024-03-01 12:00:00 +0200   disk-snapshot\n" +
			" other   2024-03-01 16:00:00 +0200   disk-snapshot\n" +
			" s1      2024-03-01 13:00:00 +0200   disk-snapshot\n" +
			" s1a     2024-03-01 15:00:00 +0200   disk-snapshot\n" +
			" S2      2024-03-01 14:00:00 +0200   disk-snapshot\n"},
		{name: "snapshot-list --parent", argv: []string{"snapshot-list", "vm1", "--parent"}, wantStdout: "" +
			" Name    Creation Time               State           Parent\n" +
			dashes(61) +
			" base    2024-03-01 12:00:00 +0200   disk-snapshot   \n" +
			" other   2024-03-01 16:00:00 +0200   disk-snapshot   \n" +
			" s1      2024-03-01 13:00:00 +0200   disk-snapshot   base\n" +
			" s1a     2024-03-01 15:00:00 +0200   disk-snapshot   s1\n" +
			" S2      2024-03-01 14:00:00 +0200   disk-snapshot   base\n"},
		{name: "snapshot-list --topological keeps the daemon's order", argv: []string{"snapshot-list", "vm1", "--topological", "--name"},
			wantStdout: "base\ns1\nS2\ns1a\nother\n"},
		{name: "snapshot-list --name", argv: []string{"snapshot-list", "--name", "vm1"}, wantStdout: "base\nother\ns1\ns1a\nS2\n"},
		{name: "snapshot-list --tree", argv: []string{"snapshot-list", "vm1", "--tree"}, wantStdout: "" +
			"base\n" +
			"  |\n" +
			"  +- s1\n" +
			"  |   |\n" +
			"  |   +- s1a\n" +
			"  |     \n" +
			"  +- S2\n" +
			"    \n" +
			"other\n" +
			"\n"},
		{name: "snapshot-list --tree --name", argv: []string{"snapshot-list", "vm1", "--tree", "--name"}, wantCode: 1,
			wantStderr: "error: options --tree and --name are mutually exclusive\n"},
		{name: "snapshot-list of a merge interrupted", argv: []string{"snapshot-list", "vm3"}, wantStdout: "" +
			" Name   Creation Time               State\n" +
			dashes(51) +
			" a      2024-03-01 12:00:00 +0200   disk-snapshot\n" +
			" b      2024-03-01 12:30:00 +0200   disk-snapshot\n",
			wantStderr: interruptedWarning},
		{name: "snapshot-list --tree of a merge interrupted", argv: []string{"snapshot-list", "vm3", "--tree"},
			wantStdout: "a\n  |\n  +- b\n    \n", wantStderr: interruptedWarning},
		{name: "snapshot-list of an unknown domain", argv: []string{"snapshot-list", "nope"}, wantCode: 1,
			wantStderr: "error: no domain with matching name 'nope'\n"},
		{name: "snapshot-dumpxml", argv: []string{"snapshot-dumpxml", "vm1", "s1a"}, wantStdout: snapshotXMLDoc + "\n"},
		{name: "snapshot-current", argv: []string{"snapshot-current", "vm1"}, wantStdout: snapshotXMLDoc + "\n"},
		{name: "snapshot-current --name", argv: []string{"snapshot-current", "--name", "vm1"}, wantStdout: "s1a\n"},
		{name: "snapshot-current SNAP", argv: []string{"snapshot-current", "vm1", "s1a"}, wantStdout: "Snapshot s1a set as current\n"},
		{name: "snapshot-current --name SNAP", argv: []string{"snapshot-current", "vm1", "--name", "s1a"}, wantCode: 1,
			wantStderr: "error: options --name and --snapshotname are mutually exclusive\n"},
		{name: "snapshot-delete", argv: []string{"snapshot-delete", "vm1", "s1a", "--metadata"}, wantStdout: "Domain snapshot s1a deleted\n"},
		{name: "snapshot-delete --current", argv: []string{"snapshot-delete", "vm1", "--current"}, wantStdout: "Domain snapshot s1a deleted\n"},
		{name: "snapshot-delete without a snapshot", argv: []string{"snapshot-delete", "vm1"}, wantCode: 1,
			wantStderr: "error: --snapshotname or --current is required\n"},
		{name: "snapshot-delete --no-wait", argv: []string{"snapshot-delete", "vm1", "s1a", "--no-wait"}, wantStdout: "op-meta\n"},
		{name: "snapshot-delete --metadata --json", argv: []string{"snapshot-delete", "vm1", "s1a", "--metadata", "--json"},
			wantStdout: "{\n  \"operation\": \"op-meta\",\n  \"deleted\": [\n    \"s1a\"\n  ],\n  \"disks\": [],\n  \"merged_bytes\": 0,\n  \"total_ms\": 0.4\n}\n"},
		{name: "snapshot-delete --children --children-only", argv: []string{"snapshot-delete", "vm1", "s1a", "--children", "--children-only"}, wantCode: 1,
			wantStderr: "error: options --children and --children-only are mutually exclusive\n"},
		{name: "snapshot-delete with a bad bandwidth", argv: []string{"snapshot-delete", "vm1", "s1a", "--bandwidth", "fast"}, wantCode: 1,
			wantStderr: "error: --bandwidth must be bytes per second, such as 1048576 or 50M, not 'fast'\n"},
		{name: "failed merge", argv: []string{"snapshot-delete", "bad", "s1"}, wantCode: 1, wantStderr: "" +
			"error: merge of snapshot 's1' failed at vdb: No space left on device; no disk changed\n" +
			"operation: op-badmerge\n" +
			"step: commit\n" +
			"deleted before the failure: s2\n" +
			" Snapshot   Target   Overlay       Base             Result      File   Error\n" +
			dashes(96) +
			" s1         vda      /img/vda.s1   /img/vda.qcow2   unchanged   -      -\n" +
			" s1         vdb      /img/vdb.s1   /img/vdb.qcow2   failed      -      No space left on device\n"},
		{name: "operation of a merge", argv: []string{"operation", "op-merged"}, wantStdout: "" +
			"ID:             op-merged\n" +
			"Kind:           snapshot-delete\n" +
			"Domain:         vm1\n" +
			"State:          succeeded\n" +
			"Started:        2024-03-01 12:00:00 +0200\n" +
			"Ended:          2024-03-01 12:00:12 +0200\n" +
			"Deleted:        s1\n" +
			"Merged 96.0 MiB in 12.346s\n" + mergeTable},
		{name: "operation of a running merge", argv: []string{"operation", "op-running"}, wantStdout: "" +
			"ID:             op-running\n" +
			"Kind:           snapshot-delete\n" +
			"Domain:         vm1\n" +
			"State:          running\n" +
			"Started:        2024-03-01 12:00:00 +0200\n" +
			"Ended:          -\n" +
			"Progress:       50% (48.0 MiB of 96.0 MiB), cancellable\n"},
		{name: "operation --wait of a failed merge", argv: []string{"operation", "op-badmerge", "--wait"}, wantCode: 1,
			wantStdout: "" +
				"ID:             op-badmerge\n" +
				"Kind:           snapshot-delete\n" +
				"Domain:         bad\n" +
				"State:          failed\n" +
				"Started:        2024-03-01 12:00:00 +0200\n" +
				"Ended:          2024-03-01 12:00:03 +0200\n" +
				"Error:          merge of snapshot 's1' failed at vdb: No space left on device; no disk changed\n" +
				"Code:           operation-failed\n" +
				"Step:           commit\n" +
				"Deleted:        s2\n" +
				" Snapshot   Target   Overlay       Base             Result      File   Error\n" +
				dashes(96) +
				" s1         vda      /img/vda.s1   /img/vda.qcow2   unchanged   -      -\n" +
				" s1         vdb      /img/vdb.s1   /img/vdb.qcow2   failed      -      No space left on device\n",
			wantStderr: "error: operation op-badmerge failed\n"},
		{name: "list", argv: []string{"list"}, wantStdout: "" +
			" Name   State          Agent   Frozen\n" +
			dashes(39) +
			" vm1    connected      yes     yes\n" +
			" vm2    disconnected   no      no\n"},
		{name: "list --name", argv: []string{"list", "--name"}, wantStdout: "vm1\nvm2\n"},
		{name: "attach", argv: []string{"attach", "vm1", "--qmp", "/run/vm1.qmp"}, wantStdout: "Domain vm1 attached\n"},
		{name: "attach with a bad agent channel", argv: []string{"attach", "vm1", "--qmp", "/run/vm1.qmp", "--agent-channel", "shared"}, wantCode: 1,
			wantStderr: "error: --agent-channel must be hold or per-operation, not 'shared'\n"},
		{name: "detach", argv: []string{"detach", "vm1"}, wantStdout: "Domain vm1 detached\n"},
		{name: "detach --json", argv: []string{"detach", "vm1", "--json"}, wantStdout: "{}\n"},
		{name: "domfsfreeze", argv: []string{"domfsfreeze", "vm1", "--mountpoint", "/", "--mountpoint=/var", "--timeout", "30s"},
			wantStdout: "Froze 2 filesystem(s)\n"},
		{name: "domfsfreeze with a bad timeout", argv: []string{"domfsfreeze", "vm1", "--timeout", "soon"}, wantCode: 1,
			wantStderr: "error: --timeout must be a positive duration such as 30s, not 'soon'\n"},
		{name: "domfsthaw", argv: []string{"domfsthaw", "vm1"}, wantStdout: "Thawed 2 filesystem(s)\n"},
		{name: "domfsthaw --json", argv: []string{"--json", "domfsthaw", "vm1"}, wantStdout: "{\n  \"count\": 2\n}\n"},
		{name: "domfsstatus frozen", argv: []string{"domfsstatus", "vm1"}, wantStdout: "" +
			"State:          frozen\n" +
			"Owner:          fsfreeze\n" +
			"Operation:      op-9\n" +
			"Since:          2024-03-01 12:00:00 +0200\n" +
			"Deadline:       2024-03-01 12:00:30 +0200\n" +
			"Agent:          frozen\n"},
		{name: "domfsstatus thawed", argv: []string{"domfsstatus", "vm2"}, wantStdout: "State:          thawed\n"},
		{name: "snapshot-create-as", argv: []string{"snapshot-create-as", "vm1", "s1", "--disk-only", "--quiesce-mode", "prefer"},
			wantStdout: "Domain snapshot s1 created\n", wantStderr: "warning: no-agent: no guest agent configured\n"},
		{name: "snapshot-create-as with a bad quiesce mode", argv: []string{"snapshot-create-as", "vm1", "--quiesce-mode", "maybe"}, wantCode: 1,
			wantStderr: "error: --quiesce-mode must be require, prefer or skip, not 'maybe'\n"},
		{name: "snapshot-create with a bad quiesce scope", argv: []string{"snapshot-create", "vm1", "--quiesce-scope", "disks"}, wantCode: 1,
			wantStderr: "error: --quiesce-scope must be all or snapshot-disks, not 'disks'\n"},
		{name: "snapshot-create-as with a bad diskspec", argv: []string{"snapshot-create-as", "vm1", "--diskspec", "vda,size=1"}, wantCode: 1,
			wantStderr: "error: unable to parse diskspec 'vda,size=1': unknown key 'size'\n"},
		{name: "failed snapshot with disks", argv: []string{"snapshot-create-as", "bad", "s1", "--disk-only", "--atomic"}, wantCode: 1,
			wantStderr: "" +
				"error: snapshot of domain 'bad' failed at vdb; vda rolled back\n" +
				"operation: op-7\n" +
				"step: switch\n" +
				" Target   Source           Overlay       Result        Error\n" +
				dashes(74) +
				" vda      /img/vda.qcow2   /img/vda.s1   rolled-back   -\n" +
				" vdb      /img/vdb.qcow2   /img/vdb.s1   failed        Permission denied\n" +
				" vdc      /img/vdc.qcow2   -             untouched     -\n"},
		{name: "operation", argv: []string{"operation", "op-7"}, wantStdout: "" +
			"ID:             op-7\n" +
			"Kind:           snapshot-create\n" +
			"Domain:         bad\n" +
			"State:          failed\n" +
			"Started:        2024-03-01 12:00:00 +0200\n" +
			"Ended:          2024-03-01 12:00:02 +0200\n" +
			"Error:          snapshot of domain 'bad' failed at vdb; vda rolled back\n" +
			"Code:           operation-failed\n" +
			"Step:           switch\n" +
			" Target   Source           Overlay       Result        Error\n" +
			dashes(74) +
			" vda      /img/vda.qcow2   /img/vda.s1   rolled-back   -\n" +
			" vdb      /img/vdb.qcow2   /img/vdb.s1   failed        Permission denied\n" +
			" vdc      /img/vdc.qcow2   -             untouched     -\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, tc.argv...)
			if code != tc.wantCode || stdout != tc.wantStdout || stderr != tc.wantStderr {
				t.Errorf("qsnapctl %q:\nexit %d, want %d\nstdout:\n%s\nwant:\n%s\nstderr:\n%s\nwant:\n%s",
					tc.argv, code, tc.wantCode, stdout, tc.wantStdout, stderr, tc.wantStderr)
			}
		})
	}
}

// TestRequests checks what the verbs send.
func TestRequests(t *testing.T) {
	dir := t.TempDir()
	xmlFile := filepath.Join(dir, "s9.xml")
	const fileXML = "<domainsnapshot><name>s9</name></domainsnapshot>\n"
	if err := os.WriteFile(xmlFile, []byte(fileXML), 0o644); err != nil {
		t.Fatal(err)
	}
	hexID := regexp.MustCompile(`^[0-9a-f]{24}$`)
	for _, tc := range []struct {
		name      string
		argv      []string
		method    string
		path      string
		query     string
		opID      string // "hex": a generated id
		body      map[string]any
		wantOut   string
		lastIndex int // which request to check, from the end (0: the last)
	}{
		{name: "snapshot-create-as", method: "POST", path: "/v1/domains/vm1/snapshots", opID: "op-7",
			argv: []string{"snapshot-create-as", "--disk-only", "vm1", "s1", "--atomic", "--quiesce", "--quiesce-mode=prefer",
				"--operation", "op-7", "--diskspec", "vda,file=/img/a,,b.qcow2", "--no-metadata", "--reuse-external", "--halt"},
			body: map[string]any{
				"xml": "<domainsnapshot>\n  <name>s1</name>\n  <disks>\n    <disk type=\"file\" name=\"vda\">\n" +
					"      <source file=\"/img/a,b.qcow2\"></source>\n    </disk>\n  </disks>\n</domainsnapshot>",
				"flags":   []any{"no-metadata", "halt", "disk-only", "reuse-external", "quiesce", "atomic"},
				"quiesce": "prefer"},
			wantOut: "Domain snapshot s1 created\n"},
		{name: "snapshot-create-as generates an operation id", method: "POST", path: "/v1/domains/vm1/snapshots", opID: "hex",
			argv: []string{"snapshot-create-as", "vm1"},
			body: map[string]any{"xml": "<domainsnapshot></domainsnapshot>", "flags": []any{}}},
		{name: "snapshot-create without a file", method: "POST", path: "/v1/domains/vm1/snapshots", opID: "hex",
			argv: []string{"snapshot-create", "vm1", "--disk-only", "--validate", "--live"},
			body: map[string]any{"xml": "<domainsnapshot/>", "flags": []any{"disk-only", "live", "validate"}}},
		{name: "snapshot-create-as --quiesce-scope", method: "POST", path: "/v1/domains/vm1/snapshots", opID: "hex",
			argv: []string{"snapshot-create-as", "vm1", "--quiesce", "--quiesce-scope", "snapshot-disks", "--diskspec", "vdb,snapshot=no"},
			body: map[string]any{"xml": "<domainsnapshot>\n  <disks>\n    <disk name=\"vdb\" snapshot=\"no\"></disk>\n  </disks>\n</domainsnapshot>",
				"flags": []any{"quiesce"}, "quiesce_scope": "snapshot-disks"}},
		{name: "snapshot-create --quiesce-scope all", method: "POST", path: "/v1/domains/vm1/snapshots", opID: "hex",
			argv: []string{"snapshot-create", "vm1", "--quiesce-scope=all"},
			body: map[string]any{"xml": "<domainsnapshot/>", "flags": []any{}, "quiesce_scope": "all"}},
		{name: "snapshot-create --redefine --current FILE", method: "POST", path: "/v1/domains/vm1/snapshots", opID: "hex",
			argv: []string{"snapshot-create", "vm1", xmlFile, "--redefine", "--current"},
			body: map[string]any{"xml": fileXML, "flags": []any{"redefine", "current"}},
			// The fake's canned reply names s1.
			wantOut: "Domain snapshot s1 created from '" + xmlFile + "'\n"},
		{name: "attach", method: "POST", path: "/v1/domains", argv: []string{"attach", "--agent=/run/vm1.ga", "vm1", "--qmp", "/run/vm1.qmp"},
			body: map[string]any{"name": "vm1", "qmp": "/run/vm1.qmp", "agent": "/run/vm1.ga"}},
		{name: "attach --agent-channel", method: "POST", path: "/v1/domains",
			argv: []string{"attach", "vm1", "--qmp", "/run/vm1.qmp", "--agent", "/run/vm1.ga", "--agent-channel", "per-operation"},
			body: map[string]any{"name": "vm1", "qmp": "/run/vm1.qmp", "agent": "/run/vm1.ga", "agent_channel": "per-operation"}},
		{name: "snapshot-list --roots --leaves", method: "GET", path: "/v1/domains/vm1/snapshots", query: "leaves=true&limit=500&roots=true",
			argv: []string{"snapshot-list", "--roots", "vm1", "--leaves"}},
		{name: "snapshot-list --tree builds the tree from pages", method: "GET", path: "/v1/domains/vm1/snapshots", query: "limit=500",
			argv: []string{"snapshot-list", "vm1", "--tree"}},
		{name: "snapshot-current SNAP", method: "PUT", path: "/v1/domains/vm1/snapshots/current",
			argv: []string{"snapshot-current", "vm1", "s1a"}, body: map[string]any{"name": "s1a"}},
		{name: "snapshot-delete --metadata", method: "DELETE", path: "/v1/domains/vm1/snapshots/s1a", query: "metadata-only=true",
			opID: "hex", argv: []string{"snapshot-delete", "--metadata", "vm1", "s1a"}, lastIndex: 1},
		{name: "snapshot-delete", method: "DELETE", path: "/v1/domains/vm1/snapshots/s1a", opID: "hex",
			argv: []string{"snapshot-delete", "vm1", "--snapshotname", "s1a"}, lastIndex: 1},
		{name: "snapshot-delete --children --bandwidth", method: "DELETE", path: "/v1/domains/vm1/snapshots/s1a",
			query: "children=true&bandwidth=52428800", opID: "op-del",
			argv: []string{"snapshot-delete", "vm1", "s1a", "--children", "--bandwidth", "50M", "--operation", "op-del"}, lastIndex: 1},
		{name: "snapshot-delete --children-only --metadata --no-wait", method: "DELETE", path: "/v1/domains/vm1/snapshots/s1a",
			query: "metadata-only=true&children-only=true", opID: "hex",
			argv: []string{"snapshot-delete", "vm1", "s1a", "--children-only", "--metadata", "--no-wait"}},
		{name: "snapshot-delete follows the operation", method: "GET", path: "/v1/operations/op-meta",
			argv: []string{"snapshot-delete", "vm1", "s1a"}},
		{name: "operation --cancel", method: "DELETE", path: "/v1/operations/op-running",
			argv: []string{"operation", "op-running", "--cancel"}, lastIndex: 1},
		{name: "domfsfreeze", method: "POST", path: "/v1/domains/vm1/fsfreeze",
			argv: []string{"domfsfreeze", "--mountpoint", "/", "vm1", "/home", "--mountpoint=/var", "--timeout", "30s"},
			body: map[string]any{"mountpoints": []any{"/", "/home", "/var"}, "timeout": "30s"}},
		{name: "domfsfreeze everything", method: "POST", path: "/v1/domains/vm1/fsfreeze",
			argv: []string{"domfsfreeze", "vm1"}, body: map[string]any{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newTestDaemon(t)
			t.Setenv(socketEnv, f.socket)
			code, stdout, stderr := runCLI(t, tc.argv...)
			if code != 0 {
				t.Fatalf("qsnapctl %q: exit %d, stderr %q", tc.argv, code, stderr)
			}
			if tc.wantOut != "" && stdout != tc.wantOut {
				t.Errorf("stdout %q, want %q", stdout, tc.wantOut)
			}
			reqs := f.requests()
			if len(reqs) == 0 {
				t.Fatal("no request")
			}
			r := reqs[len(reqs)-1-tc.lastIndex]
			if r.method != tc.method || r.path != tc.path || r.query != tc.query {
				t.Errorf("request %s %s?%s, want %s %s?%s", r.method, r.path, r.query, tc.method, tc.path, tc.query)
			}
			if wantAsync := tc.method == "DELETE" && strings.Contains(tc.path, "/snapshots/"); (r.prefer == api.PreferAsync) != wantAsync {
				t.Errorf("Prefer: %q, want respond-async %v", r.prefer, wantAsync)
			}
			// Every change goes under an operation id; a cancel names its
			// operation in the path.
			wantID := tc.opID
			if wantID == "" && tc.method != "GET" && !strings.HasPrefix(tc.path, "/v1/operations/") {
				wantID = "hex"
			}
			switch {
			case wantID == "hex" && !hexID.MatchString(r.opID):
				t.Errorf("operation id %q, want 24 hex digits", r.opID)
			case wantID != "hex" && r.opID != wantID:
				t.Errorf("operation id %q, want %q", r.opID, wantID)
			}
			if tc.body == nil {
				if r.body != "" {
					t.Errorf("body %q, want none", r.body)
				}
				return
			}
			var got map[string]any
			if err := json.Unmarshal([]byte(r.body), &got); err != nil {
				t.Fatalf("body %q: %v", r.body, err)
			}
			gotJSON, _ := json.Marshal(got)
			wantJSON, _ := json.Marshal(tc.body)
			if !bytes.Equal(gotJSON, wantJSON) {
				t.Errorf("body\n%s\nwant\n%s", gotJSON, wantJSON)
			}
		})
	}
}

// TestJSON: --json, before or after the command, prints the daemon's
// JSON, indented; on failure the error body goes to stdout too.
func TestJSON(t *testing.T) {
	f := newTestDaemon(t)
	t.Setenv(socketEnv, f.socket)
	for _, argv := range [][]string{{"--json", "snapshot-list", "vm1"}, {"snapshot-list", "vm1", "--json"}} {
		code, stdout, stderr := runCLI(t, argv...)
		if code != 0 || stderr != "" {
			t.Fatalf("%q: exit %d, stderr %q", argv, code, stderr)
		}
		var got struct {
			Snapshots []struct{ Name string }
		}
		if err := json.Unmarshal([]byte(stdout), &got); err != nil || len(got.Snapshots) != 5 || !strings.HasPrefix(stdout, "{\n  \"snapshots\": [\n") {
			t.Errorf("%q: stdout %q (%v), want the list, indented", argv, stdout, err)
		}
	}

	code, stdout, stderr := runCLI(t, "snapshot-create-as", "bad", "--json")
	var body struct {
		Error struct {
			Code    string
			Details struct{ Disks []struct{ Target string } }
		}
	}
	if err := json.Unmarshal([]byte(stdout), &body); err != nil || code != 1 || body.Error.Code != "operation-failed" || len(body.Error.Details.Disks) != 3 {
		t.Errorf("failed --json: exit %d, stdout %q (%v), want 1 and the error body", code, stdout, err)
	}
	if !strings.HasPrefix(stderr, "error: snapshot of domain 'bad' failed") {
		t.Errorf("failed --json: stderr %q, want the error", stderr)
	}

	code, stdout, _ = runCLI(t, "snapshot-dumpxml", "vm1", "s1a", "--json")
	if code != 0 || !strings.Contains(stdout, `"xml": "<domainsnapshot>\n  <name>s1a</name>`) {
		t.Errorf("snapshot-dumpxml --json: exit %d, stdout %q; want the snapshot with its XML unescaped", code, stdout)
	}
}

// TestLostReply: when the reply never comes, the error names the
// operation id under which the outcome can be read.
func TestLostReply(t *testing.T) {
	f := newTestDaemon(t)
	t.Setenv(socketEnv, f.socket)
	code, _, stderr := runCLITimeout(t, 200*time.Millisecond, "snapshot-create-as", "slow", "s1", "--operation", "op-slow")
	if code != 1 || !strings.HasPrefix(stderr, "error: no answer from qsnapd on "+f.socket+" within 200ms: the daemon may still be at work on it") ||
		!strings.Contains(stderr, "error: operation op-slow may still finish in the daemon; see 'qsnapctl operation op-slow'\n") {
		t.Errorf("exit %d, stderr %q; want 1, a timeout and the operation", code, stderr)
	}
}

// TestNoDaemon: a daemon that is not there fails with the socket's path
// and what to check, and no hint about a lost operation, since nothing
// was sent.
func TestNoDaemon(t *testing.T) {
	// A socket that nothing listens on: its file stays after its
	// listener, as after a daemon that died.
	refused := filepath.Join(t.TempDir(), "refused.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: refused, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	for _, tc := range []struct {
		socket string
		why    string
	}{
		{filepath.Join(t.TempDir(), "none.sock"), "the socket does not exist"},
		{refused, "nothing listens on the socket"},
	} {
		for _, argv := range [][]string{{"list"}, {"snapshot-create-as", "vm1", "s1"}} {
			code, stdout, stderr := runCLI(t, slices.Concat([]string{"--socket", tc.socket}, argv)...)
			want := "error: cannot connect to qsnapd on " + tc.socket + ": " + tc.why +
				" (is qsnapd.service running? see: systemctl status qsnapd)\n"
			if code != 1 || stdout != "" || stderr != want {
				t.Errorf("%q on %s: exit %d, stdout %q, stderr %q; want 1 and %q", argv, tc.socket, code, stdout, stderr, want)
			}
		}
	}
}

// TestPermissionDenied: a socket the user may not connect to says who
// may, and where reads go instead. Tests run as root, whom no mode
// stops, so the dial error is made here.
func TestPermissionDenied(t *testing.T) {
	err := &net.OpError{Op: "dial", Net: "unix", Addr: &net.UnixAddr{Name: "/run/qsnapd/qsnapd.sock", Net: "unix"},
		Err: os.NewSyscallError("connect", syscall.EACCES)}
	want := "cannot connect to qsnapd on /run/qsnapd/qsnapd.sock: permission denied (the read-write socket is for root " +
		"and members of group qsnapd; anyone may read through --socket /run/qsnapd/qsnapd-ro.sock)"
	if got := explain(fmt.Errorf("qsnapd: %w", err)); got != want {
		t.Errorf("explain(EACCES) = %q, want %q", got, want)
	}
}

// dashes is a table's rule line, n long.
func dashes(n int) string { return strings.Repeat("-", n) + "\n" }
