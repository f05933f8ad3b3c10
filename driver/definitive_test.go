package driver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/errkind"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/internal/testing/qmpproxy"
	"github.com/qsnapd/qsnapd/transaction"
)

// Definitive answers after QEMU goes away mid-operation (outcome.go):
// the request answers with what recovery reconciled once QEMU is back,
// outcome-unknown only when it stays away past the reconnect wait, and
// settles the overlays by their data when QEMU died.

// switchFault names the command of a mode's switch, on a switch path,
// to fault, and which of its sends: the transaction, or the second
// disk's blockdev-snapshot or blockdev-snapshot-sync (the first disk
// has switched by then).
type switchFault struct {
	mode, transaction, command string
	path                       transaction.Switch
	nth                        int
}

var switchFaults = []switchFault{
	{mode: "atomic", transaction: "auto", path: transaction.SwitchSync, command: "transaction", nth: 1},
	{mode: "atomic", transaction: "auto", path: transaction.SwitchPreadd, command: "transaction", nth: 1},
	{mode: "sequential", transaction: "never", path: transaction.SwitchSync, command: "blockdev-snapshot-sync", nth: 2},
	{mode: "sequential", transaction: "never", path: transaction.SwitchPreadd, command: "blockdev-snapshot", nth: 2},
}

// name is the fault's mode and switch path, for subtests.
func (sf switchFault) name() string { return sf.mode + "/" + string(sf.path) }

// configure sets the fault's mode and switch path.
func (sf switchFault) configure(c *Config) { c.Transaction, c.Switch = sf.transaction, string(sf.path) }

// resolvedEvents records OperationResolved.
type resolvedEvents struct {
	NopEvents
	mu  sync.Mutex
	got []string // "domain op state"
	ch  chan struct{}
}

func newResolvedEvents() *resolvedEvents { return &resolvedEvents{ch: make(chan struct{}, 16)} }

func (r *resolvedEvents) OperationResolved(domain, opID, state string) {
	r.mu.Lock()
	r.got = append(r.got, domain+" "+opID+" "+state)
	r.mu.Unlock()
	r.ch <- struct{}{}
}

func (r *resolvedEvents) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

// wait waits for the first OperationResolved and returns every one.
func (r *resolvedEvents) wait(t *testing.T) []string {
	t.Helper()
	select {
	case <-r.ch:
	case <-time.After(20 * time.Second):
		t.Fatal("no OperationResolved")
	}
	return r.all()
}

// checkAnswerIsTheTruth checks a create's answer against QEMU (through
// the second monitor), the files and the metadata: every disk is on the
// image the answer names, no overlay file is left but those of disks on
// their overlay, no journal entry is open, metadata exists iff the
// answer is a success. before is the world before the create.
func (e *env) checkAnswerIsTheTruth(res *CreateResult, err error, before world) []transaction.Outcome {
	e.t.Helper()
	var disks []transaction.Outcome
	var oe *OpError
	switch {
	case err == nil:
		disks = res.Disks
	case errors.As(err, &oe):
		disks = oe.Disks
	default:
		e.t.Fatalf("got %v, want a result or an *OpError", err)
	}
	if k := Kind(err); k != errkind.OK && k != errkind.OperationFailed {
		e.t.Fatalf("kind %v (%v), want a definitive answer", k, err)
	}
	w := e.world()
	active := map[string]string{}
	for _, d := range w.Disks {
		active[d.Target] = d.File
	}
	files := maps.Clone(before.Files)
	for _, o := range disks {
		want := o.Source
		if o.Result.OnOverlay() {
			want = o.Overlay
			files[filepath.Base(o.Overlay)] = 0
		}
		if active[o.Target] != want {
			e.t.Errorf("disk %s: the answer says %s, so its image should be %s; QEMU has %s", o.Target, o.Result, want, active[o.Target])
		}
	}
	for f := range w.Files {
		if _, ok := files[f]; !ok {
			e.t.Errorf("file %s left behind", f)
		}
	}
	if got := len(w.Snaps) - len(before.Snaps); (err == nil) != (got == 1) {
		e.t.Errorf("%d snapshots added, answer %v: metadata must exist iff the snapshot succeeded", got, err)
	}
	if w.Active != 0 {
		e.t.Errorf("%d journal entries open after a definitive answer", w.Active)
	}
	e.wantNoStrayNodes()
	return disks
}

