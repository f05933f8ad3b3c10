// Package daemon wires qsnapd together: logging, the driver, the API
// sockets, and an orderly shutdown.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/internal/version"
)

// Config is the daemon's configuration: every command-line flag.
type Config struct {
	Socket    string        `toml:"socket"`
	SocketRO  string        `toml:"socket_ro"`
	AllowUIDs []int         `toml:"allow_uid"`
	AllowGIDs []int         `toml:"allow_gid"`
	LogFormat string        `toml:"log_format"`
	LogLevel  string        `toml:"log_level"`
	Driver    driver.Config `toml:"-"`
}

// Validate checks the configuration and fills in defaults.
func (c *Config) Validate() error {
	if c.Socket == "" {
		c.Socket = api.DefaultSocket
	}
	if c.SocketRO == "" {
		c.SocketRO = api.DefaultSocketRO
	}
	for name, p := range map[string]string{"socket": c.Socket, "socket_ro": c.SocketRO} {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("%s must be an absolute path, got %q", name, p)
		}
		if len(p) >= 108 {
			return fmt.Errorf("%s: unix socket paths must be under 108 bytes, got %d", name, len(p))
		}
	}
	if c.Socket == c.SocketRO {
		return fmt.Errorf("socket and socket_ro must differ")
	}
	switch c.LogFormat {
	case "":
		c.LogFormat = "console"
	case "console", "json":
	default:
		return fmt.Errorf("log_format must be json or console, got %q", c.LogFormat)
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	if _, err := zapcore.ParseLevel(c.LogLevel); err != nil {
		return fmt.Errorf("log_level: %w", err)
	}
	return c.Driver.Validate()
}

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
	} else {
		zc = zap.NewDevelopmentConfig()
		zc.DisableStacktrace = true
	}
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.OutputPaths, zc.ErrorOutputPaths = []string{"stderr"}, []string{"stderr"}
	return zc.Build()
}

// Run runs the daemon until ctx ends: then it stops accepting requests,
// lets running ones finish or roll back, thaws what it froze and
// returns nil.
func Run(ctx context.Context, cfg Config, log *zap.Logger) error {
	drv, err := driver.Open(cfg.Driver, log)
	if err != nil {
		return err
	}
	rw, err := listen(cfg.Socket, 0o660)
	if err != nil {
		drv.Close()
		return err
	}
	ro, err := listen(cfg.SocketRO, 0o666)
	if err != nil {
		rw.Close()
		drv.Close()
		return err
	}
	srv := api.NewServer(drv, api.Config{Access: api.Access{UIDs: cfg.AllowUIDs, GIDs: cfg.AllowGIDs}}, log)
	log.Info("qsnapd started", zap.String("version", version.String()), zap.String("socket", cfg.Socket),
		zap.String("socket_ro", cfg.SocketRO), zap.String("state_dir", cfg.Driver.StateDir))
	serveErr := srv.Serve(ctx, rw, ro)
	sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = errors.Join(serveErr, drv.Shutdown(sctx))
	os.Remove(cfg.Socket)
	os.Remove(cfg.SocketRO)
	log.Info("qsnapd stopped")
	return err
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
