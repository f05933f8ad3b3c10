package qmp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

var fuzzSeeds = []string{
	`{"return": {}, "id": "q1"}`,
	`{"error": {"class": "GenericError", "desc": "x"}, "id": "q1"}`,
	`{"event": "STOP", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}`,
	`{"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": []}}`,
	`{"return": null, "id": "q1"}`,
	`{"return": 1, "id": 1}`,
	`{"event": "", "data": null}`,
	`{"error": null}`,
	"\xff{\"return\": 3}",
	`[]`, `null`, `"str"`, `{"id": "q1"}`,
	"{\"return\": {}, \"id\": \"q1\"}\r\n{\"event\": \"X\"}\n",
}

// FuzzDecodeLine checks that any line decodes to one well-formed kind
// without panicking.
func FuzzDecodeLine(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		m, err := decodeLine(line)
		if err != nil {
			if m.kind != kindGarbage {
				t.Fatalf("error %v with kind %d", err, m.kind)
			}
			return
		}
		if !json.Valid(line) {
			t.Fatalf("invalid JSON %q decoded as kind %d", line, m.kind)
		}
		switch m.kind {
		case kindReply:
			if m.ret == nil && m.err == nil {
				t.Fatalf("reply with neither return nor error: %q", line)
			}
		case kindEvent:
			if m.event.Event == "" {
				t.Fatalf("event without a name: %q", line)
			}
		case kindGreeting:
		default:
			t.Fatalf("no kind for %q", line)
		}
	})
}

// FuzzSession feeds arbitrary peer output to a live session with one
// command in flight, and checks the reply matcher against a reference
// reading of the same bytes: the command gets the first reply bearing
// its id, or the disconnect error if there is none; a subscriber gets
// every event before the end; nothing hangs.
func FuzzSession(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s + "\n"))
	}
	f.Add([]byte("{\"event\":\"A\"}\n{\"return\":{},\"id\":\"q2\"}\ngarbage\n{\"return\":[1],\"id\":\"q1\"}\n"))
	const maxLine = 4096
	f.Fuzz(func(t *testing.T, stream []byte) {
		// What the session must make of the stream.
		wantReply, wantEvents, found := expectFromStream(stream, maxLine)

		clientEnd, peerEnd := net.Pipe()
		defer clientEnd.Close()
		c := New("fuzz", WithMaxLineBytes(maxLine), WithDefaultCeiling(10*time.Second))
		s := newSession(c, clientEnd)
		peerDone := make(chan error, 1)
		go func() {
			defer peerEnd.Close()
			r := bufio.NewReader(peerEnd)
			steps := []func() error{
				func() error {
					_, err := peerEnd.Write([]byte(`{"QMP":{"version":{},"capabilities":[]}}` + "\n"))
					return err
				},
				func() error { _, err := r.ReadBytes('\n'); return err },
				func() error {
					_, err := peerEnd.Write([]byte(`{"return":{},"id":"qsnapd-negotiate"}` + "\n"))
					return err
				},
				func() error { _, err := r.ReadBytes('\n'); return err }, // the command
				func() error { _, err := peerEnd.Write(stream); return err },
			}
			for _, step := range steps {
				if err := step(); err != nil {
					peerDone <- err
					return
				}
			}
			peerDone <- nil
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.handshake(ctx); err != nil {
			t.Fatalf("handshake: %v", err)
		}
		c.sess = s
		sub, err := c.Subscribe(Filter{})
		if err != nil {
			t.Fatal(err)
		}
		go s.readLoop()

		var got json.RawMessage
		err = c.Execute(ctx, "fuzz", nil, &got)
		switch {
		case !found:
			if !errors.Is(err, ErrDisconnected) {
				t.Fatalf("no reply in stream: got %v, want ErrDisconnected", err)
			}
		case wantReply.err != nil:
			var qe *Error
			if !errors.As(err, &qe) || qe.Class != wantReply.err.Class || qe.Desc != wantReply.err.Desc {
				t.Fatalf("got %v, want error %+v", err, wantReply.err)
			}
		default:
			if err != nil {
				// A return value that is valid JSON yet not decodable is
				// impossible for RawMessage; any error is a mismatch.
				t.Fatalf("got %v, want return %s", err, wantReply.ret)
			}
			if !bytes.Equal(got, wantReply.ret) {
				t.Fatalf("got return %s, want %s", got, wantReply.ret)
			}
		}
		// The session may hang up first (a line over the limit), which
		// the peer sees as a closed pipe.
		if err := <-peerDone; err != nil && !errors.Is(err, io.ErrClosedPipe) {
			t.Fatalf("peer: %v", err)
		}
		<-s.done
		n := 0
		for {
			if _, err := sub.Next(ctx); err != nil {
				if !errors.Is(err, ErrDisconnected) {
					t.Fatalf("subscription end: %v", err)
				}
				break
			}
			n++
		}
		if n != wantEvents {
			t.Fatalf("events: got %d, want %d", n, wantEvents)
		}
	})
}

// expectFromStream reads the stream as the session does: the first reply
// with id "q1", and the number of events up to the end of the stream.
func expectFromStream(stream []byte, maxLine int) (message, int, bool) {
	scan := bufio.NewScanner(bytes.NewReader(stream))
	scan.Buffer(make([]byte, 0, maxLine), maxLine)
	var first message
	found := false
	events := 0
	for scan.Scan() {
		m, err := decodeLine(scan.Bytes())
		if err != nil {
			continue
		}
		switch {
		case m.kind == kindEvent:
			events++
		case m.kind == kindReply && m.id == "q1" && !found:
			first, found = m, true
		}
	}
	return first, events, found
}
