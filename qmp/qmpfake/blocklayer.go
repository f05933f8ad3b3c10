package qmpfake

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"
)

// BlockLayer models the block graph of QEMU 7.2 behind a fake QMP
// socket, so that a suite written against real QEMU runs on the fake.
// Reply shapes, events and error classes and messages were taken from
// qemu-system-x86_64 7.2; TestParityWithQEMU compares them.
//
// Modelled: disks given with -drive or -blockdev; format (qcow2, raw)
// and protocol ("file") nodes, auto-named "#blockN" where QEMU names
// them; backing chains, read from qcow2 headers of host files that
// exist; blockdev-add and blockdev-del with QEMU's ownership and
// reference rules (nodes QEMU made go away with their last user, nodes
// the monitor added stay until blockdev-del); image locking between
// nodes; json: filenames when a backing node is not the one the image
// header names; blockdev-snapshot and blockdev-snapshot-sync, alone and
// in all-or-nothing transactions (with the abort action); block-commit
// of the active layer (ready, then complete or cancel) and below it
// (completes by itself), with speed, auto-finalize and auto-dismiss;
// block-job-complete and job-complete (an active commit goes pending
// and pivots at its finalize when auto-finalize is off), block-job-
// cancel (soft or forced) and job-cancel (forced: a ready or pending
// job aborts without a pivot), job-finalize, job-dismiss, query-jobs
// and query-block-jobs (newest first, with a cancelled job's error), op
// blockers, and the standby/ready job events a graph change causes; run
// state with stop and cont; quit, and a kill; QOM as far as the disks'
// devices go (qom-get of a device's drive, serial, addr and parent_bus,
// qom-list of /machine/peripheral and /machine/peripheral-anon); query-
// pci of q35 with -nodefaults, the disks' devices in the first slots. One
// model may serve several monitors (Install on each server), and events
// go to every connection of every monitor, as QEMU sends them.
//
// Not modelled: guest I/O and data (commits copy nothing, so their jobs
// report len and offset 0 when active, and commits do not rewrite image
// headers on disk); other block jobs and transaction actions; formats
// other than qcow2 and raw, protocols other than file; qmp_capabilities
// negotiation state (any command is accepted at any time); query-commands
// lists only the commands the model answers; human-monitor-command
// answers "" to everything; hotplug; QOM objects other than the disks'
// devices and their containers, and properties other than drive,
// serial, addr, parent_bus and type; PCI bridges.
type BlockLayer struct {
	mu       sync.Mutex
	srvs     []*Server // the monitors, in Install order
	gone     chan struct{}
	table    map[string]func(*call) (any, error)
	disabled map[string]bool
	disks    []*disk
	nodes    []*node // in creation order
	jobs     []*job
	seq      int
	runState string
}

// FakeDisk is a disk as QEMU's command line gives it at startup.
type FakeDisk struct {
	// Target is the guest device id, such as "vda"; empty for a drive
	// without a device (-machine none).
	Target string
	// Drive is the -drive id, such as "drive-vda"; empty for a -blockdev
	// disk, whose protocol node is then named "file-<Target>".
	Drive string
	// NodeName is the format node's name; empty to have it auto-named.
	NodeName string
	// File is the image. It need not exist; if it does, its qcow2 header
	// supplies the backing chain, and the size when VirtualSize is 0.
	File string
	// Format is the format driver; empty means qcow2.
	Format      string
	VirtualSize int64
	// Serial is the device's serial property; empty for none.
	Serial string
}

type disk struct {
	FakeDisk
	root *node
}

// target names the disk as qmp.Disks does.
func (d *disk) target() string { return cmp.Or(d.Target, d.Drive, d.root.name) }

type node struct {
	name    string
	drv     string // qcow2, raw, or file for a protocol node
	path    string // the host file of a protocol node
	file    *node  // the protocol child of a format node
	backing *node
	size    int64
	ro      bool
	owned   bool // by the monitor (-blockdev, blockdev-add): outlives its users
	seq     int  // creation order; 0 until registered
	// hdrBacking and hdrBackingFmt are the qcow2 header's backing file;
	// autoBacking is what QEMU compares the attached backing node's
	// filename with to decide whether the filename becomes json:.
	hdrBacking, hdrBackingFmt, autoBacking string
}

// qmpError is an error reply.
type qmpError struct{ class, desc string }

func (e *qmpError) Error() string { return e.class + ": " + e.desc }

func gerr(format string, a ...any) error {
	return &qmpError{"GenericError", fmt.Sprintf(format, a...)}
}

