package driver

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/qmp"
	"github.com/qsnapd/qsnapd/transaction"
)

// graphCommands are the QMP commands that change the block graph.
var graphCommands = []string{"blockdev-add", "blockdev-del", "blockdev-snapshot", "blockdev-snapshot-sync", "transaction", "block-commit"}

// graphCommandsSince lists the graph-changing commands the proxy passed
// after the first from of them.
func (e *env) graphCommandsSince(from int) []string {
	var out []string
	for _, c := range e.proxy.Commands()[from:] {
		if slices.Contains(graphCommands, c) {
			out = append(out, c)
		}
	}
	return out
}

// checkSwitchPathFollowsTheFreeze: a snapshot without a freeze switches
// in one command per switch (blockdev-snapshot-sync opens the overlays
// the daemon wrote), one with a freeze adds the overlay nodes before it,
// so that the freeze holds only blockdev-snapshot. Both leave QEMU with
// the same graph, named alike, and both merge back.
func checkSwitchPathFollowsTheFreeze(t *testing.T) {
	for _, mode := range []transaction.Mode{transaction.ModeAtomic, transaction.ModeSequential} {
		t.Run(string(mode), func(t *testing.T) {
			e := newEnv(t, envOpts{disks: 2, style: qemutest.Blockdev, proxy: true, agent: true, cfg: func(c *Config) {
				if mode == transaction.ModeSequential {
					c.Transaction = "never"
				}
			}})
			flags := FlagDiskOnly
			if mode == transaction.ModeAtomic {
				flags |= FlagAtomic
			}
			for _, step := range []struct {
				snap    string
				quiesce bool
				want    transaction.Switch
				// commands are the graph's, atomic and sequential.
				commands map[transaction.Mode]string
			}{
				{"s1", false, transaction.SwitchSync, map[transaction.Mode]string{
					transaction.ModeAtomic:     "transaction",
					transaction.ModeSequential: "blockdev-snapshot-sync blockdev-snapshot-sync",
				}},
				{"s2", true, transaction.SwitchPreadd, map[transaction.Mode]string{
					transaction.ModeAtomic:     "blockdev-add blockdev-add transaction",
					transaction.ModeSequential: "blockdev-add blockdev-add blockdev-snapshot blockdev-snapshot",
				}},
			} {
				below := e.disks()
				from := len(e.proxy.Commands())
				f := flags
				if step.quiesce {
					f |= FlagQuiesce
				}
				res := e.mustCreate(snapXML(step.snap), f)
				if res.SwitchPath != step.want || res.Quiesced != step.quiesce {
					t.Errorf("%s: switch path %q, quiesced %v; want %q, %v", step.snap, res.SwitchPath, res.Quiesced, step.want, step.quiesce)
				}
				if got := strings.Join(e.graphCommandsSince(from), " "); got != step.commands[mode] {
					t.Errorf("%s: QMP commands %q, want %q", step.snap, got, step.commands[mode])
				}
				e.wantOverlayNodes(step.snap, below)
			}
			if calls := strings.Join(e.agent.Calls(), " "); !strings.Contains(calls, "guest-fsfreeze-freeze guest-fsfreeze-thaw") {
				t.Errorf("nothing but the switch may separate freeze and thaw: %s", calls)
			}
			e.mustDelete("s2", 0)
			e.mustDelete("s1", 0)
			e.wantChains(map[string][]string{"vda": {"vda.qcow2"}, "vdb": {"vdb.qcow2"}})
			e.wantGone("vda.s1", "vdb.s1", "vda.s2", "vdb.s2")
			e.wantNoStrayNodes()
		})
	}
}

// wantOverlayNodes checks each disk's new active node as QEMU describes
// it: the operation's node name on the overlay file, by its path,
// writable, qcow2, on what was active (below), whose path and format
// its header names.
func (e *env) wantOverlayNodes(snap string, below []qmp.Disk) {
	e.t.Helper()
	nodes, err := e.obs.QueryNamedBlockNodes(testCtx(e.t), true)
	if err != nil {
		e.t.Fatal(err)
	}
	for i, d := range e.disks() {
		overlay := filepath.Join(e.vm.Dir, d.Target+"."+snap)
		k := slices.IndexFunc(nodes, func(n qmp.BlockDeviceInfo) bool { return n.NodeName == d.NodeName })
		if k < 0 || !strings.HasPrefix(d.NodeName, "qs") {
			e.t.Errorf("%s: active node %q, not one of the daemon's", d.Target, d.NodeName)
			continue
		}
		n := nodes[k]
		got := fmt.Sprintf("%s %s ro=%v backing=%s header=%s,%s", n.File, n.Drv, n.Ro, n.BackingFile,
			n.Image.BackingFilename, n.Image.BackingFilenameFormat)
		want := fmt.Sprintf("%s qcow2 ro=false backing=%s header=%s,%s", overlay, below[i].File, below[i].File, below[i].Format)
		if got != want {
			e.t.Errorf("%s's node %s:\n got %s\nwant %s", d.Target, d.NodeName, got, want)
		}
		if len(d.Backing) == 0 || d.Backing[0].File != below[i].File {
			e.t.Errorf("%s: %s on %v, want on %s", d.Target, d.File, d.Backing, below[i].File)
		}
	}
}

// TestSwitchFor: the switch path each setting and quiesce takes.
func TestSwitchFor(t *testing.T) {
	for _, tc := range []struct {
		setting string
		quiesce QuiesceMode
		noSync  bool // QEMU lacks blockdev-snapshot-sync
		want    transaction.Switch
	}{
		{SwitchAuto, QuiesceSkip, false, transaction.SwitchSync},
		{SwitchAuto, QuiescePrefer, false, transaction.SwitchPreadd},
		{SwitchAuto, QuiesceRequire, false, transaction.SwitchPreadd},
		{SwitchAuto, QuiesceSkip, true, transaction.SwitchPreadd},
		{"preadd", QuiesceSkip, false, transaction.SwitchPreadd},
		{"sync", QuiesceRequire, false, transaction.SwitchSync},
		{"sync", QuiesceSkip, true, transaction.SwitchPreadd},
	} {
		d := &Driver{cfg: Config{Switch: tc.setting}}
		dom := &Domain{commands: map[string]bool{"blockdev-snapshot-sync": !tc.noSync}}
		if got, why := d.switchFor(dom, tc.quiesce); got != tc.want || why == "" {
			t.Errorf("switch %s, quiesce %s, without sync %v: %q (%s), want %q", tc.setting, tc.quiesce, tc.noSync, got, why, tc.want)
		}
	}
}
