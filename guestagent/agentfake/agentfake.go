// Package agentfake is a fake QEMU guest agent (qemu-ga) that speaks the
// real wire protocol over a real unix socket, with scriptable faults and
// filesystems, for tests of guest agent clients.
//
// It models qemu-ga 7.2 behind QEMU's server-side chardev: one client at a
// time, input framed as QEMU's JSON streamer frames it, replies byte for
// byte as qemu-ga writes them. The guest outlives connections: the frozen
// state, a half-written request and unread replies carry over to the next
// client, as they do through a virtio port.
package agentfake

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
)

// Version is what guest-info reports.
const Version = "7.2.0"

// VSSError is the desc of a Windows thaw after VSS stopped holding writes.
const VSSError = "couldn't hold writes: fsfreeze is limited up to 10 seconds"

// commands are the commands the fake implements, in guest-info order.
var commands = []string{"guest-sync-delimited", "guest-sync", "guest-ping", "guest-info",
	"guest-fsfreeze-status", "guest-fsfreeze-freeze", "guest-fsfreeze-freeze-list",
	"guest-fsfreeze-thaw", "guest-get-fsinfo", "guest-exec", "guest-exec-status", "guest-shutdown"}

// frozenOK is qemu-ga's ga_freeze_allowlist: all else is disabled while frozen.
var frozenOK = map[string]bool{"guest-ping": true, "guest-info": true, "guest-sync": true,
	"guest-sync-delimited": true, "guest-fsfreeze-status": true, "guest-fsfreeze-thaw": true}

type fault struct{ hangup, afterEffect bool } // the zero fault is a hang

// Agent is a fake qemu-ga serving a unix socket until Close.
type Agent struct {
	// Path is the unix socket path.
	Path string

	ln     net.Listener
	group  *errgroup.Group
	ctx    context.Context
	cancel context.CancelFunc
	in     lexer // input state; only the serving goroutine touches it

	mu         sync.Mutex
	conn       net.Conn // the client being served, if any
	pending    []byte   // output no client has taken yet
	calls      []string
	clients    int // connections served so far
	faults     map[string]fault
	delays     map[string]time.Duration
	disabled   map[string]bool
	release    chan struct{} // closed by Release
	mounts     []string
	fsinfo     []Filesystem // nil: one disk-less ext4 per mountpoint
	freezeList [][]string   // the mountpoints of each guest-fsfreeze-freeze-list
	failFreeze string
	vss        time.Duration
	frozenAt   time.Time
	frozenN    int64 // filesystems frozen
	lastPID    int64
	silent     bool
	frozen     bool
}

// Start listens on path and serves until Close. The guest starts thawed,
// with the mountpoints "/", "/mnt/data1" and "/mnt/data2".
func Start(path string) (*Agent, error) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("agentfake listen: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g, ctx := errgroup.WithContext(ctx)
	a := &Agent{Path: path, ln: ln, group: g, ctx: ctx, cancel: cancel, lastPID: 1000,
		faults: map[string]fault{}, delays: map[string]time.Duration{}, disabled: map[string]bool{},
		release: make(chan struct{}), mounts: []string{"/", "/mnt/data1", "/mnt/data2"}}
	g.Go(a.acceptLoop)
	return a, nil
}

// Close stops listening, drops the client, ends a hung or delayed command,
// waits for the serving goroutine and returns its error, if any.
func (a *Agent) Close() error {
	a.cancel()
	a.ln.Close()
	a.locked(func() {
		if a.conn != nil {
			a.conn.Close()
		}
	})
	return a.group.Wait()
}

// Frozen reports whether the guest's filesystems are frozen.
func (a *Agent) Frozen() (frozen bool) {
	a.locked(func() { frozen = a.frozen })
	return frozen
}

// SetFrozen freezes all the mountpoints, or thaws them.
func (a *Agent) SetFrozen(frozen bool) {
	a.locked(func() { a.frozen, a.frozenN, a.frozenAt = frozen, int64(len(a.mounts)), time.Now() })
}

// Calls returns the names of the commands received so far, in order,
// syncs and refused commands included, unparsable input excluded.
func (a *Agent) Calls() (calls []string) {
	a.locked(func() { calls = slices.Clone(a.calls) })
	return calls
}

// Clients returns how many connections the agent has served so far,
// the one being served included.
func (a *Agent) Clients() (n int) {
	a.locked(func() { n = a.clients })
	return n
}

