package dbusapi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/godbus/dbus/v5"
	"go.uber.org/zap"

	"github.com/qsnapd/qsnapd/driver"
)

// The logind call, and what the lock says in `systemd-inhibit --list`.
const (
	logindName    = "org.freedesktop.login1"
	logindPath    = dbus.ObjectPath("/org/freedesktop/login1")
	logindInhibit = "org.freedesktop.login1.Manager.Inhibit"

	inhibitWhat    = "shutdown:sleep"
	inhibitWho     = "qsnapd"
	inhibitWhy     = "guest filesystems frozen or snapshot in progress"
	inhibitMode    = "delay"
	inhibitTimeout = 5 * time.Second
)

// Inhibitor holds a logind delay lock on shutdown and sleep while it has
// references: one per snapshot in flight and per frozen guest, when used
// as driver.Events. The D-Bus calls run on a goroutine of its own, so
// neither Acquire nor Release waits for logind. Without logind it does
// nothing.
type Inhibitor struct {
	driver.NopEvents
	conn *dbus.Conn
	log  *zap.Logger

	mu      sync.Mutex
	refs    int
	frozen  map[string]bool // domains counted in refs
	lock    *os.File        // the lock's fd; nil when not held
	worker  chan struct{}   // closed when the running worker ends; nil if none
	absent  bool            // logind's absence was logged
	failing bool            // Inhibit failed; no retry until refs drops to 0
}

var _ driver.Events = (*Inhibitor)(nil)

// NewInhibitor takes locks from logind on conn, the system bus.
func NewInhibitor(conn *dbus.Conn, log *zap.Logger) *Inhibitor {
	if log == nil {
		log = zap.NewNop()
	}
	return &Inhibitor{conn: conn, log: log, frozen: map[string]bool{}}
}

// Acquire adds a reference; the first one takes the lock.
func (in *Inhibitor) Acquire() { in.add(1) }

// Release drops a reference; the last one releases the lock.
func (in *Inhibitor) Release() { in.add(-1) }

// OperationsInFlight counts snapshots in flight.
func (in *Inhibitor) OperationsInFlight(delta int) { in.add(delta) }

// GuestFrozen counts each domain once, whatever the order of events
// across a restart.
func (in *Inhibitor) GuestFrozen(domain, _ string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if !in.frozen[domain] {
		in.frozen[domain] = true
		in.addLocked(1)
	}
}

// GuestThawed releases a domain's reference, once.
func (in *Inhibitor) GuestThawed(domain string, _ time.Duration) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.frozen[domain] {
		delete(in.frozen, domain)
		in.addLocked(-1)
	}
}

func (in *Inhibitor) add(delta int) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.addLocked(delta)
}

func (in *Inhibitor) addLocked(delta int) {
	if in.refs+delta < 0 {
		in.log.Warn("inhibitor released more often than acquired")
		delta = -in.refs
	}
	in.refs += delta
	if in.refs == 0 {
		in.failing = false
	}
	in.reconcile()
}

// reconcile starts the worker if the lock is not as the references want it
// and no worker is running. The caller holds mu.
func (in *Inhibitor) reconcile() {
	if in.worker == nil && in.wantLock() != (in.lock != nil) {
		in.worker = make(chan struct{})
		go in.work(in.worker)
	}
}

func (in *Inhibitor) wantLock() bool { return in.refs > 0 && !in.failing }

// work takes or releases the lock until the state matches the
// references: a Release during an Inhibit call closes the fd it returns.
func (in *Inhibitor) work(done chan struct{}) {
	defer close(done)
	in.mu.Lock()
	defer in.mu.Unlock()
	for {
		switch want, have := in.wantLock(), in.lock != nil; {
		case want == have:
			in.worker = nil
			return
		case have:
			in.lock.Close()
			in.lock = nil
			in.log.Debug("inhibitor lock released")
		default:
			in.mu.Unlock()
			lock, err := in.inhibit()
			in.mu.Lock()
			if err != nil {
				in.failed(err)
				continue
			}
			in.lock = lock
			in.log.Debug("inhibitor lock taken", zap.String("what", inhibitWhat), zap.String("mode", inhibitMode))
		}
	}
}

// failed logs a failed Inhibit and gives up until all references are
// gone. The caller holds mu.
func (in *Inhibitor) failed(err error) {
	in.failing = true
	var de dbus.Error
	if errors.As(err, &de) && (de.Name == "org.freedesktop.DBus.Error.ServiceUnknown" || de.Name == "org.freedesktop.DBus.Error.NameHasNoOwner") {
		if !in.absent {
			in.absent = true
			in.log.Debug("logind not on the bus; going on without inhibitor locks", zap.Error(err))
		}
		return
	}
	in.log.Warn("inhibitor lock not taken", zap.Error(err))
}

// inhibit asks logind for a lock.
func (in *Inhibitor) inhibit() (*os.File, error) {
	ctx, cancel := context.WithTimeout(context.Background(), inhibitTimeout)
	defer cancel()
	var fd dbus.UnixFD
	err := in.conn.Object(logindName, logindPath).CallWithContext(ctx, logindInhibit, 0,
		inhibitWhat, inhibitWho, inhibitWhy, inhibitMode).Store(&fd)
	if err != nil {
		return nil, fmt.Errorf("logind Inhibit: %w", err)
	}
	return os.NewFile(uintptr(fd), "logind-inhibitor"), nil
}
