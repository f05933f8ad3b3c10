// Package driver manages domains and their snapshots: per-domain
// serialization, the snapshot lifecycle, the metadata store, the
// operation journal and recovery after a crash.
package driver

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode"

	bolt "go.etcd.io/bbolt"
	"go.uber.org/zap"

	"github.com/qsnapd/qsnapd/guestagent"
	"github.com/qsnapd/qsnapd/internal/eventlog"
	"github.com/qsnapd/qsnapd/internal/opid"
	"github.com/qsnapd/qsnapd/qmp"
	"github.com/qsnapd/qsnapd/transaction"
)

// Config is the driver's part of the daemon configuration.
type Config struct {
	// StateDir holds the store.
	StateDir string
	// Transaction is "auto" (use QMP transaction when QEMU has it) or
	// "never" (always switch disk by disk).
	Transaction string
	// Switch is how overlays enter QEMU: "auto" (in the switch command
	// itself, blockdev-snapshot-sync, when the guest is not frozen for
	// it; added beforehand, so that the freeze holds only the switch,
	// when it is), "preadd" (always added beforehand) or "sync" (always
	// in the switch). Both ends are there for benchmarks.
	Switch string
	// AllowedDirs are where overlays may be created; empty means the
	// directory of each disk's current image.
	AllowedDirs []string
	// RollbackTimeout bounds the rollback of one disk.
	RollbackTimeout time.Duration
	// ReconnectMin and ReconnectMax bound the backoff between attempts
	// to reach a domain's QMP socket.
	ReconnectMin, ReconnectMax time.Duration
	// ReconnectWait bounds how long an operation whose QMP connection
	// dropped in the middle waits for QEMU to answer again and for
	// recovery to reconcile it, before it answers ErrOutcomeUnknown.
	ReconnectWait time.Duration
	// OpRetention is how long finished operations stay readable.
	OpRetention time.Duration
	// AgentTimeout bounds connect, sync and ping of the guest agent.
	AgentTimeout time.Duration
	// ThawTimeout bounds one thaw attempt; a failed one is retried.
	ThawTimeout time.Duration
	// MaxFreeze is the hard freeze deadline: the daemon thaws a guest
	// this long after freezing it, whatever else is going on.
	MaxFreeze time.Duration
	// Quiesce is what a snapshot without QUIESCE or a quiesce option
	// does: "skip" (libvirt's behaviour), "prefer" or "require".
	Quiesce QuiesceMode
	// QuiesceScope is what a quiesced snapshot freezes unless its
	// request says: "all" (libvirt's behaviour) or "snapshot-disks".
	QuiesceScope QuiesceScope
	// QMPOptions tune every domain's QMP client (ceilings, observers).
	QMPOptions []qmp.Option `toml:"-"`
	// AgentObserver hears every guest agent command, for metrics.
	AgentObserver func(command string, took time.Duration, err error) `toml:"-"`
	// Events hears what the driver does, for metrics and D-Bus signals:
	// the driver's event log passes each event on, as it records it.
	Events Events `toml:"-"`
	// EventRing is how many of the latest events the event log keeps
	// for subscribers that ask for the events they missed.
	EventRing int
}

// DefaultConfig is every default of the configuration, written once:
// Validate fills in these, and the daemon's own defaults are these.
// StateDir has none.
func DefaultConfig() Config {
	return Config{
		Transaction:     "auto",
		Switch:          SwitchAuto,
		Quiesce:         QuiesceSkip,
		QuiesceScope:    ScopeAll,
		RollbackTimeout: transaction.DefaultRollbackTimeout,
		ReconnectMin:    100 * time.Millisecond,
		ReconnectMax:    30 * time.Second,
		ReconnectWait:   10 * time.Second,
		OpRetention:     24 * time.Hour,
		AgentTimeout:    guestagent.DefaultTimeout,
		ThawTimeout:     guestagent.DefaultThawTimeout,
		MaxFreeze:       10 * time.Second,
		EventRing:       eventlog.DefaultSize,
	}
}

