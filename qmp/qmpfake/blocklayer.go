package qmpfake

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// BlockLayer models the block graph of QEMU 7.2 behind a fake QMP
// socket, so that a suite written against real QEMU runs on the fake.
// Reply shapes, events and error classes and messages were taken from
// qemu-system-x86_64 7.2.
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
// (completes by itself), auto-finalize, auto-dismiss, job-finalize,
// job-dismiss, op blockers, and the standby/ready job events a graph
// change causes; run state with stop and cont; quit. Events go to every
// connection, as QEMU sends them to every monitor.
//
// Not modelled: guest I/O and data (commits copy nothing, so their jobs
// report len and offset 0 when active); other block jobs and transaction
// actions; formats other than qcow2 and raw, protocols other than file;
// qmp_capabilities negotiation state (any command is accepted at any
// time); query-commands lists only the commands the model answers;
// human-monitor-command answers "" to everything.
type BlockLayer struct {
	mu       sync.Mutex
	srv      *Server
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

type job struct {
	id                        string
	top, base                 *node
	active                    bool // top is the active layer
	status                    string
	autoFinalize, autoDismiss bool
	pivot                     bool
	filter                    string // the mirror_top node above an active commit
	filterSeq                 int
	length, offset            int64
}

// live reports whether the job still holds its nodes.
func (j *job) live() bool { return j.status != "concluded" && j.status != "null" }

func (j *job) holds(n *node) bool {
	for m := j.top; m != nil; m = m.backing {
		if m == n {
			return true
		}
		if m == j.base {
			break
		}
	}
	return false
}

// qmpError is an error reply.
type qmpError struct{ class, desc string }

func (e *qmpError) Error() string { return e.class + ": " + e.desc }

func gerr(format string, a ...any) error {
	return &qmpError{"GenericError", fmt.Sprintf(format, a...)}
}

// NewBlockLayer returns the block layer of a VM started with disks.
func NewBlockLayer(disks []FakeDisk) *BlockLayer {
	b := &BlockLayer{disabled: map[string]bool{}, runState: "prelaunch"}
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
		"query-name":                func(*call) (any, error) { return struct{}{}, nil },
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
		"block-job-complete":        b.blockJobComplete,
		"block-job-cancel":          b.blockJobCancel,
		"query-block-jobs":          b.queryBlockJobs,
		"job-finalize":              b.jobFinalize,
		"job-dismiss":               b.jobDismiss,
	}
	for _, fd := range disks {
		fd.Format = cmp.Or(fd.Format, "qcow2")
		owned := fd.Drive == ""
		file := &node{drv: "file", path: fd.File, owned: owned}
		if owned {
			file.name = "file-" + fd.Target
		}
		if st, err := os.Stat(fd.File); err == nil {
			file.size = st.Size()
		}
		n := &node{name: fd.NodeName, drv: fd.Format, file: file, size: fd.VirtualSize, owned: owned}
		if h, err := readQcow2(fd.File); err == nil && n.drv == "qcow2" {
			n.size = cmp.Or(n.size, h.size)
			n.hdrBacking, n.hdrBackingFmt, n.autoBacking = h.backing, h.backingFmt, h.backing
			b.openBacking(n) // a broken chain is left out
		}
		b.register(n)
		b.disks = append(b.disks, &disk{FakeDisk: fd, root: n})
	}
	return b
}

