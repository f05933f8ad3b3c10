package driver

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/qsnapd/qsnapd/transaction"
)

// Store keeps domains, snapshot metadata and the operation journal in
// one bbolt file, so that a snapshot's record and the end of its
// operation commit together.
type Store struct {
	db *bolt.DB
	// decoded counts the snapshot records and list entries decoded, so
	// that a test sees a lookup that reads more than it needs.
	decoded atomic.Int64
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
	// AgentChannel is AgentHold (empty means it) or AgentPerOperation.
	AgentChannel string `json:"agent_channel,omitempty"`
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
		for _, b := range [][]byte{bucketDomains, bucketSnapshots, bucketCurrent, bucketOps, bucketFreezes, bucketRequests} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return upgradeSnapshots(tx)
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

// DeleteOp removes an operation's journal entry, for an operation
// refused with nothing of it left behind.
func (s *Store) DeleteOp(id string) error {
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketOps).Delete([]byte(id)) })
}

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
	return pruneBucket(s.db, bucketOps, func(op *OpRecord) bool {
		return !op.Phase().Active() && op.Updated.Before(cutoff) &&
			(op.Plan == nil || len(op.Plan.Stuck())+len(op.Plan.HoldingGuestWrites()) == 0)
	})
}

// pruneBucket deletes, in one transaction, the records of bucket that
// old says are old.
func pruneBucket[T any](db *bolt.DB, bucket []byte, old func(*T) bool) error {
	return db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		var gone [][]byte
		err := b.ForEach(func(k, v []byte) error {
			rec := new(T)
			if err := json.Unmarshal(v, rec); err != nil {
				return err
			}
			if old(rec) {
				gone = append(gone, append([]byte(nil), k...))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range gone {
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
