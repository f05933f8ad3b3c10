package virshscript

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// A Transcript is one run of a script against one server, normalized.
type Transcript struct {
	Command string // how to produce it again, exactly
	Server  string // the server's version, e.g. "libvirt 9.0.0, QEMU 7.2.22"
	Steps   []Result
}

// A Result is what one step did: its command line as the script has it
// (placeholders unexpanded), virsh's exit status and its output.
type Result struct {
	Name   string
	Env    []string
	Args   []string
	Exit   int
	Stdout string
	Stderr string
}

// The golden format, one file per transcript:
//
//	# produced by: <Command>
//	# server: <Server>
//	=== <step name>
//	$ [NAME=value ...] virsh <args, shell-quoted>
//	exit <N>
//	--- stdout
//	<stdout, verbatim>
//	--- stderr
//	<stderr, verbatim>
//	=== <next step name>
//	...
//
// An output that does not end in a newline is followed by the line
// `\ no newline at end`, as diff does, so that files round-trip exactly.
// Output cannot hold the lines the format reserves (Marshal refuses).
const (
	commandPrefix = "# produced by: "
	serverPrefix  = "# server: "
	stepPrefix    = "=== "
	linePrefix    = "$ "
	exitPrefix    = "exit "
	stdoutLine    = "--- stdout"
	stderrLine    = "--- stderr"
	noNewline     = `\ no newline at end`
)

// ErrFormat is a golden file this package cannot read.
var ErrFormat = errors.New("not a virshscript transcript")

// Marshal encodes t in the golden format.
func Marshal(t *Transcript) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(commandPrefix + oneLine(t.Command) + "\n")
	b.WriteString(serverPrefix + oneLine(t.Server) + "\n")
	for _, r := range t.Steps {
		if strings.ContainsAny(r.Name, "\n") {
			return nil, fmt.Errorf("step %q: a name on more than one line", r.Name)
		}
		b.WriteString(stepPrefix + r.Name + "\n")
		b.WriteString(linePrefix + commandLine(r.Env, r.Args) + "\n")
		fmt.Fprintf(&b, "%s%d\n", exitPrefix, r.Exit)
		for _, sec := range []struct{ head, text string }{{stdoutLine, r.Stdout}, {stderrLine, r.Stderr}} {
			for _, l := range strings.Split(sec.text, "\n") {
				if strings.HasPrefix(l, stepPrefix) || l == stderrLine || l == noNewline {
					return nil, fmt.Errorf("step %s: output line %q is reserved by the format", r.Name, l)
				}
			}
			b.WriteString(sec.head + "\n" + sec.text)
			if sec.text != "" && !strings.HasSuffix(sec.text, "\n") {
				b.WriteString("\n" + noNewline + "\n")
			}
		}
	}
	return b.Bytes(), nil
}

