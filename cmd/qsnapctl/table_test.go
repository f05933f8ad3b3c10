package main

import (
	"strings"
	"testing"

	"github.com/qsnapd/qsnapd/api"
)

func TestTable(t *testing.T) {
	tb := newTable("Name", "Value")
	tb.add("a\tb", "x")
	tb.add("é", `c:\x`)
	tb.add("bad\xff", "")
	var b strings.Builder
	if err := tb.write(&b); err != nil {
		t.Fatal(err)
	}
	const want = "" +
		" Name      Value\n" +
		"--------------------\n" +
		` a\x09b    x` + "\n" +
		` é         c:\x5cx` + "\n" +
		` bad\xff   ` + "\n"
	if got := b.String(); got != want {
		t.Errorf("table:\n%q\nwant:\n%q", got, want)
	}
	// Writing twice gives the same (cells are not escaped in place).
	var b2 strings.Builder
	if err := tb.write(&b2); err != nil {
		t.Fatal(err)
	}
	if b2.String() != want {
		t.Errorf("second write differs:\n%q", b2.String())
	}
}

func TestTree(t *testing.T) {
	n := func(name string, children ...*api.SnapshotNode) *api.SnapshotNode {
		return &api.SnapshotNode{Name: name, Children: children}
	}
	for _, tc := range []struct {
		name  string
		roots []*api.SnapshotNode
		want  string
	}{
		{"none", nil, ""},
		{"one", []*api.SnapshotNode{n("a")}, "a\n\n"},
		{"chain", []*api.SnapshotNode{n("a", n("b", n("c")))}, "a\n  |\n  +- b\n      |\n      +- c\n        \n"},
		{"fan", []*api.SnapshotNode{n("a", n("b"), n("c"), n("d"))},
			"a\n  |\n  +- b\n  +- c\n  +- d\n    \n"},
	} {
		var b strings.Builder
		if err := writeTree(&b, tc.roots); err != nil {
			t.Fatal(err)
		}
		if got := b.String(); got != tc.want {
			t.Errorf("%s: tree\n%q\nwant\n%q", tc.name, got, tc.want)
		}
	}
}