// Install makes srv answer with the model. Commands the model does not
// know fail with CommandNotFound; Handle can still override one after.
func (b *BlockLayer) Install(srv *Server) {
	b.mu.Lock()
	b.srv = srv
	b.mu.Unlock()
	srv.HandleDefault(func(c *Conn, cmd Command) error {
		c.Fail(cmd, "CommandNotFound", fmt.Sprintf("The command %s has not been found", cmd.Execute))
		return nil
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

// call is one command in progress; b.mu is held throughout.
type call struct {
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
		c.Fail(cmd, "CommandNotFound", fmt.Sprintf("The command %s has not been found", cmd.Execute))
		return nil
	}
	x := &call{args: cmd.Arguments}
	ret, err := f(x)
	var qe *qmpError
	switch {
	case errors.As(err, &qe):
		c.Fail(cmd, qe.class, qe.desc)
	case err != nil:
		return fmt.Errorf("block layer %s: %w", cmd.Execute, err)
	default:
		c.Reply(cmd, ret) // a client that went away is its own business
	}
	for _, f := range x.after {
		f()
	}
	return nil
}

// emit sends an event to every connection, as QEMU does to every monitor.
func (b *BlockLayer) emit(name string, data any) {
	if b.srv == nil {
		return
	}
	b.srv.mu.Lock()
	conns := make([]*Conn, 0, len(b.srv.conns))
	for c := range b.srv.conns {
		conns = append(conns, c)
	}
	b.srv.mu.Unlock()
	for _, c := range conns {
		if data != nil {
			c.Event(name, data)
			continue
		}
		// QEMU leaves "data" out of events without any, such as STOP.
		now := time.Now()
		c.WriteJSON(map[string]any{"event": name, "timestamp": map[string]int64{
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

// quit replies, then QEMU is gone: every connection closes and the
// socket no longer accepts.
func (b *BlockLayer) quit(x *call) (any, error) {
	b.emit("SHUTDOWN", map[string]any{"guest": false, "reason": "host-qmp-quit"})
	x.after = append(x.after, func() {
		b.srv.ln.Close()
		b.srv.mu.Lock()
		defer b.srv.mu.Unlock()
		for c := range b.srv.conns {
			c.Close()
		}
	})
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

// Graph lookups.

func (b *BlockLayer) node(name string) *node {
	for _, n := range b.nodes {
		if name != "" && n.name == name {
			return n
		}
	}
	return nil
}

func (b *BlockLayer) diskByDrive(drive string) *disk {
	for _, d := range b.disks {
		if drive != "" && d.Drive == drive {
			return d
		}
	}
	return nil
}

func (b *BlockLayer) diskByTarget(target string) *disk {
	for _, d := range b.disks {
		if d.target() == target {
			return d
		}
	}
	return nil
}

func (b *BlockLayer) diskOf(n *node) *disk {
	for _, d := range b.disks {
		if d.root == n {
			return d
		}
	}
	return nil
}

func (b *BlockLayer) job(id string) *job {
	for _, j := range b.jobs {
		if j.id == id {
			return j
		}
	}
	return nil
}

func (b *BlockLayer) jobHolding(n *node) *job {
	for _, j := range b.jobs {
		if j.live() && j.holds(n) {
			return j
		}
	}
	return nil
}

func (b *BlockLayer) parentNode(n *node, role string) *node {
	for _, m := range b.nodes {
		if role == "backing" && m.backing == n || role == "file" && m.file == n {
			return m
		}
	}
	return nil
}

func (b *BlockLayer) inUse(n *node) bool {
	return b.diskOf(n) != nil || b.jobHolding(n) != nil ||
		b.parentNode(n, "backing") != nil || b.parentNode(n, "file") != nil
}

// lookup is QEMU's bdrv_lookup_bs: a drive name, else a node name. label
// is how QEMU names the node in a "busy" error: the drive when the drive
// was named and a job's filter node has taken its place.
func (b *BlockLayer) lookup(device, nodeName string) (n *node, label string, err error) {
	if d := b.diskByDrive(device); d != nil {
		return d.root, device, nil
	}
	if n := b.node(nodeName); n != nil {
		return n, n.name, nil
	}
	return nil, "", gerr("Cannot find device='%s' nor node-name='%s'", device, nodeName)
}

// blocked applies QEMU's op blockers, the newest first.
func (b *BlockLayer) blocked(n *node, label string) error {
	if b.jobHolding(n) != nil {
		return gerr("Node '%s' is busy: block device is in use by block job: commit", label)
	}
	if p := b.parentNode(n, "backing"); p != nil {
		// QEMU names a node by its drive while the drive is attached to it.
		label = n.name
		if d := b.diskOf(n); d != nil && d.Drive != "" {
			label = d.Drive
		}
		return gerr("Node '%s' is busy: node is used as backing hd of '%s'", label, p.name)
	}
	return nil
}

// Node lifecycle.

func (b *BlockLayer) autoName() string {
	b.seq++
	return fmt.Sprintf("#block%d%02d", b.seq, b.seq*37%100)
}

// register adds n and its children that are not yet in the graph.
func (b *BlockLayer) register(n *node) {
	if n == nil || n.seq != 0 {
		return
	}
	b.register(n.file)
	b.register(n.backing)
	if n.name == "" {
		n.name = b.autoName()
	} else {
		b.seq++
	}
	n.seq = b.seq
	b.nodes = append(b.nodes, n)
}

// release deletes n, and then its children, once nothing uses it and
// the monitor does not own it.
func (b *BlockLayer) release(n *node) {
	if n == nil || n.owned || n.seq == 0 || b.inUse(n) {
		return
	}
	b.nodes = slices.DeleteFunc(b.nodes, func(m *node) bool { return m == n })
	n.seq = 0
	b.release(n.file)
	b.release(n.backing)
}

func (b *BlockLayer) checkNodeName(name string) error {
	switch {
	case !wellFormed(name):
		return gerr("Invalid node-name: '%s'", name)
	case b.diskByDrive(name) != nil:
		return gerr("node-name=%s is conflicting with a device id", name)
	case b.node(name) != nil:
		return gerr("Duplicate nodes with node-name='%s'", name)
	case len(name) > 31:
		return gerr("Node name too long")
	}
	return nil
}

// wellFormed is QEMU's id_wellformed, for node names and job ids.
func wellFormed(id string) bool {
	for i, c := range id {
		letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if !letter && (i == 0 || !(c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_')) {
			return false
		}
	}
	return id != ""
}

// errnoText is an OS error as QEMU's strerror prints it.
func errnoText(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		s := errno.Error()
		return strings.ToUpper(s[:1]) + s[1:]
	}
	return err.Error()
}

func (b *BlockLayer) checkLock(path string, ro bool) error {
	for _, m := range b.nodes {
		if m.file == nil && filepath.Clean(m.path) == filepath.Clean(path) {
			if ro {
				return gerr(`Failed to get shared "write" lock`)
			}
			return gerr(`Failed to get "write" lock`)
		}
	}
	return nil
}

// openFile opens a protocol node, not yet registered.
func (b *BlockLayer) openFile(path string, ro bool) (*node, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, gerr("Could not open '%s': %s", path, errnoText(err))
	}
	if err := b.checkLock(path, ro); err != nil {
		return nil, err
	}
	return &node{drv: "file", path: path, size: st.Size(), ro: ro}, nil
}

// openFormat opens a format node over file, without its backing.
func openFormat(drv string, file *node, ro bool) (*node, error) {
	n := &node{drv: drv, file: file, size: file.size, ro: ro}
	if drv != "qcow2" {
		return n, nil
	}
	h, err := readQcow2(file.path)
	switch {
	case errors.Is(err, errNotQcow2):
		return nil, gerr("%v", err)
	case err != nil:
		return nil, gerr("Could not open '%s': %s", file.path, errnoText(err))
	}
	n.size = h.size
	n.hdrBacking, n.hdrBackingFmt, n.autoBacking = h.backing, h.backingFmt, h.backing
	return n, nil
}

// fullBacking is the header's backing file relative to the image.
func (n *node) fullBacking() string {
	if n.hdrBacking == "" || strings.HasPrefix(n.hdrBacking, "json:") || filepath.IsAbs(n.hdrBacking) {
		return n.hdrBacking
	}
	return filepath.Join(filepath.Dir(n.file.path), n.hdrBacking)
}

// openBacking opens the chain the image header names, read-only.
func (b *BlockLayer) openBacking(n *node) error {
	if n.hdrBacking == "" {
		return nil
	}
	path := n.fullBacking()
	drv := n.hdrBackingFmt
	if _, err := readQcow2(path); drv == "" && err == nil {
		drv = "qcow2"
	}
	file, err := b.openFile(path, true)
	var bn *node
	if err == nil {
		bn, err = openFormat(cmp.Or(drv, "raw"), file, true)
	}
	if err == nil {
		err = b.openBacking(bn)
	}
	if err != nil {
		var qe *qmpError
		if errors.As(err, &qe) {
			return gerr("Could not open backing file: %s", qe.desc)
		}
		return err
	}
	n.backing, n.autoBacking = bn, bn.filename()
	return nil
}

// describe returns n's filename and open options. A qcow2 node whose
// backing node is not the file its header names (as after
// blockdev-add with "backing": null) gets a json: filename, as in QEMU.
func (n *node) describe() (string, map[string]any) {
	if n.file == nil {
		return n.path, map[string]any{"driver": "file", "filename": n.path}
	}
	opts := map[string]any{"driver": n.drv, "file": map[string]any{"driver": "file", "filename": n.file.path}}
	var bname string
	var bopts map[string]any
	if n.backing != nil {
		bname, bopts = n.backing.describe()
	}
	if n.drv != "qcow2" || n.autoBacking == bname {
		return n.file.path, opts
	}
	opts["backing"] = nil
	if n.backing != nil {
		opts["backing"] = bopts
	}
	return "json:" + qemuJSON(opts), opts
}

func (n *node) filename() string { name, _ := n.describe(); return name }

// qemuJSON formats like QEMU's qobject_to_json: sorted keys, ": " and ", ".
func qemuJSON(v any) string {
	m, ok := v.(map[string]any)
	if !ok {
		b, _ := json.Marshal(v)
		return string(b)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = qemuJSON(k) + ": " + qemuJSON(m[k])
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

// Queries.

type imageInfo struct {
	Filename              string     `json:"filename"`
	Format                string     `json:"format"`
	VirtualSize           int64      `json:"virtual-size"`
	ActualSize            int64      `json:"actual-size"`
	ClusterSize           int64      `json:"cluster-size,omitempty"`
	DirtyFlag             bool       `json:"dirty-flag"`
	BackingFilename       string     `json:"backing-filename,omitempty"`
	FullBackingFilename   string     `json:"full-backing-filename,omitempty"`
	BackingFilenameFormat string     `json:"backing-filename-format,omitempty"`
	BackingImage          *imageInfo `json:"backing-image,omitempty"`
}

type cacheInfo struct {
	Writeback bool `json:"writeback"`
	Direct    bool `json:"direct"`
	NoFlush   bool `json:"no-flush"`
}

type nodeInfo struct {
	File             string     `json:"file"`
	NodeName         string     `json:"node-name"`
	Ro               bool       `json:"ro"`
	Drv              string     `json:"drv"`
	BackingFile      string     `json:"backing_file,omitempty"`
	BackingFileDepth int        `json:"backing_file_depth"`
	Encrypted        bool       `json:"encrypted"`
	DetectZeroes     string     `json:"detect_zeroes"`
	Bps              int64      `json:"bps"`
	BpsRd            int64      `json:"bps_rd"`
	BpsWr            int64      `json:"bps_wr"`
	Iops             int64      `json:"iops"`
	IopsRd           int64      `json:"iops_rd"`
	IopsWr           int64      `json:"iops_wr"`
	WriteThreshold   int64      `json:"write_threshold"`
	Cache            cacheInfo  `json:"cache"`
	Image            *imageInfo `json:"image"`
}

func (n *node) image(nested bool) *imageInfo {
	img := &imageInfo{Filename: n.filename(), Format: n.drv, VirtualSize: n.size, ActualSize: n.size}
	if n.file != nil {
		img.ActualSize = n.file.size
	}
	if n.drv == "qcow2" {
		img.ClusterSize = qcow2Cluster
	}
	if n.hdrBacking != "" {
		img.BackingFilename, img.FullBackingFilename = n.hdrBacking, n.fullBacking()
		img.BackingFilenameFormat = n.hdrBackingFmt
	}
	if nested && n.backing != nil {
		img.BackingImage = n.backing.image(true)
	}
	return img
}

// info describes n as query-block (nested) and query-named-block-nodes do.
func (n *node) info(nested bool) *nodeInfo {
	in := &nodeInfo{File: n.filename(), NodeName: n.name, Ro: n.ro, Drv: n.drv,
		DetectZeroes: "off", Cache: cacheInfo{Writeback: true}, Image: n.image(nested)}
	if n.backing != nil {
		in.BackingFile = n.backing.filename()
	}
	for m := n.backing; nested && m != nil; m = m.backing {
		in.BackingFileDepth++
	}
	return in
}

func (b *BlockLayer) queryBlock(*call) (any, error) {
	type blockInfo struct {
		Device    string    `json:"device"`
		Qdev      string    `json:"qdev,omitempty"`
		Type      string    `json:"type"`
		Removable bool      `json:"removable"`
		Locked    bool      `json:"locked"`
		IOStatus  string    `json:"io-status"`
		Inserted  *nodeInfo `json:"inserted"`
	}
	out := []blockInfo{}
	for _, d := range b.disks {
		bi := blockInfo{Device: d.Drive, Type: "unknown", IOStatus: "ok", Inserted: d.root.info(true)}
		if d.Target != "" {
			bi.Qdev = "/machine/peripheral/" + d.Target + "/virtio-backend"
		}
		out = append(out, bi)
	}
	return out, nil
}

// queryNamedBlockNodes lists every node, the newest first, as QEMU does,
// with the mirror_top filter that an active commit puts on top.
func (b *BlockLayer) queryNamedBlockNodes(x *call) (any, error) {
	var a struct {
		Flat bool `json:"flat"`
	}
	if err := x.decode(&a); err != nil {
		return nil, err
	}
	type entry struct {
		seq  int
		info *nodeInfo
	}
	var all []entry
	for _, n := range b.nodes {
		all = append(all, entry{n.seq, n.info(!a.Flat)})
	}
	for _, j := range b.jobs {
		if j.live() && j.active {
			name := j.top.filename()
			all = append(all, entry{j.filterSeq, &nodeInfo{File: name, NodeName: j.filter, Drv: "mirror_top",
				DetectZeroes: "off", Cache: cacheInfo{Writeback: true},
				Image: &imageInfo{Filename: name, Format: "mirror_top", VirtualSize: j.top.size}}})
		}
	}
	sort.Slice(all, func(i, k int) bool { return all[i].seq > all[k].seq })
	out := make([]*nodeInfo, len(all))
	for i, e := range all {
		out[i] = e.info
	}
	return out, nil
}

// blockGraph answers x-debug-query-block-graph: block backends (disks,
// and the one a commit job opens on its base), jobs and nodes.
func (b *BlockLayer) blockGraph(*call) (any, error) {
	type gnode struct {
		ID   int    `json:"id"`
		Type string `json:"type"`
		Name string `json:"name"`
	}
	type gedge struct {
		Parent     int      `json:"parent"`
		Child      int      `json:"child"`
		Name       string   `json:"name"`
		Perm       []string `json:"perm"`
		SharedPerm []string `json:"shared-perm"`
	}
	var g struct {
		Nodes []gnode `json:"nodes"`
		Edges []gedge `json:"edges"`
	}
	ids := map[any]int{}
	add := func(key any, typ, name string) {
		ids[key] = len(ids) + 1
		g.Nodes = append(g.Nodes, gnode{ids[key], typ, name})
	}
	edge := func(parent, child any, name string) {
		g.Edges = append(g.Edges, gedge{ids[parent], ids[child], name, []string{}, []string{}})
	}
	above := map[*node]string{} // active top -> its filter's key
	for _, d := range b.disks {
		add(d, "block-backend", cmp.Or(d.Drive, "/machine/peripheral/"+d.Target+"/virtio-backend"))
	}
	for _, j := range b.jobs {
		if !j.live() {
			continue
		}
		add(j, "block-job", j.id)
		add("backend:"+j.id, "block-backend", "")
		if j.active {
			add("filter:"+j.id, "block-driver", j.filter)
			above[j.top] = "filter:" + j.id
		}
	}
	for _, n := range b.nodes {
		add(n, "block-driver", n.name)
	}
	for _, d := range b.disks {
		if f, ok := above[d.root]; ok {
			edge(d, f, "root")
		} else {
			edge(d, d.root, "root")
		}
	}
	for _, j := range b.jobs {
		if !j.live() {
			continue
		}
		if j.active {
			edge("filter:"+j.id, j.top, "backing")
			edge(j, "filter:"+j.id, "main node")
		} else {
			edge(j, j.top, "main node")
		}
		edge(j, j.top, "source")
		edge(j, j.base, "target")
		for m := j.top.backing; m != nil && m != j.base; m = m.backing {
			edge(j, m, "intermediate node")
		}
		edge("backend:"+j.id, j.base, "root")
	}
	for _, n := range b.nodes {
		if n.file != nil {
			edge(n, n.file, "file")
		}
		if n.backing != nil {
			edge(n, n.backing, "backing")
		}
	}
	return g, nil
}

// Graph changes.

func (b *BlockLayer) blockdevAdd(x *call) (any, error) {
	var a struct {
		Driver   string          `json:"driver"`
		NodeName string          `json:"node-name"`
		Filename string          `json:"filename"`
		File     json.RawMessage `json:"file"`
		Backing  json.RawMessage `json:"backing"`
		ReadOnly bool            `json:"read-only"`
	}
	if err := x.decode(&a); err != nil {
		return nil, err
	}
	switch a.Driver {
	case "qcow2", "raw", "file":
	case "":
		return nil, gerr("Parameter 'driver' is missing")
	default:
		return nil, gerr("Parameter 'driver' does not accept value '%s'", a.Driver)
	}
	if a.NodeName == "" {
		return nil, gerr("'node-name' must be specified for the root node")
	}
	if err := b.checkNodeName(a.NodeName); err != nil {
		return nil, err
	}
	var n *node
	var err error
	if a.Driver == "file" {
		if err := required("filename", a.Filename); err != nil {
			return nil, err
		}
		n, err = b.openFile(a.Filename, a.ReadOnly)
	} else {
		n, err = b.openImage(a.Driver, a.NodeName, a.File, a.Backing, a.ReadOnly)
	}
	if err != nil {
		return nil, err
	}
	n.name, n.owned = a.NodeName, true
	b.register(n)
	return struct{}{}, nil
}

// openImage opens a format node for blockdev-add: its file is a node
// name or an inline {"driver": "file"}; its backing is the header's
// chain when absent, none when null, or a node name.
func (b *BlockLayer) openImage(drv, name string, fileArg, backingArg json.RawMessage, ro bool) (*node, error) {
	var ref string
	var file *node
	switch {
	case fileArg == nil:
		return nil, gerr(`A block device must be specified for "file"`)
	case json.Unmarshal(fileArg, &ref) == nil:
		if file = b.node(ref); file == nil {
			return nil, gerr("Cannot find device='%s' nor node-name='%s'", ref, ref)
		}
		if p := b.parentNode(file, "file"); p != nil {
			return nil, gerr("Permission conflict on node '%s': permissions 'write, resize' are both required by node '%s' (uses node '%s' as 'file' child) and unshared by node '%s' (uses node '%s' as 'file' child).", ref, p.name, ref, name, ref)
		}
	default:
		var o struct{ Driver, Filename string }
		if err := decodeArgs(fileArg, &o); err != nil {
			return nil, err
		}
		if o.Driver != "file" {
			return nil, gerr("qmpfake: protocol driver '%s' is not modelled", o.Driver)
		}
		var err error
		if file, err = b.openFile(o.Filename, ro); err != nil {
			return nil, err
		}
	}
	n, err := openFormat(drv, file, ro)
	if err != nil {
		return nil, err
	}
	switch {
	case backingArg == nil:
		return n, b.openBacking(n)
	case string(backingArg) == "null":
		return n, nil
	case json.Unmarshal(backingArg, &ref) != nil:
		return nil, gerr("Invalid parameter type for 'backing', expected: string")
	}
	if n.backing = b.node(ref); n.backing == nil {
		return nil, gerr("Cannot find device='%s' nor node-name='%s'", ref, ref)
	}
	return n, nil
}

func (b *BlockLayer) blockdevDel(x *call) (any, error) {
	var a struct {
		NodeName string `json:"node-name"`
	}
	if err := x.decode(&a); err != nil {
		return nil, err
	}
	n := b.node(a.NodeName)
	if n == nil {
		return nil, gerr("Failed to find node with node-name='%s'", a.NodeName)
	}
	if b.diskOf(n) != nil && b.jobHolding(n) == nil {
		return nil, gerr("Node %s is in use", n.name)
	}
	if err := b.blocked(n, n.name); err != nil {
		return nil, err
	}
	if !n.owned {
		return nil, gerr("Node %s is not owned by the monitor", n.name)
	}
	if b.inUse(n) {
		return nil, gerr("Block device %s is in use", n.name)
	}
	n.owned = false
	b.release(n)
	return struct{}{}, nil
}

// appendOverlay puts ov on top of base, as bdrv_append does, and
// returns its undo.
func (b *BlockLayer) appendOverlay(base, ov *node) func() {
	var moved []*disk
	for _, d := range b.disks {
		if d.root == base {
			d.root = ov
			moved = append(moved, d)
		}
	}
	ro, fileRO := base.ro, base.file.ro
	ov.backing, base.ro = base, true
	if !base.file.owned {
		base.file.ro = true
	}
	return func() {
		for _, d := range moved {
			d.root = base
		}
		ov.backing, base.ro, base.file.ro = nil, ro, fileRO
	}
}

// snapshotBase finds and checks the node a snapshot goes on top of.
func (b *BlockLayer) snapshotBase(device, nodeName string) (*node, error) {
	base, label, err := b.lookup(device, nodeName)
	if err != nil {
		return nil, err
	}
	if err := b.blocked(base, label); err != nil {
		return nil, err
	}
	if base.file == nil {
		return nil, gerr("qmpfake: a snapshot of a protocol node is not modelled")
	}
	return base, nil
}

func (b *BlockLayer) snapshot(data json.RawMessage) (func(), error) {
	var a struct{ Node, Overlay string }
	if err := decodeArgs(data, &a); err != nil {
		return nil, err
	}
	if err := required("node", a.Node, "overlay", a.Overlay); err != nil {
		return nil, err
	}
	base, err := b.snapshotBase(a.Node, a.Node)
	if err != nil {
		return nil, err
	}
	ov, _, err := b.lookup(a.Overlay, a.Overlay)
	switch {
	case err != nil:
		return nil, err
	case b.inUse(ov):
		return nil, gerr("The overlay is already in use")
	case ov.backing != nil:
		return nil, gerr("The overlay already has a backing image")
	case ov.drv != "qcow2":
		return nil, gerr("The overlay does not support backing images")
	}
	return b.appendOverlay(base, ov), nil
}

func (b *BlockLayer) snapshotSync(data json.RawMessage) (func(), error) {
	var a struct {
		Device       string `json:"device"`
		NodeName     string `json:"node-name"`
		File         string `json:"snapshot-file"`
		OverlayName  string `json:"snapshot-node-name"`
		Format, Mode string
	}
	if err := decodeArgs(data, &a); err != nil {
		return nil, err
	}
	if err := required("snapshot-file", a.File); err != nil {
		return nil, err
	}
	base, err := b.snapshotBase(a.Device, a.NodeName)
	switch {
	case err != nil:
		return nil, err
	case a.NodeName != "" && a.OverlayName == "":
		return nil, gerr("New overlay node-name missing")
	case a.OverlayName != "" && (b.node(a.OverlayName) != nil || b.diskByDrive(a.OverlayName) != nil):
		return nil, gerr("New overlay node-name already in use")
	case cmp.Or(a.Format, "qcow2") != "qcow2":
		return nil, gerr("qmpfake: format '%s' is not modelled", a.Format)
	}
	switch cmp.Or(a.Mode, "absolute-paths") {
	case "absolute-paths":
		if err := b.checkLock(a.File, false); err != nil {
			return nil, err
		}
		if err := createQcow2(a.File, base.size, base.filename(), base.drv); err != nil {
			return nil, gerr("Could not create '%s': %s", a.File, errnoText(err))
		}
	case "existing":
	default:
		return nil, gerr("Parameter 'mode' does not accept value '%s'", a.Mode)
	}
	file, err := b.openFile(a.File, false)
	if err != nil {
		return nil, err
	}
	ov, err := openFormat("qcow2", file, false)
	if err != nil {
		return nil, err
	}
	if a.OverlayName != "" {
		if err := b.checkNodeName(a.OverlayName); err != nil {
			return nil, err
		}
	}
	ov.name = a.OverlayName
	b.register(ov)
	undo := b.appendOverlay(base, ov)
	return func() { undo(); b.release(ov) }, nil
}

// transactionActions are QEMU 7.2's action types; the model runs three.
var transactionActions = []string{"abort", "block-dirty-bitmap-add", "block-dirty-bitmap-clear",
	"block-dirty-bitmap-disable", "block-dirty-bitmap-enable", "block-dirty-bitmap-merge",
	"block-dirty-bitmap-remove", "blockdev-backup", "blockdev-snapshot",
	"blockdev-snapshot-internal-sync", "blockdev-snapshot-sync", "drive-backup"}

type action struct {
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
}

func (b *BlockLayer) transaction(x *call) (any, error) {
	var a struct {
		Actions []action `json:"actions"`
	}
	if err := x.decode(&a); err != nil {
		return nil, err
	}
	return b.runActions(a.Actions)
}

// single runs blockdev-snapshot or blockdev-snapshot-sync as QEMU does:
// as a transaction of one action.
func (b *BlockLayer) single(typ string) func(*call) (any, error) {
	return func(x *call) (any, error) { return b.runActions([]action{{typ, x.args}}) }
}

// runActions is all or nothing: each action registers its undo, and a
// failure undoes the earlier ones in reverse.
func (b *BlockLayer) runActions(actions []action) (any, error) {
	for _, a := range actions {
		if !slices.Contains(transactionActions, a.Type) || b.disabled[a.Type] {
			return nil, gerr("Parameter 'type' does not accept value '%s'", a.Type)
		}
		if a.Type != "abort" && a.Type != "blockdev-snapshot" && a.Type != "blockdev-snapshot-sync" {
			return nil, gerr("qmpfake: transaction action '%s' is not modelled", a.Type)
		}
	}
	if len(actions) > 0 {
		b.drain()
	}
	var undo []func()
	for _, a := range actions {
		var u func()
		var err error
		switch a.Type {
		case "abort":
			err = gerr("Transaction aborted using Abort action")
		case "blockdev-snapshot":
			u, err = b.snapshot(a.Data)
		case "blockdev-snapshot-sync":
			u, err = b.snapshotSync(a.Data)
		}
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
			b.drain()
			return nil, err
		}
		undo = append(undo, u)
	}
	return struct{}{}, nil
}

// drain emits what QEMU's drain around a graph change does to ready jobs.
func (b *BlockLayer) drain() {
	for _, j := range b.jobs {
		if j.status == "ready" {
			b.setStatus(j, "standby")
			b.setStatus(j, "ready")
		}
	}
}

// Jobs.

func (b *BlockLayer) setStatus(j *job, status string) {
	j.status = status
	b.emit("JOB_STATUS_CHANGE", map[string]any{"status": status, "id": j.id})
}

func (b *BlockLayer) jobEvent(name string, j *job) {
	b.emit(name, map[string]any{"device": j.id, "len": j.length, "offset": j.offset, "speed": 0, "type": "commit"})
}

func (b *BlockLayer) blockCommit(x *call) (any, error) {
	var a struct {
		JobID        *string `json:"job-id"`
		Device       string  `json:"device"`
		TopNode      string  `json:"top-node"`
		BaseNode     string  `json:"base-node"`
		AutoFinalize *bool   `json:"auto-finalize"`
		AutoDismiss  *bool   `json:"auto-dismiss"`
	}
	if err := x.decode(&a); err != nil {
		return nil, err
	}
	if err := required("device", a.Device); err != nil {
		return nil, err
	}
	bs, _, err := b.lookup(a.Device, a.Device)
	if err != nil {
		return nil, &qmpError{"DeviceNotFound", fmt.Sprintf("Device '%s' not found", a.Device)}
	}
	if b.jobHolding(bs) != nil || b.parentNode(bs, "backing") != nil || b.parentNode(bs, "file") != nil {
		return nil, gerr("Need a root block node")
	}
	top, base := bs, (*node)(nil)
	if a.TopNode != "" {
		if top = b.node(a.TopNode); top == nil {
			return nil, gerr("Cannot find device='' nor node-name='%s'", a.TopNode)
		}
		if !chainHas(bs, top) {
			return nil, gerr("'%s' is not in this backing file chain", a.TopNode)
		}
	}
	if a.BaseNode != "" {
		if base = b.node(a.BaseNode); base == nil {
			return nil, gerr("Cannot find device='' nor node-name='%s'", a.BaseNode)
		}
		if !chainHas(top, base) {
			return nil, gerr("'%s' is not in this backing file chain", a.BaseNode)
		}
	} else {
		for base = top; base.backing != nil; base = base.backing {
		}
	}
	if top == base {
		return nil, gerr("cannot commit an image into itself")
	}
	var id string
	if a.JobID != nil {
		id = *a.JobID
	} else if d := b.diskOf(bs); d != nil {
		id = d.Drive
	}
	if !wellFormed(id) {
		return nil, gerr("Invalid job ID '%s'", id)
	}
	if b.job(id) != nil {
		return nil, gerr("Job ID '%s' already in use", id)
	}
	j := &job{id: id, top: top, base: base, active: top == bs,
		autoFinalize: a.AutoFinalize == nil || *a.AutoFinalize, autoDismiss: a.AutoDismiss == nil || *a.AutoDismiss}
	if j.active {
		j.filter = b.autoName()
		j.filterSeq = b.seq
	} else {
		j.length = top.size
	}
	b.jobs = append(b.jobs, j)
	b.setStatus(j, "created")
	b.setStatus(j, "running")
	x.after = append(x.after, func() {
		b.srv.Go(func() error {
			b.mu.Lock()
			defer b.mu.Unlock()
			b.progress(j)
			return nil
		})
	})
	return struct{}{}, nil
}

func chainHas(from, n *node) bool {
	for m := from; m != nil; m = m.backing {
		if m == n {
			return true
		}
	}
	return false
}

// progress is the job's run, after block-commit has replied: an active
// commit becomes ready, one below the active layer completes.
func (b *BlockLayer) progress(j *job) {
	if j.status != "running" {
		return // cancelled meanwhile
	}
	if j.active {
		b.setStatus(j, "ready")
		b.jobEvent("BLOCK_JOB_READY", j)
		return
	}
	j.offset = j.length
	b.finish(j, true)
}

func (b *BlockLayer) finish(j *job, pivot bool) {
	b.setStatus(j, "waiting")
	b.setStatus(j, "pending")
	j.pivot = pivot
	if !j.autoFinalize {
		b.emit("BLOCK_JOB_PENDING", map[string]any{"type": "commit", "id": j.id})
		return
	}
	b.finalize(j)
}

func (b *BlockLayer) finalize(j *job) {
	var dropped *node
	if j.pivot {
		dropped = b.pivot(j)
	}
	b.jobEvent("BLOCK_JOB_COMPLETED", j)
	b.conclude(j)
	b.release(dropped) // once the job has let go of it
}

// pivot drops the committed images from the chain and returns the top
// one. They keep their own backing links: an image the monitor added
// stays, with its chain, until blockdev-del, and keeps the base busy.
func (b *BlockLayer) pivot(j *job) *node {
	if j.active {
		for _, d := range b.disks {
			if d.root == j.top {
				d.root = j.base
			}
		}
		j.base.ro = false
		if !j.base.file.owned {
			j.base.file.ro = false
		}
		return j.top
	}
	if above := b.parentNode(j.top, "backing"); above != nil {
		// QEMU rewrites the backing file name in the image above.
		name := j.base.filename()
		above.backing, above.hdrBacking, above.autoBacking, above.hdrBackingFmt = j.base, name, name, j.base.drv
	}
	return j.top
}

func (b *BlockLayer) conclude(j *job) {
	b.setStatus(j, "concluded")
	if j.autoDismiss {
		b.dismiss(j)
	}
}

func (b *BlockLayer) dismiss(j *job) {
	b.setStatus(j, "null")
	b.jobs = slices.DeleteFunc(b.jobs, func(k *job) bool { return k == j })
}

func verbError(j *job, verb string) error {
	return gerr("Job '%s' in state '%s' cannot accept command verb '%s'", j.id, j.status, verb)
}

// findJob finds a job by the "device" (block-job-*) or "id" (job-*)
// argument, failing as QEMU does for each family.
func (b *BlockLayer) findJob(x *call, key string) (*job, error) {
	var a map[string]any
	if err := x.decode(&a); err != nil {
		return nil, err
	}
	id, _ := a[key].(string)
	if j := b.job(id); j != nil {
		return j, nil
	}
	if key == "id" {
		return nil, gerr("Job not found")
	}
	return nil, &qmpError{"DeviceNotActive", fmt.Sprintf("Block job '%s' not found", id)}
}

func (b *BlockLayer) blockJobComplete(x *call) (any, error) {
	j, err := b.findJob(x, "device")
	if err != nil {
		return nil, err
	}
	if j.status != "ready" {
		return nil, verbError(j, "complete")
	}
	x.after = append(x.after, func() { b.finish(j, true) })
	return struct{}{}, nil
}

// blockJobCancel ends a ready job without pivoting (QEMU reports it
// COMPLETED), and aborts one not yet ready (CANCELLED).
func (b *BlockLayer) blockJobCancel(x *call) (any, error) {
	j, err := b.findJob(x, "device")
	if err != nil {
		return nil, err
	}
	switch j.status {
	case "ready":
		x.after = append(x.after, func() { b.finish(j, false) })
	case "created", "running", "pending":
		x.after = append(x.after, func() {
			b.setStatus(j, "aborting")
			b.jobEvent("BLOCK_JOB_CANCELLED", j)
			b.conclude(j)
		})
	default:
		return nil, verbError(j, "cancel")
	}
	return struct{}{}, nil
}

func (b *BlockLayer) jobFinalize(x *call) (any, error) {
	j, err := b.findJob(x, "id")
	if err != nil {
		return nil, err
	}
	if j.status != "pending" {
		return nil, verbError(j, "finalize")
	}
	b.finalize(j)
	return struct{}{}, nil
}

func (b *BlockLayer) jobDismiss(x *call) (any, error) {
	j, err := b.findJob(x, "id")
	if err != nil {
		return nil, err
	}
	if j.status != "concluded" {
		return nil, verbError(j, "dismiss")
	}
	b.dismiss(j)
	return struct{}{}, nil
}

func (b *BlockLayer) queryBlockJobs(*call) (any, error) {
	out := []map[string]any{}
	for _, j := range b.jobs {
		out = append(out, map[string]any{"type": "commit", "device": j.id, "len": j.length, "offset": j.offset,
			"busy": j.status == "running", "paused": j.status == "pending", "speed": 0, "io-status": "ok",
			"ready": j.status == "ready", "status": j.status,
			"auto-finalize": j.autoFinalize, "auto-dismiss": j.autoDismiss})
	}
	return out, nil
}
