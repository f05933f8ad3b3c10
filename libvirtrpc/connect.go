package libvirtrpc

import (
	"context"
	"encoding/binary"
	"os"
	"strconv"
	"strings"

	libvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"
)

// The connection's identity, as libvirtd's QEMU driver gives it.
const (
	// connectURI is the only URI served: the QEMU driver's system
	// instance, which is what the endpoint stands in for.
	connectURI = "qemu:///system"
	// hypervisorType is virConnectGetType's answer.
	hypervisorType = "QEMU"
	// libVersion is the libvirt version whose protocol is served
	// (9.0.0): clients decide on it which calls to try.
	libVersion = 9_000_000
)

// Driver features (virDrvFeature) a client probes with
// CONNECT_SUPPORTS_FEATURE; every other is answered "no".
const (
	featureProgramKeepalive = 10 // VIR_DRV_FEATURE_PROGRAM_KEEPALIVE
	// featureCloseCallback is VIR_DRV_FEATURE_REMOTE_CLOSE_CALLBACK: the
	// client may ask to hear when the hypervisor connection closes.
	featureCloseCallback = 14
)

// errNoConnect is VIR_ERR_NO_CONNECT, for a URI no driver here serves.
const errNoConnect = 5

func (s *Server) connectProcedures(t map[int32]procedure) {
	t[procAuthList] = procedure{beforeOpen: true, run: handler(s.authList)}
	t[procConnectSupportsFeature] = procedure{beforeOpen: true, run: handler(s.supportsFeature)}
	t[procConnectOpen] = procedure{beforeOpen: true, run: optionalFirst(handler(s.open))}
	t[procConnectClose] = procedure{beforeOpen: true, run: handler(s.close)}
	// The close callback: the "hypervisor connection" is the daemon
	// itself, which closes only with the socket, as the client sees
	// anyway; registering is accepted and no event is ever sent.
	t[procConnectRegisterCloseCallback] = procedure{run: handler(func(context.Context, *conn, *struct{}) (struct{}, error) {
		return struct{}{}, nil
	})}
	t[procConnectUnregisterCloseCallback] = procedure{run: handler(func(context.Context, *conn, *struct{}) (struct{}, error) {
		return struct{}{}, nil
	})}
	t[procConnectGetType] = procedure{run: handler(func(context.Context, *conn, *struct{}) (libvirt.ConnectGetTypeRet, error) {
		return libvirt.ConnectGetTypeRet{Type: hypervisorType}, nil
	})}
	t[procConnectGetVersion] = procedure{run: handler(s.getVersion)}
	t[procConnectGetLibVersion] = procedure{run: handler(func(context.Context, *conn, *struct{}) (libvirt.ConnectGetLibVersionRet, error) {
		return libvirt.ConnectGetLibVersionRet{LibVer: libVersion}, nil
	})}
	t[procConnectGetHostname] = procedure{run: handler(func(context.Context, *conn, *struct{}) (libvirt.ConnectGetHostnameRet, error) {
		name, err := os.Hostname()
		if err != nil {
			return libvirt.ConnectGetHostnameRet{}, errorf(errInternal, fromNone, "cannot get the host name: %v", err)
		}
		return libvirt.ConnectGetHostnameRet{Hostname: name}, nil
	})}
	t[procConnectGetUri] = procedure{run: handler(func(context.Context, *conn, *struct{}) (libvirt.ConnectGetUriRet, error) {
		return libvirt.ConnectGetUriRet{Uri: connectURI}, nil
	})}
	t[procConnectGetCapabilities] = procedure{run: handler(s.capabilities)}
	// A unix socket on the host: what libvirtd says of its own.
	t[procConnectIsSecure] = procedure{run: handler(func(context.Context, *conn, *struct{}) (libvirt.ConnectIsSecureRet, error) {
		return libvirt.ConnectIsSecureRet{Secure: 1}, nil
	})}
	// No security driver labels the domains qsnapd serves: the model
	// "none", DOI "0", as libvirtd says without one (C strings, their
	// NULs sent).
	t[procNodeGetSecurityModel] = procedure{run: handler(func(context.Context, *conn, *struct{}) (libvirt.NodeGetSecurityModelRet, error) {
		return libvirt.NodeGetSecurityModelRet{Model: cString("none"), Doi: cString("0")}, nil
	})}
}

// authList offers no authentication: the socket's permissions and the
// peer's credentials decide, at CONNECT_OPEN.
func (s *Server) authList(context.Context, *conn, *struct{}) (libvirt.AuthListRet, error) {
	return libvirt.AuthListRet{Types: []libvirt.AuthType{libvirt.AuthType(0)}}, nil // REMOTE_AUTH_NONE
}

