package driver

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/qsnapd/qsnapd/transaction"
)

// Store keeps domains, snapshot metadata and the operation journal in
// one bbolt file, so that a snapshot's record and the end of its
// operation commit together.
type Store struct {
	db *bolt.DB
}

var (
	bucketDomains   = []byte("domains")
	bucketSnapshots = []byte("snapshots") // one nested bucket per domain
	bucketCurrent   = []byte("current")
	bucketOps       = []byte("ops")
	bucketFreezes   = []byte("freezes") // domain → FreezeRecord, written before a freeze is sent
)

// DomainConfig is a registered domain.
type DomainConfig struct {
	Name  string `json:"name"`
	QMP   string `json:"qmp"`
	Agent string `json:"agent,omitempty"`
}

// SnapshotRecord is a snapshot's metadata.
type SnapshotRecord struct {
	Name         string         `json:"name"`
	Description  string         `json:"description,omitempty"`
	CreationTime int64          `json:"creation_time"`
	State        string         `json:"state"`
	Parent       string         `json:"parent,omitempty"`
	Disks        []SnapshotDisk `json:"disks"`
	Domain       DomainIdentity `json:"domain"`
	// XML is the <domainsnapshot> document, as generated or redefined.
	XML string `json:"xml"`
	// MergeInterrupted is set once a merge stopped after writing into
	// an image that held the snapshot's point in time; nil otherwise.
	// It is the daemon's, not the caller's: no XML carries it.
	MergeInterrupted *MergeInterruption `json:"merge_interrupted,omitempty"`
}

// MergeInterruption marks a snapshot whose point in time a merge
// changed without completing: the delete was cancelled or failed after
// a commit job had written part of an overlay into the image below it,
// which held the snapshot's point in time (libvirt marks such a
// snapshot too). The guest's disks are as they were; the snapshot is
// otherwise as it was, and deleting it again completes the merge and
// clears the mark.
type MergeInterruption struct {
	// OpID and Time are the last delete that wrote into a base of the
	// snapshot without completing.
	OpID string    `json:"op_id"`
	Time time.Time `json:"time"`
	// Disks are the targets whose base was written into, by name.
	Disks []string `json:"disks"`
}

// SnapshotDisk is one disk of a snapshot: the overlay that took the new
// writes and the image it sits on, which holds the snapshot's data.
type SnapshotDisk struct {
	Target        string `json:"target"`
	Snapshot      string `json:"snapshot"` // external or no
	Overlay       string `json:"overlay,omitempty"`
	Backing       string `json:"backing,omitempty"`
	BackingFormat string `json:"backing_format,omitempty"`
	// Created says the daemon created the overlay file (not REUSE_EXT,
	// not an empty file the caller gave), so a delete that merges it
	// may delete it. Records older than this field keep their files.
	Created bool `json:"created,omitempty"`
}

// DomainIdentity says which VM a snapshot belongs to.
type DomainIdentity struct {
	Name string `json:"name"`
	UUID string `json:"uuid,omitempty"`
	QMP  string `json:"qmp,omitempty"`
}

// OpRecord is the journal entry of one operation.
type OpRecord struct {
	ID       string            `json:"id"`
	Domain   string            `json:"domain"`
	Kind     string            `json:"kind"`
	Snapshot string            `json:"snapshot,omitempty"`
	Flags    CreateFlags       `json:"flags"`
	Started  time.Time         `json:"started"`
	Updated  time.Time         `json:"updated"`
	Error    string            `json:"error,omitempty"`
	Plan     *transaction.Plan `json:"plan,omitempty"`
	// DeleteFlags and Merge are a snapshot delete's (Kind
	// KindSnapshotDelete): its flags and its merge plan.
	DeleteFlags DeleteFlags            `json:"delete_flags,omitempty"`
	Merge       *transaction.MergePlan `json:"merge,omitempty"`
	// Step and ErrorKind are a failed operation's step and kind of
	// failure (errkind.Kind's name), so that its outcome reads the same
	// from the journal as from the operation itself.
	Step      string `json:"step,omitempty"`
	ErrorKind string `json:"error_kind,omitempty"`
	// OutcomeUnknown is set on an open entry whose caller was answered
	// ErrOutcomeUnknown; recovery clears it when it completes the entry.
	OutcomeUnknown bool `json:"outcome_unknown,omitempty"`
}

