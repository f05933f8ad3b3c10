package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"go.uber.org/zap/zapcore"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/driver"
)

// Duration is a time.Duration written as a Go duration string ("10s").
type Duration time.Duration

// UnmarshalText parses "10s", "250ms", "1m30s".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes the duration back.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// DomainEntry is a [[domain]] attached at startup.
type DomainEntry struct {
	Name  string `toml:"name"`
	QMP   string `toml:"qmp"`
	Agent string `toml:"agent"`
	// AgentChannel is "hold" (the default) or "per-operation".
	AgentChannel string `toml:"agent_channel"`
}

// Config is the daemon's configuration. Every command-line flag has a
// key here (with underscores for dashes); a flag given on the command
// line overrides the file.
type Config struct {
	Socket          string        `toml:"socket"`
	SocketRO        string        `toml:"socket_ro"`
	LibvirtSocket   string        `toml:"libvirt_socket"`    // libvirt's RPC; "" turns it off
	LibvirtSocketRO string        `toml:"libvirt_socket_ro"` // read-only; "" turns it off
	AllowUIDs       []int         `toml:"allow_uid"`
	AllowGIDs       []int         `toml:"allow_gid"`
	AllowGroups     []string      `toml:"allow_group"`
	StateDir        string        `toml:"state_dir"`
	Transaction     string        `toml:"transaction"`
	Switch          string        `toml:"switch"`
	AllowedDirs     []string      `toml:"allowed_dir"`
	AgentTimeout    Duration      `toml:"agent_timeout"`
	MaxFreeze       Duration      `toml:"max_freeze"`
	ThawTimeout     Duration      `toml:"thaw_timeout"`
	RollbackTimeout Duration      `toml:"rollback_timeout"`
	OpRetention     Duration      `toml:"operation_retention"`
	ReconnectWait   Duration      `toml:"reconnect_wait"`
	Quiesce         string        `toml:"quiesce"`
	QuiesceScope    string        `toml:"quiesce_scope"`
	EventRing       int           `toml:"event_ring"`
	MetricsListen   string        `toml:"metrics_listen"`
	DBus            string        `toml:"dbus"`
	LogFormat       string        `toml:"log_format"`
	LogLevel        string        `toml:"log_level"`
	Domains         []DomainEntry `toml:"domain"`

	file     string // the config file read, for error positions
	fileData []byte
}

// Default is the configuration with nothing set. The driver's part
// comes from driver.DefaultConfig, so that each default is written once.
func Default() Config {
	dc := driver.DefaultConfig()
	return Config{
		Socket:          api.DefaultSocket,
		SocketRO:        api.DefaultSocketRO,
		LibvirtSocket:   "/run/qsnapd/libvirt-sock",
		LibvirtSocketRO: "/run/qsnapd/libvirt-sock-ro",
		StateDir:        "/var/lib/qsnapd",
		Transaction:     dc.Transaction,
		Switch:          dc.Switch,
		AgentTimeout:    Duration(dc.AgentTimeout),
		MaxFreeze:       Duration(dc.MaxFreeze),
		ThawTimeout:     Duration(dc.ThawTimeout),
		RollbackTimeout: Duration(dc.RollbackTimeout),
		OpRetention:     Duration(dc.OpRetention),
		ReconnectWait:   Duration(dc.ReconnectWait),
		Quiesce:         string(dc.Quiesce),
		QuiesceScope:    string(dc.QuiesceScope),
		EventRing:       dc.EventRing,
		MetricsListen:   "127.0.0.1:9477",
		DBus:            "none",
		LogFormat:       "console",
		LogLevel:        "info",
	}
}

// KeyError is a configuration value that is wrong, naming its key.
type KeyError struct {
	Key  string
	Line int // in the config file; 0 when the value came from a flag
	File string
	Msg  string
}

func (e *KeyError) Error() string {
	if e.File != "" && e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s: %s", e.File, e.Line, e.Key, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.Key, e.Msg)
}

func keyErr(key, format string, args ...any) error {
	return &KeyError{Key: key, Msg: fmt.Sprintf(format, args...)}
}

