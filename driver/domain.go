package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/qsnapd/qsnapd/guestagent"
	"github.com/qsnapd/qsnapd/qmp"
	"github.com/qsnapd/qsnapd/transaction"
)

// Domain is a registered VM: its QMP connection, its state, and the lock
// that lets one snapshot, freeze or thaw run at a time.
type Domain struct {
	cfg    DomainConfig
	drv    *Driver
	client *qmp.Client
	agent  *guestagent.Client
	log    *zap.Logger
	lock   chan struct{}
	// chains is the record of the disks and their chains (chains.go),
	// and chainImages and chainQuestions what the last read found they
	// cost to read and to check (0 questions: not read yet); only the
	// holder of lock touches them.
	chains                      *chainRecord
	chainImages, chainQuestions int

	stopOnce sync.Once
	stopCh   chan struct{}
	wake     chan struct{} // a failed operation asks for recovery now
	// agentWake tells the holder of the agent channel to try now.
	agentWake chan struct{}
	// waiters counts the requests waiting for QEMU to answer again
	// (awaitRecovery): the supervisor retries sooner meanwhile.
	waiters atomic.Int32

	mu           sync.Mutex
	connected    bool
	since        time.Time
	version      string
	uuid         string
	commands     map[string]bool
	lastErr      error
	needRecovery bool
	recovered    chan struct{} // closed after the first recovery pass
	settled      chan struct{} // closed after the first connect attempt (and recovery, if it connected)
	freeze       *guestFreeze  // set while the daemon holds a freeze
	retrying     bool          // a failed thaw is being retried
}

// DomainInfo is a domain's state, for listings.
type DomainInfo struct {
	Freeze     FreezeInfo `json:"freeze"`
	AgentState string     `json:"agent_state"`
	Name       string     `json:"name"`
	QMP        string     `json:"qmp"`
	Agent      string     `json:"agent,omitempty"`
	// AgentChannel is AgentHold or AgentPerOperation; empty without an
	// agent.
	AgentChannel   string    `json:"agent_channel,omitempty"`
	Connected      bool      `json:"connected"`
	Since          time.Time `json:"since,omitzero"`
	QEMUVersion    string    `json:"qemu_version,omitempty"`
	UUID           string    `json:"uuid,omitempty"`
	HasTransaction bool      `json:"transaction"`
	Error          string    `json:"error,omitempty"`
}

func newDomain(cfg DomainConfig, drv *Driver) *Domain {
	dom := &Domain{
		cfg:       cfg,
		drv:       drv,
		client:    qmp.New(cfg.QMP, drv.cfg.QMPOptions...),
		log:       drv.log.With(zap.String("domain", cfg.Name)),
		lock:      make(chan struct{}, 1),
		stopCh:    make(chan struct{}),
		wake:      make(chan struct{}, 1),
		recovered: make(chan struct{}),
		settled:   make(chan struct{}),
		agentWake: make(chan struct{}, 1),
	}
	dom.agent = guestagent.New(cfg.Agent, guestagent.Options{Timeout: drv.cfg.AgentTimeout,
		FreezeTimeout: drv.cfg.MaxFreeze, ThawTimeout: drv.cfg.ThawTimeout, Observer: drv.cfg.AgentObserver})
	return dom
}

// Agent states, as the agent channel knows them: from the connection
// (its holder sees it end at once) and the last exchange on it. A
// listing reads them and asks the guest nothing.
const (
	AgentNone         = "none"                               // no agent socket registered
	AgentUnknown      = string(guestagent.StateUnknown)      // not contacted yet
	AgentSyncing      = string(guestagent.StateSyncing)      // connected, the first sync under way
	AgentResponsive   = string(guestagent.StateResponsive)   // the last sync or command got an answer
	AgentUnresponsive = string(guestagent.StateUnresponsive) // the last sync or command timed out
	AgentNotConnected = string(guestagent.StateNotConnected) // the socket refused, or the connection ended
)

