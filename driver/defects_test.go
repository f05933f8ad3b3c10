package driver

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/qsnapd/qsnapd/errkind"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/internal/testing/qmpproxy"
	"github.com/qsnapd/qsnapd/qmp"
	"github.com/qsnapd/qsnapd/transaction"
)

// Defects found in review, each with the test that showed it.

// checkUnknownStateReconciledWhileConnected: the reply to the switch is
// lost, and so is the reply to the query-block that would have told what
// happened; the connection stays up. The supervisor must reconcile the
// journal entry at once, not wait for a disconnect that may never come,
// and the request answers with what it found: the disks rolled back.
func checkUnknownStateReconciledWhileConnected(t *testing.T) {
	e := newEnv(t, envOpts{disks: 2, style: qemutest.Legacy, proxy: true, cfg: func(c *Config) {
		c.QMPOptions = []qmp.Option{
			qmp.WithCeiling("transaction", 300*time.Millisecond),
			qmp.WithCeiling("query-block", 300*time.Millisecond),
		}
	}})
	before := e.world()
	var switchSent atomic.Bool
	e.proxy.Add(qmpproxy.Rule{Command: "transaction", Times: 1, Action: qmpproxy.DropReply{},
		Match: func(json.RawMessage) bool { switchSent.Store(true); return true }})
	e.proxy.Add(qmpproxy.Rule{Command: "query-block", Times: 1, Action: qmpproxy.DropReply{},
		Match: func(json.RawMessage) bool { return switchSent.Load() }})

	start := time.Now()
	_, err := e.create(snapXML("s1"), FlagDiskOnly|FlagAtomic)
	var oe *OpError
	if !errors.As(err, &oe) || Kind(err) != errkind.OperationFailed || errors.Is(err, transaction.ErrStateUnknown) {
		t.Fatalf("got %v, want the reconciled outcome", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("answered after %v", took)
	}
	for _, o := range oe.Disks {
		if o.Result != transaction.DiskRolledBack {
			t.Errorf("disk %s: %s, want rolled-back (QEMU switched, recovery rolled back)", o.Target, o.Result)
		}
	}
	if !strings.Contains(err.Error(), "vda rolled-back, vdb rolled-back") {
		t.Errorf("the message does not say what was rolled back: %v", err)
	}
	if info, _ := e.drv.DomainInfo(e.name); !info.Connected {
		t.Fatal("the domain disconnected; this test needs the connection up")
	}
	e.assertUnchanged(before)
	op, err := e.drv.Store().Op(oe.OpID)
	if err != nil || op.Phase() != transaction.PhaseFailed {
		t.Errorf("journal entry: %+v, %v; want it closed as failed", op, err)
	}
	e.mustCreate(snapXML("s2"), FlagDiskOnly|FlagAtomic)
}

// checkEnsureDomainTakesChangedPaths: a [[domain]] entry whose paths
// changed since the store recorded it wins over the store, and the
// change is logged with the old and new paths.
func checkEnsureDomainTakesChangedPaths(t *testing.T) {
	e := newEnv(t, envOpts{detached: true})
	ctx := testCtx(t)
	core, logs := observer.New(zap.InfoLevel)
	open := func() *Driver {
		t.Helper()
		drv, err := Open(e.cfg, zap.New(core))
		if err != nil {
			t.Fatal(err)
		}
		return drv
	}
	stale := DomainConfig{Name: e.name, QMP: filepath.Join(e.vm.Dir, "gone.sock")}
	drv := open()
	err := drv.EnsureDomain(ctx, stale)
	if cerr := drv.Close(); err != nil || cerr != nil {
		t.Fatalf("register %+v: %v; close: %v", stale, err, cerr)
	}

	// The next start's config file names QEMU's real socket and an agent.
	want := DomainConfig{Name: e.name, QMP: e.vm.QMP, Agent: filepath.Join(e.vm.Dir, "qga.sock")}
	drv = open()
	t.Cleanup(func() {
		if err := drv.Close(); err != nil {
			t.Errorf("close driver: %v", err)
		}
	})
	if err := drv.EnsureDomain(ctx, want); err != nil {
		t.Fatal(err)
	}
	info, err := drv.DomainInfo(e.name)
	if err != nil || info.QMP != want.QMP || info.Agent != want.Agent {
		t.Fatalf("domain after EnsureDomain: %+v, %v; want qmp %s, agent %s", info, err, want.QMP, want.Agent)
	}
	if stored, err := drv.Store().Domains(); err != nil || len(stored) != 1 || stored[0] != want {
		t.Errorf("stored domains: %+v, %v; want [%+v]", stored, err, want)
	}
	deadline := time.Now().Add(10 * time.Second)
	for info, _ := drv.DomainInfo(e.name); !info.Connected; info, _ = drv.DomainInfo(e.name) {
		if time.Now().After(deadline) {
			t.Fatalf("never connected through the new path: %+v", info)
		}
		time.Sleep(20 * time.Millisecond)
	}
	changed := logs.FilterMessage("domain paths changed").AllUntimed()
	if len(changed) != 1 {
		t.Fatalf("got %d \"domain paths changed\" lines, want 1; all: %+v", len(changed), logs.AllUntimed())
	}
	fields := changed[0].ContextMap()
	for k, v := range map[string]string{"old_qmp": stale.QMP, "new_qmp": want.QMP, "old_agent": "", "new_agent": want.Agent} {
		if fields[k] != v {
			t.Errorf("log field %s = %v, want %q", k, fields[k], v)
		}
	}
	// The same entry again changes nothing and logs nothing.
	if err := drv.EnsureDomain(ctx, want); err != nil {
		t.Fatal(err)
	}
	if n := logs.FilterMessage("domain paths changed").Len(); n != 1 {
		t.Errorf("an unchanged entry logged a change: %d lines", n)
	}
	if _, err := drv.CreateSnapshot(ctx, e.name, CreateRequest{XML: snapXML("s1"), Flags: FlagDiskOnly}); err != nil {
		t.Errorf("snapshot through the new path: %v", err)
	}
}

// checkFSFreezeRefusesHoldAboveMaxFreeze: max-freeze is the ceiling of
// every freeze, an explicit caller's too. A longer hold is refused
// before the agent is asked anything.
func checkFSFreezeRefusesHoldAboveMaxFreeze(t *testing.T) {
	const maxFreeze = 2 * time.Second
	e := newEnv(t, envOpts{agent: true, cfg: func(c *Config) { c.MaxFreeze = maxFreeze }})
	ctx := testCtx(t)
	if _, err := e.drv.FSFreeze(ctx, e.name, nil, maxFreeze+time.Millisecond); !errors.Is(err, ErrInvalidArg) {
		t.Fatalf("hold above max-freeze: got %v, want ErrInvalidArg", err)
	}
	info, _ := e.drv.DomainInfo(e.name)
	recs, _ := e.drv.Store().Freezes()
	if e.agent.Frozen() || info.Freeze.Frozen || len(recs) != 0 || len(asked(e.agent)) != 0 {
		t.Errorf("a refused freeze changed something: agent frozen %v, calls %v, domain %+v, records %+v",
			e.agent.Frozen(), e.agent.Calls(), info.Freeze, recs)
	}
	// max-freeze itself is allowed.
	if _, err := e.drv.FSFreeze(ctx, e.name, nil, maxFreeze); err != nil {
		t.Fatalf("hold of max-freeze: %v", err)
	}
	if _, err := e.drv.FSThaw(ctx, e.name); err != nil {
		t.Fatal(err)
	}
}

// explicitFreezeEnv is quiesceEnv with a max-freeze long enough for
// tests that hold an explicit freeze across other steps: max-freeze caps
// every freeze.
func explicitFreezeEnv(t *testing.T) *env {
	return newEnv(t, envOpts{disks: 2, agent: true, cfg: func(c *Config) {
		c.MaxFreeze = time.Hour
		c.AgentTimeout = 300 * time.Millisecond
		c.ThawTimeout = 500 * time.Millisecond
	}})
}

// checkSnapshotNameWithControlCharacterRefused: a snapshot name becomes
// part of overlay file names (vda.<name>) and of every listing, so a
// control character in it is refused as '/' is, on create and on
// REDEFINE alike.
func checkSnapshotNameWithControlCharacterRefused(t *testing.T) {
	e := newEnv(t, envOpts{})
	before := e.world()
	for _, name := range []string{"a\nb", "a\tb", "a\rb", "a\x7fb", "a\u0085b", "\x1b[31mred"} {
		if _, err := e.create(snapXML(name), FlagDiskOnly); !errors.Is(err, ErrInvalidArg) {
			t.Errorf("create %q: got %v, want ErrInvalidArg", name, err)
		}
		redefine := "<domainsnapshot><name>" + name + "</name><state>disk-snapshot</state><creationTime>1700000000</creationTime></domainsnapshot>"
		if _, err := e.create(redefine, FlagRedefine); !errors.Is(err, ErrInvalidArg) {
			t.Errorf("redefine %q: got %v, want ErrInvalidArg", name, err)
		}
	}
	e.assertUnchanged(before)
	// NUL cannot travel in XML; the check itself refuses it.
	if err := checkSnapshotName("a\x00b"); !errors.Is(err, ErrInvalidArg) {
		t.Errorf("name with NUL: got %v, want ErrInvalidArg", err)
	}
	if err := checkSnapshotName("before-upgrade é"); err != nil {
		t.Errorf("a plain name is refused: %v", err)
	}
}

// checkEmptyOverlaySwappedAfterValidation: an empty file at the overlay
// path is filled in place. If it is swapped after validation, for a
// symbolic link or for another file, the snapshot fails with nothing
// changed: the link's target is not written through, the other file is
// not filled, and the error says why.
func checkEmptyOverlaySwappedAfterValidation(t *testing.T) {
	for _, tc := range []struct {
		name    string
		symlink bool
	}{
		{"symbolic link", true},
		{"another file", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOpts{})
			empty := filepath.Join(e.vm.Dir, "empty.img")
			target := filepath.Join(e.vm.Dir, "precious.img")
			const precious = "precious data, not a qcow2 image"
			for path, data := range map[string]string{empty: "", target: precious} {
				if err := os.WriteFile(path, []byte(data), 0o640); err != nil {
					t.Fatal(err)
				}
			}
			before := e.world()
			e.drv.Hooks.AtStep = func(step string) error {
				if step != HookPrepared {
					return nil
				}
				// Made aside and renamed over it, as an attacker would:
				// the new file cannot reuse the old one's inode.
				swap := empty + ".new"
				var err error
				if tc.symlink {
					err = os.Symlink(target, swap)
				} else {
					err = os.WriteFile(swap, nil, 0o640)
				}
				return errors.Join(err, os.Rename(swap, empty))
			}
			_, err := e.create(snapXML("s1", diskXML("vda", "", empty)), FlagDiskOnly)
			if !errors.Is(err, transaction.ErrOverlayChanged) || !strings.Contains(err.Error(), empty) {
				t.Fatalf("got %v, want ErrOverlayChanged naming %s", err, empty)
			}
			if data, err := os.ReadFile(target); err != nil || string(data) != precious {
				t.Errorf("the symlink's target was written through: %q, %v", data, err)
			}
			fi, err := os.Lstat(empty)
			switch {
			case err != nil:
				t.Errorf("the swapped-in file is gone: %v", err)
			case tc.symlink && fi.Mode()&os.ModeSymlink == 0:
				t.Errorf("the symbolic link was replaced: mode %v", fi.Mode())
			case !tc.symlink && fi.Size() != 0:
				t.Errorf("the other file was filled: %d bytes", fi.Size())
			}
			want := before
			want.Files = maps.Clone(before.Files)
			if tc.symlink { // a link is not a regular file: world leaves it out
				delete(want.Files, "empty.img")
			}
			e.drv.Hooks.AtStep = nil
			e.assertUnchanged(want)
		})
	}
}