// Validate checks the configuration and fills in defaults.
func (c *Config) Validate() error {
	def := DefaultConfig()
	if c.StateDir == "" || !filepath.IsAbs(c.StateDir) {
		return fmt.Errorf("state_dir must be an absolute path, got %q", c.StateDir)
	}
	switch c.Transaction {
	case "":
		c.Transaction = def.Transaction
	case "auto", "never":
	default:
		return fmt.Errorf("transaction must be auto or never, got %q", c.Transaction)
	}
	switch c.Switch {
	case "":
		c.Switch = def.Switch
	case SwitchAuto, string(transaction.SwitchPreadd), string(transaction.SwitchSync):
	default:
		return fmt.Errorf("switch must be auto, preadd or sync, got %q", c.Switch)
	}
	for _, d := range c.AllowedDirs {
		if !filepath.IsAbs(d) {
			return fmt.Errorf("allowed_dirs: %q is not an absolute path", d)
		}
	}
	switch c.Quiesce {
	case "":
		c.Quiesce = def.Quiesce
	case QuiesceSkip, QuiescePrefer, QuiesceRequire:
	default:
		return fmt.Errorf("quiesce must be require, prefer or skip, got %q", c.Quiesce)
	}
	switch c.QuiesceScope {
	case "":
		c.QuiesceScope = def.QuiesceScope
	case ScopeAll, ScopeSnapshotDisks:
	default:
		return fmt.Errorf("quiesce_scope must be all or snapshot-disks, got %q", c.QuiesceScope)
	}
	for _, d := range []struct {
		key string
		v   *time.Duration
		def time.Duration
	}{
		{"rollback_timeout", &c.RollbackTimeout, def.RollbackTimeout},
		{"reconnect_min", &c.ReconnectMin, def.ReconnectMin},
		{"reconnect_max", &c.ReconnectMax, def.ReconnectMax},
		{"reconnect_wait", &c.ReconnectWait, def.ReconnectWait},
		{"op_retention", &c.OpRetention, def.OpRetention},
		{"agent_timeout", &c.AgentTimeout, def.AgentTimeout},
		{"thaw_timeout", &c.ThawTimeout, def.ThawTimeout},
		{"max_freeze", &c.MaxFreeze, def.MaxFreeze},
	} {
		switch {
		case *d.v < 0:
			return fmt.Errorf("%s must not be negative", d.key)
		case *d.v == 0:
			*d.v = d.def
		}
	}
	switch {
	case c.EventRing < 0:
		return fmt.Errorf("event_ring must not be negative")
	case c.EventRing == 0:
		c.EventRing = def.EventRing
	}
	if c.ReconnectMax < c.ReconnectMin {
		c.ReconnectMax = c.ReconnectMin
	}
	if c.Events == nil {
		c.Events = NopEvents{}
	}
	return nil
}

// Driver is the snapshot engine of one host.
type Driver struct {
	cfg   Config
	store *Store
	log   *zap.Logger
	// events is the event log, which cfg.Events is too: the engine's
	// one source of events (eventlog.go).
	events *eventLog

	// Hooks.AtStep, when set, runs at each journaled step of a snapshot
	// (the Hook* constants, and "switch:<disk>" and "rollback:<disk>"
	// for each disk). Tests use it to crash the process at an exact
	// point, or return an error to fail that step.
	Hooks struct {
		AtStep func(step string) error
	}
	// alwaysRecordChains makes every domain keep a record of its chains
	// however shallow they are, so that tests check it on every
	// operation (chains.go).
	alwaysRecordChains bool

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	domains map[string]*Domain

	// connMu orders the domain-connected and -disconnected events;
	// connected is the state they last reported, by domain name.
	connMu    sync.Mutex
	connected map[string]bool

	// running are the operations in flight that front ends may watch
	// and cancel.
	running opRegistry
	// waiting are the requests waiting for recovery to reconcile their
	// operation after QEMU went away (outcome.go).
	waiting waiters

	thawsSettled chan struct{} // closed after the startup thaws' first attempts
}

