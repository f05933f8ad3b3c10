//go:build benchlibvirt

package benchlibvirt

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/api"
)

// qsnapd is the qsnapd side: a daemon on temporary sockets and state,
// driven through qsnapctl, as scripts/demo.sh does.
type qsnapd struct {
	ctl    string
	socket string
}

// binaries returns qsnapd and qsnapctl: those in $QSNAPD_BIN (make
// bench-libvirt passes bin/, built by make build), or built into dir.
func binaries(t *testing.T, dir string) (daemon, ctl string) {
	t.Helper()
	if bin := os.Getenv("QSNAPD_BIN"); bin != "" {
		return filepath.Join(bin, "qsnapd"), filepath.Join(bin, "qsnapctl")
	}
	for _, name := range []string{"qsnapd", "qsnapctl"} {
		cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(dir, name), "github.com/qsnapd/qsnapd/cmd/"+name)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", name, err, out)
		}
	}
	return filepath.Join(dir, "qsnapd"), filepath.Join(dir, "qsnapctl")
}

// startQsnapd runs the daemon with its sockets and state in dir, without
// the metrics endpoint, and stops it with SIGTERM when t ends.
func startQsnapd(t *testing.T, bin, ctl, dir string) *qsnapd {
	t.Helper()
	q := &qsnapd{ctl: ctl, socket: filepath.Join(dir, "qsnapd.sock")}
	ro := filepath.Join(dir, "qsnapd-ro.sock")
	cmd := exec.Command(bin, "--socket", q.socket, "--socket-ro", ro, "--state-dir", filepath.Join(dir, "state"),
		"--libvirt-socket", "", "--libvirt-socket-ro", "", "--metrics-listen", "", "--log-level", "warn")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start qsnapd: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	for deadline := time.Now().Add(10 * time.Second); !accepts(q.socket); {
		select {
		case <-exited:
			t.Fatal("qsnapd exited at start")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("qsnapd did not open its socket")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return q
}

// run runs qsnapctl with a ceiling.
func (q *qsnapd) run(ctx context.Context, limit time.Duration, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	return output(q.command(ctx, args...))
}

func (q *qsnapd) command(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, q.ctl, append([]string{"--socket", q.socket}, args...)...)
}

// version is the daemon's version, as qsnapctl prints it.
func (q *qsnapd) version(ctx context.Context) string {
	out, err := q.run(ctx, 10*time.Second, "version")
	if err != nil {
		return "qsnapd (version unknown)"
	}
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(l, "Daemon: "); ok {
			return v
		}
	}
	return "qsnapd (version unknown)"
}

// attach registers a domain and detaches it when t ends. With an agent,
// it waits until the agent answers through qsnapd.
func (q *qsnapd) attach(ctx context.Context, t *testing.T, name, qmp, agent string) {
	t.Helper()
	args := []string{"attach", name, "--qmp", qmp}
	if agent != "" {
		args = append(args, "--agent", agent)
	}
	if _, err := q.run(ctx, time.Minute, args...); err != nil {
		t.Fatalf("qsnapctl attach %s: %v", name, err)
	}
	t.Cleanup(func() { q.detach(context.Background(), name) })
	if agent == "" {
		return
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		_, err := q.run(ctx, 30*time.Second, "domfsstatus", name)
		if err == nil {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("qsnapd domain %s: the guest agent does not answer: %v", name, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// detach forgets a domain; a second detach finds nothing to do.
func (q *qsnapd) detach(ctx context.Context, name string) {
	_, _ = q.run(ctx, 30*time.Second, "detach", name)
}

// decodeSnapshot reads qsnapctl's JSON answer and checks that the
// snapshot was taken as asked.
func decodeSnapshot(out []byte, quiesce bool) (api.CreateSnapshotResponse, error) {
	var res api.CreateSnapshotResponse
	if err := json.Unmarshal(out, &res); err != nil {
		return res, fmt.Errorf("decode qsnapctl's answer %q: %w", out, err)
	}
	if res.Quiesced != quiesce {
		return res, fmt.Errorf("qsnapd's snapshot %s: quiesced %v, asked %v (indications %v)", res.Name, res.Quiesced, quiesce, res.Indications)
	}
	return res, nil
}

// sources returns the active image of each of dom's disks, by target.
func (q *qsnapd) sources(ctx context.Context, dom string) (map[string]string, error) {
	out, err := q.run(ctx, 30*time.Second, "--json", "domblklist", dom)
	if err != nil {
		return nil, err
	}
	var disks []api.Disk
	if err := json.Unmarshal(out, &disks); err != nil {
		return nil, fmt.Errorf("decode domblklist %q: %w", out, err)
	}
	m := map[string]string{}
	for _, d := range disks {
		m[d.Target] = d.Source
	}
	return m, nil
}
