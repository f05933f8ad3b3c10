package libvirtrpc_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"

	libvirt "github.com/digitalocean/go-libvirt"
)

// The answers below are libvirtd 9.0's to the same frames, as recorded
// in the project's notes on libvirt's RPC (bad input), where they are
// reasonable for qsnapd; the differences are said where they are.

// checkBadInput sends what no stock client sends. Each input gets
// libvirtd's answer (an error reply, silence, or the connection closed)
// and leaves the endpoint as it was: a fresh connection works, nothing
// changed, and a snapshot can still be taken.
func checkBadInput(t *testing.T) {
	e := startEndpoint(t, endpointOpts{})
	e.vm("vm1", 2)
	e.snapshot(t, "vm1", "base") // for the delete that read-only access must refuse
	dom := e.openRaw(t, e.rw, 0).lookup("vm1")
	snap := libvirt.DomainSnapshot{Name: "base", Dom: dom}

	for i, tc := range []struct {
		name string
		run  func(t *testing.T)
	}{
		{"truncated frame then close", func(t *testing.T) {
			c := dialRaw(t, e.rw)
			c.write(frameLen(100, rpcHeader{Program: remoteProgram, Version: 1, Procedure: procAuthList}, []byte{1, 2, 3}))
			// The endpoint can only notice; the checks after each case
			// tell whether it minded.
			c.nc.Close()
		}},
		{"truncated frame then half-close", func(t *testing.T) {
			c := dialRaw(t, e.rw)
			c.write(frameLen(28, rpcHeader{Program: remoteProgram, Version: 1}, nil)[:10])
			if err := c.nc.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if err := c.closed(); err != nil {
				t.Error(err)
			}
		}},
		{"length one over the maximum", func(t *testing.T) {
			c := dialRaw(t, e.rw)
			c.write(frameLen(4+32<<20+1, rpcHeader{Program: remoteProgram, Version: 1, Procedure: procAuthList, Serial: 1}, nil))
			if err := c.closed(); err != nil {
				t.Error(err)
			}
		}},
		{"length 0x7fffffff", func(t *testing.T) {
			c := dialRaw(t, e.rw)
			c.write(frameLen(0x7fffffff, rpcHeader{Program: remoteProgram, Version: 1, Procedure: procAuthList, Serial: 1}, nil))
			if err := c.closed(); err != nil {
				t.Error(err)
			}
		}},
		{"length at the maximum is a frame", func(t *testing.T) {
			// libvirtd ignores what follows a call's arguments and answers
			// AUTH_LIST; qsnapd refuses the trailing bytes, but the frame
			// is read whole and the connection goes on.
			c := dialRaw(t, e.rw)
			c.write(frameLen(4+32<<20, rpcHeader{Program: remoteProgram, Version: 1, Procedure: procAuthList, Serial: 1}, make([]byte, 32<<20-24)))
			wantError(t, "32 MiB AUTH_LIST", c.reply(procAuthList, 1, nil), 39, 7, "Unable to decode message payload")
			c.serial = 1
			if err := c.open(0); err != nil {
				t.Errorf("open after it: %v", err)
			}
		}},
		{"length below the length word", func(t *testing.T) {
			c := dialRaw(t, e.rw)
			c.write(binary.BigEndian.AppendUint32(nil, 3))
			if err := c.closed(); err != nil {
				t.Error(err)
			}
		}},
		{"length below the header", func(t *testing.T) {
			c := dialRaw(t, e.rw)
			c.write(frameLen(27, rpcHeader{Program: remoteProgram, Version: 1, Procedure: procAuthList, Serial: 1}, nil)[:27])
			if err := c.closed(); err != nil {
				t.Error(err)
			}
		}},
		{"wrong program", func(t *testing.T) {
			c := dialRaw(t, e.rw)
			c.write(frame(rpcHeader{Program: 0x12345678, Version: 1, Procedure: 1, Serial: 7}, nil))
			wantForeign(t, c, rpcHeader{Program: 0x12345678, Version: 1, Procedure: 1, Type: typeReply, Serial: 7, Status: statusError},
				"Cannot find program 305419896 version 1")
			stillServes(t, c)
		}},
		{"wrong version", func(t *testing.T) {
			c := dialRaw(t, e.rw)
			c.write(frame(rpcHeader{Program: remoteProgram, Version: 2, Procedure: 1, Serial: 7}, nil))
			wantForeign(t, c, rpcHeader{Program: remoteProgram, Version: 2, Procedure: 1, Type: typeReply, Serial: 7, Status: statusError},
				"Cannot find program 536903814 version 2")
			stillServes(t, c)
		}},
		{"unknown procedure", func(t *testing.T) {
			c := e.openRaw(t, e.rw, 0)
			wantError(t, "procedure 9999", c.call(9999, nil, nil), 39, 7, "unknown procedure: 9999")
			wantError(t, "procedure -1", c.call(-1, nil, nil), 39, 7, "unknown procedure: -1")
			stillServes(t, c)
		}},
		{"known but unserved procedure", func(t *testing.T) {
			c := e.openRaw(t, e.rw, 0)
			wantError(t, "DOMAIN_CREATE", c.call(procDomainCreate, &libvirt.DomainCreateArgs{Dom: dom}, nil),
				3, 20, "this function is not supported by the connection driver: virDomainCreate")
			stillServes(t, c)
		}},
		{"call before AUTH_LIST", func(t *testing.T) {
			// libvirtd 9.0 answers every call before AUTH_LIST so, the
			// open included, and keeps the connection.
			c := dialRaw(t, e.rw)
			wantError(t, "OPEN", c.call(procConnectOpen, &libvirt.ConnectOpenArgs{Name: libvirt.OptString{"qemu:///system"}}, nil),
				39, 7, "authentication required")
			wantError(t, "GET_TYPE", c.call(procConnectGetType, nil, nil), 39, 7, "authentication required")
			c.mustCall(procAuthList, nil, nil)
			if err := c.call(procConnectOpen, &libvirt.ConnectOpenArgs{Name: libvirt.OptString{"qemu:///system"}}, nil); err != nil {
				t.Fatalf("open after: %v", err)
			}
			wantError(t, "second OPEN", c.call(procConnectOpen, &libvirt.ConnectOpenArgs{Name: libvirt.OptString{"qemu:///system"}}, nil),
				1, 7, "internal error: connection already open")
			stillServes(t, c)
		}},
		{"call before CONNECT_OPEN", func(t *testing.T) {
			c := dialRaw(t, e.rw)
			c.mustCall(procAuthList, nil, nil)
			// libvirtd 9.0 says "hypervisor connection not open".
			wantError(t, "GET_TYPE", c.call(procConnectGetType, nil, nil), 1, 7, "internal error: hypervisor connection not open")
			wantError(t, "SNAPSHOT_CREATE_XML", c.call(procDomainSnapshotCreateXML, createArgs(dom, "early"), nil),
				1, 7, "internal error: hypervisor connection not open")
			wantError(t, "DOMAIN_CREATE", c.call(procDomainCreate, &libvirt.DomainCreateArgs{Dom: dom}, nil),
				1, 7, "internal error: hypervisor connection not open")
			if err := c.call(procConnectOpen, &libvirt.ConnectOpenArgs{Name: libvirt.OptString{"qemu:///system"}}, nil); err != nil {
				t.Fatalf("open after: %v", err)
			}
			stillServes(t, c)
		}},
		{"garbage arguments", func(t *testing.T) {
			c := e.openRaw(t, e.rw, 0)
			good := encode(t, &libvirt.DomainLookupByNameArgs{Name: "vm1"})
			longString := binary.BigEndian.AppendUint32(nil, 1000) // a 1000-byte string in 7 bytes
			longString = append(longString, "vm1"...)
			for _, g := range []struct {
				name string
				proc int32
				body []byte
			}{
				{"random bytes", procDomainLookupByName, []byte("\xde\xad\xbe\xef\x8b\x1c\x00\x42\xff\xfe\x07")},
				{"string past the body", procDomainLookupByName, longString},
				{"a negative string length", procDomainLookupByName, bytes.Repeat([]byte{0xff}, 8)},
				{"trailing bytes", procDomainLookupByName, append(good, 0, 0, 0, 0)},
				{"arguments cut short", procDomainSnapshotCreateXML, encode(t, createArgs(dom, "cut"))[:30]},
				{"arguments to a call that takes none", procConnectGetType, good},
				{"no arguments to a call that takes some", procConnectOpen, nil},
			} {
				// libvirtd ignores trailing bytes; qsnapd refuses them.
				wantError(t, g.name, c.reply(g.proc, c.send(g.proc, g.body), nil), 39, 7, "Unable to decode message payload")
			}
			stillServes(t, c)
		}},
		{"mutating calls on the read-only socket", func(t *testing.T) {
			c := e.openRaw(t, e.ro, 0) // the socket makes the connection read-only
			wantDenied(t, c, dom, snap)
			stillServes(t, c)
		}},
		{"mutating calls after a read-only open", func(t *testing.T) {
			c := e.openRaw(t, e.rw, connectRO)
			wantDenied(t, c, dom, snap)
			stillServes(t, c)
		}},
		{"a call passing descriptors", func(t *testing.T) {
			// CALL_WITH_FDS: answered (none of the procedures served takes
			// descriptors), so the client does not wait for ever.
			c := e.openRaw(t, e.rw, 0)
			c.write(frame(rpcHeader{Program: remoteProgram, Version: 1, Procedure: procDomainSnapshotCreateXML, Type: 3, Serial: 77},
				encode(t, createArgs(dom, "fds"))))
			wantForeign(t, c, rpcHeader{Program: remoteProgram, Version: 1, Procedure: procDomainSnapshotCreateXML, Type: typeReply, Serial: 77, Status: statusError},
				"passing file descriptors is not supported")
			stillServes(t, c)
		}},
		{"replies and messages from the client", func(t *testing.T) {
			c := e.openRaw(t, e.rw, 0)
			for _, h := range []rpcHeader{
				{Program: remoteProgram, Version: 1, Procedure: procDomainSnapshotCreateXML, Type: typeReply, Serial: 100},
				{Program: remoteProgram, Version: 1, Procedure: procDomainSnapshotCreateXML, Type: typeReply, Serial: 101, Status: statusError},
				{Program: remoteProgram, Version: 1, Procedure: procDomainSnapshotCreateXML, Type: typeMessage, Serial: 102},
				{Program: remoteProgram, Version: 1, Procedure: procDomainSnapshotCreateXML, Type: 4, Serial: 104}, // STREAM
				{Program: 0x12345678, Version: 1, Procedure: 1, Type: typeReply, Serial: 105},
				{Program: keepaliveProgram, Version: 1, Procedure: 2, Type: typeMessage}, // a PONG nobody asked for
			} {
				c.write(frame(h, encode(t, createArgs(dom, fmt.Sprintf("bogus%d", h.Serial)))))
			}
			// The next frame is the answer to the next call: none of the
			// above got one.
			stillServes(t, c)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.state("vm1")
			tc.run(t)
			e.openRaw(t, e.rw, 0).lookup("vm1")
			if after := e.state("vm1"); after != before {
				t.Errorf("state changed:\nbefore %s\nafter  %s", before, after)
			}
			e.snapshot(t, "vm1", fmt.Sprintf("after%d", i))
		})
	}
}

