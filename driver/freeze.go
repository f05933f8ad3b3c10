package driver

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/qsnapd/qsnapd/guestagent"
)

// Freeze owners: who took a freeze decides who may end it.
const (
	OwnerSnapshot = "snapshot" // a QUIESCE snapshot, for its switch
	OwnerFSFreeze = "fsfreeze" // the explicit fsfreeze verb's caller
)

// ErrQuiesce means a required quiesce did not hold: the freeze failed,
// or the switch outlasted the freeze deadline, or the guest released
// writes early (Windows VSS).
var ErrQuiesce = errors.New("quiesce failed")

// guestFreeze is one freeze the daemon holds on a guest, from the
// moment its record is journaled until a thaw is confirmed.
type guestFreeze struct {
	rec FreezeRecord
	// timer thaws at the deadline, whatever else is going on; nil for a
	// freeze a previous daemon left, which is being thawed already.
	timer *time.Timer

	once     sync.Once
	done     chan struct{} // closed when the first thaw attempt ended
	sent     time.Time     // freeze sent
	frozenAt time.Time     // freeze reply received
	thawSent time.Time     // thaw sent
	thawedAt time.Time     // thaw reply received
	byTimer  bool          // the deadline thawed it
	thawing  bool          // a thaw was sent and not confirmed (guarded by the domain's mu)
	count    int
	err      error // of the first thaw attempt
}

// FreezeInfo is a domain's frozen state as the daemon knows it.
type FreezeInfo struct {
	Frozen   bool      `json:"frozen"`
	Owner    string    `json:"owner,omitempty"`
	OpID     string    `json:"operation,omitempty"`
	Since    time.Time `json:"since,omitzero"`
	Deadline time.Time `json:"deadline,omitzero"`
	// ThawPending is set once a thaw was sent and until one succeeds:
	// a slow or failing thaw (retried in the background) shows here.
	ThawPending bool `json:"thaw_pending,omitempty"`
	// Agent is what the agent itself says ("frozen" or "thawed"), when
	// asked.
	Agent string `json:"agent,omitempty"`
}

func (dom *Domain) freezeInfo() FreezeInfo { return dom.Info().Freeze }

// freezeGuest journals a freeze, sends it with a deadline that a timer
// enforces, and thaws at once if the freeze fails, since the guest may
// have frozen without replying. The caller holds the domain's lock.
func (d *Driver) freezeGuest(ctx context.Context, dom *Domain, owner, opID string, mountpoints []string, hold time.Duration) (*guestFreeze, int, error) {
	now := time.Now()
	gf := &guestFreeze{
		rec:  FreezeRecord{Domain: dom.cfg.Name, Owner: owner, OpID: opID, Since: now.UTC(), Deadline: now.Add(hold).UTC()},
		done: make(chan struct{}),
	}
	if err := d.store.PutFreeze(gf.rec); err != nil {
		return nil, 0, fmt.Errorf("%w: journal freeze: %w", ErrOperationFailed, err)
	}
	// Told before the window opens: the event's sinks (the event log,
	// D-Bus signals) are no part of the guest's frozen time.
	d.cfg.Events.GuestFrozen(dom.cfg.Name, owner)
	gf.sent = time.Now()
	gf.timer = time.AfterFunc(hold, func() { d.thawGuest(dom, gf, true) })
	dom.mu.Lock()
	dom.freeze = gf
	dom.mu.Unlock()
	fctx, cancel := context.WithDeadline(ctx, gf.sent.Add(hold))
	n, err := dom.agent.Freeze(fctx, mountpoints)
	gf.frozenAt = time.Now()
	cancel()
	if err != nil {
		d.thawGuest(dom, gf, false)
		<-gf.done
		return nil, 0, err
	}
	dom.log.Debug("guest frozen", zap.String("owner", owner), zap.Int("filesystems", n))
	return gf, n, nil
}

// thawGuest ends a freeze once, whoever calls first: the deadline timer
// or the owner. A failed thaw is retried in the background until it
// succeeds; until then the domain shows as frozen.
func (d *Driver) thawGuest(dom *Domain, gf *guestFreeze, byTimer bool) {
	gf.once.Do(func() {
		dom.mu.Lock()
		gf.thawing = true
		dom.mu.Unlock()
		if !byTimer {
			// The timer may be firing at this moment; once.Do makes
			// this thaw the only one either way.
			gf.timer.Stop()
		}
		gf.byTimer = byTimer
		ctx, cancel := context.WithTimeout(d.ctx, d.cfg.ThawTimeout)
		defer cancel()
		gf.thawSent = time.Now()
		gf.count, gf.err = dom.agent.Thaw(ctx)
		gf.thawedAt = time.Now()
		if byTimer {
			// Nobody else will release the agent channel.
			defer dom.releaseAgent()
		}
		if byTimer {
			d.cfg.Events.FreezeDeadlineExceeded(dom.cfg.Name)
			dom.log.Warn("freeze deadline exceeded; guest thawed", zap.String("owner", gf.rec.Owner),
				zap.String("op", gf.rec.OpID), zap.Error(gf.err))
		}
		if gf.err != nil && !holdExpired(gf.err) {
			dom.log.Error("thaw failed; retrying", zap.Error(gf.err))
			d.retryThaw(dom, gf)
		} else {
			d.forgetFreeze(dom, gf)
		}
		close(gf.done)
	})
}

