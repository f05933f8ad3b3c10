package metrics

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/guestagent"
	"github.com/qsnapd/qsnapd/qmp"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// families are the qsnapd_ families of the golden file; build_info,
// whose labels depend on the toolchain, is checked on its own.
var families = []string{
	"qsnapd_agent_command_duration_seconds",
	"qsnapd_agent_errors_total",
	"qsnapd_domains",
	"qsnapd_freeze_deadline_exceeded_total",
	"qsnapd_guest_freeze_duration_seconds",
	"qsnapd_guests_frozen",
	"qsnapd_merge_duration_seconds",
	"qsnapd_merged_bytes_total",
	"qsnapd_merges_total",
	"qsnapd_operations_in_flight",
	"qsnapd_qmp_command_duration_seconds",
	"qsnapd_qmp_errors_total",
	"qsnapd_recovered_operations_total",
	"qsnapd_rollbacks_total",
	"qsnapd_snapshot_duration_seconds",
	"qsnapd_snapshots_total",
}

// script drives m through one of each kind of event.
func script(m *Metrics) {
	m.DomainsChanged(3, 1)
	m.OperationsInFlight(1)
	m.OperationsInFlight(1)
	m.OperationsInFlight(-1)
	m.GuestFrozen("vm1", "snapshot")
	m.GuestFrozen("vm2", "fsfreeze")
	m.GuestThawed("vm1", 40*time.Millisecond)
	m.FreezeDeadlineExceeded("vm2")
	m.SnapshotFinished(driver.SnapshotEvent{Domain: "vm1", Mode: "atomic", Result: driver.ResultSuccess, Duration: 1500 * time.Millisecond})
	m.SnapshotFinished(driver.SnapshotEvent{Domain: "vm1", Mode: "atomic", Result: driver.ResultRolledBack, Duration: 3 * time.Second})
	m.SnapshotFinished(driver.SnapshotEvent{Domain: "vm3", Mode: "sequential", Result: driver.ResultPartial, Duration: 70 * time.Second})
	m.SnapshotFinished(driver.SnapshotEvent{Domain: "vm3", Mode: "", Result: driver.ResultFailure}) // dropped
	m.SnapshotDeleted(driver.DeleteEvent{Domain: "vm1", Names: []string{"s1"}, Merged: true, Result: driver.ResultSuccess,
		Duration: 90 * time.Second, MergedBytes: 3 << 30})
	m.SnapshotDeleted(driver.DeleteEvent{Domain: "vm1", Names: []string{"s2"}, Merged: true, Result: driver.ResultCancelled,
		Duration: 2 * time.Second, MergedBytes: 1 << 20})
	m.SnapshotDeleted(driver.DeleteEvent{Domain: "vm2", Names: []string{"s3", "s2"}, Merged: true, Result: driver.ResultPartial,
		Duration: 40 * time.Millisecond, Err: driver.ErrOperationFailed})
	m.SnapshotDeleted(driver.DeleteEvent{Domain: "vm2", Names: []string{"s4"}, Result: driver.ResultSuccess, Duration: time.Millisecond}) // metadata only: no merge
	m.SnapshotDeleted(driver.DeleteEvent{Domain: "vm2", Merged: true, Result: "exploded", MergedBytes: 1})                                // dropped
	m.RollbackFinished(true)
	m.RollbackFinished(false)
	m.OperationRecovered("thawed")
	m.OperationRecovered("cleaned")
	m.OperationRecovered(driver.RecoveredMergeCancelled)
	m.OperationRecovered(driver.RecoveredMergeCancelled)
	m.OperationRecovered(driver.RecoveredMergeFinished)
	m.OperationRecovered("exploded") // dropped
	m.QMPCommand("query-block", 300*time.Microsecond, nil)
	m.QMPCommand("transaction", 2*time.Second, &qmp.Error{Command: "transaction", Class: "GenericError", Desc: "no"})
	m.QMPCommand("blockdev-add", 30*time.Second, fmt.Errorf("add node: %w", qmp.ErrTimeout))
	m.QMPCommand("Query-Block/../x", time.Millisecond, qmp.ErrDisconnected)
	m.AgentCommand("guest-fsfreeze-freeze", 20*time.Millisecond, nil)
	m.AgentCommand("guest-fsfreeze-freeze", 10*time.Second, fmt.Errorf("freeze: %w", guestagent.ErrUnresponsive))
	m.AgentCommand("guest-fsfreeze-thaw", 5*time.Millisecond,
		fmt.Errorf("%w: %w", guestagent.ErrDisabled, &guestagent.Error{Command: "guest-fsfreeze-thaw", Class: "CommandDisabled"}))
}

