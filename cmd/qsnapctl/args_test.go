package main

import (
	"errors"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/api"
)

func TestParseArgs(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cmd     string
		argv    []string
		want    map[string][]string // string options
		flags   []string            // bool options set
		json    bool
		wantErr string
	}{
		{name: "flags after positionals", cmd: "snapshot-create-as", argv: []string{"vm1", "s1", "--disk-only"},
			want: map[string][]string{"domain": {"vm1"}, "name": {"s1"}}, flags: []string{"disk-only"}},
		{name: "flags before positionals", cmd: "snapshot-create-as", argv: []string{"--disk-only", "vm1", "s1"},
			want: map[string][]string{"domain": {"vm1"}, "name": {"s1"}}, flags: []string{"disk-only"}},
		{name: "flags between positionals", cmd: "snapshot-create-as", argv: []string{"vm1", "--atomic", "s1", "desc", "--quiesce"},
			want: map[string][]string{"domain": {"vm1"}, "name": {"s1"}, "description": {"desc"}}, flags: []string{"atomic", "quiesce"}},
		{name: "named positionals", cmd: "snapshot-create-as", argv: []string{"--description", "d", "--name=s1", "--domain", "vm1"},
			want: map[string][]string{"domain": {"vm1"}, "name": {"s1"}, "description": {"d"}}},
		{name: "named fills its slot; the next free argument takes the following one", cmd: "snapshot-create-as",
			argv: []string{"vm1", "--name", "s1", "desc"},
			want: map[string][]string{"domain": {"vm1"}, "name": {"s1"}, "description": {"desc"}}},
		{name: "--flag=value and --flag value", cmd: "snapshot-create-as",
			argv: []string{"vm1", "--quiesce-mode=prefer", "--operation", "op-1"},
			want: map[string][]string{"domain": {"vm1"}, "quiesce-mode": {"prefer"}, "operation": {"op-1"}}},
		{name: "value with '='", cmd: "snapshot-create-as", argv: []string{"vm1", "--diskspec=vda,file=/a=b"},
			want: map[string][]string{"domain": {"vm1"}, "diskspec": {"vda,file=/a=b"}}},
		{name: "repeated --diskspec", cmd: "snapshot-create-as",
			argv: []string{"vm1", "--diskspec", "vda,snapshot=no", "s1", "--diskspec=vdb,file=/b"},
			want: map[string][]string{"domain": {"vm1"}, "name": {"s1"}, "diskspec": {"vda,snapshot=no", "vdb,file=/b"}}},
		{name: "leftover arguments are diskspecs, as in virsh", cmd: "snapshot-create-as",
			argv: []string{"vm1", "s1", "d", "vda", "--diskspec", "vdb"},
			want: map[string][]string{"domain": {"vm1"}, "name": {"s1"}, "description": {"d"}, "diskspec": {"vda", "vdb"}}},
		{name: "repeated --mountpoint", cmd: "domfsfreeze", argv: []string{"--mountpoint", "/", "vm1", "--mountpoint=/var", "--timeout", "5s"},
			want: map[string][]string{"domain": {"vm1"}, "mountpoint": {"/", "/var"}, "timeout": {"5s"}}},
		{name: "-- ends flags", cmd: "snapshot-dumpxml", argv: []string{"vm1", "--", "--odd-name"},
			want: map[string][]string{"domain": {"vm1"}, "snapshotname": {"--odd-name"}}},
		{name: "-- then flag-like domain", cmd: "snapshot-list", argv: []string{"--tree", "--", "--vm"},
			want: map[string][]string{"domain": {"--vm"}}, flags: []string{"tree"}},
		{name: "a single dash is data", cmd: "snapshot-dumpxml", argv: []string{"vm1", "-x"},
			want: map[string][]string{"domain": {"vm1"}, "snapshotname": {"-x"}}},
		{name: "--json after the command", cmd: "list", argv: []string{"--json", "--name"}, flags: []string{"name"}, json: true},
		{name: "value that looks like a flag", cmd: "snapshot-create-as", argv: []string{"vm1", "--description", "--atomic"},
			want: map[string][]string{"domain": {"vm1"}, "description": {"--atomic"}}},

		{name: "unknown flag", cmd: "snapshot-list", argv: []string{"vm1", "--bogus"},
			wantErr: "command 'snapshot-list' doesn't support option --bogus"},
		{name: "diskspec is not an option of snapshot-create", cmd: "snapshot-create", argv: []string{"vm1", "--diskspec", "vda"},
			wantErr: "command 'snapshot-create' doesn't support option --diskspec"},
		{name: "missing positional", cmd: "snapshot-dumpxml", argv: []string{"vm1"},
			wantErr: "command 'snapshot-dumpxml' requires <snapshotname> option"},
		{name: "missing domain", cmd: "snapshot-list", argv: []string{"--tree"},
			wantErr: "command 'snapshot-list' requires <domain> option"},
		{name: "missing required flag", cmd: "attach", argv: []string{"vm1"},
			wantErr: "command 'attach' requires --qmp option"},
		{name: "too many positionals", cmd: "snapshot-dumpxml", argv: []string{"vm1", "s1", "s2"},
			wantErr: "unexpected data 's2'"},
		{name: "flag without its value", cmd: "attach", argv: []string{"vm1", "--qmp"},
			wantErr: "option --qmp needs a value"},
		{name: "bool flag with a value", cmd: "snapshot-create-as", argv: []string{"vm1", "--disk-only=yes"},
			wantErr: "option --disk-only takes no value"},
		{name: "string option twice", cmd: "snapshot-create-as", argv: []string{"vm1", "--name", "a", "--name", "b"},
			wantErr: "option --name given twice"},
		{name: "empty value", cmd: "snapshot-create-as", argv: []string{"vm1", "--name="},
			wantErr: "option --name: empty value"},
		{name: "empty positional", cmd: "snapshot-list", argv: []string{""},
			wantErr: "option --domain: empty value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := lookup(tc.cmd)
			a, err := parseArgs(cmd, tc.argv)
			if tc.wantErr != "" {
				var ue *usageError
				if err == nil || err.Error() != tc.wantErr || !errors.As(err, &ue) {
					t.Fatalf("parseArgs(%q) error = %v, want usage error %q", tc.argv, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseArgs(%q): %v", tc.argv, err)
			}
			want := tc.want
			if want == nil {
				want = map[string][]string{}
			}
			if !maps.EqualFunc(a.strs, want, slices.Equal) {
				t.Errorf("options = %q, want %q", a.strs, want)
			}
			got := slices.Sorted(maps.Keys(a.bools))
			wantFlags := slices.Sorted(slices.Values(tc.flags))
			if !slices.Equal(got, wantFlags) {
				t.Errorf("flags = %q, want %q", got, wantFlags)
			}
			if a.json != tc.json {
				t.Errorf("json = %v, want %v", a.json, tc.json)
			}
		})
	}
}

