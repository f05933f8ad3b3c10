package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/qsnapd/qsnapd/api"
)

// synopsis is a command's usage line, virsh style:
// "snapshot-dumpxml <domain> <snapshot>".
func (cmd *command) synopsis() string {
	parts := []string{cmd.name}
	for _, o := range cmd.opts {
		var p string
		switch {
		case o.positional:
			p = "<" + o.metavar + ">"
		case o.kind == kindBool:
			p = "--" + o.name
		default:
			p = "--" + o.name + " <" + o.metavar + ">"
		}
		if !o.required {
			p = "[" + p + "]"
		}
		if o.kind == kindList {
			p += "..."
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, " ")
}

// writeCommandHelp prints a command's help, after virsh's "help COMMAND".
func writeCommandHelp(w io.Writer, cmd *command) {
	fmt.Fprintf(w, "  NAME\n    %s - %s\n\n  SYNOPSIS\n    %s\n", cmd.name, cmd.summary, cmd.synopsis())
	if cmd.details != "" {
		fmt.Fprintf(w, "\n  DESCRIPTION\n%s", wrap(cmd.details, "    ", 76))
	}
	if len(cmd.opts) == 0 {
		return
	}
	fmt.Fprintf(w, "\n  OPTIONS\n")
	lefts := make([]string, len(cmd.opts))
	width := 0
	for i, o := range cmd.opts {
		switch {
		case o.positional:
			lefts[i] = "[--" + o.name + "] <" + o.metavar + ">"
		case o.kind == kindBool:
			lefts[i] = "--" + o.name
		default:
			lefts[i] = "--" + o.name + " <" + o.metavar + ">"
		}
		width = max(width, len(lefts[i]))
	}
	for i, o := range cmd.opts {
		fmt.Fprintf(w, "    %-*s  %s\n", width, lefts[i], o.help)
	}
	fmt.Fprintf(w, "\n    --json, --help are accepted by every command.\n")
}

// wrap breaks text into lines of at most width characters, each
// indented; a longer word has a line of its own.
func wrap(text, indent string, width int) string {
	var b strings.Builder
	line := indent
	for _, word := range strings.Fields(text) {
		if line != indent && len(line)+1+len(word) > width {
			b.WriteString(line + "\n")
			line = indent
		}
		if line != indent {
			line += " "
		}
		line += word
	}
	if line != indent {
		b.WriteString(line + "\n")
	}
	return b.String()
}

// writeHelp prints the global help: the options, then every command
// with its synopsis.
func writeHelp(w io.Writer) {
	fmt.Fprintf(w, `Usage: qsnapctl [--socket PATH] [--timeout DURATION] [--json] COMMAND [ARG]...
  or:  qsnapctl --version | --help | help [COMMAND]

qsnapctl is the virsh-style client of qsnapd, the snapshot daemon.
Options may come before or after the arguments; "--" ends the options.

Options:
  --socket PATH       daemon socket (default $%s, else %s)
  --timeout DURATION  how long to wait for the daemon's answer, such as 90s or 20m
                      (default %s for a command that changes state, %s for one
                      that reads and for each reading while following an operation)
  --json              print the API's JSON instead of text
  --version           print the version and exit
  --help, -h          print this help and exit

Commands:
`, socketEnv, api.DefaultSocket, changeTimeout, answerTimeout)
	for _, cmd := range commands {
		fmt.Fprintf(w, "    %-20s %s\n        %s\n", cmd.name, cmd.summary, cmd.synopsis())
	}
	fmt.Fprintf(w, "    %-20s %s\n        %s\n", "help", "Print help", "help [<command>]")
	fmt.Fprintf(w, "\nExit status: 0 on success, 1 on failure.\n")
}