// Open opens the store, and connects and recovers every registered
// domain in the background.
func Open(cfg Config, log *zap.Logger) (*Driver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("driver config: %w", err)
	}
	if log == nil {
		log = zap.NewNop()
	}
	store, err := OpenStore(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	events := newEventLog(cfg.EventRing, opid.New(), cfg.Events)
	events.kindOf = func(id string) string {
		if rec, err := store.Op(id); err == nil {
			return rec.Kind
		}
		return ""
	}
	cfg.Events = events
	ctx, cancel := context.WithCancel(context.Background())
	d := &Driver{cfg: cfg, store: store, log: log, events: events, ctx: ctx, cancel: cancel,
		domains: map[string]*Domain{}, connected: map[string]bool{}, thawsSettled: make(chan struct{})}
	if err := store.PruneOps(time.Now().Add(-cfg.OpRetention)); err != nil {
		log.Warn("prune finished operations failed", zap.Error(err))
	}
	configs, err := store.Domains()
	if err != nil {
		store.Close()
		cancel()
		return nil, fmt.Errorf("load domains: %w", err)
	}
	for _, dc := range configs {
		dom := newDomain(dc, d)
		d.domains[dc.Name] = dom
		d.startSupervisor(dom)
	}
	// A guest a previous daemon left frozen comes first: the thaw needs
	// only the agent, not QMP.
	if err := d.thawRecorded(); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// Shutdown thaws every guest the daemon holds frozen (an fsfreeze whose
// caller has not thawed yet), then closes the driver. Running requests
// must have finished.
func (d *Driver) Shutdown(ctx context.Context) error {
	d.mu.Lock()
	var frozen []*Domain
	for _, dom := range d.domains {
		dom.mu.Lock()
		if gf := dom.freeze; gf != nil && gf.timer != nil {
			frozen = append(frozen, dom)
		}
		dom.mu.Unlock()
	}
	d.mu.Unlock()
	var errs []error
	for _, dom := range frozen {
		if _, err := d.FSThaw(ctx, dom.cfg.Name); err != nil {
			// The record stays: the next start thaws again.
			errs = append(errs, fmt.Errorf("thaw %s: %w", dom.cfg.Name, err))
		} else {
			dom.log.Info("guest thawed at shutdown")
		}
	}
	return errors.Join(append(errs, d.Close())...)
}

// Close stops the supervisors and closes every connection and the
// store, and ends every event subscription. Callers finish their
// requests first.
func (d *Driver) Close() error {
	d.cancel()
	defer d.events.log.Close()
	d.mu.Lock()
	doms := make([]*Domain, 0, len(d.domains))
	for _, dom := range d.domains {
		doms = append(doms, dom)
	}
	d.mu.Unlock()
	for _, dom := range doms {
		dom.client.Close()
	}
	d.wg.Wait()
	return d.store.Close()
}

// Healthy checks that the store answers within ctx, for the watchdog.
func (d *Driver) Healthy(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { done <- d.store.db.View(func(*bolt.Tx) error { return nil }) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("store did not answer: %w", ctx.Err())
	}
}

// Store gives read access to metadata and the journal.
func (d *Driver) Store() *Store { return d.store }

func (d *Driver) startSupervisor(dom *Domain) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		dom.supervise(d.ctx)
	}()
	if dom.holdsAgent() {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			dom.holdAgent(d.ctx)
		}()
	}
}

func (d *Driver) hook(step string) error {
	if d.Hooks.AtStep == nil {
		return nil
	}
	if err := d.Hooks.AtStep(step); err != nil {
		return fmt.Errorf("%w: injected at %s: %w", ErrOperationFailed, step, err)
	}
	return nil
}

// domain looks up a registered domain.
func (d *Driver) domain(name string) (*Domain, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	dom, ok := d.domains[name]
	if !ok {
		return nil, fmt.Errorf("%w: no domain named '%s'", ErrNoDomain, name)
	}
	return dom, nil
}

// domainsChanged reports how many domains are connected now, and each
// domain whose connection came or went since the last call: a domain
// first seen disconnected was never reported connected, and a domain
// detached while connected is reported disconnected.
func (d *Driver) domainsChanged() {
	d.connMu.Lock()
	defer d.connMu.Unlock()
	type change struct {
		name      string
		connected bool
		ev        DomainStateEvent
	}
	var changes []change
	d.mu.Lock()
	up, down := 0, 0
	for name, dom := range d.domains {
		info := dom.Info()
		if info.Connected {
			up++
		} else {
			down++
		}
		if info.Connected != d.connected[name] {
			changes = append(changes, change{name, info.Connected, DomainStateEvent{QEMUVersion: info.QEMUVersion, Reason: info.Error}})
		}
		d.connected[name] = info.Connected
	}
	for name, was := range d.connected {
		if _, ok := d.domains[name]; !ok {
			if was {
				changes = append(changes, change{name, false, DomainStateEvent{Reason: "detached"}})
			}
			delete(d.connected, name)
		}
	}
	d.mu.Unlock()
	sort.Slice(changes, func(i, j int) bool { return changes[i].name < changes[j].name })
	for _, c := range changes {
		if c.connected {
			c.ev.Reason = ""
		} else {
			c.ev.QEMUVersion = ""
		}
		d.events.domainState(c.name, c.connected, c.ev)
	}
	d.cfg.Events.DomainsChanged(up, down)
}

