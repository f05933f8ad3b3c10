package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/qsnapd/qsnapd/api"
)

// pollInterval is how often a followed operation is read.
const pollInterval = 500 * time.Millisecond

// errLeft is leaving an operation to run on without waiting for it.
var errLeft = errors.New("interrupted; not waiting any longer")

// follow reads an operation until it ends, showing its progress, and
// returns it as it ended. Each reading is bounded as a read is; the wait
// itself is not, since a merge takes as long as its data.
//
// With cancel, the first interrupt asks the daemon to cancel the
// operation and goes on waiting for its end; a second one, or SIGTERM,
// leaves it running. Without cancel, the first interrupt leaves.
func (c *cli) follow(ctx context.Context, id string, cancel bool) (api.Operation, error) {
	bar := &progressView{w: c.stdout, tty: c.tty, quiet: c.json}
	defer bar.end()
	tick := time.NewTicker(c.poll)
	defer tick.Stop()
	interrupts := 0
	for {
		rctx, done := c.bounded(ctx, false) // a reading changes nothing
		op, err := c.client.Operation(rctx, id)
		done()
		if err != nil {
			if errors.As(err, new(*api.Error)) {
				return op, err
			}
			return op, &lostOpError{opID: id, err: err}
		}
		bar.show(op)
		if op.State != api.OpRunning {
			return op, nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return op, &lostOpError{opID: id, err: ctx.Err()}
		case sig := <-c.signals:
			interrupts++
			bar.breakLine()
			if !cancel || interrupts > 1 || sig == syscall.SIGTERM {
				return op, &lostOpError{opID: id, err: errLeft}
			}
			c.cancel(ctx, id)
		}
	}
}

// cancel asks the daemon to cancel an operation, and says on stderr
// what came of it; the operation's end says the rest.
func (c *cli) cancel(ctx context.Context, id string) {
	rctx, done := c.bounded(ctx, true) // a cancel changes state
	defer done()
	if _, err := c.client.CancelOperation(rctx, id); err != nil {
		fmt.Fprintf(c.stderr, "error: cannot cancel: %s\n", explain(err))
		fmt.Fprintf(c.stderr, "waiting for operation %s to end; interrupt again to leave it running\n", id)
		return
	}
	fmt.Fprintf(c.stderr, "cancelling operation %s; interrupt again to leave it running\n", id)
}

// progressView shows an operation's progress: a bar redrawn in place on
// a terminal, else a line each time the whole percentage changes, and
// nothing with --json, whose stdout is the answer alone. An operation
// that reports no progress shows nothing.
type progressView struct {
	w     io.Writer
	tty   bool
	quiet bool

	drawn bool // a bar is on the current line
	last  int  // the percentage last printed, -1 for none
	shown bool // anything was shown
}

// barWidth is the bar's width in characters, between its brackets.
const barWidth = 30

func (p *progressView) show(op api.Operation) {
	if p.quiet || op.Progress == nil {
		return
	}
	pct := percent(op.Progress.DoneBytes, op.Progress.TotalBytes)
	amount := fmt.Sprintf("%s of %s", humanBytes(op.Progress.DoneBytes), humanBytes(op.Progress.TotalBytes))
	if !p.tty {
		if p.shown && pct == p.last {
			return
		}
		fmt.Fprintf(p.w, "progress: %3d%% (%s)\n", pct, amount)
		p.shown, p.last = true, pct
		return
	}
	filled := pct * barWidth / 100
	bar := strings.Repeat("=", filled)
	if filled < barWidth {
		bar += ">" + strings.Repeat(" ", barWidth-filled-1)
	}
	// \r and clear to the end of the line: the amount may get shorter.
	fmt.Fprintf(p.w, "\r[%s] %3d%%  %s\x1b[K", bar, pct, amount)
	p.drawn, p.shown, p.last = true, true, pct
}

// breakLine ends the bar's line, so that a message can follow; the
// next reading draws the bar again below it.
func (p *progressView) breakLine() {
	if p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}

// end leaves the bar as it was last drawn.
func (p *progressView) end() { p.breakLine() }

// percent is done of total, from 0 to 100; 0 while the total is not
// known.
func percent(done, total int64) int {
	if total <= 0 || done <= 0 {
		return 0
	}
	if done >= total {
		return 100
	}
	return int(done * 100 / total)
}

// humanBytes writes a size in binary units, as "1.5 GiB".
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	v, i := float64(n)/unit, 0
	for v >= unit && i < 4 {
		v /= unit
		i++
	}
	return fmt.Sprintf("%.1f %ciB", v, "KMGTP"[i])
}

// parseBandwidth reads --bandwidth: bytes per second, with an optional
// suffix as virsh scales integers: K, M, G, T (or KiB, MiB, ...) are
// powers of 1024, KB, MB, GB, TB powers of 1000; a trailing "/s" is
// allowed.
func parseBandwidth(s string) (int64, error) {
	bad := usagef("--bandwidth must be bytes per second, such as 1048576 or 50M, not '%s'", s)
	v := strings.TrimSuffix(strings.TrimSpace(s), "/s")
	i := 0
	for i < len(v) && v[i] >= '0' && v[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, bad
	}
	n, err := strconv.ParseInt(v[:i], 10, 64)
	if err != nil {
		return 0, bad
	}
	scale := int64(1)
	switch suffix := strings.ToLower(v[i:]); suffix {
	case "", "b":
	default:
		pos := strings.IndexByte("kmgt", suffix[0])
		if pos < 0 {
			return 0, bad
		}
		base := int64(1024)
		switch suffix[1:] {
		case "", "ib":
		case "b":
			base = 1000
		default:
			return 0, bad
		}
		for range pos + 1 {
			scale *= base
		}
	}
	if n > (1<<63-1)/scale {
		return 0, bad
	}
	return n * scale, nil
}

// stdoutIsTerminal says whether progress may be drawn in place.
func stdoutIsTerminal() bool { return isTerminal(os.Stdout) }
