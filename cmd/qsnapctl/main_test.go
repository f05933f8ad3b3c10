package main

import (
	"runtime"
	"strings"
	"testing"
)

func TestCommandLine(t *testing.T) {
	t.Setenv(socketEnv, "/nonexistent/qsnapd.sock")
	for _, tc := range []struct {
		name     string
		argv     []string
		wantCode int
		wantOut  string // part of stdout
		wantErr  string // stderr exactly
	}{
		{name: "version", argv: []string{"--version"}, wantOut: "qsnapctl "},
		{name: "version names Go", argv: []string{"--version"}, wantOut: " (" + runtime.Version() + ")\n"},
		{name: "help", argv: []string{"--help"}, wantOut: "snapshot-create-as <domain> [<name>] [<description>]"},
		{name: "-h", argv: []string{"-h"}, wantOut: "Usage: qsnapctl"},
		{name: "help names --timeout and the defaults", argv: []string{"--help"},
			wantOut: "  --timeout DURATION  how long to wait for the daemon's answer, such as 90s or 20m\n" +
				"                      (default 10m0s for a command that changes state, 30s for one\n"},
		{name: "help lists flags", argv: []string{"help"}, wantOut: "[--diskspec <spec>]..."},
		{name: "help VERB", argv: []string{"help", "snapshot-list"}, wantOut: "    --tree "},
		{name: "VERB --help", argv: []string{"domfsfreeze", "--help"}, wantOut: "domfsfreeze <domain> [--mountpoint <path>]... [--timeout <duration>]"},
		{name: "VERB --help ignores missing arguments", argv: []string{"snapshot-dumpxml", "--help"}, wantOut: "SYNOPSIS"},
		{name: "help of a verb with a description", argv: []string{"help", "snapshot-delete"},
			wantOut: "\n  DESCRIPTION\n    Each disk's overlay is merged into the image below it, all disks or\n"},
		{name: "help lists delete's options", argv: []string{"help"},
			wantOut: "snapshot-delete <domain> [<snapshot>] [--current] [--children] [--children-only] [--metadata] [--bandwidth <bytes/s>] [--no-wait]"},

		{name: "unknown verb", argv: []string{"snapshot-revert", "vm1"}, wantCode: 1, wantErr: "error: unknown command: 'snapshot-revert'\n"},
		{name: "help of an unknown verb", argv: []string{"help", "bogus"}, wantCode: 1, wantErr: "error: command 'bogus' doesn't exist\n"},
		{name: "no verb", argv: nil, wantCode: 1, wantErr: "error: no command given; run 'qsnapctl help' for the list\n"},
		{name: "unknown global flag", argv: []string{"--bogus"}, wantCode: 1, wantErr: "error: unknown option --bogus\n"},
		{name: "unknown verb flag", argv: []string{"list", "--bogus"}, wantCode: 1, wantErr: "error: command 'list' doesn't support option --bogus\n"},
		{name: "missing argument", argv: []string{"domblklist"}, wantCode: 1, wantErr: "error: command 'domblklist' requires <domain> option\n"},
		{name: "bad diskspec", argv: []string{"snapshot-create-as", "vm1", "--diskspec", "vda,snapshot=maybe"}, wantCode: 1,
			wantErr: "error: unable to parse diskspec 'vda,snapshot=maybe': snapshot must be external or no, not 'maybe'\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, tc.argv...)
			if code != tc.wantCode || !strings.Contains(stdout, tc.wantOut) || stderr != tc.wantErr {
				t.Errorf("qsnapctl %q = exit %d, stdout %q, stderr %q; want %d, %q, %q",
					tc.argv, code, stdout, stderr, tc.wantCode, tc.wantOut, tc.wantErr)
			}
		})
	}
}

// TestVersionVerb asks the daemon too.
func TestVersionVerb(t *testing.T) {
	f := newTestDaemon(t)
	code, stdout, stderr := runCLI(t, "--socket", f.socket, "version")
	if code != 0 || !strings.HasPrefix(stdout, "Client: qsnapctl ") ||
		!strings.HasSuffix(stdout, "Daemon: qsnapd 1.2.3 (go1.26.0), API v1\n") {
		t.Errorf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}
