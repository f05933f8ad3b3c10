package nspawn

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Packages are what debootstrap adds to its minbase variant: enough for
// systemd to boot as PID 1 and for dpkg to install and start a unit.
var Packages = []string{"systemd", "systemd-sysv", "dbus", "init-system-helpers"}

const (
	suite  = "bookworm"
	mirror = "http://deb.debian.org/debian"
	// recipe names everything about the root besides Packages: the
	// suite and what customize does. Change it whenever either changes,
	// so that no test boots a root made by an older recipe.
	recipe = "bookworm-minbase-2"
)

// CacheDir holds one directory per Key, each with the finished root
// and the lock and log of its build: $QSNAPD_SYSROOT_CACHE, by default
// /var/cache/qsnapd-sysroot.
var CacheDir = cmp.Or(os.Getenv("QSNAPD_SYSROOT_CACHE"), "/var/cache/qsnapd-sysroot")

// Logf reports the slow steps of Root (installing tools, building the
// root, waiting for another process's build); the cached path is quiet.
var Logf = func(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "nspawn: "+format+"\n", args...)
}

// debianPath is the PATH of a Debian root shell: debootstrap, chroot and
// the tools the container runs live in sbin directories.
const debianPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Key names a root by its recipe and package list: 12 hex digits of
// their sha256.
func Key() string {
	sum := sha256.Sum256([]byte(recipe + "\n" + strings.Join(Packages, ",")))
	return hex.EncodeToString(sum[:6])
}

// Root returns the cached root for Key, building it first if there is
// none. A build runs debootstrap, which downloads about 40 MB and takes
// a minute, so ctx must allow that. The root appears only by renaming a
// finished build, so a half-built one is never used, and a lock file
// keeps concurrent test processes from building it twice.
func Root(ctx context.Context) (string, error) {
	dir := filepath.Join(CacheDir, Key())
	root := filepath.Join(dir, "root")
	if _, err := os.Stat(root); err == nil {
		return root, nil
	}
	if err := ensureTools(ctx); err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("nspawn: cache: %w", err)
	}
	unlock, err := lock(ctx, filepath.Join(dir, "lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(root); err == nil {
		return root, nil // built by the process we waited for
	}
	if err := removeStale(dir); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(dir, "root.tmp-")
	if err != nil {
		return "", fmt.Errorf("nspawn: cache: %w", err)
	}
	start := time.Now()
	Logf("building %s with debootstrap (about a minute)", root)
	if err := build(ctx, tmp, filepath.Join(dir, "build.log")); err != nil {
		if rmErr := removeBuild(tmp); rmErr != nil {
			Logf("leaving %s: %v", tmp, rmErr)
		}
		return "", err
	}
	if err := os.Rename(tmp, root); err != nil {
		return "", fmt.Errorf("nspawn: cache: %w", err)
	}
	Logf("built %s in %v", root, time.Since(start).Round(time.Second))
	return root, nil
}