// checkLostConnectionGetsDefinitiveAnswer: the monitor connection drops
// mid-switch, after the switch command went out (QEMU may or may not
// have run it) or after QEMU answered it (it ran); the daemon
// reconnects at once. The same request answers with the reconciled
// outcome, well within the reconnect wait.
func checkLostConnectionGetsDefinitiveAnswer(t *testing.T) {
	for _, sf := range switchFaults {
		for _, tc := range []struct {
			name   string
			action qmpproxy.Action
			// want are the disks' results when QEMU's part is certain.
			want []transaction.DiskState
		}{
			{"after send", qmpproxy.CloseAfterSend{}, nil},
			{"after reply", qmpproxy.CloseAfterReply{}, map[string][]transaction.DiskState{
				"atomic":     {transaction.DiskRolledBack, transaction.DiskRolledBack, transaction.DiskRolledBack},
				"sequential": {transaction.DiskRolledBack, transaction.DiskRolledBack, transaction.DiskPlanned},
			}[sf.mode]},
		} {
			t.Run(sf.name()+"/"+tc.name, func(t *testing.T) {
				const wait = 10 * time.Second
				e := newEnv(t, envOpts{disks: 3, style: qemutest.Legacy, proxy: true, cfg: func(c *Config) {
					sf.configure(c)
					c.ReconnectWait = wait
				}})
				before := e.world()
				e.proxy.Add(qmpproxy.Rule{Command: sf.command, Nth: sf.nth, Times: 1, Action: tc.action})
				start := time.Now()
				res, err := e.create(snapXML("s1"), FlagDiskOnly)
				took := time.Since(start)
				t.Logf("answered in %v: %v", took, err)
				if took >= wait {
					t.Errorf("answered after %v, past the reconnect wait", took)
				}
				disks := e.checkAnswerIsTheTruth(res, err, before)
				if err == nil {
					t.Fatalf("succeeded: %+v; recovery rolls an interrupted snapshot back", res.Disks)
				}
				if !strings.Contains(err.Error(), "the connection to QEMU was lost during the switch step") ||
					!strings.Contains(err.Error(), transaction.Describe(disks)) {
					t.Errorf("message: %v", err)
				}
				if tc.want != nil {
					for i, o := range disks {
						if o.Result != tc.want[i] {
							t.Errorf("disk %s: %s, want %s", o.Target, o.Result, tc.want[i])
						}
					}
				}
				op, jerr := e.drv.Store().Op(err.(*OpError).OpID)
				if jerr != nil || op.State() != OpFailed || op.Step != StepSwitch {
					t.Errorf("journal: %+v, %v", op, jerr)
				}
				// The domain works again.
				e.mustCreate(snapXML("s2"), FlagDiskOnly)
			})
		}
	}
}

