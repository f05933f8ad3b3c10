// Package metrics exposes qsnapd's Prometheus metrics from a private registry.
package metrics

import (
	"errors"
	"net/http"
	"runtime"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/guestagent"
	"github.com/qsnapd/qsnapd/qmp"
)

// buckets of every duration histogram: 0.5 ms doubling 17 times to
// 65.536 s. They cover a query-* QMP command answered from memory (well
// under a millisecond) up to the 60 s transaction ceiling and a long
// freeze, each bucket twice the one before it.
var buckets = prometheus.ExponentialBuckets(0.0005, 2, 18)

// mergeBuckets of the merge duration: 1/64 s doubling 19 times to
// 8192 s. A merge copies data: from a delete of empty overlays (tens of
// milliseconds) to gigabytes under a bandwidth cap (hours).
var mergeBuckets = prometheus.ExponentialBuckets(1.0/64, 2, 20)

// Label values of the fixed sets, pre-initialised to 0.
var (
	modes   = []string{"atomic", "sequential"}
	results = []string{driver.ResultSuccess, driver.ResultFailure, driver.ResultRolledBack, driver.ResultPartial}
	actions = []string{"thawed", "rolled_back", "cleaned", driver.RecoveredMergeCancelled, driver.RecoveredMergeFinished}
	// mergeResults are a delete's: cancelled before its point of no
	// return, or partial after it.
	mergeResults = []string{driver.ResultSuccess, driver.ResultFailure, driver.ResultCancelled, driver.ResultPartial}
)

// qmpClasses are the QAPI error classes QEMU replies with; any other
// class is counted as "other".
var qmpClasses = map[string]bool{
	"GenericError": true, "CommandNotFound": true, "DeviceNotActive": true,
	"DeviceNotFound": true, "KVMMissingCap": true,
}

// Metrics records qsnapd's metrics. It implements driver.Events, and its
// QMPCommand and AgentCommand methods are the observers of the QMP and
// guest agent clients. All methods are safe for concurrent use.
type Metrics struct {
	reg     *prometheus.Registry
	handler http.Handler

	snapshots        *prometheus.CounterVec
	snapshotDuration *prometheus.HistogramVec
	freezeDuration   prometheus.Histogram
	guestsFrozen     prometheus.Gauge
	freezeDeadline   prometheus.Counter
	merges           *prometheus.CounterVec
	mergeDuration    prometheus.Histogram
	mergedBytes      prometheus.Counter
	rollbacks        *prometheus.CounterVec
	recovered        *prometheus.CounterVec
	qmpDuration      *prometheus.HistogramVec
	qmpErrors        *prometheus.CounterVec
	agentDuration    *prometheus.HistogramVec
	agentErrors      *prometheus.CounterVec
	domains          *prometheus.GaugeVec
	inFlight         prometheus.Gauge
}

var _ driver.Events = (*Metrics)(nil)

