package e2e

import (
	"cmp"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/qmp"
)

// The invariants of the fault matrix, as issue 12 states them, checked
// from outside after each scenario: the guest is thawed; every disk is
// on its new or its original image, exactly as the answer says; no
// orphan file; metadata exists iff the operation succeeded; the daemon
// answers; the answer is definitive, or unknown only when QEMU stayed
// away.

// answer is what the scenario's request got or, when the daemon was
// killed under it, what the operation's record says after the restart.
type answer struct {
	// state is api.OpSucceeded, OpFailed or OpUnknown; "" when no
	// answer came (err says why).
	state string
	code  string
	// disks are a create's per-disk results, merges a delete's; nil
	// when the answer has none.
	disks  []api.DiskOutcome
	merges []api.MergeOutcome
	// withResult says a success came with its result.
	withResult bool
	// path is how a success's overlays entered QEMU: "sync" or "preadd".
	path string
	from string // "" for the request's answer, "record" for the record's
	err  error
}

func (a answer) String() string {
	s := a.state
	switch {
	case a.state == "":
		s = "no answer"
	case a.code != "":
		s += " " + a.code
	}
	if a.from != "" {
		s += " (" + a.from + ")"
	}
	return s
}

// errorAnswer sorts an error answer: outcome-unknown, a failure, or no
// answer at all.
func errorAnswer(err error) answer {
	var ae *api.Error
	if !errors.As(err, &ae) {
		return answer{err: err}
	}
	a := answer{state: api.OpFailed, code: ae.Info.Code, err: err}
	if a.code == api.CodeOutcomeUnknown {
		a.state = api.OpUnknown
	}
	if det := ae.Info.Details; det != nil {
		a.disks, a.merges = det.Disks, det.Merges
	}
	return a
}

func createAnswer(res api.CreateSnapshotResponse, err error) answer {
	if err != nil {
		return errorAnswer(err)
	}
	return answer{state: api.OpSucceeded, disks: res.Disks, withResult: true, path: res.Switch}
}

func deleteAnswer(res api.DeleteSnapshotResponse, err error) answer {
	if err != nil {
		return errorAnswer(err)
	}
	return answer{state: api.OpSucceeded, merges: res.Disks, withResult: true}
}

// recordAnswer reads an operation's record as the answer it stands for.
func recordAnswer(op api.Operation, merge bool) answer {
	a := answer{state: op.State}
	if op.Error != nil {
		a.code = op.Error.Code
		if det := op.Error.Details; det != nil {
			a.disks, a.merges = det.Disks, det.Merges
		}
	}
	if op.State == api.OpSucceeded && len(op.Result) > 0 {
		var err error
		if merge {
			var res api.DeleteSnapshotResponse
			err = json.Unmarshal(op.Result, &res)
			a.merges = res.Disks
		} else {
			var res api.CreateSnapshotResponse
			err = json.Unmarshal(op.Result, &res)
			a.disks, a.path = res.Disks, res.Switch
		}
		a.withResult = err == nil
	}
	return a
}

// createPlacement is where a create's result leaves a disk: on its
// overlay, or (false) on the image it was on before; ok is false for a
// result that does not say.
func createPlacement(res api.DiskResult) (onOverlay, ok bool) {
	switch res {
	case api.DiskSwitched, api.DiskStuck, api.DiskHoldsGuestWrites:
		return true, true
	case api.DiskFailed, api.DiskUntouched, api.DiskRolledBack:
		return false, true
	}
	return false, false
}

// mergePlacement is the same for a delete: a merged disk is on its
// base, one that did not merge on the overlay.
func mergePlacement(res api.MergeResult) (onOverlay, ok bool) {
	switch res {
	case api.MergeMerged:
		return false, true
	case api.MergeUnchanged, api.MergeFailed:
		return true, true
	}
	return false, false
}

// checker gathers one scenario's violations.
type checker struct {
	r          *rig
	a          answer
	violations []string
	disks      []string // the per-disk summary
	path       string   // how the overlays entered QEMU, as the commands show
}

func (c *checker) violate(format string, args ...any) {
	c.violations = append(c.violations, fmt.Sprintf(format, args...))
}

// check runs every invariant on the world the scenario left.
func (r *rig) check(a answer) verdict {
	c := &checker{r: r, a: a}
	r.mu.Lock()
	for _, msg := range r.trouble {
		c.violate("rig: %s", msg)
	}
	r.mu.Unlock()
	if !r.fired() {
		c.violate("the fault never fired: no %s #%d or no freeze", r.sc.cmd, r.sc.nth)
	}
	c.switchPath()
	c.thawed()
	if !c.daemonAnswers() {
		return c.verdict()
	}
	state := c.definitive()
	placements := c.placements(state)
	c.files(state, placements)
	c.metadata(state)
	return c.verdict()
}

