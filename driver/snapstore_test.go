package driver

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/qsnapd/qsnapd/internal/testing/snaptree"
)

// metaModel is what a domain's snapshot metadata must say, kept the
// slow way: the reference the store's indexes are checked against.
type metaModel struct {
	snaps   map[string]snaptree.Snapshot
	marks   map[string]*MergeInterruption
	current string
}

func newMetaModel(snaps []snaptree.Snapshot, current string) *metaModel {
	m := &metaModel{snaps: map[string]snaptree.Snapshot{}, marks: map[string]*MergeInterruption{}, current: current}
	for _, s := range snaps {
		m.snaps[s.Name] = s
	}
	return m
}

// sorted is every snapshot in creation order: time, then name.
func (m *metaModel) sorted() []snaptree.Snapshot {
	return slices.SortedFunc(maps.Values(m.snaps), func(a, b snaptree.Snapshot) int {
		return cmp.Or(cmp.Compare(a.Created, b.Created), strings.Compare(a.Name, b.Name))
	})
}

// list is the listing q asks for, without its limit, as every snapshot
// filtered one by one would give it.
func (m *metaModel) list(q ListQuery) []SnapshotInfo {
	all := m.sorted()
	children := map[string][]string{}
	for _, s := range all {
		if s.Parent != "" {
			children[s.Parent] = append(children[s.Parent], s.Name)
		}
	}
	var out []SnapshotInfo
	started := q.After == ""
	for _, s := range all {
		if !started {
			started = s.Name == q.After
			continue
		}
		if q.Roots && s.Parent != "" || q.Leaves && len(children[s.Name]) > 0 {
			continue
		}
		out = append(out, SnapshotInfo{Name: s.Name, Description: s.Description, CreationTime: s.Created,
			State: "disk-snapshot", Parent: s.Parent, Children: children[s.Name], Current: s.Name == m.current,
			MergeInterrupted: m.marks[s.Name]})
	}
	return out
}

// remove forgets a snapshot as a metadata delete does: its children and
// current move to its parent.
func (m *metaModel) remove(name string) {
	gone := m.snaps[name]
	for n, s := range m.snaps {
		if s.Parent == name {
			s.Parent = gone.Parent
			m.snaps[n] = s
		}
	}
	delete(m.snaps, name)
	delete(m.marks, name)
	if m.current == name {
		m.current = gone.Parent
	}
}

// recordOf is the record a redefine of s stores.
func recordOf(domain string, s snaptree.Snapshot) SnapshotRecord {
	return SnapshotRecord{Name: s.Name, Description: s.Description, CreationTime: s.Created, State: "disk-snapshot",
		Parent: s.Parent, Domain: DomainIdentity{Name: domain, UUID: snaptree.UUID}, XML: s.RedefineXML(),
		Disks: []SnapshotDisk{{Target: "vda", Snapshot: "external", Overlay: "/var/lib/libvirt/images/vda." + s.Name}}}
}

