// Package daemon wires qsnapd together: configuration, logging, the
// driver, the API's and libvirt RPC's sockets (or systemd's), metrics,
// D-Bus, systemd notifications, and an orderly shutdown.
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
	"github.com/qsnapd/qsnapd/internal/peercred"
	"github.com/qsnapd/qsnapd/internal/version"
	"github.com/qsnapd/qsnapd/libvirtrpc"
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

	socks, err := listeners(cfg, log)
	if err != nil {
		drv.Close()
		return err
	}
	access := peercred.Access{UIDs: cfg.AllowUIDs, GIDs: cfg.AllowedGIDs()}
	srv := server.New(drv, server.Config{Access: access, OpRetention: time.Duration(cfg.OpRetention)}, log)
	serveCtx, stopServing := context.WithCancel(context.Background())
	defer stopServing()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(serveCtx, socks.rw, socks.ro) }()
	lv, libvirtErr := serveLibvirt(drv, access, socks, log)

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
		zap.String("socket_ro", cfg.SocketRO), zap.String("libvirt_socket", addr(socks.libvirt)),
		zap.String("libvirt_socket_ro", addr(socks.libvirtRO)), zap.String("state_dir", cfg.StateDir),
		zap.String("metrics", cfg.MetricsListen), zap.String("dbus", cfg.DBus))

	stopWatchdog := watchdog(ctx, drv, log)
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-served:
		runErr = fmt.Errorf("api: %w", runErr)
	case err := <-metricsErr:
		runErr = fmt.Errorf("metrics: %w", err)
	case err := <-libvirtErr:
		runErr = fmt.Errorf("libvirt: %w", err)
	}
	stopWatchdog()
	notify(log, "STOPPING=1")
	notify(log, "STATUS=stopping: finishing running operations")
	// Both front ends stop accepting at once and drain side by side;
	// the driver shuts down only once no call can reach it.
	stopServing()
	lvStopped := make(chan error, 1)
	go func() { lvStopped <- stopLibvirt(lv) }()
	if runErr == nil {
		runErr = <-served
	}
	runErr = errors.Join(runErr, <-lvStopped)
	sctx, cancel2 := context.WithTimeout(context.Background(), time.Minute)
	defer cancel2()
	err = errors.Join(runErr, drv.Shutdown(sctx))
	for _, p := range socks.own {
		os.Remove(p)
	}
	log.Info("qsnapd stopped")
	return err
}

// serveLibvirt serves libvirt's RPC on the libvirt sockets; nil when
// both are off. A Serve that fails for another reason than Shutdown
// reports on the channel.
func serveLibvirt(drv *driver.Driver, access peercred.Access, socks *sockets, log *zap.Logger) (*libvirtrpc.Server, <-chan error) {
	failed := make(chan error, 2)
	if socks.libvirt == nil && socks.libvirtRO == nil {
		return nil, failed
	}
	lv := libvirtrpc.New(drv, libvirtrpc.Config{Access: access}, log.Named("libvirt"))
	for _, l := range []struct {
		ln       net.Listener
		readOnly bool
	}{{socks.libvirt, false}, {socks.libvirtRO, true}} {
		if l.ln == nil {
			continue
		}
		go func() {
			if err := lv.Serve(l.ln, l.readOnly); !errors.Is(err, libvirtrpc.ErrServerClosed) {
				failed <- err
			}
		}()
	}
	return lv, failed
}

// stopLibvirt stops the libvirt server, if any: at once for new
// connections, after its own drain at most for calls under way.
func stopLibvirt(lv *libvirtrpc.Server) error {
	if lv == nil {
		return nil
	}
	if err := lv.Shutdown(context.Background()); err != nil {
		return fmt.Errorf("libvirt: %w", err)
	}
	return nil
}