func TestGolden(t *testing.T) {
	m := New("v1.2.3")
	script(m)
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	var text bytes.Buffer
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "qsnapd_") {
			continue
		}
		got = append(got, mf.GetName())
		if slices.Contains(families, mf.GetName()) {
			if _, err := expfmt.MetricFamilyToText(&text, mf); err != nil {
				t.Fatal(err)
			}
		}
	}
	if want := append([]string{"qsnapd_build_info"}, families...); !slices.Equal(got, slices.Sorted(slices.Values(want))) {
		t.Errorf("families:\ngot  %q\nwant %q", got, want)
	}
	golden := filepath.Join("testdata", "metrics.prom")
	if *update {
		if err := os.WriteFile(golden, text.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Open(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./metrics/ -run TestGolden -update)", err)
	}
	defer f.Close()
	if err := testutil.GatherAndCompare(m.Registry(), f, families...); err != nil {
		t.Error(err)
	}
	buildInfo := fmt.Sprintf(`# HELP qsnapd_build_info Always 1, labelled with the version of qsnapd and of Go it was built with.
# TYPE qsnapd_build_info gauge
qsnapd_build_info{goversion=%q,version="v1.2.3"} 1
`, runtime.Version())
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(buildInfo), "qsnapd_build_info"); err != nil {
		t.Error(err)
	}
}

// TestRecoveredActions: every action the driver's recovery reports is
// counted, from 0.
func TestRecoveredActions(t *testing.T) {
	m := New("test")
	const head = `# HELP qsnapd_recovered_operations_total Operations a previous daemon left unfinished, by what recovery did.
# TYPE qsnapd_recovered_operations_total counter
`
	want := head
	for _, a := range []string{"cleaned", driver.RecoveredMergeCancelled, driver.RecoveredMergeFinished, "rolled_back", "thawed"} {
		want += fmt.Sprintf("qsnapd_recovered_operations_total{action=%q} 0\n", a)
	}
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), "qsnapd_recovered_operations_total"); err != nil {
		t.Errorf("before any recovery: %v", err)
	}
	want = head
	for _, a := range []string{"cleaned", driver.RecoveredMergeCancelled, driver.RecoveredMergeFinished, "rolled_back", "thawed"} {
		m.OperationRecovered(a)
		want += fmt.Sprintf("qsnapd_recovered_operations_total{action=%q} 1\n", a)
	}
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), "qsnapd_recovered_operations_total"); err != nil {
		t.Errorf("after one of each: %v", err)
	}
}

