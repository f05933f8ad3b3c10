package libvirtrpc

import (
	"context"
	"errors"
	"slices"

	libvirt "github.com/digitalocean/go-libvirt"

	"github.com/qsnapd/qsnapd/driver"
)

// listMax is REMOTE_DOMAIN_SNAPSHOT_LIST_MAX: the longest list a reply
// may carry.
const listMax = 16384

func (s *Server) snapshotProcedures(t map[int32]procedure) {
	t[procDomainSnapshotCreateXML] = procedure{mutating: true, timeout: createTimeout, run: handler(s.snapshotCreateXML)}
	t[procDomainSnapshotDelete] = procedure{mutating: true, timeout: deleteTimeout, run: handler(s.snapshotDelete)}
	t[procDomainSnapshotLookupByName] = procedure{run: handler(s.snapshotLookupByName)}
	t[procDomainSnapshotGetXMLDesc] = procedure{run: handler(s.snapshotGetXMLDesc)}
	t[procDomainSnapshotCurrent] = procedure{run: handler(s.snapshotCurrent)}
	t[procDomainHasCurrentSnapshot] = procedure{run: handler(s.hasCurrentSnapshot)}
	t[procDomainSnapshotIsCurrent] = procedure{run: handler(s.snapshotIsCurrent)}
	t[procDomainSnapshotHasMetadata] = procedure{run: handler(s.snapshotHasMetadata)}
	t[procDomainSnapshotGetParent] = procedure{run: handler(s.snapshotGetParent)}
	t[procDomainListAllSnapshots] = procedure{run: handler(s.listAllSnapshots)}
	t[procDomainSnapshotListAllChildren] = procedure{run: handler(s.listAllChildren)}
	t[procDomainSnapshotNum] = procedure{run: handler(s.snapshotNum)}
	t[procDomainSnapshotListNames] = procedure{run: handler(s.snapshotListNames)}
	t[procDomainSnapshotNumChildren] = procedure{run: handler(s.snapshotNumChildren)}
	t[procDomainSnapshotListChildrenNames] = procedure{run: handler(s.snapshotListChildrenNames)}
}

// snapshot finds the snapshot a call names, with libvirt's words when
// it does not exist.
func (s *Server) snapshot(snap libvirt.DomainSnapshot) (driver.SnapshotRecord, error) {
	if _, err := s.lookup(snap.Dom); err != nil {
		return driver.SnapshotRecord{}, err
	}
	rec, err := s.drv.Snapshot(snap.Dom.Name, snap.Name)
	if errors.Is(err, driver.ErrNoSnapshot) {
		return rec, errNoSnapshot(snap.Name)
	}
	return rec, err
}

// errNoSnapshot is libvirtd's answer for a snapshot name it does not
// know.
func errNoSnapshot(name string) error {
	return errorf(errNoDomainSnapshot, fromQEMU, "no domain snapshot with matching name '%s'", name)
}

// remoteSnapshot names a snapshot of a domain on the wire.
func remoteSnapshot(dom libvirt.Domain, name string) libvirt.DomainSnapshot {
	return libvirt.DomainSnapshot{Name: name, Dom: dom}
}

// checkFlags refuses flags outside known, as libvirt's virCheckFlags.
func checkFlags(flags, known uint32, api string) error {
	if flags&^known != 0 {
		return errorf(errInvalidArg, fromDomainSnapshot, "unsupported flags (%#x) in function %s", flags&^known, api)
	}
	return nil
}

func (s *Server) snapshotCreateXML(ctx context.Context, _ *conn, args *libvirt.DomainSnapshotCreateXMLArgs) (libvirt.DomainSnapshotCreateXMLRet, error) {
	info, err := s.lookup(args.Dom)
	if err != nil {
		return libvirt.DomainSnapshotCreateXMLRet{}, err
	}
	// The caller's connection may end while the snapshot runs: the
	// snapshot goes on (the call's context is the server's, not the
	// connection's), as with the HTTP API.
	res, err := s.drv.CreateSnapshot(ctx, info.Name, driver.CreateRequest{XML: args.XMLDesc, Flags: driver.CreateFlags(args.Flags)})
	if err != nil {
		return libvirt.DomainSnapshotCreateXMLRet{}, err
	}
	return libvirt.DomainSnapshotCreateXMLRet{Snap: remoteSnapshot(s.remoteDomain(info), res.Name)}, nil
}

func (s *Server) snapshotDelete(ctx context.Context, _ *conn, args *libvirt.DomainSnapshotDeleteArgs) (struct{}, error) {
	if _, err := s.snapshot(args.Snap); err != nil {
		return struct{}{}, err
	}
	_, err := s.drv.DeleteSnapshot(ctx, args.Snap.Dom.Name, args.Snap.Name, driver.DeleteRequest{Flags: driver.DeleteFlags(args.Flags)})
	return struct{}{}, err
}

