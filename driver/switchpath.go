package driver

import "github.com/qsnapd/qsnapd/transaction"

// SwitchAuto is the Switch setting that chooses for each snapshot.
const SwitchAuto = "auto"

// switchFor chooses how a snapshot's overlays enter QEMU, and says why.
//
// With the guest frozen, the freeze window is what matters: the overlay
// nodes are added before the freeze (blockdev-add, which QEMU runs one
// at a time, about 1.4 ms each), so that the window holds only
// blockdev-snapshot, which attaches them. Without a freeze only the
// total matters, and blockdev-snapshot-sync in mode existing opens and
// attaches every overlay in the one switch command: 8 disks in about
// half the time of adding them and then switching. quiesce is what the
// switch gets: anything but skip may freeze the guest around it.
func (d *Driver) switchFor(dom *Domain, quiesce QuiesceMode) (transaction.Switch, string) {
	switch {
	case d.cfg.Switch == string(transaction.SwitchPreadd):
		return transaction.SwitchPreadd, "configured"
	case !dom.hasCommand("blockdev-snapshot-sync"):
		return transaction.SwitchPreadd, "QEMU lacks blockdev-snapshot-sync"
	case d.cfg.Switch == string(transaction.SwitchSync):
		return transaction.SwitchSync, "configured"
	case quiesce != QuiesceSkip:
		return transaction.SwitchPreadd, "the guest is frozen for the switch"
	}
	return transaction.SwitchSync, "the guest is not frozen"
}

// hasCommand reports whether the domain's QEMU has a QMP command, as it
// said when the daemon last connected.
func (dom *Domain) hasCommand(name string) bool {
	dom.mu.Lock()
	defer dom.mu.Unlock()
	return dom.commands[name]
}
