package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/internal/eventlog"
)

// Graces of a stream whose client does not read: after an overflow, the
// time it has to take the events queued for it and the overflow event;
// at shutdown, the time a write already under way has.
const (
	overflowGrace = 10 * time.Second
	shutdownGrace = time.Second
)

// events serves GET /v1/events: the driver's events as JSON lines, or
// as server-sent events, live and, with ?since, first those the client
// missed. See package api for the protocol.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	opts, err := eventOptions(r)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	opts.Buffer = s.cfg.EventBuffer
	sse := acceptsEventStream(r.Header.Values("Accept"))
	sub := s.drv.SubscribeEvents(opts)
	defer sub.Close()

	// The server's write timeout bounds a request; a stream lasts as
	// long as its client wants. (Its read timeout ends with the
	// request's header: net/http lifts it to watch for the client
	// going away.)
	rc := http.NewResponseController(w)
	if err := rc.SetWriteDeadline(time.Time{}); err != nil {
		s.log.Debug("event stream: write deadline not lifted", zap.Error(err))
	}
	// A client that does not read blocks a write: an overflow or the
	// shutdown put a deadline on it.
	stop := make(chan struct{})
	var watch sync.WaitGroup
	watch.Go(func() {
		var grace time.Duration
		select {
		case <-s.streamsDone:
			grace = s.shutdownGrace
		case <-sub.Done():
			grace = s.overflowGrace
		case <-stop:
			return
		}
		_ = rc.SetWriteDeadline(time.Now().Add(grace)) // the conn takes it, or the writes fail already
	})
	defer func() {
		close(stop)
		watch.Wait()
	}()

	h := w.Header()
	h.Set("Content-Type", api.MediaNDJSON)
	if sse {
		h.Set("Content-Type", api.MediaEventStream)
	}
	h.Set("Cache-Control", "no-cache")
	h.Set(api.EventRunHeader, s.drv.EventRun())
	w.WriteHeader(http.StatusOK)
	out := &eventWriter{w: w, rc: rc, sse: sse}
	if g := sub.Gap; g != nil {
		out.write(controlEvent(api.EventEventsLost, api.EventsLostData{Since: g.Since, Resume: g.Resume,
			Run: s.drv.EventRun(), OtherRun: g.OtherRun}))
	}
	for _, e := range sub.Replay {
		out.write(toEvent(e))
	}
	out.flush()
	for out.err == nil {
		select {
		case <-r.Context().Done():
			return
		case <-s.streamsDone:
			return
		case e, ok := <-sub.C():
			if !ok {
				if over, since := sub.Overflowed(); over {
					out.write(controlEvent(api.EventOverflow, api.OverflowData{Since: since, Buffer: opts.Buffer}))
					out.flush()
				}
				return
			}
			out.write(toEvent(e))
			out.flush()
		}
	}
}

// eventWriter writes events in the stream's format; after the first
// failed write it writes nothing.
type eventWriter struct {
	w   http.ResponseWriter
	rc  *http.ResponseController
	sse bool
	buf bytes.Buffer
	err error
}

func (ew *eventWriter) write(e api.Event) {
	if ew.err != nil {
		return
	}
	data, err := json.Marshal(e)
	if err != nil {
		ew.err = err
		return
	}
	ew.buf.Reset()
	if ew.sse {
		if e.Seq != 0 { // the stream's own events change no Last-Event-ID
			fmt.Fprintf(&ew.buf, "id: %d\n", e.Seq)
		}
		fmt.Fprintf(&ew.buf, "event: %s\ndata: %s\n\n", e.Type, data)
	} else {
		ew.buf.Write(data)
		ew.buf.WriteByte('\n')
	}
	_, ew.err = ew.w.Write(ew.buf.Bytes())
}

func (ew *eventWriter) flush() {
	if ew.err == nil {
		ew.err = ew.rc.Flush()
	}
}

