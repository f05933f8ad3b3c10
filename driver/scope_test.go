package driver

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/qsnapd/qsnapd/guestagent"
)

func TestResolveScope(t *testing.T) {
	for _, tc := range []struct {
		requested, def, want QuiesceScope
	}{
		{"", ScopeAll, ScopeAll},
		{"", ScopeSnapshotDisks, ScopeSnapshotDisks},
		{ScopeAll, ScopeSnapshotDisks, ScopeAll},
		{ScopeSnapshotDisks, ScopeAll, ScopeSnapshotDisks},
	} {
		if got, err := resolveScope(tc.requested, tc.def); got != tc.want || err != nil {
			t.Errorf("resolveScope(%q, %q) = %q, %v; want %q", tc.requested, tc.def, got, err, tc.want)
		}
	}
	for _, bad := range []QuiesceScope{"snapshot", "ALL", " all"} {
		if _, err := resolveScope(bad, ScopeAll); !errors.Is(err, ErrInvalidArg) {
			t.Errorf("resolveScope(%q): got %v, want ErrInvalidArg", bad, err)
		}
	}
}

// guestDisk is a GuestDiskAddress: a virtio disk at PCI slot (bus 0)
// with a serial and a device node, each left out when empty or -1.
func guestDisk(slot int, serial, dev string) guestagent.DiskAddress {
	a := guestagent.DiskAddress{BusType: "virtio", Serial: serial, Dev: dev, PCIController: guestagent.PCIAddress{Slot: slot}}
	if slot < 0 {
		a.PCIController = guestagent.PCIAddress{Domain: -1, Bus: -1, Slot: -1, Function: -1}
	}
	return a
}

func fs(mountpoint string, disks ...guestagent.DiskAddress) guestagent.Filesystem {
	return guestagent.Filesystem{Mountpoint: mountpoint, Type: "ext4", Disks: disks}
}

// hostDisks are vda, vdb and vdc at PCI slots 1 to 3, with serials s1
// to s3 if serials.
func hostDisks(serials bool) []diskIdentity {
	var ids []diskIdentity
	for i, t := range []string{"vda", "vdb", "vdc"} {
		id := diskIdentity{target: t, pci: &pciFunc{0, i + 1, 0}}
		if serials {
			id.serial = "s" + string(rune('1'+i))
		}
		ids = append(ids, id)
	}
	return ids
}

