package virshscript

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func sample() *Transcript {
	return &Transcript{
		Command: "make golden-libvirt",
		Server:  "libvirt 9.0.0, QEMU 7.2.22",
		Steps: []Result{
			{Name: "list", Args: []string{"snapshot-list", "vm1"}, Stdout: " Name   Creation Time   State\n-------------------------------\n\n"},
			{Name: "edit", Env: []string{"EDITOR=true"}, Args: []string{"snapshot-edit", "vm1", "--current"},
				Stdout: "Snapshot s1 XML configuration not changed.\n\n"},
			{Name: "quoted", Args: []string{"snapshot-create-as", "vm1", "--description", "it's a b", ""}, Exit: 1,
				Stderr: "error: operation failed: domain moment s1 already exists\n"},
			{Name: "no newline", Args: []string{"snapshot-current", "vm1", "--name"}, Stdout: "s1", Stderr: "=x\n--- stdout\n"},
			{Name: "empty", Args: []string{"snapshot-parent", "vm1", "s1"}, Exit: 1},
		},
	}
}

func TestRoundTrip(t *testing.T) {
	want := sample()
	path := filepath.Join(t.TempDir(), "x.golden")
	if err := Write(path, want); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Command != want.Command || got.Server != want.Server {
		t.Errorf("header: got %q %q, want %q %q", got.Command, got.Server, want.Command, want.Server)
	}
	if d := Diff(want, got); d != "" {
		t.Errorf("round trip differs:\n%s", d)
	}
	if !slices.EqualFunc(want.Steps, got.Steps, func(a, b Result) bool {
		return a.Name == b.Name && slices.Equal(a.Env, b.Env) && slices.Equal(a.Args, b.Args) &&
			a.Exit == b.Exit && a.Stdout == b.Stdout && a.Stderr == b.Stderr
	}) {
		t.Errorf("round trip:\n got %#v\nwant %#v", got.Steps, want.Steps)
	}
}

func TestMarshalLayout(t *testing.T) {
	data, err := Marshal(sample())
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	for _, want := range []string{
		"# produced by: make golden-libvirt\n# server: libvirt 9.0.0, QEMU 7.2.22\n=== list\n$ virsh snapshot-list vm1\nexit 0\n--- stdout\n",
		"$ EDITOR=true virsh snapshot-edit vm1 --current\n",
		`$ virsh snapshot-create-as vm1 --description 'it'\''s a b' ''` + "\nexit 1\n",
		"--- stdout\ns1\n\\ no newline at end\n--- stderr\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("marshalled transcript lacks %q:\n%s", want, s)
		}
	}
}

func TestMarshalRefusesReservedLines(t *testing.T) {
	for _, out := range []string{"=== x\n", "a\n--- stderr\nb\n", "\\ no newline at end\n"} {
		tr := &Transcript{Steps: []Result{{Name: "s", Args: []string{"list"}, Stdout: out}}}
		if _, err := Marshal(tr); err == nil {
			t.Errorf("Marshal took output %q", out)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, in := range []string{
		"=== s\nvirsh list\n",
		"=== s\n$ virsh list\nexit x\n--- stdout\n--- stderr\n",
		"=== s\n$ virsh list\nexit 0\n--- stdout\n",
		"stray\n",
		"=== s\n$ list\nexit 0\n--- stdout\n--- stderr\n",
	} {
		if _, err := Parse([]byte(in)); !errors.Is(err, ErrFormat) {
			t.Errorf("Parse(%q): err %v, want ErrFormat", in, err)
		}
	}
}

func TestDiff(t *testing.T) {
	want := sample()
	got := sample()
	got.Server = "qsnapd"
	if d := Diff(want, got); d != "" {
		t.Errorf("headers compared:\n%s", d)
	}
	got.Steps[0].Stdout = " Name   Creation Time   State\n------------------------------\n\n"
	got.Steps[2].Exit = 0
	got.Steps[3].Stdout = "s1\n"
	got.Steps = got.Steps[:4]
	d := Diff(want, got)
	for _, w := range []string{
		"step 1 list: stdout:\n  Name   Creation Time   State\n--------------------------------\n+------------------------------\n \n",
		"step 3 quoted: exit 0, want 1\n",
		"step 4 no newline: stdout:\n-s1\n\\ no newline at end\n+s1\n",
		"step 5 empty: missing\n",
	} {
		if !strings.Contains(d, w) {
			t.Errorf("diff lacks %q:\n%s", w, d)
		}
	}
	got = sample()
	got.Steps[1].Args = []string{"snapshot-edit", "vm1", "s1"}
	if d := Diff(want, got); !strings.Contains(d, "the scripts differ") {
		t.Errorf("a changed command line not reported:\n%s", d)
	}
}

func TestScriptSteps(t *testing.T) {
	seen := map[string]bool{}
	for _, s := range Snapshots {
		if s.Name == "" || seen[s.Name] || strings.ContainsAny(s.Name, "\n") {
			t.Errorf("step name %q empty, repeated or on two lines", s.Name)
		}
		seen[s.Name] = true
		if len(s.Args) == 0 {
			t.Errorf("step %s: no command", s.Name)
		}
	}
}

// The checked-in golden file is of this script: a step added, removed or
// changed calls for make golden-libvirt.
func TestGoldenFileMatchesScript(t *testing.T) {
	g, err := Load(filepath.Join("testdata", "libvirtd-9.0.golden"))
	if err != nil {
		t.Fatal(err)
	}
	if g.Command == "" || g.Server == "" {
		t.Errorf("header: command %q, server %q", g.Command, g.Server)
	}
	if len(g.Steps) != len(Snapshots) {
		t.Fatalf("golden file has %d steps, the script %d: run make golden-libvirt", len(g.Steps), len(Snapshots))
	}
	for i, s := range Snapshots {
		r := g.Steps[i]
		if r.Name != s.Name || !slices.Equal(r.Args, s.Args) || !slices.Equal(r.Env, s.Env) {
			t.Errorf("step %d: golden %s %q, script %s %q: run make golden-libvirt", i+1, r.Name, r.Args, s.Name, s.Args)
		}
	}
}
