package driver

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/qsnapd/qsnapd/internal/qcow2"
	"github.com/qsnapd/qsnapd/qmp"
	"github.com/qsnapd/qsnapd/transaction"
)

// The engine's record of a domain's disks and backing chains.
//
// query-block describes every image of every chain, and its cost grows
// with their depth: with 4 disks on QEMU 7.2, 0.3 ms at depth 1 and
// 28 ms at depth 100 (query-named-block-nodes and
// x-debug-query-block-graph walk every node too). Of the chains an
// operation needs each disk's active image (node, file, format, size),
// which validation reads and the switch names, and the files below it,
// which a new overlay must not be. So the domain keeps what its last
// full read said, moves it forward itself when one of its snapshots
// succeeds, and every operation checks it against QEMU on the nodes
// that matter before relying on it, at a cost that does not depend on
// the depth:
//
//   - each device's drive (qom-get): the node-name of the active image
//     must be the recorded one ("" for a device recorded without a
//     medium);
//   - the devices (qom-list of /machine/peripheral and
//     /machine/peripheral-anon): none added, none gone;
//   - the active image's virtual size, read from its qcow2 header, which
//     QEMU rewrites before block_resize returns;
//   - no event since the record was made after which the graph may
//     differ: every job's (JOB_STATUS_CHANGE, BLOCK_JOB_*), whoever runs
//     it (another tool's commit, stream or mirror, the engine's own
//     rollbacks and merges), DEVICE_DELETED, DEVICE_TRAY_MOVED. QEMU
//     sends events to every monitor, and the client sets the latch
//     before it hands over any reply QEMU sent after the event. A record
//     is made only when no block job runs, and every job that starts
//     says so (JOB_STATUS_CHANGE "created"), so no job runs while the
//     record holds: query-block-jobs is not asked;
//   - the same QMP session: across a reconnect events may be lost.
//
// The check asks one question per device and two for the device list;
// a full read costs about one question more per imagesPerQuestion
// images. So a domain keeps a record only where its chains hold more
// images than that (past 12 layers with 4 disks): shallower chains are
// read in full by every operation, as before the record existed.
//
// Any doubt reads the whole graph again (query-block) and makes a new
// record: no record yet, a check that disagrees, a block job, a failed
// operation (whatever it left behind), a disk on a named BlockBackend
// (-drive: qom-get answers the BlockBackend's name, not its node's) or
// without a device, an active image that is not a qcow2 file at an
// absolute path. Validation reads the whole graph before it refuses a
// request, so that no refusal rests on the record, and before it accepts
// an overlay path that exists already (REUSE_EXT, an empty file): the
// rule that reads the files below the active images (an overlay must
// not be one of them) refuses only paths of images QEMU has open, which
// exist unless someone deleted or renamed one under it.
//
// What the checks cannot see is another tool rewiring a chain below an
// active image that stays, with no job and no event: blockdev-reopen
// that gives an image another backing or file, or change-backing-file.
// Until the next full read the record's files below the active images
// may then be stale; since they matter only for overlay paths that
// exist, which are read in full, that leaves an image deleted or renamed
// while QEMU keeps it open, rewired into a chain by another tool.
//
// The record belongs to the domain's lock: only an operation that holds
// it reads or changes it.
type chainRecord struct {
	disks   []qmp.Disk   // as the last full read listed them, moved forward by the domain's own snapshots
	drives  []driveProbe // one per device with a BlockBackend
	devices string       // the children of the device containers
	latch   *qmp.Latch
}

// driveProbe is a device's drive property as the record expects it.
type driveProbe struct {
	path  string // QOM path of the device
	drive string // node-name of the active image; "" without a medium
}

// graphEvents are the events after which the record may be wrong.
var graphEvents = []string{
	"JOB_STATUS_CHANGE", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED", "BLOCK_JOB_ERROR",
	"BLOCK_JOB_READY", "BLOCK_JOB_PENDING", "DEVICE_DELETED", "DEVICE_TRAY_MOVED",
}

// deviceContainers hold every device added with -device or device_add,
// the only ones an anonymous BlockBackend can be attached to.
var deviceContainers = []string{"/machine/peripheral", "/machine/peripheral-anon"}

