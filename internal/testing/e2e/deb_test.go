package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// debBuild is the Debian package, built once for the tests that need
// it, in a directory outside /tmp that a container can bind.
var debBuild struct {
	once sync.Once
	dir  string
	path string
	err  string
}

// packageDeb runs make deb once and returns the package's path.
func packageDeb(t *testing.T) string {
	t.Helper()
	debBuild.once.Do(func() {
		if err := os.MkdirAll("/srv/qsnapd-test", 0o755); err != nil {
			debBuild.err = err.Error()
			return
		}
		dir, err := os.MkdirTemp("/srv/qsnapd-test", "deb")
		if err != nil {
			debBuild.err = err.Error()
			return
		}
		debBuild.dir = dir
		out, err := exec.Command("make", "-C", "../../..", "deb", "DEB_DIR="+dir).CombinedOutput()
		if err != nil {
			debBuild.err = "make deb: " + err.Error() + "\n" + string(out)
			return
		}
		debs, _ := filepath.Glob(filepath.Join(dir, "qsnapd_*_amd64.deb"))
		if len(debs) != 1 {
			debBuild.err = "make deb made " + strings.Join(debs, ", ") + "\n" + string(out)
			return
		}
		debBuild.path = debs[0]
	})
	if debBuild.err != "" {
		t.Fatal(debBuild.err)
	}
	return debBuild.path
}

// removeDeb removes what packageDeb built; TestMain calls it.
func removeDeb() {
	if debBuild.dir != "" {
		os.RemoveAll(debBuild.dir)
	}
}

// TestDebLintian checks the package with Debian's lintian: no error or
// warning; each override in packaging/lintian-overrides says why.
func TestDebLintian(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the package: not with -short")
	}
	if _, err := exec.LookPath("lintian"); err != nil {
		t.Fatal("lintian is needed: run make deps")
	}
	deb := packageDeb(t)
	out, err := exec.Command("lintian", "--fail-on", "error,warning", "--pedantic", deb).CombinedOutput()
	if err != nil {
		t.Errorf("lintian --fail-on error,warning --pedantic: %v\n%s", err, out)
	}
	// Shown, an overridden error counts as a failure: this run is only
	// for the log.
	out, _ = exec.Command("lintian", "--pedantic", "--show-overrides", deb).CombinedOutput()
	t.Logf("lintian --pedantic --show-overrides %s:\n%s", filepath.Base(deb), out)
}
