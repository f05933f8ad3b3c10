package api

import (
	"encoding/json"
	"reflect"
	"testing"
)

func TestFlagsJSON(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Flags
		wantErr bool
	}{
		{`["disk-only", "atomic"]`, FlagDiskOnly | FlagAtomic, false},
		{`["--Reuse-External", " quiesce "]`, FlagReuseExt | FlagQuiesce, false},
		{`208`, FlagDiskOnly | FlagQuiesce | FlagAtomic, false},
		{`null`, 0, false},
		{`[]`, 0, false},
		{`["turbo"]`, 0, true},
		{`-1`, 0, true},
		{`"disk-only"`, 0, true},
		{`[1]`, 0, true},
	} {
		var f Flags
		err := json.Unmarshal([]byte(tc.in), &f)
		if (err != nil) != tc.wantErr || err == nil && f != tc.want {
			t.Errorf("%s: got %v, %v; want %v (error %v)", tc.in, f, err, tc.want, tc.wantErr)
		}
	}
	out, err := json.Marshal(FlagDiskOnly | FlagAtomic | 1<<20)
	if err != nil || string(out) != `["disk-only","atomic"]` {
		t.Errorf("marshal: %s, %v", out, err)
	}
	if out, _ := json.Marshal(Flags(0)); string(out) != `[]` {
		t.Errorf("no flags: %s", out)
	}
}

// TestFlagNames: every known bit has one name, and names parse back.
func TestFlagNames(t *testing.T) {
	names := KnownFlags.Names()
	if len(names) != 10 {
		t.Fatalf("%d names: %v", len(names), names)
	}
	back, err := ParseFlags(names)
	if err != nil || back != KnownFlags {
		t.Errorf("ParseFlags(%v) = %#x, %v", names, uint32(back), err)
	}
	if got := (FlagDiskOnly | FlagAtomic).String(); got != "disk-only|atomic" {
		t.Errorf("String() = %q", got)
	}
	_, err = ParseFlags([]string{"turbo"})
	if err == nil || err.Error() != `invalid argument: unknown snapshot flag "turbo"` {
		t.Errorf("unknown name: %v", err)
	}
	if !reflect.DeepEqual(Flags(0).Names(), []string(nil)) {
		t.Errorf("no flags have names %v", Flags(0).Names())
	}
}

func TestDeleteFlags(t *testing.T) {
	if got := (DeleteChildren | DeleteChildrenOnly).String(); got != "children|children-only" {
		t.Errorf("String() = %q", got)
	}
	if got := DeleteFlags(0).String(); got != "none" {
		t.Errorf("no flags: %q", got)
	}
	for _, tc := range []struct {
		opts DeleteOptions
		want string
	}{
		{DeleteOptions{}, ""},
		{DeleteOptions{Flags: DeleteMetadataOnly}, "metadata-only=true"},
		{DeleteOptions{Flags: DeleteChildren, Bandwidth: 1 << 20, OpID: "x"}, "children=true&bandwidth=1048576"},
		{DeleteOptions{Flags: DeleteChildrenOnly | 1<<4}, "children-only=true&flags=16"},
	} {
		if got := tc.opts.query(); got != tc.want {
			t.Errorf("%+v: query %q, want %q", tc.opts, got, tc.want)
		}
	}
}
