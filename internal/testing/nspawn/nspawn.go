// Package nspawn boots a minimal Debian 12 root with systemd as PID 1 in
// systemd-nspawn, so that tests can install qsnapd's package inside and
// drive it from outside.
//
// Root builds the root once with debootstrap and caches it; Boot starts
// a container on a throwaway overlay of it, so nothing a test does inside
// reaches the cache, and several containers can run at once. Host
// directories reach the container through Options.Binds: keep them under
// SharedBase, since units with PrivateTmp= do not see the host's /tmp.
package nspawn

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// BootTimeout is how long Boot waits for systemd inside to finish
	// booting, unless Options say otherwise; a boot takes well under a
	// second on an idle host.
	BootTimeout = 60 * time.Second
	// StopTimeout is how long Stop waits for the container to power off
	// before it kills it, unless Options say otherwise.
	StopTimeout = 20 * time.Second
	// SharedBase is where SharedDir makes directories to bind into
	// containers.
	SharedBase = "/srv/qsnapd-test"
)

// execEnv is the whole environment of commands run inside: a root
// shell's PATH, and no pager, colours or debconf questions.
var execEnv = []string{
	"PATH=" + debianPath, "HOME=/root", "LANG=C.UTF-8", "TERM=dumb",
	"SYSTEMD_PAGER=", "PAGER=cat", "SYSTEMD_COLORS=0", "DEBIAN_FRONTEND=noninteractive",
}

// Available says why containers cannot run here, or nil if they can. It
// installs systemd-nspawn and debootstrap if they are missing.
func Available() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: not root", ErrUnavailable)
	}
	if _, err := os.Stat("/sys/fs/cgroup"); err != nil {
		return fmt.Errorf("%w: no /sys/fs/cgroup: %w", ErrUnavailable, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	return ensureTools(ctx)
}

// Options describe the container to boot.
type Options struct {
	// Binds are bind mounts, as systemd-nspawn's --bind= takes them:
	// "path" binds a host directory at the same path inside,
	// "hostpath:containerpath" at another.
	Binds []string
	// Args are more arguments for systemd-nspawn.
	Args []string
	// InitArgs go to systemd as PID 1, which reads them as a kernel
	// command line, for example "systemd.wants=qsnapd.service".
	InitArgs []string
	// BootTimeout and StopTimeout override the package defaults.
	BootTimeout, StopTimeout time.Duration
}

// Container is a booted systemd-nspawn container.
type Container struct {
	// Name is the machine name, unique among running containers.
	Name string
	// Root is the directory under the container's overlay.
	Root string
	// NspawnPID is systemd-nspawn's PID; PID is the host PID of the
	// container's PID 1.
	NspawnPID, PID int
	// BootTime is from starting systemd-nspawn to systemd's report
	// that it finished booting.
	BootTime time.Duration

	started     time.Time
	stopTimeout time.Duration
	console     string // the file with systemd-nspawn's output
	nsenter     []string
	done        chan struct{} // closed once systemd-nspawn has exited
	waitErr     error         // systemd-nspawn's exit, once done

	stopOnce sync.Once
	stopErr  error
}

// Boot starts a container on an overlay of root, waits until systemd
// inside has finished booting, and stops the container when tb ends,
// logging the end of its console if tb failed. A boot state of
// "degraded" is accepted, with the failed units logged. Boot fails tb
// if the container cannot start or boot.
func Boot(tb testing.TB, root string, o Options) *Container {
	tb.Helper()
	if err := Available(); err != nil {
		tb.Fatal(err)
	}
	c, err := start(tb.TempDir(), root, o)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := c.Stop(); err != nil {
			tb.Log(err)
		}
		if tb.Failed() {
			tb.Logf("container %s console, last lines:\n%s", c.Name, tail(c.Console(), 40))
		}
	})
	timeout := cmp.Or(o.BootTimeout, BootTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	state, err := c.waitBooted(ctx)
	if err != nil {
		// The cleanup logs the console, shutdown included.
		tb.Fatalf("nspawn: container %s did not boot within %v: %v", c.Name, timeout, err)
	}
	c.BootTime = time.Since(c.started)
	if state == "degraded" {
		out, _ := c.Exec(ctx, "systemctl", "--failed", "--no-legend")
		tb.Logf("nspawn: container %s booted degraded; failed units:\n%s", c.Name, out)
	}
	return c
}

