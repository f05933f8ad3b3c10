package driver

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestValidateFillsDefaultConfig(t *testing.T) {
	c := Config{StateDir: "/var/lib/q"}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig()
	want.StateDir, want.Events = c.StateDir, NopEvents{}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got  %+v\nwant %+v", c, want)
	}
	// A value that is set stays.
	c = Config{StateDir: "/var/lib/q", MaxFreeze: time.Second, Transaction: "never"}
	if err := c.Validate(); err != nil || c.MaxFreeze != time.Second || c.Transaction != "never" {
		t.Errorf("set values changed: %+v, %v", c, err)
	}
	c = Config{StateDir: "/var/lib/q", ThawTimeout: -time.Second}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "thaw_timeout") {
		t.Errorf("negative thaw_timeout: got %v", err)
	}
}

func TestValidateDomainConfig(t *testing.T) {
	ok := DomainConfig{Name: "web-01 é", QMP: "/run/q/web.qmp", Agent: "/run/q/web.qga"}
	if err := validateDomainConfig(ok); err != nil {
		t.Errorf("%+v refused: %v", ok, err)
	}
	for _, tc := range []struct {
		name string
		cfg  DomainConfig
	}{
		{"empty name", DomainConfig{QMP: "/q"}},
		{"long name", DomainConfig{Name: strings.Repeat("a", 256), QMP: "/q"}},
		{"slash", DomainConfig{Name: "a/b", QMP: "/q"}},
		{"newline", DomainConfig{Name: "a\nb", QMP: "/q"}},
		{"NUL", DomainConfig{Name: "a\x00b", QMP: "/q"}},
		{"tab", DomainConfig{Name: "a\tb", QMP: "/q"}},
		{"escape", DomainConfig{Name: "\x1b[31mred", QMP: "/q"}},
		{"DEL", DomainConfig{Name: "a\x7fb", QMP: "/q"}},
		{"relative QMP", DomainConfig{Name: "a", QMP: "q.sock"}},
		{"relative agent", DomainConfig{Name: "a", QMP: "/q", Agent: "qga.sock"}},
	} {
		if err := validateDomainConfig(tc.cfg); !errors.Is(err, ErrInvalidArg) {
			t.Errorf("%s: got %v, want ErrInvalidArg", tc.name, err)
		}
	}
}
