package api

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestEventFilterQuery(t *testing.T) {
	for _, tc := range []struct {
		f    EventFilter
		want string
	}{
		{EventFilter{}, ""},
		{EventFilter{Domains: []string{"vm1", "vm 2"}, Types: []string{EventSnapshotCreated, "a,b"}},
			"domain=vm1&domain=vm+2&type=snapshot-created&type=a%2Cb"},
		{EventFilter{Since: new(uint64(0))}, "since=0"},
		{EventFilter{Since: new(uint64(42)), Run: "r1"}, "run=r1&since=42"},
	} {
		if got := tc.f.Query().Encode(); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.f, got, tc.want)
		}
	}
}

func TestEventDecodeData(t *testing.T) {
	var d OperationStateData
	e := Event{Type: EventOperationState, Data: []byte(`{"kind":"fsfreeze","state":"running"}`)}
	if err := e.DecodeData(&d); err != nil || d != (OperationStateData{Kind: OpFSFreeze, State: OpRunning}) {
		t.Errorf("%+v, %v", d, err)
	}
	if err := (Event{Type: EventOverflow}).DecodeData(&d); err == nil {
		t.Error("an event without data decodes")
	}
}

// TestEventsNoAnswer: a stream the daemon does not answer is a
// NoAnswerError, as any request's.
func TestEventsNoAnswer(t *testing.T) {
	sock, l := listenUnix(t)
	t.Cleanup(func() { l.Close() })
	c := NewClient(sock)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := c.Events(ctx, EventFilter{Types: []string{EventGuestFrozen}})
	var na *NoAnswerError
	if !errors.As(err, &na) || na.Request != "GET /v1/events?type=guest-frozen" || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %#v (%v)", err, err)
	}
}
