package main

import (
	"slices"
	"strings"
	"time"
)

// optKind is what an option takes.
type optKind int

const (
	kindBool   optKind = iota // --flag
	kindString                // --opt VALUE, at most once
	kindList                  // --opt VALUE, repeatable
)

// option is one option of a command, after virsh's vshCmdOptDef.
type option struct {
	name string
	kind optKind
	// positional: the value may also be given without --name; free
	// arguments fill the positional options in declaration order.
	positional bool
	// required: the command cannot run without it.
	required bool
	// argv: a kindList option that also takes the free arguments left
	// once the positional options are filled, as virsh's VSH_OT_ARGV.
	argv    bool
	metavar string // shown in help, e.g. "path"
	help    string
}

// args are a command's parsed options.
type args struct {
	cmd   *command
	bools map[string]bool
	strs  map[string][]string
	json  bool // --json given after the command
	help  bool // --help given after the command
}

func (a *args) flag(name string) bool { return a.bools[name] }

// str is an option's value, or "" when it was not given.
func (a *args) str(name string) string {
	if v := a.strs[name]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func (a *args) list(name string) []string { return a.strs[name] }

func (a *args) has(name string) bool { return a.bools[name] || len(a.strs[name]) > 0 }

// parseArgs parses a command's arguments as virsh does: options may come
// before, between or after the positional arguments, as --opt VALUE or
// --opt=VALUE, and "--" makes everything after it positional.
func parseArgs(cmd *command, argv []string) (*args, error) {
	a := &args{cmd: cmd, bools: map[string]bool{}, strs: map[string][]string{}}
	type item struct {
		pos   int
		value string
	}
	var free []item
	lists := map[string][]item{} // repeatable options, kept in command line order
	onlyFree := false
	for i := 0; i < len(argv); i++ {
		arg := argv[i]
		if onlyFree || !strings.HasPrefix(arg, "--") {
			free = append(free, item{i, arg})
			continue
		}
		if arg == "--" {
			onlyFree = true
			continue
		}
		name, value, hasValue := strings.Cut(arg[2:], "=")
		switch name {
		case "json", "help":
			if hasValue {
				return nil, usagef("option --%s takes no value", name)
			}
			if name == "json" {
				a.json = true
			} else {
				a.help = true
			}
			continue
		}
		opt := cmd.option(name)
		if opt == nil {
			return nil, usagef("command '%s' doesn't support option --%s", cmd.name, name)
		}
		if opt.kind == kindBool {
			if hasValue {
				return nil, usagef("option --%s takes no value", name)
			}
			a.bools[name] = true
			continue
		}
		pos := i
		if !hasValue {
			if i+1 >= len(argv) {
				return nil, usagef("option --%s needs a value", name)
			}
			i++
			value = argv[i]
		}
		if opt.kind == kindList {
			lists[name] = append(lists[name], item{pos, value})
		}
		if err := a.set(opt, value); err != nil {
			return nil, err
		}
	}
	if a.help {
		return a, nil // the command's help needs nothing else
	}
	for _, it := range free {
		opt := a.nextPositional()
		if opt == nil {
			return nil, usagef("unexpected data '%s'", it.value)
		}
		if opt.kind == kindList {
			lists[opt.name] = append(lists[opt.name], it)
		}
		if err := a.set(opt, it.value); err != nil {
			return nil, err
		}
	}
	for name, items := range lists {
		slices.SortFunc(items, func(x, y item) int { return x.pos - y.pos })
		a.strs[name] = a.strs[name][:0]
		for _, it := range items {
			a.strs[name] = append(a.strs[name], it.value)
		}
	}
	for i := range cmd.opts {
		opt := &cmd.opts[i]
		if opt.required && !a.has(opt.name) {
			if opt.positional {
				return nil, usagef("command '%s' requires <%s> option", cmd.name, opt.name)
			}
			return nil, usagef("command '%s' requires --%s option", cmd.name, opt.name)
		}
	}
	return a, nil
}

func (a *args) set(opt *option, value string) error {
	if value == "" {
		return usagef("option --%s: empty value", opt.name)
	}
	if opt.kind == kindString && len(a.strs[opt.name]) > 0 {
		return usagef("option --%s given twice", opt.name)
	}
	a.strs[opt.name] = append(a.strs[opt.name], value)
	return nil
}

// nextPositional is the option a free argument fills: the first
// positional option not yet given, else the command's argv option.
func (a *args) nextPositional() *option {
	for i := range a.cmd.opts {
		opt := &a.cmd.opts[i]
		if opt.positional && !a.has(opt.name) {
			return opt
		}
	}
	for i := range a.cmd.opts {
		if opt := &a.cmd.opts[i]; opt.argv {
			return opt
		}
	}
	return nil
}

// exclusive fails if both options are given.
func (a *args) exclusive(x, y string) error {
	if a.has(x) && a.has(y) {
		return usagef("options --%s and --%s are mutually exclusive", x, y)
	}
	return nil
}

// globals are the options before the command.
type globals struct {
	socket  string
	timeout time.Duration // 0: each command's own bound
	json    bool
	version bool
	help    bool
	rest    []string // the command and its arguments
}

// parseGlobals reads the global options up to the command name. The
// socket is --socket, else $QSNAPD_SOCKET, else the daemon's default;
// --timeout is a positive duration in Go's syntax, such as 90s.
func parseGlobals(argv []string, getenv func(string) string, defaultSocket string) (globals, error) {
	g := globals{}
	values := map[string]string{} // of --socket and --timeout
	i := 0
loop:
	for ; i < len(argv); i++ {
		arg := argv[i]
		if arg == "--" {
			i++
			break
		}
		if arg == "-h" {
			g.help = true
			continue
		}
		if !strings.HasPrefix(arg, "--") {
			break
		}
		name, value, hasValue := strings.Cut(arg[2:], "=")
		switch name {
		case "socket", "timeout":
			if !hasValue {
				if i+1 >= len(argv) {
					return g, usagef("option --%s needs a value", name)
				}
				i++
				value = argv[i]
			}
			if value == "" {
				return g, usagef("option --%s: empty value", name)
			}
			if _, ok := values[name]; ok {
				return g, usagef("option --%s given twice", name)
			}
			values[name] = value
			continue loop
		case "json", "version", "help":
		default:
			return g, usagef("unknown option --%s", name)
		}
		if hasValue {
			return g, usagef("option --%s takes no value", name)
		}
		switch name {
		case "json":
			g.json = true
		case "version":
			g.version = true
		case "help":
			g.help = true
		}
	}
	g.rest = argv[i:]
	switch {
	case values["socket"] != "":
		g.socket = values["socket"]
	case getenv(socketEnv) != "":
		g.socket = getenv(socketEnv)
	default:
		g.socket = defaultSocket
	}
	if s, ok := values["timeout"]; ok {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return g, usagef("option --timeout must be a positive duration such as 30s or 5m, not '%s'", s)
		}
		g.timeout = d
	}
	return g, nil
}
