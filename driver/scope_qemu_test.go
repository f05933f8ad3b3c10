package driver

import (
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/qsnapd/qsnapd/internal/qcow2"
	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/qmp"
)

// TestQEMUDiskIdentities reads what identifies each disk to the guest
// from real QEMU: devices with ids and serials, an anonymous device on
// the root bus, and one behind a bridge, found once the firmware has
// numbered the bus behind it.
func TestQEMUDiskIdentities(t *testing.T) {
	dir := qemutest.TempDir(t)
	var extra []string
	for _, name := range []string{"anon1", "anon2"} {
		file := filepath.Join(dir, name+".qcow2")
		if err := qcow2.Create(file, qcow2.Options{VirtualSize: 1 << 20}); err != nil {
			t.Fatal(err)
		}
		extra = append(extra, "-blockdev", "driver=file,filename="+file+",node-name=file-"+name,
			"-blockdev", "driver=qcow2,file=file-"+name+",node-name="+name)
	}
	extra = append(extra, "-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,addr=0x10",
		"-device", "virtio-blk-pci,drive=anon1", "-device", "virtio-blk-pci,drive=anon2,bus=rp1,serial=s-anon2")
	vm := qemutest.Start(t, qemutest.Options{Disks: 2, Style: qemutest.Blockdev, Serials: true, Extra: extra})
	ctx := testCtx(t)
	c, err := qmp.Dial(ctx, vm.QMP)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	disks, err := c.Disks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []diskIdentity{{"vda", "vda", &pciFunc{0, 1, 0}}, {"vdb", "vdb", &pciFunc{0, 2, 0}},
		{"anon1", "", &pciFunc{0, 3, 0}}, {"anon2", "s-anon2", nil}}
	// Before the firmware ran, the bus behind the bridge has no number.
	if ids, err := diskIdentities(ctx, c, disks); err != nil || !reflect.DeepEqual(ids, want) {
		t.Errorf("before the firmware: got %s, %v\nwant %s", describeIDs(ids), err, describeIDs(want))
	}
	if err := c.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		pci, err := c.QueryPCI(ctx)
		return err == nil && len(pci.Devices) > 8
	}, "the firmware to number the bus behind the bridge")
	want[3].pci = &pciFunc{1, 0, 0}
	if ids, err := diskIdentities(ctx, c, disks); err != nil || !reflect.DeepEqual(ids, want) {
		t.Errorf("got  %s, %v\nwant %s", describeIDs(ids), err, describeIDs(want))
	}
}

func describeIDs(ids []diskIdentity) string {
	var s []string
	for _, id := range ids {
		pci := "none"
		if id.pci != nil {
			pci = fmt.Sprintf("%d:%d.%d", id.pci.bus, id.pci.slot, id.pci.function)
		}
		s = append(s, fmt.Sprintf("%s(serial %q, pci %s)", id.target, id.serial, pci))
	}
	return strings.Join(s, " ")
}
