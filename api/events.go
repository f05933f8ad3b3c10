package api

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// The event stream: GET /v1/events answers with one Event per line
// (application/x-ndjson), or as server-sent events when the request
// accepts text/event-stream ("id: SEQ", "event: TYPE", "data: JSON").
// Each event is sent as it happens; there is no heartbeat, since a unix
// socket tells both ends when the other goes away.
//
// Every event has a sequence number, increasing from 1 in each run of
// the daemon (the run is named by the EventRunHeader of the answer).
// ?since=SEQ replays the events after SEQ that the daemon still keeps
// (its last event_ring, 10 000 by default) and goes on live, missing
// none and repeating none. When SEQ has left the ring, or belongs to
// another run (?run=RUN names the run it came from; a SEQ past the
// run's last event is taken as another run's), the stream begins with
// an events-lost event saying where it resumes. A client too slow to
// read, by a buffer of EventBuffer events, gets an overflow event and
// the end of the stream; it can reconnect with the overflow's since.

// EventsPath is the event stream's path.
const EventsPath = "/v1/events"

// Query parameters of the event stream. Domain and type are
// repeatable, and take comma-separated lists.
const (
	QueryDomain = "domain"
	QueryType   = "type"
	QuerySince  = "since"
	QueryRun    = "run"
)

// EventRunHeader names the daemon's run on the stream's answer: the
// sequence numbers of one run are not those of another.
const EventRunHeader = "X-Qsnapd-Run"

// Media types of the event stream.
const (
	MediaNDJSON      = "application/x-ndjson"
	MediaEventStream = "text/event-stream"
)

// EventBuffer is how many events the daemon holds for a stream whose
// client does not read them, before it ends the stream with overflow.
const EventBuffer = 1024

// Event types, with the type of their Data.
const (
	EventSnapshotCreated = "snapshot-created" // SnapshotEventData
	EventSnapshotFailed  = "snapshot-failed"  // SnapshotEventData
	// EventSnapshotDeleted is every delete that got past validation,
	// merge or metadata only, with its result: a failed one lists the
	// snapshots deleted before the failure, if any.
	EventSnapshotDeleted = "snapshot-deleted" // DeleteEventData
	// EventMergeProgress is a delete's block-commit jobs while they
	// copy: at most 4 a second per operation, and one when the copy is
	// complete.
	EventMergeProgress      = "merge-progress"      // MergeProgressData
	EventGuestFrozen        = "guest-frozen"        // GuestFrozenData
	EventGuestThawed        = "guest-thawed"        // GuestThawedData
	EventDomainConnected    = "domain-connected"    // DomainEventData
	EventDomainDisconnected = "domain-disconnected" // DomainEventData
	// EventOperationState is an operation of the API starting (running)
	// and ending (succeeded, failed, or unknown until recovery resolves
	// it, which says so with another).
	EventOperationState = "operation-state" // OperationStateData

	// The stream's own events, whatever the filter; their Seq is 0.

	// EventOverflow ends the stream of a client that fell behind.
	EventOverflow = "overflow" // OverflowData
	// EventEventsLost begins a stream whose ?since= asked for events
	// the daemon no longer has.
	EventEventsLost = "events-lost" // EventsLostData
)

// EventTypes are the types a ?type= filter may name.
var EventTypes = []string{
	EventSnapshotCreated, EventSnapshotFailed, EventSnapshotDeleted, EventMergeProgress,
	EventGuestFrozen, EventGuestThawed, EventDomainConnected, EventDomainDisconnected,
	EventOperationState, EventOverflow, EventEventsLost,
}

// Event is one thing the daemon did, or, with Seq 0, a message of the
// stream itself.
type Event struct {
	Seq       uint64    `json:"seq"`
	Time      time.Time `json:"time"`
	Type      string    `json:"type"`
	Domain    string    `json:"domain,omitempty"`
	Operation string    `json:"operation,omitempty"`
	// Data's type depends on Type; DecodeData reads it.
	Data json.RawMessage `json:"data,omitempty"`
}

// DecodeData reads the event's data into v, the data type of its Type.
func (e Event) DecodeData(v any) error {
	if len(e.Data) == 0 {
		return fmt.Errorf("event %s has no data", e.Type)
	}
	return json.Unmarshal(e.Data, v)
}

// Results of snapshot-created, -failed and -deleted events.
const (
	EventResultSuccess    = "success"
	EventResultFailure    = "failure"     // refused or failed; nothing changed
	EventResultRolledBack = "rolled-back" // switched disks were committed back
	EventResultPartial    = "partial"     // a disk is left changed: see the error's details
	EventResultCancelled  = "cancelled"   // a delete cancelled before its point of no return
)

// SnapshotEventData is the data of snapshot-created and snapshot-failed.
type SnapshotEventData struct {
	Snapshot   string     `json:"snapshot"`
	Mode       string     `json:"mode,omitempty"` // atomic or sequential
	Result     string     `json:"result"`
	Quiesced   bool       `json:"quiesced,omitempty"`
	FreezeMS   float64    `json:"freeze_ms,omitempty"`
	DurationMS float64    `json:"duration_ms"`
	Error      *ErrorInfo `json:"error,omitempty"`
}