// Info returns the domain's state.
func (dom *Domain) Info() DomainInfo {
	dom.mu.Lock()
	defer dom.mu.Unlock()
	// The client knows of an EOF before the supervisor does.
	connected := dom.connected && dom.client.Connected()
	info := DomainInfo{
		Name: dom.cfg.Name, QMP: dom.cfg.QMP, Agent: dom.cfg.Agent,
		Connected: connected, Since: dom.since, QEMUVersion: dom.version,
		UUID: dom.uuid, HasTransaction: dom.commands["transaction"],
	}
	if dom.lastErr != nil && !connected {
		info.Error = dom.lastErr.Error()
	}
	if dom.cfg.Agent == "" {
		info.AgentState = AgentNone
	} else {
		info.AgentState = string(dom.agent.State())
		info.AgentChannel = agentChannel(dom.cfg.AgentChannel)
	}
	if gf := dom.freeze; gf != nil {
		info.Freeze = FreezeInfo{Frozen: true, Owner: gf.rec.Owner, OpID: gf.rec.OpID, Since: gf.rec.Since,
			Deadline: gf.rec.Deadline, ThawPending: gf.thawing}
	}
	return info
}

// acquire takes the domain's lock, waiting at most until ctx ends.
func (dom *Domain) acquire(ctx context.Context) (release func(), err error) {
	select { // a free lock is taken even with a context already done
	case dom.lock <- struct{}{}:
		return func() { <-dom.lock }, nil
	default:
	}
	select {
	case dom.lock <- struct{}{}:
		return func() { <-dom.lock }, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: another operation holds domain '%s': %w", ErrBusy, dom.cfg.Name, ctx.Err())
	}
}

// lockDomain looks up a domain and takes its lock within ctx.
func (d *Driver) lockDomain(ctx context.Context, name string) (*Domain, func(), error) {
	dom, err := d.domain(name)
	if err != nil {
		return nil, nil, err
	}
	release, err := dom.acquire(ctx)
	if err != nil {
		return nil, nil, err
	}
	return dom, release, nil
}

// awaitFirstAttempt waits, within ctx, until the supervisor's first
// connection attempt (and its recovery pass, if it connected) is over,
// so that a request that arrives at startup or attach is not failed as
// not connected while that attempt is under way. The caller must not
// hold the domain's lock: the recovery pass takes it.
func (dom *Domain) awaitFirstAttempt(ctx context.Context) error {
	select { // settled already: even a done ctx goes on
	case <-dom.settled:
		return nil
	default:
	}
	select {
	case <-dom.settled:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: domain '%s': first connection attempt still under way: %w", ErrDisconnected, dom.cfg.Name, ctx.Err())
	}
}

// ready returns the QMP client of a connected domain, or fails at once.
func (dom *Domain) ready() (*qmp.Client, error) {
	dom.mu.Lock()
	defer dom.mu.Unlock()
	if !dom.connected || !dom.client.Connected() {
		msg := "not connected"
		if dom.lastErr != nil {
			msg = dom.lastErr.Error()
		}
		return nil, fmt.Errorf("%w: domain '%s': %s", ErrDisconnected, dom.cfg.Name, msg)
	}
	return dom.client, nil
}

// mode is how this domain's disks switch.
func (dom *Domain) mode() transaction.Mode {
	dom.mu.Lock()
	defer dom.mu.Unlock()
	if dom.drv.cfg.Transaction == "never" || !dom.commands["transaction"] {
		return transaction.ModeSequential
	}
	return transaction.ModeAtomic
}

// connect dials QMP and learns what the domain's QEMU can do.
func (dom *Domain) connect(ctx context.Context) error {
	if err := dom.client.Connect(ctx); err != nil {
		dom.setErr(err)
		return err
	}
	cmds, err := dom.client.QueryCommands(ctx)
	if err == nil {
		for _, need := range []string{"blockdev-add", "blockdev-snapshot", "block-commit"} {
			if !cmds[need] {
				err = fmt.Errorf("%w: QEMU lacks %s", ErrUnsupported, need)
			}
		}
	}
	var uuid string
	if err == nil {
		uuid, err = dom.client.QueryUUID(ctx)
	}
	if err != nil {
		dom.client.Close()
		dom.setErr(err)
		return err
	}
	g, _ := dom.client.Greeting()
	dom.mu.Lock()
	dom.connected, dom.since, dom.lastErr = true, time.Now(), nil
	dom.commands, dom.uuid, dom.version = cmds, uuid, g.Version.String()
	dom.needRecovery = true
	dom.mu.Unlock()
	return nil
}

func (dom *Domain) setErr(err error) {
	dom.mu.Lock()
	dom.lastErr = err
	dom.mu.Unlock()
}

// stop ends the supervisor and the connections.
func (dom *Domain) stop() {
	dom.stopOnce.Do(func() { close(dom.stopCh) })
	dom.client.Close()
	dom.agent.Close()
}

