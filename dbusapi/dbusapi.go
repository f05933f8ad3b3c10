// Package dbusapi exports qsnapd's API on D-Bus and holds a logind
// inhibitor while guests are frozen or snapshots run.
package dbusapi

import (
	"context"
	"fmt"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/introspect"
	"go.uber.org/zap"

	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/internal/opid"
)

// Where the API lives on the bus.
const (
	BusName    = "io.github.qsnapd"
	ObjectPath = dbus.ObjectPath("/io/github/qsnapd")
	Interface  = "io.github.qsnapd.Manager1"
)

// Ceilings of the method calls: D-Bus callers cannot cancel, so each
// call gets its own.
const (
	createTimeout = 10 * time.Minute
	freezeTimeout = 2 * time.Minute
	// A merge copies data: gigabytes under a bandwidth cap take long.
	deleteTimeout = time.Hour
)

// Driver is what the D-Bus API needs of the snapshot engine.
type Driver interface {
	Domains() []driver.DomainInfo
	Snapshots(domain string) ([]driver.SnapshotRecord, error)
	CreateSnapshot(ctx context.Context, domain string, req driver.CreateRequest) (*driver.CreateResult, error)
	DeleteSnapshot(ctx context.Context, domain, name string, req driver.DeleteRequest) (*driver.DeleteResult, error)
	FSFreeze(ctx context.Context, domain string, mountpoints []string, hold time.Duration) (int, error)
	FSThaw(ctx context.Context, domain string) (int, error)
}

// DomainInfo is one entry of ListDomains, the D-Bus struct (ssbb).
type DomainInfo struct {
	Name      string
	QMP       string
	Connected bool
	Frozen    bool
}

// SnapshotInfo is one entry of ListSnapshots, the D-Bus struct (sss);
// Parent is empty for a root snapshot.
type SnapshotInfo struct {
	Name   string
	Parent string
	State  string
}

// Service serves Manager1 on one connection.
type Service struct {
	conn   *dbus.Conn
	drv    Driver
	log    *zap.Logger
	ctx    context.Context // the parent of every call's context
	cancel context.CancelFunc
}

// Export serves the API at ObjectPath and takes BusName, which must not
// be owned by anyone else.
func Export(conn *dbus.Conn, drv Driver, log *zap.Logger) (*Service, error) {
	if log == nil {
		log = zap.NewNop()
	}
	s := &Service{conn: conn, drv: drv, log: log}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	methods := map[string]any{
		"ListDomains":    s.listDomains,
		"ListSnapshots":  s.listSnapshots,
		"CreateSnapshot": s.createSnapshot,
		"DeleteSnapshot": s.deleteSnapshot,
		"FSFreeze":       s.fsFreeze,
		"FSThaw":         s.fsThaw,
	}
	// Export before taking the name, so that no call finds it empty.
	if err := conn.ExportMethodTable(methods, ObjectPath, Interface); err != nil {
		return nil, fmt.Errorf("export %s: %w", Interface, err)
	}
	if err := conn.Export(introspect.Introspectable(introspection), ObjectPath, introspectableIface); err != nil {
		s.unexport()
		return nil, fmt.Errorf("export introspection: %w", err)
	}
	reply, err := conn.RequestName(BusName, dbus.NameFlagDoNotQueue)
	if err == nil && reply != dbus.RequestNameReplyPrimaryOwner {
		err = fmt.Errorf("owned by another connection (reply %d)", reply)
	}
	if err != nil {
		s.unexport()
		return nil, fmt.Errorf("request bus name %s: %w", BusName, err)
	}
	return s, nil
}

// Close gives up the name and the object; calls in progress see their
// context cancelled. The connection stays open.
func (s *Service) Close() error {
	s.cancel()
	s.unexport()
	if _, err := s.conn.ReleaseName(BusName); err != nil {
		return fmt.Errorf("release bus name %s: %w", BusName, err)
	}
	return nil
}

// unexport removes the objects; godbus fails it only for an invalid
// path, and ObjectPath is valid.
func (s *Service) unexport() {
	_ = s.conn.Export(nil, ObjectPath, Interface)
	_ = s.conn.Export(nil, ObjectPath, introspectableIface)
}

// Events returns the driver.Events that emits the API's signals.
func (s *Service) Events() driver.Events {
	return signals{conn: s.conn, log: s.log}
}

func (s *Service) listDomains() ([]DomainInfo, *dbus.Error) {
	doms := s.drv.Domains()
	out := make([]DomainInfo, len(doms))
	for i, d := range doms {
		out[i] = DomainInfo{Name: d.Name, QMP: d.QMP, Connected: d.Connected, Frozen: d.Freeze.Frozen}
	}
	return out, nil
}

