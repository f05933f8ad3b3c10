package e2e

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/guestagent/agentfake"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/internal/testing/qmpproxy"
	"github.com/qsnapd/qsnapd/qmp"
)

// The rig of one fault matrix scenario: its VM, proxy, agent and
// daemon, the faults and how they are set, and what the test sees of
// QEMU and the files.

const (
	matrixDomain = "vm1"
	matrixSnap   = "s1"
	matrixOpID   = "matrix-op"
	// freezeCmd is the command the daemon freezes with (no mountpoints).
	freezeCmd = "guest-fsfreeze-freeze"
	// vssHold is how long the Windows-like guest holds writes; the
	// switch is delayed past it.
	vssHold = 100 * time.Millisecond
	// requestWait bounds the scenario's request: a lost reply to a
	// transaction takes its ceiling, then a rollback.
	requestWait = 4 * time.Minute
	// recordWait bounds the restarted daemon's reconciliation.
	recordWait = 30 * time.Second
	// thawWait is how long after the answer a guest whose agent hung
	// until then may take to be thawed: the daemon retries the thaw.
	thawWait = 20 * time.Second
)

// Guest writes: the pattern a dying QEMU's guest writes into vda's
// overlay, and the one the merge scenarios write into both overlays.
const (
	createPattern = 0x5a
	mergePattern  = 0x6d
	createWrite   = 64 << 10
	mergeOffset   = 1 << 20
	mergeWrite    = 2 << 20
)

// rig is one scenario's world.
type rig struct {
	t     *testing.T
	sc    scenario
	vm    *qemutest.VM
	agent *agentfake.Agent
	proxy *qmpproxy.Proxy
	d     *daemon
	c     *api.Client
	// before is how many of sc.cmd the proxy had seen when the fault
	// was set.
	before int
	// killed is closed once a fault SIGKILLed the daemon.
	killed chan struct{}

	mu sync.Mutex // for what the proxy's goroutines set
	// wrote are the overlays the guest wrote into once they were
	// active, before QEMU died: they hold writes the guest was told
	// were durable.
	wrote map[string]bool
	// trouble are failures of the rig on the proxy's goroutines.
	trouble []string
}