// Parse decodes the golden format.
func Parse(data []byte) (*Transcript, error) {
	t := &Transcript{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 16<<20)
	var (
		r    *Result
		text *string // the section being read
		n    int
	)
	for sc.Scan() {
		l := sc.Text()
		n++
		switch {
		case r == nil && strings.HasPrefix(l, "#"):
			if v, ok := strings.CutPrefix(l, commandPrefix); ok {
				t.Command = v
			} else if v, ok := strings.CutPrefix(l, serverPrefix); ok {
				t.Server = v
			}
		case strings.HasPrefix(l, stepPrefix) && (r == nil || text == &r.Stderr):
			t.Steps = append(t.Steps, Result{Name: strings.TrimPrefix(l, stepPrefix)})
			r, text = &t.Steps[len(t.Steps)-1], nil
			if err := parseHead(sc, r, &n); err != nil {
				return nil, err
			}
		case r != nil && l == stdoutLine && text == nil:
			text = &r.Stdout
		case r != nil && l == stderrLine && text == &r.Stdout:
			text = &r.Stderr
		case r != nil && l == noNewline && text != nil && strings.HasSuffix(*text, "\n"):
			*text = strings.TrimSuffix(*text, "\n")
		case text != nil:
			*text += l + "\n"
		default:
			return nil, fmt.Errorf("%w: line %d: unexpected %q", ErrFormat, n, l)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if r != nil && text != &r.Stderr {
		return nil, fmt.Errorf("%w: step %s ends early", ErrFormat, r.Name)
	}
	return t, nil
}

// parseHead reads a step's command line and exit status.
func parseHead(sc *bufio.Scanner, r *Result, n *int) error {
	if !sc.Scan() {
		return fmt.Errorf("%w: step %s: no command line", ErrFormat, r.Name)
	}
	*n++
	line, ok := strings.CutPrefix(sc.Text(), linePrefix)
	if !ok {
		return fmt.Errorf("%w: line %d: want %q, got %q", ErrFormat, *n, linePrefix+"virsh ...", sc.Text())
	}
	words, err := splitWords(line)
	if err != nil {
		return fmt.Errorf("%w: line %d: %w", ErrFormat, *n, err)
	}
	i := slices.Index(words, "virsh")
	if i < 0 {
		return fmt.Errorf("%w: line %d: no virsh", ErrFormat, *n)
	}
	r.Env, r.Args = nilIfEmpty(words[:i]), nilIfEmpty(words[i+1:])
	if !sc.Scan() {
		return fmt.Errorf("%w: step %s: no exit status", ErrFormat, r.Name)
	}
	*n++
	code, ok := strings.CutPrefix(sc.Text(), exitPrefix)
	if r.Exit, err = strconv.Atoi(code); !ok || err != nil {
		return fmt.Errorf("%w: line %d: want %q, got %q", ErrFormat, *n, exitPrefix+"N", sc.Text())
	}
	return nil
}

// Load reads a golden file.
func Load(path string) (*Transcript, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	t, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// Write writes t to a golden file.
func Write(path string, t *Transcript) error {
	data, err := Marshal(t)
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o644)
}

// Diff tells how got differs from want, step by step, with a line diff
// of each output that differs ("-" want, "+" got); "" when they agree.
// The headers (command, server) are not compared: they name the servers.
func Diff(want, got *Transcript) string {
	var b strings.Builder
	for i := range max(len(want.Steps), len(got.Steps)) {
		if i >= len(got.Steps) {
			fmt.Fprintf(&b, "step %d %s: missing\n", i+1, want.Steps[i].Name)
			continue
		}
		if i >= len(want.Steps) {
			fmt.Fprintf(&b, "step %d %s: not expected\n", i+1, got.Steps[i].Name)
			continue
		}
		w, g := want.Steps[i], got.Steps[i]
		at := fmt.Sprintf("step %d %s", i+1, w.Name)
		if w.Name != g.Name || !slices.Equal(w.Env, g.Env) || !slices.Equal(w.Args, g.Args) {
			fmt.Fprintf(&b, "%s: want %s %q, got %s %q (the scripts differ)\n", at, w.Name, commandLine(w.Env, w.Args), g.Name, commandLine(g.Env, g.Args))
			continue
		}
		if w.Exit != g.Exit {
			fmt.Fprintf(&b, "%s: exit %d, want %d\n", at, g.Exit, w.Exit)
		}
		if w.Stdout != g.Stdout {
			fmt.Fprintf(&b, "%s: stdout:\n%s", at, lineDiff(w.Stdout, g.Stdout))
		}
		if w.Stderr != g.Stderr {
			fmt.Fprintf(&b, "%s: stderr:\n%s", at, lineDiff(w.Stderr, g.Stderr))
		}
	}
	return b.String()
}

// lineDiff is a minimal line diff (longest common subsequence): outputs
// are short. A difference only in the final newline shows as such.
func lineDiff(a, b string) string {
	x, y := strings.SplitAfter(a, "\n"), strings.SplitAfter(b, "\n")
	lcs := make([][]int, len(x)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(y)+1)
	}
	for i := len(x) - 1; i >= 0; i-- {
		for j := len(y) - 1; j >= 0; j-- {
			if x[i] == y[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out strings.Builder
	line := func(sign, l string) {
		if l == "" {
			return
		}
		if !strings.HasSuffix(l, "\n") {
			l += "\n" + noNewline + "\n"
		}
		out.WriteString(sign + l)
	}
	i, j := 0, 0
	for i < len(x) || j < len(y) {
		switch {
		case i < len(x) && j < len(y) && x[i] == y[j]:
			line(" ", x[i])
			i, j = i+1, j+1
		case i < len(x) && (j == len(y) || lcs[i+1][j] >= lcs[i][j+1]):
			line("-", x[i])
			i++
		default:
			line("+", y[j])
			j++
		}
	}
	return out.String()
}

var plainWord = regexp.MustCompile(`^[A-Za-z0-9@%+=:,./_-]+$`)

// commandLine is env and args as a shell would take them.
func commandLine(env, args []string) string {
	words := append(slices.Clone(env), "virsh")
	for _, a := range args {
		if !plainWord.MatchString(a) {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		words = append(words, a)
	}
	return strings.Join(words, " ")
}

// splitWords undoes commandLine: words split at spaces, single quotes
// and backslash-escaped characters.
func splitWords(s string) ([]string, error) {
	var (
		words []string
		cur   strings.Builder
		inW   bool
	)
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == ' ':
			if inW {
				words, inW = append(words, cur.String()), false
				cur.Reset()
			}
		case c == '\'':
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				return nil, errors.New("unterminated quote")
			}
			cur.WriteString(s[i+1 : i+1+end])
			i, inW = i+1+end, true
		case c == '\\' && i+1 < len(s):
			cur.WriteByte(s[i+1])
			i, inW = i+1, true
		default:
			cur.WriteByte(c)
			inW = true
		}
	}
	if inW {
		words = append(words, cur.String())
	}
	return words, nil
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }

func nilIfEmpty(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
}
