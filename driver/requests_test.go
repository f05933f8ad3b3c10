package driver

import (
	"errors"
	"testing"
	"time"
)

// TestRequestRecords: an id begins once; an ended record is never
// overwritten, an unknown one takes only its final answer; a running
// one can be forgotten; pruning keeps what has not ended.
func TestRequestRecords(t *testing.T) {
	s, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	begin := func(id, fp string) *RequestRecord {
		t.Helper()
		prior, err := s.BeginRequest(RequestRecord{ID: id, Kind: "snapshot-create", Fingerprint: fp, Started: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		return prior
	}
	if prior := begin("a", "x"); prior != nil {
		t.Fatalf("a new id has a prior record: %+v", prior)
	}
	if prior := begin("a", "y"); prior == nil || prior.Fingerprint != "x" || prior.State != RequestRunning {
		t.Fatalf("a second begin: %+v", prior)
	}
	old := time.Now().Add(-48 * time.Hour)
	done := RequestRecord{ID: "a", Fingerprint: "x", State: RequestSucceeded, Ended: old, Status: 201, Response: []byte("{}\n")}
	if err := s.FinishRequest(done); err != nil {
		t.Fatal(err)
	}
	again := done
	again.Status = 409
	if err := s.FinishRequest(again); !errors.Is(err, ErrRequestEnded) {
		t.Errorf("an ended record overwritten: %v", err)
	}
	if err := s.ForgetRequest("a"); !errors.Is(err, ErrRequestEnded) {
		t.Errorf("an ended record forgotten: %v", err)
	}

	begin("u", "x")
	if err := s.FinishRequest(RequestRecord{ID: "u", State: RequestUnknown, Status: 504}); err != nil {
		t.Fatal(err)
	}
	if err := s.FinishRequest(RequestRecord{ID: "u", State: RequestUnknown, Status: 504}); !errors.Is(err, ErrRequestEnded) {
		t.Errorf("an unknown record took another unknown answer: %v", err)
	}
	if err := s.FinishRequest(RequestRecord{ID: "u", State: RequestFailed, Status: 409, Ended: old}); err != nil {
		t.Errorf("an unknown record refused its final answer: %v", err)
	}

	begin("r", "x")
	begin("f", "x")
	if err := s.ForgetRequest("f"); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.Request("f"); ok {
		t.Error("a forgotten record is still there")
	}
	if err := s.PruneRequests(time.Now().Add(-24 * time.Hour)); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]bool{"a": false, "u": false, "r": true} {
		if _, ok, _ := s.Request(id); ok != want {
			t.Errorf("after pruning, record %s there: %v, want %v", id, ok, want)
		}
	}
}
