package virshscript

import "testing"

func TestNormalize(t *testing.T) {
	const dir = "/tmp/qslv123"
	tests := []struct {
		name, in, want string
	}{
		{"directory", " vda      /tmp/qslv123/vda.s1.qcow2\n", " vda      @DIR@/vda.s1.qcow2\n"},
		{"rule resized with the directory", " Target   Source\n---------------------------------------\n vda      /tmp/qslv123/vda.qcow2\n",
			" Target   Source\n--------------------------------\n vda      @DIR@/vda.qcow2\n"},
		{"rule kept without the directory", " Name   Creation Time   State\n-------------------------------\n",
			" Name   Creation Time   State\n-------------------------------\n"},
		{"other directory stays", "/tmp/qslv124/vda.qcow2\n", "/tmp/qslv124/vda.qcow2\n"},
		{"uuid", "<uuid>2934eb22-0267-4DBF-9784-d2cc339fa6b3</uuid>", "<uuid>@UUID@</uuid>"},
		{"time keeps columns", " s1     2026-12-01 18:33:27 +0000   disk-snapshot\n", " s1     @TIME@   disk-snapshot\n"},
		{"epoch", "  <creationTime>1796150007</creationTime>\n", "  <creationTime>@EPOCH@</creationTime>\n"},
		{"trailing blanks", "s1\n  |\n  +- s2\t \n    \n\n", "s1\n  |\n  +- s2\n\n\n"},
		{"names and messages stay", "error: Domain snapshot not found: no domain snapshot with matching name 'nosuch'\n",
			"error: Domain snapshot not found: no domain snapshot with matching name 'nosuch'\n"},
		{"a date alone is no time", "2026-12-01\n", "2026-12-01\n"},
		{"no final newline kept", "s1", "s1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Normalize(tt.in, dir); got != tt.want {
				t.Errorf("Normalize(%q)\n got %q\nwant %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestNormalizeEmptyDir(t *testing.T) {
	if got := Normalize("/a/b\n", ""); got != "/a/b\n" {
		t.Errorf("an empty dir replaced something: %q", got)
	}
}
