// Package daemon wires qsnapd together: configuration, logging, the
// driver, the API sockets (or systemd's), metrics, D-Bus, systemd
// notifications, and an orderly shutdown.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	sd "github.com/coreos/go-systemd/v22/daemon"
	"github.com/godbus/dbus/v5"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/qsnapd/qsnapd/api/server"
	"github.com/qsnapd/qsnapd/dbusapi"
	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/internal/version"
	"github.com/qsnapd/qsnapd/metrics"
	"github.com/qsnapd/qsnapd/qmp"
)

// NewLogger builds the zap logger the configuration asks for, on stderr
// so that journald takes it.
func NewLogger(format, level string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, err
	}
	var zc zap.Config
	if format == "json" {
		zc = zap.NewProductionConfig()
		zc.Sampling = nil // every snapshot line counts
	} else {
		zc = zap.NewDevelopmentConfig()
		zc.DisableStacktrace = true
	}
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.OutputPaths, zc.ErrorOutputPaths = []string{"stderr"}, []string{"stderr"}
	return zc.Build()
}

// notify sends a systemd notification; outside systemd it does nothing.
func notify(log *zap.Logger, state string) {
	if _, err := sd.SdNotify(false, state); err != nil {
		log.Debug("sd_notify failed", zap.String("state", state), zap.Error(err))
	}
}

// Run runs the daemon until ctx ends: then it stops accepting requests,
// lets running ones finish or roll back, thaws what it froze and
// returns nil.
func Run(ctx context.Context, cfg Config, log *zap.Logger) error {
	notify(log, "STATUS=starting")
	m := metrics.New(version.String())
	dc := cfg.DriverConfig()
	dc.QMPOptions = append(dc.QMPOptions, qmp.WithObserver(m.QMPCommand))
	dc.AgentObserver = m.AgentCommand
	events := &driver.Hub{}
	events.Add(m)

	// D-Bus: the API on the bus of choice, and a logind inhibitor on the
	// system bus whenever there is one.
	var closers []func()
	defer func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}()
	if conn, err := dbus.ConnectSystemBus(); err == nil {
		closers = append(closers, func() { conn.Close() })
		inh := dbusapi.NewInhibitor(conn, log)
		events.Add(inh)
	} else {
		log.Debug("no system bus; no shutdown inhibitor", zap.Error(err))
	}
	var busService *dbusapi.Service
	var busConn *dbus.Conn
	if cfg.DBus != "none" {
		var err error
		if cfg.DBus == "system" {
			busConn, err = dbus.ConnectSystemBus()
		} else {
			busConn, err = dbus.ConnectSessionBus()
		}
		if err != nil {
			return fmt.Errorf("dbus %s bus: %w", cfg.DBus, err)
		}
		closers = append(closers, func() { busConn.Close() })
	}
	dc.Events = events

	drv, err := driver.Open(dc, log)
	if err != nil {
		return err
	}
	if busConn != nil {
		busService, err = dbusapi.Export(busConn, drv, log)
		if err != nil {
			drv.Close()
			return fmt.Errorf("dbus export: %w", err)
		}
		events.Add(busService.Events())
		closers = append(closers, func() { busService.Close() })
	}
	for _, d := range cfg.Domains {
		if err := drv.EnsureDomain(ctx, driver.DomainConfig{Name: d.Name, QMP: d.QMP, Agent: d.Agent, AgentChannel: d.AgentChannel}); err != nil {
			drv.Close()
			return fmt.Errorf("domain %s: %w", d.Name, err)
		}
	}

	rw, ro, ownSockets, err := listeners(cfg)
	if err != nil {
		drv.Close()
		return err
	}
	srv := server.New(drv, server.Config{Access: server.Access{UIDs: cfg.AllowUIDs, GIDs: cfg.AllowedGIDs()},
		OpRetention: time.Duration(cfg.OpRetention)}, log)
	serveCtx, stopServing := context.WithCancel(context.Background())
	defer stopServing()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(serveCtx, rw, ro) }()

	metricsErr := make(chan error, 1)
	go func() {
		// Serve returns nil when metrics are off or after a shutdown.
		if err := metrics.Serve(serveCtx, cfg.MetricsListen, m, log); err != nil {
			metricsErr <- err
		}
	}()

	// Ready once the sockets accept and startup recovery is done: every
	// domain had its first connection attempt and recovery pass, and
	// every guest left frozen its first thaw attempt.
	notify(log, "STATUS=recovering")
	settleCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	if err := drv.WaitSettled(settleCtx); err != nil {
		log.Warn("startup recovery still running; ready anyway", zap.Error(err))
	}
	cancel()
	notify(log, "READY=1")
	notify(log, fmt.Sprintf("STATUS=serving %d domains", len(drv.Domains())))
	log.Info("qsnapd ready", zap.String("version", version.String()), zap.String("socket", cfg.Socket),
		zap.String("socket_ro", cfg.SocketRO), zap.String("state_dir", cfg.StateDir),
		zap.String("metrics", cfg.MetricsListen), zap.String("dbus", cfg.DBus))

	stopWatchdog := watchdog(ctx, drv, log)
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-served:
		runErr = fmt.Errorf("api: %w", runErr)
	case err := <-metricsErr:
		runErr = fmt.Errorf("metrics: %w", err)
	}
	stopWatchdog()
	notify(log, "STOPPING=1")
	notify(log, "STATUS=stopping: finishing running operations")
	stopServing()
	if runErr == nil {
		runErr = <-served
	}
	sctx, cancel2 := context.WithTimeout(context.Background(), time.Minute)
	defer cancel2()
	err = errors.Join(runErr, drv.Shutdown(sctx))
	// systemd's socket files stay: the socket units go on listening
	// and start the next daemon.
	if ownSockets {
		os.Remove(cfg.Socket)
		os.Remove(cfg.SocketRO)
	}
	log.Info("qsnapd stopped")
	return err
}