// Validate checks every value and names the key of the first wrong one.
func (c *Config) Validate() error {
	absolute := func(key, p string) error {
		if !filepath.IsAbs(p) {
			return keyErr(key, "%q is not an absolute path", p)
		}
		return nil
	}
	if err := absolute("state_dir", c.StateDir); err != nil {
		return err
	}
	// The libvirt sockets may be off (""); the API's may not.
	sockets := []struct {
		key, path string
		optional  bool
	}{{"socket", c.Socket, false}, {"socket_ro", c.SocketRO, false},
		{"libvirt_socket", c.LibvirtSocket, true}, {"libvirt_socket_ro", c.LibvirtSocketRO, true}}
	usedBy := map[string]string{}
	for _, kv := range sockets {
		if kv.optional && kv.path == "" {
			continue
		}
		if err := absolute(kv.key, kv.path); err != nil {
			return err
		}
		if len(kv.path) >= 108 {
			return keyErr(kv.key, "unix socket paths must be under 108 bytes, got %d", len(kv.path))
		}
		if other, ok := usedBy[kv.path]; ok {
			return keyErr(kv.key, "must differ from %s", other)
		}
		usedBy[kv.path] = kv.key
	}
	for _, d := range c.AllowedDirs {
		if err := absolute("allowed_dir", d); err != nil {
			return err
		}
	}
	for _, kv := range []struct {
		key string
		v   []int
	}{{"allow_uid", c.AllowUIDs}, {"allow_gid", c.AllowGIDs}} {
		for _, id := range kv.v {
			if id < 0 {
				return keyErr(kv.key, "%d is negative", id)
			}
		}
	}
	if _, err := c.groupIDs(); err != nil {
		return err
	}
	for _, kv := range []struct {
		key string
		d   Duration
	}{{"agent_timeout", c.AgentTimeout}, {"max_freeze", c.MaxFreeze}, {"thaw_timeout", c.ThawTimeout}, {"rollback_timeout", c.RollbackTimeout},
		{"operation_retention", c.OpRetention}, {"reconnect_wait", c.ReconnectWait}} {
		if kv.d < 0 {
			return keyErr(kv.key, "%v is negative", time.Duration(kv.d))
		}
	}
	if c.EventRing < 1 {
		return keyErr("event_ring", "%d is not a positive number of events", c.EventRing)
	}
	oneOf := func(key, v string, allowed ...string) error {
		for _, a := range allowed {
			if v == a {
				return nil
			}
		}
		return keyErr(key, "%q is not one of %s", v, strings.Join(allowed, ", "))
	}
	for _, err := range []error{
		oneOf("transaction", c.Transaction, "auto", "never"),
		oneOf("switch", c.Switch, driver.SwitchAuto, "preadd", "sync"),
		oneOf("quiesce", c.Quiesce, string(driver.QuiesceRequire), string(driver.QuiescePrefer), string(driver.QuiesceSkip)),
		oneOf("quiesce_scope", c.QuiesceScope, string(driver.ScopeAll), string(driver.ScopeSnapshotDisks)),
		oneOf("dbus", c.DBus, "none", "system", "session"),
		oneOf("log_format", c.LogFormat, "json", "console"),
	} {
		if err != nil {
			return err
		}
	}
	if _, err := zapcore.ParseLevel(c.LogLevel); err != nil {
		return keyErr("log_level", "%v", err)
	}
	seen := map[string]bool{}
	for i, d := range c.Domains {
		key := fmt.Sprintf("domain[%d]", i)
		switch {
		case d.Name == "":
			return keyErr(key+".name", "missing")
		case seen[d.Name]:
			return keyErr(key+".name", "domain %q listed twice", d.Name)
		case !filepath.IsAbs(d.QMP):
			return keyErr(key+".qmp", "%q is not an absolute path", d.QMP)
		case d.Agent != "" && !filepath.IsAbs(d.Agent):
			return keyErr(key+".agent", "%q is not an absolute path", d.Agent)
		case d.AgentChannel != "":
			if err := oneOf(key+".agent_channel", d.AgentChannel, driver.AgentHold, driver.AgentPerOperation); err != nil {
				return err
			}
		}
		seen[d.Name] = true
	}
	dc := c.DriverConfig()
	return dc.Validate()
}

// groupIDs resolves allow_group on this host.
func (c *Config) groupIDs() ([]int, error) {
	var gids []int
	for _, name := range c.AllowGroups {
		g, err := user.LookupGroup(name)
		if err != nil {
			return nil, keyErr("allow_group", "%v", err)
		}
		gid, err := strconv.Atoi(g.Gid)
		if err != nil {
			return nil, keyErr("allow_group", "group %q has gid %q", name, g.Gid)
		}
		gids = append(gids, gid)
	}
	return gids, nil
}