// diskView is what an operation learns of the disks before it changes
// anything.
type diskView struct {
	disks []qmp.Disk
	jobs  []qmp.BlockJob
	// recorded is set when the disks come from the record, checked;
	// unset after a full read.
	recorded bool
}

// imagesPerQuestion is about how many images of the chains add one
// QMP round trip's worth to a full read: with 4 disks on QEMU 7.2,
// query-block costs some 0.07 ms more an image, a question of the check
// 0.5 ms. Below that depth a full read costs less than the check.
const imagesPerQuestion = 8

// readDisks returns the disks and block jobs: from the record when every
// check passes, else from a full read, which renews the record. The
// caller holds the domain's lock.
func (dom *Domain) readDisks(ctx context.Context, client *qmp.Client) (diskView, error) {
	if rec := dom.chains; rec != nil {
		stale, err := rec.check(ctx, client)
		if err != nil {
			return diskView{}, err
		}
		if stale == "" {
			return diskView{disks: rec.view(), recorded: true}, nil
		}
		dom.log.Debug("record of the chains out of date; reading them", zap.String("why", stale))
	}
	return dom.readAll(ctx, client)
}

// recordPays reports whether checking a record of chains that hold
// images images, with questions questions, costs less than reading them.
func (dom *Domain) recordPays(images, questions int) bool {
	return dom.drv.alwaysRecordChains || images > imagesPerQuestion*questions
}

// readAll reads the disks and block jobs from QEMU in full and renews
// the record where one pays: where the chains are deep, as the last read
// found them, or the first time. The caller holds the domain's lock.
func (dom *Domain) readAll(ctx context.Context, client *qmp.Client) (diskView, error) {
	dom.forgetChains()
	var latch *qmp.Latch
	var devices string
	if dom.chainQuestions == 0 || dom.recordPays(dom.chainImages, dom.chainQuestions) {
		// Watch before reading: an event from here on may postdate the
		// read. List the devices before the read too: one added after
		// the listing shows in the read, and the next check finds the
		// listing changed; one added between the read and a later
		// listing would be missed.
		var err error
		if latch, err = client.Latch(qmp.Filter{Names: graphEvents}); err == nil {
			if devices, err = listDevices(ctx, client); err != nil {
				latch.Close()
				latch = nil
			}
		}
	}
	var infos []qmp.BlockInfo
	var jobs []qmp.BlockJob
	// Both queries go out at once: QEMU answers them in turn, without a
	// round trip in between.
	var g errgroup.Group
	g.Go(func() (err error) { infos, err = client.QueryBlock(ctx); return err })
	g.Go(func() (err error) { jobs, err = client.QueryBlockJobs(ctx); return err })
	if err := g.Wait(); err != nil {
		if latch != nil {
			latch.Close()
		}
		return diskView{}, err
	}
	disks := qmp.DisksFromBlockInfo(infos)
	dom.chainImages, dom.chainQuestions = countImages(disks), len(infos)+len(deviceContainers)
	if latch != nil {
		if len(jobs) == 0 && dom.recordPays(dom.chainImages, dom.chainQuestions) {
			dom.chains = newChainRecord(infos, qmp.DisksFromBlockInfo(infos), devices, latch)
		} else {
			latch.Close()
		}
	}
	return diskView{disks: disks, jobs: jobs}, nil
}

// countImages counts the images of the disks' chains.
func countImages(disks []qmp.Disk) int {
	n := 0
	for _, d := range disks {
		n += 1 + len(d.Backing)
	}
	return n
}

// newChainRecord makes a record of a full read, if every disk can be
// checked cheaply; otherwise it closes the latch and returns nil.
func newChainRecord(infos []qmp.BlockInfo, disks []qmp.Disk, devices string, latch *qmp.Latch) *chainRecord {
	rec := &chainRecord{disks: disks, devices: devices, latch: latch}
	for _, bi := range infos {
		path := qmp.QOMPath(bi.Qdev)
		if bi.Device != "" || path == "" {
			latch.Close()
			return nil
		}
		p := driveProbe{path: path}
		if ins := bi.Inserted; ins != nil {
			if ins.Drv != "qcow2" || !filepath.IsAbs(ins.File) || ins.NodeName == "" {
				latch.Close()
				return nil
			}
			p.drive = ins.NodeName
		}
		rec.drives = append(rec.drives, p)
	}
	return rec
}

