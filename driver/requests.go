package driver

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// bucketRequests keeps RequestRecords by operation id.
var bucketRequests = []byte("requests")

// States of a RequestRecord; the API's operation states spell them so.
const (
	RequestRunning   = "running"
	RequestSucceeded = "succeeded"
	RequestFailed    = "failed"
	// RequestUnknown is a request answered before its outcome was known
	// (QEMU went away mid-switch); recovery resolves it.
	RequestUnknown = "unknown"
)

// RequestRecord is the durable record of a mutating request made under
// an operation id: what was asked, so that a retry can be told from a
// reuse of the id, and once it ended the complete answer, so that a
// retry gets it again, after a restart too. A front end writes it; the
// engine's own journal (OpRecord) is another record.
type RequestRecord struct {
	ID     string `json:"id"`
	Kind   string `json:"kind"` // the front end's stable name: snapshot-create, ...
	Domain string `json:"domain,omitempty"`
	// Fingerprint identifies the request: verb, path and body.
	Fingerprint string    `json:"fingerprint"`
	State       string    `json:"state"`
	Started     time.Time `json:"started"`
	Ended       time.Time `json:"ended,omitzero"`
	// Status and Response are the answer: its status and whole body,
	// byte for byte (a json.RawMessage would be compacted).
	Status   int    `json:"status,omitempty"`
	Response []byte `json:"response,omitempty"`
}

// ErrRequestEnded is finishing a request record that already has its
// final answer: records are never overwritten.
var ErrRequestEnded = errors.New("request record already ended")

// BeginRequest records a running request under rec.ID, unless that id
// already has a record: then it writes nothing and returns the record.
// The check and the write are one transaction, so two requests racing
// for one id cannot both begin.
func (s *Store) BeginRequest(rec RequestRecord) (prior *RequestRecord, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketRequests)
		if v := b.Get([]byte(rec.ID)); v != nil {
			prior = new(RequestRecord)
			return json.Unmarshal(v, prior)
		}
		rec.State = RequestRunning
		return put(b, rec.ID, rec)
	})
	if err != nil {
		return nil, fmt.Errorf("begin request %s: %w", rec.ID, err)
	}
	return prior, nil
}

// FinishRequest stores a request's answer. Only a running or unknown
// record takes one; an unknown one takes only its final answer.
func (s *Store) FinishRequest(rec RequestRecord) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketRequests)
		v := b.Get([]byte(rec.ID))
		if v == nil {
			return errNoRequest
		}
		var cur RequestRecord
		if err := json.Unmarshal(v, &cur); err != nil {
			return err
		}
		// Running takes any answer; unknown only its final one.
		resolving := cur.State == RequestUnknown && rec.State != RequestUnknown
		if cur.State != RequestRunning && !resolving {
			return ErrRequestEnded
		}
		return put(b, rec.ID, rec)
	})
	if err != nil {
		return fmt.Errorf("finish request %s: %w", rec.ID, err)
	}
	return nil
}

// ForgetRequest deletes a running request's record: it was refused
// without effect (busy, QEMU away) and its id stays free for a retry.
func (s *Store) ForgetRequest(id string) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketRequests)
		v := b.Get([]byte(id))
		if v == nil {
			return nil
		}
		var cur RequestRecord
		if err := json.Unmarshal(v, &cur); err != nil {
			return err
		}
		if cur.State != RequestRunning {
			return ErrRequestEnded
		}
		return b.Delete([]byte(id))
	})
	if err != nil {
		return fmt.Errorf("forget request %s: %w", id, err)
	}
	return nil
}

var errNoRequest = errors.New("no such request")

// Request returns one request record; ok is false if there is none.
func (s *Store) Request(id string) (rec RequestRecord, ok bool, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketRequests).Get([]byte(id))
		if v == nil {
			return nil
		}
		ok = true
		return json.Unmarshal(v, &rec)
	})
	return rec, ok, err
}

// Requests lists the records in the given states (all if none given).
func (s *Store) Requests(states ...string) ([]RequestRecord, error) {
	var out []RequestRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		all, err := decodeAll[RequestRecord](tx.Bucket(bucketRequests))
		for _, r := range all {
			if len(states) == 0 || slices.Contains(states, r.State) {
				out = append(out, r)
			}
		}
		return err
	})
	return out, err
}

// PruneRequests deletes records that ended before cutoff.
func (s *Store) PruneRequests(cutoff time.Time) error {
	return pruneBucket(s.db, bucketRequests, func(r *RequestRecord) bool {
		return r.State != RequestRunning && r.State != RequestUnknown && r.Ended.Before(cutoff)
	})
}