// lock takes an exclusive flock on path, waiting for it as long as ctx
// allows. The lock goes with the file descriptor, so it also ends when
// the process dies.
func lock(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("nspawn: lock: %w", err)
	}
	for logged := false; ; logged = true {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil // closing the file drops the lock
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("nspawn: lock %s: %w", path, err)
		}
		if !logged {
			Logf("waiting for another process to build the root (%s)", path)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("nspawn: lock %s: %w", path, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// removeStale removes the builds of processes that died while holding
// the lock, which we now hold.
func removeStale(dir string) error {
	stale, err := filepath.Glob(filepath.Join(dir, "root.tmp-*"))
	if err != nil {
		return err
	}
	for _, d := range stale {
		Logf("removing unfinished build %s", d)
		if err := removeBuild(d); err != nil {
			return err
		}
	}
	return nil
}

// removeBuild removes a build directory, unless something is mounted
// under it: removing through a bind mount of /dev or /sys would empty
// the host's.
func removeBuild(dir string) error {
	mounts, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	if len(mounts) > 0 {
		return fmt.Errorf("nspawn: not removing %s: mounted under it: %s", dir, strings.Join(mounts, " "))
	}
	return os.RemoveAll(dir)
}

// build runs debootstrap into dir and customizes the result. debootstrap
// runs as PID 1 of its own PID and mount namespaces: if the build is
// cancelled or the test process dies, killing unshare kills every
// process of the build (--kill-child), and the /proc and /sys that
// debootstrap mounts in the target vanish with the namespace instead of
// staying behind on the host.
func build(ctx context.Context, dir, logPath string) error {
	logFile, err := os.Create(logPath)
	if err != nil {
		return fmt.Errorf("nspawn: build log: %w", err)
	}
	defer logFile.Close()
	unshare, err := lookPath("unshare")
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, unshare, "--fork", "--pid", "--kill-child", "--mount-proc",
		"--propagation", "private",
		"debootstrap", "--variant=minbase", "--include="+strings.Join(Packages, ","), suite, dir, mirror)
	cmd.Env = append(os.Environ(), "PATH="+debianPath, "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("nspawn: debootstrap: %w\n%s (last lines of %s):\n%s", err, dir, logPath, tail(readFile(logPath), 20))
	}
	if err := customize(dir); err != nil {
		return fmt.Errorf("nspawn: customize root: %w", err)
	}
	return nil
}

// masked are units that start in a fresh root but have no business in a
// test: timers that would run apt or dpkg under a test that installs a
// package (and hold its lock), and file system scrubbing.
var masked = []string{
	"apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer",
	"e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer",
}

// customize makes a debootstrapped root fit to boot many times: the
// mode of /, a fixed hostname instead of the build host's, no machine id so that each
// container gets its own, masked units, no downloaded packages.
func customize(root string) error {
	at := func(p string) string { return filepath.Join(root, p) }
	// MkdirTemp made it 0700; as /, that would keep every user but
	// root out of the whole tree.
	if err := os.Chmod(root, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(at("etc/hostname"), []byte("qsnapd-test\n"), 0o644); err != nil {
		return err
	}
	// An empty /etc/machine-id makes systemd use a new one at each boot,
	// unless dbus's copy exists: systemd would take that instead.
	if err := os.WriteFile(at("etc/machine-id"), nil, 0o444); err != nil {
		return err
	}
	if err := os.Remove(at("var/lib/dbus/machine-id")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.Symlink("/etc/machine-id", at("var/lib/dbus/machine-id")); err != nil {
		return err
	}
	for _, u := range masked {
		if err := os.Symlink("/dev/null", at("etc/systemd/system/"+u)); err != nil {
			return err
		}
	}
	debs, err := filepath.Glob(at("var/cache/apt/archives/*.deb"))
	if err != nil {
		return err
	}
	for _, d := range debs {
		if err := os.Remove(d); err != nil {
			return err
		}
	}
	return nil
}

// tools are what the package runs on the host, with the Debian package
// that has each; nsenter and unshare come with util-linux, which every
// Debian system has.
var tools = []struct{ bin, pkg string }{
	{"debootstrap", "debootstrap"},
	{"systemd-nspawn", "systemd-container"},
	{"nsenter", "util-linux"},
	{"unshare", "util-linux"},
}

var toolsMu sync.Mutex

// ensureTools installs debootstrap and systemd-nspawn if either is
// missing. apt-get update runs only if the install fails: the package
// lists are usually fresh enough, and updating them takes a while.
func ensureTools(ctx context.Context) error {
	toolsMu.Lock()
	defer toolsMu.Unlock()
	if missingTools() == nil {
		return nil
	}
	Logf("installing debootstrap and systemd-container")
	run := func(args ...string) error {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "PATH="+debianPath, "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
		}
		return nil
	}
	install := []string{"install", "-y", "-qq", "--no-install-recommends", "debootstrap", "systemd-container"}
	if err := run(install...); err != nil {
		if err := run("update", "-qq"); err != nil {
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		if err := run(install...); err != nil {
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
	}
	if m := missingTools(); m != nil {
		return fmt.Errorf("%w: %s missing after apt-get install", ErrUnavailable, strings.Join(m, ", "))
	}
	return nil
}

func missingTools() []string {
	var missing []string
	for _, t := range tools {
		if _, err := lookPath(t.bin); err != nil {
			missing = append(missing, t.bin+" (package "+t.pkg+")")
		}
	}
	return missing
}

// lookPath finds a tool in debianPath, which has the sbin directories
// a test's PATH may lack.
func lookPath(name string) (string, error) {
	for _, dir := range filepath.SplitList(debianPath) {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in %s", name, debianPath)
}

// mountsUnder lists the mount points of this process's mount namespace
// at or under dir.
func mountsUnder(dir string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	dir = filepath.Clean(dir)
	var under []string
	for line := range strings.Lines(string(data)) {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		// Field 5 is the mount point, with spaces and the like octal-escaped,
		// which paths we build never have.
		if p := f[4]; p == dir || strings.HasPrefix(p, dir+"/") {
			under = append(under, p)
		}
	}
	return under, nil
}

func readFile(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	return string(b)
}

// tail returns the last n lines of s, without the carriage returns that
// a console adds.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(strings.ReplaceAll(s, "\r", ""), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
