package driver

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Snapshot metadata in the store, layout 2. Each domain's bucket under
// "snapshots" holds four buckets:
//
//	records   name → SnapshotRecord (JSON, with its XML)
//	order     ordKey(creation time, name) → listEntry (binary, no XML)
//	children  childPrefix(parent) + ordKey(child) → child's name; the
//	          roots are the children of ""
//	leaves    ordKey → name, of each snapshot without children
//
// so that one snapshot with its children is a few key reads, a page of
// a listing is a seek and a walk of as many keys as it shows, whatever
// the filter, and a whole listing decodes no XML. Every write keeps the
// four in step in its transaction. The current snapshot is in the
// bucket "current", by domain. Layout 1 had the records alone, directly
// in the domain's bucket; OpenStore upgrades it.
var (
	bucketLayout      = []byte("layout") // part → its layout version
	keySnapshotLayout = []byte("snapshots")
	subRecords        = []byte("records")
	subOrder          = []byte("order")
	subChildren       = []byte("children")
	subLeaves         = []byte("leaves")
)

// snapshotLayout is the layout of the snapshot metadata this code reads
// and writes.
const snapshotLayout = 2

// ordKey sorts snapshots as listings show them: by creation time (big
// endian, sign bit flipped, so that byte order is numeric order), then
// by name, byte by byte.
func ordKey(created int64, name string) []byte {
	k := make([]byte, 8, 8+len(name))
	binary.BigEndian.PutUint64(k, uint64(created)^1<<63)
	return append(k, name...)
}

// childPrefix prefixes the keys of parent's children: the name's length
// as a uvarint, then the name, so that no parent's prefix starts
// another's.
func childPrefix(parent string) []byte {
	// Room for a child's order key too.
	p := binary.AppendUvarint(make([]byte, 0, binary.MaxVarintLen64+len(parent)+48), uint64(len(parent)))
	return append(p, parent...)
}

// listEntry is what a listing shows of a snapshot's record: all but its
// disks, domain and XML. A listing decodes one per snapshot, so it is
// binary: a tenth of JSON's cost.
type listEntry struct {
	Name, Description, State, Parent string
	CreationTime                     int64
	MergeInterrupted                 *MergeInterruption
}

// entryFormat is the first byte of an encoded listEntry.
const entryFormat = 1

// MarshalBinary encodes the entry: its format, the strings each after
// its length (uvarint), the creation time (varint), and the mark of an
// interrupted merge as JSON after its length (0: none).
func (e listEntry) MarshalBinary() ([]byte, error) {
	var mark []byte
	if e.MergeInterrupted != nil {
		var err error
		if mark, err = json.Marshal(e.MergeInterrupted); err != nil {
			return nil, err
		}
	}
	b := make([]byte, 0, 1+len(e.Name)+len(e.Description)+len(e.State)+len(e.Parent)+len(mark)+6*binary.MaxVarintLen64)
	b = append(b, entryFormat)
	for _, f := range [][]byte{[]byte(e.Name), []byte(e.Description), []byte(e.State), []byte(e.Parent)} {
		b = append(binary.AppendUvarint(b, uint64(len(f))), f...)
	}
	b = binary.AppendVarint(b, e.CreationTime)
	return append(binary.AppendUvarint(b, uint64(len(mark))), mark...), nil
}

// UnmarshalBinary decodes what MarshalBinary encoded.
func (e *listEntry) UnmarshalBinary(b []byte) error {
	if len(b) == 0 || b[0] != entryFormat {
		return errors.New("list entry: unknown format")
	}
	b = b[1:]
	field := func() ([]byte, bool) {
		n, k := binary.Uvarint(b)
		if k <= 0 || uint64(len(b)-k) < n {
			return nil, false
		}
		f := b[k : k+int(n)]
		b = b[k+int(n):]
		return f, true
	}
	var ok [6]bool
	var f [4][]byte
	for i := range f {
		f[i], ok[i] = field()
	}
	created, k := binary.Varint(b)
	if ok[4] = k > 0; ok[4] {
		b = b[k:]
	}
	mark, ok5 := field()
	ok[5] = ok5 && len(b) == 0
	if ok != [6]bool{true, true, true, true, true, true} {
		return errors.New("list entry: truncated or overlong")
	}
	*e = listEntry{Name: string(f[0]), Description: string(f[1]), State: string(f[2]), Parent: string(f[3]), CreationTime: created}
	if len(mark) > 0 {
		e.MergeInterrupted = new(MergeInterruption)
		return json.Unmarshal(mark, e.MergeInterrupted)
	}
	return nil
}

