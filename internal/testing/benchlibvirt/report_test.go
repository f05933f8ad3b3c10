//go:build benchlibvirt

package benchlibvirt

import (
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
)

// report is what the run prints at the end.
type report struct {
	versions           []string
	runs               int
	loadStart, loadEnd string
	cases              []*caseResult
}

func (r *report) write(w io.Writer) {
	fmt.Fprintf(w, "qsnapd vs libvirt, side by side (issue 13)\n")
	for _, v := range r.versions {
		fmt.Fprintf(w, "  %s\n", v)
	}
	fmt.Fprintf(w, "  %d runs per case and side after one warm-up, interleaved (the side going first alternates); TCG guests;\n", r.runs)
	fmt.Fprintf(w, "  %d CPUs, load average %s at the start, %s at the end\n", numCPU(), r.loadStart, r.loadEnd)
	fmt.Fprintf(w, "  times in ms: median [min..max]\n\n")

	fmt.Fprintf(w, "CLI to CLI: virsh vs qsnapctl snapshot-create-as --disk-only --atomic --no-metadata (--quiesce)\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "case\tlibvirt\tqsnapd\tqsnapd/libvirt\ttarget\t\tpaired\t")
	for _, c := range r.cases {
		ratio := median(c.qsnapd) / median(c.libvirt)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.2f\t≤ %.2f\t%s\t%.2f\t\n",
			c.title, spread(c.libvirt), spread(c.qsnapd), ratio, c.target, verdict(ratio <= c.target), pairedRatio(c))
	}
	tw.Flush()
	fmt.Fprintf(w, "  qsnapd/libvirt is the ratio of the medians (the target's measure); paired is the median of each\n")
	fmt.Fprintf(w, "  run's own ratio, its two snapshots taken back to back: far apart, they say the host's load moved\n")

	fmt.Fprintf(w, "\nqsnapd's own figures, from its JSON answers\n")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "case\tin-daemon total\tswitch\tfreeze window\t")
	for _, c := range r.cases {
		held := "-"
		if c.quiesce {
			held = spread(c.held)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", c.title, spread(c.total), spread(c.switched), held)
	}
	tw.Flush()

	for _, c := range r.cases {
		if !c.quiesce || len(c.rawFreeze) == 0 {
			continue
		}
		sum := make([]float64, len(c.rawFreeze))
		for i := range sum {
			sum[i] = c.rawFreeze[i] + c.rawThaw[i]
		}
		fmt.Fprintf(w, "\nraw qemu-ga on qsnapd's guest, a bare client (%d rounds before attaching, %d after detaching)\n", c.rawBefore, c.rawAfter)
		fmt.Fprintf(w, "  freeze %s, thaw %s, freeze+thaw %s\n", spread(c.rawFreeze), spread(c.rawThaw), spread(sum))
		limit := median(sum) + freezeSlackMS
		held := median(c.held)
		fmt.Fprintf(w, "  freeze window %.1f, target ≤ raw freeze+thaw + %.0f = %.1f: %s (%+.1f ms over the raw freeze+thaw)\n",
			held, freezeSlackMS, limit, verdict(held <= limit), held-median(sum))
	}
}

// pairedRatio is the median of qsnapd/libvirt over the runs, each run's
// two snapshots taken back to back.
func pairedRatio(c *caseResult) float64 {
	rs := make([]float64, len(c.qsnapd))
	for i := range rs {
		rs[i] = c.qsnapd[i] / c.libvirt[i]
	}
	return median(rs)
}

func verdict(met bool) string {
	if met {
		return "met"
	}
	return "missed"
}

// spread is "median [min..max]".
func spread(xs []float64) string {
	if len(xs) == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f [%.1f..%.1f]", median(xs), slices.Min(xs), slices.Max(xs))
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