// awaitThaw ends a snapshot's freeze and waits for the thaw, but only as
// long as a live agent needs: the thaw's own ceiling is long, and it is
// retried in the background anyway. It reports whether the thaw ended.
func (d *Driver) awaitThaw(dom *Domain, gf *guestFreeze) bool {
	go d.thawGuest(dom, gf, false)
	wait := time.NewTimer(max(0, time.Until(gf.sent.Add(d.cfg.MaxFreeze))) + d.cfg.AgentTimeout)
	defer wait.Stop()
	select {
	case <-gf.done:
		return true
	case <-wait.C:
		select { // both may be ready: the thaw's answer wins
		case <-gf.done:
			return true
		default:
			return false
		}
	}
}

// holdExpired recognises the Windows VSS thaw error: writes were already
// released, so the guest is not frozen, and nothing was quiesced.
func holdExpired(err error) bool {
	var ae *guestagent.Error
	return errors.As(err, &ae) && strings.Contains(ae.Desc, "couldn't hold writes")
}

// forgetFreeze drops a thawed freeze, unless a newer one replaced it.
func (d *Driver) forgetFreeze(dom *Domain, gf *guestFreeze) {
	dom.mu.Lock()
	if dom.freeze != gf {
		dom.mu.Unlock()
		return
	}
	dom.freeze, dom.retrying = nil, false
	if err := d.store.DeleteFreeze(dom.cfg.Name); err != nil {
		dom.log.Error("freeze record not deleted; a restart will thaw again", zap.Error(err))
	}
	dom.mu.Unlock()
	since := gf.sent
	if since.IsZero() {
		since = gf.rec.Since // a freeze a previous daemon left
	}
	d.cfg.Events.GuestThawed(dom.cfg.Name, time.Since(since))
	if gf.timer == nil {
		d.cfg.Events.OperationRecovered("thawed")
	}
}

// retryThaw thaws until the agent confirms, with backoff: a guest left
// frozen is the one outcome worse than a failed snapshot.
func (d *Driver) retryThaw(dom *Domain, gf *guestFreeze, firstTry ...func()) {
	tried := sync.OnceFunc(func() {
		for _, f := range firstTry {
			f()
		}
	})
	dom.mu.Lock()
	if dom.retrying || dom.freeze != gf {
		// Retried already, or forgotten: its guest is gone.
		dom.mu.Unlock()
		tried()
		return
	}
	dom.retrying, gf.thawing = true, true
	dom.mu.Unlock()
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer tried()
		backoff := 100 * time.Millisecond
		for {
			dom.mu.Lock()
			gone := dom.freeze != gf
			if gone && dom.freeze == nil {
				dom.retrying = false
			}
			dom.mu.Unlock()
			if gone { // forgotten: its QEMU exited (guestGone)
				return
			}
			ctx, cancel := context.WithTimeout(d.ctx, d.cfg.ThawTimeout)
			err := thawAndCheck(ctx, dom.agent)
			cancel()
			tried()
			if err != nil {
				dom.agent.Close() // the next try starts on a new connection
			} else {
				dom.releaseAgent()
			}
			if err == nil {
				dom.log.Info("guest thawed after retries")
				d.forgetFreeze(dom, gf)
				return
			}
			dom.log.Debug("thaw retry failed", zap.Error(err))
			if !sleep(d.ctx, dom.stopCh, backoff) {
				return
			}
			backoff = min(backoff*2, 5*time.Second)
		}
	}()
}

// guestGone forgets the freeze the daemon holds on a guest whose QEMU
// exited: there is no guest left to thaw, and its record would have the
// next start thaw a guest that is not frozen. A thaw being retried
// stops.
func (d *Driver) guestGone(dom *Domain) {
	dom.mu.Lock()
	gf := dom.freeze
	dom.mu.Unlock()
	if gf == nil {
		return
	}
	if gf.timer != nil {
		gf.timer.Stop()
	}
	dom.log.Info("freeze forgotten: QEMU exited", zap.String("owner", gf.rec.Owner), zap.String("op", gf.rec.OpID))
	d.forgetFreeze(dom, gf)
}

// thawAndCheck thaws and confirms with guest-fsfreeze-status.
func thawAndCheck(ctx context.Context, agent *guestagent.Client) error {
	if _, err := agent.Thaw(ctx); err != nil && !holdExpired(err) {
		return err
	}
	status, err := agent.FreezeStatus(ctx)
	if err != nil {
		return err
	}
	if status != "thawed" {
		return fmt.Errorf("guest still %s after thaw", status)
	}
	return nil
}

