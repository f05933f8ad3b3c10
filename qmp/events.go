package qmp

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/digitalocean/go-qemu/qmp"
)

// Event is go-qemu's QMP event type, so events flow unchanged to code
// written against qmp.Monitor.
type Event = qmp.Event

// Filter selects events for a Subscription. Empty fields match all.
type Filter struct {
	// Names are event names, such as "BLOCK_JOB_READY".
	Names []string
	// ID matches the event's data "id", "device" or "node-name": a job
	// id, a drive or qdev id, or a node name.
	ID string
}

func (f Filter) match(ev qmp.Event) bool {
	if len(f.Names) > 0 {
		found := false
		for _, n := range f.Names {
			if n == ev.Event {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	if f.ID == "" {
		return true
	}
	for _, key := range []string{"id", "device", "node-name"} {
		if v, ok := ev.Data[key].(string); ok && v == f.ID {
			return true
		}
	}
	return false
}

// Subscription receives the events that match its filter, in order.
//
// Delivery never blocks the reader: each subscription queues without
// bound. Dropping is not an option because a lost BLOCK_JOB_COMPLETED
// would leave a rollback waiting for its deadline; memory stays small
// because subscriptions are filtered and live for one operation. Close
// a subscription when done with it.
type Subscription struct {
	filter Filter
	sess   *session

	mu     sync.Mutex
	queue  []qmp.Event
	ready  chan struct{} // signalled when queue grows or the stream ends
	ended  bool
	endErr error
}

// Subscribe starts queueing matching events now, so a caller can
// subscribe before sending the command whose events it awaits.
func (c *Client) Subscribe(f Filter) (*Subscription, error) {
	s := c.session()
	if s == nil {
		return nil, fmt.Errorf("qmp subscribe: %w", ErrDisconnected)
	}
	sub := &Subscription{filter: f, sess: s, ready: make(chan struct{}, 1)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, fmt.Errorf("qmp subscribe: %w", s.err)
	}
	s.subs[sub] = struct{}{}
	return sub, nil
}

func (sub *Subscription) push(ev qmp.Event) {
	sub.mu.Lock()
	sub.queue = append(sub.queue, ev)
	sub.mu.Unlock()
	sub.signal()
}

func (sub *Subscription) end(err error) {
	sub.mu.Lock()
	sub.ended, sub.endErr = true, err
	sub.mu.Unlock()
	sub.signal()
}

func (sub *Subscription) signal() {
	select {
	case sub.ready <- struct{}{}:
	default:
	}
}

// Next returns the next queued event, waiting for one until ctx ends.
// Once the session has ended and the queue is drained, it returns the
// session's error (wrapping ErrDisconnected).
func (sub *Subscription) Next(ctx context.Context) (qmp.Event, error) {
	for {
		sub.mu.Lock()
		if len(sub.queue) > 0 {
			ev := sub.queue[0]
			sub.queue[0] = qmp.Event{}
			sub.queue = sub.queue[1:]
			sub.mu.Unlock()
			return ev, nil
		}
		ended, err := sub.ended, sub.endErr
		sub.mu.Unlock()
		if ended {
			return qmp.Event{}, fmt.Errorf("qmp event: %w", err)
		}
		select {
		case <-sub.ready:
		case <-ctx.Done():
			return qmp.Event{}, fmt.Errorf("qmp event: %w", ctxErr(ctx))
		}
	}
}

// Wait returns the first event for which match returns true, discarding
// the events before it.
func (sub *Subscription) Wait(ctx context.Context, match func(qmp.Event) bool) (qmp.Event, error) {
	for {
		ev, err := sub.Next(ctx)
		if err != nil || match == nil || match(ev) {
			return ev, err
		}
	}
}

// Len is the number of queued events.
func (sub *Subscription) Len() int {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	return len(sub.queue)
}

// Close stops delivery and frees the queue.
func (sub *Subscription) Close() {
	s := sub.sess
	s.mu.Lock()
	delete(s.subs, sub)
	s.mu.Unlock()
	sub.mu.Lock()
	sub.queue = nil
	if !sub.ended {
		sub.ended, sub.endErr = true, ErrSubscriptionClosed
	}
	sub.mu.Unlock()
	sub.signal()
}

// Latch notes whether an event that matches its filter arrived, or the
// session ended, since it was made. Unlike a Subscription it keeps no
// events, so it can live as long as the connection. The reader sets it
// before it hands over any later reply, so a caller that checks it
// after a command's reply knows of every matching event QEMU sent
// before that reply.
type Latch struct {
	filter Filter
	sess   *session
	fired  atomic.Bool
}

// Latch starts watching for a matching event now.
func (c *Client) Latch(f Filter) (*Latch, error) {
	s := c.session()
	if s == nil {
		return nil, fmt.Errorf("qmp latch: %w", ErrDisconnected)
	}
	l := &Latch{filter: f, sess: s}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, fmt.Errorf("qmp latch: %w", s.err)
	}
	s.latches[l] = struct{}{}
	return l, nil
}

// Fired reports whether a matching event arrived or the session ended.
func (l *Latch) Fired() bool { return l.fired.Load() }

// Close stops watching; Fired reports true from then on.
func (l *Latch) Close() {
	s := l.sess
	s.mu.Lock()
	delete(s.latches, l)
	s.mu.Unlock()
	l.fired.Store(true)
}