// checkQEMUAwayPastTheWait: QEMU cannot be reached (the proxy hangs up
// on every connection) from the switch on, longer than the reconnect
// wait: the answer is outcome-unknown with the operation id, and the
// journal entry stays open, flagged. Once QEMU is reachable again,
// recovery completes the entry and OperationResolved reports it. A
// merge past its point of no return does the same, and recovery
// finishes it: succeeded.
func checkQEMUAwayPastTheWait(t *testing.T) {
	const wait = 700 * time.Millisecond
	for _, sf := range switchFaults {
		t.Run(sf.name(), func(t *testing.T) {
			evs := newResolvedEvents()
			e := newEnv(t, envOpts{disks: 3, style: qemutest.Legacy, proxy: true, cfg: func(c *Config) {
				sf.configure(c)
				c.ReconnectWait, c.Events = wait, evs
			}})
			before := e.world()
			e.proxy.Add(qmpproxy.Rule{Command: sf.command, Nth: sf.nth, Times: 1, Action: qmpproxy.Hook(func() { e.proxy.SetDown(true) })})
			start := time.Now()
			_, err := e.create(snapXML("s1"), FlagDiskOnly)
			took := time.Since(start)
			var oe *OpError
			if !errors.As(err, &oe) || Kind(err) != errkind.OutcomeUnknown || !errors.Is(err, ErrOutcomeUnknown) {
				t.Fatalf("got %v (kind %v), want outcome-unknown", err, Kind(err))
			}
			if !strings.Contains(err.Error(), "operation "+oe.OpID+":") || !strings.Contains(err.Error(), "reconciled when QEMU returns") {
				t.Errorf("message: %v", err)
			}
			if took < wait || took > wait+5*time.Second {
				t.Errorf("answered after %v, want the reconnect wait, %v", took, wait)
			}
			if e.connected() {
				t.Error("the domain shows connected")
			}
			op, jerr := e.drv.Store().Op(oe.OpID)
			if jerr != nil || op.State() != OpUnknown {
				t.Fatalf("journal: %+v, %v; want the entry open, state unknown", op, jerr)
			}
			if res, err := op.CreateOutcome(); res != nil || err != nil {
				t.Errorf("outcome of an open entry: %+v, %v", res, err)
			}
			if got := evs.all(); len(got) != 0 {
				t.Errorf("resolved before QEMU returned: %v", got)
			}

			e.proxy.SetDown(false)
			if got := evs.wait(t); !slices.Equal(got, []string{e.name + " " + oe.OpID + " " + OpFailed}) {
				t.Errorf("OperationResolved: %v", got)
			}
			op, jerr = e.drv.Store().Op(oe.OpID)
			if jerr != nil || op.State() != OpFailed || op.OutcomeUnknown {
				t.Fatalf("journal after recovery: %+v, %v", op, jerr)
			}
			res, err := op.CreateOutcome()
			var roe *OpError
			if res != nil || !errors.As(err, &roe) || Kind(err) != errkind.OperationFailed || roe.OpID != oe.OpID {
				t.Fatalf("outcome from the journal: %+v, %v", res, err)
			}
			// The first disk had switched in sequential mode: rolled back.
			want := transaction.DiskPlanned
			if sf.mode == "sequential" {
				want = transaction.DiskRolledBack
			}
			if roe.Disks[0].Result != want || roe.Disks[2].Result != transaction.DiskPlanned {
				t.Errorf("disks from the journal: %+v", roe.Disks)
			}
			e.assertUnchanged(before)
			e.mustCreate(snapXML("s2"), FlagDiskOnly)
		})
	}

	t.Run("merge", func(t *testing.T) {
		evs := newResolvedEvents()
		e := newEnv(t, envOpts{disks: 2, style: qemutest.Legacy, proxy: true, cfg: func(c *Config) {
			c.ReconnectWait, c.Events = wait, evs
		}})
		for _, s := range []string{"s1", "s2", "s3"} {
			e.mustCreate(snapXML(s), FlagDiskOnly|FlagAtomic)
		}
		e.proxy.Add(qmpproxy.Rule{Command: "job-complete", Times: 1, Action: qmpproxy.Hook(func() { e.proxy.SetDown(true) })})
		_, err := e.delete("s3", 0)
		var de *DeleteError
		if !errors.As(err, &de) || Kind(err) != errkind.OutcomeUnknown || !strings.Contains(err.Error(), "operation "+de.OpID+":") {
			t.Fatalf("got %v, want outcome-unknown", err)
		}
		if op, err := e.drv.Store().Op(de.OpID); err != nil || op.State() != OpUnknown {
			t.Fatalf("journal: %+v, %v", op, err)
		}
		e.proxy.SetDown(false)
		if got := evs.wait(t); !slices.Equal(got, []string{e.name + " " + de.OpID + " " + OpSucceeded}) {
			t.Errorf("OperationResolved: %v", got)
		}
		op, err := e.drv.Store().Op(de.OpID)
		if err != nil {
			t.Fatal(err)
		}
		if res, err := op.DeleteOutcome(); err != nil || !slices.Equal(res.Deleted, []string{"s3"}) {
			t.Errorf("outcome from the journal: %+v, %v", res, err)
		}
		e.wantTree("<-s1 s1<-s2 current=s2")
		e.wantChains(map[string][]string{"vda": {"vda.s2", "vda.s1", "vda.qcow2"}, "vdb": {"vdb.s2", "vdb.s1", "vdb.qcow2"}})
		e.wantGone("vda.s3", "vdb.s3")
	})
}