// Hangup closes the connection of the client being served, as QEMU does
// when its chardev goes away; the agent serves the next one.
func (a *Agent) Hangup() {
	a.locked(func() {
		if a.conn != nil {
			a.conn.Close()
		}
	})
}

// HangOn makes cmd never answer, with no effect. qemu-ga runs one command
// at a time, so nothing else (syncs included) is answered until Release.
func (a *Agent) HangOn(cmd string) { a.setFault(cmd, fault{}) }

// HangAfterEffect makes cmd take effect (a freeze freezes) and then hang
// as with HangOn: the guest may be frozen although nobody heard it.
func (a *Agent) HangAfterEffect(cmd string) { a.setFault(cmd, fault{afterEffect: true}) }

// CloseOn makes cmd close the connection on arrival, with no effect: the
// client reads EOF instead of the reply.
func (a *Agent) CloseOn(cmd string) { a.setFault(cmd, fault{hangup: true}) }

// CloseAfterEffect makes cmd take effect and then close the connection.
func (a *Agent) CloseAfterEffect(cmd string) { a.setFault(cmd, fault{true, true}) }

func (a *Agent) setFault(cmd string, f fault) { a.locked(func() { a.faults[cmd] = f }) }

// Release clears every HangOn, HangAfterEffect, CloseOn and
// CloseAfterEffect and ends a hung command; its reply is never sent.
func (a *Agent) Release() {
	a.locked(func() { clear(a.faults); close(a.release); a.release = make(chan struct{}) })
}

// SetDelay makes cmd take d before it takes effect and answers; the agent
// does nothing else meanwhile. Zero removes the delay.
func (a *Agent) SetDelay(cmd string, d time.Duration) { a.locked(func() { a.delays[cmd] = d }) }

// Disable disables cmd as qemu-ga's --blacklist (-b) does.
func (a *Agent) Disable(cmd string) { a.locked(func() { a.disabled[cmd] = true }) }

// SetVSS makes the guest Windows-like: frozen longer than hold, it still
// reports frozen, but the next thaw fails with VSSError (and thaws).
func (a *Agent) SetVSS(hold time.Duration) { a.locked(func() { a.vss = hold }) }

// QueueStale queues raw bytes (stale replies, garbage; add the "\n"
// yourself) ahead of anything else: the next client gets them on connect,
// a connected one before its next reply.
func (a *Agent) QueueStale(raw string) { a.locked(func() { a.pending = append(a.pending, raw...) }) }

// Silent models a guest with no agent running: connections are accepted,
// input is swallowed and lost, nothing is written.
func (a *Agent) Silent(on bool) { a.locked(func() { a.silent = on }) }

// FailFreeze makes freezes fail with a GenericError of desc, leaving the
// guest thawed, as a failing fsfreeze hook does. Empty turns it off.
func (a *Agent) FailFreeze(desc string) { a.locked(func() { a.failFreeze = desc }) }

// SetMountpoints sets the guest's freezable filesystems; guest-get-fsinfo
// reports each as an ext4 file system on no disk it can describe.
func (a *Agent) SetMountpoints(m []string) {
	a.locked(func() { a.mounts, a.fsinfo = slices.Clone(m), nil })
}

// Filesystem is one mounted file system of the guest, as
// guest-get-fsinfo reports it.
type Filesystem struct {
	Name       string // the block device, such as "vda1"
	Mountpoint string
	Type       string // "ext4" if empty
	Disks      []Disk // the disks it lies on
}

// Disk is one GuestDiskAddress: how the guest sees a disk.
type Disk struct {
	// PCI is the domain, bus, slot and function of the disk's
	// controller (of the disk itself for virtio-blk); -1s if unknown.
	PCI     [4]int
	BusType string // "virtio" if empty
	Bus     int
	Target  int
	Unit    int
	Serial  string // omitted if empty, as a guest without udev data does
	Dev     string // the device node, such as "/dev/vda"; omitted if empty
}

// SetFilesystems sets the guest's mounted file systems, for
// guest-get-fsinfo; their mountpoints become the freezable ones.
func (a *Agent) SetFilesystems(fss []Filesystem) {
	a.locked(func() {
		a.fsinfo, a.mounts = slices.Clone(fss), nil
		for _, fs := range fss {
			a.mounts = append(a.mounts, fs.Mountpoint)
		}
	})
}