// SnapshotInfo is a snapshot as a listing or a lookup shows it: the
// record's fields but its disks, its children, oldest first, whether it
// is current, and, from a lookup of one snapshot only, its XML.
type SnapshotInfo struct {
	Name             string
	Description      string
	CreationTime     int64
	State            string
	Parent           string
	MergeInterrupted *MergeInterruption
	Children         []string
	Current          bool
	XML              string
}

// ListQuery selects and pages a listing. A listing is in creation
// order: by creation time, then by name (byte order), the order in
// which libvirt lists snapshots and qsnapd always has.
type ListQuery struct {
	// Roots keeps only the snapshots without a parent; Leaves only those
	// without children. Both keep those without either.
	Roots, Leaves bool
	// After starts the listing after this snapshot, which need not pass
	// the filters. It must exist.
	After string
	// Limit, if positive, bounds the number of snapshots listed.
	Limit int
}

// SnapshotPage is a listing, or a page of it.
type SnapshotPage struct {
	Snapshots []SnapshotInfo
	// Next is the last snapshot's name when Limit cut the listing short:
	// ListQuery.After of the next page. Empty on the last page.
	Next string
}

// snapBuckets are one domain's snapshot buckets in a transaction.
type snapBuckets struct {
	s                                *Store
	domain                           string
	records, order, children, leaves *bolt.Bucket
}

// snapBuckets returns the domain's buckets, or nil if it never had a
// snapshot.
func (s *Store) snapBuckets(tx *bolt.Tx, domain string) *snapBuckets {
	b := tx.Bucket(bucketSnapshots).Bucket([]byte(domain))
	if b == nil {
		return nil
	}
	return &snapBuckets{s: s, domain: domain, records: b.Bucket(subRecords), order: b.Bucket(subOrder),
		children: b.Bucket(subChildren), leaves: b.Bucket(subLeaves)}
}

// createSnapBuckets returns the domain's buckets, creating them.
func (s *Store) createSnapBuckets(tx *bolt.Tx, domain string) (*snapBuckets, error) {
	b, err := tx.Bucket(bucketSnapshots).CreateBucketIfNotExists([]byte(domain))
	if err != nil {
		return nil, err
	}
	sb := &snapBuckets{s: s, domain: domain}
	for _, sub := range []struct {
		name []byte
		b    **bolt.Bucket
	}{{subRecords, &sb.records}, {subOrder, &sb.order}, {subChildren, &sb.children}, {subLeaves, &sb.leaves}} {
		if *sub.b, err = b.CreateBucketIfNotExists(sub.name); err != nil {
			return nil, err
		}
	}
	return sb, nil
}

// get decodes one record.
func (sb *snapBuckets) get(name string) (SnapshotRecord, error) {
	var rec SnapshotRecord
	v := sb.records.Get([]byte(name))
	if v == nil {
		return rec, errNoSnapshot(sb.domain, name)
	}
	sb.s.decoded.Add(1)
	if err := json.Unmarshal(v, &rec); err != nil {
		return rec, fmt.Errorf("snapshot %s: %w", name, err)
	}
	return rec, nil
}

func (sb *snapBuckets) has(name string) bool { return sb.records.Get([]byte(name)) != nil }

// ordOf is the order key of a snapshot, and whether it exists.
func (sb *snapBuckets) ordOf(name string) ([]byte, bool, error) {
	v := sb.records.Get([]byte(name))
	if v == nil {
		return nil, false, nil
	}
	var r struct {
		CreationTime int64 `json:"creation_time"`
	}
	sb.s.decoded.Add(1)
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, false, fmt.Errorf("snapshot %s: %w", name, err)
	}
	return ordKey(r.CreationTime, name), true, nil
}

