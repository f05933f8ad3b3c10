package libvirtrpc

import (
	"context"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
)

// The procedures served, named as go-libvirt names them (a test pins
// each number to its name in go-libvirt's table).
const (
	procConnectOpen                     int32 = 1
	procConnectClose                    int32 = 2
	procConnectGetType                  int32 = 3
	procConnectGetVersion               int32 = 4
	procConnectGetCapabilities          int32 = 7
	procDomainGetXMLDesc                int32 = 14
	procDomainGetAutostart              int32 = 15
	procDomainGetInfo                   int32 = 16
	procDomainGetMaxMemory              int32 = 17
	procDomainGetOsType                 int32 = 19
	procConnectListDefinedDomains       int32 = 21
	procDomainLookupByID                int32 = 22
	procDomainLookupByName              int32 = 23
	procDomainLookupByUUID              int32 = 24
	procConnectNumOfDefinedDomains      int32 = 25
	procConnectListDomains              int32 = 37
	procConnectNumOfDomains             int32 = 51
	procConnectGetHostname              int32 = 59
	procConnectSupportsFeature          int32 = 60
	procAuthList                        int32 = 66
	procConnectGetUri                   int32 = 110
	procDomainGetSecurityLabel          int32 = 121
	procNodeGetSecurityModel            int32 = 122
	procConnectIsSecure                 int32 = 149
	procDomainIsActive                  int32 = 150
	procDomainIsPersistent              int32 = 151
	procConnectGetLibVersion            int32 = 157
	procDomainHasManagedSaveImage       int32 = 183
	procDomainSnapshotCreateXML         int32 = 185
	procDomainSnapshotGetXMLDesc        int32 = 186
	procDomainSnapshotNum               int32 = 187
	procDomainSnapshotListNames         int32 = 188
	procDomainSnapshotLookupByName      int32 = 189
	procDomainHasCurrentSnapshot        int32 = 190
	procDomainSnapshotCurrent           int32 = 191
	procDomainSnapshotDelete            int32 = 193
	procDomainIsUpdated                 int32 = 202
	procDomainGetState                  int32 = 212
	procDomainSnapshotGetParent         int32 = 244
	procDomainSnapshotNumChildren       int32 = 246
	procDomainSnapshotListChildrenNames int32 = 247
	procDomainSnapshotIsCurrent         int32 = 271
	procDomainSnapshotHasMetadata       int32 = 272
	procConnectListAllDomains           int32 = 273
	procDomainListAllSnapshots          int32 = 274
	procDomainSnapshotListAllChildren   int32 = 275
	procDomainFsfreeze                  int32 = 335
	procDomainFsthaw                    int32 = 336
	procConnectRegisterCloseCallback    int32 = 360
	procConnectUnregisterCloseCallback  int32 = 361
)

// procedure is one served procedure.
type procedure struct {
	// run decodes the arguments, calls the engine and returns what is
	// to be encoded as the reply.
	run func(ctx context.Context, c *conn, body []byte) (any, error)
	// mutating procedures are refused on a read-only connection.
	mutating bool
	// beforeOpen procedures may come before CONNECT_OPEN.
	beforeOpen bool
	// timeout is the call's ceiling; 0 is defaultTimeout.
	timeout time.Duration
}

// Call ceilings. A snapshot is bounded by its freeze deadline and QMP
// ceilings; a merge copies data, for as long as that takes.
const (
	defaultTimeout = time.Minute
	createTimeout  = 10 * time.Minute
	deleteTimeout  = time.Hour
	freezeTimeout  = 2 * time.Minute
)

// handler makes a procedure's run from a typed function: A is
// go-libvirt's argument type (struct{} for none), R its return type
// (struct{} for none).
func handler[A, R any](f func(ctx context.Context, c *conn, args *A) (R, error)) func(context.Context, *conn, []byte) (any, error) {
	return func(ctx context.Context, c *conn, body []byte) (any, error) {
		var args A
		if err := decodeBody(body, &args); err != nil {
			c.log.Info("libvirt call with undecodable arguments", zap.Error(err))
			return nil, errDecode
		}
		ret, err := f(ctx, c, &args)
		if err != nil {
			return nil, err
		}
		return &ret, nil
	}
}