// start starts systemd-nspawn.
func start(dir, root string, o Options) (*Container, error) {
	nspawn, err := lookPath("systemd-nspawn")
	if err != nil {
		return nil, err
	}
	id := make([]byte, 4)
	_, _ = rand.Read(id) // never fails on Linux
	c := &Container{
		Name:        "qsnapd-" + hex.EncodeToString(id),
		Root:        root,
		stopTimeout: cmp.Or(o.StopTimeout, StopTimeout),
		console:     filepath.Join(dir, "console.log"),
		done:        make(chan struct{}),
	}
	// --console=read-only rather than pipe: with pipe, systemd has no
	// /dev/console and prints nothing, so there is no boot log to show.
	// --register=no and --keep-unit because the host may have no systemd
	// and no machined to register with.
	args := []string{
		"-q", "-D", root, "--volatile=overlay", "--register=no", "--keep-unit", "-b",
		"--console=read-only", "--machine=" + c.Name, "--setenv=SYSTEMD_COLORS=0",
	}
	for _, b := range o.Binds {
		args = append(args, "--bind="+b)
	}
	args = append(args, o.Args...)
	if len(o.InitArgs) > 0 {
		args = append(append(args, "--"), o.InitArgs...)
	}
	console, err := os.Create(c.console)
	if err != nil {
		return nil, fmt.Errorf("nspawn: %w", err)
	}
	defer console.Close() // systemd-nspawn has its own copy
	cmd := exec.Command(nspawn, args...)
	// The cgroup v1 hierarchy inside works on both v1 and hybrid hosts.
	cmd.Env = append(os.Environ(), "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=0")
	cmd.Stdout, cmd.Stderr = console, console
	// If the test process dies, SIGTERM makes systemd-nspawn power the
	// container off; SIGKILL would leave the container running.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	c.started = time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("nspawn: start systemd-nspawn: %w", err)
	}
	c.NspawnPID = cmd.Process.Pid
	go func() { c.waitErr = cmd.Wait(); close(c.done) }()
	return c, nil
}

// findInit returns the PID of the descendant of pid that runs systemd,
// or 0 if none does yet. It needs /proc/PID/task/TID/children
// (CONFIG_PROC_CHILDREN, on in Debian's kernels).
func findInit(pid int) int {
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", p))
		for _, t := range tasks {
			b, _ := os.ReadFile(t) // the process may be gone: then it has no children
			for f := range strings.FieldsSeq(string(b)) {
				child, err := strconv.Atoi(f)
				if err != nil {
					continue
				}
				if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", child)); string(comm) == "systemd\n" {
					return child
				}
				queue = append(queue, child)
			}
		}
	}
	return 0
}

// nsFlags are nsenter's flags for the namespaces of pid that differ from
// ours. Without --private-network the container shares the host's
// network namespace; whether it has its own cgroup namespace depends on
// the cgroup setup.
func nsFlags(pid int) []string {
	flags := []string{"--mount"} // always: nsenter --root and --wd go by it
	for _, ns := range []string{"uts", "ipc", "net", "pid", "cgroup"} {
		theirs, err1 := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
		ours, err2 := os.Readlink("/proc/self/ns/" + ns)
		if err1 == nil && err2 == nil && theirs != ours {
			flags = append(flags, "--"+ns)
		}
	}
	return flags
}

