package server

import (
	"context"
	"net"

	"github.com/qsnapd/qsnapd/internal/peercred"
)

// Peer is the process at the other end of a unix socket.
type Peer = peercred.Peer

// Access says who may use the read-write socket besides root.
type Access = peercred.Access

type peerKey struct{}

func withPeer(ctx context.Context, c net.Conn) context.Context {
	p, err := peercred.Of(c)
	if err != nil {
		p = Peer{PID: -1, UID: -1, GID: -1}
	}
	return context.WithValue(ctx, peerKey{}, p)
}

func peerFrom(ctx context.Context) Peer {
	p, ok := ctx.Value(peerKey{}).(Peer)
	if !ok {
		return Peer{PID: -1, UID: -1, GID: -1}
	}
	return p
}
