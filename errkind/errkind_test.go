package errkind

import "testing"

// TestNumbers pins each kind to its virErrorNumber, as
// include/libvirt/virterror.h defines it: a libvirt client decides on
// these numbers.
func TestNumbers(t *testing.T) {
	want := map[Kind]int{
		OK:                   0,  // VIR_ERR_OK
		InternalError:        1,  // VIR_ERR_INTERNAL_ERROR
		InvalidArg:           8,  // VIR_ERR_INVALID_ARG
		OperationFailed:      9,  // VIR_ERR_OPERATION_FAILED
		SnapshotExists:       9,  // VIR_ERR_OPERATION_FAILED
		DomExist:             28, // VIR_ERR_DOM_EXIST
		OperationDenied:      29, // VIR_ERR_OPERATION_DENIED
		NoDomain:             42, // VIR_ERR_NO_DOMAIN
		OperationInvalid:     55, // VIR_ERR_OPERATION_INVALID
		Unavailable:          55, // VIR_ERR_OPERATION_INVALID
		OperationTimeout:     68, // VIR_ERR_OPERATION_TIMEOUT
		NoDomainSnapshot:     72, // VIR_ERR_NO_DOMAIN_SNAPSHOT
		OperationUnsupported: 84, // VIR_ERR_OPERATION_UNSUPPORTED
		AgentUnresponsive:    86, // VIR_ERR_AGENT_UNRESPONSIVE
		AgentNotConfigured:   74, // VIR_ERR_ARGUMENT_UNSUPPORTED
		NoOperation:          8,  // VIR_ERR_INVALID_ARG
		OutcomeUnknown:       68, // VIR_ERR_OPERATION_TIMEOUT
		OperationIDReused:    8,  // VIR_ERR_INVALID_ARG
		OperationAborted:     78, // VIR_ERR_OPERATION_ABORTED
	}
	if len(want) != len(All()) {
		t.Errorf("%d kinds pinned, %d defined", len(want), len(All()))
	}
	for _, k := range All() {
		if got, ok := want[k]; !ok || k.Number() != got {
			t.Errorf("%v.Number() = %d, want %d", k, k.Number(), got)
		}
		if k.String() == "" {
			t.Errorf("kind %d has no name", uint8(k))
		}
	}
	if got := Kind(200).Number(); got != 1 {
		t.Errorf("an unknown kind is number %d, want VIR_ERR_INTERNAL_ERROR (1)", got)
	}
}