func (c *checker) verdict() verdict {
	return verdict{name: c.r.sc.name, answer: c.a.String(), path: c.path, disks: strings.Join(c.disks, " "), violations: c.violations}
}

// switchPath: a plain snapshot's overlays enter QEMU in the switch
// command (blockdev-snapshot-sync), so that nothing is added before
// it; one that quiesces, or prefers to, adds their nodes before the
// freeze (blockdev-add), and the switch only attaches them. A success
// says which.
func (c *checker) switchPath() {
	r := c.r
	if r.sc.merge {
		return
	}
	c.path = "sync"
	if slices.Contains(r.proxy.Commands(), "blockdev-add") {
		c.path = "preadd"
	}
	want := "preadd"
	if r.sc.quiesce == api.QuiesceSkip {
		want = "sync"
	}
	if c.path != want {
		c.violate("the overlays entered QEMU %s; a %s snapshot's should %s", c.path, cmp.Or(r.sc.quiesce, "plain"), want)
	}
	if c.a.path != "" && c.a.path != c.path {
		c.violate("the answer says the switch path was %s, the commands %s", c.a.path, c.path)
	}
}

// thawed: the guest is thawed when the answer comes or, when the agent
// hung until then, once the daemon's retried thaw got through.
func (c *checker) thawed() {
	wait := time.Duration(0)
	if c.r.sc.fault == faultAgentHang {
		wait = thawWait
	}
	deadline := time.Now().Add(wait)
	for c.r.agent.Frozen() {
		if time.Now().After(deadline) {
			if wait == 0 {
				c.violate("the guest is frozen when the answer comes")
			} else {
				c.violate("the guest is still frozen %v after the answer and the agent's recovery", wait)
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// daemonAnswers: a read request works; with QEMU gone, the domain
// shows disconnected.
func (c *checker) daemonAnswers() bool {
	ctx, cancel := context.WithTimeout(c.r.t.Context(), 10*time.Second)
	defer cancel()
	dom, err := c.r.c.Domain(ctx, matrixDomain)
	if err != nil {
		c.violate("the daemon does not answer a read: %v", err)
		return false
	}
	if dom.Connected && !c.r.qemuAlive() {
		c.violate("the domain shows connected, but QEMU is dead")
	}
	return true
}

// definitive checks the answer is a success, a failure with a
// definitive result for every disk, or unknown with QEMU away, and
// agrees with the operation's record. It returns the operation's state
// as the record has it, once it has ended.
func (c *checker) definitive() string {
	r, a := c.r, c.a
	ctx, cancel := context.WithTimeout(r.t.Context(), 10*time.Second)
	defer cancel()
	op, err := r.c.Operation(ctx, matrixOpID)
	switch {
	case err != nil:
		c.violate("the operation's record: %v", err)
	case op.State == api.OpRunning:
		c.violate("the operation's record says running after the answer")
	case a.state != "" && a.state != api.OpUnknown && op.State != a.state:
		c.violate("answered %s, but the record says %s", a.state, op.State)
	}
	state := a.state
	if err == nil && op.State != api.OpRunning {
		state = op.State
	}

	switch a.state {
	case "":
		c.violate("no answer: %v", a.err)
	case api.OpUnknown:
		if r.qemuAlive() {
			c.violate("answered unknown (%s), but QEMU stayed up", a.code)
		} else if op.State != api.OpUnknown && op.State != api.OpSucceeded && op.State != api.OpFailed {
			c.violate("answered unknown, but the record's state is %q", op.State)
		}
	case api.OpFailed:
		if a.disks == nil && a.merges == nil {
			c.violate("a failure (%s) without per-disk results", a.code)
			break
		}
		for _, target := range r.targets() {
			res, ok := c.result(target)
			switch {
			case !ok:
				c.violate("%s: no result in the failure", target)
			case !c.placed(res):
				c.violate("%s: result %q is not definitive", target, res)
			}
		}
	case api.OpSucceeded:
		want := string(api.DiskSwitched)
		if r.sc.merge {
			want = string(api.MergeMerged)
		}
		for _, target := range r.targets() {
			if res, ok := c.result(target); !ok || res != want {
				c.violate("%s: a success with result %q", target, res)
			}
		}
	}
	return state
}

// result is a disk's result in the answer: a success without per-disk
// results stands for every disk switched or merged.
func (c *checker) result(target string) (string, bool) {
	if c.a.state == api.OpSucceeded && !c.a.withResult {
		if c.r.sc.merge {
			return string(api.MergeMerged), true
		}
		return string(api.DiskSwitched), true
	}
	for _, d := range c.a.disks {
		if d.Target == target {
			if d.Overlay != "" && d.Overlay != c.r.overlay(target) {
				c.violate("%s: the answer names overlay %s, the request %s", target, d.Overlay, c.r.overlay(target))
			}
			return string(d.Result), true
		}
	}
	for _, m := range c.a.merges {
		if m.Target == target && m.Snapshot == matrixSnap {
			return string(m.Result), true
		}
	}
	return "", false
}

// placed reports whether a result says where the disk is.
func (c *checker) placed(res string) bool {
	if c.r.sc.merge {
		_, ok := mergePlacement(api.MergeResult(res))
		return ok
	}
	_, ok := createPlacement(api.DiskResult(res))
	return ok
}

// onOverlay is where a result puts the disk.
func (c *checker) onOverlay(res string) bool {
	if c.r.sc.merge {
		on, _ := mergePlacement(api.MergeResult(res))
		return on
	}
	on, _ := createPlacement(api.DiskResult(res))
	return on
}

// placements checks every disk is where the answer says: in QEMU while
// it runs, and in any case no overlay that holds guest writes is lost.
// It returns QEMU's disks (nil when it is dead).
func (c *checker) placements(state string) []qmp.Disk {
	r := c.r
	var disks []qmp.Disk
	if r.qemuAlive() {
		var err error
		if disks, err = qemuDisks(r.vm); err != nil {
			c.violate("QEMU runs but does not answer on the second monitor: %v", err)
		}
	}
	settled := state == api.OpSucceeded || state == api.OpFailed
	for _, target := range r.targets() {
		ov, base := r.overlay(target), r.base(target)
		res, ok := c.result(target)
		where := "qemu-dead"
		if i := slices.IndexFunc(disks, func(d qmp.Disk) bool { return d.Target == target }); i >= 0 {
			switch disks[i].File {
			case ov:
				where = "overlay"
			case base:
				where = "base"
			default:
				where = disks[i].File
			}
		}
		c.disks = append(c.disks, fmt.Sprintf("%s=%s@%s", target, cmp.Or(res, "?"), where))
		if !settled || !ok || !c.placed(res) {
			c.guestData(target, false, res)
			continue
		}
		want := "base"
		if c.onOverlay(res) {
			want = "overlay"
		}
		switch {
		case res == string(api.DiskHoldsGuestWrites) && r.qemuAlive():
			c.violate("%s: %s, but QEMU did not die", target, res)
		case disks != nil && where != want:
			c.violate("%s: the answer says %s (on its %s), QEMU has it on its %s", target, res, want, where)
		case disks == nil && want == "overlay" && !exists(ov):
			c.violate("%s: the answer says %s (on its overlay), but %s is gone", target, res, filepath.Base(ov))
		}
		c.guestData(target, settled, res)
	}
	return disks
}

// guestData: writes the guest was told were durable are never lost,
// and a definitive result (settled) says where they are.
func (c *checker) guestData(target string, settled bool, res string) {
	r := c.r
	ov := r.overlay(target)
	r.mu.Lock()
	wrote := r.wrote[ov]
	r.mu.Unlock()
	if r.sc.merge {
		// Merged, the writes are in the base; not merged, in the
		// overlay (the base may hold part of them: a cancelled commit
		// does not take back what it copied).
		inBase := holdsPattern(r.base(target), mergePattern, mergeOffset, mergeWrite)
		inOverlay := holdsPattern(ov, mergePattern, mergeOffset, mergeWrite)
		switch {
		case settled && res == string(api.MergeMerged) && inBase != nil:
			c.violate("%s: merged, but the base lacks the guest's writes: %v", target, inBase)
		case settled && res != string(api.MergeMerged) && inOverlay != nil:
			c.violate("%s: the answer says %s, but the overlay lost the guest's writes: %v", target, cmp.Or(res, "nothing"), inOverlay)
		case !settled && inBase != nil && inOverlay != nil:
			c.violate("%s: the guest's writes are lost: %v", target, inOverlay)
		}
		return
	}
	switch {
	case wrote && !exists(ov):
		c.violate("%s: %s held guest writes and was deleted", target, filepath.Base(ov))
	case wrote:
		if err := holdsPattern(ov, createPattern, 0, createWrite); err != nil {
			c.violate("%s: the guest's writes are lost: %v", target, err)
		}
		// QEMU died with them: a success keeps the disk switched, a
		// failure lists the overlay as holding them.
		kept := res == string(api.DiskHoldsGuestWrites) || (c.a.state == api.OpSucceeded && res == string(api.DiskSwitched))
		if settled && !kept {
			c.violate("%s: its overlay holds guest writes, but the answer says %s", target, res)
		}
	case settled && res == string(api.DiskHoldsGuestWrites):
		c.violate("%s: kept as %s, but its overlay holds none", target, res)
	}
}

// files: no orphan file (every overlay on disk is used by a disk,
// recorded by a snapshot or listed as holding guest writes), and every
// file a snapshot records exists.
func (c *checker) files(state string, disks []qmp.Disk) {
	r := c.r
	recorded, err := c.recordedFiles()
	if err != nil {
		c.violate("%v", err)
		return
	}
	for _, f := range recorded {
		if !exists(f) {
			c.violate("a snapshot records %s, which does not exist", f)
		}
	}
	if state != api.OpSucceeded && state != api.OpFailed {
		return // unknown: the daemon has not decided yet
	}
	used := map[string]bool{}
	for _, d := range disks {
		for _, f := range append([]string{d.File}, imageFiles(d.Backing)...) {
			used[filepath.Clean(f)] = true
		}
	}
	for _, f := range recorded {
		used[filepath.Clean(f)] = true
	}
	for _, d := range c.a.disks {
		if d.Result == api.DiskHoldsGuestWrites {
			used[filepath.Clean(d.Overlay)] = true
		}
	}
	entries, err := os.ReadDir(r.vm.Dir)
	if err != nil {
		c.violate("read %s: %v", r.vm.Dir, err)
		return
	}
	for _, e := range entries {
		f := filepath.Join(r.vm.Dir, e.Name())
		if !e.Type().IsRegular() || f == r.base("vda") || f == r.base("vdb") || used[f] {
			continue
		}
		c.violate("orphan file %s: no disk uses it, no snapshot records it", e.Name())
	}
}

func imageFiles(chain []qmp.Image) []string {
	var out []string
	for _, img := range chain {
		out = append(out, img.File)
	}
	return out
}

// recordedFiles are the overlay files the snapshots' metadata records.
func (c *checker) recordedFiles() ([]string, error) {
	ctx, cancel := context.WithTimeout(c.r.t.Context(), 10*time.Second)
	defer cancel()
	list, err := c.r.c.Snapshots(ctx, matrixDomain, nil)
	if err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	var files []string
	for _, s := range list.Snapshots {
		snap, err := c.r.c.Snapshot(ctx, matrixDomain, s.Name)
		if err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", s.Name, err)
		}
		var doc struct {
			Disks []struct {
				Source struct {
					File string `xml:"file,attr"`
				} `xml:"source"`
			} `xml:"disks>disk"`
		}
		if err := xml.Unmarshal([]byte(snap.XML), &doc); err != nil {
			return nil, fmt.Errorf("snapshot %s XML: %w", s.Name, err)
		}
		for _, d := range doc.Disks {
			if d.Source.File != "" {
				files = append(files, d.Source.File)
			}
		}
	}
	return files, nil
}

// metadata: s1's metadata exists iff the create succeeded, and is gone
// iff the delete did.
func (c *checker) metadata(state string) {
	ctx, cancel := context.WithTimeout(c.r.t.Context(), 10*time.Second)
	defer cancel()
	_, err := c.r.c.Snapshot(ctx, matrixDomain, matrixSnap)
	if err != nil && api.Code(err) != api.CodeNoDomainSnapshot {
		c.violate("read snapshot %s: %v", matrixSnap, err)
		return
	}
	has, succeeded := err == nil, state == api.OpSucceeded
	switch {
	case !c.r.sc.merge && has && !succeeded:
		c.violate("snapshot %s is recorded, but the operation is %s", matrixSnap, cmp.Or(state, "unanswered"))
	case !c.r.sc.merge && !has && succeeded:
		c.violate("the operation succeeded, but snapshot %s is not recorded", matrixSnap)
	case c.r.sc.merge && has && succeeded:
		c.violate("the delete succeeded, but snapshot %s is still recorded", matrixSnap)
	case c.r.sc.merge && !has && !succeeded:
		c.violate("snapshot %s is gone, but the delete is %s", matrixSnap, cmp.Or(state, "unanswered"))
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