// NewBlockLayer returns the block layer of a VM started with disks.
func NewBlockLayer(disks []FakeDisk) *BlockLayer {
	b := &BlockLayer{disabled: map[string]bool{}, runState: "prelaunch", gone: make(chan struct{})}
	b.table = map[string]func(*call) (any, error){
		"qmp_capabilities": func(*call) (any, error) { return struct{}{}, nil },
		"query-commands":   b.queryCommands,
		"query-status":     b.queryStatus,
		"stop":             b.stop,
		"cont":             b.cont,
		"quit":             b.quit,
		"query-uuid": func(*call) (any, error) {
			return map[string]string{"UUID": "00000000-0000-0000-0000-000000000000"}, nil
		},
		"query-name": func(*call) (any, error) { return struct{}{}, nil },
		// A q35 machine's defaults: 128 MiB, one vCPU.
		"query-memory-size-summary": func(*call) (any, error) { return map[string]int64{"base-memory": 128 << 20}, nil },
		"query-kvm":                 func(*call) (any, error) { return map[string]bool{"enabled": false, "present": false}, nil },
		"query-cpus-fast": func(*call) (any, error) {
			return []map[string]any{{"cpu-index": 0, "qom-path": "/machine/unattached/device[0]", "thread-id": 1, "target": "x86_64"}}, nil
		},
		"human-monitor-command":     func(*call) (any, error) { return "", nil },
		"query-block":               b.queryBlock,
		"query-named-block-nodes":   b.queryNamedBlockNodes,
		"x-debug-query-block-graph": b.blockGraph,
		"blockdev-add":              b.blockdevAdd,
		"blockdev-del":              b.blockdevDel,
		"blockdev-snapshot":         b.single("blockdev-snapshot"),
		"blockdev-snapshot-sync":    b.single("blockdev-snapshot-sync"),
		"transaction":               b.transaction,
		"block-commit":              b.blockCommit,
		"block-job-complete":        b.complete("device"),
		"block-job-cancel":          b.blockJobCancel,
		"query-block-jobs":          b.queryBlockJobs,
		"query-jobs":                b.queryJobs,
		"job-complete":              b.complete("id"),
		"job-cancel":                b.jobCancel,
		"job-finalize":              b.jobFinalize,
		"job-dismiss":               b.jobDismiss,
		"qom-get":                   b.qomGet,
		"qom-list":                  b.qomList,
		"query-pci":                 b.queryPCI,
	}
	for _, fd := range disks {
		fd.Format = cmp.Or(fd.Format, "qcow2")
		owned := fd.Drive == ""
		file := &node{drv: "file", path: fd.File, owned: owned}
		if owned {
			file.name = "file-" + fd.Target
		}
		if st, err := os.Stat(fd.File); err == nil {
			file.size = sectors(st.Size())
		}
		n := &node{name: fd.NodeName, drv: fd.Format, file: file, size: fd.VirtualSize, owned: owned}
		if h, err := readQcow2(fd.File); err == nil && n.drv == "qcow2" {
			n.size = cmp.Or(n.size, h.size)
			n.hdrBacking, n.hdrBackingFmt, n.autoBacking = h.backing, h.backingFmt, h.backing
			_ = b.openBacking(n) // a broken chain is left out
		}
		b.register(n)
		b.disks = append(b.disks, &disk{FakeDisk: fd, root: n})
	}
	return b
}

// Install makes srv answer with the model, as one more monitor of the
// same QEMU. Commands the model does not know fail with CommandNotFound;
// Handle can still override one after.
func (b *BlockLayer) Install(srv *Server) {
	b.mu.Lock()
	b.srvs = append(b.srvs, srv)
	b.mu.Unlock()
	srv.HandleDefault(func(c *Conn, cmd Command) error {
		return b.notFound(c, cmd)
	})
	for name := range b.table {
		srv.Handle(name, b.serve)
	}
}

// Disable makes QEMU lack a command, as an older or differently built
// QEMU does: it fails with CommandNotFound, leaves query-commands and,
// for a transaction action type, is refused inside transaction too.
func (b *BlockLayer) Disable(command string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.disabled[command] = true
}

// Active returns the active node of a disk and its host file. target is
// what qmp.Disks calls it: the device id, else the drive id, else the
// node name.
func (b *BlockLayer) Active(target string) (node, file string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if d := b.diskByTarget(target); d != nil {
		return d.root.name, d.root.file.path
	}
	return "", ""
}

// Chain returns the host files of a disk's chain, active image first.
func (b *BlockLayer) Chain(target string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	d := b.diskByTarget(target)
	if d == nil {
		return nil
	}
	var files []string
	for n := d.root; n != nil; n = n.backing {
		files = append(files, n.file.path)
	}
	return files
}