// Operation kinds of the journal.
const (
	KindSnapshot       = "snapshot"
	KindSnapshotDelete = "snapshot-delete"
)

// Phase is the plan's phase, or failed when there is none.
func (op *OpRecord) Phase() transaction.Phase {
	switch {
	case op.Merge != nil:
		return op.Merge.Phase
	case op.Plan == nil:
		return transaction.PhaseFailed
	}
	return op.Plan.Phase
}

// OpenStore opens (creating) the store in dir.
func OpenStore(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	path := filepath.Join(dir, "qsnapd.db")
	// A second daemon on the same state dir would wait forever for the
	// file lock; fail instead.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketDomains, bucketSnapshots, bucketCurrent, bucketOps, bucketFreezes} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Close closes the store.
func (s *Store) Close() error { return s.db.Close() }

func put(b *bolt.Bucket, key string, v any) error {
	buf, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put([]byte(key), buf)
}

// PutDomain registers or updates a domain.
func (s *Store) PutDomain(d DomainConfig) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		return put(tx.Bucket(bucketDomains), d.Name, d)
	})
}

// DeleteDomain forgets a domain; its snapshot metadata stays, as
// libvirt keeps it for a domain that is defined again.
func (s *Store) DeleteDomain(name string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDomains).Delete([]byte(name))
	})
}

// decodeAll decodes every value of a bucket (none if it is nil).
func decodeAll[T any](b *bolt.Bucket) ([]T, error) {
	var out []T
	if b == nil {
		return nil, nil
	}
	err := b.ForEach(func(_, v []byte) error {
		var x T
		if err := json.Unmarshal(v, &x); err != nil {
			return err
		}
		out = append(out, x)
		return nil
	})
	return out, err
}

// Domains lists the registered domains.
func (s *Store) Domains() (out []DomainConfig, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		out, err = decodeAll[DomainConfig](tx.Bucket(bucketDomains))
		return err
	})
	return out, err
}

// Snapshot returns one snapshot record.
func (s *Store) Snapshot(domain, name string) (SnapshotRecord, error) {
	var rec SnapshotRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSnapshots).Bucket([]byte(domain))
		if b == nil {
			return errNoSnapshot(domain, name)
		}
		v := b.Get([]byte(name))
		if v == nil {
			return errNoSnapshot(domain, name)
		}
		return json.Unmarshal(v, &rec)
	})
	return rec, err
}

func errNoSnapshot(domain, name string) error {
	return fmt.Errorf("%w: domain %s has no snapshot named '%s'", ErrNoSnapshot, domain, name)
}

// Snapshots lists a domain's snapshots, oldest first.
func (s *Store) Snapshots(domain string) ([]SnapshotRecord, error) {
	var out []SnapshotRecord
	err := s.db.View(func(tx *bolt.Tx) (err error) {
		out, err = decodeAll[SnapshotRecord](tx.Bucket(bucketSnapshots).Bucket([]byte(domain)))
		return err
	})
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].CreationTime != out[j].CreationTime {
			return out[i].CreationTime < out[j].CreationTime
		}
		return out[i].Name < out[j].Name
	})
	return out, err
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
		b := tx.Bucket(bucketSnapshots).Bucket([]byte(domain))
		if b == nil || b.Get([]byte(name)) == nil {
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
		b, err := tx.Bucket(bucketSnapshots).CreateBucketIfNotExists([]byte(rec.Domain.Name))
		if err != nil {
			return err
		}
		if rec.Parent != "" && b.Get([]byte(rec.Parent)) == nil {
			return fmt.Errorf("%w: parent snapshot '%s' of '%s' does not exist", ErrInvalidArg, rec.Parent, rec.Name)
		}
		if old, err := getRecord(b, rec.Domain.Name, rec.Name); err == nil && rec.MergeInterrupted == nil {
			rec.MergeInterrupted = old.MergeInterrupted
		}
		if err := put(b, rec.Name, rec); err != nil {
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

// DeleteSnapshotMetadata removes a snapshot record. As in libvirt, its
// children move to its parent, and so does current.
func (s *Store) DeleteSnapshotMetadata(domain, name string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSnapshots).Bucket([]byte(domain))
		if b == nil {
			return errNoSnapshot(domain, name)
		}
		gone, err := getRecord(b, domain, name)
		if err != nil {
			return err
		}
		return removeRecord(tx, b, domain, gone)
	})
}

