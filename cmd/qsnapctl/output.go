package main

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/qsnapd/qsnapd/api"
)

// timeLayout is virsh's "%Y-%m-%d %H:%M:%S %z".
const timeLayout = "2006-01-02 15:04:05 -0700"

// table prints rows as virsh's vshTable does: every cell is preceded by
// a space, columns are padded to their widest cell plus two spaces (the
// last one is not padded), and the header is underlined with dashes,
// each column's width plus three.
type table struct {
	header []string
	rows   [][]string
}

func newTable(header ...string) *table { return &table{header: header} }

func (t *table) add(cells ...string) { t.rows = append(t.rows, cells) }

func (t *table) write(w io.Writer) error {
	widths := make([]int, len(t.header))
	var all [][]string
	for _, row := range append([][]string{t.header}, t.rows...) {
		safe := make([]string, len(row))
		for c, cell := range row {
			safe[c] = safeCell(cell)
			widths[c] = max(widths[c], utf8.RuneCountInString(safe[c]))
		}
		all = append(all, safe)
	}
	var b strings.Builder
	line := func(row []string) {
		for c, cell := range row {
			b.WriteString(" " + cell)
			if c < len(row)-1 {
				b.WriteString(strings.Repeat(" ", widths[c]-utf8.RuneCountInString(cell)+2))
			}
		}
		b.WriteByte('\n')
	}
	line(all[0])
	for _, wd := range widths {
		b.WriteString(strings.Repeat("-", wd+3))
	}
	b.WriteByte('\n')
	for _, row := range all[1:] {
		line(row)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// safeCell replaces control characters by \xNN, as virsh does, so that
// a name cannot move the cursor or break the columns.
func safeCell(s string) string {
	var b strings.Builder
	for i, r := range s {
		switch {
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r == '\\' && strings.HasPrefix(s[i+1:], "x"):
			b.WriteString(`\x5c`)
		case r == utf8.RuneError && !strings.HasPrefix(s[i:], string(utf8.RuneError)):
			fmt.Fprintf(&b, `\x%02x`, s[i])
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// orDash is s, or "-" for nothing, as virsh's NULLSTR_MINUS.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// writeTree draws snapshot trees as virsh's vshTreePrint:
//
//	root
//	  |
//	  +- child
//	  |   |
//	  |   +- grandchild
//	  |
//	  +- last child
//
// with the same blank (indented) line after each last leaf.
func writeTree(w io.Writer, roots []*api.SnapshotNode) error {
	var b strings.Builder
	for _, n := range roots {
		treeNode(&b, n, "", true, true)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func treeNode(b *strings.Builder, n *api.SnapshotNode, indent string, root, last bool) {
	if root {
		fmt.Fprintf(b, "%s%s\n", indent, safeCell(n.Name))
	} else {
		fmt.Fprintf(b, "%s+- %s\n", indent, safeCell(n.Name))
		if last {
			indent += "  "
		} else {
			indent += "| "
		}
	}
	if len(n.Children) > 0 {
		fmt.Fprintf(b, "%s  |\n", indent)
	}
	for i, c := range n.Children {
		treeNode(b, c, indent+"  ", false, i == len(n.Children)-1)
	}
	if len(n.Children) == 0 && last {
		fmt.Fprintf(b, "%s\n", indent)
	}
}

// byName compares names as virsh sorts snapshots: case-insensitively.
func byName(a, b string) int {
	return cmp.Or(cmp.Compare(strings.ToLower(a), strings.ToLower(b)), cmp.Compare(a, b))
}

// sortTree sorts every level of a tree by name.
func sortTree(nodes []*api.SnapshotNode) {
	slices.SortStableFunc(nodes, func(a, b *api.SnapshotNode) int { return byName(a.Name, b.Name) })
	for _, n := range nodes {
		sortTree(n.Children)
	}
}

// writeJSON prints v indented, leaving <, > and & as they are so that
// XML stays readable.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// writeDisks prints per-disk outcomes.
func writeDisks(w io.Writer, disks []api.DiskOutcome) error {
	t := newTable("Target", "Source", "Overlay", "Result", "Error")
	for _, d := range disks {
		t.add(d.Target, orDash(d.Source), orDash(d.Overlay), string(d.Result), orDash(d.Error))
	}
	return t.write(w)
}

// writeMerges prints a delete's per-disk outcomes. File says whether the
// overlay's file was deleted, or kept (a file the caller supplied).
func writeMerges(w io.Writer, merges []api.MergeOutcome) error {
	t := newTable("Snapshot", "Target", "Overlay", "Base", "Result", "File", "Error")
	for _, m := range merges {
		file := "-"
		switch {
		case m.FileDeleted:
			file = "deleted"
		case m.Kept == m.Overlay && m.Kept != "":
			file = "kept"
		case m.Kept != "":
			file = "kept at " + m.Kept
		}
		t.add(m.Snapshot, m.Target, orDash(m.Overlay), orDash(m.Base), string(m.Result), file, orDash(m.Error))
	}
	return t.write(w)
}

// writeMergeSummary prints what a delete merged, if it merged anything:
// the bytes and time, then the disks.
func writeMergeSummary(w io.Writer, res api.DeleteSnapshotResponse) error {
	if len(res.Disks) == 0 {
		return nil
	}
	fmt.Fprintf(w, "Merged %s in %s\n", humanBytes(res.MergedBytes),
		time.Duration(res.TotalMS*float64(time.Millisecond)).Round(time.Millisecond))
	return writeMerges(w, res.Disks)
}

// report prints a failure on stderr: "error: MESSAGE", then, for a
// daemon error with details, the operation, the step and the disks;
// with --json, the daemon's error body goes to stdout as well.
func (c *cli) report(err error) {
	var ae *api.Error
	if !errors.As(err, &ae) {
		fmt.Fprintf(c.stderr, "error: %s\n", explain(err))
		var lost *lostOpError
		if errors.As(err, &lost) {
			fmt.Fprintf(c.stderr, "error: operation %s may still finish in the daemon; see 'qsnapctl operation %s'\n", lost.opID, lost.opID)
		}
		return
	}
	fmt.Fprintf(c.stderr, "error: %s\n", ae.Info.Message)
	if c.json {
		_ = writeJSON(c.stdout, api.ErrorBody{Error: ae.Info}) // already failing: stderr has the message
	}
	d := ae.Info.Details
	if d == nil {
		return
	}
	if d.Operation != "" {
		fmt.Fprintf(c.stderr, "operation: %s\n", d.Operation)
	}
	if d.Step != "" {
		fmt.Fprintf(c.stderr, "step: %s\n", d.Step)
	}
	if len(d.Deleted) > 0 {
		fmt.Fprintf(c.stderr, "deleted before the failure: %s\n", strings.Join(d.Deleted, ", "))
	}
	if len(d.Disks) > 0 {
		_ = writeDisks(c.stderr, d.Disks) // stderr: nowhere left to report to
	}
	if len(d.Merges) > 0 {
		_ = writeMerges(c.stderr, d.Merges) // stderr: nowhere left to report to
	}
}

// warnInterrupted says on stderr which snapshots a merge changed
// without completing: their base images took part of a copy.
func (c *cli) warnInterrupted(snaps []api.Snapshot) {
	for _, s := range snaps {
		if m := s.MergeInterrupted; m != nil {
			fmt.Fprintf(c.stderr, "warning: snapshot %s: merge interrupted (operation %s, %s) after writing into the base images of %s,"+
				" which no longer hold its point in time exactly; delete it again to complete the merge\n",
				safeCell(s.Name), safeCell(m.Operation), c.fmtTime(m.Time), safeCell(strings.Join(m.Disks, ", ")))
		}
	}
}

// fmtTime formats t in the CLI's zone; the zero time is "-".
func (c *cli) fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.In(c.loc).Format(timeLayout)
}

// field prints a "Label:         value" line, as virsh's snapshot-info.
func field(w io.Writer, label, value string) {
	fmt.Fprintf(w, "%-15s %s\n", label+":", value)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