// Nodes returns the names of all nodes, auto-named ones included, in
// the order they were made.
func (b *BlockLayer) Nodes() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var names []string
	for _, n := range b.nodes {
		names = append(names, n.name)
	}
	return names
}

// Kill ends QEMU as SIGKILL does: no SHUTDOWN event, every monitor
// drops its connections and stops accepting. The servers still need
// Close, which reports their errors.
func (b *BlockLayer) Kill() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.exit()
}

// Gone is closed once QEMU has exited, by quit or Kill.
func (b *BlockLayer) Gone() <-chan struct{} { return b.gone }

// exit hangs up every monitor; b.mu is held.
func (b *BlockLayer) exit() {
	select {
	case <-b.gone:
		return
	default:
	}
	close(b.gone)
	for _, srv := range b.srvs {
		srv.hangUp()
	}
}

// call is one command in progress; b.mu is held throughout.
type call struct {
	srv   *Server // the monitor the command came in on
	args  json.RawMessage
	after []func() // run after the reply
}

func (x *call) decode(v any) error { return decodeArgs(x.args, v) }

func decodeArgs(raw json.RawMessage, v any) error {
	if len(raw) == 0 {
		return nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return gerr("Invalid parameter type: %v", err)
	}
	return nil
}

// required fails on the first empty value of name, value pairs.
func required(pairs ...string) error {
	for i := 0; i+1 < len(pairs); i += 2 {
		if pairs[i+1] == "" {
			return gerr("Parameter '%s' is missing", pairs[i])
		}
	}
	return nil
}

func (b *BlockLayer) serve(c *Conn, cmd Command) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	f := b.table[cmd.Execute]
	if b.disabled[cmd.Execute] {
		f = nil
	}
	if f == nil {
		return b.notFound(c, cmd)
	}
	x := &call{srv: c.server, args: cmd.Arguments}
	ret, err := f(x)
	var qe *qmpError
	switch {
	case errors.As(err, &qe):
		_ = c.Fail(cmd, qe.class, qe.desc) // a client that went away is its own business
	case err != nil:
		return fmt.Errorf("block layer %s: %w", cmd.Execute, err)
	default:
		_ = c.Reply(cmd, ret) // likewise
	}
	for _, f := range x.after {
		f()
	}
	return nil
}

// notFound answers a command the model does not know, as QEMU does.
func (b *BlockLayer) notFound(c *Conn, cmd Command) error {
	_ = c.Fail(cmd, "CommandNotFound", fmt.Sprintf("The command %s has not been found", cmd.Execute)) // a client that went away is its own business
	return nil
}

// emit sends an event to every connection, as QEMU does to every
// monitor; a connection that went away misses it, as with QEMU.
func (b *BlockLayer) emit(name string, data any) {
	var conns []*Conn
	for _, srv := range b.srvs {
		srv.mu.Lock()
		for c := range srv.conns {
			conns = append(conns, c)
		}
		srv.mu.Unlock()
	}
	for _, c := range conns {
		if data != nil {
			_ = c.Event(name, data)
			continue
		}
		// QEMU leaves "data" out of events without any, such as STOP.
		now := time.Now()
		_ = c.WriteJSON(map[string]any{"event": name, "timestamp": map[string]int64{
			"seconds": now.Unix(), "microseconds": int64(now.Nanosecond() / 1000)}})
	}
}

// Run state.

func (b *BlockLayer) queryStatus(*call) (any, error) {
	return map[string]any{"status": b.runState, "singlestep": false, "running": b.runState == "running"}, nil
}

func (b *BlockLayer) stop(*call) (any, error) {
	if b.runState == "running" { // a VM not yet started stays in prelaunch
		b.runState = "paused"
		b.emit("STOP", nil)
	}
	return struct{}{}, nil
}

func (b *BlockLayer) cont(*call) (any, error) {
	if b.runState != "running" {
		b.runState = "running"
		b.emit("RESUME", nil)
	}
	return struct{}{}, nil
}

// quit replies, then QEMU is gone: every connection closes and no
// socket accepts any more.
func (b *BlockLayer) quit(x *call) (any, error) {
	b.emit("SHUTDOWN", map[string]any{"guest": false, "reason": "host-qmp-quit"})
	x.after = append(x.after, b.exit)
	return struct{}{}, nil
}

func (b *BlockLayer) queryCommands(*call) (any, error) {
	var names []string
	for name := range b.table {
		if !b.disabled[name] {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	out := make([]map[string]string, len(names))
	for i, name := range names {
		out[i] = map[string]string{"name": name}
	}
	return out, nil
}
