package libvirtrpc_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	xdr "github.com/davecgh/go-xdr/xdr2"
	libvirt "github.com/digitalocean/go-libvirt"
)

// The wire's numbers, written out here rather than taken from the
// package: the tests check the server against libvirt's protocol, not
// against itself.
const (
	remoteProgram    uint32 = 0x20008086
	keepaliveProgram uint32 = 0x6b656570
	typeCall         uint32 = 0
	typeReply        uint32 = 1
	typeMessage      uint32 = 2
	statusOK         uint32 = 0
	statusError      uint32 = 1

	procConnectOpen             int32 = 1
	procConnectGetType          int32 = 3
	procDomainCreate            int32 = 9
	procDomainLookupByName      int32 = 23
	procAuthList                int32 = 66
	procDomainSnapshotCreateXML int32 = 185
	procDomainSnapshotDelete    int32 = 193
	procDomainListAllSnapshots  int32 = 274
	procConnectListAllDomains   int32 = 273
	procDomainGetInfo           int32 = 16
	procDomainFsfreeze          int32 = 335

	connectRO = 1 // VIR_CONNECT_RO
)

// rpcHeader is virNetMessageHeader.
type rpcHeader struct {
	Program, Version uint32
	Procedure        int32
	Type, Serial     uint32
	Status           uint32
}

// wireError is remote_error, as a reply whose status is error carries it.
type wireError struct {
	Code    int32
	Domain  int32
	Message libvirt.OptString
	Level   int32
	Dom     libvirt.OptDomain
	Str1    libvirt.OptString
	Str2    libvirt.OptString
	Str3    libvirt.OptString
	Int1    int32
	Int2    int32
	Net     libvirt.OptNetwork
}

func (e *wireError) Error() string {
	msg := ""
	if len(e.Message) > 0 {
		msg = e.Message[0]
	}
	return fmt.Sprintf("code %d domain %d: %s", e.Code, e.Domain, msg)
}

// frame encodes a message whose length word is the real one.
func frame(h rpcHeader, body []byte) []byte {
	return frameLen(uint32(28+len(body)), h, body)
}

// frameLen encodes a message with the length word given, true or not.
func frameLen(n uint32, h rpcHeader, body []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, n)
	for _, w := range []uint32{h.Program, h.Version, uint32(h.Procedure), h.Type, h.Serial, h.Status} {
		b = binary.BigEndian.AppendUint32(b, w)
	}
	return append(b, body...)
}

// encode is the XDR encoding of a procedure's arguments.
func encode(t testing.TB, args any) []byte {
	t.Helper()
	if args == nil {
		return nil
	}
	var b bytes.Buffer
	if _, err := xdr.Marshal(&b, args); err != nil {
		t.Fatalf("encode %T: %v", args, err)
	}
	return b.Bytes()
}

// rawConn is a libvirt client that writes whatever frames a test gives
// it and reads replies as they come.
type rawConn struct {
	t      testing.TB
	nc     net.Conn
	r      *bufio.Reader
	serial uint32
}

func dialRaw(t testing.TB, socket string) *rawConn {
	t.Helper()
	nc, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &rawConn{t: t, nc: nc, r: bufio.NewReader(nc)}
}