func (s *Server) supportsFeature(_ context.Context, c *conn, args *libvirt.ConnectSupportsFeatureArgs) (libvirt.ConnectSupportsFeatureRet, error) {
	// Before CONNECT_OPEN libvirtd answers only the keepalive probe.
	if args.Feature != featureProgramKeepalive && !c.isOpen() {
		return libvirt.ConnectSupportsFeatureRet{}, errNotOpen
	}
	switch args.Feature {
	case featureProgramKeepalive, featureCloseCallback:
		return libvirt.ConnectSupportsFeatureRet{Supported: 1}, nil
	}
	return libvirt.ConnectSupportsFeatureRet{Supported: 0}, nil
}

// optionalFirst reads the first word of a call's arguments, an optional
// value's discriminant, as libvirtd's xdr_bool does: any word but 0 says
// the value is there. go-libvirt opens with 0x01000000 in that word (it
// writes it as three bytes 1, 0, 0 and a pad), which the XDR decoder
// would take for the length of an array of 16M names.
func optionalFirst(run func(context.Context, *conn, []byte) (any, error)) func(context.Context, *conn, []byte) (any, error) {
	return func(ctx context.Context, c *conn, body []byte) (any, error) {
		if len(body) >= 4 && binary.BigEndian.Uint32(body) > 1 {
			binary.BigEndian.PutUint32(body, 1) // the body is the call's own
		}
		return run(ctx, c, body)
	}
}

// open checks the URI and the peer: on the read-write socket only root
// and the allowed users and groups may open, as with the HTTP API.
func (s *Server) open(_ context.Context, c *conn, args *libvirt.ConnectOpenArgs) (struct{}, error) {
	name := ""
	if len(args.Name) > 0 {
		name = args.Name[0]
	}
	switch strings.TrimSuffix(name, "/") {
	case "", connectURI, "qemu://":
	default:
		return struct{}{}, errorf(errNoConnect, fromNone, "no connection driver available for %s", name)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.opened {
		return struct{}{}, errorf(errInternal, fromRPC, "connection already open")
	}
	if !c.readOnly && !s.cfg.Access.Allows(c.peer) {
		if args.Flags&libvirt.ConnectRo == 0 {
			return struct{}{}, errorf(errOperationDenied, fromNone,
				"the read-write libvirt socket is for root and the users and groups qsnapd allows (uid %d is not among them); a read-only connection is open to all", c.peer.UID)
		}
	}
	if args.Flags&libvirt.ConnectRo != 0 {
		c.readOnly = true
	}
	c.opened = true
	return struct{}{}, nil
}

func (s *Server) close(_ context.Context, c *conn, _ *struct{}) (struct{}, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.opened = false
	return struct{}{}, nil
}

// getVersion is the QEMU version, as libvirt encodes it
// (major*1,000,000 + minor*1,000 + micro): the newest of the connected
// domains' QEMUs, or 0 when none is connected.
func (s *Server) getVersion(context.Context, *conn, *struct{}) (libvirt.ConnectGetVersionRet, error) {
	var best uint64
	for _, d := range s.drv.Domains() {
		if v := versionNumber(d.QEMUVersion); v > best {
			best = v
		}
	}
	return libvirt.ConnectGetVersionRet{HvVer: best}, nil
}

// versionNumber turns "7.2.0" (or "7.2.0 (Debian ...)") into 7002000.
func versionNumber(v string) uint64 {
	v, _, _ = strings.Cut(strings.TrimSpace(v), " ")
	var n uint64
	parts := strings.SplitN(v, ".", 3)
	for i, scale := range []uint64{1_000_000, 1_000, 1} {
		if i >= len(parts) {
			break
		}
		p, err := strconv.ParseUint(parts[i], 10, 32)
		if err != nil {
			return 0
		}
		n += p * scale
	}
	return n
}

// capabilities is a minimal capabilities document: the host's
// architecture and the one guest type served.
func (s *Server) capabilities(context.Context, *conn, *struct{}) (libvirt.ConnectGetCapabilitiesRet, error) {
	caps := libvirtxml.Caps{
		Host: libvirtxml.CapsHost{CPU: &libvirtxml.CapsHostCPU{Arch: "x86_64"}},
		Guests: []libvirtxml.CapsGuest{{
			OSType: "hvm",
			Arch:   libvirtxml.CapsGuestArch{Name: "x86_64", WordSize: "64", Domains: []libvirtxml.CapsGuestDomain{{Type: "qemu"}, {Type: "kvm"}}},
		}},
	}
	doc, err := caps.Marshal()
	if err != nil {
		return libvirt.ConnectGetCapabilitiesRet{}, errorf(errInternal, fromNone, "capabilities: %v", err)
	}
	return libvirt.ConnectGetCapabilitiesRet{Capabilities: doc}, nil
}

// cString is a C string as libvirt's char arrays carry it: its bytes
// and the terminating NUL.
func cString(s string) []int8 {
	out := make([]int8, len(s)+1)
	for i := range len(s) {
		out[i] = int8(s[i])
	}
	return out
}
