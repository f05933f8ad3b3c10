package driver

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/qsnapd/qsnapd/errkind"
	"github.com/qsnapd/qsnapd/guestagent"
	"github.com/qsnapd/qsnapd/transaction"
)

// TestKind sorts errors as the driver returns them: wrapped, joined,
// inside an OpError, and the agent's errors as agentErr files them.
func TestKind(t *testing.T) {
	agentReply := &guestagent.Error{Command: "guest-fsfreeze-freeze", Class: "GenericError", Desc: "hook failed"}
	for _, tc := range []struct {
		name string
		err  error
		want errkind.Kind
	}{
		{"nil", nil, errkind.OK},
		{"unknown", errors.New("something unforeseen"), errkind.InternalError},
		{"context", context.DeadlineExceeded, errkind.InternalError},
		{"invalid arg", fmt.Errorf("%w: CURRENT requires REDEFINE", ErrInvalidArg), errkind.InvalidArg},
		{"no domain", fmt.Errorf("%w: no domain named 'x'", ErrNoDomain), errkind.NoDomain},
		{"no snapshot", fmt.Errorf("%w: 's'", ErrNoSnapshot), errkind.NoDomainSnapshot},
		{"snapshot exists", fmt.Errorf("%w: 's'", ErrSnapshotExists), errkind.SnapshotExists},
		{"domain exists", fmt.Errorf("%w: 'vm1'", ErrDomainExists), errkind.DomExist},
		{"busy", fmt.Errorf("%w: %w", ErrBusy, context.DeadlineExceeded), errkind.OperationTimeout},
		{"unsupported", fmt.Errorf("%w: LIVE", ErrUnsupported), errkind.OperationUnsupported},
		{"disconnected", fmt.Errorf("%w: EOF", ErrDisconnected), errkind.Unavailable},
		{"closed", ErrClosed, errkind.Unavailable},
		{"operation invalid", fmt.Errorf("%w: frozen", ErrOperationInvalid), errkind.OperationInvalid},
		{"operation failed", fmt.Errorf("%w: journal: disk full", ErrOperationFailed), errkind.OperationFailed},
		{"quiesce", fmt.Errorf("%w: deadline-exceeded: 12s", ErrQuiesce), errkind.OperationFailed},

		{"agent not configured", agentErr(guestagent.ErrNotConfigured), errkind.AgentNotConfigured},
		{"agent not connected", agentErr(fmt.Errorf("dial: %w", guestagent.ErrNotConnected)), errkind.AgentUnresponsive},
		{"agent unresponsive", agentErr(guestagent.ErrUnresponsive), errkind.AgentUnresponsive},
		{"agent disabled", agentErr(guestagent.ErrDisabled), errkind.OperationUnsupported},
		{"agent error reply", agentErr(agentReply), errkind.OperationFailed},
		{"agent's other error", agentErr(errors.New("odd")), errkind.InternalError},
		// A required quiesce that failed: the agent's kind wins.
		{"quiesce, agent unresponsive", fmt.Errorf("%w: freeze: %w", ErrQuiesce, agentErr(guestagent.ErrUnresponsive)), errkind.AgentUnresponsive},
		{"quiesce, agent disabled", fmt.Errorf("%w: %w", ErrQuiesce, agentErr(guestagent.ErrDisabled)), errkind.OperationUnsupported},
		{"quiesce, agent reply", fmt.Errorf("%w: freeze: %w", ErrQuiesce, agentErr(agentReply)), errkind.OperationFailed},
		{"quiesce, frozen already", fmt.Errorf("%w: %w", ErrQuiesce, fmt.Errorf("%w: frozen by fsfreeze", ErrOperationInvalid)), errkind.OperationInvalid},
		// An operation's failure with the disks' outcomes.
		{"op error", &OpError{OpID: "op1", Step: StepSwitch, Disks: []transaction.Outcome{{Target: "vda", Result: transaction.DiskRolledBack}},
			Err: fmt.Errorf("%w: switch: %w", ErrOperationFailed, errors.New("QMP said no"))}, errkind.OperationFailed},
		{"op error, quiesce", &OpError{OpID: "op1", Step: StepFreeze,
			Err: fmt.Errorf("%w: freeze: %w", ErrQuiesce, agentErr(guestagent.ErrUnresponsive))}, errkind.AgentUnresponsive},
		// QEMU away past the reconnect wait: whatever the cause says.
		{"outcome unknown", &OpError{OpID: "op1", Step: StepSwitch,
			Err: fmt.Errorf("%w: operation op1: %w", ErrOutcomeUnknown, fmt.Errorf("%w: EOF", ErrDisconnected))}, errkind.OutcomeUnknown},
		{"outcome unknown, delete", &DeleteError{OpID: "op2", Step: StepFinalize,
			Err: fmt.Errorf("%w: operation op2: %w", ErrOutcomeUnknown, ErrOperationFailed)}, errkind.OutcomeUnknown},
		{"joined", errors.Join(errors.New("x"), fmt.Errorf("%w: y", ErrNoDomain)), errkind.NoDomain},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Kind(tc.err); got != tc.want {
				t.Errorf("Kind(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

// TestAgentErrKeepsTheAgent: the agent's error stays in the chain and
// gives the message, so logs and indications read as before.
func TestAgentErrKeepsTheAgent(t *testing.T) {
	inner := fmt.Errorf("thaw: %w", guestagent.ErrUnresponsive)
	err := agentErr(inner)
	if err.Error() != inner.Error() {
		t.Errorf("message %q, want %q", err, inner)
	}
	if !errors.Is(err, guestagent.ErrUnresponsive) || !errors.Is(err, ErrAgentUnresponsive) {
		t.Errorf("%v: want both the agent's and the driver's sentinel", err)
	}
}

// TestKinds: every kind the driver reports is a specific one.
func TestKinds(t *testing.T) {
	seen := map[errkind.Kind]bool{}
	for _, k := range Kinds() {
		if k == errkind.OK || k == errkind.InternalError || k == errkind.OperationDenied {
			t.Errorf("the driver reports %v", k)
		}
		if seen[k] {
			t.Errorf("%v twice", k)
		}
		seen[k] = true
	}
}

// TestSentinelNamed: a kind journaled by name reads back as the same
// kind; a name the driver does not know reads as operation-failed.
func TestSentinelNamed(t *testing.T) {
	for _, k := range Kinds() {
		if got := Kind(sentinelNamed(k.String())); got != k {
			t.Errorf("%v reads back as %v", k, got)
		}
	}
	for _, name := range []string{"", "Exploded"} {
		if got := Kind(sentinelNamed(name)); got != errkind.OperationFailed {
			t.Errorf("%q reads back as %v", name, got)
		}
	}
}

// TestDetail: the kind's word goes, the rest of the message stays; a
// message that does not start with one stays whole.
func TestDetail(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("%w: CURRENT requires REDEFINE", ErrInvalidArg), "CURRENT requires REDEFINE"},
		{fmt.Errorf("%w: domain moment s1 already exists", ErrSnapshotExists), "domain moment s1 already exists"},
		{fmt.Errorf("%w: quiesce: %w", ErrQuiesce, guestagent.ErrUnresponsive), "quiesce: " + guestagent.ErrUnresponsive.Error()},
		{fmt.Errorf("prepare: %w", ErrOperationFailed), "prepare: operation failed"},
		{errors.New("no kind at all"), "no kind at all"},
	} {
		if got := Detail(tc.err); got != tc.want {
			t.Errorf("Detail(%q) = %q, want %q", tc.err, got, tc.want)
		}
	}
}
