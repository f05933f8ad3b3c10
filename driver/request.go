package driver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode"

	"libvirt.org/go/libvirtxml"

	"github.com/qsnapd/qsnapd/qmp"
	"github.com/qsnapd/qsnapd/transaction"
)

// CreateRequest asks for a snapshot, as virDomainSnapshotCreateXML does.
type CreateRequest struct {
	XML   string
	Flags CreateFlags
	// Quiesce overrides the QUIESCE flag's "require" or the daemon's
	// default; empty means neither is overridden.
	Quiesce QuiesceMode
	// QuiesceScope overrides the daemon's scope of a quiesced snapshot;
	// empty means it is not overridden.
	QuiesceScope QuiesceScope
	// OpID names the operation in the journal; empty means a new random
	// id. It must not name an operation the journal holds.
	OpID string
}

// createSpec is a validated request: every check of libvirt's (and a few
// more) passed, nothing changed yet.
type createSpec struct {
	flags       CreateFlags
	name        string
	description string
	created     time.Time
	disks       []diskSpec // every disk of the domain, in QEMU's order
	mode        transaction.Mode
	opID        string
	quiesce     QuiesceMode        // what the switch gets: require, prefer or skip
	mountpoints []string           // what the freeze covers (quiesce scope); nil: every filesystem
	switchPath  transaction.Switch // how the overlays enter QEMU
	switchWhy   string             // why that way, for the log
	indications []Indication       // facts learned before anything changed
	// check is the agent's answer, under way, to whether a freeze can
	// work; nil without quiesce.
	check *quiesceCheck
}

type diskSpec struct {
	qmp.Disk
	external bool
	overlay  string
	reuse    bool
	wasEmpty bool
	fileID   *transaction.FileID // of a reused or empty overlay, as validation saw it
}

// overlayExists reports whether an external disk's overlay path holds
// a file already: one to reuse, or an empty one to fill.
func (spec *createSpec) overlayExists() bool {
	for _, ds := range spec.disks {
		if ds.external && (ds.reuse || ds.wasEmpty) {
			return true
		}
	}
	return false
}

// domainView is what validation needs to know of the domain.
type domainView struct {
	name  string
	disks []qmp.Disk
	busy  map[string]bool // targets with an active block job
	mode  transaction.Mode
}

// validateCreate applies the rules for a new (not redefined) snapshot.
func (d *Driver) validateCreate(def *libvirtxml.DomainSnapshot, flags CreateFlags, view domainView) (*createSpec, error) {
	spec := &createSpec{flags: flags, created: time.Now(), mode: view.mode, description: def.Description}

	if m := def.Memory; m != nil && (m.Snapshot == "internal" || m.Snapshot == "external" || m.File != "") {
		return nil, fmt.Errorf("%w: memory snapshots are not supported; qsnapd takes disk-only snapshots", ErrUnsupported)
	}
	if m := def.Memory; m != nil && m.Snapshot != "no" {
		return nil, fmt.Errorf("%w: unknown memory snapshot mode '%s'", ErrInvalidArg, m.Snapshot)
	}
	if flags&FlagDiskOnly == 0 && def.Memory == nil {
		return nil, fmt.Errorf("%w: a snapshot without DISK_ONLY saves memory state; qsnapd takes disk-only snapshots (pass DISK_ONLY or <memory snapshot='no'/>)", ErrUnsupported)
	}

	spec.name = def.Name
	if spec.name == "" {
		spec.name = strconv.FormatInt(spec.created.Unix(), 10)
	}
	if err := checkSnapshotName(spec.name); err != nil {
		return nil, err
	}
	if _, err := d.store.Snapshot(view.name, spec.name); err == nil {
		return nil, fmt.Errorf("%w: domain moment %s already exists", ErrSnapshotExists, spec.name)
	} else if !errors.Is(err, ErrNoSnapshot) {
		return nil, fmt.Errorf("%w: read metadata: %w", ErrOperationFailed, err)
	}

	if err := selectDisks(spec, def, view.disks); err != nil {
		return nil, err
	}
	external := 0
	for i := range spec.disks {
		ds := &spec.disks[i]
		if !ds.external {
			continue
		}
		external++
		if view.busy[ds.Target] {
			return nil, fmt.Errorf("%w: disk '%s' has an active block job", ErrOperationInvalid, ds.Target)
		}
		if err := d.checkOverlay(spec, ds, view.disks); err != nil {
			return nil, err
		}
	}
	if external == 0 {
		return nil, fmt.Errorf("%w: no disk selected for snapshot", ErrInvalidArg)
	}
	if flags&FlagAtomic != 0 && view.mode == transaction.ModeSequential && external > 1 {
		return nil, fmt.Errorf("%w: ATOMIC with %d disks needs QMP transaction, which is disabled or missing for this domain", ErrUnsupported, external)
	}
	return spec, nil
}

