package virshscript

import (
	"regexp"
	"strings"
)

var (
	uuidRE = regexp.MustCompile(`(?i)\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b`)
	// A snapshot's creation time as virsh prints it (snapshot-list,
	// strftime "%Y-%m-%d %H:%M:%S %z").
	timeRE = regexp.MustCompile(`\b\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} [+-]\d{4}\b`)
	// A snapshot's creation time in its XML, seconds since the epoch.
	epochRE = regexp.MustCompile(`<creationTime>\d+</creationTime>`)
	// Trailing blanks: virsh pads its last table column and the tree's
	// indentation with spaces nobody sees.
	trailingRE = regexp.MustCompile(`(?m)[ \t]+$`)
	// The rule under a virsh table's header.
	ruleRE = regexp.MustCompile(`(?m)^-{3,}$`)
)

// Normalize makes one server's output comparable with another's: it
// replaces the image directory dir with Placeholder, every UUID with
// @UUID@, virsh's snapshot creation times with @TIME@, the XML's
// <creationTime> with @EPOCH@, and drops blanks at the ends of lines.
// Everything else stays: names, order, messages, blank lines and column
// widths (so a table whose time column was replaced keeps its header's
// width, which tells a server that prints another time format).
//
// One exception: virsh sizes a table's rule to its widest row, so in an
// output that holds dir (domblklist's paths) the rule depends on the
// length of the test's temporary directory. Such rules are resized as if
// the directory were spelled Placeholder, assuming the widest row holds
// it once, as domblklist's do. virsh computes the rule from the cells,
// which stay, so this hides nothing a server sent.
func Normalize(s, dir string) string {
	if dir != "" && strings.Contains(s, dir) {
		by := len(dir) - len(Placeholder)
		s = ruleRE.ReplaceAllStringFunc(s, func(rule string) string {
			return strings.Repeat("-", max(len(rule)-by, 3))
		})
		s = strings.ReplaceAll(s, dir, Placeholder)
	}
	s = uuidRE.ReplaceAllString(s, "@UUID@")
	s = timeRE.ReplaceAllString(s, "@TIME@")
	s = epochRE.ReplaceAllString(s, "<creationTime>@EPOCH@</creationTime>")
	return trailingRE.ReplaceAllString(s, "")
}