// DeleteEventData is the data of snapshot-deleted.
type DeleteEventData struct {
	// Snapshots are those deleted, deepest first.
	Snapshots []string `json:"snapshots"`
	// Merged says the overlays were merged; false for metadata only.
	Merged      bool       `json:"merged"`
	Result      string     `json:"result"`
	MergedBytes int64      `json:"merged_bytes,omitempty"`
	DurationMS  float64    `json:"duration_ms"`
	Error       *ErrorInfo `json:"error,omitempty"`
}

// MergeProgressData is the data of merge-progress: every disk and
// round so far added up.
type MergeProgressData struct {
	DoneBytes  int64 `json:"done_bytes"`
	TotalBytes int64 `json:"total_bytes"`
	Percent    int   `json:"percent"`
}

// GuestFrozenData is the data of guest-frozen.
type GuestFrozenData struct {
	Owner string `json:"owner"` // snapshot or fsfreeze
}

// GuestThawedData is the data of guest-thawed.
type GuestThawedData struct {
	FrozenForMS float64 `json:"frozen_for_ms"`
}

// DomainEventData is the data of domain-connected and -disconnected.
type DomainEventData struct {
	QEMUVersion string `json:"qemu_version,omitempty"`
	// Reason is why a domain is disconnected: the last error, or
	// "detached".
	Reason string `json:"reason,omitempty"`
}

// OperationStateData is the data of operation-state.
type OperationStateData struct {
	Kind  string `json:"kind,omitempty"` // the operation kinds, OpSnapshotCreate, ...
	State string `json:"state"`          // OpRunning, OpSucceeded, OpFailed or OpUnknown
}

// OverflowData is the data of overflow.
type OverflowData struct {
	// Since is the last event the stream sent all those before of:
	// reconnecting with ?since= it misses nothing the daemon still has.
	Since  uint64 `json:"since"`
	Buffer int    `json:"buffer"`
}

// EventsLostData is the data of events-lost.
type EventsLostData struct {
	// Since is what the client asked for; the stream resumes at Resume,
	// the oldest event the daemon has.
	Since  uint64 `json:"since"`
	Resume uint64 `json:"resume"`
	// Run is the daemon's run; OtherRun says Since was another run's.
	Run      string `json:"run"`
	OtherRun bool   `json:"other_run,omitempty"`
}

// EventFilter selects the events of a stream.
type EventFilter struct {
	// Domains and Types select events of any of the domains and any of
	// the types; empty selects all.
	Domains []string
	Types   []string
	// Since, if set, asks first for the events after it that the
	// daemon still has; Run, if set, names the run Since is from.
	Since *uint64
	Run   string
}

// Query is the filter as the stream's query string.
func (f EventFilter) Query() url.Values {
	q := url.Values{}
	for _, d := range f.Domains {
		q.Add(QueryDomain, d)
	}
	for _, t := range f.Types {
		q.Add(QueryType, t)
	}
	if f.Since != nil {
		q.Set(QuerySince, strconv.FormatUint(*f.Since, 10))
	}
	if f.Run != "" {
		q.Set(QueryRun, f.Run)
	}
	return q
}

// EventStream reads the events of GET /v1/events.
type EventStream struct {
	// Run names the daemon's run.
	Run string

	socket string
	body   io.ReadCloser
	lines  *bufio.Reader
}

// Events opens an event stream. It returns once the daemon answered;
// the stream lasts until ctx ends, Close, or the daemon ends it.
func (c *Client) Events(ctx context.Context, f EventFilter) (*EventStream, error) {
	p := EventsPath
	if q := f.Query(); len(q) > 0 {
		p += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://qsnapd"+p, http.NoBody)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", MediaNDJSON)
	resp, err := c.hc.Do(req)
	if err != nil && ctx.Err() != nil {
		return nil, &NoAnswerError{Socket: c.socket, Request: "GET " + p, Err: context.Cause(ctx)}
	}
	if err != nil {
		return nil, fmt.Errorf("qsnapd at %s: %w", c.socket, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if err != nil {
			return nil, fmt.Errorf("qsnapd at %s: read reply: %w", c.socket, err)
		}
		return nil, replyError(resp, data)
	}
	return &EventStream{Run: resp.Header.Get(EventRunHeader), socket: c.socket, body: resp.Body,
		lines: bufio.NewReaderSize(resp.Body, 64<<10)}, nil
}

// Next waits for the next event. At the end of the stream it returns
// io.EOF: after an overflow event, or when the daemon stops.
func (s *EventStream) Next() (Event, error) {
	line, err := s.lines.ReadBytes('\n')
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return Event{}, io.EOF
		}
		return Event{}, fmt.Errorf("qsnapd at %s: read event: %w", s.socket, err)
	}
	var e Event
	if err := json.Unmarshal(line, &e); err != nil {
		return Event{}, fmt.Errorf("qsnapd at %s: decode event: %w", s.socket, err)
	}
	return e, nil
}

// Close ends the stream.
func (s *EventStream) Close() error { return s.body.Close() }
