package libvirtrpc

import (
	"context"
	"errors"
	"slices"
	"sync"

	libvirt "github.com/digitalocean/go-libvirt"
	"github.com/google/uuid"

	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/qmp"
)

// domainIDs numbers the domains as libvirt numbers running ones: from 1,
// in the order this server first saw them, stable for its run.
type domainIDs struct {
	mu   sync.Mutex
	next int32
	ids  map[string]int32
}

func newDomainIDs() *domainIDs { return &domainIDs{next: 1, ids: map[string]int32{}} }

func (d *domainIDs) of(name string) int32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	id, ok := d.ids[name]
	if !ok {
		id = d.next
		d.next++
		d.ids[name] = id
	}
	return id
}

// uuidNamespace derives a UUID for a domain whose QEMU was given none:
// stable for its name, so lookups by it work.
var uuidNamespace = uuid.MustParse("6f1c3d2e-8a4b-4c1e-9f0a-7b2d5e8c9a10")

// domainUUID is the domain's UUID: QEMU's (query-uuid), or one derived
// from its name when QEMU has the all-zero UUID of a VM started without
// -uuid.
func domainUUID(info driver.DomainInfo) uuid.UUID {
	if u, err := uuid.Parse(info.UUID); err == nil && u != uuid.Nil {
		return u
	}
	return uuid.NewSHA1(uuidNamespace, []byte(info.Name))
}

// remoteDomain is a domain as the wire names it: its name, UUID and id
// (-1 while its QEMU is not connected, as libvirt says of a domain that
// does not run).
func (s *Server) remoteDomain(info driver.DomainInfo) libvirt.Domain {
	id := int32(-1)
	if info.Connected {
		id = s.ids.of(info.Name)
	}
	return libvirt.Domain{Name: info.Name, UUID: libvirt.UUID(domainUUID(info)), ID: id}
}

// lookup finds the domain a call names, by name as libvirt's remote
// driver does: the name is what the client got from a lookup.
func (s *Server) lookup(dom libvirt.Domain) (driver.DomainInfo, error) {
	info, err := s.drv.DomainInfo(dom.Name)
	if errors.Is(err, driver.ErrNoDomain) {
		return driver.DomainInfo{}, errorf(errNoDomain, fromQEMU, "no domain with matching name '%s'", dom.Name)
	}
	return info, err
}

