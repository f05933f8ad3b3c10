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
	"time"

	"go.uber.org/zap"

	"github.com/qsnapd/qsnapd/internal/daemon"
	"github.com/qsnapd/qsnapd/internal/version"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// stringList is a repeatable string flag; given on the command line, it
// replaces the config file's list.
type stringList struct {
	p   *[]string
	set bool
}

func (s *stringList) String() string {
	if s.p == nil {
		return ""
	}
	return strings.Join(*s.p, ",")
}

func (s *stringList) Set(v string) error {
	if !s.set {
		*s.p, s.set = nil, true
	}
	*s.p = append(*s.p, v)
	return nil
}

// intList is a repeatable integer flag, replacing the file's list.
type intList struct {
	p   *[]int
	set bool
}

func (l *intList) String() string {
	if l.p == nil {
		return ""
	}
	return fmt.Sprint(*l.p)
}

func (l *intList) Set(v string) error {
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return fmt.Errorf("want a non-negative integer, got %q", v)
	}
	if !l.set {
		*l.p, l.set = nil, true
	}
	*l.p = append(*l.p, n)
	return nil
}

// durationFlag sets a daemon.Duration.
type durationFlag struct{ p *daemon.Duration }

func (d durationFlag) String() string {
	if d.p == nil {
		return ""
	}
	return time.Duration(*d.p).String()
}
func (d durationFlag) Set(v string) error { return d.p.UnmarshalText([]byte(v)) }

// configPath finds --config before the other flags are defined, since
// their defaults come from the file.
func configPath(args []string) string {
	for i, arg := range args {
		if arg == "--" { // the end of the flags
			break
		}
		a := strings.TrimPrefix(strings.TrimPrefix(arg, "-"), "-")
		if a == "config" && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, "config="); ok {
			return v
		}
	}
	return ""
}

// usageHead and usageTail frame the flags in the help.
const usageHead = `Usage: qsnapd [OPTION]...
Take live external disk-only snapshots of running QEMU guests.

qsnapd serves management frontends on a unix-socket API (qsnapctl is
its command line client), on libvirt's RPC protocol (stock virsh and
libvirt clients, with the URI qemu+unix:///system?socket=SOCKET), on
D-Bus and with Prometheus metrics, with libvirt's snapshot semantics.
Under systemd it runs as qsnapd.service, started by the first
connection to any of its sockets (qsnapd.socket, qsnapd-ro.socket,
qsnapd-libvirt.socket, qsnapd-libvirt-ro.socket).

Options:
Every option is also a key of the configuration file, with underscores
for dashes; an option given on the command line overrides the file.
`

const usageTail = `
Files:
  /etc/qsnapd/qsnapd.toml      the configuration
  /var/lib/qsnapd/             the metadata store and operation journal
  /run/qsnapd/qsnapd.sock      the read-write API socket (root, group qsnapd)
  /run/qsnapd/qsnapd-ro.sock   the read-only API socket (anyone)
  /run/qsnapd/libvirt-sock     the read-write libvirt socket (root, group qsnapd)
  /run/qsnapd/libvirt-sock-ro  the read-only libvirt socket (anyone)

Signals:
  SIGTERM and SIGINT stop it once running operations have ended or rolled
  back and every guest it froze is thawed.

Exit status: 0 after a clean stop, 1 when it failed, 2 on a usage or
configuration error.
`

// wantsHelp reports whether the command line asks for help.
func wantsHelp(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "-h", "-help", "--h", "--help":
			return true
		}
	}
	return false
}

