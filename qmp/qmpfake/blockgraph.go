// The block graph: lookups, node lifecycle, and the commands that
// change it (blockdev-add, blockdev-del, snapshots, transaction).

package qmpfake

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

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
	b.register(n.file) // opened first, then the node, then its backing
	if n.name == "" {
		n.name = b.autoName()
	} else {
		b.seq++
	}
	n.seq = b.seq
	b.nodes = append(b.nodes, n)
	b.register(n.backing)
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
		other := c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_'
		if !letter && (i == 0 || !other) {
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
	return &node{drv: "file", path: path, size: sectors(st.Size()), ro: ro}, nil
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
		if p := b.parentNode(file, "file"); p != nil && drv == "qcow2" {
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
	if j := b.jobHolding(base); j != nil {
		b.drain(j)
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
		Actions json.RawMessage `json:"actions"`
	}
	if err := x.decode(&a); err != nil {
		return nil, err
	}
	var actions []action
	switch {
	case a.Actions == nil:
		return nil, gerr("Parameter 'actions' is missing")
	case string(a.Actions) == "null" || json.Unmarshal(a.Actions, &actions) != nil:
		return nil, gerr("Invalid parameter type for 'actions', expected: array")
	}
	return b.runActions(actions)
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
	b.drain(nil)
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
			return nil, err
		}
		undo = append(undo, u)
	}
	return struct{}{}, nil
}

// drain emits what a QEMU drain does to ready jobs (only, if set): a
// transaction drains all of them, then each node it acts on.
func (b *BlockLayer) drain(only *job) {
	for _, j := range b.jobs {
		if j.status == "ready" && (only == nil || j == only) {
			b.setStatus(j, "standby")
			b.setStatus(j, "ready")
		}
	}
}

// sectors rounds a file size up to 512 bytes, as QEMU reports it.
func sectors(n int64) int64 { return (n + 511) &^ 511 }