// thawRecorded thaws, at startup, every guest the journal says a
// previous daemon froze.
func (d *Driver) thawRecorded() error {
	recs, err := d.store.Freezes()
	if err != nil {
		close(d.thawsSettled)
		return fmt.Errorf("read freeze journal: %w", err)
	}
	var firstTries sync.WaitGroup
	defer func() {
		go func() { firstTries.Wait(); close(d.thawsSettled) }()
	}()
	for _, rec := range recs {
		dom, err := d.domain(rec.Domain)
		if err != nil {
			d.log.Warn("freeze record of an unknown domain", zap.String("domain", rec.Domain))
			continue
		}
		dom.log.Info("thawing a guest a previous daemon froze", zap.String("owner", rec.Owner),
			zap.String("op", rec.OpID), zap.Time("since", rec.Since))
		gf := &guestFreeze{rec: rec, done: make(chan struct{})}
		dom.mu.Lock()
		dom.freeze = gf
		dom.mu.Unlock()
		d.cfg.Events.GuestFrozen(dom.cfg.Name, rec.Owner)
		firstTries.Add(1)
		d.retryThaw(dom, gf, firstTries.Done)
	}
	return nil
}

// FSFreeze freezes a guest's filesystems for a caller who will thaw it
// (or let the deadline do it): hold is the auto-thaw deadline, zero
// meaning the daemon's max-freeze, which no freeze may outlast.
func (d *Driver) FSFreeze(ctx context.Context, domain string, mountpoints []string, hold time.Duration) (int, error) {
	if hold < 0 {
		return 0, fmt.Errorf("%w: negative freeze timeout", ErrInvalidArg)
	}
	if hold > d.cfg.MaxFreeze {
		return 0, fmt.Errorf("%w: freeze timeout %v is above the daemon's max-freeze of %v", ErrInvalidArg, hold, d.cfg.MaxFreeze)
	}
	if hold == 0 {
		hold = d.cfg.MaxFreeze
	}
	dom, release, err := d.lockDomain(ctx, domain)
	if err != nil {
		return 0, err
	}
	defer release()
	defer dom.releaseAgent()
	if fi := dom.freezeInfo(); fi.Frozen {
		return 0, fmt.Errorf("%w: domain '%s' is frozen already (by %s since %s)", ErrOperationInvalid, domain, fi.Owner, fi.Since.Format(time.RFC3339))
	}
	if err := dom.agent.Sync(ctx); err != nil {
		return 0, agentErr(err)
	}
	if err := dom.agent.CheckFreeze(ctx, len(mountpoints) > 0); err != nil {
		return 0, agentErr(err)
	}
	_, n, err := d.freezeGuest(ctx, dom, OwnerFSFreeze, "", mountpoints, hold)
	if err != nil {
		return 0, agentErr(err)
	}
	return n, nil
}

// FSThaw thaws a guest, whoever froze it.
func (d *Driver) FSThaw(ctx context.Context, domain string) (int, error) {
	dom, release, err := d.lockDomain(ctx, domain)
	if err != nil {
		return 0, err
	}
	defer release()
	defer dom.releaseAgent()
	dom.mu.Lock()
	gf := dom.freeze
	dom.mu.Unlock()
	if gf != nil && gf.timer != nil {
		go d.thawGuest(dom, gf, false)
		select {
		case <-gf.done:
		case <-ctx.Done():
			return 0, agentErr(fmt.Errorf("%w: thaw still running; the daemon keeps trying: %w", guestagent.ErrUnresponsive, ctx.Err()))
		}
		if gf.err != nil && !holdExpired(gf.err) {
			return 0, agentErr(gf.err)
		}
		return gf.count, nil
	}
	// Not frozen by this daemon (or a restart's thaw is pending): thaw
	// anyway, as asked.
	n, err := dom.agent.Thaw(ctx)
	if err != nil {
		return 0, agentErr(err)
	}
	if gf != nil {
		d.forgetFreeze(dom, gf)
	}
	return n, nil
}

// FSStatus reports the frozen state, asking the agent as well.
func (d *Driver) FSStatus(ctx context.Context, domain string) (FreezeInfo, error) {
	dom, err := d.domain(domain)
	if err != nil {
		return FreezeInfo{}, err
	}
	defer dom.releaseAgent()
	fi := dom.freezeInfo()
	status, err := dom.agent.FreezeStatus(ctx)
	if err != nil {
		return fi, agentErr(err)
	}
	fi.Agent = status
	return fi, nil
}

// agentErr files the guest agent's errors under the driver's own, so
// that no front end needs to know the agent: a disabled command is
// unsupported, an agent that cannot be had is unresponsive (both keep
// their message), and an error reply is a failed operation.
func agentErr(err error) error {
	switch {
	case errors.Is(err, guestagent.ErrDisabled):
		return &kindError{sentinel: ErrUnsupported, err: err}
	case errors.Is(err, guestagent.ErrNotConfigured), errors.Is(err, guestagent.ErrNotConnected),
		errors.Is(err, guestagent.ErrUnresponsive):
		return &kindError{sentinel: ErrAgentUnresponsive, err: err}
	}
	var ae *guestagent.Error
	if errors.As(err, &ae) {
		return fmt.Errorf("%w: %w", ErrOperationFailed, err)
	}
	return err
}