// eventOptions reads the stream's query: ?domain= and ?type=
// (repeatable, comma-separated), ?since=SEQ and ?run=RUN; without
// ?since, an SSE client's Last-Event-ID says where it was. Any other
// parameter, and an unknown type, is refused.
func eventOptions(r *http.Request) (driver.EventOptions, error) {
	var o driver.EventOptions
	since := ""
	for key, vs := range r.URL.Query() {
		switch key {
		case api.QueryDomain:
			for _, v := range vs {
				// A name may hold a comma: it matches whole too.
				o.Filter.Domains = append(o.Filter.Domains, v)
				if strings.Contains(v, ",") {
					o.Filter.Domains = append(o.Filter.Domains, splitList(v)...)
				}
			}
		case api.QueryType:
			for _, v := range vs {
				for _, t := range splitList(v) {
					if !slices.Contains(api.EventTypes, t) {
						return o, fmt.Errorf("%w: unknown event type %q (known: %s)", errBadRequest, t, strings.Join(api.EventTypes, ", "))
					}
					o.Filter.Types = append(o.Filter.Types, t)
				}
			}
		case api.QuerySince, api.QueryRun:
			if len(vs) != 1 {
				return o, fmt.Errorf("%w: %s given %d times", errBadRequest, key, len(vs))
			}
			if key == api.QueryRun {
				o.Run = vs[0]
			} else {
				since = vs[0]
			}
		default:
			return o, fmt.Errorf("%w: unknown parameter %q of the event stream", errBadRequest, key)
		}
	}
	if since == "" {
		since = r.Header.Get("Last-Event-ID")
	}
	if since != "" {
		n, err := strconv.ParseUint(since, 10, 64)
		if err != nil {
			return o, fmt.Errorf("%w: since must be an event's sequence number, not %q", errBadRequest, since)
		}
		o.Replay, o.Since = true, n
	}
	return o, nil
}

// splitList splits a comma-separated list, dropping empty items.
func splitList(v string) []string {
	var out []string
	for item := range strings.SplitSeq(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// acceptsEventStream says whether the Accept headers name
// text/event-stream.
func acceptsEventStream(accept []string) bool {
	for _, h := range accept {
		for _, rng := range strings.Split(h, ",") {
			if mt, _, err := mime.ParseMediaType(strings.TrimSpace(rng)); err == nil && mt == api.MediaEventStream {
				return true
			}
		}
	}
	return false
}

// controlEvent is a message of the stream itself, numbered 0.
func controlEvent(typ string, data any) api.Event {
	raw, _ := json.Marshal(data) // the data types marshal
	return api.Event{Time: time.Now().UTC(), Type: typ, Data: raw}
}

// eventResults are the engine's snapshot results as the wire names
// them.
var eventResults = map[string]string{
	driver.ResultSuccess:    api.EventResultSuccess,
	driver.ResultFailure:    api.EventResultFailure,
	driver.ResultRolledBack: api.EventResultRolledBack,
	driver.ResultPartial:    api.EventResultPartial,
	driver.ResultCancelled:  api.EventResultCancelled,
}

// toEvent is an event of the driver's log as the wire has it.
func toEvent(e eventlog.Event) api.Event {
	var data any
	switch d := e.Data.(type) {
	case driver.SnapshotEvent:
		sd := api.SnapshotEventData{Snapshot: d.Name, Mode: d.Mode, Result: eventResults[d.Result], Quiesced: d.Quiesced,
			FreezeMS: ms(d.Freeze), DurationMS: ms(d.Duration)}
		if d.Err != nil {
			_, info := errorInfo(d.Err)
			sd.Error = &info
		}
		data = sd
	case driver.DeleteEvent:
		dd := api.DeleteEventData{Snapshots: d.Names, Merged: d.Merged, Result: eventResults[d.Result],
			MergedBytes: d.MergedBytes, DurationMS: ms(d.Duration)}
		if dd.Snapshots == nil {
			dd.Snapshots = []string{}
		}
		if d.Err != nil {
			_, info := errorInfo(d.Err)
			dd.Error = &info
		}
		data = dd
	case driver.MergeProgressEvent:
		pct := 0
		if d.Total > 0 {
			pct = int(min(max(d.Done, 0), d.Total) * 100 / d.Total)
		}
		data = api.MergeProgressData{DoneBytes: d.Done, TotalBytes: d.Total, Percent: pct}
	case driver.GuestFrozenEvent:
		data = api.GuestFrozenData{Owner: d.Owner}
	case driver.GuestThawedEvent:
		data = api.GuestThawedData{FrozenForMS: ms(d.FrozenFor)}
	case driver.DomainStateEvent:
		data = api.DomainEventData{QEMUVersion: d.QEMUVersion, Reason: d.Reason}
	case driver.OperationStateEvent:
		kind := d.Kind
		if kind != "" {
			kind = opKind(kind)
		}
		data = api.OperationStateData{Kind: kind, State: d.State}
	}
	out := api.Event{Seq: e.Seq, Time: e.Time.UTC(), Type: e.Type, Domain: e.Domain, Operation: e.Operation}
	if data != nil {
		out.Data, _ = json.Marshal(data) // the data types marshal
	}
	return out
}
