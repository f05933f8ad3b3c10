package driver

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/transaction"
)

func checkCreateSucceeds(t *testing.T) {
	for _, style := range []qemutest.Style{qemutest.Legacy, qemutest.Blockdev} {
		for _, n := range []int{1, 3, 8} {
			t.Run(style.String()+"/"+string(rune('0'+n)), func(t *testing.T) {
				e := newEnv(t, envOpts{disks: n, style: style})
				res := e.mustCreate("<domainsnapshot><name>s1</name></domainsnapshot>", FlagDiskOnly|FlagAtomic)
				if res.Mode != transaction.ModeAtomic || len(res.Disks) != n {
					t.Fatalf("result: mode %s, %d disks; want atomic, %d", res.Mode, len(res.Disks), n)
				}
				disks := e.disks()
				for i, d := range disks {
					orig := e.vm.Disks[i]
					want := filepath.Join(e.vm.Dir, orig.Target+".s1")
					if d.File != want || len(d.Backing) != 1 || d.Backing[0].File != orig.Path {
						t.Errorf("disk %s: active %s on %v; want %s on %s", d.Target, d.File, d.Backing, want, orig.Path)
					}
					if got := imageBacking(t, want); got != orig.Path {
						t.Errorf("overlay %s: header backing %q, want %q", want, got, orig.Path)
					}
					if res.Disks[i].Result != transaction.DiskSwitched || res.Disks[i].Overlay != want {
						t.Errorf("outcome %d: %+v", i, res.Disks[i])
					}
				}
				cur, _ := e.drv.Store().Current(e.name)
				if cur != "s1" {
					t.Errorf("current: got %q, want s1", cur)
				}
				validateXML(t, res.XML)
				if w := e.world(); w.Active != 0 {
					t.Errorf("unfinished journal entries after success: %d", w.Active)
				}
			})
		}
	}
}

// validateXML checks a document with libvirt's own schema.
func validateXML(t *testing.T, doc string) {
	t.Helper()
	if _, err := exec.LookPath("virt-xml-validate"); err != nil {
		t.Fatal("virt-xml-validate is needed (Debian's libvirt-clients): run make deps")
	}
	f := filepath.Join(t.TempDir(), "snap.xml")
	if err := os.WriteFile(f, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("virt-xml-validate", f, "domainsnapshot").CombinedOutput(); err != nil {
		t.Errorf("virt-xml-validate: %v: %s\n%s", err, out, doc)
	}
}
