package testguest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
)

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

type fsfreezeStatus string

func freezeStatus(t *testing.T, ctx context.Context, g *Guest) fsfreezeStatus {
	t.Helper()
	var st fsfreezeStatus
	if err := g.Agent(ctx, "guest-fsfreeze-status", nil, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// hostCat reads a file out of an ext4 image that QEMU holds open, as a
// snapshot would see it: qcow2 to raw with -U, then debugfs.
func hostCat(t *testing.T, d Disk, name string) string {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "disk.raw")
	if out, err := exec.Command("qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", d.Path, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v: %s", err, out)
	}
	debugfs, err := lookSbin("debugfs")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(debugfs, "-R", "cat "+name, raw).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", name, err)
	}
	return string(out)
}

func TestGuest(t *testing.T) {
	t.Parallel()
	g := Boot(t, Options{DataDisks: []string{"data1", "data2"}, SecondMonitor: true})
	t.Logf("boot to first guest-ping reply: %v", g.BootTime)
	ctx := ctxFor(t)

	t.Run("ping", func(t *testing.T) {
		if err := g.Agent(ctx, "guest-ping", nil, nil); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("info", func(t *testing.T) {
		var info struct {
			Version  string `json:"version"`
			Commands []struct {
				Name    string `json:"name"`
				Enabled bool   `json:"enabled"`
			} `json:"supported_commands"`
		}
		if err := g.Agent(ctx, "guest-info", nil, &info); err != nil {
			t.Fatal(err)
		}
		t.Logf("qemu-ga %s, %d commands", info.Version, len(info.Commands))
		enabled := map[string]bool{}
		for _, c := range info.Commands {
			enabled[c.Name] = c.Enabled
		}
		for _, want := range []string{"guest-fsfreeze-freeze", "guest-fsfreeze-thaw", "guest-fsfreeze-status", "guest-exec", "guest-exec-status"} {
			if !enabled[want] {
				t.Errorf("guest-info: %s not enabled", want)
			}
		}
	})

	t.Run("mounts", func(t *testing.T) {
		out, code, err := g.Exec(ctx, "cat", "/proc/mounts")
		if err != nil || code != 0 {
			t.Fatalf("cat /proc/mounts: exit %d, %v", code, err)
		}
		fstype := map[string]string{}
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) >= 3 {
				fstype[f[1]] = f[2]
			}
		}
		for _, d := range g.Disks {
			if got := fstype["/mnt/"+d.Serial]; got != "ext4" {
				t.Errorf("/mnt/%s: file system %q, want ext4; /proc/mounts:\n%s", d.Serial, got, out)
			}
		}
	})

	t.Run("exec", func(t *testing.T) {
		for _, tc := range []struct {
			argv       []string
			wantOut    string
			wantStderr string
			wantCode   int
		}{
			{[]string{"cat", "/mnt/data2/serial"}, "data2\n", "", 0},
			{[]string{"sh", "-c", "echo out; echo err >&2; exit 3"}, "out\n", "err\n", 3},
		} {
			res, err := g.Run(ctx, tc.argv...)
			if err != nil {
				t.Fatalf("%q: %v", tc.argv, err)
			}
			if res.Stdout != tc.wantOut || res.Stderr != tc.wantStderr || res.ExitCode != tc.wantCode {
				t.Errorf("%q = %+v, want stdout %q stderr %q exit %d", tc.argv, res, tc.wantOut, tc.wantStderr, tc.wantCode)
			}
		}
		_, _, err := g.Exec(ctx, "sh", "-c", "kill -9 $$")
		if !errors.Is(err, ErrSignaled) {
			t.Errorf("exec of a process killing itself: %v, want ErrSignaled", err)
		}
	})

	t.Run("freeze", func(t *testing.T) {
		// Written without sync: the freeze must put it on the disk.
		if _, code, err := g.Exec(ctx, "sh", "-c", "echo hi > /mnt/data1/f"); err != nil || code != 0 {
			t.Fatalf("write /mnt/data1/f: exit %d, %v", code, err)
		}
		if got := freezeStatus(t, ctx, g); got != "thawed" {
			t.Fatalf("status before freeze = %q, want thawed", got)
		}
		var frozen int
		if err := g.Agent(ctx, "guest-fsfreeze-freeze", nil, &frozen); err != nil {
			t.Fatal(err)
		}
		t.Logf("guest-fsfreeze-freeze froze %d file systems", frozen)
		if frozen != len(g.Disks) {
			t.Errorf("guest-fsfreeze-freeze = %d, want %d (the data disks)", frozen, len(g.Disks))
		}
		if got := freezeStatus(t, ctx, g); got != "frozen" {
			t.Errorf("status after freeze = %q, want frozen", got)
		}
		// While frozen, qemu-ga refuses all but a few commands.
		var ae *AgentError
		if _, _, err := g.Exec(ctx, "true"); !errors.As(err, &ae) {
			t.Errorf("guest-exec while frozen: %v, want an agent error", err)
		} else {
			t.Logf("guest-exec while frozen: %v", err)
		}
		if got := hostCat(t, g.Disks[0], "/f"); got != "hi\n" {
			t.Errorf("/f in the frozen image = %q, want %q", got, "hi\n")
		}

		var thawed int
		if err := g.Agent(ctx, "guest-fsfreeze-thaw", nil, &thawed); err != nil {
			t.Fatal(err)
		}
		if thawed != frozen {
			t.Errorf("guest-fsfreeze-thaw = %d, want %d", thawed, frozen)
		}
		if got := freezeStatus(t, ctx, g); got != "thawed" {
			t.Errorf("status after thaw = %q, want thawed", got)
		}
		if out, code, err := g.Exec(ctx, "cat", "/mnt/data1/f"); err != nil || code != 0 || out != "hi\n" {
			t.Errorf("cat /mnt/data1/f after thaw = %q, exit %d, %v", out, code, err)
		}
	})

	t.Run("shutdown", func(t *testing.T) {
		if err := g.Agent(ctx, "guest-shutdown", nil, nil); err != nil {
			t.Fatal(err)
		}
		select {
		case <-g.Exited():
		case <-ctx.Done():
			t.Fatal("qemu still running after guest-shutdown")
		}
	})
}