// Domains lists the registered domains by name.
func (d *Driver) Domains() []DomainInfo {
	d.mu.Lock()
	doms := make([]*Domain, 0, len(d.domains))
	for _, dom := range d.domains {
		doms = append(doms, dom)
	}
	d.mu.Unlock()
	sort.Slice(doms, func(i, j int) bool { return doms[i].cfg.Name < doms[j].cfg.Name })
	out := make([]DomainInfo, len(doms))
	for i, dom := range doms {
		out[i] = dom.Info()
	}
	return out
}

// DomainInfo returns one domain's state.
func (d *Driver) DomainInfo(name string) (DomainInfo, error) {
	dom, err := d.domain(name)
	if err != nil {
		return DomainInfo{}, err
	}
	return dom.Info(), nil
}

// AttachDomain registers a domain and connects to it. The first connect
// must succeed, so that a wrong path is an error rather than a domain
// that never comes up; after that the daemon reconnects by itself.
func (d *Driver) AttachDomain(ctx context.Context, cfg DomainConfig) (DomainInfo, error) {
	if err := validateDomainConfig(cfg); err != nil {
		return DomainInfo{}, err
	}
	d.mu.Lock()
	if _, ok := d.domains[cfg.Name]; ok {
		d.mu.Unlock()
		return DomainInfo{}, fmt.Errorf("%w: domain '%s' is registered already", ErrDomainExists, cfg.Name)
	}
	dom := newDomain(cfg, d)
	d.domains[cfg.Name] = dom // reserve the name while connecting
	d.mu.Unlock()

	err := dom.connect(ctx)
	if err != nil && !errors.Is(err, ErrUnsupported) {
		err = fmt.Errorf("%w: %w", ErrDisconnected, err)
	}
	if err == nil {
		err = d.store.PutDomain(cfg)
	}
	if err != nil {
		dom.client.Close()
		d.mu.Lock()
		delete(d.domains, cfg.Name)
		d.mu.Unlock()
		close(dom.settled) // no supervisor will: release whoever waits on it
		return DomainInfo{}, fmt.Errorf("attach domain %s: %w", cfg.Name, err)
	}
	d.startSupervisor(dom)
	d.domainsChanged()
	return dom.Info(), nil
}

// EnsureDomain registers a domain from the configuration file. Unlike
// AttachDomain it does not need QEMU to be up: the supervisor connects
// when it can. A domain registered already is left as it is, unless the
// entry's paths or agent channel changed: the configuration file wins
// over the store.
func (d *Driver) EnsureDomain(ctx context.Context, cfg DomainConfig) error {
	if err := validateDomainConfig(cfg); err != nil {
		return err
	}
	d.mu.Lock()
	if old, ok := d.domains[cfg.Name]; ok {
		d.mu.Unlock()
		if old.cfg.normalized() == cfg.normalized() {
			return nil
		}
		return d.replaceDomain(ctx, old, cfg)
	}
	dom := newDomain(cfg, d)
	d.domains[cfg.Name] = dom
	d.mu.Unlock()
	if err := d.store.PutDomain(cfg); err != nil {
		d.mu.Lock()
		delete(d.domains, cfg.Name)
		d.mu.Unlock()
		return fmt.Errorf("%w: register domain %s: %w", ErrOperationFailed, cfg.Name, err)
	}
	d.startSupervisor(dom)
	d.domainsChanged()
	return nil
}

