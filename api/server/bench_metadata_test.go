package server_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/api/server"
	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/internal/testing/snaptree"
)

// metadataSnapshots is how many snapshots BenchmarkMetadata's domain has.
const metadataSnapshots = 10_000

// metadataReads are what BenchmarkMetadata measures, each with its
// target in ms.
var metadataReads = []struct {
	name   string
	target float64
	path   func(f *metadataFixture, i int) string
}{
	{"one", 1, func(f *metadataFixture, i int) string { return "/v1/domains/vm/snapshots/" + url.PathEscape(f.pick(i)) }},
	{"current", 1, func(*metadataFixture, int) string { return "/v1/domains/vm/snapshots/current" }},
	{"list", 30, func(*metadataFixture, int) string { return "/v1/domains/vm/snapshots" }},
	{"page", 2, func(f *metadataFixture, i int) string {
		return "/v1/domains/vm/snapshots?limit=100&after=" + url.QueryEscape(f.pick(i))
	}},
	{"tree", 100, func(*metadataFixture, int) string { return "/v1/domains/vm/snapshots?tree" }},
}

// BenchmarkMetadata measures reads of the snapshot metadata inside the
// daemon, through the HTTP handler without a socket, with 10 000
// snapshots on one domain in snaptree's shape (a long chain, branches,
// three roots). They are redefined once per process, through the API
// as a frontend would (REDEFINE needs no QEMU, and there is none), and
// outside the timer. Each iteration makes each read 9 times, of varying
// snapshots; the metrics are medians in ms, each beside its target.
func BenchmarkMetadata(b *testing.B) {
	f := metadataFor(b)
	samples := make([][]time.Duration, len(metadataReads))
	n := 0
	for b.Loop() {
		for r, read := range metadataReads {
			for range 9 {
				req := httptest.NewRequest(http.MethodGet, read.path(f, n), http.NoBody)
				w := &discardWriter{header: http.Header{}}
				start := time.Now()
				f.handler.ServeHTTP(w, req)
				samples[r] = append(samples[r], time.Since(start))
				if w.status != http.StatusOK {
					b.Fatalf("GET %s: %d", req.URL, w.status)
				}
				n++
			}
		}
	}
	for r, read := range metadataReads {
		slices.Sort(samples[r])
		b.ReportMetric(float64(samples[r][len(samples[r])/2])/float64(time.Millisecond), read.name+"-ms")
		b.ReportMetric(read.target, read.name+"-target-ms")
	}
}

// metadataFixture is BenchmarkMetadata's daemon, set up once per process.
type metadataFixture struct {
	handler http.Handler // the read-only socket's
	names   []string
	err     error
}

var (
	metadataOnce sync.Once
	metadata     *metadataFixture
)

func metadataFor(b *testing.B) *metadataFixture {
	b.Helper()
	metadataOnce.Do(func() { metadata = newMetadataFixture() })
	if metadata.err != nil {
		b.Fatal(metadata.err)
	}
	return metadata
}

// pick is the i-th snapshot of a walk that visits all of them.
func (f *metadataFixture) pick(i int) string { return f.names[i*7919%len(f.names)] }

// newMetadataFixture starts a daemon and redefines the snapshots through
// its socket. Its state is on tmpfs when there is one (setting up is
// 10 000 durable writes, which are not what is measured), and deleted
// once the daemon has it open: nothing is left when the process ends.
func newMetadataFixture() *metadataFixture {
	f := &metadataFixture{}
	base := os.TempDir()
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		base = "/dev/shm"
	}
	dir, err := os.MkdirTemp(base, "qsnapd-bench")
	if err != nil {
		f.err = err
		return f
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	drv, err := driver.Open(driver.Config{StateDir: filepath.Join(dir, "state")}, nil)
	if err != nil {
		f.err = err
		return f
	}
	if f.err = drv.EnsureDomain(ctx, driver.DomainConfig{Name: "vm", QMP: filepath.Join(dir, "absent.sock")}); f.err != nil {
		return f
	}
	ln, err := net.Listen("unix", filepath.Join(dir, "rw.sock"))
	if err != nil {
		f.err = err
		return f
	}
	srv := server.New(drv, server.Config{}, nil)
	go func() { _ = srv.Serve(context.Background(), ln, nil) }() // as long as the process
	c := api.NewClient(ln.Addr().String())
	defer c.Close()
	snaps, current := snaptree.Generate(metadataSnapshots)
	for _, s := range snaps {
		flags := api.FlagRedefine
		if s.Name == current {
			flags |= api.FlagCurrent
		}
		if _, err := c.CreateSnapshot(ctx, "vm", api.CreateSnapshotRequest{XML: s.RedefineXML(), Flags: flags}, ""); err != nil {
			f.err = fmt.Errorf("redefine %s: %w", s.Name, err)
			return f
		}
		f.names = append(f.names, s.Name)
	}
	f.handler = srv.Handler(true)
	return f
}

// discardWriter takes an answer and keeps its status only.
type discardWriter struct {
	header http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.header }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(status int)      { w.status = status }