// newRig starts a scenario's QEMU, agent, proxy and daemon, and
// attaches the domain through the proxy.
func newRig(t *testing.T, sc scenario) *rig {
	t.Helper()
	vm := qemutest.Start(t, qemutest.Options{Disks: 2, Style: qemutest.Blockdev, SecondMonitor: true})
	agent, err := agentfake.Start(filepath.Join(vm.Dir, "qga.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := agent.Close(); err != nil {
			t.Logf("agentfake: %v", err)
		}
	})
	proxy, err := qmpproxy.Start(filepath.Join(vm.Dir, "px.sock"), vm.QMP)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := proxy.Close(); err != nil {
			t.Logf("qmpproxy: %v", err)
		}
	})
	flags := []string{"--max-freeze", matrixMaxFreeze.String()}
	if sc.mode == modeSequential {
		flags = append(flags, "--transaction", "never")
	}
	d := startDaemon(t, flags...)
	c := api.NewClient(d.socket)
	t.Cleanup(c.Close)
	r := &rig{t: t, sc: sc, vm: vm, agent: agent, proxy: proxy, d: d, c: c, killed: make(chan struct{}), wrote: map[string]bool{}}

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := c.Attach(ctx, api.AttachRequest{Name: matrixDomain, QMP: proxy.Path(), Agent: agent.Path}); err != nil {
		t.Fatalf("attach: %v", err)
	}
	for {
		dom, err := c.Domain(ctx, matrixDomain)
		if err == nil && dom.Connected {
			return r
		}
		if ctx.Err() != nil {
			t.Fatalf("domain not connected: %+v, %v", dom, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// overlay is the overlay file of s1 for a disk.
func (r *rig) overlay(target string) string {
	return filepath.Join(r.vm.Dir, target+"."+matrixSnap)
}

// base is a disk's original image.
func (r *rig) base(target string) string {
	for _, d := range r.vm.Disks {
		if d.Target == target {
			return d.Path
		}
	}
	return ""
}

// targets are the VM's disks, every one of them in the snapshot.
func (r *rig) targets() []string {
	var out []string
	for _, d := range r.vm.Disks {
		out = append(out, d.Target)
	}
	return out
}

// createRequest asks for s1 on every disk, with explicit overlays.
func (r *rig) createRequest(mode, quiesce string) api.CreateSnapshotRequest {
	var b strings.Builder
	b.WriteString("<domainsnapshot><name>" + matrixSnap + "</name><disks>")
	for _, target := range r.targets() {
		fmt.Fprintf(&b, "<disk name='%s' snapshot='external'><source file='%s'/></disk>", target, r.overlay(target))
	}
	b.WriteString("</disks></domainsnapshot>")
	req := api.CreateSnapshotRequest{XML: b.String(), Flags: api.FlagDiskOnly}
	if mode == modeAtomic {
		req.Flags |= api.FlagAtomic
	}
	switch quiesce {
	case api.QuiesceRequire:
		req.Flags |= api.FlagQuiesce
	case api.QuiescePrefer:
		req.Quiesce = api.QuiescePrefer
	}
	return req
}

// createUnderFault creates s1 with the fault set.
func (r *rig) createUnderFault() answer {
	r.inject()
	ctx, cancel := context.WithTimeout(r.t.Context(), requestWait)
	defer cancel()
	res, err := r.c.CreateSnapshot(ctx, matrixDomain, r.createRequest(r.sc.mode, r.sc.quiesce), matrixOpID)
	if a, ok := r.afterRequest(); ok {
		return a
	}
	return createAnswer(res, err)
}

// deleteUnderFault creates s1, lets the guest write into its overlays,
// then deletes it with the fault set.
func (r *rig) deleteUnderFault() answer {
	ctx, cancel := context.WithTimeout(r.t.Context(), requestWait)
	defer cancel()
	if _, err := r.c.CreateSnapshot(ctx, matrixDomain, r.createRequest(modeAtomic, api.QuiesceSkip), "matrix-setup"); err != nil {
		r.t.Fatalf("snapshot to merge: %v", err)
	}
	for _, target := range r.targets() {
		if err := r.guestWrite(target, mergePattern, mergeOffset, mergeWrite); err != nil {
			r.t.Fatal(err)
		}
	}
	r.inject()
	res, err := r.c.DeleteSnapshot(ctx, matrixDomain, matrixSnap, api.DeleteOptions{OpID: matrixOpID})
	if a, ok := r.afterRequest(); ok {
		return a
	}
	return deleteAnswer(res, err)
}

// inject sets the scenario's fault.
func (r *rig) inject() {
	var action qmpproxy.Action
	switch r.sc.fault {
	case faultQMPError:
		action = qmpproxy.Fail{Class: "GenericError", Desc: "fault matrix: injected error"}
	case faultLostCommand:
		action = qmpproxy.Drop{}
	case faultLostReply:
		action = qmpproxy.DropReply{}
	case faultEOF:
		action = qmpproxy.DropReply{Close: true}
	case faultQEMUKilled:
		action = qmpproxy.DropReply{Then: r.qemuDies}
	case faultKillFrozen:
		// Answered to a dead daemon: the switch never reaches QEMU.
		action = qmpproxy.Fail{Class: "GenericError", Desc: "fault matrix: the daemon died", Before: r.daemonDies}
	case faultKillSent:
		// QEMU runs the switch; the daemon dies before its reply.
		action = qmpproxy.DropReply{Then: r.daemonDies}
	case faultAgentHang:
		r.agent.HangAfterEffect(freezeCmd)
	case faultFreezeError:
		r.agent.FailFreeze("fault matrix: fsfreeze hook failed")
	case faultHoldExpiry:
		r.agent.SetVSS(vssHold)
		action = qmpproxy.Delay{D: 4 * vssHold}
	case faultAgentEOF:
		r.agent.CloseAfterEffect(freezeCmd)
	default:
		r.t.Fatalf("unknown fault %q", r.sc.fault)
	}
	if action != nil {
		r.before = count(r.proxy.Commands(), r.sc.cmd)
		r.proxy.Add(qmpproxy.Rule{Command: r.sc.cmd, Nth: r.sc.nth, Times: 1, Action: action})
	}
}

// fired reports whether the fault met what it was set for.
func (r *rig) fired() bool {
	if r.sc.cmd != "" {
		return count(r.proxy.Commands(), r.sc.cmd)-r.before >= r.sc.nth
	}
	return slices.Contains(r.agent.Calls(), freezeCmd)
}

func count(cmds []string, name string) int {
	n := 0
	for _, c := range cmds {
		if c == name {
			n++
		}
	}
	return n
}

// afterRequest ends the fault once the request has its answer: a hung
// agent recovers; a killed daemon restarts, and then the operation's
// record, once reconciled, stands for the answer the request never got.
func (r *rig) afterRequest() (answer, bool) {
	switch r.sc.fault {
	case faultAgentHang:
		r.agent.Release()
	case faultKillFrozen, faultKillSent:
		return r.recordAfterRestart(), true
	}
	return answer{}, false
}

// recordAfterRestart restarts the killed daemon and reads the
// operation's record once its recovery has ended it.
func (r *rig) recordAfterRestart() answer {
	select {
	case <-r.killed:
	case <-time.After(recordWait):
		return answer{from: "record", err: errors.New("the fault did not kill the daemon")}
	}
	r.d.restart()
	ctx, cancel := context.WithTimeout(r.t.Context(), recordWait)
	defer cancel()
	op, err := r.c.WaitOperation(ctx, matrixOpID, 50*time.Millisecond, nil)
	if err != nil {
		return answer{from: "record", err: fmt.Errorf("the operation's record after the restart: %s: %w", op.State, err)}
	}
	a := recordAnswer(op, r.sc.merge)
	a.from = "record"
	return a
}

// daemonDies SIGKILLs the daemon; it runs on the proxy's goroutine.
func (r *rig) daemonDies() {
	_ = r.d.kill() // "signal: killed"
	close(r.killed)
}

// qemuDies runs on the proxy's goroutine once QEMU has run the faulty
// command: in a create, the guest writes into vda, on its overlay since
// this switch or the one before; then QEMU dies before its reply.
func (r *rig) qemuDies() {
	if !r.sc.merge {
		ov := r.overlay("vda")
		err := r.onOverlay("vda")
		if err == nil {
			err = r.guestWrite("vda", createPattern, 0, createWrite)
		}
		r.mu.Lock()
		if err != nil {
			r.trouble = append(r.trouble, "the guest's write before QEMU died: "+err.Error())
		} else {
			r.wrote[ov] = true
		}
		r.mu.Unlock()
	}
	r.vm.Kill()
	// A dead QEMU's socket refuses connections; so must the proxy in
	// front of it, or QEMU looks away rather than gone.
	r.proxy.Refuse()
}

// onOverlay checks that QEMU has the disk on its overlay.
func (r *rig) onOverlay(target string) error {
	disks, err := qemuDisks(r.vm)
	if err != nil {
		return err
	}
	for _, d := range disks {
		if d.Target == target && d.File != r.overlay(target) {
			return fmt.Errorf("disk %s is on %s, not on its overlay", target, d.File)
		}
	}
	return nil
}

// qemuAlive reports whether QEMU still runs.
func (r *rig) qemuAlive() bool {
	select {
	case <-r.vm.Exited():
		return false
	default:
		return true
	}
}

// qemuDisks asks QEMU, on the second monitor, for its disks.
func qemuDisks(vm *qemutest.VM) ([]qmp.Disk, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, vm.QMP2)
	if err != nil {
		return nil, fmt.Errorf("second monitor: %w", err)
	}
	defer c.Close()
	return c.Disks(ctx)
}

// guestWrite writes a pattern into a disk as its guest would, through
// the device's block backend, and flushes it.
func (r *rig) guestWrite(target string, pattern byte, off, n int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, r.vm.QMP2)
	if err != nil {
		return fmt.Errorf("second monitor: %w", err)
	}
	defer c.Close()
	for _, io := range []string{fmt.Sprintf("write -P 0x%x %d %d", pattern, off, n), "flush"} {
		out, err := c.HumanMonitorCommand(ctx, fmt.Sprintf(`qemu-io -d /machine/peripheral/%s/virtio-backend %q`, target, io))
		if err != nil || strings.Contains(out, "failed") {
			return fmt.Errorf("qemu-io %s on %s: %v %s", io, target, err, out)
		}
	}
	return nil
}

// holdsPattern reports whether an image (through its backing chain)
// reads the pattern, without taking QEMU's locks.
func holdsPattern(image string, pattern byte, off, n int) error {
	out, err := exec.Command("qemu-io", "-U", "-r", "-f", "qcow2", image,
		"-c", fmt.Sprintf("read -P 0x%x %d %d", pattern, off, n)).CombinedOutput()
	if err != nil || strings.Contains(string(out), "Pattern verification failed") {
		return fmt.Errorf("%s does not read 0x%x at %d+%d: %v %s", filepath.Base(image), pattern, off, n, err, out)
	}
	return nil
}
