package libvirtrpc

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"path/filepath"
	"runtime"
	"slices"
	"testing"

	libvirt "github.com/digitalocean/go-libvirt"
	"go.uber.org/zap"

	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/internal/peercred"
)

// sampleArgs are arguments of every served procedure as a libvirt
// client sends them (go-libvirt's types are libvirt's .x types, so
// their XDR is byte for byte the client's); nil is none. They seed the
// fuzzers.
func sampleArgs() map[int32]any {
	dom := libvirt.Domain{Name: "vm1", UUID: libvirt.UUID{0x47, 0xd0, 0xbf, 0x2d, 0x8d, 0xda, 0x53, 0x0b, 0xbb, 0x12, 0x5d, 0xbd, 0x3c, 0xcd, 0x60, 0x1b}, ID: 1}
	snap := libvirt.DomainSnapshot{Name: "s1", Dom: dom}
	return map[int32]any{
		procConnectOpen:                     &libvirt.ConnectOpenArgs{Name: libvirt.OptString{"qemu:///system"}},
		procConnectClose:                    nil,
		procConnectGetType:                  nil,
		procConnectGetVersion:               nil,
		procConnectGetCapabilities:          nil,
		procConnectGetLibVersion:            nil,
		procConnectGetHostname:              nil,
		procConnectGetUri:                   nil,
		procConnectIsSecure:                 nil,
		procNodeGetSecurityModel:            nil,
		procAuthList:                        nil,
		procConnectRegisterCloseCallback:    nil,
		procConnectUnregisterCloseCallback:  nil,
		procConnectSupportsFeature:          &libvirt.ConnectSupportsFeatureArgs{Feature: 10},
		procConnectListAllDomains:           &libvirt.ConnectListAllDomainsArgs{NeedResults: 1, Flags: 3},
		procConnectNumOfDomains:             nil,
		procConnectListDomains:              &libvirt.ConnectListDomainsArgs{Maxids: 16},
		procConnectNumOfDefinedDomains:      nil,
		procConnectListDefinedDomains:       &libvirt.ConnectListDefinedDomainsArgs{Maxnames: 16},
		procDomainLookupByName:              &libvirt.DomainLookupByNameArgs{Name: "vm1"},
		procDomainLookupByUUID:              &libvirt.DomainLookupByUUIDArgs{UUID: dom.UUID},
		procDomainLookupByID:                &libvirt.DomainLookupByIDArgs{ID: 1},
		procDomainGetInfo:                   &libvirt.DomainGetInfoArgs{Dom: dom},
		procDomainGetState:                  &libvirt.DomainGetStateArgs{Dom: dom},
		procDomainGetXMLDesc:                &libvirt.DomainGetXMLDescArgs{Dom: dom},
		procDomainGetMaxMemory:              &libvirt.DomainGetMaxMemoryArgs{Dom: dom},
		procDomainGetOsType:                 &libvirt.DomainGetOsTypeArgs{Dom: dom},
		procDomainIsActive:                  &libvirt.DomainIsActiveArgs{Dom: dom},
		procDomainIsPersistent:              &libvirt.DomainIsPersistentArgs{Dom: dom},
		procDomainIsUpdated:                 &libvirt.DomainIsUpdatedArgs{Dom: dom},
		procDomainGetAutostart:              &libvirt.DomainGetAutostartArgs{Dom: dom},
		procDomainHasManagedSaveImage:       &libvirt.DomainHasManagedSaveImageArgs{Dom: dom},
		procDomainGetSecurityLabel:          &libvirt.DomainGetSecurityLabelArgs{Dom: dom},
		procDomainFsfreeze:                  &libvirt.DomainFsfreezeArgs{Dom: dom, Mountpoints: []string{"/", "/var"}},
		procDomainFsthaw:                    &libvirt.DomainFsthawArgs{Dom: dom},
		procDomainSnapshotCreateXML:         &libvirt.DomainSnapshotCreateXMLArgs{Dom: dom, XMLDesc: "<domainsnapshot><name>s1</name></domainsnapshot>", Flags: 0x90},
		procDomainSnapshotDelete:            &libvirt.DomainSnapshotDeleteArgs{Snap: snap},
		procDomainSnapshotLookupByName:      &libvirt.DomainSnapshotLookupByNameArgs{Dom: dom, Name: "s1"},
		procDomainSnapshotGetXMLDesc:        &libvirt.DomainSnapshotGetXMLDescArgs{Snap: snap, Flags: 1},
		procDomainSnapshotCurrent:           &libvirt.DomainSnapshotCurrentArgs{Dom: dom},
		procDomainHasCurrentSnapshot:        &libvirt.DomainHasCurrentSnapshotArgs{Dom: dom},
		procDomainSnapshotIsCurrent:         &libvirt.DomainSnapshotIsCurrentArgs{Snap: snap},
		procDomainSnapshotHasMetadata:       &libvirt.DomainSnapshotHasMetadataArgs{Snap: snap},
		procDomainSnapshotGetParent:         &libvirt.DomainSnapshotGetParentArgs{Snap: snap},
		procDomainListAllSnapshots:          &libvirt.DomainListAllSnapshotsArgs{Dom: dom, NeedResults: 1, Flags: 0x400},
		procDomainSnapshotListAllChildren:   &libvirt.DomainSnapshotListAllChildrenArgs{Snapshot: snap, NeedResults: 1, Flags: 1},
		procDomainSnapshotNum:               &libvirt.DomainSnapshotNumArgs{Dom: dom},
		procDomainSnapshotListNames:         &libvirt.DomainSnapshotListNamesArgs{Dom: dom, Maxnames: 16},
		procDomainSnapshotNumChildren:       &libvirt.DomainSnapshotNumChildrenArgs{Snap: snap, Flags: 1},
		procDomainSnapshotListChildrenNames: &libvirt.DomainSnapshotListChildrenNamesArgs{Snap: snap, Maxnames: 16},
	}
}

