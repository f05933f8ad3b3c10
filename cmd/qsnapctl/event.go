package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/qsnapd/qsnapd/api"
)

// Why an event wait ended, as virsh says it.
var (
	errEventTimeout   = errors.New("event loop timed out")
	errEventInterrupt = errors.New("event loop interrupted")
)

// errNoEvents is a wait that ended without an event: virsh's event
// fails then too.
var errNoEvents = errors.New("no event received")

// runEvent is virsh's event: it prints the daemon's events as they
// come, the first one only unless --loop, until --timeout, an
// interrupt or the daemon ends the stream; then "events received: N".
// It fails if none came. The wait for the daemon's answer is bounded
// as a read's; the wait for events is not.
func runEvent(ctx context.Context, c *cli, a *args) error {
	f := api.EventFilter{Types: a.list("type")}
	if d := a.str("domain"); d != "" {
		f.Domains = []string{d}
	}
	if s := a.str("since"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return usagef("--since must be an event's sequence number, not '%s'", s)
		}
		f.Since = &n
	}
	var limit time.Duration
	if s := a.str("timeout"); s != "" {
		var err error
		if limit, err = parseSeconds(s); err != nil {
			return err
		}
	}
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	bound := c.bound(false)
	answer := time.AfterFunc(bound, func() { cancel(&boundError{bound: bound}) })
	stream, err := c.client.Events(sctx, f)
	late := !answer.Stop()
	if err != nil {
		return err
	}
	defer stream.Close()
	if late { // answered as the bound passed
		return context.Cause(sctx)
	}
	if limit > 0 {
		t := time.AfterFunc(limit, func() { cancel(errEventTimeout) })
		defer t.Stop()
	}
	go func() {
		select {
		case <-c.signals:
			cancel(errEventInterrupt)
		case <-sctx.Done():
		}
	}()

	// With --json, stdout is the events alone.
	status := c.stdout
	if c.json {
		status = c.stderr
	}
	count := 0
	var ended error
	for {
		e, err := stream.Next()
		if err != nil {
			cause := context.Cause(sctx)
			switch {
			case errors.Is(cause, errEventTimeout), errors.Is(cause, errEventInterrupt):
				fmt.Fprintln(status, cause)
			case errors.Is(err, io.EOF):
				ended = errors.New("qsnapd ended the event stream")
			default:
				ended = err
			}
			break
		}
		if err := c.printEvent(e, a.flag("timestamp")); err != nil {
			return err
		}
		switch {
		case e.Type == api.EventOverflow:
			var o api.OverflowData
			_ = e.DecodeData(&o) // printed already; Since stays 0 if it does not decode
			ended = fmt.Errorf("qsnapd ended the event stream: events came faster than they were read; resume with --since %d", o.Since)
		case e.Seq != 0:
			count++
		}
		if ended != nil || !a.flag("loop") && count > 0 {
			break
		}
	}
	fmt.Fprintf(status, "events received: %d\n", count)
	if ended == nil && count == 0 {
		ended = errNoEvents
	}
	return ended
}

// parseSeconds reads --timeout: seconds, as virsh takes it, or a Go
// duration such as 90s.
func parseSeconds(s string) (time.Duration, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil && n > 0 {
		return time.Duration(n) * time.Second, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return d, nil
	}
	return 0, usagef("--timeout must be a positive number of seconds, not '%s'", s)
}

// printEvent prints an event: with --json as the daemon sent it, on a
// line; else as virsh's event does, "event 'TYPE' for domain 'NAME':
// DETAIL", then the operation and the sequence number.
func (c *cli) printEvent(e api.Event, timestamp bool) error {
	if c.json {
		line, err := json.Marshal(e)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(c.stdout, "%s\n", line)
		return err
	}
	var b strings.Builder
	if timestamp {
		b.WriteString(e.Time.In(c.loc).Format("2006-01-02 15:04:05.000-0700") + ": ")
	}
	fmt.Fprintf(&b, "event '%s'", e.Type)
	if e.Domain != "" {
		fmt.Fprintf(&b, " for domain '%s'", e.Domain)
	}
	if d := eventDetail(e); d != "" {
		b.WriteString(": " + d)
	}
	if e.Operation != "" {
		fmt.Fprintf(&b, " (op %s)", e.Operation)
	}
	if e.Seq != 0 {
		fmt.Fprintf(&b, " seq %d", e.Seq)
	}
	_, err := fmt.Fprintln(c.stdout, b.String())
	return err
}

// eventDetail says what an event's data says, in a few words.
func eventDetail(e api.Event) string {
	switch e.Type {
	case api.EventSnapshotCreated, api.EventSnapshotFailed:
		var d api.SnapshotEventData
		if e.DecodeData(&d) != nil {
			break
		}
		s := d.Snapshot
		if d.Quiesced {
			s += " quiesced"
		}
		return s + outcomeOf(d.Result, d.Error)
	case api.EventSnapshotDeleted:
		var d api.DeleteEventData
		if e.DecodeData(&d) != nil {
			break
		}
		s := strings.Join(d.Snapshots, ", ")
		if len(d.Snapshots) == 0 {
			s = "none"
		}
		if d.Merged {
			s += " merged"
		} else {
			s += " metadata only"
		}
		return s + outcomeOf(d.Result, d.Error)
	case api.EventMergeProgress:
		var d api.MergeProgressData
		if e.DecodeData(&d) != nil {
			break
		}
		return fmt.Sprintf("%d%% (%s of %s)", d.Percent, humanBytes(d.DoneBytes), humanBytes(d.TotalBytes))
	case api.EventGuestFrozen:
		var d api.GuestFrozenData
		if e.DecodeData(&d) != nil {
			break
		}
		return "by " + d.Owner
	case api.EventGuestThawed:
		var d api.GuestThawedData
		if e.DecodeData(&d) != nil {
			break
		}
		return fmt.Sprintf("frozen for %s", time.Duration(d.FrozenForMS*float64(time.Millisecond)).Round(time.Millisecond))
	case api.EventDomainConnected, api.EventDomainDisconnected:
		var d api.DomainEventData
		if e.DecodeData(&d) != nil {
			break
		}
		if d.QEMUVersion != "" {
			return "QEMU " + d.QEMUVersion
		}
		return d.Reason
	case api.EventOperationState:
		var d api.OperationStateData
		if e.DecodeData(&d) != nil {
			break
		}
		return strings.TrimSpace(d.Kind + " " + d.State)
	case api.EventEventsLost:
		var d api.EventsLostData
		if e.DecodeData(&d) != nil {
			break
		}
		why := "the events after seq " + strconv.FormatUint(d.Since, 10) + " are no longer kept"
		if d.OtherRun {
			why = "seq " + strconv.FormatUint(d.Since, 10) + " is from another run of qsnapd"
		}
		return fmt.Sprintf("%s; resuming at seq %d of run %s", why, d.Resume, d.Run)
	case api.EventOverflow:
		var d api.OverflowData
		if e.DecodeData(&d) != nil {
			break
		}
		return fmt.Sprintf("too slow: more than %d events waited; every event up to seq %d was sent", d.Buffer, d.Since)
	}
	return string(e.Data)
}

// outcomeOf is how an event's result reads after its subject: nothing
// for a success, else the result and the error.
func outcomeOf(result string, err *api.ErrorInfo) string {
	s := ""
	if result != api.EventResultSuccess {
		s += " " + result
	}
	if err != nil {
		s += ": " + err.Message
	}
	return s
}