// guestWrite writes pattern p at offset 0 of disk target's active
// image, as the guest would: through QEMU's qemu-io on real QEMU, into
// the file itself on the fake, which has no data. It runs in a
// goroutine, so it reports by its error.
func (e *env) guestWrite(ctx context.Context, target, overlay string, p byte) error {
	cmd := fmt.Sprintf("write -P %#x 0 64k", p)
	if !e.vm.Real() {
		out, err := exec.CommandContext(ctx, "qemu-io", "-f", "qcow2", "-c", cmd, overlay).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "wrote 65536/65536") {
			return fmt.Errorf("qemu-io %s %s: %v: %s", cmd, overlay, err, out)
		}
		return nil
	}
	dev := "/machine/peripheral/" + target + "/virtio-backend"
	mark := len(e.vm.Output())
	if _, err := e.obs.HumanMonitorCommand(ctx, fmt.Sprintf("qemu-io -d %s %q", dev, cmd)); err != nil {
		return err
	}
	for !strings.Contains(e.vm.Output()[mark:], "wrote 65536/65536") {
		if ctx.Err() != nil {
			return fmt.Errorf("write into %s: %s", target, e.vm.Output()[mark:])
		}
		time.Sleep(5 * time.Millisecond)
	}
	_, err := e.obs.HumanMonitorCommand(ctx, "qemu-io -d "+dev+" flush")
	return err
}

// readBack reads pattern p at offset 0 of an image file, as qemu-io
// does with no QEMU running.
func readBack(t *testing.T, file string, p byte) {
	t.Helper()
	out, err := exec.Command("qemu-io", "-U", "-r", "-f", "qcow2", "-c", fmt.Sprintf("read -P %#x 0 64k", p), file).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "read 65536/65536") || strings.Contains(string(out), "fail") {
		t.Errorf("the guest's write is not in %s: %v: %s", file, err, out)
	}
}

// checkQEMUKilledMidSwitch kills QEMU while the daemon waits for the
// switch's reply (QEMU has switched), after the guest wrote into some of
// the overlays: those are kept and reported holds-guest-writes, the
// others removed, the freeze forgotten, the journal closed, the domain
// disconnected. If every overlay holds guest writes, the snapshot is
// recorded.
func checkQEMUKilledMidSwitch(t *testing.T) {
	for _, sf := range switchFaults {
		for _, quiesce := range []bool{false, true} {
			for _, written := range []string{"", "vda", "vda vdb"} {
				if sf.mode == "sequential" && written == "vda vdb" {
					continue // vdb's switch is the one under way: it may be either
				}
				name := fmt.Sprintf("%s/quiesce=%v/written=%q", sf.name(), quiesce, written)
				t.Run(name, func(t *testing.T) {
					checkKilledMidSwitch(t, sf, quiesce, strings.Fields(written))
				})
			}
		}
	}
}

