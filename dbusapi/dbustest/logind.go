package dbustest

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"golang.org/x/sync/errgroup"
)

// Logind owns org.freedesktop.login1 and answers Manager.Inhibit with
// the write end of a pipe, as logind does with a FIFO: the test sees
// the lock end when the caller closes its fd.
type Logind struct {
	conn    *dbus.Conn
	loop    errgroup.Group // serves calls
	readers errgroup.Group // wait for each lock's end
	mu      sync.Mutex
	locks   []*Lock
	delay   time.Duration
}

// Lock is one Inhibit call.
type Lock struct {
	What, Who, Why, Mode string
	closed               chan struct{}
	r                    *os.File // the pipe's read end
}

// Closed is closed when the caller has closed the lock's fd.
func (l *Lock) Closed() <-chan struct{} { return l.closed }

// StartLogind serves a fake logind on bus until the test ends.
//
// It reads its connection's messages raw (godbus's Eavesdrop), so that it
// can close its copy of each fd right after the reply is sent; an
// exported method could not know when that is.
func StartLogind(tb testing.TB, bus *Bus) *Logind {
	tb.Helper()
	l := &Logind{conn: bus.Conn(tb)}
	reply, err := l.conn.RequestName("org.freedesktop.login1", dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		tb.Fatalf("own org.freedesktop.login1: reply %d, %v", reply, err)
	}
	msgs := make(chan *dbus.Message, 64)
	l.conn.Eavesdrop(msgs)
	l.loop.Go(func() error {
		for msg := range msgs { // closed with the connection
			if msg.Type == dbus.TypeMethodCall {
				if err := l.serve(msg); err != nil {
					return err
				}
			}
		}
		return nil
	})
	tb.Cleanup(func() {
		l.conn.Close()
		err := l.loop.Wait()
		for _, lock := range l.Locks() {
			lock.r.Close() // ends the wait for locks still held
		}
		if err := errors.Join(err, l.readers.Wait()); err != nil {
			tb.Errorf("fake logind: %v", err)
		}
	})
	return l
}

// Locks returns the Inhibit calls so far, in order, answered or not.
func (l *Logind) Locks() []*Lock {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Lock(nil), l.locks...)
}

// SetDelay makes each Inhibit reply wait d, so that a test can act while
// a call is in progress.
func (l *Logind) SetDelay(d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.delay = d
}

func (l *Logind) serve(call *dbus.Message) error {
	iface, _ := call.Headers[dbus.FieldInterface].Value().(string)
	member, _ := call.Headers[dbus.FieldMember].Value().(string)
	reply := &dbus.Message{Type: dbus.TypeMethodReply, Headers: map[dbus.HeaderField]dbus.Variant{
		dbus.FieldDestination: call.Headers[dbus.FieldSender],
		dbus.FieldReplySerial: dbus.MakeVariant(call.Serial()),
	}}
	lock := new(Lock)
	if iface != "org.freedesktop.login1.Manager" || member != "Inhibit" ||
		dbus.Store(call.Body, &lock.What, &lock.Who, &lock.Why, &lock.Mode) != nil {
		reply.Type = dbus.TypeError
		reply.Headers[dbus.FieldErrorName] = dbus.MakeVariant("org.freedesktop.DBus.Error.UnknownMethod")
		reply.Headers[dbus.FieldSignature] = dbus.MakeVariant(dbus.SignatureOf(""))
		reply.Body = []any{fmt.Sprintf("fake logind has no %s.%s%s", iface, member, call.Headers[dbus.FieldSignature])}
		return l.conn.Send(reply, nil).Err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	reply.Headers[dbus.FieldSignature] = dbus.MakeVariant(dbus.SignatureOf(dbus.UnixFD(0)))
	reply.Body = []any{dbus.UnixFD(w.Fd())}
	// Recorded on arrival: a test can act while the reply is delayed.
	lock.closed, lock.r = make(chan struct{}), r
	l.mu.Lock()
	l.locks = append(l.locks, lock)
	delay := l.delay
	l.mu.Unlock()
	time.Sleep(delay)
	err = l.conn.Send(reply, nil).Err // sendmsg is done: the fd is in flight
	w.Close()
	if err != nil {
		return fmt.Errorf("reply to Inhibit: %w", err)
	}
	l.readers.Go(func() error {
		_, err := io.Copy(io.Discard, r) // EOF once every copy of w is closed
		if errors.Is(err, os.ErrClosed) {
			return nil
		}
		close(lock.closed)
		return err
	})
	return nil
}