// FreezeLists returns the mountpoints of every guest-fsfreeze-freeze-list
// received so far, in order (refused ones included).
func (a *Agent) FreezeLists() (lists [][]string) {
	a.locked(func() {
		for _, l := range a.freezeList {
			lists = append(lists, slices.Clone(l))
		}
	})
	return lists
}

func (a *Agent) locked(f func()) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f()
}

func (a *Agent) acceptLoop() error {
	for {
		c, err := a.ln.Accept()
		if err != nil {
			if a.ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("agentfake accept: %w", err)
		}
		a.serve(c)
	}
}

// serve runs one client until it leaves; QEMU's chardev takes the next
// one only then.
func (a *Agent) serve(c net.Conn) {
	defer c.Close()
	a.locked(func() {
		if a.ctx.Err() == nil { // else Close has already looked for a.conn
			a.conn = c
		}
		a.clients++
	})
	defer a.locked(func() { a.conn = nil })
	a.flush(c)
	buf := make([]byte, 4096)
	for a.ctx.Err() == nil {
		n, err := c.Read(buf)
		var silent bool
		a.locked(func() { silent = a.silent })
		if silent {
			n = 0 // nobody reads the port: the input is lost
		}
		for _, b := range buf[:n] {
			msg, stray := a.in.feed(b)
			if stray != nil {
				a.respond(c, nil, nil, generic("JSON parse error, stray '%s'", stray), false)
			}
			if msg != nil && !a.process(c, msg) {
				return
			}
		}
		if err != nil {
			return // the client left, or Close
		}
	}
}

// process runs one request as qemu-ga does; false ends the connection.
func (a *Agent) process(c net.Conn, msg []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(msg))
	dec.UseNumber()
	var v any
	req, name, qe := map[string]any(nil), "", (*qerr)(nil)
	if dec.Decode(&v) != nil {
		qe = generic("JSON parse error, expecting value")
	} else if req, _ = v.(map[string]any); req == nil {
		qe = generic("QMP input must be a JSON object")
	} else if name, _ = req["execute"].(string); name == "" {
		qe = generic("QMP input lacks member 'execute'")
	}
	if qe != nil {
		a.respond(c, req, nil, qe, false)
		return true
	}
	a.mu.Lock()
	a.calls = append(a.calls, name)
	f, faulty := a.faults[name]
	d, release := a.delays[name], a.release
	a.mu.Unlock()
	args, _ := req["arguments"].(map[string]any)
	if name == "guest-fsfreeze-freeze-list" {
		a.noteFreezeList(args)
	}
	if faulty && !f.afterEffect {
		return !f.hangup && a.wait(release, 0)
	}
	if d > 0 && !a.wait(nil, d) {
		return false
	}
	ret, qe := a.exec(name, args)
	switch {
	case faulty:
		return !f.hangup && a.wait(release, 0)
	case name == "guest-shutdown" && qe == nil:
		return true // success-response: false
	}
	a.respond(c, req, ret, qe, name == "guest-sync-delimited" && qe == nil)
	return true
}

// wait blocks until release is closed or, if d > 0, d has passed; false if
// the agent is closed first.
func (a *Agent) wait(release <-chan struct{}, d time.Duration) bool {
	var timeout <-chan time.Time
	if d > 0 {
		timeout = time.After(d)
	}
	select {
	case <-release:
	case <-timeout:
	case <-a.ctx.Done():
		return false
	}
	return true
}

// exec runs a command against the guest's state.
func (a *Agent) exec(name string, args map[string]any) (any, *qerr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case !slices.Contains(commands, name):
		return nil, &qerr{"CommandNotFound", "The command " + name + " has not been found"}
	case a.frozen && !frozenOK[name]:
		return nil, disabled(name, ": the agent is in frozen state")
	case a.disabled[name]:
		return nil, disabled(name, "")
	}
	switch name {
	case "guest-sync", "guest-sync-delimited":
		id, qe := intArg(args, "id")
		return id, qe
	case "guest-ping":
		return map[string]any{}, nil
	case "guest-info":
		info := guestInfo{Version: Version}
		for _, n := range commands {
			info.Commands = append(info.Commands, map[string]any{"name": n, "success-response": n != "guest-shutdown",
				"enabled": !a.disabled[n] && (!a.frozen || frozenOK[n])})
		}
		return info, nil
	case "guest-fsfreeze-status":
		return map[bool]string{false: "thawed", true: "frozen"}[a.frozen], nil
	case "guest-fsfreeze-freeze", "guest-fsfreeze-freeze-list":
		return a.freeze(name, args)
	case "guest-get-fsinfo":
		return a.fsInfo(), nil
	case "guest-fsfreeze-thaw":
		n, expired := int64(0), a.frozen && a.vss > 0 && time.Since(a.frozenAt) > a.vss
		if a.frozen {
			n = a.frozenN
		}
		if a.frozen = false; expired {
			return nil, generic("%s", VSSError)
		}
		return n, nil
	case "guest-exec": // every program exits 0 at once
		a.lastPID++
		return map[string]any{"pid": a.lastPID}, nil
	case "guest-exec-status":
		if pid, qe := intArg(args, "pid"); qe != nil || pid <= 1000 || pid > a.lastPID {
			return nil, cmp.Or(qe, generic("Invalid parameter 'pid'"))
		}
		return map[string]any{"exitcode": 0, "exited": true}, nil
	}
	return nil, nil // guest-shutdown
}

