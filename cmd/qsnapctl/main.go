// Command qsnapctl is the virsh-style command line client of qsnapd.
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
	fs := flag.NewFlagSet("qsnapctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: qsnapctl [flags]\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if *showVersion {
		fmt.Fprintf(stdout, "qsnapctl %s (%s)\n", version.String(), version.Go())
		return 0
	}
	fs.Usage()
	return 2
}
