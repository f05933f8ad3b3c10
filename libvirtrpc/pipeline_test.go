package libvirtrpc_test

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	libvirt "github.com/digitalocean/go-libvirt"
)

// checkKeepalive: a PING gets a PONG, before and after CONNECT_OPEN and
// between calls; a PONG, or a PING of another version, gets nothing.
func checkKeepalive(t *testing.T) {
	e := startEndpoint(t, endpointOpts{})
	c := dialRaw(t, e.rw)
	ping := frame(rpcHeader{Program: keepaliveProgram, Version: 1, Procedure: 1, Type: typeMessage}, nil)
	pong := rpcHeader{Program: keepaliveProgram, Version: 1, Procedure: 2, Type: typeMessage, Serial: 0, Status: statusOK}
	wantPong := func(h rpcHeader, body []byte, err error) {
		t.Helper()
		if err != nil || h != pong || len(body) != 0 {
			t.Fatalf("got %+v %x %v, want a PONG %+v", h, body, err, pong)
		}
	}
	c.write(ping)
	wantPong(c.read())

	c.write(frame(rpcHeader{Program: keepaliveProgram, Version: 1, Procedure: 2, Type: typeMessage}, nil))
	c.write(frame(rpcHeader{Program: keepaliveProgram, Version: 2, Procedure: 1, Type: typeMessage}, nil))
	if err := c.open(0); err != nil { // its replies are the next frames
		t.Fatal(err)
	}

	// A ping among calls: the PONG and the reply come in either order.
	serial := c.send(procConnectGetType, nil)
	c.write(ping)
	for range 2 {
		h, body, err := c.read()
		if h.Program == keepaliveProgram {
			wantPong(h, body, err)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if e := c.check(h, body, procConnectGetType, serial, nil); e != nil {
			t.Fatal(e)
		}
	}
}

// pipelined is one of the calls written back to back: what it asks
// and what its reply must say.
type pipelined struct {
	proc  int32
	args  any
	check func(c *rawConn, h rpcHeader, body []byte) error
}

// checkPipelining writes 50 calls on one connection before reading any
// reply. A snapshot, held at its switch, answers last: the other calls
// do not wait for it, and every reply carries its call's serial and
// result.
func checkPipelining(t *testing.T) {
	e := startEndpoint(t, endpointOpts{})
	e.vm("vm1", 2)
	e.vm("vm2", 1)
	e.snapshot(t, "vm2", "old")
	c := e.openRaw(t, e.rw, 0)
	dom1, dom2 := c.lookup("vm1"), c.lookup("vm2")
	inside, leave := e.holdAtSwitching()
	defer func() {
		select {
		case <-leave:
		default:
			close(leave)
		}
	}()

	ok := func(proc int32, ret any, want func() error) func(*rawConn, rpcHeader, []byte) error {
		return func(c *rawConn, h rpcHeader, body []byte) error {
			if h.Status != statusOK {
				var we wireError
				_ = decodeWire(body, &we)
				return fmt.Errorf("procedure %d failed: %v", proc, &we)
			}
			if err := decodeWire(body, ret); err != nil {
				return err
			}
			return want()
		}
	}
	fails := func(code int32, msg string) func(*rawConn, rpcHeader, []byte) error {
		return func(c *rawConn, h rpcHeader, body []byte) error {
			var we wireError
			if h.Status != statusError || decodeWire(body, &we) != nil || we.Code != code || len(we.Message) != 1 || we.Message[0] != msg {
				return fmt.Errorf("status %d %v, want error %d %q", h.Status, &we, code, msg)
			}
			return nil
		}
	}

	calls := []pipelined{func() pipelined {
		var ret libvirt.DomainSnapshotCreateXMLRet
		return pipelined{procDomainSnapshotCreateXML, createArgs(dom1, "slow"), ok(procDomainSnapshotCreateXML, &ret, func() error {
			if ret.Snap.Name != "slow" || ret.Snap.Dom.Name != "vm1" {
				return fmt.Errorf("created %+v", ret.Snap)
			}
			return nil
		})}
	}()}
	for i := 1; len(calls) < 50; i++ {
		var p pipelined
		switch i % 7 {
		case 0:
			var ret libvirt.DomainLookupByNameRet
			p = pipelined{procDomainLookupByName, &libvirt.DomainLookupByNameArgs{Name: "vm2"}, ok(procDomainLookupByName, &ret, func() error {
				if ret.Dom.Name != "vm2" || ret.Dom.UUID != dom2.UUID {
					return fmt.Errorf("looked up %+v", ret.Dom)
				}
				return nil
			})}
		case 1:
			var ret libvirt.DomainLookupByNameRet
			p = pipelined{procDomainLookupByName, &libvirt.DomainLookupByNameArgs{Name: "vm1"}, ok(procDomainLookupByName, &ret, func() error {
				if ret.Dom.Name != "vm1" || ret.Dom.UUID != dom1.UUID {
					return fmt.Errorf("looked up %+v", ret.Dom)
				}
				return nil
			})}
		case 2:
			var ret libvirt.ConnectListAllDomainsRet
			p = pipelined{procConnectListAllDomains, &libvirt.ConnectListAllDomainsArgs{NeedResults: 1, Flags: 3}, ok(procConnectListAllDomains, &ret, func() error {
				var names []string
				for _, d := range ret.Domains {
					names = append(names, d.Name)
				}
				slices.Sort(names)
				if ret.Ret != 2 || strings.Join(names, ",") != "vm1,vm2" {
					return fmt.Errorf("listed %d %v", ret.Ret, names)
				}
				return nil
			})}
		case 3:
			var ret libvirt.DomainListAllSnapshotsRet
			p = pipelined{procDomainListAllSnapshots, &libvirt.DomainListAllSnapshotsArgs{Dom: dom2, NeedResults: 1}, ok(procDomainListAllSnapshots, &ret, func() error {
				if ret.Ret != 1 || len(ret.Snapshots) != 1 || ret.Snapshots[0].Name != "old" {
					return fmt.Errorf("listed %+v", ret)
				}
				return nil
			})}
		case 4:
			var ret libvirt.DomainGetInfoRet
			p = pipelined{procDomainGetInfo, &libvirt.DomainGetInfoArgs{Dom: dom1}, ok(procDomainGetInfo, &ret, func() error {
				if ret.MaxMem == 0 || ret.NrVirtCPU == 0 {
					return fmt.Errorf("info %+v", ret)
				}
				return nil
			})}
		case 5:
			p = pipelined{procDomainLookupByName, &libvirt.DomainLookupByNameArgs{Name: "nosuch"},
				fails(42, "Domain not found: no domain with matching name 'nosuch'")}
		case 6:
			var ret libvirt.ConnectGetTypeRet
			p = pipelined{procConnectGetType, nil, ok(procConnectGetType, &ret, func() error {
				if ret.Type != "QEMU" {
					return fmt.Errorf("type %q", ret.Type)
				}
				return nil
			})}
		}
		calls = append(calls, p)
	}

	// All 50 in one write, then the replies.
	first := c.serial + 1
	var buf bytes.Buffer
	for i, p := range calls {
		buf.Write(frame(rpcHeader{Program: remoteProgram, Version: 1, Procedure: p.proc, Type: typeCall, Serial: first + uint32(i)}, encode(t, p.args)))
	}
	c.write(buf.Bytes())
	c.serial += uint32(len(calls))

	seen := map[uint32]bool{}
	var order []uint32
	for range calls {
		if len(order) == len(calls)-1 {
			// Everything but the snapshot has answered while it is
			// held; let it go.
			select {
			case <-inside:
			case <-time.After(20 * time.Second):
				t.Fatal("the snapshot never reached its switch")
			}
			close(leave)
		}
		h, body, err := c.read()
		if err != nil {
			t.Fatalf("after %d replies: %v", len(order), err)
		}
		i := int(h.Serial - first)
		if h.Serial < first || i >= len(calls) || seen[h.Serial] {
			t.Fatalf("reply with serial %d: not one of the calls, or a second reply", h.Serial)
		}
		seen[h.Serial] = true
		order = append(order, h.Serial)
		p := calls[i]
		if h.Program != remoteProgram || h.Version != 1 || h.Procedure != p.proc || h.Type != typeReply {
			t.Errorf("serial %d: header %+v, want a reply to procedure %d", h.Serial, h, p.proc)
			continue
		}
		if err := p.check(c, h, body); err != nil {
			t.Errorf("serial %d (procedure %d): %v", h.Serial, p.proc, err)
		}
	}
	if order[len(order)-1] != first {
		t.Errorf("the held snapshot's reply came at %d, want last", slices.Index(order, first))
	}
	if _, err := e.drv.Snapshot("vm1", "slow"); err != nil {
		t.Errorf("the snapshot: %v", err)
	}
}

// checkClientGoneMidCreate: a client that goes while its snapshot
// runs does not stop it. The snapshot completes, metadata and disks
// switched, and the endpoint goes on serving.
func checkClientGoneMidCreate(t *testing.T) {
	e := startEndpoint(t, endpointOpts{})
	vm := e.vm("vm1", 2)
	c := e.openRaw(t, e.rw, 0)
	inside, leave := e.holdAtSwitching()
	c.send(procDomainSnapshotCreateXML, encode(t, createArgs(c.lookup("vm1"), "orphan")))
	select {
	case <-inside:
	case <-time.After(20 * time.Second):
		close(leave)
		t.Fatal("the snapshot never reached its switch")
	}
	c.nc.Close()
	close(leave)

	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := e.drv.Snapshot("vm1", "orphan"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the snapshot of the client that left never completed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	rec, err := e.drv.Snapshot("vm1", "orphan")
	if err != nil {
		t.Fatal(err)
	}
	// Every disk runs on its overlay now.
	var overlays []string
	for _, d := range rec.Disks {
		overlays = append(overlays, d.Overlay)
	}
	active := e.activeFiles("vm1")
	slices.Sort(overlays)
	if len(overlays) != len(vm.Disks) || !slices.Equal(active, overlays) {
		t.Errorf("active images %v, want the snapshot's overlays %v", active, overlays)
	}
	e.snapshot(t, "vm1", "next")
}