// freeze freezes the mountpoints asked for; unknown ones are skipped, and
// if none is left the guest stays thawed, as qemu-ga does on Linux.
func (a *Agent) freeze(name string, args map[string]any) (any, *qerr) {
	if a.failFreeze != "" {
		return nil, generic("%s", a.failFreeze)
	}
	n := int64(len(a.mounts))
	if v, ok := args["mountpoints"]; ok && name == "guest-fsfreeze-freeze-list" {
		list, ok := v.([]any)
		if !ok {
			return nil, generic("Invalid parameter type for 'mountpoints', expected: array")
		}
		n = 0
		for _, m := range a.mounts {
			if slices.Contains(list, any(m)) {
				n++
			}
		}
	}
	a.frozen, a.frozenN, a.frozenAt = n > 0, n, time.Now()
	return n, nil
}

// noteFreezeList records the mountpoints a freeze-list asked for.
func (a *Agent) noteFreezeList(args map[string]any) {
	var list []string
	if v, ok := args["mountpoints"].([]any); ok {
		for _, m := range v {
			s, _ := m.(string)
			list = append(list, s)
		}
	}
	a.locked(func() { a.freezeList = append(a.freezeList, list) })
}

// fsInfo is the reply of guest-get-fsinfo. qemu-ga lists the mounts
// last first, and the sizes are those of the test guest's data disks.
func (a *Agent) fsInfo() []fsInfo {
	fss := a.fsinfo
	if fss == nil {
		for _, m := range a.mounts {
			fss = append(fss, Filesystem{Mountpoint: m})
		}
	}
	out := []fsInfo{}
	for _, fs := range slices.Backward(fss) {
		fi := fsInfo{Name: fs.Name, Total: 52685824, Mountpoint: fs.Mountpoint, Disk: []diskAddress{},
			Used: 15360, Type: cmp.Or(fs.Type, "ext4")}
		for _, d := range fs.Disks {
			fi.Disk = append(fi.Disk, diskAddress{Serial: d.Serial, BusType: cmp.Or(d.BusType, "virtio"), Bus: d.Bus,
				Unit: d.Unit, PCI: pciAddress{Bus: d.PCI[1], Slot: d.PCI[2], Domain: d.PCI[0], Function: d.PCI[3]},
				Dev: d.Dev, Target: d.Target})
		}
		out = append(out, fi)
	}
	return out
}

// intArg returns an int64 argument, checked as QEMU's input visitor does.
func intArg(args map[string]any, name string) (int64, *qerr) {
	v, ok := args[name]
	if !ok {
		return 0, generic("Parameter '%s' is missing", name)
	}
	n, _ := v.(json.Number)
	if i, err := strconv.ParseInt(string(n), 10, 64); err == nil {
		return i, nil
	}
	return 0, generic("Invalid parameter type for '%s', expected: integer", name)
}

// qerr is the error member of a reply.
type qerr struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func generic(format string, args ...any) *qerr {
	return &qerr{"GenericError", fmt.Sprintf(format, args...)}
}

// disabled is QEMU 7.2's qmp_dispatch error for a disabled command: class
// CommandNotFound (since QEMU 6.0), text "Command %s has been disabled%s%s".
func disabled(name, reason string) *qerr {
	return &qerr{"CommandNotFound", "Command " + name + " has been disabled" + reason}
}

// reply and guestInfo have their members in the order qemu-ga writes them
// (QDict iteration order: by tdb_hash bucket); where that order is
// alphabetical, a map does.
type reply struct {
	Return any   `json:"return,omitempty"`
	ID     any   `json:"id,omitempty"`
	Error  *qerr `json:"error,omitempty"`
}