func TestFailFreezeHook(t *testing.T) {
	t.Parallel()
	g := Boot(t, Options{DataDisks: []string{"data1"}, FailFreezeHook: true})
	ctx := ctxFor(t)

	var n int
	err := g.Agent(ctx, "guest-fsfreeze-freeze", nil, &n)
	var ae *AgentError
	if !errors.As(err, &ae) {
		t.Fatalf("guest-fsfreeze-freeze with a failing hook = %d, %v; want an agent error", n, err)
	}
	t.Logf("guest-fsfreeze-freeze with a failing hook: %v", err)
	if got := freezeStatus(t, ctx, g); got != "thawed" {
		t.Errorf("status after failed freeze = %q, want thawed", got)
	}
}

// fakeAgent accepts on a Unix socket and answers each connection with
// serve; it stands in for QEMU's chardev before and after qemu-ga runs.
func fakeAgent(t *testing.T, serve func(net.Conn)) string {
	sock := filepath.Join(qemutest.TempDir(t), "qga.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { defer c.Close(); serve(c) })
		}
	})
	return sock
}

func TestAgentNoReply(t *testing.T) {
	// QEMU accepts on the agent socket even when no agent runs; the
	// reads must not outlive the context.
	sock := fakeAgent(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := agentCall(ctx, nil, sock, "guest-ping", nil, nil)
	if !errors.Is(err, ErrNoReply) {
		t.Errorf("guest-ping with no agent: %v, want ErrNoReply", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("guest-ping with no agent took %v", d)
	}
}

func TestAgentResync(t *testing.T) {
	// Replies to an earlier connection's requests come first; only the
	// 0xFF-delimited reply with our id ends the resync.
	sock := fakeAgent(t, func(c net.Conn) {
		r := bufio.NewReader(c)
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		var req struct {
			Arguments struct {
				ID int64 `json:"id"`
			} `json:"arguments"`
		}
		if json.Unmarshal(bytes.TrimLeft(line, "\xff"), &req) != nil {
			return
		}
		fmt.Fprintf(c, `{"error": {"class": "GenericError", "desc": "JSON parse error, stray '\uFFFD'"}}`+"\n")
		fmt.Fprintf(c, `{"return": 7}`+"\n")
		fmt.Fprintf(c, "\xff"+`{"return": %d}`+"\n", req.Arguments.ID+1)
		fmt.Fprintf(c, "\xff"+`{"return": %d}`+"\n", req.Arguments.ID)
		if _, err := r.ReadBytes('\n'); err != nil {
			return
		}
		fmt.Fprintf(c, `{"error": {"class": "GenericError", "desc": "fsfreeze hook has failed"}}`+"\n")
	})
	err := agentCall(t.Context(), nil, sock, "guest-fsfreeze-freeze", nil, nil)
	var ae *AgentError
	if !errors.As(err, &ae) || ae.Class != "GenericError" || ae.Command != "guest-fsfreeze-freeze" {
		t.Fatalf("got %v, want the GenericError reply of guest-fsfreeze-freeze", err)
	}
}

// BenchmarkBoot measures QEMU's start to the agent's first reply:
//
//	go test -run '^$' -bench Boot -benchtime 3x ./internal/testing/testguest/
func BenchmarkBoot(b *testing.B) {
	Build(b)
	var total time.Duration
	for b.Loop() {
		g := Boot(b, Options{DataDisks: []string{"data1", "data2"}})
		total += g.BootTime
		b.Logf("boot %v", g.BootTime)
		g.Kill()
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "s/boot")
}