// hasChildren reports whether any snapshot names parent as its parent.
func (sb *snapBuckets) hasChildren(parent string) bool {
	p := childPrefix(parent)
	k, _ := sb.children.Cursor().Seek(p)
	return k != nil && bytes.HasPrefix(k, p)
}

// childrenOf lists parent's children, oldest first, with c, a cursor on
// the children bucket.
func childrenOf(c *bolt.Cursor, parent string) []string {
	p := childPrefix(parent)
	var out []string
	for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
		out = append(out, string(v))
	}
	return out
}

// put stores rec, replacing old (nil for a new record), and updates the
// indexes.
func (sb *snapBuckets) put(rec SnapshotRecord, old *SnapshotRecord) error {
	if old != nil {
		if err := sb.unindex(*old); err != nil {
			return err
		}
	}
	buf, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := sb.records.Put([]byte(rec.Name), buf); err != nil {
		return err
	}
	return sb.index(rec)
}

// index adds a stored record to the indexes.
func (sb *snapBuckets) index(rec SnapshotRecord) error {
	ord := ordKey(rec.CreationTime, rec.Name)
	entry, err := listEntry{Name: rec.Name, Description: rec.Description, CreationTime: rec.CreationTime,
		State: rec.State, Parent: rec.Parent, MergeInterrupted: rec.MergeInterrupted}.MarshalBinary()
	if err != nil {
		return err
	}
	if err := sb.order.Put(ord, entry); err != nil {
		return err
	}
	if err := sb.children.Put(append(childPrefix(rec.Parent), ord...), []byte(rec.Name)); err != nil {
		return err
	}
	if rec.Parent != "" {
		pord, ok, err := sb.ordOf(rec.Parent)
		if err != nil {
			return err
		}
		if ok {
			if err := sb.leaves.Delete(pord); err != nil {
				return err
			}
		}
	}
	if sb.hasChildren(rec.Name) {
		return nil
	}
	return sb.leaves.Put(ord, []byte(rec.Name))
}

// unindex removes a record, as it was stored, from the indexes.
func (sb *snapBuckets) unindex(rec SnapshotRecord) error {
	ord := ordKey(rec.CreationTime, rec.Name)
	for _, del := range []struct {
		b   *bolt.Bucket
		key []byte
	}{{sb.order, ord}, {sb.leaves, ord}, {sb.children, append(childPrefix(rec.Parent), ord...)}} {
		if err := del.b.Delete(del.key); err != nil {
			return err
		}
	}
	if rec.Parent == "" || sb.hasChildren(rec.Parent) {
		return nil
	}
	pord, ok, err := sb.ordOf(rec.Parent)
	if err != nil || !ok {
		return err
	}
	return sb.leaves.Put(pord, []byte(rec.Parent))
}

// info is a record as a lookup shows it, with its children, whether it
// is current, and its XML.
func (sb *snapBuckets) info(tx *bolt.Tx, rec SnapshotRecord) SnapshotInfo {
	cur := string(tx.Bucket(bucketCurrent).Get([]byte(sb.domain)))
	return SnapshotInfo{Name: rec.Name, Description: rec.Description, CreationTime: rec.CreationTime, State: rec.State,
		Parent: rec.Parent, MergeInterrupted: rec.MergeInterrupted, Children: childrenOf(sb.children.Cursor(), rec.Name),
		Current: rec.Name == cur, XML: rec.XML}
}

