package driver

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
)

// checkValidationRefusesAndChangesNothing runs every rule of the request
// against one VM; each refusal must leave disks, files, nodes, metadata
// and the journal exactly as they were.
func checkValidationRefusesAndChangesNothing(t *testing.T) {
	e := newEnv(t, envOpts{disks: 2, style: qemutest.Blockdev})
	e.mustCreate(snapXML("s0", diskXML("vdb", "no", "")), FlagDiskOnly) // vda now sits on vda.s0
	dir := e.vm.Dir
	vdaImg := e.vm.Disks[0].Path
	outside := qemutest.TempDir(t)
	writeFile := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	nonEmpty := writeFile("taken.img", "data")
	writeFile("vdb.s9", "data") // collides with the generated name for vdb
	notQcow2 := writeFile("plain.img", "not a qcow2 image")
	link := filepath.Join(dir, "link.img")
	if err := os.Symlink(filepath.Join(dir, "nowhere.img"), link); err != nil {
		t.Fatal(err)
	}
	dd := FlagDiskOnly

	for _, tc := range []struct {
		name  string
		xml   string
		flags CreateFlags
		want  error
		msg   string
	}{
		{"current without redefine", "", dd | FlagCurrent, ErrInvalidArg, "CURRENT requires REDEFINE"},
		{"redefine with no-metadata", "", FlagRedefine | FlagNoMetadata, ErrInvalidArg, "mutually exclusive"},
		{"redefine with halt", "", FlagRedefine | FlagHalt, ErrInvalidArg, "mutually exclusive"},
		{"quiesce without disk-only", "<domainsnapshot><memory snapshot='no'/></domainsnapshot>", FlagQuiesce, ErrInvalidArg, "QUIESCE requires DISK_ONLY"},
		{"live", "", dd | FlagLive, ErrUnsupported, "disk-only"},
		{"unknown flag bits", "", dd | 1<<12, ErrInvalidArg, "unknown flag bits"},
		{"memory internal", "<domainsnapshot><memory snapshot='internal'/></domainsnapshot>", dd, ErrUnsupported, "memory snapshots"},
		{"memory external", "<domainsnapshot><memory snapshot='external' file='/tmp/m'/></domainsnapshot>", 0, ErrUnsupported, "memory snapshots"},
		{"no disk-only and no memory element", "", 0, ErrUnsupported, "DISK_ONLY"},
		{"malformed xml", "<domainsnapshot><name>x</name>", dd, ErrInvalidArg, "malformed"},
		{"name with slash", snapXML("a/b"), dd, ErrInvalidArg, "contains '/'"},
		{"name with leading dot", snapXML(".hidden"), dd, ErrInvalidArg, "starts with '.'"},
		{"existing name", snapXML("s0"), dd, ErrSnapshotExists, "domain moment s0 already exists"},
		{"unknown disk", snapXML("s1", diskXML("vdz", "", "")), dd, ErrInvalidArg, "no disk named 'vdz'"},
		{"disk twice", snapXML("s1", diskXML("vda", "", ""), diskXML("vda", "", "")), dd, ErrInvalidArg, "disk 'vda' specified twice"},
		{"disk twice by path", snapXML("s1", diskXML("vdb", "", ""), diskXML(e.vm.Disks[1].Path, "", "")), dd, ErrInvalidArg, "specified twice"},
		{"file on a snapshot='no' disk", snapXML("s1", diskXML("vda", "no", filepath.Join(dir, "x.img"))), dd, ErrInvalidArg, "requires an external snapshot"},
		{"internal disk snapshot", snapXML("s1", diskXML("vda", "internal", "")), dd, ErrUnsupported, "internal snapshot"},
		{"manual disk snapshot", snapXML("s1", diskXML("vda", "manual", "")), dd, ErrUnsupported, "manual snapshot"},
		{"unknown disk snapshot mode", snapXML("s1", diskXML("vda", "bogus", "")), dd, ErrInvalidArg, "unknown snapshot mode"},
		{"block overlay", snapXML("s1", "<disk name='vda' type='block'><source dev='/dev/null'/></disk>"), dd, ErrUnsupported, "only file overlays"},
		{"raw overlay", snapXML("s1", "<disk name='vda'><driver type='raw'/></disk>"), dd, ErrUnsupported, "only qcow2"},
		{"existing overlay", snapXML("s1", diskXML("vda", "", nonEmpty)), dd, ErrInvalidArg, "already exists; pass REUSE_EXT"},
		{"generated name exists", "<domainsnapshot><name>s9</name></domainsnapshot>", dd, ErrInvalidArg, "generated overlay"},
		{"reuse of a missing file", snapXML("s1", diskXML("vda", "", filepath.Join(dir, "missing.img")), diskXML("vdb", "no", "")), dd | FlagReuseExt, ErrInvalidArg, "does not exist (REUSE_EXT)"},
		{"reuse of a non-qcow2 file", snapXML("s1", diskXML("vda", "", notQcow2), diskXML("vdb", "no", "")), dd | FlagReuseExt, ErrInvalidArg, "not a qcow2 image"},
		{"two disks one overlay", snapXML("s1", diskXML("vda", "", filepath.Join(dir, "same.img")), diskXML("vdb", "", filepath.Join(dir, "same.img"))), dd, ErrInvalidArg, "same overlay"},
		{"explicit name equals a generated one", snapXML("s1", diskXML("vda", "", ""), diskXML("vdb", "", filepath.Join(dir, "vda.s1"))), dd, ErrInvalidArg, "same overlay"},
		{"overlay is an active image", snapXML("s1", diskXML("vda", "", e.vm.Disks[1].Path)), dd, ErrInvalidArg, "active image of disk 'vdb'"},
		{"overlay is in the backing chain", snapXML("s1", diskXML("vda", "", vdaImg)), dd, ErrInvalidArg, "backing chain of disk 'vda'"},
		{"relative overlay", snapXML("s1", diskXML("vda", "", "vda.new")), dd, ErrInvalidArg, "not an absolute path"},
		{"path traversal", snapXML("s1", diskXML("vda", "", dir+"/../etc/x")), dd, ErrInvalidArg, "contains '..'"},
		{"symlink overlay", snapXML("s1", diskXML("vda", "", link)), dd, ErrInvalidArg, "symbolic link"},
		{"overlay outside the allowed dirs", snapXML("s1", diskXML("vda", "", filepath.Join(outside, "x.img"))), dd, ErrInvalidArg, "outside the allowed directories"},
		{"overlay in a missing dir", snapXML("s1", diskXML("vda", "", filepath.Join(dir, "nodir", "x.img"))), dd, ErrInvalidArg, "directory of overlay"},
		{"no disk selected", snapXML("s1", diskXML("vda", "no", ""), diskXML("vdb", "no", "")), dd, ErrInvalidArg, "no disk selected"},
		{"redefine without name", "<domainsnapshot><state>disk-snapshot</state><creationTime>1</creationTime></domainsnapshot>", FlagRedefine, ErrInvalidArg, "needs a name"},
		{"redefine without creationTime", "<domainsnapshot><name>r</name><state>disk-snapshot</state></domainsnapshot>", FlagRedefine, ErrInvalidArg, "needs a creationTime"},
		{"redefine without state", "<domainsnapshot><name>r</name><creationTime>1</creationTime></domainsnapshot>", FlagRedefine, ErrInvalidArg, "needs a state"},
		{"redefine child before parent", "<domainsnapshot><name>r</name><state>disk-snapshot</state><creationTime>1</creationTime><parent><name>nope</name></parent></domainsnapshot>", FlagRedefine, ErrInvalidArg, "redefine the parent first"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.world()
			_, err := e.create(tc.xml, tc.flags)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("got %v; want %v with %q", err, tc.want, tc.msg)
			}
			e.assertUnchanged(before)
		})
	}
}