func (s *Server) domainProcedures(t map[int32]procedure) {
	t[procDomainLookupByName] = procedure{run: handler(s.lookupByName)}
	t[procDomainLookupByUUID] = procedure{run: handler(s.lookupByUUID)}
	t[procDomainLookupByID] = procedure{run: handler(s.lookupByID)}
	t[procConnectListAllDomains] = procedure{run: handler(s.listAllDomains)}
	t[procConnectNumOfDomains] = procedure{run: handler(func(context.Context, *conn, *struct{}) (libvirt.ConnectNumOfDomainsRet, error) {
		return libvirt.ConnectNumOfDomainsRet{Num: int32(len(s.domains(true)))}, nil
	})}
	t[procConnectListDomains] = procedure{run: handler(func(_ context.Context, _ *conn, args *libvirt.ConnectListDomainsArgs) (libvirt.ConnectListDomainsRet, error) {
		var ret libvirt.ConnectListDomainsRet
		for _, d := range s.domains(true) {
			if int32(len(ret.Ids)) >= args.Maxids {
				break
			}
			ret.Ids = append(ret.Ids, s.remoteDomain(d).ID)
		}
		return ret, nil
	})}
	t[procConnectNumOfDefinedDomains] = procedure{run: handler(func(context.Context, *conn, *struct{}) (libvirt.ConnectNumOfDefinedDomainsRet, error) {
		return libvirt.ConnectNumOfDefinedDomainsRet{Num: int32(len(s.domains(false)))}, nil
	})}
	t[procConnectListDefinedDomains] = procedure{run: handler(func(_ context.Context, _ *conn, args *libvirt.ConnectListDefinedDomainsArgs) (libvirt.ConnectListDefinedDomainsRet, error) {
		var ret libvirt.ConnectListDefinedDomainsRet
		for _, d := range s.domains(false) {
			if int32(len(ret.Names)) >= args.Maxnames {
				break
			}
			ret.Names = append(ret.Names, d.Name)
		}
		return ret, nil
	})}
	t[procDomainGetInfo] = procedure{run: handler(s.domainGetInfo)}
	t[procDomainGetState] = procedure{run: handler(s.domainGetState)}
	t[procDomainGetXMLDesc] = procedure{run: handler(s.domainGetXMLDesc)}
	t[procDomainGetMaxMemory] = procedure{run: handler(func(ctx context.Context, _ *conn, args *libvirt.DomainGetMaxMemoryArgs) (libvirt.DomainGetMaxMemoryRet, error) {
		info, err := s.domainInfo(ctx, args.Dom)
		return libvirt.DomainGetMaxMemoryRet{Memory: info.MaxMem}, err
	})}
	t[procDomainGetOsType] = procedure{run: handler(func(_ context.Context, _ *conn, args *libvirt.DomainGetOsTypeArgs) (libvirt.DomainGetOsTypeRet, error) {
		_, err := s.lookup(args.Dom)
		return libvirt.DomainGetOsTypeRet{Type: "hvm"}, err
	})}
	t[procDomainIsActive] = procedure{run: handler(func(_ context.Context, _ *conn, args *libvirt.DomainIsActiveArgs) (libvirt.DomainIsActiveRet, error) {
		info, err := s.lookup(args.Dom)
		return libvirt.DomainIsActiveRet{Active: boolInt(info.Connected)}, err
	})}
	// A registered domain survives qsnapd's restarts: persistent.
	t[procDomainIsPersistent] = procedure{run: handler(func(_ context.Context, _ *conn, args *libvirt.DomainIsPersistentArgs) (libvirt.DomainIsPersistentRet, error) {
		_, err := s.lookup(args.Dom)
		return libvirt.DomainIsPersistentRet{Persistent: 1}, err
	})}
	t[procDomainIsUpdated] = procedure{run: handler(func(_ context.Context, _ *conn, args *libvirt.DomainIsUpdatedArgs) (libvirt.DomainIsUpdatedRet, error) {
		_, err := s.lookup(args.Dom)
		return libvirt.DomainIsUpdatedRet{Updated: 0}, err
	})}
	// qsnapd starts no domain and saves no memory.
	t[procDomainGetAutostart] = procedure{run: handler(func(_ context.Context, _ *conn, args *libvirt.DomainGetAutostartArgs) (libvirt.DomainGetAutostartRet, error) {
		_, err := s.lookup(args.Dom)
		return libvirt.DomainGetAutostartRet{Autostart: 0}, err
	})}
	t[procDomainHasManagedSaveImage] = procedure{run: handler(func(_ context.Context, _ *conn, args *libvirt.DomainHasManagedSaveImageArgs) (libvirt.DomainHasManagedSaveImageRet, error) {
		_, err := s.lookup(args.Dom)
		return libvirt.DomainHasManagedSaveImageRet{Result: 0}, err
	})}
	t[procDomainGetSecurityLabel] = procedure{run: handler(func(_ context.Context, _ *conn, args *libvirt.DomainGetSecurityLabelArgs) (libvirt.DomainGetSecurityLabelRet, error) {
		_, err := s.lookup(args.Dom)
		return libvirt.DomainGetSecurityLabelRet{Label: cString(""), Enforcing: 0}, err
	})}
	t[procDomainFsfreeze] = procedure{mutating: true, timeout: freezeTimeout, run: handler(s.fsFreeze)}
	t[procDomainFsthaw] = procedure{mutating: true, timeout: freezeTimeout, run: handler(s.fsThaw)}
}

// domains lists the registered domains that are connected (active) or
// not.
func (s *Server) domains(active bool) []driver.DomainInfo {
	var out []driver.DomainInfo
	for _, d := range s.drv.Domains() {
		if d.Connected == active {
			out = append(out, d)
		}
	}
	return out
}

func (s *Server) lookupByName(_ context.Context, _ *conn, args *libvirt.DomainLookupByNameArgs) (libvirt.DomainLookupByNameRet, error) {
	info, err := s.lookup(libvirt.Domain{Name: args.Name})
	if err != nil {
		return libvirt.DomainLookupByNameRet{}, err
	}
	return libvirt.DomainLookupByNameRet{Dom: s.remoteDomain(info)}, nil
}