func TestLabels(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"query-block", "query-block"},
		{"qmp_capabilities", "qmp_capabilities"},
		{"guest-fsfreeze-freeze", "guest-fsfreeze-freeze"},
		{"", "other"},
		{"Query-Block", "other"},
		{"vm1/disk.qcow2", "other"},
		{strings.Repeat("a", 40), strings.Repeat("a", 40)},
		{strings.Repeat("a", 41), "other"},
	} {
		if got := commandLabel(tc.in); got != tc.want {
			t.Errorf("commandLabel(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	for _, tc := range []struct {
		err  error
		want string
	}{
		{&qmp.Error{Class: "DeviceNotFound"}, "DeviceNotFound"},
		{fmt.Errorf("snapshot disk vda: %w", &qmp.Error{Class: "GenericError"}), "GenericError"},
		{&qmp.Error{Class: "SomethingNew"}, "other"},
		{fmt.Errorf("query: %w", qmp.ErrTimeout), "timeout"},
		{qmp.ErrDisconnected, "disconnected"},
		{qmp.ErrLineTooLong, "other"},
		{context.Canceled, "other"},
	} {
		if got := qmpClass(tc.err); got != tc.want {
			t.Errorf("qmpClass(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
	for _, tc := range []struct {
		err  error
		want string
	}{
		{guestagent.ErrNotConfigured, "not_configured"},
		{fmt.Errorf("dial: %w", guestagent.ErrNotConnected), "not_connected"},
		{guestagent.ErrUnresponsive, "timeout"},
		{fmt.Errorf("%w: %w", guestagent.ErrDisabled, &guestagent.Error{Class: "CommandDisabled"}), "disabled"},
		{&guestagent.Error{Class: "GenericError"}, "error"},
		{errors.New("boom"), "other"},
	} {
		if got := agentReason(tc.err); got != tc.want {
			t.Errorf("agentReason(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// needTool returns the path of a tool the Debian packages of make deps
// install.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is needed (Debian's prometheus): run make deps", name)
	}
	return p
}

func TestPromtoolCheckMetrics(t *testing.T) {
	promtool := needTool(t, "promtool")
	m := New("test")
	script(m)
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", http.NoBody))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics: status %d, want 200", rec.Code)
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = rec.Body
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

func TestPromtoolCheckRules(t *testing.T) {
	promtool := needTool(t, "promtool")
	out, err := exec.Command(promtool, "check", "rules", filepath.Join("..", "configs", "qsnapd-alerts.yml")).CombinedOutput()
	if err != nil {
		t.Errorf("promtool check rules: %v\n%s", err, out)
	}
}

// TestPromtoolTestRules runs the alert rules' unit tests: the merge
// alerts fire on a failed or partial merge, not on a cancelled one.
func TestPromtoolTestRules(t *testing.T) {
	promtool := needTool(t, "promtool")
	out, err := exec.Command(promtool, "test", "rules", filepath.Join("testdata", "alerts_test.yml")).CombinedOutput()
	if err != nil {
		t.Errorf("promtool test rules: %v\n%s", err, out)
	}
}

func TestServe(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	log := zaptest.NewLogger(t)
	m := New("test")
	if err := Serve(ctx, "", m, log); err != nil {
		t.Errorf("Serve with no address: %v, want nil", err)
	}

	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := busy.Addr().String()
	if err := Serve(ctx, addr, m, log); err == nil {
		t.Errorf("Serve on a busy address: nil error")
	}
	busy.Close()

	sctx, stop := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- Serve(sctx, addr, m, log) }()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	var body string
	for body == "" {
		select {
		case err := <-errc:
			t.Fatalf("Serve returned early: %v", err)
		case <-ctx.Done():
			t.Fatal("no answer from /metrics")
		case <-time.After(20 * time.Millisecond):
		}
		resp, err := client.Get("http://" + addr + "/metrics")
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /metrics: status %d, want 200", resp.StatusCode)
		}
		body = string(b)
	}
	if !strings.Contains(body, `qsnapd_snapshots_total{mode="atomic",result="success"} 0`) {
		t.Errorf("/metrics lacks the pre-initialised snapshot counter:\n%s", body)
	}
	stop()
	select {
	case err := <-errc:
		if err != nil {
			t.Errorf("Serve after cancel: %v, want nil", err)
		}
	case <-ctx.Done():
		t.Fatal("Serve did not return after cancel")
	}
}

// TestPrometheus has a real Prometheus server scrape Serve's endpoint,
// with the alerting rules loaded, and reads the counters back.
func TestPrometheus(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Prometheus server")
	}
	bin := needTool(t, "prometheus")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()

	m := New("test")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	serveErr := make(chan error, 1)
	go func() { serveErr <- serve(sctx, ln, m, zaptest.NewLogger(t)) }()
	t.Cleanup(func() {
		stop()
		if err := <-serveErr; err != nil {
			t.Errorf("serve: %v", err)
		}
	})

	rules, err := filepath.Abs(filepath.Join("..", "configs", "qsnapd-alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: qsnapd
    static_configs:
      - targets: [%q]
`, rules, ln.Addr().String())
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	promAddr := freeAddr(t)
	logPath := filepath.Join(dir, "prometheus.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	pctx, kill := context.WithCancel(ctx)
	cmd := exec.CommandContext(pctx, bin,
		"--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr,
		"--web.console.templates="+dir, "--web.console.libraries="+dir,
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		kill()
		t.Logf("prometheus stopped: %v", <-exited)
	})

	p := &promAPI{
		base:   "http://" + promAddr,
		client: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
	}
	eventually := func(what string, f func() (bool, error)) {
		t.Helper()
		var last error
		for {
			ok, err := f()
			if ok {
				return
			}
			if err != nil {
				last = err
			}
			select {
			case err := <-exited:
				exited <- err
				out, _ := os.ReadFile(logPath)
				t.Fatalf("prometheus exited while waiting for %s: %v\n%s", what, err, out)
			case <-ctx.Done():
				out, _ := os.ReadFile(logPath)
				t.Fatalf("timed out waiting for %s (last error: %v)\nprometheus log:\n%s", what, last, out)
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	valueIs := func(query, want string) func() (bool, error) {
		return func() (bool, error) {
			got, err := p.query(ctx, query)
			if err != nil {
				return false, err
			}
			if got != want {
				return false, fmt.Errorf("%s = %q, want %q", query, got, want)
			}
			return true, nil
		}
	}

	for range 3 {
		m.SnapshotFinished(driver.SnapshotEvent{Mode: "atomic", Result: driver.ResultSuccess, Duration: time.Second})
	}
	eventually("qsnapd up", valueIs(`up{job="qsnapd"}`, "1"))
	const snapshots = `qsnapd_snapshots_total{job="qsnapd",mode="atomic",result="success"}`
	eventually("3 snapshots", valueIs(snapshots, "3"))
	m.SnapshotFinished(driver.SnapshotEvent{Mode: "atomic", Result: driver.ResultSuccess, Duration: time.Second})
	eventually("4 snapshots", valueIs(snapshots, "4"))
	eventually("alerting rules evaluated", func() (bool, error) {
		ok, total, err := p.rules(ctx)
		if err != nil && total > 0 {
			t.Fatalf("alerting rules: %v", err)
		}
		return total > 0 && ok == total, fmt.Errorf("%d of %d rules evaluated: %v", ok, total, err)
	})
}

// freeAddr returns a loopback address with a port free at the time.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// promAPI is a client of the few Prometheus HTTP API calls the test needs.
type promAPI struct {
	base   string
	client *http.Client
}

func (p *promAPI) get(ctx context.Context, path string, data any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.base+path, http.NoBody)
	if err != nil {
		return err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var r struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return fmt.Errorf("GET %s: status %d: %w", path, resp.StatusCode, err)
	}
	if r.Status != "success" {
		return fmt.Errorf("GET %s: %s: %s", path, r.Status, r.Error)
	}
	return json.Unmarshal(r.Data, data)
}

// query runs an instant query that must return at most one sample, and
// returns its value, or "" if there is none.
func (p *promAPI) query(ctx context.Context, q string) (string, error) {
	var data struct {
		Result []struct {
			Value [2]any `json:"value"`
		} `json:"result"`
	}
	if err := p.get(ctx, "/api/v1/query?query="+url.QueryEscape(q), &data); err != nil {
		return "", err
	}
	switch len(data.Result) {
	case 0:
		return "", nil
	case 1:
		v, _ := data.Result[0].Value[1].(string)
		return v, nil
	}
	return "", fmt.Errorf("%s: %d samples, want 1", q, len(data.Result))
}

// rules returns how many rules are loaded and how many have been
// evaluated without error, and the error of a rule in error.
func (p *promAPI) rules(ctx context.Context) (ok, total int, err error) {
	var data struct {
		Groups []struct {
			Rules []struct {
				Name      string `json:"name"`
				Health    string `json:"health"`
				LastError string `json:"lastError"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := p.get(ctx, "/api/v1/rules", &data); err != nil {
		return 0, 0, err
	}
	var errs []error
	for _, g := range data.Groups {
		for _, r := range g.Rules {
			total++
			switch r.Health {
			case "ok":
				ok++
			case "err":
				errs = append(errs, fmt.Errorf("rule %s: %s", r.Name, r.LastError))
			}
		}
	}
	return ok, total, errors.Join(errs...)
}
