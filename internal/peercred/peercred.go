// Package peercred says who is at the other end of a unix socket
// (SO_PEERCRED) and whether a socket's access list lets them in.
package peercred

import (
	"bufio"
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

// Of reads SO_PEERCRED: the kernel's word on who connected, which a
// client cannot forge.
func Of(c net.Conn) (Peer, error) {
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

// Access says who may use a read-write socket besides root.
type Access struct {
	UIDs []int
	GIDs []int
}

// Allows reports whether the peer is root or allowed by uid, primary
// gid or a supplementary group.
func (a Access) Allows(p Peer) bool {
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