// checkSnapshotName refuses names that cannot be part of a file name
// (overlays are named <image>.<name>) or would garble a listing.
func checkSnapshotName(name string) error {
	switch {
	case strings.ContainsFunc(name, unicode.IsControl):
		// Quoted: the name itself would break the message.
		return fmt.Errorf("%w: invalid snapshot name %q: it contains a control character", ErrInvalidArg, name)
	case strings.Contains(name, "/"):
		return fmt.Errorf("%w: invalid snapshot name '%s': it contains '/'", ErrInvalidArg, name)
	case strings.HasPrefix(name, "."):
		return fmt.Errorf("%w: invalid snapshot name '%s': it starts with '.'", ErrInvalidArg, name)
	}
	return nil
}

// selectDisks matches the XML's disks to the domain's and decides which
// get an external snapshot. Disks the XML leaves out get one too, with a
// generated name, unless they are read-only.
func selectDisks(spec *createSpec, def *libvirtxml.DomainSnapshot, disks []qmp.Disk) error {
	spec.disks = make([]diskSpec, len(disks))
	for i, qd := range disks {
		spec.disks[i] = diskSpec{Disk: qd, external: !qd.ReadOnly}
	}
	if def.Disks == nil {
		return nil
	}
	seen := map[int]bool{}
	for _, sd := range def.Disks.Disks {
		i := findDisk(disks, sd.Name)
		if i < 0 {
			return fmt.Errorf("%w: no disk named '%s'", ErrInvalidArg, sd.Name)
		}
		if seen[i] {
			return fmt.Errorf("%w: disk '%s' specified twice", ErrInvalidArg, sd.Name)
		}
		seen[i] = true
		ds := &spec.disks[i]
		file, err := snapshotSource(sd)
		if err != nil {
			return err
		}
		mode := sd.Snapshot
		if mode == "" {
			// A source or driver implies external; so does the default
			// of a disk-only snapshot.
			mode = "external"
		}
		switch mode {
		case "external":
			ds.external = true
			ds.overlay = file
		case "no":
			if file != "" {
				return fmt.Errorf("%w: file '%s' for disk '%s' requires an external snapshot", ErrInvalidArg, file, sd.Name)
			}
			ds.external = false
		case "internal", "manual":
			return fmt.Errorf("%w: %s snapshot of disk '%s': qsnapd takes external snapshots only", ErrUnsupported, mode, sd.Name)
		default:
			return fmt.Errorf("%w: unknown snapshot mode '%s' for disk '%s'", ErrInvalidArg, mode, sd.Name)
		}
		if sd.Driver != nil && sd.Driver.Type != "" && sd.Driver.Type != "qcow2" {
			if mode != "external" {
				return fmt.Errorf("%w: driver for disk '%s' requires an external snapshot", ErrInvalidArg, sd.Name)
			}
			return fmt.Errorf("%w: overlay format '%s' of disk '%s': only qcow2 is supported", ErrUnsupported, sd.Driver.Type, sd.Name)
		}
	}
	return nil
}

// findDisk matches a name as libvirt does: the target, or the path of
// the active image.
func findDisk(disks []qmp.Disk, name string) int {
	for i, qd := range disks {
		if qd.Target == name {
			return i
		}
	}
	for i, qd := range disks {
		if name != "" && qd.File == name {
			return i
		}
	}
	return -1
}

// snapshotSource returns the overlay file the XML gives a disk, refusing
// anything but a plain file.
func snapshotSource(sd libvirtxml.DomainSnapshotDisk) (string, error) {
	src := sd.Source
	if src == nil {
		return "", nil
	}
	if src.Block != nil || src.Network != nil || src.Dir != nil || src.Volume != nil || src.NVME != nil || src.VHostUser != nil || src.VHostVDPA != nil {
		return "", fmt.Errorf("%w: disk '%s': only file overlays are supported", ErrUnsupported, sd.Name)
	}
	if src.File == nil {
		return "", nil
	}
	return src.File.File, nil
}