// replaceDomain swaps a registered domain for one with new paths, once
// the operation running on it, if any, is done.
func (d *Driver) replaceDomain(ctx context.Context, old *Domain, cfg DomainConfig) error {
	release, err := old.acquire(ctx)
	if err != nil {
		return fmt.Errorf("change paths of domain %s: %w", cfg.Name, err)
	}
	defer release()
	d.mu.Lock()
	current := d.domains[cfg.Name]
	d.mu.Unlock()
	if current != old {
		return fmt.Errorf("%w: domain '%s' was detached or changed meanwhile", ErrOperationInvalid, cfg.Name)
	}
	old.mu.Lock()
	gf := old.freeze
	old.mu.Unlock()
	if gf != nil && gf.timer != nil {
		return fmt.Errorf("%w: domain '%s' is frozen by %s; thaw it before its paths change", ErrOperationInvalid, cfg.Name, gf.rec.Owner)
	}
	if err := d.store.PutDomain(cfg); err != nil {
		return fmt.Errorf("%w: change paths of domain %s: %w", ErrOperationFailed, cfg.Name, err)
	}
	dom := newDomain(cfg, d)
	d.mu.Lock()
	d.domains[cfg.Name] = dom
	d.mu.Unlock()
	// Stopped under its lock: the old supervisor starts no recovery
	// from here on, so only the new one reconciles the journal.
	old.stop()
	d.log.Info("domain paths changed", zap.String("domain", cfg.Name),
		zap.String("old_qmp", old.cfg.QMP), zap.String("new_qmp", cfg.QMP),
		zap.String("old_agent", old.cfg.Agent), zap.String("new_agent", cfg.Agent),
		zap.String("agent_channel", agentChannel(cfg.AgentChannel)))
	d.startSupervisor(dom)
	if gf != nil {
		// A guest a previous daemon left frozen: go on thawing it
		// through the new agent path.
		thaw := &guestFreeze{rec: gf.rec, done: make(chan struct{})}
		dom.mu.Lock()
		dom.freeze = thaw
		dom.mu.Unlock()
		d.retryThaw(dom, thaw)
	}
	d.domainsChanged()
	return nil
}

// WaitSettled waits until every domain has had its first connection
// attempt (and, if it connected, its recovery pass) and every guest a
// previous daemon left frozen has had its first thaw attempt: the point
// at which the daemon tells systemd it is ready.
func (d *Driver) WaitSettled(ctx context.Context) error {
	d.mu.Lock()
	var chans []<-chan struct{}
	for _, dom := range d.domains {
		chans = append(chans, dom.settled)
	}
	d.mu.Unlock()
	chans = append(chans, d.thawsSettled)
	for _, c := range chans {
		select {
		case <-c:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// DetachDomain forgets a domain; it waits for the domain's running
// operation, within ctx.
func (d *Driver) DetachDomain(ctx context.Context, name string) error {
	dom, release, err := d.lockDomain(ctx, name)
	if err != nil {
		return err
	}
	defer release()
	if err := d.store.DeleteDomain(name); err != nil {
		return fmt.Errorf("%w: detach domain %s: %w", ErrOperationFailed, name, err)
	}
	d.mu.Lock()
	delete(d.domains, name)
	d.mu.Unlock()
	dom.stop()
	d.domainsChanged()
	return nil
}

func validateDomainConfig(cfg DomainConfig) error {
	switch {
	case cfg.Name == "" || len(cfg.Name) > 255:
		return fmt.Errorf("%w: a domain needs a name of 1 to 255 bytes", ErrInvalidArg)
	case strings.ContainsFunc(cfg.Name, unicode.IsControl):
		// Quoted: the name itself would break the message and the logs.
		return fmt.Errorf("%w: domain name %q contains a control character", ErrInvalidArg, cfg.Name)
	case strings.Contains(cfg.Name, "/"):
		return fmt.Errorf("%w: domain name '%s' contains '/'", ErrInvalidArg, cfg.Name)
	case !filepath.IsAbs(cfg.QMP):
		return fmt.Errorf("%w: the QMP socket path '%s' is not absolute", ErrInvalidArg, cfg.QMP)
	case cfg.Agent != "" && !filepath.IsAbs(cfg.Agent):
		return fmt.Errorf("%w: the agent socket path '%s' is not absolute", ErrInvalidArg, cfg.Agent)
	}
	return checkAgentChannel(cfg.AgentChannel)
}

// normalized spells out the agent channel's default, so that a
// configuration that leaves it out equals one that names it.
func (cfg DomainConfig) normalized() DomainConfig {
	if cfg.Agent == "" {
		cfg.AgentChannel = ""
	} else {
		cfg.AgentChannel = agentChannel(cfg.AgentChannel)
	}
	return cfg
}

// newOpID returns a random operation id; its first 8 characters name
// the operation's QEMU nodes, so they must differ between operations.
func newOpID() string { return opid.New() }