func (s *Server) lookupByUUID(_ context.Context, _ *conn, args *libvirt.DomainLookupByUUIDArgs) (libvirt.DomainLookupByUUIDRet, error) {
	for _, info := range s.drv.Domains() {
		if domainUUID(info) == uuid.UUID(args.UUID) {
			return libvirt.DomainLookupByUUIDRet{Dom: s.remoteDomain(info)}, nil
		}
	}
	return libvirt.DomainLookupByUUIDRet{}, errorf(errNoDomain, fromQEMU, "no domain with matching uuid '%s'", uuid.UUID(args.UUID))
}

func (s *Server) lookupByID(_ context.Context, _ *conn, args *libvirt.DomainLookupByIDArgs) (libvirt.DomainLookupByIDRet, error) {
	for _, info := range s.domains(true) {
		if d := s.remoteDomain(info); d.ID == args.ID {
			return libvirt.DomainLookupByIDRet{Dom: d}, nil
		}
	}
	return libvirt.DomainLookupByIDRet{}, errorf(errNoDomain, fromQEMU, "no domain with matching id %d", args.ID)
}

// virConnectListAllDomainsFlags, as libvirt-domain.h numbers them.
const (
	listActive        = 1 << 0
	listInactive      = 1 << 1
	listPersistent    = 1 << 2
	listTransient     = 1 << 3
	listRunning       = 1 << 4
	listPaused        = 1 << 5
	listShutoff       = 1 << 6
	listOther         = 1 << 7
	listManagedSave   = 1 << 8
	listNoManagedSave = 1 << 9
	listAutostart     = 1 << 10
	listNoAutostart   = 1 << 11
	listHasSnapshot   = 1 << 12
	listNoSnapshot    = 1 << 13
	listHasCheckpoint = 1 << 14
	listNoCheckpoint  = 1 << 15
)

// pick applies one of libvirt's filter pairs: with both or neither flag
// every domain passes, else those for which has matches the flag set.
func pick(flags, yes, no uint32, has bool) bool {
	switch flags & (yes | no) {
	case yes:
		return has
	case no:
		return !has
	}
	return true
}

func (s *Server) listAllDomains(ctx context.Context, _ *conn, args *libvirt.ConnectListAllDomainsArgs) (libvirt.ConnectListAllDomainsRet, error) {
	flags := uint32(args.Flags)
	var ret libvirt.ConnectListAllDomainsRet
	for _, info := range s.drv.Domains() {
		keep := pick(flags, listActive, listInactive, info.Connected) &&
			pick(flags, listPersistent, listTransient, true) &&
			pick(flags, listManagedSave, listNoManagedSave, false) &&
			pick(flags, listAutostart, listNoAutostart, false) &&
			pick(flags, listHasCheckpoint, listNoCheckpoint, false)
		if keep && flags&(listHasSnapshot|listNoSnapshot) != 0 {
			// One index entry says whether there is any.
			page, err := s.drv.ListSnapshots(info.Name, driver.ListQuery{Limit: 1})
			if err != nil && !errors.Is(err, driver.ErrNoDomain) {
				return ret, err
			}
			keep = pick(flags, listHasSnapshot, listNoSnapshot, len(page.Snapshots) > 0)
		}
		if keep && flags&(listRunning|listPaused|listShutoff|listOther) != 0 {
			state, _ := s.state(ctx, info)
			keep = flags&listRunning != 0 && state == libvirt.DomainRunning ||
				flags&listPaused != 0 && state == libvirt.DomainPaused ||
				flags&listShutoff != 0 && state == libvirt.DomainShutoff ||
				flags&listOther != 0 && !slices.Contains([]libvirt.DomainState{libvirt.DomainRunning, libvirt.DomainPaused, libvirt.DomainShutoff}, state)
		}
		if keep {
			ret.Domains = append(ret.Domains, s.remoteDomain(info))
		}
	}
	ret.Ret = uint32(len(ret.Domains))
	if args.NeedResults == 0 {
		ret.Domains = nil
	}
	return ret, nil
}

// state maps QEMU's run state to libvirt's domain state. A domain whose
// QEMU is not connected is shut off to libvirt's eyes. The reason is
// unknown: qsnapd did not see the state change happen.
func (s *Server) state(ctx context.Context, info driver.DomainInfo) (libvirt.DomainState, error) {
	if !info.Connected {
		return libvirt.DomainShutoff, nil
	}
	st, err := s.drv.RunState(ctx, info.Name)
	if err != nil {
		if errors.Is(err, driver.ErrDisconnected) {
			return libvirt.DomainShutoff, nil
		}
		return libvirt.DomainNostate, err
	}
	return runState(st), nil
}