func TestParseGlobals(t *testing.T) {
	for _, tc := range []struct {
		name        string
		env         string
		argv        []string
		wantSocket  string
		wantTimeout time.Duration
		wantRest    []string
		wantJSON    bool
		wantErr     string
	}{
		{name: "default", argv: []string{"list"}, wantSocket: api.DefaultSocket, wantRest: []string{"list"}},
		{name: "environment", env: "/env.sock", argv: []string{"list"}, wantSocket: "/env.sock", wantRest: []string{"list"}},
		{name: "flag beats environment", env: "/env.sock", argv: []string{"--socket", "/flag.sock", "list"},
			wantSocket: "/flag.sock", wantRest: []string{"list"}},
		{name: "flag=value", env: "/env.sock", argv: []string{"--socket=/flag.sock", "--json", "list", "--name"},
			wantSocket: "/flag.sock", wantRest: []string{"list", "--name"}, wantJSON: true},
		{name: "command arguments are not globals", argv: []string{"list", "--socket", "x"},
			wantSocket: api.DefaultSocket, wantRest: []string{"list", "--socket", "x"}},
		{name: "-- before the command", argv: []string{"--json", "--", "list"},
			wantSocket: api.DefaultSocket, wantRest: []string{"list"}, wantJSON: true},
		{name: "missing value", argv: []string{"--socket"}, wantErr: "option --socket needs a value"},
		{name: "empty value", argv: []string{"--socket=", "list"}, wantErr: "option --socket: empty value"},
		{name: "unknown", argv: []string{"--bogus", "list"}, wantErr: "unknown option --bogus"},
		{name: "bool with value", argv: []string{"--json=1", "list"}, wantErr: "option --json takes no value"},
		{name: "socket twice", argv: []string{"--socket", "/a.sock", "--socket=/b.sock", "list"}, wantErr: "option --socket given twice"},

		{name: "no timeout: each command's own", argv: []string{"list"}, wantSocket: api.DefaultSocket, wantRest: []string{"list"}},
		{name: "timeout", argv: []string{"--timeout", "90s", "list"},
			wantSocket: api.DefaultSocket, wantTimeout: 90 * time.Second, wantRest: []string{"list"}},
		{name: "timeout=value among the others", argv: []string{"--json", "--timeout=1m30s", "--socket", "/s.sock", "list"},
			wantSocket: "/s.sock", wantTimeout: 90 * time.Second, wantRest: []string{"list"}, wantJSON: true},
		{name: "domfsfreeze's own --timeout is not the global one", argv: []string{"domfsfreeze", "vm1", "--timeout", "5s"},
			wantSocket: api.DefaultSocket, wantRest: []string{"domfsfreeze", "vm1", "--timeout", "5s"}},
		{name: "timeout without its value", argv: []string{"--timeout"}, wantErr: "option --timeout needs a value"},
		{name: "timeout empty", argv: []string{"--timeout=", "list"}, wantErr: "option --timeout: empty value"},
		{name: "timeout twice", argv: []string{"--timeout", "1s", "--timeout=2s", "list"}, wantErr: "option --timeout given twice"},
		{name: "timeout without a unit", argv: []string{"--timeout", "30", "list"},
			wantErr: "option --timeout must be a positive duration such as 30s or 5m, not '30'"},
		{name: "timeout not a duration", argv: []string{"--timeout=soon", "list"},
			wantErr: "option --timeout must be a positive duration such as 30s or 5m, not 'soon'"},
		{name: "timeout negative", argv: []string{"--timeout", "-1s", "list"},
			wantErr: "option --timeout must be a positive duration such as 30s or 5m, not '-1s'"},
		{name: "timeout zero", argv: []string{"--timeout=0s", "list"},
			wantErr: "option --timeout must be a positive duration such as 30s or 5m, not '0s'"},
		{name: "timeout takes the command for its value", argv: []string{"--timeout", "list"},
			wantErr: "option --timeout must be a positive duration such as 30s or 5m, not 'list'"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(socketEnv, tc.env)
			g, err := parseGlobals(tc.argv, os.Getenv, api.DefaultSocket)
			if tc.wantErr != "" {
				var ue *usageError
				if err == nil || err.Error() != tc.wantErr || !errors.As(err, &ue) {
					t.Fatalf("parseGlobals(%q) error = %v, want usage error %q", tc.argv, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseGlobals(%q): %v", tc.argv, err)
			}
			if g.socket != tc.wantSocket || g.timeout != tc.wantTimeout || !slices.Equal(g.rest, tc.wantRest) || g.json != tc.wantJSON {
				t.Errorf("parseGlobals(%q) = socket %q, timeout %v, rest %q, json %v; want %q, %v, %q, %v",
					tc.argv, g.socket, g.timeout, g.rest, g.json, tc.wantSocket, tc.wantTimeout, tc.wantRest, tc.wantJSON)
			}
		})
	}
}

// TestSocketPrecedence checks through a whole run that --socket beats
// $QSNAPD_SOCKET, which beats the default.
func TestSocketPrecedence(t *testing.T) {
	f := newFakeDaemon(t, map[string]fakeReply{"GET /v1/domains": {body: `[]`}})
	bad := "/nonexistent/qsnapd.sock"

	t.Setenv(socketEnv, f.socket)
	if code, _, stderr := runCLI(t, "list"); code != 0 {
		t.Errorf("with $%s set to the daemon: exit %d, stderr %q; want 0", socketEnv, code, stderr)
	}
	if code, _, stderr := runCLI(t, "--socket", bad, "list"); code != 1 || !strings.Contains(stderr, bad) {
		t.Errorf("--socket %s beating $%s: exit %d, stderr %q; want 1 and the path", bad, socketEnv, code, stderr)
	}
	t.Setenv(socketEnv, bad)
	if code, _, stderr := runCLI(t, "--socket="+f.socket, "list"); code != 0 {
		t.Errorf("--socket to the daemon beating a bad $%s: exit %d, stderr %q; want 0", socketEnv, code, stderr)
	}
}