// checkOverlay settles the overlay path of an external disk and checks
// it against the filesystem, the allowed directories and the other
// disks.
func (d *Driver) checkOverlay(spec *createSpec, ds *diskSpec, disks []qmp.Disk) error {
	reuse := spec.flags&FlagReuseExt != 0
	generated := ds.overlay == ""
	if generated {
		fi, err := os.Stat(ds.File)
		if err != nil || !fi.Mode().IsRegular() {
			return fmt.Errorf("%w: cannot generate an overlay name for disk '%s' whose source '%s' is not a regular file; give a file", ErrInvalidArg, ds.Target, ds.File)
		}
		base := filepath.Base(ds.File)
		if dot := strings.LastIndexByte(base, '.'); dot > 0 {
			base = base[:dot]
		}
		ds.overlay = filepath.Join(filepath.Dir(ds.File), base+"."+spec.name)
	}
	p := ds.overlay
	if !filepath.IsAbs(p) {
		return fmt.Errorf("%w: overlay '%s' of disk '%s' is not an absolute path", ErrInvalidArg, p, ds.Target)
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return fmt.Errorf("%w: overlay '%s' of disk '%s' contains '..'", ErrInvalidArg, p, ds.Target)
		}
	}
	p = filepath.Clean(p)
	ds.overlay = p

	for _, other := range spec.disks {
		if other.external && other.Target != ds.Target && other.overlay == p {
			hint := ""
			if generated {
				hint = "; give each disk a file"
			}
			return fmt.Errorf("%w: disks '%s' and '%s' would use the same overlay '%s'%s", ErrInvalidArg, other.Target, ds.Target, p, hint)
		}
	}
	for _, qd := range disks {
		if qd.File == p {
			return fmt.Errorf("%w: overlay '%s' of disk '%s' is the active image of disk '%s'", ErrInvalidArg, p, ds.Target, qd.Target)
		}
		for _, img := range qd.Backing {
			if img.File == p {
				return fmt.Errorf("%w: overlay '%s' of disk '%s' is in the backing chain of disk '%s'", ErrInvalidArg, p, ds.Target, qd.Target)
			}
		}
	}
	if err := d.checkAllowedDir(p, ds); err != nil {
		return err
	}
	return checkOverlayFile(ds, reuse, generated)
}

// checkOverlayFile checks what is at the overlay path now: nothing, a
// qcow2 image to reuse, or an empty file to fill, whose identity the
// plan keeps so that nothing swapped in later is written through.
func checkOverlayFile(ds *diskSpec, reuse, generated bool) error {
	p := ds.overlay
	fi, err := os.Lstat(p)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if reuse {
			return fmt.Errorf("%w: external snapshot file '%s' for disk '%s' does not exist (REUSE_EXT)", ErrInvalidArg, p, ds.Target)
		}
		return nil
	case err != nil:
		return fmt.Errorf("%w: overlay '%s' of disk '%s': %v", ErrInvalidArg, p, ds.Target, err)
	case fi.Mode()&os.ModeSymlink != 0:
		return fmt.Errorf("%w: overlay '%s' of disk '%s' is a symbolic link", ErrInvalidArg, p, ds.Target)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("%w: overlay '%s' of disk '%s' is not a regular file", ErrInvalidArg, p, ds.Target)
	case reuse:
		if err := checkQcow2(p); err != nil {
			return fmt.Errorf("%w: reused overlay '%s' of disk '%s': %v", ErrInvalidArg, p, ds.Target, err)
		}
		ds.reuse = true
	case fi.Size() > 0:
		if generated {
			return fmt.Errorf("%w: generated overlay '%s' for disk '%s' already exists; give a file", ErrInvalidArg, p, ds.Target)
		}
		return fmt.Errorf("%w: external snapshot file '%s' for disk '%s' already exists; pass REUSE_EXT to reuse it", ErrInvalidArg, p, ds.Target)
	default:
		ds.wasEmpty = true
	}
	ds.fileID = transaction.IdentifyFile(fi)
	return nil
}

// checkAllowedDir requires the overlay's real directory to lie under an
// allowed directory: the configured ones, or else the directory of the
// disk's current image.
func (d *Driver) checkAllowedDir(p string, ds *diskSpec) error {
	dir, err := filepath.EvalSymlinks(filepath.Dir(p))
	if err != nil {
		return fmt.Errorf("%w: directory of overlay '%s' of disk '%s': %v", ErrInvalidArg, p, ds.Target, err)
	}
	allowed := d.cfg.AllowedDirs
	if len(allowed) == 0 {
		allowed = []string{filepath.Dir(ds.File)}
	}
	for _, a := range allowed {
		resolved, err := filepath.EvalSymlinks(a)
		if err != nil {
			continue
		}
		if dir == resolved || strings.HasPrefix(dir, resolved+string(filepath.Separator)) {
			return nil
		}
	}
	return fmt.Errorf("%w: overlay '%s' of disk '%s' is outside the allowed directories %v", ErrInvalidArg, p, ds.Target, allowed)
}

