package driver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/transaction"
)

// Checks of snapshot delete: merges, refusals, faults, crashes.

func (e *env) delete(name string, flags DeleteFlags) (*DeleteResult, error) {
	return e.drv.DeleteSnapshot(testCtx(e.t), e.name, name, DeleteRequest{Flags: flags})
}

func (e *env) mustDelete(name string, flags DeleteFlags) *DeleteResult {
	e.t.Helper()
	res, err := e.delete(name, flags)
	if err != nil {
		e.t.Fatalf("delete %s: %v", name, err)
	}
	return res
}

// chains lists each disk's chain by file name, active image first.
func (e *env) chains() map[string][]string {
	e.t.Helper()
	out := map[string][]string{}
	for _, d := range e.disks() {
		chain := []string{filepath.Base(d.File)}
		for _, img := range d.Backing {
			chain = append(chain, filepath.Base(img.File))
		}
		out[d.Target] = chain
	}
	return out
}

func (e *env) wantChains(want map[string][]string) {
	e.t.Helper()
	if got := e.chains(); !reflect.DeepEqual(got, want) {
		e.t.Errorf("chains:\n got %v\nwant %v", got, want)
	}
}

// tree describes the metadata: each snapshot with its parent, and the
// current one, as "a<-b b<-c current=c".
func (e *env) tree() string {
	e.t.Helper()
	snaps, err := e.drv.Store().Snapshots(e.name)
	if err != nil {
		e.t.Fatal(err)
	}
	var parts []string
	for _, s := range snaps {
		parts = append(parts, s.Parent+"<-"+s.Name)
	}
	cur, _ := e.drv.Store().Current(e.name)
	return strings.Join(append(parts, "current="+cur), " ")
}

func (e *env) wantTree(want string) {
	e.t.Helper()
	if got := e.tree(); got != want {
		e.t.Errorf("metadata:\n got %s\nwant %s", got, want)
	}
}

// wantGone fails for each file of vm.Dir that still exists.
func (e *env) wantGone(files ...string) {
	e.t.Helper()
	for _, f := range files {
		if _, err := os.Stat(filepath.Join(e.vm.Dir, f)); !errors.Is(err, os.ErrNotExist) {
			e.t.Errorf("%s still exists after its merge (%v)", f, err)
		}
	}
}

// wantNoMergeNodes fails if an overlay node of qsnapd is still in QEMU
// that is in no chain.
func (e *env) wantNoStrayNodes() {
	e.t.Helper()
	inChain := map[string]bool{}
	for _, d := range e.disks() {
		inChain[d.NodeName] = true
	}
	nodes, err := e.obs.QueryNamedBlockNodes(testCtx(e.t), true)
	if err != nil {
		e.t.Fatal(err)
	}
	files := map[string]bool{}
	for _, ch := range e.chains() {
		for _, f := range ch {
			files[f] = true
		}
	}
	for _, n := range nodes {
		if strings.HasPrefix(n.NodeName, "qs") && !files[filepath.Base(n.File)] {
			e.t.Errorf("node %s (%s) left in QEMU after its merge", n.NodeName, n.File)
		}
	}
}

func outcomeSummary(disks []MergeOutcome) string {
	var parts []string
	for _, o := range disks {
		s := o.Snapshot + "/" + o.Target + ":" + o.Result
		if o.FileDeleted {
			s += "+deleted"
		}
		if o.Kept != "" {
			s += "+kept"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}

// checkDeleteMergesMiddleCurrentAndRoot deletes, on two disks, the
// middle snapshot (commits below the active layer), the current one
// (active commits) and the root, in several orders.
func checkDeleteMergesMiddleCurrentAndRoot(t *testing.T) {
	for _, tc := range []struct {
		order []string
		// chains after each delete, for vda (vdb is the same with its name)
		chains [][]string
		trees  []string
	}{
		{
			order:  []string{"s2", "s3", "s1"},
			chains: [][]string{{"vda.s3", "vda.s1", "vda.qcow2"}, {"vda.s1", "vda.qcow2"}, {"vda.qcow2"}},
			trees:  []string{"<-s1 s1<-s3 current=s3", "<-s1 current=s1", "current="},
		},
		{
			order:  []string{"s3", "s1", "s2"},
			chains: [][]string{{"vda.s2", "vda.s1", "vda.qcow2"}, {"vda.s2", "vda.qcow2"}, {"vda.qcow2"}},
			trees:  []string{"<-s1 s1<-s2 current=s2", "<-s2 current=s2", "current="},
		},
		{
			order:  []string{"s1", "s2", "s3"},
			chains: [][]string{{"vda.s3", "vda.s2", "vda.qcow2"}, {"vda.s3", "vda.qcow2"}, {"vda.qcow2"}},
			trees:  []string{"<-s2 s2<-s3 current=s3", "<-s3 current=s3", "current="},
		},
	} {
		t.Run(strings.Join(tc.order, "-"), func(t *testing.T) {
			e := newEnv(t, envOpts{disks: 2, style: qemutest.Blockdev})
			for _, s := range []string{"s1", "s2", "s3"} {
				e.mustCreate(snapXML(s), FlagDiskOnly|FlagAtomic)
			}
			e.wantTree("<-s1 s1<-s2 s2<-s3 current=s3")
			for i, name := range tc.order {
				before := e.chains()
				res := e.mustDelete(name, 0)
				if !slices.Equal(res.Deleted, []string{name}) {
					t.Errorf("delete %s: deleted %v", name, res.Deleted)
				}
				if got := outcomeSummary(res.Disks); got != fmt.Sprintf("%s/vda:merged+deleted %s/vdb:merged+deleted", name, name) {
					t.Errorf("delete %s: outcomes %s", name, got)
				}
				want := map[string][]string{"vda": tc.chains[i], "vdb": nil}
				for _, f := range tc.chains[i] {
					want["vdb"] = append(want["vdb"], strings.Replace(f, "vda", "vdb", 1))
				}
				e.wantChains(want)
				e.wantTree(tc.trees[i])
				e.wantGone("vda."+name, "vdb."+name)
				e.wantNoStrayNodes()
				if w := e.world(); w.Active != 0 || w.Jobs != 0 {
					t.Errorf("after deleting %s: %d open operations, %d jobs", name, w.Active, w.Jobs)
				}
				// The records left sit on the images QEMU shows.
				checkRecordsMatchChains(t, e)
				_ = before
			}
		})
	}
}

// checkRecordsMatchChains checks each remaining snapshot's overlay is
// in its disk's chain, right above the image it names as its backing.
func checkRecordsMatchChains(t *testing.T, e *env) {
	t.Helper()
	snaps, err := e.drv.Store().Snapshots(e.name)
	if err != nil {
		t.Fatal(err)
	}
	disks := e.disks()
	for _, s := range snaps {
		for _, sd := range s.Disks {
			if sd.Snapshot != "external" {
				continue
			}
			for _, qd := range disks {
				if qd.Target != sd.Target {
					continue
				}
				chain := transaction.ChainFiles(qd)
				at := slices.Index(chain, sd.Overlay)
				if at < 0 || at+1 >= len(chain) || chain[at+1] != sd.Backing {
					t.Errorf("snapshot %s disk %s: overlay %s on %s, but the chain is %v", s.Name, sd.Target, sd.Overlay, sd.Backing, chain)
				}
			}
		}
	}
}