// fsInfo, diskAddress and pciAddress are GuestFilesystemInfo,
// GuestDiskAddress and GuestPCIAddress, in qemu-ga's order.
type fsInfo struct {
	Name       string        `json:"name"`
	Total      int64         `json:"total-bytes"`
	Mountpoint string        `json:"mountpoint"`
	Disk       []diskAddress `json:"disk"`
	Used       int64         `json:"used-bytes"`
	Type       string        `json:"type"`
}

type diskAddress struct {
	Serial  string     `json:"serial,omitempty"`
	BusType string     `json:"bus-type"`
	Bus     int        `json:"bus"`
	Unit    int        `json:"unit"`
	PCI     pciAddress `json:"pci-controller"`
	Dev     string     `json:"dev,omitempty"`
	Target  int        `json:"target"`
}

type pciAddress struct {
	Bus      int `json:"bus"`
	Slot     int `json:"slot"`
	Domain   int `json:"domain"`
	Function int `json:"function"`
}

type guestInfo struct {
	Version  string           `json:"version"`
	Commands []map[string]any `json:"supported_commands"`
}

// respond queues a reply, with the request's id if it had one, prefixed
// with 0xFF if delimited, and sends what it can.
func (a *Agent) respond(c net.Conn, req map[string]any, ret any, qe *qerr, delimited bool) {
	var b bytes.Buffer
	if delimited {
		b.WriteByte(0xFF)
	}
	if qe != nil {
		ret = nil
	}
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(reply{ret, req["id"], qe}) // cannot fail: plain values, and ids json decoded
	a.locked(func() { a.pending = append(a.pending, spaced(b.Bytes())...) })
	a.flush(c)
}

// flush writes the pending output to c; what c does not take (it left)
// stays pending for the next client.
func (a *Agent) flush(c net.Conn) {
	var out []byte
	a.locked(func() {
		if !a.silent {
			out = bytes.Clone(a.pending)
		}
	})
	if len(out) > 0 {
		c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		n, _ := c.Write(out)
		a.locked(func() { a.pending = a.pending[n:] })
	}
}

// spaced adds the spaces QEMU's JSON writer puts after ':' and ',', and
// writes U+FFFD (invalid UTF-8 in a stray token) as QEMU does.
func spaced(js []byte) []byte {
	var out []byte
	str, esc := false, false
	for _, c := range bytes.ReplaceAll(js, []byte(`\ufffd`), []byte(`\uFFFD`)) {
		out = append(out, c)
		switch {
		case str:
			str, esc = esc || c != '"', !esc && c == '\\'
		case c == '"':
			str = true
		case c == ':' || c == ',':
			out = append(out, ' ')
		}
	}
	return out
}

// lexer frames input as QEMU's JSON streamer does: a message ends when its
// braces balance, and a lexical error (a 0xFE or 0xFF byte, a control
// character in a string) is reported and throws away everything pending.
type lexer struct {
	buf        []byte
	depth      int
	str, esc   bool // in a string; after a backslash in it
	strAt      int  // where the string began in buf
	recovering bool // skipping input after an error, as IN_RECOVERY does
}

// feed takes one byte and returns a complete message, or the stray token
// of a lexical error, or neither.
func (l *lexer) feed(b byte) (msg, stray []byte) {
	if l.recovering && b >= 0x20 && b < 0xFE && !strings.ContainsRune("{}[],:", rune(b)) {
		return nil, nil
	}
	l.recovering = false
	space := b == ' ' || b == '\t' || b == '\r' || b == '\n'
	switch {
	case b >= 0xFE || l.str && b < 0x20:
		stray = []byte{b}
		if l.str {
			stray = append(bytes.Clone(l.buf[l.strAt:]), b)
		}
		*l = lexer{recovering: true}
		return nil, stray
	case l.str:
		l.buf = append(l.buf, b)
		l.str, l.esc = l.esc || b != '"', !l.esc && b == '\\'
		return nil, nil
	case space && l.depth == 0 && len(l.buf) == 0:
		return nil, nil
	}
	l.buf = append(l.buf, b)
	switch b {
	case '"':
		l.str, l.strAt = true, len(l.buf)-1
	case '{', '[':
		l.depth++
	case '}', ']':
		l.depth--
	}
	if l.depth <= 0 && (b == '}' || b == ']' || space) {
		msg, *l = l.buf, lexer{}
	}
	return msg, nil
}
