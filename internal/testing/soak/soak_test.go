//go:build soak

package soak

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
)

// The load, as the issue sets it; SOAK_* variables change it.
var (
	domains   = envInt("SOAK_DOMAINS", 50)
	disks     = envInt("SOAK_DISKS", 2)
	snapshots = envInt("SOAK_SNAPSHOTS", 20) // per domain, one after another
	readers   = envInt("SOAK_READERS", 50)
	streams   = envInt("SOAK_STREAMS", 5)
)

// Limits the run must keep.
const (
	maxRSS   = 64 << 20
	settle   = 30 * time.Second // for goroutines and fds to come back
	slackFDs = 2                // a log file rotating, a metrics scrape
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// TestSoak runs every domain's snapshots concurrently while readers
// hammer the API and event streams follow everything, and checks: no
// unexpected failure, every stream saw every snapshot, the daemon's
// peak RSS, and goroutines and open fds back to their idle values.
func TestSoak(t *testing.T) {
	qemutest.Require(t)
	dir := qemutest.TempDir(t)
	bin := filepath.Join(dir, "qsnapd")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/qsnapd/qsnapd/cmd/qsnapd").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	d := startDaemon(t, bin, dir)
	client := api.NewClient(d.socket)
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()

	t.Logf("starting %d VMs with %d disks each", domains, disks)
	names := make([]string, domains)
	for i := range names {
		names[i] = fmt.Sprintf("vm%02d", i)
		vm := qemutest.Start(t, qemutest.Options{Disks: disks, Style: qemutest.Blockdev})
		if _, err := client.Attach(ctx, api.AttachRequest{Name: names[i], QMP: vm.QMP}); err != nil {
			t.Fatalf("attach %s: %v", names[i], err)
		}
	}
	client.Close()
	time.Sleep(2 * time.Second) // let the connections settle
	idle := d.sample(t)
	t.Logf("idle: %s", idle)

	var failures atomic.Int64
	fail := func(format string, args ...any) {
		failures.Add(1)
		t.Errorf(format, args...)
	}

	// Event streams: each must see every snapshot created.
	streamCtx, stopStreams := context.WithCancel(ctx)
	counts := make([]atomic.Int64, streams)
	var streamWG sync.WaitGroup
	for i := range streams {
		streamWG.Add(1)
		go func() {
			defer streamWG.Done()
			if err := follow(streamCtx, d.socket, &counts[i]); err != nil && streamCtx.Err() == nil {
				fail("event stream %d: %v", i, err)
			}
		}()
	}

	// Readers: lists, one snapshot, current, the domains.
	readCtx, stopReaders := context.WithCancel(ctx)
	var reads atomic.Int64
	var readWG sync.WaitGroup
	for i := range readers {
		readWG.Add(1)
		go func() {
			defer readWG.Done()
			c := api.NewClient(d.socketRO)
			defer c.Close()
			for n := i; readCtx.Err() == nil; n++ {
				if err := read(readCtx, c, names[n%len(names)]); err != nil && readCtx.Err() == nil {
					fail("reader %d: %v", i, err)
					return
				}
				reads.Add(1)
			}
		}()
	}

	start := time.Now()
	var created atomic.Int64
	var snapWG sync.WaitGroup
	for _, name := range names {
		snapWG.Add(1)
		go func() {
			defer snapWG.Done()
			c := api.NewClient(d.socket)
			defer c.Close()
			for j := range snapshots {
				xml := fmt.Sprintf("<domainsnapshot><name>s%02d</name></domainsnapshot>", j)
				_, err := c.CreateSnapshot(ctx, name, api.CreateSnapshotRequest{XML: xml, Flags: api.Flags(driver.FlagDiskOnly | driver.FlagAtomic)}, "")
				if err != nil {
					fail("snapshot %s/s%02d: %v", name, j, err)
					return
				}
				created.Add(1)
			}
		}()
	}
	snapWG.Wait()
	took := time.Since(start)
	busy := d.sample(t)

	// The streams get the last events, then everything stops.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && minCount(counts) < created.Load() {
		time.Sleep(50 * time.Millisecond)
	}
	stopReaders()
	readWG.Wait()
	stopStreams()
	streamWG.Wait()
	for i := range counts {
		if got := counts[i].Load(); got != created.Load() {
			fail("event stream %d saw %d snapshot-created events, want %d", i, got, created.Load())
		}
	}

	// Back to idle: the clients are gone, so are their connections.
	var after sample
	for end := time.Now().Add(settle); ; {
		after = d.sample(t)
		if after.goroutines <= idle.goroutines && after.fds <= idle.fds+slackFDs || time.Now().After(end) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("soak: %d domains x %d disks, %d snapshots in %.1fs: %.1f snapshots/s; %d reads (%.0f/s); %d streams saw %d events each",
		domains, disks, created.Load(), took.Seconds(), float64(created.Load())/took.Seconds(), reads.Load(),
		float64(reads.Load())/took.Seconds(), streams, minCount(counts))
	t.Logf("daemon: peak RSS %.1f MiB (limit %d); goroutines idle %d, loaded %d, after %d; open fds idle %d, loaded %d, after %d; %d unexpected failures",
		float64(after.peakRSS)/(1<<20), maxRSS>>20, idle.goroutines, busy.goroutines, after.goroutines, idle.fds, busy.fds, after.fds, failures.Load())
	if after.peakRSS > maxRSS {
		t.Errorf("peak RSS %d MiB, limit %d MiB", after.peakRSS>>20, maxRSS>>20)
	}
	if after.goroutines > idle.goroutines {
		t.Errorf("goroutines %d after the load, %d idle", after.goroutines, idle.goroutines)
	}
	if after.fds > idle.fds+slackFDs {
		t.Errorf("open fds %d after the load, %d idle", after.fds, idle.fds)
	}
	if created.Load() != int64(domains*snapshots) {
		t.Errorf("%d snapshots, want %d", created.Load(), domains*snapshots)
	}
}

// read is one round of a reader.
func read(ctx context.Context, c *api.Client, domain string) error {
	if _, err := c.Domains(ctx); err != nil {
		return err
	}
	list, err := c.Snapshots(ctx, domain, nil)
	if err != nil {
		return err
	}
	if len(list.Snapshots) > 0 {
		if _, err := c.Snapshot(ctx, domain, list.Snapshots[len(list.Snapshots)-1].Name); err != nil {
			return err
		}
	}
	if _, err := c.Current(ctx, domain); err != nil && api.Code(err) != api.CodeNoDomainSnapshot {
		return err
	}
	return nil
}

// follow reads the event stream, counting snapshot-created events,
// until ctx ends; an overflow or an error ends it early.
func follow(ctx context.Context, socket string, n *atomic.Int64) error {
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://qsnapd/v1/events?type=snapshot-created", nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /v1/events: %s", resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var ev struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("event %q: %w", sc.Text(), err)
		}
		switch ev.Type {
		case "snapshot-created":
			n.Add(1)
		case "overflow", "events-lost":
			return fmt.Errorf("the stream said %s", ev.Type)
		}
	}
	return sc.Err()
}

