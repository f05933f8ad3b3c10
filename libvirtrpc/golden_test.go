package libvirtrpc_test

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/internal/testing/virshscript"
)

var updateGolden = flag.Bool("update", false, "rewrite testdata/qsnapd.golden from this run")

// TestVirshMatchesLibvirtd runs virshscript's script with the stock
// virsh against the endpoint and compares each step, normalized, with
// what virsh printed against libvirtd 9.0 for the same step
// (internal/testing/virshscript/testdata/libvirtd-9.0.golden). A step
// may differ only where qsnapd differs from libvirtd on purpose: those
// are listed with the reason, and must still differ (a list that no
// longer holds is stale). The endpoint's own transcript is checked in
// beside it (testdata/qsnapd.golden; -update rewrites it).
func TestVirshMatchesLibvirtd(t *testing.T) {
	virsh := requireTool(t, "virsh")
	want, err := virshscript.Load(filepath.Join("..", "internal", "testing", "virshscript", "testdata", "libvirtd-9.0.golden"))
	if err != nil {
		t.Fatal(err)
	}
	e := startEndpoint(t, endpointOpts{})
	vm := qemutest.Start(t, qemutest.Options{Backend: qemutest.Real, Disks: len(virshscript.Disks), Style: qemutest.Blockdev,
		Extra: []string{"-uuid", virshscript.UUID}})
	if _, err := e.drv.AttachDomain(testCtx(t), driver.DomainConfig{Name: virshscript.Domain, QMP: vm.QMP}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r := virshscript.Runner{Virsh: virsh, URI: e.uri(false), Dir: vm.Dir}
	steps, err := r.Run(ctx, virshscript.Snapshots)
	if err != nil {
		t.Fatal(err)
	}
	got := &virshscript.Transcript{Command: "go test -run TestVirshMatchesLibvirtd ./libvirtrpc/ -update", Server: "qsnapd", Steps: steps}
	if *updateGolden {
		if err := virshscript.Write(filepath.Join("testdata", "qsnapd.golden"), got); err != nil {
			t.Fatal(err)
		}
	}
	if len(got.Steps) != len(want.Steps) {
		t.Fatalf("%d steps run, the golden has %d", len(got.Steps), len(want.Steps))
	}
	for i, g := range got.Steps {
		w := want.Steps[i]
		one := func(r virshscript.Result) *virshscript.Transcript {
			return &virshscript.Transcript{Steps: []virshscript.Result{r}}
		}
		diff := virshscript.Diff(one(w), one(g))
		reason, expected := knownDifferences[g.Name]
		switch {
		case diff != "" && !expected:
			t.Errorf("step %s differs from libvirtd:\n%s", g.Name, diff)
		case diff == "" && expected:
			t.Errorf("step %s is listed as differing (%s) but matches libvirtd now: drop it from the list", g.Name, reason)
		case diff != "":
			t.Logf("step %s differs, as expected (%s):\n%s", g.Name, reason, diff)
		}
	}
	for name := range knownDifferences {
		found := false
		for _, g := range got.Steps {
			found = found || g.Name == name
		}
		if !found {
			t.Errorf("known difference %q names no step", name)
		}
	}
	if _, err := os.Stat(filepath.Join("testdata", "qsnapd.golden")); err != nil {
		t.Errorf("no checked-in transcript of the endpoint: run with -update: %v", err)
	}
}

// knownDifferences are the steps where qsnapd answers otherwise than
// libvirtd, on purpose, with the reason.
var knownDifferences = map[string]string{
	// The snapshot XML is the engine's: written by libvirtxml (double
	// quotes, end tags), with the domain named by its UUID alone; the
	// rest of the VM's definition belongs to whoever started it.
	"dumpxml": "snapshot XML written by libvirtxml, <domain> with the UUID only",
	"current": "snapshot XML written by libvirtxml, <domain> with the UUID only",
	// libvirt refuses to redefine an external snapshot without <domain>
	// (it needs the domain's definition to revert to it); qsnapd reverts
	// nothing and needs only <disks>. The snapshot it keeps (r0) shows
	// in the listings that follow.
	"redefine-without-domain": "qsnapd redefines an external snapshot without <domain>",
	"list-tree-redefined":     "r0, redefined without <domain>, is listed",
	"list-tree-after-merge":   "r0, redefined without <domain>, is listed",
	"info-after-merge":        "r0, redefined without <domain>, is s2's child",
	"list-after-last-delete":  "r0, redefined without <domain>, is listed",
	// The engine's own words for a flag combination libvirt refuses too.
	"quiesce-without-disk-only": "same error number (VIR_ERR_INVALID_ARG), the engine's wording",
	// libvirt checks that the domain runs before it looks for the
	// agent; qsnapd's engine does not (a paused guest's agent may still
	// answer), so a paused domain without one hears that it has none.
	"quiesce-paused":  "a paused domain without an agent: 'not configured', not 'domain is not running'",
	"fsfreeze-paused": "a paused domain without an agent: 'not configured', not 'domain is not running'",
	// qsnapd starts, stops, pauses and resumes no VM: virDomainResume and
	// virDomainSuspend answer VIR_ERR_NO_SUPPORT.
	"resume":  "virDomainResume is not served (VIR_ERR_NO_SUPPORT)",
	"suspend": "virDomainSuspend is not served (VIR_ERR_NO_SUPPORT)",
}
