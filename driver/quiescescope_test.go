package driver

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/guestagent/agentfake"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
)

// The snapshot-disks quiesce scope with the fake agent, on the fake and
// on real QEMU: the mapping reads QEMU's answers (query-pci, the
// devices' serials), the agent's filesystems are scripted. The real
// guest proves the mapping against a real qemu-ga (guest_test.go).

// scopeEnv is a VM of 3 disks, vda, vdb and vdc (with serials equal to
// their targets, if serials), and the fake agent.
func scopeEnv(t *testing.T, serials bool, cfg func(*Config)) *env {
	return newEnvWith(t, qemutest.Options{Disks: 3, Serials: serials, SecondMonitor: true}, envOpts{agent: true, cfg: func(c *Config) {
		c.MaxFreeze = testMaxFreeze
		c.AgentTimeout = 300 * time.Millisecond
		c.ThawTimeout = 500 * time.Millisecond
		if cfg != nil {
			cfg(c)
		}
	}})
}

// guestFilesystems has the fake agent report an ext4 at /mnt/<target>
// for each of targets, on a virtio disk at the PCI slot QEMU gives that
// disk's device (q35 with -nodefaults: vda at 1, vdb at 2, vdc at 3)
// plus shift, with the serial serial(target).
func guestFilesystems(e *env, shift int, serial func(string) string, targets ...string) {
	var fss []agentfake.Filesystem
	for _, t := range targets {
		slot := slices.IndexFunc(e.vm.Disks, func(d qemutest.Disk) bool { return d.Target == t }) + 1
		fss = append(fss, agentfake.Filesystem{Name: t, Mountpoint: "/mnt/" + t,
			Disks: []agentfake.Disk{{PCI: [4]int{0, 0, (slot+shift-1)%3 + 1, 0}, Serial: serial(t), Dev: "/dev/" + t}}})
	}
	e.agent.SetFilesystems(fss)
}

func noSerial(string) string { return "" }

// snapshotOf takes a quiesced atomic snapshot of the disk target only,
// with scope (empty: the daemon's).
func (e *env) snapshotOf(name, target string, scope QuiesceScope) (*CreateResult, error) {
	var disks []string
	for _, d := range e.vm.Disks {
		mode := "no"
		if d.Target == target {
			mode = ""
		}
		disks = append(disks, diskXML(d.Target, mode, ""))
	}
	return e.drv.CreateSnapshot(testCtx(e.t), e.name, CreateRequest{XML: snapXML(name, disks...),
		Flags: FlagDiskOnly | FlagAtomic | FlagQuiesce, QuiesceScope: scope})
}

func indication(res *CreateResult, code string) (Indication, bool) {
	for _, ind := range res.Indications {
		if ind.Code == code {
			return ind, true
		}
	}
	return Indication{}, false
}

// checkQuiesceScopeFreezesOnlyTheSnapshotDisks snapshots vdb of three
// disks: only /mnt/vdb is frozen, found by the PCI address, and by the
// serial where the disks have serials (the agent's PCI slots are then
// shifted, so that only the serial tells). The default scope freezes
// everything, as libvirt does.
func checkQuiesceScopeFreezesOnlyTheSnapshotDisks(t *testing.T) {
	for _, tc := range []struct {
		name    string
		serials bool
		shift   int
		serial  func(string) string
	}{
		{"by PCI address", false, 0, noSerial},
		{"by serial", true, 1, func(t string) string { return t }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := scopeEnv(t, tc.serials, nil)
			guestFilesystems(e, tc.shift, tc.serial, "vda", "vdb", "vdc")
			res, err := e.snapshotOf("s1", "vdb", ScopeSnapshotDisks)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := e.agent.FreezeLists(), [][]string{{"/mnt/vdb"}}; !reflect.DeepEqual(got, want) {
				t.Errorf("froze %q, want %q", got, want)
			}
			if calls := e.agent.Calls(); slices.Contains(calls, "guest-fsfreeze-freeze") {
				t.Errorf("froze everything as well: %q", calls)
			}
			ind, ok := indication(res, IndQuiesceScoped)
			if !res.Quiesced || !ok || !strings.HasSuffix(ind.Message, ": /mnt/vdb (vdb)") || e.agent.Frozen() {
				t.Errorf("quiesced %v, indications %+v, still frozen %v", res.Quiesced, res.Indications, e.agent.Frozen())
			}
			if _, ok := indication(res, IndQuiesceScopeFallback); ok {
				t.Errorf("fell back: %+v", res.Indications)
			}
			if d := e.disks(); d[1].File == e.vm.Disks[1].Path || d[0].File != e.vm.Disks[0].Path || d[2].File != e.vm.Disks[2].Path {
				t.Errorf("disks after a snapshot of vdb: %+v", d)
			}

			// The default scope is libvirt's: everything.
			res, err = e.snapshotOf("s2", "vdb", "")
			if err != nil {
				t.Fatal(err)
			}
			calls := e.agent.Calls()
			if !strings.Contains(strings.Join(calls, " "), "guest-fsfreeze-freeze guest-fsfreeze-thaw") || len(e.agent.FreezeLists()) != 1 {
				t.Errorf("default scope: calls %q", calls)
			}
			if _, ok := indication(res, IndQuiesceScoped); ok || !res.Quiesced {
				t.Errorf("default scope: quiesced %v, indications %+v", res.Quiesced, res.Indications)
			}
		})
	}
	// A daemon whose default is snapshot-disks, and a request that
	// asks for all.
	e := scopeEnv(t, false, func(c *Config) { c.QuiesceScope = ScopeSnapshotDisks })
	guestFilesystems(e, 0, noSerial, "vda", "vdb", "vdc")
	if _, err := e.snapshotOf("s1", "vdc", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := e.snapshotOf("s2", "vdc", ScopeAll); err != nil {
		t.Fatal(err)
	}
	if got, want := e.agent.FreezeLists(), [][]string{{"/mnt/vdc"}}; !reflect.DeepEqual(got, want) ||
		strings.Count(strings.Join(e.agent.Calls(), " "), "guest-fsfreeze-freeze ") != 1 {
		t.Errorf("froze %q; calls %q", got, e.agent.Calls())
	}
}

