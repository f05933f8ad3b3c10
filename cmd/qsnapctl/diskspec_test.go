package main

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestParseDiskspec(t *testing.T) {
	for _, tc := range []struct {
		spec    string
		want    diskSpec
		wantErr string // part of the message
	}{
		{spec: "vda", want: diskSpec{Disk: "vda"}},
		{spec: "vda,snapshot=no", want: diskSpec{Disk: "vda", Snapshot: "no"}},
		{spec: "vda,snapshot=external,driver=qcow2,stype=file,file=/img/a.qcow2",
			want: diskSpec{Disk: "vda", Snapshot: "external", Driver: "qcow2", SType: "file", File: "/img/a.qcow2"}},
		{spec: "vda,file=/img/a.qcow2,driver=qcow2", want: diskSpec{Disk: "vda", Driver: "qcow2", File: "/img/a.qcow2"}},
		{spec: "vda,file=/img/a,,b.qcow2", want: diskSpec{Disk: "vda", File: "/img/a,b.qcow2"}},
		{spec: "vda,file=/img/a,,", want: diskSpec{Disk: "vda", File: "/img/a,"}},
		{spec: "vda,file=,,,,a", want: diskSpec{Disk: "vda", File: ",,a"}},
		{spec: "v,,da,file=/a", want: diskSpec{Disk: "v,da", File: "/a"}},
		{spec: "vda,,,file=/a", want: diskSpec{Disk: "vda,", File: "/a"}},
		{spec: "vda,file=/a=b", want: diskSpec{Disk: "vda", File: "/a=b"}},
		{spec: "vda,stype=block,file=/dev/sdb", want: diskSpec{Disk: "vda", SType: "block", File: "/dev/sdb"}},

		{spec: "", wantErr: "empty disk name"},
		{spec: ",snapshot=no", wantErr: "empty disk name"},
		{spec: "vda,bogus=1", wantErr: "unknown key 'bogus'"},
		{spec: "vda,File=/a", wantErr: "unknown key 'File'"},
		{spec: "vda,snapshot=internal", wantErr: "snapshot must be external or no, not 'internal'"},
		{spec: "vda,snapshot=", wantErr: "snapshot must be external or no, not ''"},
		{spec: "vda,stype=network", wantErr: "unknown storage type 'network'"},
		{spec: "vda,/img/a.qcow2", wantErr: "'/img/a.qcow2' is not key=value"},
		{spec: "vda,", wantErr: "'' is not key=value"},
		{spec: "vda,file=/a,file=/b", wantErr: "file given twice"},
		{spec: "vda,driver=", wantErr: "empty driver"},
		{spec: "vda,file=", wantErr: "empty file"},
	} {
		got, err := parseDiskspec(tc.spec)
		if tc.wantErr != "" {
			if !errors.Is(err, errDiskspec) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("parseDiskspec(%q) error = %v, want %q", tc.spec, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseDiskspec(%q): %v", tc.spec, err)
			continue
		}
		if got != tc.want {
			t.Errorf("parseDiskspec(%q) = %+v, want %+v", tc.spec, got, tc.want)
		}
	}
}

func TestSplitEscaped(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", []string{""}},
		{"a", []string{"a"}},
		{"a,b", []string{"a", "b"}},
		{"a,,b", []string{"a,b"}},
		{"a,,,b", []string{"a,", "b"}},
		{"a,,,,b", []string{"a,,b"}},
		{",", []string{"", ""}},
		{",,", []string{","}},
		{"a,", []string{"a", ""}},
	} {
		if got := splitEscaped(tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("splitEscaped(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestDiskspecString(t *testing.T) {
	d := diskSpec{Disk: "v,da", Snapshot: "external", Driver: "qcow2", SType: "file", File: "/img/a,b"}
	const want = "v,,da,snapshot=external,driver=qcow2,stype=file,file=/img/a,,b"
	if got := d.String(); got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

// FuzzDiskspec: parsing never panics, and a parsed spec written back
// with escaping parses to the same value.
func FuzzDiskspec(f *testing.F) {
	for _, s := range []string{
		"vda", "vda,snapshot=no", "vda,snapshot=external,driver=qcow2,stype=file,file=/img/a.qcow2",
		"vda,file=/img/a,,b.qcow2", "v,,da,,,file=,,,,x,,", "vda,stype=block,file=/dev/sdb", ",", ",,", "vda,,",
		"vda,file=/a,file=/b", "vda,bogus=1", "=,=,=", "vda,driver=raw,file=\x00\xff",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		d, err := parseDiskspec(spec)
		if err != nil {
			if !errors.Is(err, errDiskspec) {
				t.Fatalf("parseDiskspec(%q) error %v is not errDiskspec", spec, err)
			}
			return
		}
		again := d.String()
		d2, err := parseDiskspec(again)
		if err != nil {
			t.Fatalf("parseDiskspec(%q) = %+v, but its rendering %q does not parse: %v", spec, d, again, err)
		}
		if d2 != d {
			t.Fatalf("parseDiskspec(%q) = %+v; rendered %q parses to %+v", spec, d, again, d2)
		}
		// The XML disk must build too.
		if _, err := snapshotXML("s", "", []diskSpec{d}); err != nil {
			t.Fatalf("snapshotXML(%+v): %v", d, err)
		}
	})
}