func TestPlanScope(t *testing.T) {
	threeByPCI := []guestagent.Filesystem{
		fs("/mnt/c", guestDisk(3, "", "/dev/vdc")), fs("/mnt/b", guestDisk(2, "", "/dev/vdb")), fs("/mnt/a", guestDisk(1, "", "/dev/vda"))}
	noIdentity := []diskIdentity{{target: "vda"}, {target: "vdb"}, {target: "vdc"}}
	for _, tc := range []struct {
		name        string
		ids         []diskIdentity
		snapshotted []string
		fss         []guestagent.Filesystem
		want        []string
		wantErr     string // in the error, when the plan falls back
		wantSummary string // in the summary otherwise
	}{
		{name: "by PCI address, 1 of 3", ids: hostDisks(false), snapshotted: []string{"vdb"}, fss: threeByPCI,
			want: []string{"/mnt/b"}, wantSummary: "1 of the guest's 3 filesystems, those on the snapshot's disks: /mnt/b (vdb)"},
		{name: "by PCI address, 2 of 3", ids: hostDisks(false), snapshotted: []string{"vda", "vdc"}, fss: threeByPCI,
			want: []string{"/mnt/c", "/mnt/a"}},
		{name: "the serial wins over the PCI address", ids: hostDisks(true), snapshotted: []string{"vdb"},
			// Slots that would say vdc is vdb; the serials say otherwise.
			fss:  []guestagent.Filesystem{fs("/mnt/x", guestDisk(2, "s3", "")), fs("/mnt/y", guestDisk(3, "s2", ""))},
			want: []string{"/mnt/y"}},
		{name: "a serial on one side only: the PCI address", ids: hostDisks(true), snapshotted: []string{"vdb"}, fss: threeByPCI,
			want: []string{"/mnt/b"}},
		{name: "neither serial nor PCI: the device node", ids: noIdentity, snapshotted: []string{"vdb"},
			fss:  []guestagent.Filesystem{fs("/boot", guestDisk(-1, "", "/dev/vda1")), fs("/srv", guestDisk(-1, "", "/dev/vdb2")), fs("/home", guestDisk(-1, "", "/dev/vdb3"))},
			want: []string{"/srv", "/home"}},
		{name: "a PCI address on the guest's side only: the device node", ids: noIdentity, snapshotted: []string{"vdc"}, fss: threeByPCI,
			want: []string{"/mnt/c"}},
		{name: "nvme partitions", ids: []diskIdentity{{target: "nvme0n1"}, {target: "nvme0n10"}}, snapshotted: []string{"nvme0n1"},
			fss:  []guestagent.Filesystem{fs("/a", guestDisk(-1, "", "/dev/nvme0n1p2")), fs("/b", guestDisk(-1, "", "/dev/nvme0n10")), fs("/c", guestDisk(-1, "", "/dev/nvme0n1"))},
			want: []string{"/a", "/c"}},
		{name: "a filesystem spanning a snapshotted and another disk is frozen", ids: hostDisks(false), snapshotted: []string{"vda"},
			fss:  []guestagent.Filesystem{fs("/data", guestDisk(2, "", ""), guestDisk(1, "", "")), fs("/mnt/c", guestDisk(3, "", ""))},
			want: []string{"/data"}, wantSummary: "/data (vdb, vda)"},
		{name: "a guest disk that matches no disk is not the snapshot's", ids: hostDisks(false), snapshotted: []string{"vda"},
			fss:  append(slices.Clone(threeByPCI), fs("/scsi", guestagent.DiskAddress{BusType: "scsi", Dev: "/dev/sda", PCIController: guestagent.PCIAddress{Slot: 5}})),
			want: []string{"/mnt/a"}},
		{name: "a PCI address in another domain matches nothing", ids: hostDisks(false), snapshotted: []string{"vda"},
			fss: []guestagent.Filesystem{fs("/mnt/a", guestagent.DiskAddress{Dev: "/dev/vda", PCIController: guestagent.PCIAddress{Domain: 1, Slot: 1}})},
			// Both have PCI addresses, so the device node is not asked.
			wantErr: "disk 'vda' could not be mapped to a filesystem of the guest: guest-get-fsinfo lists none on it"},
		{name: "a snapshotted disk without a filesystem", ids: hostDisks(false), snapshotted: []string{"vdb", "vdc"}, fss: threeByPCI[1:],
			wantErr: "disk 'vdc' could not be mapped to a filesystem of the guest: guest-get-fsinfo lists none on it"},
		{name: "no filesystems at all", ids: hostDisks(false), snapshotted: []string{"vda"},
			wantErr: "disk 'vda' could not be mapped"},
		{name: "a guest disk matching two disks, one snapshotted", snapshotted: []string{"vdb"},
			ids: []diskIdentity{{target: "vda", serial: "same"}, {target: "vdb", serial: "same"}},
			fss: []guestagent.Filesystem{fs("/x", guestDisk(-1, "same", "/dev/vda"))}, wantErr: "the guest's disk /dev/vda under /x matches disks vda, vdb alike"},
		{name: "a guest disk matching two disks, neither snapshotted", snapshotted: []string{"vdc"},
			ids: []diskIdentity{{target: "vda", serial: "same"}, {target: "vdb", serial: "same"}, {target: "vdc", serial: "c"}},
			fss: []guestagent.Filesystem{fs("/x", guestDisk(-1, "same", "")), fs("/y", guestDisk(-1, "c", ""))}, want: []string{"/y"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, summary, err := planScope(tc.ids, tc.snapshotted, tc.fss)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("got %q, %v; want an error with %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Errorf("got %q, %v; want %q", got, err, tc.want)
			}
			if !strings.Contains(summary, tc.wantSummary) {
				t.Errorf("summary %q lacks %q", summary, tc.wantSummary)
			}
		})
	}
}