// checkQcow2 reads the magic of a reused overlay.
func checkQcow2(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	magic := make([]byte, 4)
	if _, err := io.ReadFull(f, magic); err != nil || string(magic) != "QFI\xfb" {
		return errors.New("not a qcow2 image")
	}
	return nil
}

// validateRedefine checks metadata given with REDEFINE.
func (d *Driver) validateRedefine(domain string, def *libvirtxml.DomainSnapshot) error {
	if def.Name == "" {
		return fmt.Errorf("%w: a redefined snapshot needs a name", ErrInvalidArg)
	}
	if err := checkSnapshotName(def.Name); err != nil {
		return err
	}
	if def.CreationTime == "" {
		return fmt.Errorf("%w: redefined snapshot '%s' needs a creationTime", ErrInvalidArg, def.Name)
	}
	if _, err := strconv.ParseInt(def.CreationTime, 10, 64); err != nil {
		return fmt.Errorf("%w: creationTime '%s' of snapshot '%s' is not a number of seconds", ErrInvalidArg, def.CreationTime, def.Name)
	}
	switch def.State {
	case "":
		return fmt.Errorf("%w: redefined snapshot '%s' needs a state", ErrInvalidArg, def.Name)
	case "nostate", "running", "blocked", "paused", "shutdown", "shutoff", "crashed", "pmsuspended", "disk-snapshot":
	default:
		return fmt.Errorf("%w: unknown state '%s' of snapshot '%s'", ErrInvalidArg, def.State, def.Name)
	}
	if def.Parent != nil && def.Parent.Name != "" {
		if def.Parent.Name == def.Name {
			return fmt.Errorf("%w: snapshot '%s' cannot be its own parent", ErrInvalidArg, def.Name)
		}
		if _, err := d.store.Snapshot(domain, def.Parent.Name); err != nil {
			return fmt.Errorf("%w: parent snapshot '%s' of '%s' does not exist; redefine the parent first", ErrInvalidArg, def.Parent.Name, def.Name)
		}
	}
	if def.Disks != nil {
		seen := map[string]bool{}
		for _, sd := range def.Disks.Disks {
			if sd.Name == "" {
				return fmt.Errorf("%w: a disk of snapshot '%s' has no name", ErrInvalidArg, def.Name)
			}
			if seen[sd.Name] {
				return fmt.Errorf("%w: disk '%s' specified twice", ErrInvalidArg, sd.Name)
			}
			seen[sd.Name] = true
		}
	}
	return nil
}

// busyDisks finds the disks that a block job holds. x-debug-query-block-
// graph is the only view of which nodes a job uses; where it fails, job
// names that match a disk are the fallback, and QEMU's own op blockers
// remain the last guard.
func busyDisks(ctx context.Context, c *qmp.Client, disks []qmp.Disk, jobs []qmp.BlockJob) map[string]bool {
	if len(jobs) == 0 {
		return nil
	}
	busy := map[string]bool{}
	g, gerr := c.QueryBlockGraph(ctx)
	if gerr != nil {
		for _, j := range jobs {
			for _, qd := range disks {
				if j.Device == qd.Device || j.Device == qd.Target || j.Device == qd.NodeName {
					busy[qd.Target] = true
				}
			}
		}
		return busy
	}
	kind := map[uint64]string{}
	name := map[uint64]string{}
	for _, n := range g.Nodes {
		kind[n.ID], name[n.ID] = n.Type, n.Name
	}
	// Walk from each node a job holds up through its driver-node parents
	// to the root. The walk passes a disk's active node even where QEMU
	// put an implicit filter (commit_top) above it.
	parents := map[uint64][]uint64{}
	for _, e := range g.Edges {
		if kind[e.Parent] == "block-driver" {
			parents[e.Child] = append(parents[e.Child], e.Parent)
		}
	}
	held := map[string]bool{}
	for _, e := range g.Edges {
		if kind[e.Parent] != "block-job" {
			continue
		}
		seen := map[uint64]bool{}
		stack := []uint64{e.Child}
		for len(stack) > 0 {
			n := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if seen[n] {
				continue
			}
			seen[n] = true
			held[name[n]] = true
			stack = append(stack, parents[n]...)
		}
	}
	for _, qd := range disks {
		if held[qd.NodeName] {
			busy[qd.Target] = true
		}
	}
	return busy
}
