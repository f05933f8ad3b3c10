// Command qsnapd is the snapshot daemon: it takes live external
// disk-only snapshots of running QEMU guests for management frontends.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/internal/daemon"
	"github.com/qsnapd/qsnapd/internal/version"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// intList is a repeatable integer flag.
type intList []int

func (l *intList) String() string { return fmt.Sprint(*l) }
func (l *intList) Set(v string) error {
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return fmt.Errorf("want a non-negative integer, got %q", v)
	}
	*l = append(*l, n)
	return nil
}

func run(args []string, stdout, stderr io.Writer) int {
	var cfg daemon.Config
	fs := flag.NewFlagSet("qsnapd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.StringVar(&cfg.Socket, "socket", "", "read-write API socket (default /run/qsnapd/qsnapd.sock)")
	fs.StringVar(&cfg.SocketRO, "socket-ro", "", "read-only API socket (default /run/qsnapd/qsnapd-ro.sock)")
	fs.Var((*intList)(&cfg.AllowUIDs), "allow-uid", "uid allowed on the read-write socket besides root (repeatable)")
	fs.Var((*intList)(&cfg.AllowGIDs), "allow-gid", "gid allowed on the read-write socket (repeatable)")
	fs.StringVar(&cfg.LogFormat, "log-format", "console", "log format: json or console")
	fs.StringVar(&cfg.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&cfg.Driver.StateDir, "state-dir", "/var/lib/qsnapd", "directory of the metadata store and journal")
	fs.StringVar(&cfg.Driver.Transaction, "transaction", "auto", "auto: one QMP transaction when QEMU has it; never: disk by disk")
	fs.Var((*stringList)(&cfg.Driver.AllowedDirs), "allowed-dir", "directory overlays may be created in (repeatable; default: each disk's image directory)")
	fs.DurationVar(&cfg.Driver.AgentTimeout, "agent-timeout", 0, "guest agent connect, sync and ping ceiling (default 5s)")
	fs.DurationVar(&cfg.Driver.MaxFreeze, "max-freeze", 0, "hard freeze deadline: thaw after this long whatever happens (default 10s)")
	fs.DurationVar(&cfg.Driver.RollbackTimeout, "rollback-timeout", 0, "bound on rolling back one disk (default 60s)")
	quiesce := fs.String("quiesce", "skip", "quiesce for snapshots without QUIESCE: require, prefer or skip")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: qsnapd [flags]\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if *showVersion {
		fmt.Fprintf(stdout, "qsnapd %s (%s)\n", version.String(), version.Go())
		return 0
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "qsnapd: unexpected arguments %q\n", fs.Args())
		return 2
	}
	cfg.Driver.Quiesce = driver.QuiesceMode(*quiesce)
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "qsnapd: config: %v\n", err)
		return 2
	}
	log, err := daemon.NewLogger(cfg.LogFormat, cfg.LogLevel)
	if err != nil {
		fmt.Fprintf(stderr, "qsnapd: %v\n", err)
		return 2
	}
	defer log.Sync()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := daemon.Run(ctx, cfg, log); err != nil {
		fmt.Fprintf(stderr, "qsnapd: %v\n", err)
		return 1
	}
	return 0
}