func (s *Service) listSnapshots(sender dbus.Sender, domain string) ([]SnapshotInfo, *dbus.Error) {
	recs, err := s.drv.Snapshots(domain)
	if err != nil {
		return nil, s.fail("ListSnapshots", sender, err)
	}
	out := make([]SnapshotInfo, len(recs))
	for i, r := range recs {
		out[i] = SnapshotInfo{Name: r.Name, Parent: r.Parent, State: r.State}
	}
	return out, nil
}

func (s *Service) createSnapshot(sender dbus.Sender, domain, xml string, flags uint32) (string, string, *dbus.Error) {
	ctx, cancel := context.WithTimeout(s.ctx, createTimeout)
	defer cancel()
	res, err := s.drv.CreateSnapshot(ctx, domain, driver.CreateRequest{XML: xml, Flags: driver.CreateFlags(flags)})
	if err != nil {
		return "", "", s.fail("CreateSnapshot", sender, err)
	}
	return res.Name, res.XML, nil
}

// deleteSnapshot deletes a snapshot as virDomainSnapshotDelete does,
// flags and all, under an operation id of its own, which it returns
// with the snapshots deleted, deepest first; the SnapshotDeleted signal
// carries the same id.
func (s *Service) deleteSnapshot(sender dbus.Sender, domain, name string, flags uint32) (string, []string, *dbus.Error) {
	ctx, cancel := context.WithTimeout(s.ctx, deleteTimeout)
	defer cancel()
	id := opid.New()
	res, err := s.drv.DeleteSnapshot(ctx, domain, name, driver.DeleteRequest{Flags: driver.DeleteFlags(flags), OpID: id})
	if err != nil {
		return "", nil, s.fail("DeleteSnapshot", sender, err)
	}
	if res.OpID != "" {
		id = res.OpID
	}
	deleted := res.Deleted
	if deleted == nil {
		deleted = []string{}
	}
	return id, deleted, nil
}

func (s *Service) fsFreeze(sender dbus.Sender, domain string, mountpoints []string) (int32, *dbus.Error) {
	ctx, cancel := context.WithTimeout(s.ctx, freezeTimeout)
	defer cancel()
	n, err := s.drv.FSFreeze(ctx, domain, mountpoints, 0) // 0: the daemon's max-freeze
	if err != nil {
		return 0, s.fail("FSFreeze", sender, err)
	}
	return int32(n), nil
}

func (s *Service) fsThaw(sender dbus.Sender, domain string) (int32, *dbus.Error) {
	ctx, cancel := context.WithTimeout(s.ctx, freezeTimeout)
	defer cancel()
	n, err := s.drv.FSThaw(ctx, domain)
	if err != nil {
		return 0, s.fail("FSThaw", sender, err)
	}
	return int32(n), nil
}

// fail turns a driver error into the caller's D-Bus error, logging only
// what the caller cannot act on.
func (s *Service) fail(method string, sender dbus.Sender, err error) *dbus.Error {
	name := ErrorName(err)
	if name == ErrorInternalError {
		s.log.Error("D-Bus call failed with an internal error", zap.String("method", method),
			zap.String("sender", string(sender)), zap.Error(err))
	}
	return dbus.NewError(name, []any{err.Error()})
}

// signals emits the API's signals from driver events.
type signals struct {
	driver.NopEvents
	conn *dbus.Conn
	log  *zap.Logger
}

func (s signals) SnapshotFinished(e driver.SnapshotEvent) {
	if e.Result == driver.ResultSuccess {
		s.emit("SnapshotCreated", e.Domain, e.Name)
		return
	}
	msg := e.Result
	if e.Err != nil {
		msg = e.Err.Error()
	}
	s.emit("SnapshotFailed", e.Domain, e.Name, msg)
}

// SnapshotDeleted signals every delete that got past validation, merge
// or metadata only, with its result: success, failure, cancelled or
// partial.
func (s signals) SnapshotDeleted(e driver.DeleteEvent) {
	names := e.Names
	if names == nil {
		names = []string{}
	}
	s.emit("SnapshotDeleted", e.Domain, names, e.OpID, e.Result)
}

func (s signals) GuestFrozen(domain, owner string) { s.emit("GuestFrozen", domain, owner) }

func (s signals) GuestThawed(domain string, frozenFor time.Duration) {
	s.emit("GuestThawed", domain, frozenFor.Seconds())
}

// emit writes one signal to the bus socket; it does not wait for anyone.
func (s signals) emit(name string, args ...any) {
	if err := s.conn.Emit(ObjectPath, Interface+"."+name, args...); err != nil {
		s.log.Warn("D-Bus signal not sent", zap.String("signal", name), zap.Error(err))
	}
}
