package driver

import (
	"encoding/json"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/internal/testing/qmpproxy"
	"github.com/qsnapd/qsnapd/qmp"
	"github.com/qsnapd/qsnapd/transaction"
)

// Defects found in review, each with the test that showed it.

// TestUnknownStateReconciledWhileConnected: the reply to the switch is
// lost, and so is the reply to the query-block that would have told what
// happened; the connection stays up. The supervisor must reconcile the
// journal entry within seconds, not wait for a disconnect that may never
// come.
func TestUnknownStateReconciledWhileConnected(t *testing.T) {
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

	_, err := e.create(snapXML("s1"), FlagDiskOnly|FlagAtomic)
	var oe *OpError
	if !errors.Is(err, transaction.ErrStateUnknown) || !errors.As(err, &oe) {
		t.Fatalf("got %v, want an OpError with an unknown disk state", err)
	}
	if info, _ := e.drv.DomainInfo(e.name); !info.Connected {
		t.Fatal("the domain disconnected; this test needs the connection up")
	}
	deadline := time.Now().Add(5 * time.Second)
	for w := e.world(); w.Active != 0 || len(e.overlayNodes()) != 0 || len(w.Files) != len(before.Files); w = e.world() {
		if time.Now().After(deadline) {
			t.Fatalf("not reconciled within 5s: %+v", w)
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.assertUnchanged(before)
	op, err := e.drv.Store().Op(oe.OpID)
	if err != nil || op.Phase() != transaction.PhaseFailed {
		t.Errorf("journal entry: %+v, %v; want it closed as failed", op, err)
	}
	if info, _ := e.drv.DomainInfo(e.name); !info.Connected {
		t.Error("the domain disconnected")
	}
	e.mustCreate(snapXML("s2"), FlagDiskOnly|FlagAtomic)
}
