package server

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Peer is the process at the other end of a unix socket.
type Peer struct {
	PID, UID, GID int
}

type peerKey struct{}

// peerOf reads SO_PEERCRED: the kernel's word on who connected, which a
// client cannot forge.
func peerOf(c net.Conn) (Peer, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Peer{}, fmt.Errorf("not a unix socket")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Peer{}, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Peer{}, err
	}
	if cerr != nil {
		return Peer{}, cerr
	}
	return Peer{PID: int(cred.Pid), UID: int(cred.Uid), GID: int(cred.Gid)}, nil
}

func withPeer(ctx context.Context, c net.Conn) context.Context {
	p, err := peerOf(c)
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

// supplementaryGroups reads the peer's groups from /proc, since
// SO_PEERCRED carries only the primary gid. A peer gone by now has none.
func supplementaryGroups(pid int) []int {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Groups:"); ok {
			var gids []int
			for _, g := range strings.Fields(rest) {
				if n, err := strconv.Atoi(g); err == nil {
					gids = append(gids, n)
				}
			}
			return gids
		}
	}
	return nil
}

// Access says who may use the read-write socket besides root.
type Access struct {
	UIDs []int
	GIDs []int
}

func (a Access) allows(p Peer) bool {
	if p.UID == 0 || slices.Contains(a.UIDs, p.UID) {
		return true
	}
	if p.UID < 0 {
		return false
	}
	if slices.Contains(a.GIDs, p.GID) {
		return true
	}
	for _, g := range supplementaryGroups(p.PID) {
		if slices.Contains(a.GIDs, g) {
			return true
		}
	}
	return false
}