// view returns the recorded disks for an operation to read; the Backing
// lists are shared, and nobody writes to them.
func (rec *chainRecord) view() []qmp.Disk { return slices.Clone(rec.disks) }

// check asks QEMU whether the record still holds, at a cost that does
// not grow with the chains, and says why not if it does not. QEMU
// refusing one of the questions (a device gone, say) is a "no"; losing
// QEMU is an error.
func (rec *chainRecord) check(ctx context.Context, client *qmp.Client) (stale string, err error) {
	if rec.latch.Fired() {
		return "graph event or reconnect", nil
	}
	drives := make([]string, len(rec.drives))
	var devices string
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() (err error) { devices, err = listDevices(gctx, client); return err })
	for i, p := range rec.drives {
		g.Go(func() (err error) { drives[i], err = client.DeviceDrive(gctx, p.path); return err })
	}
	// The sizes are read here while QEMU answers.
	for _, d := range rec.disks {
		if size, err := qcow2.VirtualSize(d.File); err != nil || int64(size) != d.VirtualSize {
			stale = "size of " + d.Target
			break
		}
	}
	if err := g.Wait(); err != nil {
		var qe *qmp.Error
		if errors.As(err, &qe) {
			return qe.Error(), nil
		}
		return "", err
	}
	// Checked after the replies: the latch knows of every event QEMU sent
	// before them.
	switch {
	case rec.latch.Fired():
		return "graph event or reconnect", nil
	case stale != "":
		return stale, nil
	case devices != rec.devices:
		return "devices", nil
	}
	for i, p := range rec.drives {
		if drives[i] != p.drive {
			return "active node of " + p.path, nil
		}
	}
	return "", nil
}

// listDevices names the children of the device containers, sorted.
func listDevices(ctx context.Context, client *qmp.Client) (string, error) {
	lists := make([][]qmp.ObjectProperty, len(deviceContainers))
	var g errgroup.Group
	for i, c := range deviceContainers {
		g.Go(func() (err error) { lists[i], err = client.QOMList(ctx, c); return err })
	}
	if err := g.Wait(); err != nil {
		return "", fmt.Errorf("list devices: %w", err)
	}
	var names []string
	for i, props := range lists {
		for _, p := range props {
			if strings.HasPrefix(p.Type, "child<") {
				names = append(names, deviceContainers[i]+"/"+p.Name+" "+p.Type)
			}
		}
	}
	slices.Sort(names)
	return strings.Join(names, "\n"), nil
}

// chainsSwitched moves the record forward after the domain's own
// snapshot: each switched disk's active image is now its overlay, on top
// of what was active, and QEMU names it by its path because its header
// names what was active as its backing file, as QEMU named that. A
// reused overlay's header is not the engine's (its size and backing file
// may differ), so it drops the record, as does anything unexpected.
func (dom *Domain) chainsSwitched(plan *transaction.Plan) {
	rec := dom.chains
	if rec == nil {
		return
	}
	for _, pd := range plan.Disks {
		i := slices.IndexFunc(rec.disks, func(d qmp.Disk) bool { return d.Target == pd.Target })
		if i < 0 || pd.State != transaction.DiskSwitched || pd.Reuse || rec.disks[i].NodeName != pd.Node ||
			rec.disks[i].File != pd.Source || rec.disks[i].ReadOnly {
			dom.forgetChains()
			return
		}
		old := rec.disks[i]
		d := old
		d.NodeName, d.File, d.Format = pd.OverlayNode, pd.Overlay, "qcow2"
		d.Backing = append([]qmp.Image{{File: old.File, Format: old.Format}}, old.Backing...)
		rec.disks[i] = d
		dom.chainImages++
		for k := range rec.drives {
			if rec.drives[k].path == old.QOMPath {
				rec.drives[k].drive = pd.OverlayNode
			}
		}
	}
}

// forgetChains drops the record: the next operation reads everything.
func (dom *Domain) forgetChains() {
	if rec := dom.chains; rec != nil {
		rec.latch.Close()
		dom.chains = nil
	}
}