// sockets are the daemon's listeners, systemd's or its own; a nil one
// is off.
type sockets struct {
	rw, ro             net.Listener
	libvirt, libvirtRO net.Listener
	// own are the socket files the daemon bound, removed at its exit;
	// systemd's stay: the socket units go on listening and start the
	// next daemon.
	own []string
}

// close closes every listener, for a start that fails half-way.
func (s *sockets) close() {
	for _, ln := range []net.Listener{s.rw, s.ro, s.libvirt, s.libvirtRO} {
		if ln != nil {
			_ = ln.Close()
		}
	}
}

// addr is a listener's address for the log; "" when it is off.
func addr(ln net.Listener) string {
	if ln == nil {
		return ""
	}
	return ln.Addr().String()
}

// listeners returns systemd's sockets when it passed some, else binds
// the config's.
func listeners(cfg Config, log *zap.Logger) (*sockets, error) {
	// Read before activation unsets it.
	if os.Getenv("LISTEN_FDS") != "" {
		return activated(cfg, log)
	}
	s := &sockets{}
	for _, l := range []struct {
		ln   *net.Listener
		path string
		mode os.FileMode
	}{{&s.rw, cfg.Socket, 0o660}, {&s.ro, cfg.SocketRO, 0o666},
		{&s.libvirt, cfg.LibvirtSocket, 0o660}, {&s.libvirtRO, cfg.LibvirtSocketRO, 0o666}} {
		if l.path == "" { // a libvirt socket turned off; Validate allows no other
			continue
		}
		ln, err := listen(l.path, l.mode)
		if err != nil {
			s.close()
			return nil, err
		}
		*l.ln = ln
		s.own = append(s.own, l.path)
	}
	return s, nil
}

// activated takes the sockets systemd passed, by FileDescriptorName:
// "rw" and "ro" for the API, "libvirt" and "libvirt-ro" for libvirt's
// RPC. Unnamed ones are the API's, read-write first, in the order
// passed. A libvirt socket comes only from systemd here: the service
// cannot bind under its read-only /run.
func activated(cfg Config, log *zap.Logger) (*sockets, error) {
	s := &sockets{}
	var unnamed []net.Listener
	// Files, not ListenersWithNames: a map loses the order the
	// unnamed fallback needs.
	for _, f := range activation.Files(true) {
		ln, err := net.FileListener(f)
		f.Close() // ln holds a dup
		if err != nil {
			s.close()
			return nil, fmt.Errorf("socket activation: fd %s: %w", f.Name(), err)
		}
		switch f.Name() {
		case "rw":
			s.rw = ln
		case "ro":
			s.ro = ln
		case "libvirt":
			s.libvirt = ln
		case "libvirt-ro":
			s.libvirtRO = ln
		default:
			unnamed = append(unnamed, ln)
		}
	}
	for _, ln := range unnamed {
		switch {
		case s.rw == nil:
			s.rw = ln
		case s.ro == nil:
			s.ro = ln
		default:
			log.Warn("socket activation: a socket of no known name; not served", zap.String("addr", ln.Addr().String()))
			_ = ln.Close()
		}
	}
	if s.rw == nil {
		s.close()
		return nil, errors.New("socket activation: no read-write socket passed")
	}
	// The config can turn off what the units still listen on; its
	// clients then wait unanswered, so say which unit to disable.
	for _, l := range []struct {
		ln   *net.Listener
		key  string
		path string
		unit string
	}{{&s.libvirt, "libvirt_socket", cfg.LibvirtSocket, "qsnapd-libvirt.socket"},
		{&s.libvirtRO, "libvirt_socket_ro", cfg.LibvirtSocketRO, "qsnapd-libvirt-ro.socket"}} {
		if *l.ln != nil && l.path == "" {
			log.Warn("socket activation: a libvirt socket the config turns off; not served",
				zap.String("key", l.key), zap.String("addr", addr(*l.ln)), zap.String("disable", l.unit))
			_ = (*l.ln).Close()
			*l.ln = nil
		}
	}
	return s, nil
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
