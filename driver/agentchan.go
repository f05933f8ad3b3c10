package driver

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// Agent channel modes of a domain (DomainConfig.AgentChannel).
const (
	// AgentHold keeps one connection to the agent open between
	// operations, as libvirt does: a new connection costs the guest a
	// resync (about 100 ms with qemu-ga on Linux) that a held one pays
	// once. The default.
	AgentHold = "hold"
	// AgentPerOperation opens the channel for each operation and closes
	// it after, for hosts where another manager shares the socket (QEMU
	// serves one client at a time).
	AgentPerOperation = "per-operation"
)

// agentChannel is a configured mode, the default for none.
func agentChannel(mode string) string {
	if mode == "" {
		return AgentHold
	}
	return mode
}

func checkAgentChannel(mode string) error {
	switch mode {
	case "", AgentHold, AgentPerOperation:
		return nil
	}
	return fmt.Errorf("%w: agent channel must be %s or %s, not '%s'", ErrInvalidArg, AgentHold, AgentPerOperation, mode)
}

// holdsAgent reports whether the domain keeps its agent channel open.
func (dom *Domain) holdsAgent() bool {
	return dom.cfg.Agent != "" && agentChannel(dom.cfg.AgentChannel) == AgentHold
}

// releaseAgent ends an operation's use of the agent channel: a
// per-operation channel closes (after the command under way, if one
// is), a held one stays open.
func (dom *Domain) releaseAgent() {
	if !dom.holdsAgent() {
		dom.agent.Close()
	}
}

// wakeAgent makes the holder try to connect now rather than at the end
// of its backoff: QEMU, and so its agent socket, is back.
func (dom *Domain) wakeAgent() {
	select {
	case dom.agentWake <- struct{}{}:
	default:
	}
}

// holdAgent keeps a held agent channel open: it connects and syncs at
// once, and again whenever the connection ends, with backoff while that
// fails. It never waits for the domain's lock, and never touches the
// channel while the daemon holds a freeze on the guest: the freeze and
// its thaws own it then. Operations never wait for it either: one that
// finds no connection opens its own.
func (dom *Domain) holdAgent(ctx context.Context) {
	cfg := dom.drv.cfg
	defer dom.agent.Close() // the connection goes with us
	backoff := cfg.ReconnectMin
	for {
		if dom.frozen() {
			if !dom.agentPause(ctx, cfg.ReconnectMin) {
				return
			}
			continue
		}
		if !dom.agent.Connected() {
			cctx, cancel := context.WithTimeout(ctx, cfg.AgentTimeout)
			err := dom.agent.Connect(cctx)
			cancel()
			if err != nil {
				dom.log.Debug("agent channel not connected; will retry", zap.Duration("backoff", backoff), zap.Error(err))
				if !dom.agentPause(ctx, backoff) {
					return
				}
				backoff = min(backoff*2, cfg.ReconnectMax)
				continue
			}
			backoff = cfg.ReconnectMin
		}
		select {
		case <-dom.agent.Lost():
			// A connection that ended is replaced after a pause, so a
			// peer that drops every connection is not courted in a loop.
			if !dom.agentPause(ctx, cfg.ReconnectMin) {
				return
			}
		case <-dom.agentWake:
		case <-dom.stopCh:
			return
		case <-ctx.Done():
			return
		}
	}
}

// agentPause waits d, or less if woken (wakeAgent); false if the domain
// or the driver stops first.
func (dom *Domain) agentPause(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-dom.agentWake:
	case <-dom.stopCh:
		return false
	case <-ctx.Done():
		return false
	}
	return true
}

// frozen reports whether the daemon holds a freeze on the guest, or is
// thawing one.
func (dom *Domain) frozen() bool {
	dom.mu.Lock()
	defer dom.mu.Unlock()
	return dom.freeze != nil
}

// quiesceCheck is the agent's answer to whether a freeze can work
// (checkQuiesce), asked while QEMU is queried and the overlays are
// prepared: the freeze step waits for it.
type quiesceCheck struct {
	done chan struct{}
	ind  *Indication
	err  error
}

// startQuiesceCheck syncs the agent channel and asks the agent, in the
// background, whether a freeze can work. The caller holds the domain's
// lock until wait returns: the check is part of its operation.
func (d *Driver) startQuiesceCheck(ctx context.Context, dom *Domain) *quiesceCheck {
	qc := &quiesceCheck{done: make(chan struct{})}
	go func() {
		defer close(qc.done)
		// A freeze the daemon holds refuses without asking the agent
		// (checkQuiesce); otherwise the channel is checked first, so
		// that a restarted agent or a rebooted guest is resynced
		// before it is asked anything.
		if !dom.frozen() {
			if err := dom.agent.Sync(ctx); err != nil {
				ind := notQuiesced(err)
				qc.ind, qc.err = &ind, agentErr(err)
				return
			}
		}
		qc.ind, qc.err = d.checkQuiesce(ctx, dom)
	}()
	return qc
}

// wait returns the check's answer; a nil check (none was asked) has
// none.
func (qc *quiesceCheck) wait() (*Indication, error) {
	if qc == nil {
		return nil, nil
	}
	<-qc.done
	return qc.ind, qc.err
}

// refusal is a snapshot refused before its freeze because the agent
// said a required freeze could not work: its steps so far were undone
// and its journal entry removed, so it ends as a refusal in validation
// does, with nothing behind.
type refusal struct{ err error }

func (r *refusal) Error() string { return r.err.Error() }

func (r *refusal) Unwrap() error { return r.err }