// upgradeSnapshots brings the snapshot metadata to snapshotLayout in
// tx, OpenStore's: the upgrade is whole or not at all.
func upgradeSnapshots(tx *bolt.Tx) error {
	lb, err := tx.CreateBucketIfNotExists(bucketLayout)
	if err != nil {
		return err
	}
	version := 1
	if v := lb.Get(keySnapshotLayout); v != nil {
		if version, err = strconv.Atoi(string(v)); err != nil {
			return fmt.Errorf("snapshot metadata layout %q is not a number", v)
		}
	}
	switch {
	case version == snapshotLayout:
		return nil
	case version > snapshotLayout || version < 1:
		return fmt.Errorf("snapshot metadata has layout %d, which this qsnapd does not know (it knows 1 to %d)", version, snapshotLayout)
	}
	// Layout 1: each domain's bucket maps names to records.
	root := tx.Bucket(bucketSnapshots)
	var domains []string
	err = root.ForEach(func(k, v []byte) error {
		if v == nil {
			domains = append(domains, string(k))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, domain := range domains {
		if err := upgradeDomain(tx, domain); err != nil {
			return fmt.Errorf("upgrade the snapshot metadata of domain %s to layout %d: %w", domain, snapshotLayout, err)
		}
	}
	return lb.Put(keySnapshotLayout, []byte(strconv.Itoa(snapshotLayout)))
}

// upgradeDomain moves a domain's records from layout 1, directly in its
// bucket, into layout 2's buckets, and indexes them.
func upgradeDomain(tx *bolt.Tx, domain string) error {
	root := tx.Bucket(bucketSnapshots)
	var recs []SnapshotRecord
	err := root.Bucket([]byte(domain)).ForEach(func(k, v []byte) error {
		if v == nil {
			return fmt.Errorf("bucket %q where layout 1 has records only", k)
		}
		var rec SnapshotRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("snapshot %s: %w", k, err)
		}
		rec.Name = string(k)
		recs = append(recs, rec)
		return nil
	})
	if err != nil {
		return err
	}
	if err := root.DeleteBucket([]byte(domain)); err != nil {
		return err
	}
	// A store of its own: the decodes of an upgrade count for no read.
	sb, err := (&Store{}).createSnapBuckets(tx, domain)
	if err != nil {
		return err
	}
	for _, rec := range recs {
		if err := sb.put(rec, nil); err != nil {
			return fmt.Errorf("snapshot %s: %w", rec.Name, err)
		}
	}
	return nil
}

func errNoSnapshot(domain, name string) error {
	return fmt.Errorf("%w: domain %s has no snapshot named '%s'", ErrNoSnapshot, domain, name)
}

// Snapshot returns one snapshot record.
func (s *Store) Snapshot(domain, name string) (SnapshotRecord, error) {
	var rec SnapshotRecord
	err := s.db.View(func(tx *bolt.Tx) (err error) {
		sb := s.snapBuckets(tx, domain)
		if sb == nil {
			return errNoSnapshot(domain, name)
		}
		rec, err = sb.get(name)
		return err
	})
	return rec, err
}

// Snapshots returns a domain's snapshot records, in creation order. It
// decodes every record, XML included: ListSnapshots lists.
func (s *Store) Snapshots(domain string) ([]SnapshotRecord, error) {
	var out []SnapshotRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		sb := s.snapBuckets(tx, domain)
		if sb == nil {
			return nil
		}
		c := sb.order.Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			rec, err := sb.get(string(k[8:]))
			if err != nil {
				return err
			}
			out = append(out, rec)
		}
		return nil
	})
	return out, err
}

// SnapshotInfo returns one snapshot with its children and XML.
func (s *Store) SnapshotInfo(domain, name string) (SnapshotInfo, error) {
	var info SnapshotInfo
	err := s.db.View(func(tx *bolt.Tx) error {
		sb := s.snapBuckets(tx, domain)
		if sb == nil {
			return errNoSnapshot(domain, name)
		}
		rec, err := sb.get(name)
		if err != nil {
			return err
		}
		info = sb.info(tx, rec)
		return nil
	})
	return info, err
}

// CurrentInfo returns the domain's current snapshot with its children
// and XML; ErrNoSnapshot if it has none.
func (s *Store) CurrentInfo(domain string) (SnapshotInfo, error) {
	var info SnapshotInfo
	err := s.db.View(func(tx *bolt.Tx) error {
		name := string(tx.Bucket(bucketCurrent).Get([]byte(domain)))
		sb := s.snapBuckets(tx, domain)
		if name == "" || sb == nil {
			return fmt.Errorf("%w: domain '%s' has no current snapshot", ErrNoSnapshot, domain)
		}
		rec, err := sb.get(name)
		if err != nil {
			return err
		}
		info = sb.info(tx, rec)
		return nil
	})
	return info, err
}