// New registers qsnapd's metrics, with the Go runtime and process
// collectors, on a new private registry.
func New(version string) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		snapshots: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qsnapd_snapshots_total",
			Help: "Snapshot requests finished after validation, by mode and result.",
		}, []string{"mode", "result"}),
		snapshotDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "qsnapd_snapshot_duration_seconds",
			Help:    "Time a snapshot request took, whatever its result.",
			Buckets: buckets,
		}, []string{"mode"}),
		freezeDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "qsnapd_guest_freeze_duration_seconds",
			Help:    "Time guests stayed frozen, from the freeze sent to the thaw done.",
			Buckets: buckets,
		}),
		guestsFrozen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "qsnapd_guests_frozen",
			Help: "Guests whose filesystems are frozen now, for whatever reason.",
		}),
		freezeDeadline: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "qsnapd_freeze_deadline_exceeded_total",
			Help: "Freezes ended by their deadline rather than by their owner.",
		}),
		merges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qsnapd_merges_total",
			Help: "Snapshot deletes that merged overlays, finished after validation, by result.",
		}, []string{"result"}),
		mergeDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "qsnapd_merge_duration_seconds",
			Help:    "Time a snapshot delete that merged overlays took, whatever its result.",
			Buckets: mergeBuckets,
		}),
		mergedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "qsnapd_merged_bytes_total",
			Help: "Bytes the commit jobs of snapshot deletes copied.",
		}),
		rollbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qsnapd_rollbacks_total",
			Help: "Rollbacks of switched disks, by result.",
		}, []string{"result"}),
		recovered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qsnapd_recovered_operations_total",
			Help: "Operations a previous daemon left unfinished, by what recovery did.",
		}, []string{"action"}),
		qmpDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "qsnapd_qmp_command_duration_seconds",
			Help:    "Time QMP commands took, errors included.",
			Buckets: buckets,
		}, []string{"command"}),
		qmpErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qsnapd_qmp_errors_total",
			Help: "Failed QMP commands, by QEMU error class, timeout or disconnected.",
		}, []string{"command", "class"}),
		agentDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "qsnapd_agent_command_duration_seconds",
			Help:    "Time guest agent commands took, errors included.",
			Buckets: buckets,
		}, []string{"command"}),
		agentErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qsnapd_agent_errors_total",
			Help: "Failed guest agent commands, by reason.",
		}, []string{"command", "reason"}),
		domains: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "qsnapd_domains",
			Help: "Configured domains, by QMP connection state.",
		}, []string{"state"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "qsnapd_operations_in_flight",
			Help: "Snapshot operations running now.",
		}),
	}
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "qsnapd_build_info",
		Help:        "Always 1, labelled with the version of qsnapd and of Go it was built with.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
	})
	buildInfo.Set(1)

	for _, mode := range modes {
		for _, result := range results {
			m.snapshots.WithLabelValues(mode, result)
		}
		m.snapshotDuration.WithLabelValues(mode)
	}
	for _, result := range mergeResults {
		m.merges.WithLabelValues(result)
	}
	m.rollbacks.WithLabelValues("success")
	m.rollbacks.WithLabelValues("failure")
	for _, a := range actions {
		m.recovered.WithLabelValues(a)
	}
	m.domains.WithLabelValues("connected")
	m.domains.WithLabelValues("disconnected")

	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.snapshots, m.snapshotDuration, m.freezeDuration, m.guestsFrozen,
		m.freezeDeadline, m.merges, m.mergeDuration, m.mergedBytes, m.rollbacks, m.recovered, m.qmpDuration, m.qmpErrors,
		m.agentDuration, m.agentErrors, m.domains, m.inFlight, buildInfo,
	)
	m.handler = promhttp.InstrumentMetricHandler(m.reg, promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		Registry:            m.reg, // counts failed gathers in promhttp_metric_handler_errors_total
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	}))
	return m
}

// Registry returns the private registry, to register more collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus exposition formats.
func (m *Metrics) Handler() http.Handler { return m.handler }

// SnapshotFinished counts a snapshot and observes its duration. An
// event whose mode or result is outside the fixed sets is dropped rather
// than given an invented label.
func (m *Metrics) SnapshotFinished(e driver.SnapshotEvent) {
	if !slices.Contains(modes, e.Mode) || !slices.Contains(results, e.Result) {
		return
	}
	m.snapshots.WithLabelValues(e.Mode, e.Result).Inc()
	m.snapshotDuration.WithLabelValues(e.Mode).Observe(e.Duration.Seconds())
}

// GuestFrozen counts a guest as frozen until GuestThawed.
func (m *Metrics) GuestFrozen(string, string) { m.guestsFrozen.Inc() }

// GuestThawed ends a freeze and observes how long it lasted.
func (m *Metrics) GuestThawed(_ string, frozenFor time.Duration) {
	m.guestsFrozen.Dec()
	m.freezeDuration.Observe(frozenFor.Seconds())
}

// FreezeDeadlineExceeded counts a freeze its deadline ended.
func (m *Metrics) FreezeDeadlineExceeded(string) { m.freezeDeadline.Inc() }