func checkKilledMidSwitch(t *testing.T, sf switchFault, quiesce bool, written []string) {
	disks := 3
	if len(written) == 2 {
		disks = 2
	}
	e := newEnv(t, envOpts{disks: disks, style: qemutest.Legacy, proxy: true, agent: quiesce, cfg: func(c *Config) {
		sf.configure(c)
		c.AgentTimeout, c.ThawTimeout = 300*time.Millisecond, 500*time.Millisecond
	}})
	before := e.world()
	switched := make(chan struct{})
	var once sync.Once
	e.proxy.Add(qmpproxy.Rule{Command: sf.command, Nth: sf.nth, Times: 1, Action: qmpproxy.DropReply{},
		Match: func(json.RawMessage) bool { once.Do(func() { close(switched) }); return true }})
	killed := make(chan error, 1)
	go func() {
		killed <- func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			select {
			case <-switched:
			case <-ctx.Done():
				return errors.New("the switch command never came")
			}
			// Wait until QEMU has switched the disks of the command
			// under way: all of them, or the first nth.
			need := disks
			if sf.mode == "sequential" {
				need = sf.nth
			}
			overlays := map[string]string{}
			for n := 0; n < need; {
				if ctx.Err() != nil {
					return fmt.Errorf("QEMU did not switch %d disks: %v", need, overlays)
				}
				time.Sleep(5 * time.Millisecond)
				ds, err := e.obs.Disks(ctx)
				if err != nil {
					return err
				}
				n = 0
				for i, d := range ds {
					overlays[d.Target] = d.File
					if i < need && d.File != e.vm.Disks[i].Path {
						n++
					}
				}
			}
			for _, tg := range written {
				if err := e.guestWrite(ctx, tg, overlays[tg], 0x5a); err != nil {
					return err
				}
			}
			// The guest goes with QEMU: its agent too. The proxy's
			// socket refuses as a dead QEMU's does.
			if e.agent != nil {
				if err := e.agent.Close(); err != nil {
					return err
				}
			}
			e.proxy.Refuse()
			e.vm.Kill()
			return nil
		}()
	}()
	flags := FlagDiskOnly
	if quiesce {
		flags |= FlagQuiesce
	}
	start := time.Now()
	res, err := e.create(snapXML("s1"), flags)
	if kerr := <-killed; kerr != nil {
		t.Fatalf("kill: %v", kerr)
	}
	t.Logf("answered in %v: %v", time.Since(start), err)

	whole := len(written) == disks
	var outs []transaction.Outcome
	var opID string
	if whole {
		if err != nil {
			t.Fatalf("got %v, want the snapshot recorded: every overlay holds guest writes", err)
		}
		outs, opID = res.Disks, res.OpID
		if !hasIndication(res, IndQEMUGone) {
			t.Errorf("indications %+v, want %s", res.Indications, IndQEMUGone)
		}
		if rec, err := e.drv.Store().Snapshot(e.name, "s1"); err != nil || len(rec.Disks) != disks {
			t.Errorf("metadata: %+v, %v", rec, err)
		}
	} else {
		var oe *OpError
		if !errors.As(err, &oe) || Kind(err) != errkind.OperationFailed {
			t.Fatalf("got %v, want a failed snapshot", err)
		}
		outs, opID = oe.Disks, oe.OpID
		if !strings.Contains(err.Error(), "QEMU exited during the switch step") {
			t.Errorf("message: %v", err)
		}
		if snaps, _ := e.drv.Store().Snapshots(e.name); len(snaps) != 0 {
			t.Errorf("metadata of a failed snapshot: %+v", snaps)
		}
	}
	files := maps.Clone(before.Files)
	for i, o := range outs {
		if slices.Contains(written, o.Target) {
			if o.Result != transaction.DiskHoldsGuestWrites {
				t.Errorf("disk %s: %s, want holds-guest-writes", o.Target, o.Result)
			}
			if !strings.Contains(fmt.Sprint(err), o.Overlay) && err != nil {
				t.Errorf("the message does not name %s: %v", o.Overlay, err)
			}
			files[filepath.Base(o.Overlay)] = 0
			readBack(t, o.Overlay, 0x5a)
			continue
		}
		want := transaction.DiskPlanned
		switch {
		case sf.mode == "sequential" && i == sf.nth-1:
			want = transaction.DiskFailed // its switch was under way
		case sf.mode == "sequential" && i < sf.nth-1:
			// Switched, its overlay removed: its data is all in its
			// original image.
			want = transaction.DiskRolledBack
		}
		if o.Result != want {
			t.Errorf("disk %s: %s, want %s", o.Target, o.Result, want)
		}
	}
	// QEMU is gone, and the second monitor with it: the files and the
	// journal tell.
	entries, derr := os.ReadDir(e.vm.Dir)
	if derr != nil {
		t.Fatal(derr)
	}
	left := map[string]bool{}
	for _, de := range entries {
		if de.Type().IsRegular() {
			left[de.Name()] = true
		}
	}
	for f := range left {
		if _, ok := files[f]; !ok {
			t.Errorf("file %s left behind", f)
		}
	}
	for f := range files {
		if !left[f] {
			t.Errorf("file %s is gone", f)
		}
	}
	if open, _ := e.drv.Store().Ops(true); len(open) != 0 {
		t.Errorf("%d journal entries open", len(open))
	}
	op, jerr := e.drv.Store().Op(opID)
	if jerr != nil || op.Phase().Active() || op.State() != map[bool]string{true: OpSucceeded, false: OpFailed}[whole] {
		t.Errorf("journal: %+v, %v", op, jerr)
	}
	if fr, _ := e.drv.Store().Freezes(); len(fr) != 0 {
		t.Errorf("freeze records left: %+v", fr)
	}
	info, _ := e.drv.DomainInfo(e.name)
	if info.Connected || info.Freeze.Frozen {
		t.Errorf("domain: connected %v, frozen %v; want disconnected, not frozen", info.Connected, info.Freeze.Frozen)
	}
}