func checkAtomicMultiDiskNeedsTransaction(t *testing.T) {
	e := newEnv(t, envOpts{disks: 2, cfg: func(c *Config) { c.Transaction = "never" }})
	before := e.world()
	_, err := e.create("", FlagDiskOnly|FlagAtomic)
	if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "ATOMIC with 2 disks") {
		t.Fatalf("got %v, want unsupported ATOMIC", err)
	}
	e.assertUnchanged(before)
	// One disk is atomic whatever the mode.
	res := e.mustCreate(snapXML("one", diskXML("vdb", "no", "")), FlagDiskOnly|FlagAtomic)
	if res.Mode != "sequential" {
		t.Errorf("mode: got %s, want sequential", res.Mode)
	}
}

func checkDefaultNameNeedsRegularSource(t *testing.T) {
	vmOpts := qemutest.Options{Disks: 1, Style: qemutest.Blockdev, SecondMonitor: true,
		Extra: []string{"-blockdev", "driver=null-co,node-name=nul,size=1048576", "-device", "virtio-blk-pci,drive=nul,id=vdn"}}
	e := newEnvWith(t, vmOpts, envOpts{cfg: func(c *Config) {
		// A null-co disk has no directory of its own to default to.
		c.AllowedDirs = []string{filepath.Dir(c.StateDir)}
	}})
	before := e.world()
	_, err := e.create("", FlagDiskOnly)
	if !errors.Is(err, ErrInvalidArg) || !strings.Contains(err.Error(), "not a regular file; give a file") {
		t.Fatalf("got %v, want a refusal to generate a name for vdn", err)
	}
	e.assertUnchanged(before)
	// With an explicit file it works.
	res := e.mustCreate(snapXML("s1", diskXML("vdn", "", filepath.Join(e.vm.Dir, "vdn.s1"))), FlagDiskOnly)
	if len(res.Disks) != 2 {
		t.Errorf("disks: %+v", res.Disks)
	}
}

func checkBlockJobRefused(t *testing.T) {
	e := newEnv(t, envOpts{disks: 2, style: qemutest.Legacy})
	e.mustCreate(snapXML("s0"), FlagDiskOnly)
	// An active commit that is READY holds the disk until completed.
	ctx := testCtx(t)
	yes := true
	vda := e.disks()[0]
	err := e.obs.Execute(ctx, "block-commit", map[string]any{
		"job-id": "other", "device": vda.NodeName, "auto-finalize": yes, "auto-dismiss": yes,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	before := e.world()
	_, err = e.create(snapXML("s1"), FlagDiskOnly)
	if !errors.Is(err, ErrOperationInvalid) || !strings.Contains(err.Error(), "disk 'vda' has an active block job") {
		t.Fatalf("got %v, want vda busy", err)
	}
	e.assertUnchanged(before)
	// The other disk is free.
	e.mustCreate(snapXML("s2", diskXML("vda", "no", "")), FlagDiskOnly)
}