func (s *Server) snapshotLookupByName(_ context.Context, _ *conn, args *libvirt.DomainSnapshotLookupByNameArgs) (libvirt.DomainSnapshotLookupByNameRet, error) {
	if err := checkFlags(args.Flags, 0, "virDomainSnapshotLookupByName"); err != nil {
		return libvirt.DomainSnapshotLookupByNameRet{}, err
	}
	rec, err := s.snapshot(remoteSnapshot(args.Dom, args.Name))
	if err != nil {
		return libvirt.DomainSnapshotLookupByNameRet{}, err
	}
	return libvirt.DomainSnapshotLookupByNameRet{Snap: remoteSnapshot(args.Dom, rec.Name)}, nil
}

func (s *Server) snapshotGetXMLDesc(_ context.Context, _ *conn, args *libvirt.DomainSnapshotGetXMLDescArgs) (libvirt.DomainSnapshotGetXMLDescRet, error) {
	// SECURE: qsnapd's snapshot XML holds no secrets.
	if err := checkFlags(args.Flags, uint32(libvirt.DomainSnapshotXMLSecure), "virDomainSnapshotGetXMLDesc"); err != nil {
		return libvirt.DomainSnapshotGetXMLDescRet{}, err
	}
	rec, err := s.snapshot(args.Snap)
	return libvirt.DomainSnapshotGetXMLDescRet{XML: rec.XML}, err
}

// current is the domain's current snapshot's name; "" when it has none.
func (s *Server) current(dom libvirt.Domain) (string, error) {
	if _, err := s.lookup(dom); err != nil {
		return "", err
	}
	rec, err := s.drv.Current(dom.Name)
	if errors.Is(err, driver.ErrNoSnapshot) {
		return "", nil
	}
	return rec.Name, err
}

func (s *Server) snapshotCurrent(_ context.Context, _ *conn, args *libvirt.DomainSnapshotCurrentArgs) (libvirt.DomainSnapshotCurrentRet, error) {
	if err := checkFlags(args.Flags, 0, "virDomainSnapshotCurrent"); err != nil {
		return libvirt.DomainSnapshotCurrentRet{}, err
	}
	name, err := s.current(args.Dom)
	if err != nil {
		return libvirt.DomainSnapshotCurrentRet{}, err
	}
	if name == "" {
		return libvirt.DomainSnapshotCurrentRet{}, errorf(errNoDomainSnapshot, fromQEMU, "the domain does not have a current snapshot")
	}
	return libvirt.DomainSnapshotCurrentRet{Snap: remoteSnapshot(args.Dom, name)}, nil
}

func (s *Server) hasCurrentSnapshot(_ context.Context, _ *conn, args *libvirt.DomainHasCurrentSnapshotArgs) (libvirt.DomainHasCurrentSnapshotRet, error) {
	if err := checkFlags(args.Flags, 0, "virDomainHasCurrentSnapshot"); err != nil {
		return libvirt.DomainHasCurrentSnapshotRet{}, err
	}
	name, err := s.current(args.Dom)
	return libvirt.DomainHasCurrentSnapshotRet{Result: boolInt(name != "")}, err
}

func (s *Server) snapshotIsCurrent(_ context.Context, _ *conn, args *libvirt.DomainSnapshotIsCurrentArgs) (libvirt.DomainSnapshotIsCurrentRet, error) {
	if err := checkFlags(args.Flags, 0, "virDomainSnapshotIsCurrent"); err != nil {
		return libvirt.DomainSnapshotIsCurrentRet{}, err
	}
	if _, err := s.snapshot(args.Snap); err != nil {
		return libvirt.DomainSnapshotIsCurrentRet{}, err
	}
	name, err := s.current(args.Snap.Dom)
	return libvirt.DomainSnapshotIsCurrentRet{Current: boolInt(name == args.Snap.Name)}, err
}

// snapshotHasMetadata: every snapshot a client can name has metadata;
// one taken with NO_METADATA cannot be looked up.
func (s *Server) snapshotHasMetadata(_ context.Context, _ *conn, args *libvirt.DomainSnapshotHasMetadataArgs) (libvirt.DomainSnapshotHasMetadataRet, error) {
	if err := checkFlags(args.Flags, 0, "virDomainSnapshotHasMetadata"); err != nil {
		return libvirt.DomainSnapshotHasMetadataRet{}, err
	}
	_, err := s.snapshot(args.Snap)
	return libvirt.DomainSnapshotHasMetadataRet{Metadata: boolInt(err == nil)}, err
}

func (s *Server) snapshotGetParent(_ context.Context, _ *conn, args *libvirt.DomainSnapshotGetParentArgs) (libvirt.DomainSnapshotGetParentRet, error) {
	if err := checkFlags(args.Flags, 0, "virDomainSnapshotGetParent"); err != nil {
		return libvirt.DomainSnapshotGetParentRet{}, err
	}
	rec, err := s.snapshot(args.Snap)
	if err != nil {
		return libvirt.DomainSnapshotGetParentRet{}, err
	}
	if rec.Parent == "" {
		return libvirt.DomainSnapshotGetParentRet{}, errorf(errNoDomainSnapshot, fromQEMU, "snapshot '%s' does not have a parent", rec.Name)
	}
	return libvirt.DomainSnapshotGetParentRet{Snap: remoteSnapshot(args.Snap.Dom, rec.Parent)}, nil
}