// listeners returns the read-write and read-only sockets: systemd's
// (named "rw" and "ro" by FileDescriptorName, else in that order) when
// it passed them, or our own, which own says.
func listeners(cfg Config) (rw, ro net.Listener, own bool, err error) {
	// Read before activation unsets it.
	if os.Getenv("LISTEN_FDS") != "" {
		named, err := activation.ListenersWithNames()
		if err != nil {
			return nil, nil, false, fmt.Errorf("socket activation: %w", err)
		}
		var all []net.Listener
		for name, lns := range named {
			for _, ln := range lns {
				switch name {
				case "rw":
					rw = ln
				case "ro":
					ro = ln
				default:
					all = append(all, ln)
				}
			}
		}
		for _, ln := range all {
			if rw == nil {
				rw = ln
			} else if ro == nil {
				ro = ln
			}
		}
		if rw == nil {
			return nil, nil, false, errors.New("socket activation: no read-write socket passed")
		}
		return rw, ro, false, nil
	}
	if rw, err = listen(cfg.Socket, 0o660); err != nil {
		return nil, nil, false, err
	}
	if ro, err = listen(cfg.SocketRO, 0o666); err != nil {
		rw.Close()
		return nil, nil, false, err
	}
	return rw, ro, true, nil
}

// listen binds a unix socket with the given mode, replacing a stale
// socket file a previous run left.
func listen(path string, mode os.FileMode) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("listen %s: another daemon is serving it", path)
		}
		os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	return ln, nil
}

// watchdog pings systemd at half of WATCHDOG_USEC, but only while the
// daemon is healthy: the store answers and the driver is not stuck.
func watchdog(ctx context.Context, drv *driver.Driver, log *zap.Logger) (stop func()) {
	interval, err := sd.SdWatchdogEnabled(false)
	if err != nil || interval <= 0 {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(interval / 2)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				hctx, hcancel := context.WithTimeout(ctx, interval/4)
				err := drv.Healthy(hctx)
				hcancel()
				if err != nil {
					log.Warn("unhealthy; withholding the watchdog ping", zap.Error(err))
					continue
				}
				notify(log, "WATCHDOG=1")
			}
		}
	}()
	return func() { cancel(); <-done }
}