// ListSnapshots lists a domain's snapshots, or a page of them, in
// creation order, without their XML. It reads the index the filters
// choose from q.After on, and decodes the entries it lists and no
// other.
func (s *Store) ListSnapshots(domain string, q ListQuery) (SnapshotPage, error) {
	var page SnapshotPage
	err := s.db.View(func(tx *bolt.Tx) error {
		sb := s.snapBuckets(tx, domain)
		var from []byte
		if q.After != "" {
			var ok bool
			var err error
			if sb != nil {
				from, ok, err = sb.ordOf(q.After)
			}
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("%w: after: domain %s has no snapshot named '%s'", ErrNoSnapshot, domain, q.After)
			}
		}
		if sb == nil {
			return nil
		}
		cur := string(tx.Bucket(bucketCurrent).Get([]byte(domain)))
		// The filters pick the index: each is in creation order.
		src, prefix := sb.order.Cursor(), []byte(nil)
		switch {
		case q.Roots:
			src, prefix = sb.children.Cursor(), childPrefix("")
		case q.Leaves:
			src = sb.leaves.Cursor()
		}
		// A whole listing has every snapshot's parent: it finds their
		// children with no read of the index. Others read theirs.
		whole := !q.Roots && !q.Leaves && from == nil && q.Limit <= 0
		kids := sb.children.Cursor()
		var listed map[string]int
		if whole {
			listed = map[string]int{}
		}
		seek := append(slices.Clip(prefix), from...)
		k, v := src.First()
		if len(seek) > 0 {
			k, v = src.Seek(seek)
		}
		if from != nil && bytes.Equal(k, seek) {
			k, v = src.Next()
		}
		for ; k != nil && bytes.HasPrefix(k, prefix); k, v = src.Next() {
			ord := k[len(prefix):]
			if q.Roots && q.Leaves && sb.leaves.Get(ord) == nil {
				continue
			}
			if q.Limit > 0 && len(page.Snapshots) == q.Limit {
				page.Next = page.Snapshots[len(page.Snapshots)-1].Name
				break
			}
			if q.Roots || q.Leaves {
				if v = sb.order.Get(ord); v == nil {
					return fmt.Errorf("snapshot %s: listed in an index but not in the order", ord[8:])
				}
			}
			var e listEntry
			s.decoded.Add(1)
			if err := e.UnmarshalBinary(v); err != nil {
				return fmt.Errorf("snapshot %s: %w", ord[8:], err)
			}
			info := SnapshotInfo{Name: e.Name, Description: e.Description, CreationTime: e.CreationTime, State: e.State,
				Parent: e.Parent, MergeInterrupted: e.MergeInterrupted, Current: e.Name == cur}
			if !whole {
				info.Children = childrenOf(kids, e.Name)
			}
			page.Snapshots = append(page.Snapshots, info)
			if whole {
				listed[e.Name] = len(page.Snapshots) - 1
			}
		}
		if whole {
			// In creation order, as the index has them.
			for _, sn := range page.Snapshots {
				if i, ok := listed[sn.Parent]; ok {
					page.Snapshots[i].Children = append(page.Snapshots[i].Children, sn.Name)
				}
			}
		}
		return nil
	})
	return page, err
}

// Current returns the name of the domain's current snapshot, "" if none.
func (s *Store) Current(domain string) (string, error) {
	var name string
	err := s.db.View(func(tx *bolt.Tx) error {
		name = string(tx.Bucket(bucketCurrent).Get([]byte(domain)))
		return nil
	})
	return name, err
}

// SetCurrent makes an existing snapshot the current one.
func (s *Store) SetCurrent(domain, name string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if sb := s.snapBuckets(tx, domain); sb == nil || !sb.has(name) {
			return errNoSnapshot(domain, name)
		}
		return tx.Bucket(bucketCurrent).Put([]byte(domain), []byte(name))
	})
}