// AllowedGIDs are the groups whose members may use the read-write
// socket: allow_gid, and allow_group resolved (Validate checked it).
func (c *Config) AllowedGIDs() []int {
	gids, _ := c.groupIDs()
	return append(slices.Clone(c.AllowGIDs), gids...)
}

// DriverConfig is the driver's part of the configuration.
func (c *Config) DriverConfig() driver.Config {
	return driver.Config{
		StateDir:        c.StateDir,
		Transaction:     c.Transaction,
		Switch:          c.Switch,
		AllowedDirs:     c.AllowedDirs,
		AgentTimeout:    time.Duration(c.AgentTimeout),
		MaxFreeze:       time.Duration(c.MaxFreeze),
		ThawTimeout:     time.Duration(c.ThawTimeout),
		RollbackTimeout: time.Duration(c.RollbackTimeout),
		OpRetention:     time.Duration(c.OpRetention),
		ReconnectWait:   time.Duration(c.ReconnectWait),
		Quiesce:         driver.QuiesceMode(c.Quiesce),
		QuiesceScope:    driver.QuiesceScope(c.QuiesceScope),
		EventRing:       c.EventRing,
	}
}

// LoadFile reads a TOML file over c. An unknown key or a value of the
// wrong type stops with an error naming the key and the file line;
// Validate, after any flags, names the line of a bad value.
func (c *Config) LoadFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	md, err := toml.Decode(string(data), c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			if pe.LastKey != "" {
				return &KeyError{Key: pe.LastKey, File: path, Line: pe.Position.Line, Msg: pe.Message}
			}
			return fmt.Errorf("%s:%d: %s", path, pe.Position.Line, pe.Message)
		}
		// Type mismatches come as text: "toml: line 3 (last key "k"): ...".
		if m := typeErrRE.FindStringSubmatch(err.Error()); m != nil {
			line, _ := strconv.Atoi(m[1])
			return &KeyError{Key: m[2], File: path, Line: line, Msg: m[3]}
		}
		return fmt.Errorf("%s: %w", path, err)
	}
	if undecoded := md.Undecoded(); len(undecoded) > 0 {
		k := undecoded[0]
		return &KeyError{Key: k.String(), File: path, Line: lineOf(data, k), Msg: "unknown key"}
	}
	c.file, c.fileData = path, data
	return nil
}

// Check validates c; an error about a key that the config file sets
// (and no flag overrode) names the file and line.
func (c *Config) Check(fromFlags map[string]bool) error {
	err := c.Validate()
	var ke *KeyError
	if errors.As(err, &ke) && c.file != "" && !fromFlags[ke.Key] {
		if line := lineOf(c.fileData, keyPath(ke.Key)); line > 0 {
			ke.File, ke.Line = c.file, line
		}
	}
	return err
}

var typeErrRE = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]*)"\): (.*)$`)

var indexRE = regexp.MustCompile(`^(\w+)\[(\d+)\]$`)

// keyPath turns "domain[1].qmp" into a key for lineOf.
func keyPath(key string) toml.Key {
	return toml.Key(strings.Split(key, "."))
}

// lineOf finds the line that sets key: the toml package keeps key
// positions private, so read the file for it. For a key in the n-th
// [[table]], it looks after the n-th header.
func lineOf(data []byte, key toml.Key) int {
	lines := bytes.Split(data, []byte("\n"))
	start := 0
	last := key[len(key)-1]
	if len(key) > 1 {
		table, n := key[0], 0
		if m := indexRE.FindStringSubmatch(table); m != nil {
			table = m[1]
			n, _ = strconv.Atoi(m[2]) // the pattern matched digits
		}
		header := regexp.MustCompile(`^\s*\[\[?\s*` + regexp.QuoteMeta(table) + `\s*\]\]?`)
		seen := -1
		for i, l := range lines {
			if header.Match(l) {
				seen++
				if seen == n {
					start = i + 1
					break
				}
			}
		}
	}
	assign := regexp.MustCompile(`^\s*"?` + regexp.QuoteMeta(last) + `"?\s*=`)
	for i := start; i < len(lines); i++ {
		if assign.Match(lines[i]) {
			return i + 1
		}
	}
	return 0
}
