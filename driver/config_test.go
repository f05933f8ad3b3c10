package driver

import (
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