func getRecord(b *bolt.Bucket, domain, name string) (SnapshotRecord, error) {
	var rec SnapshotRecord
	v := b.Get([]byte(name))
	if v == nil {
		return rec, errNoSnapshot(domain, name)
	}
	err := json.Unmarshal(v, &rec)
	return rec, err
}

// removeRecord deletes gone's record: its children move to its parent,
// and so does current.
func removeRecord(tx *bolt.Tx, b *bolt.Bucket, domain string, gone SnapshotRecord) error {
	var children []SnapshotRecord
	err := b.ForEach(func(_, v []byte) error {
		var rec SnapshotRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			return err
		}
		if rec.Parent == gone.Name {
			children = append(children, rec)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, child := range children {
		child.Parent = gone.Parent
		xml, err := reparentXML(child.XML, gone.Parent)
		if err != nil {
			return fmt.Errorf("reparent %s: %w", child.Name, err)
		}
		child.XML = xml
		if err := put(b, child.Name, child); err != nil {
			return err
		}
	}
	if err := b.Delete([]byte(gone.Name)); err != nil {
		return err
	}
	cur := tx.Bucket(bucketCurrent)
	if string(cur.Get([]byte(domain))) == gone.Name {
		if gone.Parent == "" {
			return cur.Delete([]byte(domain))
		}
		return cur.Put([]byte(domain), []byte(gone.Parent))
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
		b := tx.Bucket(bucketSnapshots).Bucket([]byte(domain))
		if ch.record {
			if b == nil {
				return errNoSnapshot(domain, ch.snapshot)
			}
			if err := mergeRecords(tx, b, domain, ch); err != nil {
				return err
			}
		}
		if err := markInterrupted(b, domain, ch); err != nil {
			return err
		}
		return putOp(tx, op)
	})
}

// mergeRecords is applyMerge's change of the records a round merged.
func mergeRecords(tx *bolt.Tx, b *bolt.Bucket, domain string, ch mergeChange) error {
	rec, err := getRecord(b, domain, ch.snapshot)
	if err != nil {
		return err
	}
	var others []SnapshotRecord
	err = b.ForEach(func(k, v []byte) error {
		if string(k) == ch.snapshot {
			return nil
		}
		var r SnapshotRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return err
		}
		others = append(others, r)
		return nil
	})
	if err != nil {
		return err
	}
	for _, r := range others {
		changed := false
		for i := range r.Disks {
			sd := &r.Disks[i]
			if m, ok := ch.rebase[r.Name][sd.Target]; ok && sd.Backing == m.top {
				sd.Backing, sd.BackingFormat, changed = m.base, m.baseFormat, true
			}
		}
		if changed {
			if err := put(b, r.Name, r); err != nil {
				return err
			}
		}
	}
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
		return removeRecord(tx, b, domain, rec)
	}
	if rec.XML, err = dropDisksXML(rec.XML, ch.gone); err != nil {
		return fmt.Errorf("update snapshot %s: %w", rec.Name, err)
	}
	if m := rec.MergeInterrupted; m != nil {
		m.Disks = slices.DeleteFunc(m.Disks, func(t string) bool { return ch.gone[t] })
		if len(m.Disks) == 0 {
			rec.MergeInterrupted = nil
		}
	}
	return put(b, rec.Name, rec)
}

// markInterrupted marks the records ch.interrupted names, adding the
// disks to a mark they may have already. A record that is gone has
// nothing left to mark: the journal's end is not held up for it.
func markInterrupted(b *bolt.Bucket, domain string, ch mergeChange) error {
	for name, disks := range ch.interrupted {
		if b == nil {
			return nil
		}
		rec, err := getRecord(b, domain, name)
		if errors.Is(err, ErrNoSnapshot) {
			continue
		}
		if err != nil {
			return err
		}
		m := &MergeInterruption{OpID: ch.opID, Time: ch.at}
		if rec.MergeInterrupted != nil {
			m.Disks = rec.MergeInterrupted.Disks
		}
		m.Disks = slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(m.Disks), disks...))))
		rec.MergeInterrupted = m
		if err := put(b, rec.Name, rec); err != nil {
			return err
		}
	}
	return nil
}

