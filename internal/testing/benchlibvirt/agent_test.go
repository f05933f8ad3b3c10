//go:build benchlibvirt

package benchlibvirt

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// rawAgent is a bare qemu-ga client: one connection, synced once, then
// one command at a time. It times the agent's own freeze and thaw with
// neither qsnapd nor libvirt around it.
type rawAgent struct {
	conn net.Conn
	r    *bufio.Reader
}

func dialAgent(ctx context.Context, path string) (*rawAgent, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("connect to the guest agent: %w", err)
	}
	a := &rawAgent{conn: conn, r: bufio.NewReader(conn)}
	if err := a.sync(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return a, nil
}

func (a *rawAgent) Close() error { return a.conn.Close() }

func (a *rawAgent) deadline(ctx context.Context) {
	d, ok := ctx.Deadline()
	if !ok {
		d = time.Now().Add(30 * time.Second)
	}
	a.conn.SetDeadline(d)
}

// sync makes the agent drop whatever an earlier client left half sent
// (the 0xFF byte) and reads up to the reply of this sync (after its own
// 0xFF marker).
func (a *rawAgent) sync(ctx context.Context) error {
	a.deadline(ctx)
	id := time.Now().UnixNano() & (1<<40 - 1)
	if _, err := fmt.Fprintf(a.conn, "\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":%d}}\n", id); err != nil {
		return fmt.Errorf("guest agent sync: %w", err)
	}
	for {
		if _, err := a.r.ReadBytes(0xff); err != nil {
			return fmt.Errorf("guest agent sync: %w", err)
		}
		line, err := a.r.ReadBytes('\n')
		if err != nil {
			return fmt.Errorf("guest agent sync: %w", err)
		}
		var rep struct {
			Return *int64 `json:"return"`
		}
		if json.Unmarshal(line, &rep) == nil && rep.Return != nil && *rep.Return == id {
			return nil
		}
	}
}

// call runs command and returns how long the agent took to answer, from
// the write of the request to the read of the reply.
func (a *rawAgent) call(ctx context.Context, command string) (time.Duration, error) {
	a.deadline(ctx)
	start := time.Now()
	if _, err := fmt.Fprintf(a.conn, "{\"execute\":%q}\n", command); err != nil {
		return 0, fmt.Errorf("guest agent %s: %w", command, err)
	}
	line, err := a.r.ReadBytes('\n')
	took := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("guest agent %s: %w", command, err)
	}
	var rep struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal(line, &rep); err != nil {
		return 0, fmt.Errorf("guest agent %s: reply %q: %w", command, line, err)
	}
	if rep.Error != nil {
		return 0, fmt.Errorf("guest agent %s: %s: %s", command, rep.Error.Class, rep.Error.Desc)
	}
	if rep.Return == nil {
		return 0, fmt.Errorf("guest agent %s: unexpected reply %q", command, line)
	}
	return took, nil
}

// rawFreezeThaw freezes and thaws the guest n times through a bare
// client on the agent socket at path, a short pause between rounds, and
// returns the freeze and thaw times in milliseconds. The socket must be
// free: QEMU serves one client at a time, so a client that holds it makes
// the connection wait; the ceiling of ctx ends that wait.
func rawFreezeThaw(ctx context.Context, path string, n int) (freeze, thaw []float64, err error) {
	a, err := dialAgent(ctx, path)
	if err != nil {
		return nil, nil, err
	}
	defer a.Close()
	for range n {
		f, err := a.call(ctx, "guest-fsfreeze-freeze")
		if err != nil {
			_, _ = a.call(context.Background(), "guest-fsfreeze-thaw") // never leave the guest frozen
			return freeze, thaw, err
		}
		th, err := a.call(ctx, "guest-fsfreeze-thaw")
		if err != nil {
			return freeze, thaw, err
		}
		freeze, thaw = append(freeze, ms(f)), append(thaw, ms(th))
		time.Sleep(50 * time.Millisecond)
	}
	return freeze, thaw, nil
}