// RollbackFinished counts a rollback by result.
func (m *Metrics) RollbackFinished(ok bool) {
	result := "failure"
	if ok {
		result = "success"
	}
	m.rollbacks.WithLabelValues(result).Inc()
}

// OperationRecovered counts a recovered operation; unknown actions are
// dropped.
func (m *Metrics) OperationRecovered(action string) {
	if slices.Contains(actions, action) {
		m.recovered.WithLabelValues(action).Inc()
	}
}

// DomainsChanged sets the domain counts by connection state.
func (m *Metrics) DomainsChanged(connected, disconnected int) {
	m.domains.WithLabelValues("connected").Set(float64(connected))
	m.domains.WithLabelValues("disconnected").Set(float64(disconnected))
}

// OperationsInFlight adds delta to the running operations.
func (m *Metrics) OperationsInFlight(delta int) { m.inFlight.Add(float64(delta)) }

// MergeProgress is not a metric: qsnapd_merged_bytes_total counts a
// merge's bytes once it ends.
func (m *Metrics) MergeProgress(string, string, int64, int64) {}

// OperationResolved is not a metric: OperationRecovered counts what
// recovery did.
func (m *Metrics) OperationResolved(string, string, string) {}

// QMPCommand observes a QMP command; pass it to qmp.WithObserver.
func (m *Metrics) QMPCommand(command string, took time.Duration, err error) {
	command = commandLabel(command)
	m.qmpDuration.WithLabelValues(command).Observe(took.Seconds())
	if err != nil {
		m.qmpErrors.WithLabelValues(command, qmpClass(err)).Inc()
	}
}

// AgentCommand observes a guest agent command; use it as
// guestagent.Options.Observer.
func (m *Metrics) AgentCommand(command string, took time.Duration, err error) {
	command = commandLabel(command)
	m.agentDuration.WithLabelValues(command).Observe(took.Seconds())
	if err != nil {
		m.agentErrors.WithLabelValues(command, agentReason(err)).Inc()
	}
}

// commandLabel caps the command label: a name that is not 1 to 40 of
// [a-z0-9_-] becomes "other".
func commandLabel(s string) string {
	if s == "" || len(s) > 40 {
		return "other"
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' && c != '-' {
			return "other"
		}
	}
	return s
}

// qmpClass is the class label of a failed QMP command.
func qmpClass(err error) string {
	var qe *qmp.Error
	switch {
	case errors.As(err, &qe):
		if qmpClasses[qe.Class] {
			return qe.Class
		}
	case errors.Is(err, qmp.ErrTimeout):
		return "timeout"
	case errors.Is(err, qmp.ErrDisconnected):
		return "disconnected"
	}
	return "other"
}

// agentReason is the reason label of a failed guest agent command. The
// sentinels come first: ErrDisabled may wrap the agent's *Error.
func agentReason(err error) string {
	var ae *guestagent.Error
	switch {
	case errors.Is(err, guestagent.ErrNotConfigured):
		return "not_configured"
	case errors.Is(err, guestagent.ErrNotConnected):
		return "not_connected"
	case errors.Is(err, guestagent.ErrUnresponsive):
		return "timeout"
	case errors.Is(err, guestagent.ErrDisabled):
		return "disabled"
	case errors.As(err, &ae):
		return "error"
	}
	return "other"
}

// SnapshotDeleted counts a delete that merged overlays, observes its
// duration and adds the bytes it copied. A metadata-only delete is no
// merge and is not counted; a result outside the fixed set is dropped.
func (m *Metrics) SnapshotDeleted(e driver.DeleteEvent) {
	if !e.Merged || !slices.Contains(mergeResults, e.Result) {
		return
	}
	m.merges.WithLabelValues(e.Result).Inc()
	m.mergeDuration.Observe(e.Duration.Seconds())
	if e.MergedBytes > 0 {
		m.mergedBytes.Add(float64(e.MergedBytes))
	}
}
