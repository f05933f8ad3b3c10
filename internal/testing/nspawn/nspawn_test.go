package nspawn

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// root skips t under -short or where containers cannot run, and returns
// the cached root, building it if need be.
func root(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("boots systemd containers; skipped under -short")
	}
	if err := Available(); err != nil {
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	r, err := Root(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("root %s ready in %v", r, time.Since(start).Round(time.Millisecond))
	return r
}

func TestContainer(t *testing.T) {
	r := root(t)
	shared := SharedDir(t)
	c := Boot(t, r, Options{Binds: []string{shared, shared + ":/run/probe"}})
	t.Logf("container %s booted in %v", c.Name, c.BootTime.Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	exec := func(args ...string) string {
		t.Helper()
		return run(ctx, t, c, args...)
	}

	t.Run("booted", func(t *testing.T) {
		out, _ := c.Exec(ctx, "systemctl", "is-system-running") // exits 1 when degraded
		if got := strings.TrimSpace(string(out)); got != "running" && got != "degraded" {
			t.Errorf("systemctl is-system-running: got %q, want running or degraded", got)
		}
		if got := exec("cat", "/proc/1/comm"); got != "systemd" {
			t.Errorf("PID 1 inside is %q, want systemd", got)
		}
		if got := exec("systemd-detect-virt", "--container"); got != "systemd-nspawn" {
			t.Errorf("systemd-detect-virt: got %q, want systemd-nspawn", got)
		}
	})

	t.Run("binds", func(t *testing.T) {
		if err := os.WriteFile(filepath.Join(shared, "from-host"), []byte("host\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, dir := range []string{shared, "/run/probe"} {
			if got := exec("cat", dir+"/from-host"); got != "host" {
				t.Errorf("%s/from-host inside: got %q, want host", dir, got)
			}
		}
		exec("sh", "-c", "echo container > /run/probe/from-container")
		got, err := os.ReadFile(filepath.Join(shared, "from-container"))
		if err != nil || string(got) != "container\n" {
			t.Errorf("from-container on the host: got %q, %v; want container", got, err)
		}
	})

	t.Run("overlay", func(t *testing.T) {
		exec("sh", "-c", "echo probe > /etc/qsnapd-probe")
		if got := exec("cat", "/etc/qsnapd-probe"); got != "probe" {
			t.Errorf("/etc/qsnapd-probe inside: got %q", got)
		}
		for _, p := range []string{"etc/qsnapd-probe", "run/probe", strings.TrimPrefix(SharedBase, "/")} {
			if _, err := os.Lstat(filepath.Join(r, p)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s reached the cached root: %v", p, err)
			}
		}
	})

	t.Run("exec", func(t *testing.T) {
		out, err := c.ExecInput(ctx, strings.NewReader("to stdin"), "cat")
		if err != nil || string(out) != "to stdin" {
			t.Errorf("cat: got %q, %v; want to stdin", out, err)
		}
		out, err = c.Exec(ctx, "sh", "-c", "echo oops; exit 3")
		if err == nil || string(out) != "oops\n" || !strings.Contains(err.Error(), "oops") {
			t.Errorf("failing command: got %q, %v; want its output and an error saying it", out, err)
		}
		if got := exec("hostname"); got != "qsnapd-test" {
			t.Errorf("hostname: got %q, want qsnapd-test", got)
		}
		if j := c.Journal(ctx, "systemd-journald.service"); !strings.Contains(j, "journal") {
			t.Errorf("journal of systemd-journald.service says nothing of a journal:\n%s", j)
		}
	})

	t.Run("two at once", func(t *testing.T) {
		c2 := Boot(t, r, Options{})
		if c2.Name == c.Name {
			t.Fatalf("both containers are named %s", c.Name)
		}
		if out, err := c2.Exec(ctx, "test", "-e", "/etc/qsnapd-probe"); err == nil {
			t.Errorf("the other container sees /etc/qsnapd-probe: %s", out)
		}
		id1, id2 := exec("cat", "/etc/machine-id"), run(ctx, t, c2, "cat", "/etc/machine-id")
		if id1 == id2 || len(id1) != 32 {
			t.Errorf("machine ids %q and %q: want two different ones", id1, id2)
		}
	})

	t.Run("stop", func(t *testing.T) {
		if err := c.Stop(); err != nil {
			t.Fatal(err)
		}
		checkGone(t, c)
		// The overlay and the binds were in systemd-nspawn's mount
		// namespace; none may show on the host.
		for _, dir := range []string{r, shared, "/run/systemd/nspawn"} {
			if m, err := mountsUnder(dir); err != nil || len(m) > 0 {
				t.Errorf("mounts under %s after Stop: %v, %v", dir, m, err)
			}
		}
		if err := c.Stop(); err != nil {
			t.Errorf("second Stop: %v", err)
		}
	})
}

// TestStopKills boots a container that ignores the request to power off,
// so that Stop has to kill it.
func TestStopKills(t *testing.T) {
	r := root(t)
	c := Boot(t, r, Options{Args: []string{"--kill-signal=SIGCONT"}, StopTimeout: time.Second})
	if err := c.Stop(); !errors.Is(err, ErrKilled) {
		t.Fatalf("Stop: got %v, want ErrKilled", err)
	}
	checkGone(t, c)
	if _, err := os.Stat("/run/systemd/nspawn/propagate/" + c.Name); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("propagate directory left behind: %v", err)
	}
}

// checkGone checks that no process of c is left: systemd-nspawn was
// reaped by Stop, and PID 1 by systemd-nspawn or, once killed, by the
// host's init, which may take a moment.
func checkGone(t *testing.T, c *Container) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range []int{c.NspawnPID, c.PID} {
		for syscall.Kill(pid, 0) == nil && !zombie(pid) {
			if time.Now().After(deadline) {
				t.Errorf("PID %d of %s still runs after Stop", pid, c.Name)
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// No systemd-nspawn of this machine, whatever its PID.
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range cmdlines {
		b, _ := os.ReadFile(f)
		if strings.Contains(string(b), "--machine="+c.Name+"\x00") {
			t.Errorf("%s: %q still runs after Stop", f, b)
		}
	}
}

func zombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] == "Z"
}

// run runs a command in c that must succeed, and returns its output
// without surrounding space.
func run(ctx context.Context, t *testing.T, c *Container, args ...string) string {
	t.Helper()
	out, err := c.Exec(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}