// checkSnapshotWaitsForFirstConnectAttempt: a domain from the
// configuration file is registered before its first connection attempt
// ends. A snapshot asked for meanwhile waits for that attempt, within
// its ctx, instead of failing as not connected.
func checkSnapshotWaitsForFirstConnectAttempt(t *testing.T) {
	e := newEnv(t, envOpts{proxy: true, detached: true})
	// Slow capabilities negotiation: the first attempt takes a second.
	e.proxy.Add(qmpproxy.Rule{Command: "qmp_capabilities", Times: 1, Action: qmpproxy.Delay{D: time.Second}})
	e.open()
	ctx := testCtx(t)
	if err := e.drv.EnsureDomain(ctx, DomainConfig{Name: e.name, QMP: e.proxy.Path()}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.drv.CreateSnapshot(ctx, e.name, CreateRequest{XML: snapXML("s1"), Flags: FlagDiskOnly}); err != nil {
		t.Fatalf("snapshot during the first connection attempt: %v", err)
	}

	// A peer that never greets holds the first attempt for the whole
	// handshake timeout; the request's ctx bounds the wait.
	mute, err := net.Listen("unix", filepath.Join(e.vm.Dir, "mute.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = mute.Close() }) // a test listener: nothing to report
	go func() {
		var held []net.Conn // open and silent until the listener closes
		for {
			c, err := mute.Accept()
			if err != nil {
				for _, c := range held {
					_ = c.Close()
				}
				return
			}
			held = append(held, c)
		}
	}()
	if err := e.drv.EnsureDomain(ctx, DomainConfig{Name: "mute", QMP: mute.Addr().String()}); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = e.drv.CreateSnapshot(short, "mute", CreateRequest{XML: snapXML("s1"), Flags: FlagDiskOnly})
	if !errors.Is(err, ErrDisconnected) || time.Since(start) > 2*time.Second {
		t.Errorf("got %v after %v, want ErrDisconnected within the request's 300ms", err, time.Since(start))
	}

	// A first attempt that fails fails the request with its reason.
	if err := e.drv.EnsureDomain(ctx, DomainConfig{Name: "gone", QMP: filepath.Join(e.vm.Dir, "gone.sock")}); err != nil {
		t.Fatal(err)
	}
	_, err = e.drv.CreateSnapshot(ctx, "gone", CreateRequest{XML: snapXML("s1"), Flags: FlagDiskOnly})
	if !errors.Is(err, ErrDisconnected) || !strings.Contains(err.Error(), "gone.sock") {
		t.Errorf("got %v, want ErrDisconnected naming gone.sock", err)
	}
}