func run(args []string, stdout, stderr io.Writer) int {
	cfg := daemon.Default()
	configFile := configPath(args)
	if configFile != "" {
		if err := cfg.LoadFile(configFile); err != nil {
			fmt.Fprintf(stderr, "qsnapd: config: %v\n", err)
			return 2
		}
	}
	fs := flag.NewFlagSet("qsnapd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.String("config", configFile, "TOML config file; flags given on the command line override it")
	fs.StringVar(&cfg.Socket, "socket", cfg.Socket, "read-write API socket")
	fs.StringVar(&cfg.SocketRO, "socket-ro", cfg.SocketRO, "read-only API socket")
	fs.StringVar(&cfg.LibvirtSocket, "libvirt-socket", cfg.LibvirtSocket, "read-write socket of libvirt's RPC protocol, for virsh and libvirt clients; empty turns it off")
	fs.StringVar(&cfg.LibvirtSocketRO, "libvirt-socket-ro", cfg.LibvirtSocketRO, "read-only socket of libvirt's RPC protocol; empty turns it off")
	fs.Var(&intList{p: &cfg.AllowUIDs}, "allow-uid", "uid allowed on the read-write sockets (API and libvirt) besides root (repeatable)")
	fs.Var(&intList{p: &cfg.AllowGIDs}, "allow-gid", "gid allowed on the read-write sockets (repeatable)")
	fs.Var(&stringList{p: &cfg.AllowGroups}, "allow-group", "group allowed on the read-write sockets, by name (repeatable)")
	fs.StringVar(&cfg.StateDir, "state-dir", cfg.StateDir, "directory of the metadata store and journal")
	fs.StringVar(&cfg.Transaction, "transaction", cfg.Transaction, "auto: one QMP transaction when QEMU has it; never: disk by disk")
	fs.StringVar(&cfg.Switch, "switch", cfg.Switch, "auto: QEMU opens the overlays in the switch command unless the guest is frozen for it; preadd: always before; sync: always in it")
	fs.Var(&stringList{p: &cfg.AllowedDirs}, "allowed-dir", "directory overlays may be created in (repeatable; default: each disk's image directory)")
	fs.Var(durationFlag{&cfg.AgentTimeout}, "agent-timeout", "guest agent connect, sync and ping ceiling")
	fs.Var(durationFlag{&cfg.MaxFreeze}, "max-freeze", "hard freeze deadline: thaw after this long whatever happens")
	fs.Var(durationFlag{&cfg.ThawTimeout}, "thaw-timeout", "ceiling of one thaw attempt (failed thaws are retried)")
	fs.Var(durationFlag{&cfg.RollbackTimeout}, "rollback-timeout", "bound on rolling back one disk")
	fs.Var(durationFlag{&cfg.OpRetention}, "operation-retention", "how long an operation's answer stays readable and a retry under its id gets it again")
	fs.Var(durationFlag{&cfg.ReconnectWait}, "reconnect-wait", "how long a request whose QEMU connection dropped waits for QEMU and recovery before it answers outcome-unknown")
	fs.StringVar(&cfg.Quiesce, "quiesce", cfg.Quiesce, "quiesce for snapshots without QUIESCE: require, prefer or skip")
	fs.StringVar(&cfg.QuiesceScope, "quiesce-scope", cfg.QuiesceScope, "what a quiesced snapshot freezes unless it asks: all, or snapshot-disks (the filesystems on its disks)")
	fs.IntVar(&cfg.EventRing, "event-ring", cfg.EventRing, "how many of the latest events GET /v1/events?since= can replay")
	fs.StringVar(&cfg.MetricsListen, "metrics-listen", cfg.MetricsListen, "address of the Prometheus /metrics endpoint; empty turns it off")
	fs.StringVar(&cfg.DBus, "dbus", cfg.DBus, "export the API on D-Bus: none, system or session")
	fs.StringVar(&cfg.LogFormat, "log-format", cfg.LogFormat, "log format: json or console")
	fs.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "log level: debug, info, warn or error")
	// Asked-for help goes to stdout (help2man reads it to write
	// qsnapd(8)); help after a bad flag goes to stderr.
	usageOut := stderr
	if wantsHelp(args) {
		usageOut = stdout
	}
	fs.Usage = func() {
		fs.SetOutput(usageOut)
		fmt.Fprint(usageOut, usageHead)
		fs.PrintDefaults()
		fmt.Fprint(usageOut, usageTail)
		fs.SetOutput(stderr)
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
	fromFlags := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { fromFlags[strings.ReplaceAll(f.Name, "-", "_")] = true })
	if err := cfg.Check(fromFlags); err != nil {
		fmt.Fprintf(stderr, "qsnapd: config: %v\n", err)
		return 2
	}
	log, err := daemon.NewLogger(cfg.LogFormat, cfg.LogLevel)
	if err != nil {
		fmt.Fprintf(stderr, "qsnapd: %v\n", err)
		return 2
	}
	// Sync fails on a terminal's stderr (EINVAL); nothing is lost there.
	defer func() { _ = log.Sync() }()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := daemon.Run(ctx, cfg, log); err != nil {
		log.Error("qsnapd failed", zap.Error(err))
		return 1
	}
	return 0
}