// supervise keeps the domain connected: it reconnects with backoff after
// EOF and reconciles unfinished operations after every connect.
func (dom *Domain) supervise(ctx context.Context) {
	cfg := dom.drv.cfg
	backoff := cfg.ReconnectMin
	recoveredOnce := false
	settle := sync.OnceFunc(func() { close(dom.settled) })
	defer settle()
	defer func() {
		// A connect may have raced stop: the connection goes with us.
		_ = dom.client.Close() // it reports nothing
	}()
	for {
		if !dom.client.Connected() {
			cctx, cancel := context.WithTimeout(ctx, qmp.DefaultHandshakeTimeout)
			err := dom.connect(cctx)
			cancel()
			if err != nil {
				settle()
				wait := backoff
				if dom.waiters.Load() > 0 {
					// A request waits for QEMU: do not sleep past its
					// return for long.
					wait = min(wait, max(cfg.ReconnectMin, waitedReconnect))
				}
				if !sleep(ctx, dom.stopCh, wait) {
					return
				}
				backoff = min(backoff*2, cfg.ReconnectMax)
				continue
			}
			dom.log.Info("domain connected")
			dom.wakeAgent() // its agent socket is likely back too
			dom.drv.domainsChanged()
		}
		backoff = cfg.ReconnectMin

		retry := dom.recoverIfNeeded(ctx)
		if !recoveredOnce {
			recoveredOnce = true
			close(dom.recovered)
			settle()
		}
		var retryC <-chan time.Time
		if retry {
			retryC = time.After(backoff)
		}
		select {
		case <-dom.client.Disconnected():
			dom.mu.Lock()
			dom.connected = false
			dom.lastErr = qmp.ErrDisconnected
			dom.mu.Unlock()
			dom.log.Warn("domain disconnected")
			dom.drv.domainsChanged()
		case <-retryC:
		case <-dom.wake:
		case <-dom.stopCh:
			return
		case <-ctx.Done():
			return
		}
	}
}

// waitedReconnect caps the backoff between connection attempts while a
// request waits for QEMU to answer again.
const waitedReconnect = 250 * time.Millisecond

// qemuGone reports whether the domain's QEMU has exited: its monitor
// connection is down and its QMP socket refuses connections or is gone,
// as a killed QEMU's is (its listening socket closes with it). A socket
// that accepts may belong to a QEMU that answers again.
func (dom *Domain) qemuGone() bool {
	if dom.client.Connected() {
		return false
	}
	conn, err := net.DialTimeout("unix", dom.cfg.QMP, qmp.DefaultHandshakeTimeout)
	if err == nil {
		_ = conn.Close() // a probe: nothing was said on it
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT)
}

// recoverIfNeeded runs recovery when a connect or a failed operation
// asked for it, and reports whether it must be tried again.
func (dom *Domain) recoverIfNeeded(ctx context.Context) bool {
	dom.mu.Lock()
	need := dom.needRecovery
	dom.mu.Unlock()
	if !need {
		return false
	}
	release, err := dom.acquire(ctx)
	if err != nil {
		return false
	}
	defer release()
	select {
	case <-dom.stopCh:
		return false // detached or replaced: the journal is not ours now
	default:
	}
	if err := dom.drv.recoverDomain(ctx, dom); err != nil {
		dom.log.Warn("recovery incomplete; will retry", zap.Error(err))
		return true
	}
	dom.mu.Lock()
	dom.needRecovery = false
	dom.mu.Unlock()
	return false
}

// requestRecovery makes the supervisor reconcile the journal again, for
// an operation whose disks' state could not be learned. The supervisor
// wakes at once: QEMU may well stay connected, and a disconnect is not
// to be waited for. It runs once the operation releases the domain.
func (dom *Domain) requestRecovery() {
	dom.mu.Lock()
	dom.needRecovery = true
	dom.mu.Unlock()
	select {
	case dom.wake <- struct{}{}:
	default: // a wake-up is pending already
	}
}

// WaitRecovered waits for the first recovery pass after startup or
// attach.
func (d *Driver) WaitRecovered(ctx context.Context, name string) error {
	dom, err := d.domain(name)
	if err != nil {
		return err
	}
	select {
	case <-dom.recovered:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func sleep(ctx context.Context, stop <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-stop:
		return false
	}
}

// qmpErr maps a QMP failure to the driver's error kinds.
func qmpErr(what string, err error) error {
	if errors.Is(err, qmp.ErrDisconnected) {
		return fmt.Errorf("%w: %s: %w", ErrDisconnected, what, err)
	}
	return fmt.Errorf("%w: %s: %w", ErrOperationFailed, what, err)
}
