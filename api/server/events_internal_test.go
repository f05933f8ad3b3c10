package server

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/internal/eventlog"
)

// TestToEvent: each driver event as the wire has it.
func TestToEvent(t *testing.T) {
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.FixedZone("X", 3600))
	failed := fmt.Errorf("%w: boom", driver.ErrOperationFailed)
	for _, tc := range []struct {
		typ  string
		data any
		want string
	}{
		{driver.EventSnapshotCreated, driver.SnapshotEvent{Name: "s1", Mode: "atomic", Result: driver.ResultSuccess, Quiesced: true,
			Freeze: 12500 * time.Microsecond, Duration: 40 * time.Millisecond},
			`{"snapshot":"s1","mode":"atomic","result":"success","quiesced":true,"freeze_ms":12.5,"duration_ms":40}`},
		{driver.EventSnapshotFailed, driver.SnapshotEvent{Name: "s2", Mode: "sequential", Result: driver.ResultRolledBack, Err: failed},
			`{"snapshot":"s2","mode":"sequential","result":"rolled-back","duration_ms":0,"error":{"code":"operation-failed","message":"operation failed: boom"}}`},
		{driver.EventSnapshotDeleted, driver.DeleteEvent{Result: driver.ResultCancelled, Merged: true, Err: errors.New("x")},
			`{"snapshots":[],"merged":true,"result":"cancelled","duration_ms":0,"error":{"code":"internal-error","message":"x"}}`},
		{driver.EventMergeProgress, driver.MergeProgressEvent{Done: 3, Total: 4}, `{"done_bytes":3,"total_bytes":4,"percent":75}`},
		{driver.EventGuestFrozen, driver.GuestFrozenEvent{Owner: driver.OwnerSnapshot}, `{"owner":"snapshot"}`},
		{driver.EventGuestThawed, driver.GuestThawedEvent{FrozenFor: 1500 * time.Millisecond}, `{"frozen_for_ms":1500}`},
		{driver.EventDomainConnected, driver.DomainStateEvent{QEMUVersion: "7.2.0"}, `{"qemu_version":"7.2.0"}`},
		{driver.EventDomainDisconnected, driver.DomainStateEvent{Reason: "detached"}, `{"reason":"detached"}`},
		{driver.EventOperationState, driver.OperationStateEvent{Kind: driver.KindSnapshot, State: "failed"},
			`{"kind":"snapshot-create","state":"failed"}`},
		{driver.EventOperationState, driver.OperationStateEvent{State: "succeeded"}, `{"state":"succeeded"}`},
	} {
		e := toEvent(eventlog.Event{Seq: 7, Time: at, Type: tc.typ, Domain: "vm1", Operation: "op", Data: tc.data})
		if string(e.Data) != tc.want || e.Seq != 7 || e.Type != tc.typ || e.Domain != "vm1" || e.Operation != "op" ||
			e.Time.Location() != time.UTC || !e.Time.Equal(at) {
			t.Errorf("%s: %+v, data %s; want %s", tc.typ, e, e.Data, tc.want)
		}
	}
}