// PutSnapshot stores a snapshot record (making it current if asked) and,
// in the same transaction, the finished operation, if any. A record that
// replaces one (a redefine) keeps its mark of an interrupted merge: the
// images are what they are, whatever the metadata says.
func (s *Store) PutSnapshot(rec SnapshotRecord, current bool, op *OpRecord) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		sb, err := s.createSnapBuckets(tx, rec.Domain.Name)
		if err != nil {
			return err
		}
		if rec.Parent != "" && !sb.has(rec.Parent) {
			return fmt.Errorf("%w: parent snapshot '%s' of '%s' does not exist", ErrInvalidArg, rec.Parent, rec.Name)
		}
		var old *SnapshotRecord
		if sb.has(rec.Name) {
			prev, err := sb.get(rec.Name)
			if err != nil {
				return err
			}
			if rec.MergeInterrupted == nil {
				rec.MergeInterrupted = prev.MergeInterrupted
			}
			old = &prev
			if err := sb.checkNoCycle(rec); err != nil {
				return err
			}
		}
		if err := sb.put(rec, old); err != nil {
			return err
		}
		if current {
			if err := tx.Bucket(bucketCurrent).Put([]byte(rec.Domain.Name), []byte(rec.Name)); err != nil {
				return err
			}
		}
		if op != nil {
			return putOp(tx, op)
		}
		return nil
	})
}

// checkNoCycle refuses to redefine a snapshot under one of its own
// descendants, as libvirt does. Only a snapshot with children that
// changes its parent needs the walk up from its new parent.
func (sb *snapBuckets) checkNoCycle(rec SnapshotRecord) error {
	if rec.Parent == "" || !sb.hasChildren(rec.Name) {
		return nil
	}
	seen := map[string]bool{}
	for p := rec.Parent; p != "" && !seen[p]; {
		if p == rec.Name {
			return fmt.Errorf("%w: parent snapshot '%s' of '%s' descends from it: it would be its own ancestor", ErrInvalidArg, rec.Parent, rec.Name)
		}
		seen[p] = true
		r, err := sb.get(p)
		if errors.Is(err, ErrNoSnapshot) {
			return nil
		}
		if err != nil {
			return err
		}
		p = r.Parent
	}
	return nil
}

// DeleteSnapshotMetadata removes a snapshot record. As in libvirt, its
// children move to its parent, and so does current.
func (s *Store) DeleteSnapshotMetadata(domain, name string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		sb := s.snapBuckets(tx, domain)
		if sb == nil {
			return errNoSnapshot(domain, name)
		}
		gone, err := sb.get(name)
		if err != nil {
			return err
		}
		return removeRecord(tx, sb, gone)
	})
}

// removeRecord deletes gone's record: its children move to its parent,
// and so does current.
func removeRecord(tx *bolt.Tx, sb *snapBuckets, gone SnapshotRecord) error {
	for _, name := range childrenOf(sb.children.Cursor(), gone.Name) {
		child, err := sb.get(name)
		if err != nil {
			return err
		}
		old := child
		child.Parent = gone.Parent
		if child.XML, err = reparentXML(child.XML, gone.Parent); err != nil {
			return fmt.Errorf("reparent %s: %w", child.Name, err)
		}
		if err := sb.put(child, &old); err != nil {
			return err
		}
	}
	if err := sb.unindex(gone); err != nil {
		return err
	}
	if err := sb.records.Delete([]byte(gone.Name)); err != nil {
		return err
	}
	cur := tx.Bucket(bucketCurrent)
	if string(cur.Get([]byte(sb.domain))) == gone.Name {
		if gone.Parent == "" {
			return cur.Delete([]byte(sb.domain))
		}
		return cur.Put([]byte(sb.domain), []byte(gone.Parent))
	}
	return nil
}

// mergeChange is what one merge round did to a snapshot's disks, for
// the metadata.
type mergeChange struct {
	snapshot string
	// record says the round's record changes: disks left their chains,
	// or a round without external disks completed.
	record bool
	// gone are the disks whose overlay left its chain (merged) or was
	// deleted outside every chain (unlinked).
	gone map[string]bool
	// rebase lists, by record and disk, the records whose overlay sat
	// on a merged overlay: QEMU rewrote their backing to the image that
	// took its data.
	rebase map[string]map[string]mergedDisk
	// interrupted lists, by record, the disks whose base a job of the
	// round wrote into without merging, to be marked as of opID and at.
	interrupted map[string][]string
	opID        string
	at          time.Time
}