// procName names a procedure for logs: go-libvirt's name, or its number.
func procName(p int32) string {
	if name, ok := procNames[p]; ok {
		return name
	}
	return "procedure-" + strconv.Itoa(int(p))
}

// apiName is the libvirt API a procedure implements, as libvirt names
// it in its "not supported" and "read only" errors:
// DomainSnapshotCreateXML is virDomainSnapshotCreateXML.
func apiName(p int32) string {
	if name, ok := apiNames[p]; ok {
		return name
	}
	return "vir" + procNames[p]
}

// apiNames are the mutating procedures (whose name a read-only refusal
// says) that go-libvirt spells otherwise than libvirt's C API: it
// capitalizes the protocol's words, the API has its own acronyms.
var apiNames = map[int32]string{
	procDomainFsfreeze: "virDomainFSFreeze",
	procDomainFsthaw:   "virDomainFSThaw",
}

// dispatch runs one call of the remote program.
func (c *conn) dispatch(h header, body []byte) (any, error) {
	if !c.authenticate(h.Procedure) {
		return nil, errNotAuthenticated
	}
	p, served := c.s.procs[h.Procedure]
	if !served {
		name, known := procNames[h.Procedure]
		if !known {
			return nil, errorf(errRPC, fromRPC, "unknown procedure: %d", h.Procedure)
		}
		if !c.isOpen() {
			return nil, errNotOpen
		}
		return nil, errorf(errNoSupport, unsupportedFrom(name), "%s", apiName(h.Procedure))
	}
	if !p.beforeOpen && !c.isOpen() {
		return nil, errNotOpen
	}
	if p.mutating && c.isReadOnly() {
		return nil, errorf(errOperationDenied, unsupportedFrom(procNames[h.Procedure]), "read only access prevents %s", apiName(h.Procedure))
	}
	timeout := p.timeout
	if timeout == 0 {
		timeout = defaultTimeout
	}
	ctx, cancel := context.WithTimeout(c.s.ctx, timeout)
	defer cancel()
	return p.run(ctx, c, body)
}

// errDecode answers a call whose arguments do not decode, as libvirtd.
var errDecode = errorf(errRPC, fromRPC, "Unable to decode message payload")

// errNotAuthenticated answers any call but AUTH_LIST before it, as
// libvirtd: with REMOTE_AUTH_NONE, AUTH_LIST itself authenticates.
var errNotAuthenticated = errorf(errRPC, fromRPC, "authentication required")

// errNotOpen answers a call that needs an open connection before
// CONNECT_OPEN, as libvirtd does.
var errNotOpen = errorf(errInternal, fromRPC, "hypervisor connection not open")

// unsupportedFrom is the error domain of libvirt's public API file that
// reports an unsupported call: VIR_FROM_DOMAIN_SNAPSHOT for snapshot
// calls, VIR_FROM_DOMAIN for other domain calls, VIR_FROM_NONE else.
func unsupportedFrom(name string) int32 {
	switch {
	case strings.HasPrefix(name, "DomainSnapshot"), strings.Contains(name, "Snapshot"):
		return fromDomainSnapshot
	case strings.HasPrefix(name, "Domain"):
		return fromDomain
	}
	return fromNone
}

// authenticate reports whether a call may run: once AUTH_LIST was
// called, any; before, AUTH_LIST alone.
func (c *conn) authenticate(proc int32) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if proc == procAuthList {
		c.authenticated = true
	}
	return c.authenticated
}

func (c *conn) isOpen() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.opened
}

func (c *conn) isReadOnly() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readOnly
}

// procedures is the table of served procedures.
func (s *Server) procedures() map[int32]procedure {
	t := map[int32]procedure{}
	s.connectProcedures(t)
	s.domainProcedures(t)
	s.snapshotProcedures(t)
	return t
}