// runState is libvirt's name for a query-status state.
func runState(rt qmp.Status) libvirt.DomainState {
	switch rt.Status {
	case "running":
		return libvirt.DomainRunning
	case "shutdown":
		return libvirt.DomainShutdown
	case "internal-error", "guest-panicked":
		return libvirt.DomainCrashed
	case "suspended":
		return libvirt.DomainPmsuspended
	}
	if rt.Running {
		return libvirt.DomainRunning
	}
	return libvirt.DomainPaused
}

func (s *Server) domainGetState(ctx context.Context, _ *conn, args *libvirt.DomainGetStateArgs) (libvirt.DomainGetStateRet, error) {
	info, err := s.lookup(args.Dom)
	if err != nil {
		return libvirt.DomainGetStateRet{}, err
	}
	state, err := s.state(ctx, info)
	return libvirt.DomainGetStateRet{State: int32(state)}, err
}

func (s *Server) domainInfo(ctx context.Context, dom libvirt.Domain) (libvirt.DomainGetInfoRet, error) {
	info, err := s.lookup(dom)
	if err != nil {
		return libvirt.DomainGetInfoRet{}, err
	}
	if !info.Connected {
		return libvirt.DomainGetInfoRet{State: uint8(libvirt.DomainShutoff)}, nil
	}
	rt, err := s.drv.Runtime(ctx, info.Name)
	if err != nil {
		if errors.Is(err, driver.ErrDisconnected) {
			return libvirt.DomainGetInfoRet{State: uint8(libvirt.DomainShutoff)}, nil
		}
		return libvirt.DomainGetInfoRet{}, err
	}
	kib := uint64(rt.MemoryBytes) >> 10
	// QEMU does not say how much CPU time its guest used: 0.
	return libvirt.DomainGetInfoRet{State: uint8(runState(rt.Status)), MaxMem: kib, Memory: kib, NrVirtCPU: uint16(rt.VCPUs)}, nil
}

func (s *Server) domainGetInfo(ctx context.Context, _ *conn, args *libvirt.DomainGetInfoArgs) (libvirt.DomainGetInfoRet, error) {
	return s.domainInfo(ctx, args.Dom)
}

func (s *Server) fsFreeze(ctx context.Context, _ *conn, args *libvirt.DomainFsfreezeArgs) (libvirt.DomainFsfreezeRet, error) {
	if args.Flags != 0 {
		return libvirt.DomainFsfreezeRet{}, errorf(errInvalidArg, fromDomain, "unsupported flags (%#x) in function virDomainFSFreeze", args.Flags)
	}
	if _, err := s.lookup(args.Dom); err != nil {
		return libvirt.DomainFsfreezeRet{}, err
	}
	n, err := s.drv.FSFreeze(ctx, args.Dom.Name, args.Mountpoints, 0) // 0: the daemon's max-freeze
	return libvirt.DomainFsfreezeRet{Filesystems: int32(n)}, err
}

func (s *Server) fsThaw(ctx context.Context, _ *conn, args *libvirt.DomainFsthawArgs) (libvirt.DomainFsthawRet, error) {
	if args.Flags != 0 {
		return libvirt.DomainFsthawRet{}, errorf(errInvalidArg, fromDomain, "unsupported flags (%#x) in function virDomainFSThaw", args.Flags)
	}
	if _, err := s.lookup(args.Dom); err != nil {
		return libvirt.DomainFsthawRet{}, err
	}
	if len(args.Mountpoints) > 0 {
		// The agent thaws every filesystem at once (guest-fsfreeze-thaw
		// takes no list), as libvirt's QEMU driver says too.
		return libvirt.DomainFsthawRet{}, errorf(errOperationUnsupp, fromQEMU, "specifying mountpoints is not supported")
	}
	n, err := s.drv.FSThaw(ctx, args.Dom.Name)
	return libvirt.DomainFsthawRet{Filesystems: int32(n)}, err
}

func boolInt(b bool) int32 {
	if b {
		return 1
	}
	return 0
}
