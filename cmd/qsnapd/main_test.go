package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestFlags(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		wantCode int
		wantOut  string
		wantErr  string
	}{
		{[]string{"--version"}, 0, "qsnapd ", ""},
		{[]string{"--help"}, 0, "-version", ""},
		{[]string{"--help"}, 0, "-libvirt-socket-ro", ""},
		{[]string{"--libvirt-socket", "libvirt-sock"}, 2, "", `libvirt_socket: "libvirt-sock" is not an absolute path`},
		{[]string{"--libvirt-socket-ro", "/run/qsnapd/qsnapd.sock"}, 2, "", "libvirt_socket_ro: must differ from socket"},
		{[]string{"--bogus"}, 2, "", "-version"},
		{[]string{"--bogus"}, 2, "", "flag provided but not defined"},
	} {
		var out, errOut bytes.Buffer
		code := run(tc.args, &out, &errOut)
		if code != tc.wantCode || !strings.Contains(out.String(), tc.wantOut) || !strings.Contains(errOut.String(), tc.wantErr) {
			t.Errorf("run(%v) = %d, stdout %q, stderr %q; want %d, %q, %q",
				tc.args, code, out.String(), errOut.String(), tc.wantCode, tc.wantOut, tc.wantErr)
		}
	}
}

func TestConfigPath(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--config", "/etc/q.toml"}, "/etc/q.toml"},
		{[]string{"-config=/a.toml", "--log-level", "debug"}, "/a.toml"},
		{[]string{"--metrics-listen", "", "--config", "/b.toml"}, "/b.toml"},
		{[]string{"--", "--config", "/c.toml"}, ""},
		{[]string{"--state-dir", "/x"}, ""},
	} {
		if got := configPath(tc.args); got != tc.want {
			t.Errorf("configPath(%q) = %q, want %q", tc.args, got, tc.want)
		}
	}
}
