package qmp

import (
	"encoding/json"
	"errors"

	"github.com/digitalocean/go-qemu/qmp"
)

// kind says what a line from the peer is.
type kind int

const (
	kindGarbage kind = iota
	kindGreeting
	kindReply
	kindEvent
)

// wireError is the "error" member of a QMP reply.
type wireError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

// message is one decoded line from a QMP peer.
type message struct {
	kind     kind
	id       string // reply id; empty when absent or not a string
	ret      json.RawMessage
	err      *wireError
	event    qmp.Event
	greeting Greeting
}

// envelope has every top-level member a QMP server line may carry.
type envelope struct {
	QMP       *Greeting       `json:"QMP"`
	ID        json.RawMessage `json:"id"`
	Return    json.RawMessage `json:"return"`
	Error     *wireError      `json:"error"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

var errGarbage = errors.New("not a QMP message")

// decodeLine classifies one line. A line that is not a JSON object of a
// known shape is garbage: the caller skips it rather than ending the
// session, because QEMU itself never sends one and a peer that does is
// better survived than trusted.
func decodeLine(line []byte) (message, error) {
	var env envelope
	if err := json.Unmarshal(line, &env); err != nil {
		return message{}, errGarbage
	}
	switch {
	case env.QMP != nil:
		return message{kind: kindGreeting, greeting: *env.QMP}, nil
	case env.Return != nil || env.Error != nil:
		m := message{kind: kindReply, ret: env.Return, err: env.Error}
		if len(env.ID) > 0 {
			// Our ids are strings; any other id is not ours and stays empty.
			var id string
			if json.Unmarshal(env.ID, &id) == nil {
				m.id = id
			}
		}
		if m.err == nil && m.ret == nil {
			return message{}, errGarbage
		}
		return m, nil
	case env.Event != "":
		ev := qmp.Event{Event: env.Event}
		ev.Timestamp.Seconds = env.Timestamp.Seconds
		ev.Timestamp.Microseconds = env.Timestamp.Microseconds
		if len(env.Data) > 0 && string(env.Data) != "null" {
			if err := json.Unmarshal(env.Data, &ev.Data); err != nil {
				return message{}, errGarbage
			}
		}
		return message{kind: kindEvent, event: ev}, nil
	}
	return message{}, errGarbage
}