// checkQEMURestartedMidSwitch: QEMU is killed while the daemon waits for
// the switch's reply, after the guest wrote into vda's overlay, and is
// started again on the original images before the daemon could tell it
// was gone (the proxy's socket stays open, as a QEMU supervisor that
// restarts at once leaves it). The request waits, reconnects to the new
// QEMU, and recovery answers: vda's overlay, which the new QEMU does not
// have but which holds the guest's writes, is kept and reported
// holds-guest-writes; the empty ones are removed.
func checkQEMURestartedMidSwitch(t *testing.T) {
	e := newEnv(t, envOpts{disks: 3, style: qemutest.Legacy, proxy: true})
	original := map[string]string{}
	files := map[string]int64{}
	for _, d := range e.vm.Disks {
		original[d.Target] = d.Path
	}
	for f, n := range e.world().Files {
		files[f] = n
	}
	switched := make(chan struct{})
	var once sync.Once
	e.proxy.Add(qmpproxy.Rule{Command: "transaction", Times: 1, Action: qmpproxy.DropReply{},
		Match: func(json.RawMessage) bool { once.Do(func() { close(switched) }); return true }})
	type answer struct {
		res *CreateResult
		err error
	}
	answered := make(chan answer, 1)
	go func() {
		res, err := e.create(snapXML("s1"), FlagDiskOnly|FlagAtomic)
		answered <- answer{res, err}
	}()
	<-switched
	waitFor(t, func() bool { return e.disks()[2].File != original["vdc"] }, "the switch")
	overlay := e.disks()[0].File
	e.write(patterns{}, "vda", 0, 0x5a)
	e.vm.Kill()
	// The second monitor must see its QEMU go before it can reconnect.
	waitFor(t, func() bool { return !e.obs.Connected() }, "the second monitor's EOF")
	e.restartQEMU(original)
	a := <-answered
	var oe *OpError
	if !errors.As(a.err, &oe) || Kind(a.err) != errkind.OperationFailed {
		t.Fatalf("got %+v, %v; want the reconciled failure", a.res, a.err)
	}
	t.Logf("answer: %v", a.err)
	want := []transaction.DiskState{transaction.DiskHoldsGuestWrites, transaction.DiskPlanned, transaction.DiskPlanned}
	for i, o := range oe.Disks {
		if o.Result != want[i] {
			t.Errorf("disk %s: %s, want %s", o.Target, o.Result, want[i])
		}
	}
	if !strings.Contains(a.err.Error(), "vda "+overlay) {
		t.Errorf("the answer does not name vda's overlay %s: %v", overlay, a.err)
	}
	readBack(t, overlay, 0x5a)
	files[filepath.Base(overlay)] = 0
	w := e.world()
	for f := range w.Files {
		if _, ok := files[f]; !ok {
			t.Errorf("file %s left behind", f)
		}
	}
	if _, ok := w.Files[filepath.Base(overlay)]; !ok {
		t.Error("vda's overlay, which holds the guest's writes, was deleted")
	}
	if w.Active != 0 || len(w.Snaps) != 0 {
		t.Errorf("journal entries open %d, snapshots %v", w.Active, w.Snaps)
	}
	op, err := e.drv.Store().Op(oe.OpID)
	if err != nil || len(op.Plan.HoldingGuestWrites()) != 1 {
		t.Fatalf("journal: %+v, %v", op, err)
	}
	// Pruning keeps it: an operator needs to see it.
	if err := e.drv.Store().PruneOps(time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.drv.Store().Op(oe.OpID); err != nil {
		t.Errorf("pruned: %v", err)
	}
}