// waitBooted finds the container's PID 1, then asks systemd there until
// it says it has finished booting, and returns its state: "running" or
// "degraded".
func (c *Container) waitBooted(ctx context.Context) (string, error) {
	nsenter, err := lookPath("nsenter")
	if err != nil {
		return "", err
	}
	var last error
	for {
		if c.PID == 0 {
			// systemd-nspawn forks the container's PID 1, which then
			// execs systemd; until it has, its comm is systemd-nspawn.
			if c.PID = findInit(c.NspawnPID); c.PID != 0 {
				c.nsenter = append([]string{nsenter, "--target", strconv.Itoa(c.PID)}, nsFlags(c.PID)...)
				c.nsenter = append(c.nsenter, "--root", "--wd", "--")
			}
		}
		if c.PID != 0 {
			// --wait blocks until the boot is over; before systemd
			// listens, systemctl fails at once, saying "offline".
			out, err := c.Exec(ctx, "systemctl", "is-system-running", "--wait")
			switch state := lastLine(string(out)); state {
			case "running", "degraded":
				return state, nil
			case "maintenance", "stopping":
				return "", fmt.Errorf("system state %s", state)
			}
			last = err
		}
		select {
		case <-c.done:
			return "", fmt.Errorf("systemd-nspawn exited: %v", c.waitErr)
		case <-ctx.Done():
			if c.PID == 0 {
				return "", fmt.Errorf("%w: no systemd under systemd-nspawn (PID %d)", ctx.Err(), c.NspawnPID)
			}
			return "", fmt.Errorf("%w; last answer: %v", ctx.Err(), last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Exec runs a command inside the container, in all of its namespaces,
// with a root shell's PATH and no pager, and returns its combined
// output. Its error says what ran and what it printed.
func (c *Container) Exec(ctx context.Context, args ...string) ([]byte, error) {
	return c.ExecInput(ctx, nil, args...)
}

// ExecInput is Exec with stdin as the command's standard input.
func (c *Container) ExecInput(ctx context.Context, stdin io.Reader, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, c.nsenter[0], append(slices.Clone(c.nsenter[1:]), args...)...)
	cmd.Env = execEnv
	cmd.Stdin = stdin
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// nsenter forks to enter the PID namespace: kill its group, so a
	// cancelled command does not go on inside.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second // for a command that leaves a child holding its output
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("in %s: %s: %w: %s", c.Name, strings.Join(args, " "), err, bytes.TrimSpace(out.Bytes()))
	}
	return out.Bytes(), nil
}

// Journal returns the journal of this boot for the given units, or all
// of it, for failure messages. An error becomes part of the text.
func (c *Container) Journal(ctx context.Context, units ...string) string {
	args := []string{"journalctl", "-b", "--no-pager"}
	for _, u := range units {
		args = append(args, "-u", u)
	}
	out, err := c.Exec(ctx, args...)
	if err != nil {
		return fmt.Sprintf("%s\n(%v)", out, err)
	}
	return string(out)
}

// Console returns what the container printed on its console so far:
// systemd's boot and shutdown messages.
func (c *Container) Console() string { return readFile(c.console) }

// Exited is closed once systemd-nspawn has exited.
func (c *Container) Exited() <-chan struct{} { return c.done }

// Stop powers the container off and waits for systemd-nspawn to exit.
// On SIGTERM, systemd-nspawn asks systemd inside to power off; if that
// takes longer than the stop timeout, Stop kills the container's PID 1,
// which ends every process in its PID namespace, and systemd-nspawn,
// and returns ErrKilled. Either way no process of the container is left;
// the overlay and mounts were in systemd-nspawn's mount namespace and
// went with it. Stop may be called more than once.
func (c *Container) Stop() error {
	c.stopOnce.Do(func() { c.stopErr = c.stop() })
	return c.stopErr
}

func (c *Container) stop() error {
	select {
	case <-c.done:
		return nil
	default:
	}
	_ = syscall.Kill(c.NspawnPID, syscall.SIGTERM) // fails only once it has exited
	select {
	case <-c.done:
		return nil
	case <-time.After(c.stopTimeout):
	}
	if c.PID != 0 {
		_ = syscall.Kill(c.PID, syscall.SIGKILL)
	}
	_ = syscall.Kill(-c.NspawnPID, syscall.SIGKILL)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("nspawn: %s: systemd-nspawn (PID %d) survived SIGKILL", c.Name, c.NspawnPID)
	}
	// Killed, systemd-nspawn leaves the directory it made for mounts
	// into the container.
	_ = os.Remove("/run/systemd/nspawn/propagate/" + c.Name)
	return fmt.Errorf("%w: %s did not power off within %v", ErrKilled, c.Name, c.stopTimeout)
}

// SharedDir makes a new directory under SharedBase, to bind into
// containers, and removes it when tb ends (after the containers booted
// later in the test have stopped, as cleanups run last first).
func SharedDir(tb testing.TB) string {
	tb.Helper()
	if err := os.MkdirAll(SharedBase, 0o755); err != nil {
		tb.Fatal(err)
	}
	dir, err := os.MkdirTemp(SharedBase, "")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			tb.Errorf("nspawn: remove %s: %v", dir, err)
		}
	})
	return dir
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	return s[strings.LastIndexByte(s, '\n')+1:]
}