// write sends bytes as they are.
func (c *rawConn) write(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// send writes a call of the remote program with body as its arguments
// and returns its serial.
func (c *rawConn) send(proc int32, body []byte) uint32 {
	c.t.Helper()
	c.serial++
	c.write(frame(rpcHeader{Program: remoteProgram, Version: 1, Procedure: proc, Type: typeCall, Serial: c.serial}, body))
	return c.serial
}

// read reads one frame within a few seconds.
func (c *rawConn) read() (rpcHeader, []byte, error) {
	_ = c.nc.SetReadDeadline(time.Now().Add(20 * time.Second))
	var lenBuf [4]byte
	if _, err := io.ReadFull(c.r, lenBuf[:]); err != nil {
		return rpcHeader{}, nil, err
	}
	n := binary.BigEndian.Uint32(lenBuf[:])
	if n < 28 || n > 1<<20 {
		return rpcHeader{}, nil, fmt.Errorf("reply length %d", n)
	}
	msg := make([]byte, n-4)
	if _, err := io.ReadFull(c.r, msg); err != nil {
		return rpcHeader{}, nil, err
	}
	var h rpcHeader
	if err := binary.Read(bytes.NewReader(msg[:24]), binary.BigEndian, &h); err != nil {
		return rpcHeader{}, nil, err
	}
	return h, msg[24:], nil
}

// reply reads the next frame, which must answer the call serial: nil
// and ret decoded, or the remote_error.
func (c *rawConn) reply(proc int32, serial uint32, ret any) *wireError {
	c.t.Helper()
	h, body, err := c.read()
	if err != nil {
		c.t.Fatalf("reply to procedure %d serial %d: %v", proc, serial, err)
	}
	return c.check(h, body, proc, serial, ret)
}

// check checks a reply's header against its call and decodes it.
func (c *rawConn) check(h rpcHeader, body []byte, proc int32, serial uint32, ret any) *wireError {
	c.t.Helper()
	want := rpcHeader{Program: remoteProgram, Version: 1, Procedure: proc, Type: typeReply, Serial: serial, Status: h.Status}
	if h != want {
		c.t.Fatalf("reply header %+v, want %+v", h, want)
	}
	if h.Status == statusError {
		var e wireError
		if _, err := xdr.Unmarshal(bytes.NewReader(body), &e); err != nil {
			c.t.Fatalf("procedure %d: undecodable remote_error: %v", proc, err)
		}
		return &e
	}
	if h.Status != statusOK {
		c.t.Fatalf("procedure %d: status %d", proc, h.Status)
	}
	if ret != nil {
		if _, err := xdr.Unmarshal(bytes.NewReader(body), ret); err != nil {
			c.t.Fatalf("procedure %d: undecodable reply %T: %v", proc, ret, err)
		}
	}
	return nil
}

// call sends a call and waits for its reply.
func (c *rawConn) call(proc int32, args, ret any) *wireError {
	c.t.Helper()
	return c.reply(proc, c.send(proc, encode(c.t, args)), ret)
}

// mustCall is a call that must succeed.
func (c *rawConn) mustCall(proc int32, args, ret any) {
	c.t.Helper()
	if e := c.call(proc, args, ret); e != nil {
		c.t.Fatalf("procedure %d: %v", proc, e)
	}
}

// open does what a libvirt client does first: AUTH_LIST, CONNECT_OPEN.
func (c *rawConn) open(flags libvirt.ConnectFlags) *wireError {
	c.t.Helper()
	c.mustCall(procAuthList, nil, nil)
	return c.call(procConnectOpen, &libvirt.ConnectOpenArgs{Name: libvirt.OptString{"qemu:///system"}, Flags: flags}, nil)
}

// closed reports whether the server ended the connection: a read
// finds EOF (or a reset) rather than a frame.
func (c *rawConn) closed() error {
	h, body, err := c.read()
	switch {
	case errors.Is(err, io.EOF), isReset(err):
		return nil
	case err != nil:
		return err
	}
	return fmt.Errorf("got a frame %+v (%d bytes of body), want the connection closed", h, len(body))
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && !op.Timeout()
}

func decodeWire(body []byte, v any) error {
	_, err := xdr.Unmarshal(bytes.NewReader(body), v)
	return err
}

// wantError checks a remote_error.
func wantError(t testing.TB, what string, got *wireError, code, domain int32, msg string) {
	t.Helper()
	if got == nil {
		t.Errorf("%s: succeeded, want error %d/%d %q", what, code, domain, msg)
		return
	}
	m := ""
	if len(got.Message) == 1 {
		m = got.Message[0]
	}
	if got.Code != code || got.Domain != domain || m != msg || got.Level != 2 {
		t.Errorf("%s: error code %d domain %d level %d %q, want code %d domain %d level 2 %q",
			what, got.Code, got.Domain, got.Level, m, code, domain, msg)
	}
}
