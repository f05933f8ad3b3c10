package libvirtrpc_test

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	libvirt "github.com/digitalocean/go-libvirt"

	"github.com/qsnapd/qsnapd/internal/peercred"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/libvirtrpc"
)

// peerHelperEnv makes the test binary a client run as another user:
// TestPeerHelper opens the socket the variable names (with the flags
// of peerFlagsEnv) and, if that works, takes a snapshot of vm1, then
// prints both answers after peerResultMark.
const (
	peerHelperEnv  = "QSNAPD_LIBVIRT_PEER_HELPER"
	peerFlagsEnv   = "QSNAPD_LIBVIRT_PEER_FLAGS"
	peerResultMark = "PEER-RESULT "
)

// peerResult is what the helper reports.
type peerResult struct {
	Open, Create *wireError
}

func TestPeerHelper(t *testing.T) {
	socket := os.Getenv(peerHelperEnv)
	if socket == "" {
		t.Skip("a client that checkPeerCheck runs as another user")
	}
	flags, err := strconv.Atoi(os.Getenv(peerFlagsEnv))
	if err != nil {
		t.Fatal(err)
	}
	c := dialRaw(t, socket)
	var res peerResult
	if res.Open = c.open(libvirt.ConnectFlags(flags)); res.Open == nil {
		res.Create = c.call(procDomainSnapshotCreateXML, createArgs(c.lookup("vm1"), "nobody"), nil)
	}
	out, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	os.Stdout.WriteString("\n" + peerResultMark + string(out) + "\n")
}

// checkPeerCheck runs a client as uid 65534 with setpriv: on the
// read-write socket CONNECT_OPEN refuses it unless Config.Access lets
// it in; a read-only open, or the read-only socket, lets it read only.
func checkPeerCheck(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as another uid")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv (util-linux) is missing")
	}
	// The test binary, where uid 65534 can run it: go test's own
	// directory is private.
	bin := filepath.Join(worldDir(t), "libvirtrpc.test")
	copyFile(t, os.Args[0], bin)

	denied := &wireError{Code: 29, Domain: 35, Message: libvirt.OptString{"operation forbidden: read only access prevents virDomainSnapshotCreateXML"}, Level: 2}
	for _, tc := range []struct {
		name       string
		access     peercred.Access
		ro         bool
		flags      int
		wantOpen   *wireError
		wantCreate *wireError
	}{
		{name: "refused on the read-write socket", wantOpen: &wireError{Code: 29, Domain: 0, Level: 2, Message: libvirt.OptString{
			"operation forbidden: the read-write libvirt socket is for root and the users and groups qsnapd allows (uid 65534 is not among them); a read-only connection is open to all"}}},
		{name: "read-only open on the read-write socket", flags: connectRO, wantCreate: denied},
		{name: "read-only socket", ro: true, wantCreate: denied},
		{name: "allowed by uid", access: peercred.Access{UIDs: []int{65534}}},
		{name: "allowed by gid", access: peercred.Access{GIDs: []int{65534}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startEndpoint(t, endpointOpts{cfg: libvirtrpc.Config{Access: tc.access}})
			e.vm("vm1", 1)
			for _, p := range []string{e.rw, e.ro} {
				if err := os.Chmod(p, 0o666); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Chmod(e.dir, 0o755); err != nil {
				t.Fatal(err)
			}
			socket := e.rw
			if tc.ro {
				socket = e.ro
			}
			before := e.state("vm1")
			cmd := exec.Command(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", bin, "-test.run=^TestPeerHelper$", "-test.count=1")
			cmd.Dir = filepath.Dir(bin)
			cmd.Env = append(os.Environ(), peerHelperEnv+"="+socket, peerFlagsEnv+"="+strconv.Itoa(tc.flags))
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("helper: %v\n%s", err, out)
			}
			_, line, ok := bytes.Cut(out, []byte("\n"+peerResultMark))
			if !ok {
				t.Fatalf("helper said nothing:\n%s", out)
			}
			line, _, _ = bytes.Cut(line, []byte("\n"))
			var got peerResult
			if err := json.Unmarshal(line, &got); err != nil {
				t.Fatalf("helper: %v: %s", err, line)
			}
			wantSame(t, "open", got.Open, tc.wantOpen)
			wantSame(t, "create", got.Create, tc.wantCreate)
			// Root still gets in; a refusal changed nothing.
			e.openRaw(t, e.rw, 0).lookup("vm1")
			if tc.wantOpen != nil || tc.wantCreate != nil {
				if after := e.state("vm1"); after != before {
					t.Errorf("state changed:\nbefore %s\nafter  %s", before, after)
				}
			} else if _, err := e.drv.Snapshot("vm1", "nobody"); err != nil {
				t.Errorf("the allowed user's snapshot: %v", err)
			}
		})
	}
}

func wantSame(t *testing.T, what string, got, want *wireError) {
	t.Helper()
	switch {
	case want == nil && got != nil:
		t.Errorf("%s: %v, want success", what, got)
	case want != nil:
		msg := ""
		if len(want.Message) > 0 {
			msg = want.Message[0]
		}
		wantError(t, what, got, want.Code, want.Domain, msg)
	}
}

// worldDir is a temporary directory any user can read.
func worldDir(t *testing.T) string {
	t.Helper()
	dir := qemutest.TempDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