func minCount(counts []atomic.Int64) int64 {
	m := int64(-1)
	for i := range counts {
		if v := counts[i].Load(); m < 0 || v < m {
			m = v
		}
	}
	return m
}

// daemon is the qsnapd under load.
type daemon struct {
	cmd              *exec.Cmd
	socket, socketRO string
	metrics          string // host:port
}

// goroutines scrapes go_goroutines, on a connection it closes.
func (d *daemon) goroutines(t *testing.T) int {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := hc.Get("http://" + d.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return int(n)
		}
	}
	t.Fatal("no go_goroutines in the metrics")
	return 0
}

// freePort is a TCP port nothing listens on now.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func startDaemon(t *testing.T, bin, dir string) *daemon {
	t.Helper()
	d := &daemon{socket: filepath.Join(dir, "rw.sock"), socketRO: filepath.Join(dir, "ro.sock"), metrics: freePort(t)}
	d.cmd = exec.Command(bin, "--socket", d.socket, "--socket-ro", d.socketRO, "--state-dir", filepath.Join(dir, "state"),
		"--libvirt-socket", "", "--libvirt-socket-ro", "", "--metrics-listen", d.metrics, "--log-level", "warn")
	d.cmd.Stderr = os.Stderr
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		_ = d.cmd.Wait()
	})
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, err := os.Stat(d.socketRO); err == nil {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatal("qsnapd did not create its sockets")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sample is the daemon's resources at one time.
type sample struct {
	goroutines, fds int
	rss, peakRSS    int64
}

func (s sample) String() string {
	return fmt.Sprintf("%d goroutines, %d open fds, RSS %.1f MiB (peak %.1f)", s.goroutines, s.fds,
		float64(s.rss)/(1<<20), float64(s.peakRSS)/(1<<20))
}

// sample reads the daemon's fds and memory from /proc and its
// goroutines from its metrics.
func (d *daemon) sample(t *testing.T) sample {
	t.Helper()
	pid := d.cmd.Process.Pid
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := sample{fds: len(fds)}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			switch f[0] {
			case "VmRSS:":
				s.rss = kb << 10
			case "VmHWM:":
				s.peakRSS = kb << 10
			}
		}
	}
	s.goroutines = d.goroutines(t)
	return s
}