// sampleFrames are the calls of sampleArgs as frames, by procedure.
func sampleFrames(tb testing.TB) map[int32][]byte {
	tb.Helper()
	out := map[int32][]byte{}
	serial := uint32(0)
	for proc, args := range sampleArgs() {
		serial++
		buf, err := appendFrame(nil, header{Program: remoteProgram, Version: remoteVersion, Procedure: proc, Type: typeCall, Serial: serial}, args)
		if err != nil {
			tb.Fatal(err)
		}
		out[proc] = buf
	}
	return out
}

// fuzzServer is a server over a driver with no domain, and a
// connection to it, for calling procedures directly.
func fuzzServer(tb testing.TB) (*Server, *conn) {
	tb.Helper()
	drv, err := driver.Open(driver.Config{StateDir: filepath.Join(tb.TempDir(), "state")}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = drv.Close() })
	s := New(drv, Config{}, nil)
	return s, &conn{s: s, log: zap.NewNop(), peer: peercred.Peer{UID: 0}, slots: make(chan struct{}, 1)}
}

// TestSampleArgs checks the fuzzers' seeds: one for every served
// procedure, each of the type its handler decodes (no decode error).
func TestSampleArgs(t *testing.T) {
	s, c := fuzzServer(t)
	samples := sampleArgs()
	for proc, p := range s.procs {
		if _, ok := samples[proc]; !ok {
			t.Errorf("no sample arguments for %s", procName(proc))
			continue
		}
		h, body, err := readFrame(bytes.NewReader(sampleFrames(t)[proc]))
		if err != nil || h.Procedure != proc {
			t.Fatalf("%s: %+v %v", procName(proc), h, err)
		}
		if _, err := p.run(context.Background(), c, body); isDecodeError(err) {
			t.Errorf("%s: its sample does not decode: %v", procName(proc), err)
		}
	}
	for proc := range samples {
		if _, ok := s.procs[proc]; !ok {
			t.Errorf("sample arguments for %s, which is not served", procName(proc))
		}
	}
}