// wantForeign reads the error reply to a call of another program or
// version, whose header echoes the call's.
func wantForeign(t *testing.T, c *rawConn, want rpcHeader, msg string) {
	t.Helper()
	h, body, err := c.read()
	if err != nil {
		t.Fatalf("reply: %v", err)
	}
	if h != want {
		t.Fatalf("reply header %+v, want %+v", h, want)
	}
	var we wireError
	if err := decodeWire(body, &we); err != nil {
		t.Fatalf("remote_error: %v", err)
	}
	wantError(t, "foreign program", &we, 39, 7, msg)
}

// stillServes checks that a connection goes on after bad input: the
// next frame it reads answers its next call, and the call works.
func stillServes(t *testing.T, c *rawConn) {
	t.Helper()
	if c.serial == 0 { // never opened
		if err := c.open(0); err != nil {
			t.Fatalf("open: %v", err)
		}
	}
	var ret libvirt.ConnectGetTypeRet
	c.mustCall(procConnectGetType, nil, &ret)
	if ret.Type != "QEMU" {
		t.Errorf("GET_TYPE: %q", ret.Type)
	}
}

// wantDenied makes the mutating calls that read-only access refuses,
// with libvirt's words: the public API's name, and the error domain of
// the API's file (libvirt-domain-snapshot.c, libvirt-domain.c).
func wantDenied(t *testing.T, c *rawConn, dom libvirt.Domain, snap libvirt.DomainSnapshot) {
	t.Helper()
	wantError(t, "SNAPSHOT_CREATE_XML", c.call(procDomainSnapshotCreateXML, createArgs(dom, "denied"), nil),
		29, 35, "operation forbidden: read only access prevents virDomainSnapshotCreateXML")
	wantError(t, "FSFREEZE", c.call(procDomainFsfreeze, &libvirt.DomainFsfreezeArgs{Dom: dom}, nil),
		29, 20, "operation forbidden: read only access prevents virDomainFSFreeze")
	wantError(t, "SNAPSHOT_DELETE", c.call(procDomainSnapshotDelete, &libvirt.DomainSnapshotDeleteArgs{Snap: snap}, nil),
		29, 35, "operation forbidden: read only access prevents virDomainSnapshotDelete")
}