func putOp(tx *bolt.Tx, op *OpRecord) error {
	op.Updated = time.Now().UTC()
	return put(tx.Bucket(bucketOps), op.ID, op)
}

// SaveOp records an operation's journal entry durably.
func (s *Store) SaveOp(op *OpRecord) error {
	return s.db.Update(func(tx *bolt.Tx) error { return putOp(tx, op) })
}

// Op returns one operation.
func (s *Store) Op(id string) (*OpRecord, error) {
	var op *OpRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketOps).Get([]byte(id))
		if v == nil {
			return errNoOp
		}
		op = new(OpRecord)
		return json.Unmarshal(v, op)
	})
	return op, err
}

var errNoOp = errors.New("no such operation")

// markOutcomeUnknown flags an operation whose caller gives up waiting,
// read and written in one transaction so that an entry recovery closed
// meanwhile stays as recovery wrote it. It reports whether the entry
// was still open, and so flagged.
func (s *Store) markOutcomeUnknown(id string) (bool, error) {
	marked := false
	err := s.db.Update(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketOps).Get([]byte(id))
		if v == nil {
			return errNoOp
		}
		var op OpRecord
		if err := json.Unmarshal(v, &op); err != nil {
			return err
		}
		if !op.Phase().Active() {
			return nil
		}
		op.OutcomeUnknown, marked = true, true
		return putOp(tx, &op)
	})
	return marked, err
}

// Ops lists operations, oldest first; with activeOnly, only those that
// recovery must finish.
func (s *Store) Ops(activeOnly bool) ([]*OpRecord, error) {
	var out []*OpRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		all, err := decodeAll[*OpRecord](tx.Bucket(bucketOps))
		for _, op := range all {
			if !activeOnly || op.Phase().Active() {
				out = append(out, op)
			}
		}
		return err
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Started.Before(out[j].Started) })
	return out, err
}

// PruneOps deletes finished operations older than cutoff, except those
// that left a disk stuck on its overlay, or an overlay holding guest
// writes after QEMU exited: an operator needs to see them.
func (s *Store) PruneOps(cutoff time.Time) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketOps)
		var old [][]byte
		err := b.ForEach(func(k, v []byte) error {
			var op OpRecord
			if err := json.Unmarshal(v, &op); err != nil {
				return err
			}
			if !op.Phase().Active() && op.Updated.Before(cutoff) &&
				(op.Plan == nil || len(op.Plan.Stuck())+len(op.Plan.HoldingGuestWrites()) == 0) {
				old = append(old, append([]byte(nil), k...))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range old {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
}

// FreezeRecord says the daemon froze (or is about to freeze) a guest. It
// is written before the freeze is sent and deleted once a thaw is
// confirmed, so that a restarted daemon thaws what its predecessor froze.
type FreezeRecord struct {
	Domain   string    `json:"domain"`
	Owner    string    `json:"owner"` // "snapshot" or "fsfreeze"
	OpID     string    `json:"op_id,omitempty"`
	Since    time.Time `json:"since"`
	Deadline time.Time `json:"deadline"`
}

// PutFreeze records a freeze durably.
func (s *Store) PutFreeze(r FreezeRecord) error {
	return s.db.Update(func(tx *bolt.Tx) error { return put(tx.Bucket(bucketFreezes), r.Domain, r) })
}

// DeleteFreeze forgets a domain's freeze once it is thawed.
func (s *Store) DeleteFreeze(domain string) error {
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketFreezes).Delete([]byte(domain)) })
}

// Freezes lists the recorded freezes.
func (s *Store) Freezes() ([]FreezeRecord, error) {
	var out []FreezeRecord
	err := s.db.View(func(tx *bolt.Tx) (err error) {
		out, err = decodeAll[FreezeRecord](tx.Bucket(bucketFreezes))
		return err
	})
	return out, err
}
