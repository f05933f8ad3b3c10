#!/usr/bin/env bash
# demo.sh: qsnapd on a real Linux guest, start to finish. It boots the
# test guest (a Debian kernel and qemu-ga under TCG) with two ext4 data
# disks, starts qsnapd on temporary sockets, takes a quiesced atomic
# snapshot of both disks through qsnapctl, shows what changed, and
# cleans up everything it started. Run through `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d /tmp/qsdemo.XXXXXX)
qemu_pid= daemon_pid=
cleanup() {
	[ -n "$daemon_pid" ] && kill -TERM "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null || true
	[ -n "$qemu_pid" ] && kill -KILL "$qemu_pid" 2>/dev/null && wait "$qemu_pid" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() {
	printf '$'
	for a in "$@"; do
		if [[ $a =~ ^[A-Za-z0-9_./=,:@%+-]+$ ]]; then printf ' %s' "$a"; else printf " '%s'" "$a"; fi
	done
	printf '\n'
	"$@"
}

step "Test guest: a Debian kernel and initramfs with qemu-ga (cached after the first build)"
guest=$(bash internal/testing/testguest/build.sh | tail -n 1)
echo "guest in $guest"

step "Two ext4 data disks as qcow2 images"
for d in data1 data2; do
	mkdir -p "$work/seed-$d" && echo "$d" > "$work/seed-$d/serial"
	mkfs.ext4 -F -q -E lazy_itable_init=0,lazy_journal_init=0 -d "$work/seed-$d" "$work/$d.raw" 64M >/dev/null
	qemu-img convert -f raw -O qcow2 "$work/$d.raw" "$work/$d.qcow2"
	rm -rf "$work/$d.raw" "$work/seed-$d"
done
ls -l "$work"/*.qcow2

step "Boot the guest under QEMU (TCG)"
qemu-system-x86_64 -M q35 -m 256 -accel tcg -nodefaults -no-user-config -display none -no-reboot \
	-kernel "$guest/vmlinux" -initrd "$guest/initrd" -append "console=ttyS0 quiet panic=-1" \
	-serial "file:$work/serial.log" \
	-qmp "unix:$work/qmp.sock,server=on,wait=off" \
	-chardev "socket,path=$work/qga.sock,server=on,wait=off,id=qga0" \
	-device virtio-serial-pci -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0,id=qga0port \
	-blockdev "driver=file,filename=$work/data1.qcow2,node-name=file-data1" \
	-blockdev driver=qcow2,file=file-data1,node-name=fmt-data1 \
	-device virtio-blk-pci,drive=fmt-data1,id=data1,serial=data1 \
	-blockdev "driver=file,filename=$work/data2.qcow2,node-name=file-data2" \
	-blockdev driver=qcow2,file=file-data2,node-name=fmt-data2 \
	-device virtio-blk-pci,drive=fmt-data2,id=data2,serial=data2 &
qemu_pid=$!

step "Start qsnapd on temporary sockets and state"
export QSNAPD_SOCKET=$work/qsnapd.sock
bin/qsnapd --socket "$QSNAPD_SOCKET" --socket-ro "$work/qsnapd-ro.sock" --state-dir "$work/state" \
	--libvirt-socket "$work/libvirt-sock" --libvirt-socket-ro "$work/libvirt-sock-ro" --log-level warn &
daemon_pid=$!
for _ in $(seq 100); do [ -S "$QSNAPD_SOCKET" ] && [ -S "$work/qmp.sock" ] && break; sleep 0.1; done
show bin/qsnapctl attach demo --qmp "$work/qmp.sock" --agent "$work/qga.sock"

step "Wait for the guest agent"
for i in $(seq 120); do
	bin/qsnapctl domfsstatus demo >/dev/null 2>&1 && break
	[ "$i" = 120 ] && { echo "the guest agent did not come up"; tail -20 "$work/serial.log"; exit 1; }
	sleep 0.5
done
show bin/qsnapctl domfsstatus demo

step "Disks before"
show bin/qsnapctl domblklist demo

step "A quiesced, atomic, disk-only snapshot of both disks"
show bin/qsnapctl snapshot-create-as demo snap1 "first demo snapshot" --disk-only --atomic --quiesce \
	--diskspec "data1,file=$work/data1.snap1" --diskspec "data2,file=$work/data2.snap1"

step "Disks after: each runs on its overlay, the original holds the snapshot"
show bin/qsnapctl domblklist demo --details

step "Snapshots"
show bin/qsnapctl snapshot-list demo --parent

step "How it went: quiesced, and the freeze window"
bin/qsnapctl --json snapshot-create-as demo snap2 --disk-only --atomic --quiesce \
	--diskspec "data1,file=$work/data1.snap2" --diskspec "data2,file=$work/data2.snap2" > "$work/snap2.json"
grep -E '"(quiesced|total_ms|switch_ms|freeze_ms|code)"' "$work/snap2.json" | sed 's/^ */  /'

if command -v virsh >/dev/null; then
	step "The same daemon from the stock virsh, through qsnapd's libvirt endpoint"
	uri="qemu+unix:///system?socket=$work/libvirt-sock"
	show virsh -c "$uri" snapshot-create-as demo snap3 --disk-only --atomic --quiesce \
		--diskspec "data1,file=$work/data1.snap3" --diskspec "data2,file=$work/data2.snap3"
	show virsh -c "$uri" snapshot-list demo --tree
fi

step "The guest is thawed"
show bin/qsnapctl domfsstatus demo

step "Done; cleaning up"