type mergedDisk struct{ top, base, baseFormat string }

// applyMerge records one merge round and the journal entry in one
// transaction. A snapshot whose every external disk is gone loses its
// record (children and current move to its parent, as on a metadata
// delete); one merged only in part keeps it, with those disks marked
// snapshot='no', so that it says exactly what is left, and its mark of
// an interrupted merge only for the disks left. The snapshots whose
// base a job wrote into without merging are marked.
func (s *Store) applyMerge(domain string, ch mergeChange, op *OpRecord) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		sb := s.snapBuckets(tx, domain)
		if ch.record {
			if sb == nil {
				return errNoSnapshot(domain, ch.snapshot)
			}
			if err := mergeRecords(tx, sb, ch); err != nil {
				return err
			}
		}
		if sb != nil {
			if err := markInterrupted(sb, ch); err != nil {
				return err
			}
		}
		return putOp(tx, op)
	})
}

// mergeRecords is applyMerge's change of the records a round merged
// and of those QEMU rebased.
func mergeRecords(tx *bolt.Tx, sb *snapBuckets, ch mergeChange) error {
	rec, err := sb.get(ch.snapshot)
	if err != nil {
		return err
	}
	for _, name := range slices.Sorted(maps.Keys(ch.rebase)) {
		if name == ch.snapshot || !sb.has(name) {
			continue
		}
		r, err := sb.get(name)
		if err != nil {
			return err
		}
		old, changed := r, false
		r.Disks = slices.Clone(r.Disks)
		for i := range r.Disks {
			sd := &r.Disks[i]
			if m, ok := ch.rebase[name][sd.Target]; ok && sd.Backing == m.top {
				sd.Backing, sd.BackingFormat, changed = m.base, m.baseFormat, true
			}
		}
		if changed {
			if err := sb.put(r, &old); err != nil {
				return err
			}
		}
	}
	old := rec
	rec.Disks = slices.Clone(rec.Disks)
	whole := true
	for i := range rec.Disks {
		sd := &rec.Disks[i]
		if sd.Snapshot != "external" {
			continue
		}
		if !ch.gone[sd.Target] {
			whole = false
			continue
		}
		*sd = SnapshotDisk{Target: sd.Target, Snapshot: "no"}
	}
	if whole {
		return removeRecord(tx, sb, old)
	}
	if rec.XML, err = dropDisksXML(rec.XML, ch.gone); err != nil {
		return fmt.Errorf("update snapshot %s: %w", rec.Name, err)
	}
	if m := rec.MergeInterrupted; m != nil {
		disks := slices.DeleteFunc(slices.Clone(m.Disks), func(t string) bool { return ch.gone[t] })
		rec.MergeInterrupted = nil
		if len(disks) > 0 {
			rec.MergeInterrupted = &MergeInterruption{OpID: m.OpID, Time: m.Time, Disks: disks}
		}
	}
	return sb.put(rec, &old)
}

// markInterrupted marks the records ch.interrupted names, adding the
// disks to a mark they may have already. A record that is gone has
// nothing left to mark: the journal's end is not held up for it.
func markInterrupted(sb *snapBuckets, ch mergeChange) error {
	for _, name := range slices.Sorted(maps.Keys(ch.interrupted)) {
		rec, err := sb.get(name)
		if errors.Is(err, ErrNoSnapshot) {
			continue
		}
		if err != nil {
			return err
		}
		old := rec
		m := &MergeInterruption{OpID: ch.opID, Time: ch.at}
		if rec.MergeInterrupted != nil {
			m.Disks = rec.MergeInterrupted.Disks
		}
		m.Disks = slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(m.Disks), ch.interrupted[name]...))))
		rec.MergeInterrupted = m
		if err := sb.put(rec, &old); err != nil {
			return err
		}
	}
	return nil
}