// listing lists a domain's snapshots as libvirt's list calls do: all of
// them, or (from set) the children or descendants of one, filtered by
// flags. The names come in creation order, or parents first with
// TOPOLOGICAL.
func (s *Server) listing(dom libvirt.Domain, from string, flags uint32, api string) ([]string, error) {
	if err := checkFlags(flags, listFlagsKnown, api); err != nil {
		return nil, err
	}
	if _, err := s.lookup(dom); err != nil {
		return nil, err
	}
	recs, err := s.drv.Snapshots(dom.Name)
	if err != nil {
		return nil, err
	}
	if from != "" && !slices.ContainsFunc(recs, func(r driver.SnapshotRecord) bool { return r.Name == from }) {
		return nil, errNoSnapshot(from)
	}
	return filterSnapshots(recs, from, flags), nil
}

func (s *Server) listAllSnapshots(_ context.Context, _ *conn, args *libvirt.DomainListAllSnapshotsArgs) (libvirt.DomainListAllSnapshotsRet, error) {
	names, err := s.listing(args.Dom, "", args.Flags, "virDomainListAllSnapshots")
	if err != nil {
		return libvirt.DomainListAllSnapshotsRet{}, err
	}
	return snapshotList(args.Dom, names, args.NeedResults)
}

func (s *Server) listAllChildren(_ context.Context, _ *conn, args *libvirt.DomainSnapshotListAllChildrenArgs) (libvirt.DomainSnapshotListAllChildrenRet, error) {
	names, err := s.listing(args.Snapshot.Dom, args.Snapshot.Name, args.Flags, "virDomainSnapshotListAllChildren")
	if err != nil {
		return libvirt.DomainSnapshotListAllChildrenRet{}, err
	}
	ret, err := snapshotList(args.Snapshot.Dom, names, args.NeedResults)
	return libvirt.DomainSnapshotListAllChildrenRet(ret), err
}

// snapshotList is a list reply: the snapshots if the caller wants them,
// their number always.
func snapshotList(dom libvirt.Domain, names []string, needResults int32) (libvirt.DomainListAllSnapshotsRet, error) {
	if len(names) > listMax {
		return libvirt.DomainListAllSnapshotsRet{}, errorf(errInternal, fromRPC, "too many domain snapshots '%d' for limit '%d'", len(names), listMax)
	}
	ret := libvirt.DomainListAllSnapshotsRet{Ret: int32(len(names))}
	if needResults != 0 {
		ret.Snapshots = make([]libvirt.DomainSnapshot, len(names))
		for i, n := range names {
			ret.Snapshots[i] = remoteSnapshot(dom, n)
		}
	}
	return ret, nil
}

func (s *Server) snapshotNum(_ context.Context, _ *conn, args *libvirt.DomainSnapshotNumArgs) (libvirt.DomainSnapshotNumRet, error) {
	names, err := s.listing(args.Dom, "", args.Flags, "virDomainSnapshotNum")
	return libvirt.DomainSnapshotNumRet{Num: int32(len(names))}, err
}

func (s *Server) snapshotListNames(_ context.Context, _ *conn, args *libvirt.DomainSnapshotListNamesArgs) (libvirt.DomainSnapshotListNamesRet, error) {
	names, err := s.listing(args.Dom, "", args.Flags, "virDomainSnapshotListNames")
	if err != nil {
		return libvirt.DomainSnapshotListNamesRet{}, err
	}
	return libvirt.DomainSnapshotListNamesRet{Names: firstNames(names, args.Maxnames)}, nil
}

func (s *Server) snapshotNumChildren(_ context.Context, _ *conn, args *libvirt.DomainSnapshotNumChildrenArgs) (libvirt.DomainSnapshotNumChildrenRet, error) {
	names, err := s.listing(args.Snap.Dom, args.Snap.Name, args.Flags, "virDomainSnapshotNumChildren")
	return libvirt.DomainSnapshotNumChildrenRet{Num: int32(len(names))}, err
}

func (s *Server) snapshotListChildrenNames(_ context.Context, _ *conn, args *libvirt.DomainSnapshotListChildrenNamesArgs) (libvirt.DomainSnapshotListChildrenNamesRet, error) {
	names, err := s.listing(args.Snap.Dom, args.Snap.Name, args.Flags, "virDomainSnapshotListChildrenNames")
	if err != nil {
		return libvirt.DomainSnapshotListChildrenNamesRet{}, err
	}
	return libvirt.DomainSnapshotListChildrenNamesRet{Names: firstNames(names, args.Maxnames)}, nil
}

// firstNames keeps at most limit names (and never more than a reply
// may carry).
func firstNames(names []string, limit int32) []string {
	n := int(min(limit, listMax))
	if n < 0 {
		n = 0
	}
	if len(names) > n {
		names = names[:n]
	}
	return names
}