// metaDriver is a driver whose domain "vm" (its QEMU absent: metadata
// needs none) has snaps, redefined through CreateSnapshot.
func metaDriver(t *testing.T, snaps []snaptree.Snapshot, current string) *Driver {
	t.Helper()
	dir := t.TempDir()
	d, err := Open(Config{StateDir: filepath.Join(dir, "state")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	ctx := testCtx(t)
	if err := d.EnsureDomain(ctx, DomainConfig{Name: "vm", QMP: filepath.Join(dir, "absent.sock")}); err != nil {
		t.Fatal(err)
	}
	for _, s := range snaps {
		flags := FlagRedefine
		if s.Name == current {
			flags |= FlagCurrent
		}
		if _, err := d.CreateSnapshot(ctx, "vm", CreateRequest{XML: s.RedefineXML(), Flags: flags}); err != nil {
			t.Fatalf("redefine %s: %v", s.Name, err)
		}
	}
	return d
}

// putAll stores snaps in one transaction, as redefines would one by one.
func putAll(t testing.TB, s *Store, domain string, snaps []snaptree.Snapshot, current string) {
	t.Helper()
	err := s.db.Update(func(tx *bolt.Tx) error {
		sb, err := s.createSnapBuckets(tx, domain)
		if err != nil {
			return err
		}
		for _, sn := range snaps {
			if err := sb.put(recordOf(domain, sn), nil); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketCurrent).Put([]byte(domain), []byte(current))
	})
	if err != nil {
		t.Fatal(err)
	}
}

// pages reads a listing page by page, following Next, and checks what
// makes a page one: at most the limit, Next on each page but the last
// and naming its last snapshot, no empty page but a first one.
func pages(t *testing.T, list func(ListQuery) (SnapshotPage, error), q ListQuery) []SnapshotInfo {
	t.Helper()
	var all []SnapshotInfo
	for n := 0; ; n++ {
		p, err := list(q)
		if err != nil {
			t.Fatalf("%+v: %v", q, err)
		}
		if q.Limit > 0 && len(p.Snapshots) > q.Limit {
			t.Fatalf("%+v: %d snapshots on a page", q, len(p.Snapshots))
		}
		if n > 0 && len(p.Snapshots) == 0 {
			t.Fatalf("%+v: an empty page after Next", q)
		}
		all = append(all, p.Snapshots...)
		if p.Next == "" {
			return all
		}
		if p.Next != p.Snapshots[len(p.Snapshots)-1].Name {
			t.Fatalf("%+v: next %q, the page ends with %q", q, p.Next, p.Snapshots[len(p.Snapshots)-1].Name)
		}
		q.After = p.Next
	}
}

// sameInfos compares listings, saying where they first differ.
func sameInfos(t *testing.T, what string, got, want []SnapshotInfo) {
	t.Helper()
	norm := func(in []SnapshotInfo) []SnapshotInfo {
		out := slices.Clone(in)
		for i := range out {
			if len(out[i].Children) == 0 {
				out[i].Children = nil
			}
		}
		return out
	}
	got, want = norm(got), norm(want)
	for i := range min(len(got), len(want)) {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Fatalf("%s: snapshot %d is\n%+v, want\n%+v", what, i, got[i], want[i])
		}
	}
	if len(got) != len(want) {
		t.Fatalf("%s: %d snapshots, want %d", what, len(got), len(want))
	}
}

// checkListings compares every filter, paged every way, and a start
// after a few snapshots, with the model.
func checkListings(t *testing.T, list func(ListQuery) (SnapshotPage, error), m *metaModel) {
	t.Helper()
	all := m.list(ListQuery{})
	afters := []string{"", all[0].Name, all[len(all)/3].Name, all[len(all)-1].Name}
	for _, s := range all[len(all)/2:] { // one that neither filter keeps
		if s.Parent != "" && len(s.Children) > 0 {
			afters = append(afters, s.Name)
			break
		}
	}
	for _, f := range []ListQuery{{}, {Roots: true}, {Leaves: true}, {Roots: true, Leaves: true}} {
		for _, limit := range []int{0, 1, 7, 100, 100000} {
			for _, after := range afters {
				q := f
				q.Limit, q.After = limit, after
				sameInfos(t, fmt.Sprintf("%+v", q), pages(t, list, q), m.list(q))
			}
		}
	}
}

// checkIndexes recomputes a domain's indexes from its records and
// compares them, key by key and byte by byte, with the store's.
func checkIndexes(t *testing.T, s *Store, domain string) {
	t.Helper()
	err := s.db.View(func(tx *bolt.Tx) error {
		sb := s.snapBuckets(tx, domain)
		if sb == nil {
			return nil
		}
		wantOrder, wantChildren, wantLeaves := map[string]string{}, map[string]string{}, map[string]string{}
		parents := map[string]bool{}
		recs := map[string]SnapshotRecord{}
		err := sb.records.ForEach(func(k, v []byte) error {
			var rec SnapshotRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return err
			}
			if rec.Name != string(k) {
				return fmt.Errorf("record %s is named %s", k, rec.Name)
			}
			recs[rec.Name] = rec
			parents[rec.Parent] = true
			return nil
		})
		if err != nil {
			return err
		}
		for _, rec := range recs {
			ord := ordKey(rec.CreationTime, rec.Name)
			entry, err := listEntry{Name: rec.Name, Description: rec.Description, CreationTime: rec.CreationTime,
				State: rec.State, Parent: rec.Parent, MergeInterrupted: rec.MergeInterrupted}.MarshalBinary()
			if err != nil {
				return err
			}
			wantOrder[string(ord)] = string(entry)
			wantChildren[string(append(childPrefix(rec.Parent), ord...))] = rec.Name
			if !parents[rec.Name] {
				wantLeaves[string(ord)] = rec.Name
			}
		}
		for _, idx := range []struct {
			name string
			b    *bolt.Bucket
			want map[string]string
		}{{"order", sb.order, wantOrder}, {"children", sb.children, wantChildren}, {"leaves", sb.leaves, wantLeaves}} {
			got := map[string]string{}
			if err := idx.b.ForEach(func(k, v []byte) error { got[string(k)] = string(v); return nil }); err != nil {
				return err
			}
			if !maps.Equal(got, idx.want) {
				for k, v := range idx.want {
					if got[k] != v {
						return fmt.Errorf("index %s: key %q is %q, want %q", idx.name, k, got[k], v)
					}
				}
				for k, v := range got {
					if _, ok := idx.want[k]; !ok {
						return fmt.Errorf("index %s: key %q (%q) is not of any record", idx.name, k, v)
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestSnapshotListingsMatchTheModel lists a generated tree through the
// driver, as the API does, with every filter, page size and start, and
// again after each kind of change: metadata deletes (children move),
// a redefine that moves a snapshot in time and in the tree, marks of
// an interrupted merge, a merge round that removes one record and
// rebases another. The indexes match the records after each.
func TestSnapshotListingsMatchTheModel(t *testing.T) {
	snaps, current := snaptree.Generate(260)
	d := metaDriver(t, snaps, current)
	m := newMetaModel(snaps, current)
	list := func(q ListQuery) (SnapshotPage, error) { return d.ListSnapshots("vm", q) }
	check := func(what string) {
		t.Helper()
		checkIndexes(t, d.store, "vm")
		t.Run(what, func(t *testing.T) { checkListings(t, list, m) })
		for _, name := range []string{m.sorted()[0].Name, m.sorted()[len(m.snaps)/2].Name} {
			info, err := d.SnapshotInfo("vm", name)
			if err != nil || !strings.Contains(info.XML, "<name>"+name+"</name>") {
				t.Fatalf("%s: %+v, %v", name, info, err)
			}
			want := m.list(ListQuery{})[slices.IndexFunc(m.sorted(), func(s snaptree.Snapshot) bool { return s.Name == name })]
			want.XML = info.XML
			sameInfos(t, what+": "+name, []SnapshotInfo{info}, []SnapshotInfo{want})
		}
		cur, err := d.CurrentInfo("vm")
		if m.current == "" {
			if !errors.Is(err, ErrNoSnapshot) {
				t.Fatalf("%s: current %+v, %v; want none", what, cur, err)
			}
		} else if err != nil || cur.Name != m.current || !cur.Current {
			t.Fatalf("%s: current %+v, %v; want %s", what, cur, err, m.current)
		}
	}
	check("generated")

	ctx := testCtx(t)
	// A branch point (children move up), the current one, and a root
	// with a child.
	var branchPoint string
	for _, s := range m.list(ListQuery{}) {
		if len(s.Children) > 1 {
			branchPoint = s.Name
			break
		}
	}
	for _, name := range []string{branchPoint, m.current, fmt.Sprintf("r%05d", len(snaps)/2)} {
		if _, err := d.DeleteSnapshot(ctx, "vm", name, DeleteRequest{Flags: DeleteMetadataOnly}); err != nil {
			t.Fatalf("delete %s: %v", name, err)
		}
		m.remove(name)
	}
	check("deleted")

	// Redefined later in time, under another parent, with children.
	moved := m.snaps["s00030"]
	moved.Created, moved.Parent = snaptree.Epoch+100000, "s00005"
	if _, err := d.CreateSnapshot(ctx, "vm", CreateRequest{XML: moved.RedefineXML(), Flags: FlagRedefine}); err != nil {
		t.Fatal(err)
	}
	m.snaps[moved.Name] = moved
	// Not under its own descendant, as libvirt refuses it too.
	cyclic := m.snaps["s00005"]
	cyclic.Parent = "s00030"
	if _, err := d.CreateSnapshot(ctx, "vm", CreateRequest{XML: cyclic.RedefineXML(), Flags: FlagRedefine}); !errors.Is(err, ErrInvalidArg) ||
		!strings.Contains(err.Error(), "its own ancestor") {
		t.Fatalf("redefine s00005 under s00030, its descendant: %v", err)
	}
	check("redefined")

	// A round that marks two snapshots interrupted, then one that merges
	// one away whole and rebases its child.
	at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	ch := mergeChange{interrupted: map[string][]string{"s00040": {"vda"}, "s00041": {"vda", "vdb"}, "gone": {"vda"}},
		opID: "op-mark", at: at}
	if err := d.store.applyMerge("vm", ch, &OpRecord{ID: "op-mark"}); err != nil {
		t.Fatal(err)
	}
	m.marks["s00040"] = &MergeInterruption{OpID: "op-mark", Time: at, Disks: []string{"vda"}}
	m.marks["s00041"] = &MergeInterruption{OpID: "op-mark", Time: at, Disks: []string{"vda", "vdb"}}
	check("marked")
	ch = mergeChange{snapshot: "s00060", record: true, gone: map[string]bool{"vda": true, "vdb": true},
		rebase: map[string]map[string]mergedDisk{"s00061": {"vda": {top: "/var/lib/libvirt/images/vda.s00060", base: "/base", baseFormat: "raw"}}},
		opID:   "op-merge", at: at}
	if err := d.store.applyMerge("vm", ch, &OpRecord{ID: "op-merge"}); err != nil {
		t.Fatal(err)
	}
	m.remove("s00060")
	check("merged")
}

// TestSnapshotReadsDecodeWhatTheyShow counts the records and list
// entries each read decodes, at 200 snapshots and at 5 000: reading one
// snapshot, the current one or a page decodes what it shows and no
// other, as do a redefine and a metadata delete. A read that fell back
// to decoding every record fails here.
func TestSnapshotReadsDecodeWhatTheyShow(t *testing.T) {
	for _, n := range []int{200, 5000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			s, err := OpenStore(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			snaps, current := snaptree.Generate(n)
			putAll(t, s, "vm", snaps, current)
			mid, loner := snaps[n/3].Name, fmt.Sprintf("r%05d", 3*n/4)
			for _, tc := range []struct {
				name string
				read func() (int, error) // how many it shows
				most int64
			}{
				{"one snapshot", func() (int, error) { _, err := s.SnapshotInfo("vm", mid); return 1, err }, 1},
				{"current", func() (int, error) { _, err := s.CurrentInfo("vm"); return 1, err }, 1},
				{"a page", func() (int, error) {
					p, err := s.ListSnapshots("vm", ListQuery{Limit: 50, After: mid})
					return len(p.Snapshots), err
				}, 51}, // and after's record
				{"a page of leaves", func() (int, error) {
					p, err := s.ListSnapshots("vm", ListQuery{Leaves: true, Limit: 5, After: mid})
					return len(p.Snapshots), err
				}, 6},
				{"the roots", func() (int, error) {
					p, err := s.ListSnapshots("vm", ListQuery{Roots: true})
					return len(p.Snapshots), err
				}, 3},
				{"the roots without children", func() (int, error) {
					p, err := s.ListSnapshots("vm", ListQuery{Roots: true, Leaves: true})
					if err == nil && (len(p.Snapshots) != 1 || p.Snapshots[0].Name != loner) {
						err = fmt.Errorf("listed %+v, want %s alone", p.Snapshots, loner)
					}
					return len(p.Snapshots), err
				}, 1},
				{"the whole listing, entries only", func() (int, error) {
					p, err := s.ListSnapshots("vm", ListQuery{})
					return len(p.Snapshots), err
				}, int64(n)},
				{"a redefine", func() (int, error) {
					rec := recordOf("vm", snaptree.Snapshot{Name: "new", Parent: mid, Created: snaptree.Epoch})
					return 0, s.PutSnapshot(rec, true, nil)
				}, 2},
				{"a metadata delete", func() (int, error) { return 0, s.DeleteSnapshotMetadata("vm", snaps[n/3+1].Name) }, 6},
			} {
				before := s.decoded.Load()
				shown, err := tc.read()
				if err != nil {
					t.Fatalf("%s: %v", tc.name, err)
				}
				if got := s.decoded.Load() - before; got > tc.most || got < int64(shown) {
					t.Errorf("%s decoded %d records and entries; want %d to %d", tc.name, got, shown, tc.most)
				}
			}
			checkIndexes(t, s, "vm")
		})
	}
}

// putLayout1 writes records as layout 1 did: each JSON record under its
// name in the domain's bucket, and current by domain.
func putLayout1(t *testing.T, dir string, recs []SnapshotRecord, current map[string]string) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, "qsnapd.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketDomains, bucketSnapshots, bucketCurrent, bucketOps, bucketFreezes} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		for _, rec := range recs {
			b, err := tx.Bucket(bucketSnapshots).CreateBucketIfNotExists([]byte(rec.Domain.Name))
			if err != nil {
				return err
			}
			if err := put(b, rec.Name, rec); err != nil {
				return err
			}
		}
		for domain, name := range current {
			if err := tx.Bucket(bucketCurrent).Put([]byte(domain), []byte(name)); err != nil {
				return err
			}
		}
		return put(tx.Bucket(bucketOps), "op-old", OpRecord{ID: "op-old", Domain: "vm", Kind: KindSnapshot})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestStoreUpgradesLayout1 opens a store written as layout 1 was, for
// two domains: OpenStore upgrades it in its transaction, after which
// every listing, lookup and index is as if the snapshots were redefined
// now, the records are byte for byte what they were, and a second open
// changes nothing. A record it cannot read fails the open and leaves
// the store as it was; a layout from the future is refused.
func TestStoreUpgradesLayout1(t *testing.T) {
	snaps, current := snaptree.Generate(150)
	var recs []SnapshotRecord
	for _, s := range snaps {
		recs = append(recs, recordOf("vm", s))
	}
	other := []snaptree.Snapshot{{Name: "a", Created: 5}, {Name: "b", Parent: "a", Created: 5}, {Name: "c", Parent: "a", Created: 4}}
	for _, s := range other {
		recs = append(recs, recordOf("vm2", s))
	}
	models := map[string]*metaModel{"vm": newMetaModel(snaps, current), "vm2": newMetaModel(other, "b")}

	t.Run("upgrade", func(t *testing.T) {
		dir := t.TempDir()
		putLayout1(t, dir, recs, map[string]string{"vm": current, "vm2": "b"})
		for round := range 2 {
			s, err := OpenStore(dir)
			if err != nil {
				t.Fatalf("open %d: %v", round, err)
			}
			for domain, m := range models {
				checkIndexes(t, s, domain)
				checkListings(t, func(q ListQuery) (SnapshotPage, error) { return s.ListSnapshots(domain, q) }, m)
			}
			for _, want := range recs {
				got, err := s.Snapshot(want.Domain.Name, want.Name)
				if err != nil || !reflect.DeepEqual(got, want) {
					t.Fatalf("record %s/%s: %+v, %v; want %+v", want.Domain.Name, want.Name, got, err, want)
				}
			}
			if op, err := s.Op("op-old"); err != nil || op.Kind != KindSnapshot {
				t.Errorf("the journal after the upgrade: %+v, %v", op, err)
			}
			err = s.db.View(func(tx *bolt.Tx) error {
				if v := string(tx.Bucket(bucketLayout).Get(keySnapshotLayout)); v != "2" {
					return fmt.Errorf("layout %q, want 2", v)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			s.Close()
		}
	})

	t.Run("unreadable record", func(t *testing.T) {
		dir := t.TempDir()
		putLayout1(t, dir, recs, nil)
		db, err := bolt.Open(filepath.Join(dir, "qsnapd.db"), 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		err = db.Update(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketSnapshots).Bucket([]byte("vm2")).Put([]byte("bad"), []byte("{not json"))
		})
		db.Close()
		if err != nil {
			t.Fatal(err)
		}
		before, err := os.ReadFile(filepath.Join(dir, "qsnapd.db"))
		if err != nil {
			t.Fatal(err)
		}
		if s, err := OpenStore(dir); err == nil || !strings.Contains(err.Error(), "domain vm2") || !strings.Contains(err.Error(), "snapshot bad") {
			if s != nil {
				s.Close()
			}
			t.Fatalf("open: %v; want the domain and snapshot it could not read", err)
		}
		after, err := os.ReadFile(filepath.Join(dir, "qsnapd.db"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(before, after) {
			t.Error("a failed upgrade changed the store")
		}
	})

	t.Run("future layout", func(t *testing.T) {
		dir := t.TempDir()
		s, err := OpenStore(dir)
		if err != nil {
			t.Fatal(err)
		}
		err = s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketLayout).Put(keySnapshotLayout, []byte("3")) })
		s.Close()
		if err != nil {
			t.Fatal(err)
		}
		if s, err := OpenStore(dir); err == nil || !strings.Contains(err.Error(), "layout 3") {
			if s != nil {
				s.Close()
			}
			t.Fatalf("open: %v; want layout 3 refused", err)
		}
	})
}

// TestListEntryRoundTrip: a list entry decodes to what was encoded, and
// a cut or an overlong one is an error, not a wrong entry.
func TestListEntryRoundTrip(t *testing.T) {
	at := time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)
	for _, e := range []listEntry{
		{Name: "s1", State: "disk-snapshot", CreationTime: 1_700_000_000},
		{Name: "ünï<&>", Description: strings.Repeat("d", 300), State: "shutoff", Parent: "p", CreationTime: -5,
			MergeInterrupted: &MergeInterruption{OpID: "op", Time: at, Disks: []string{"vda", "vdb"}}},
	} {
		b, err := e.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var got listEntry
		if err := got.UnmarshalBinary(b); err != nil || !reflect.DeepEqual(got, e) {
			t.Errorf("round trip of %+v: %+v, %v", e, got, err)
		}
		for n := range len(b) {
			if err := new(listEntry).UnmarshalBinary(b[:n]); err == nil {
				t.Errorf("%s cut to %d of %d bytes decoded", e.Name, n, len(b))
			}
		}
		if err := new(listEntry).UnmarshalBinary(append(b, 0)); err == nil {
			t.Errorf("%s with a byte more decoded", e.Name)
		}
	}
}