func isDecodeError(err error) bool {
	var re *rpcError
	return errors.As(err, &re) && re.code == errRPC && re.detail == "Unable to decode message payload"
}

// allocated is the bytes f allocates, the whole process's: the slack in
// the bounds below covers what else runs.
func allocated(f func()) uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	before := ms.TotalAlloc
	f()
	runtime.ReadMemStats(&ms)
	return ms.TotalAlloc - before
}

const allocSlack = 64 << 10

// FuzzReadFrame reads a stream of frames: readFrame never panics, takes
// only frames whose length word is within libvirt's limits, returns a
// body of exactly the length claimed, and allocates in proportion to
// the bytes that came, not to the length a frame claims.
func FuzzReadFrame(f *testing.F) {
	frames := sampleFrames(f)
	for _, fr := range frames {
		f.Add(fr)
	}
	var stream []byte
	for _, p := range []int32{procAuthList, procConnectOpen, procDomainLookupByName, procDomainSnapshotCreateXML} {
		stream = append(stream, frames[p]...)
	}
	ping, _ := appendFrame(nil, header{Program: keepaliveProgram, Version: keepaliveVersion, Procedure: keepalivePing, Type: typeMessage}, nil)
	f.Add(append(stream, ping...))
	f.Add(frames[procDomainSnapshotCreateXML][:40])                       // truncated
	f.Add(binary.BigEndian.AppendUint32(nil, lenSize+maxMessage))         // a 32 MiB claim, nothing after
	f.Add(append(binary.BigEndian.AppendUint32(nil, 1<<20), ping[4:]...)) // a 1 MiB claim, a header after
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		alloc := allocated(func() {
			for {
				start := len(data) - r.Len()
				h, body, err := readFrame(r)
				if err != nil {
					return
				}
				claimed := binary.BigEndian.Uint32(data[start:])
				if claimed < lenSize+headerSize || claimed > lenSize+maxMessage {
					t.Fatalf("took a frame of length %d", claimed)
				}
				if len(body) != int(claimed)-lenSize-headerSize {
					t.Fatalf("body of %d bytes for a length of %d", len(body), claimed)
				}
				if h.Program != binary.BigEndian.Uint32(data[start+4:]) || h.Status != binary.BigEndian.Uint32(data[start+24:]) {
					t.Fatalf("header %+v", h)
				}
			}
		})
		if limit := 4*uint64(len(data)) + 2*firstChunk + allocSlack; alloc > limit {
			t.Errorf("%d bytes of frames allocated %d, over %d", len(data), alloc, limit)
		}
	})
}

// FuzzDecodeCall gives a served procedure an arbitrary body: its
// handler decodes it (through decodeBody) and, if that works, runs on
// a driver with no domain. Nothing panics, and the call allocates in
// proportion to the body: no length inside it makes the decoder
// allocate more than the body could hold.
func FuzzDecodeCall(f *testing.F) {
	s, c := fuzzServer(f)
	procs := make([]int32, 0, len(s.procs))
	for p := range s.procs {
		procs = append(procs, p)
	}
	slices.Sort(procs)
	frames := sampleFrames(f)
	for i, p := range procs {
		_, body, err := readFrame(bytes.NewReader(frames[p]))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint16(i), body)
	}
	f.Fuzz(func(t *testing.T, which uint16, body []byte) {
		proc := procs[int(which)%len(procs)]
		alloc := allocated(func() {
			_, _ = s.procs[proc].run(context.Background(), c, body)
		})
		if limit := 64*uint64(len(body)) + allocSlack; alloc > limit {
			t.Errorf("%s: %d bytes of arguments allocated %d, over %d", procName(proc), len(body), alloc, limit)
		}
	})
}
