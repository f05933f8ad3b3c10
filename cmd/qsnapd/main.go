// Command qsnapd is the snapshot daemon: it takes live external
// disk-only snapshots of running QEMU guests for management frontends.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/qsnapd/qsnapd/internal/version"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("qsnapd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: qsnapd [flags]\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if *showVersion {
		fmt.Fprintf(stdout, "qsnapd %s (%s)\n", version.String(), version.Go())
		return 0
	}
	fs.Usage()
	return 2
}
