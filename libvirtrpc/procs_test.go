package libvirtrpc

import (
	"bytes"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/qsnapd/qsnapd/libvirtrpc/internal/procgen/procs"
)

// TestProcConstants pins every proc* constant of procs.go to its name
// in go-libvirt's table: procDomainSnapshotCreateXML must be the number
// go-libvirt calls DomainSnapshotCreateXML. Every served procedure is
// one of them.
func TestProcConstants(t *testing.T) {
	file, err := parser.ParseFile(token.NewFileSet(), "procs.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	named := map[int32]string{}
	for _, decl := range file.Decls {
		gd, ok := decl.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		for _, spec := range gd.Specs {
			vs := spec.(*ast.ValueSpec)
			for i, id := range vs.Names {
				name, ok := strings.CutPrefix(id.Name, "proc")
				if !ok || i >= len(vs.Values) {
					continue
				}
				lit, ok := vs.Values[i].(*ast.BasicLit)
				if !ok || lit.Kind != token.INT {
					t.Errorf("%s is not a number", id.Name)
					continue
				}
				n, err := strconv.ParseInt(lit.Value, 0, 32)
				if err != nil {
					t.Fatal(err)
				}
				if got := procNames[int32(n)]; got != name {
					t.Errorf("%s = %d, which go-libvirt names %q", id.Name, n, got)
				}
				named[int32(n)] = id.Name
			}
		}
	}
	if len(named) < 50 {
		t.Fatalf("found %d proc constants in procs.go: has its form changed?", len(named))
	}
	served := New(nil, Config{}, nil).procs
	for p := range served {
		if _, ok := named[p]; !ok {
			t.Errorf("procedure %d (%s) is served but has no constant in procs.go", p, procName(p))
		}
	}
	for p, name := range named {
		if _, ok := served[p]; !ok {
			t.Errorf("%s has a constant but is not served: the table is the list of what is", name)
		}
	}
}

// TestProcNamesUpToDate regenerates procnames.gen.go from the go-libvirt
// of go.mod and compares.
func TestProcNamesUpToDate(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", procs.Module).Output()
	dir := strings.TrimSpace(string(out))
	if err != nil || dir == "" {
		t.Skipf("%s not in the module cache: %v", procs.Module, err)
	}
	src, err := os.ReadFile(procs.ConstantsFile(dir))
	if err != nil {
		t.Skipf("go-libvirt's constants: %v", err)
	}
	want, err := procs.Generate(src)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("procnames.gen.go")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Error("procnames.gen.go is stale: go run ./libvirtrpc/internal/procgen > libvirtrpc/procnames.gen.go")
	}
}