// checkQuiesceScopeFallsBack freezes everything, and says why, when the
// snapshot's disks cannot all be mapped to the guest's filesystems.
func checkQuiesceScopeFallsBack(t *testing.T) {
	for _, tc := range []struct {
		name  string
		guest func(e *env)
		why   string
	}{
		{"the disk has no filesystem", func(e *env) { guestFilesystems(e, 0, noSerial, "vda", "vdc") },
			"disk 'vdb' could not be mapped to a filesystem of the guest: guest-get-fsinfo lists none on it"},
		{"the guest describes no disk", func(e *env) {}, "disk 'vdb' could not be mapped"},
		{"the agent lacks guest-get-fsinfo", func(e *env) {
			guestFilesystems(e, 0, noSerial, "vda", "vdb", "vdc")
			e.agent.Disable("guest-get-fsinfo")
		}, "the guest agent lacks guest-get-fsinfo, or has it disabled"},
		{"the agent lacks guest-fsfreeze-freeze-list", func(e *env) {
			guestFilesystems(e, 0, noSerial, "vda", "vdb", "vdc")
			e.agent.Disable("guest-fsfreeze-freeze-list")
		}, "the guest agent lacks guest-fsfreeze-freeze-list, or has it disabled"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := scopeEnv(t, false, nil)
			tc.guest(e)
			res, err := e.snapshotOf("s1", "vdb", ScopeSnapshotDisks)
			if err != nil {
				t.Fatal(err)
			}
			ind, ok := indication(res, IndQuiesceScopeFallback)
			if !ok || !strings.Contains(ind.Message, tc.why) || !res.Quiesced {
				t.Errorf("quiesced %v, indications %+v; want %s: %s", res.Quiesced, res.Indications, IndQuiesceScopeFallback, tc.why)
			}
			calls := e.agent.Calls()
			if !strings.Contains(strings.Join(calls, " "), "guest-fsfreeze-freeze guest-fsfreeze-thaw") || len(e.agent.FreezeLists()) != 0 {
				t.Errorf("did not freeze everything: %q", calls)
			}
			if e.agent.Frozen() {
				t.Error("guest left frozen")
			}
		})
	}
}

// checkQuiesceScopeRefusesBadValue refuses a scope it does not know
// before anything happens, the agent not asked.
func checkQuiesceScopeRefusesBadValue(t *testing.T) {
	e := scopeEnv(t, false, nil)
	before := e.world()
	for _, scope := range []QuiesceScope{"snapshot", "All"} {
		res, err := e.snapshotOf("s1", "vdb", scope)
		if !errors.Is(err, ErrInvalidArg) || !strings.Contains(err.Error(), "quiesce scope must be all or snapshot-disks") {
			t.Errorf("scope %q: got %+v, %v; want invalid-arg", scope, res, err)
		}
	}
	e.assertUnchanged(before)
	// The held channel's syncs keep the channel, whenever they come;
	// they ask the guest nothing.
	var asked []string
	for _, c := range e.agent.Calls() {
		if !strings.HasPrefix(c, "guest-sync") {
			asked = append(asked, c)
		}
	}
	if len(asked) != 0 {
		t.Errorf("the agent was asked: %q", asked)
	}
	c := Config{StateDir: "/var/lib/q", QuiesceScope: "disks"}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "quiesce_scope") {
		t.Errorf("config with quiesce_scope %q: got %v", c.QuiesceScope, err)
	}
}
