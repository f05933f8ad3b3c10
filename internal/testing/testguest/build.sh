#!/usr/bin/env bash
# build.sh builds the test guest of package testguest: an uncompressed
# kernel (vmlinux, booted through its PVH entry) and an initramfs with
# busybox, qemu-ga and the virtio and ext4 modules, all from Debian
# packages. The result is cached under
#   ${QSNAPD_GUEST_CACHE:-/var/cache/qsnapd-testguest}/<key>/{vmlinux,initrd}
# where <key> names the kernel package version and a hash of this script
# and of the package versions, so a changed recipe or a kernel update
# rebuilds. On success the last line on stdout is that directory;
# progress goes to stderr.
#
# Host needs: apt-get, apt-cache, dpkg-deb, tar, gzip, flock, ldd, and the
# packages below, which are installed (with sudo when not root) if missing.
set -euo pipefail

# Modules, in load order: the unpacked package has no modules.dep.
MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
	virtio_blk virtio_console crc16 mbcache jbd2 crc32c_generic ext4)
HOST_PKGS=(qemu-guest-agent busybox-static xz-utils e2fsprogs)

log() { printf 'testguest: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
script=$(readlink -f "${BASH_SOURCE[0]}")

candidate() { apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" { print $2; exit }'; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
have_kernel() { c=$(candidate linux-image-amd64) && [ -n "$c" ] && [ "$c" != "(none)" ]; }

missing=()
for p in "${HOST_PKGS[@]}"; do installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
	have_kernel || { log "apt-get update"; $SUDO apt-get update -qq >&2; }
	log "installing ${missing[*]}"
	$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

cache=${QSNAPD_GUEST_CACHE:-}
if [ -z "$cache" ]; then
	cache=/var/cache/qsnapd-testguest
	if ! { mkdir -p "$cache" && [ -w "$cache" ]; } 2>/dev/null; then
		cache=${XDG_CACHE_HOME:-$HOME/.cache}/qsnapd-testguest
	fi
fi
mkdir -p "$cache"

# Fast path: each apt-cache call costs about half a second, so the key is
# remembered for as long as this script, the package lists and the dpkg
# database stay unchanged.
state=$({
	cat "$script"
	ls -l --time-style=+%s.%N /var/lib/apt/lists/ 2>/dev/null || true
	stat -c '%n %s %Y' /var/lib/dpkg/status
} | sha256sum | cut -c1-16)
memo=$cache/.resolved-$state
if [ -f "$memo" ]; then
	out=$cache/$(cat "$memo")
	if [ -f "$out/recipe" ]; then
		touch "$out" "$memo"
		echo "$out"
		exit 0
	fi
fi

# Package lists are refreshed only when they do not know the kernel.
if ! have_kernel; then
	log "apt-get update"
	$SUDO apt-get update -qq >&2
fi

kpkg=$(apt-cache depends linux-image-amd64 | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
[ -n "$kpkg" ] || die "cannot resolve the kernel package linux-image-amd64 depends on"
read -r kver gver bver < <(apt-cache policy "$kpkg" qemu-guest-agent busybox-static |
	awk '$1 == "Candidate:" { printf "%s ", $2 } END { print "" }')
for v in "$kver" "$gver" "$bver"; do
	[ -n "$v" ] && [ "$v" != "(none)" ] || die "no candidate version for $kpkg, qemu-guest-agent or busybox-static"
done
# qemu-ga's shared libraries come from the host, so its version is part
# of the key as well.
hver=$(dpkg-query -W -f='${Version}' qemu-guest-agent)
recipe="$kpkg=$kver qemu-guest-agent=$gver busybox-static=$bver host-qemu-guest-agent=$hver"
hash=$({ cat "$script"; echo "$recipe"; } | sha256sum | cut -c1-12)
key=$(printf '%s_%s_%s' "${kpkg#linux-image-}" "$kver" "$hash" | tr -c 'A-Za-z0-9._+-' _)
out=$cache/$key

remember() {
	echo "$key" >"$memo.tmp.$$"
	mv "$memo.tmp.$$" "$memo"
}

# One builder at a time; the others wait and then find the result.
exec 9>"$cache/.lock"
flock 9

if [ -f "$out/recipe" ]; then
	remember
	touch "$out"
	echo "$out"
	exit 0
fi

log "building $key ($recipe)"
work=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
# apt's download sandbox user must be able to reach deb/.
chmod 755 "$work"
cd "$work"
mkdir deb
# apt's download sandbox user must be able to write here.
if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then chown _apt deb; fi
(cd deb && apt-get download -q "$kpkg=$kver" "qemu-guest-agent=$gver" "busybox-static=$bver" >&2)

# Only the few files used are taken from the kernel package: unpacking it
# whole writes 400 MB.
mkdir kernel qga bb
pats=('./boot/vmlinuz-*' './boot/config-*' './lib/modules/*/modules.builtin')
for m in "${MODULES[@]}"; do pats+=("./lib/modules/*/$m.ko*"); done
dpkg-deb --fsys-tarfile deb/"${kpkg}"_*.deb | tar -x -C kernel --wildcards "${pats[@]}"
dpkg -x deb/qemu-guest-agent_*.deb qga
dpkg -x deb/busybox-static_*.deb bb

bz=$(echo kernel/boot/vmlinuz-*)
[ -f "$bz" ] || die "no /boot/vmlinuz-* in $kpkg"
grep -qx 'CONFIG_PVH=y' kernel/boot/config-* || die "$kpkg lacks CONFIG_PVH=y: its vmlinux cannot be booted with -kernel"

# The bzImage carries vmlinux as an xz stream; the first offset whose
# stream decompresses to an ELF file is the payload.
mkdir -p root
found=
for off in $(LC_ALL=C grep -obUaF -- $'\xfd7zXZ' "$bz" | cut -d: -f1); do
	tail -c +$((off + 1)) "$bz" >payload.xz
	if xz -dc --single-stream payload.xz >vmlinux 2>/dev/null &&
		[ "$(head -c 4 vmlinux | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; then
		found=$off
		break
	fi
done
rm -f payload.xz
[ -n "$found" ] || die "no xz-compressed ELF payload in $bz"

r=$work/root
mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,var,tmp,mnt,root,etc/qemu,lib/modules,lib64}
ln -s ../run "$r/var/run"
chmod 1777 "$r/tmp"

install -m 755 bb/bin/busybox "$r/bin/busybox"
"$r/bin/busybox" --list-full | while read -r applet; do
	[ -e "$r/$applet" ] || [ -L "$r/$applet" ] || ln -s /bin/busybox "$r/$applet"
done

install -m 755 qga/usr/sbin/qemu-ga "$r/usr/sbin/qemu-ga"
# The shared libraries and the loader qemu-ga resolves to on the host go
# to the same paths in the guest.
ldd "$r/usr/sbin/qemu-ga" >ldd.out 2>&1 || die "ldd qemu-ga: $(cat ldd.out)"
if grep -q 'not found' ldd.out; then die "qemu-ga libraries missing on the host: $(grep 'not found' ldd.out)"; fi
for lib in $(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' ldd.out); do
	mkdir -p "$r$(dirname "$lib")"
	cp -L "$lib" "$r$lib"
done

: >"$r/etc/modules"
for m in "${MODULES[@]}"; do
	ko=$(find kernel/lib/modules \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.gz" \) -print -quit)
	if [ -z "$ko" ]; then
		if grep -q "/$m.ko\$" kernel/lib/modules/*/modules.builtin; then
			log "module $m is built in"
		else
			log "module $m not found, skipped"
		fi
		continue
	fi
	case $ko in
	*.xz) xz -dc "$ko" >"$r/lib/modules/$m.ko" ;;
	*.gz) gzip -dc "$ko" >"$r/lib/modules/$m.ko" ;;
	*) cp "$ko" "$r/lib/modules/$m.ko" ;;
	esac
	echo "$m" >>"$r/etc/modules"
done

cat >"$r/sbin/shutdown" <<'EOF'
#!/bin/sh
# qemu-ga runs /sbin/shutdown for guest-shutdown; there is no init to ask.
sync
case " $* " in
*" -r "*) exec reboot -f ;;
*) exec poweroff -f ;;
esac
EOF
chmod 755 "$r/sbin/shutdown"

cat >"$r/init" <<'EOF'
#!/bin/sh
# /init of the qsnapd test guest. Kernel command line switches:
#   qsnap.failhook=1  run qemu-ga with an fsfreeze hook that fails on freeze
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
say() { echo "qsnap-init: $*"; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

for m in $(cat /etc/modules); do
	insmod "/lib/modules/$m.ko" || say "insmod $m failed"
done

# Data disks are mounted by their virtio serial at /mnt/<serial>.
for b in /sys/block/vd*; do
	[ -e "$b" ] || continue
	serial=$(cat "$b/serial" 2>/dev/null) || serial=
	[ -n "$serial" ] || continue
	mkdir -p "/mnt/$serial"
	mount -t ext4 "/dev/${b##*/}" "/mnt/$serial" || say "mount /dev/${b##*/} ($serial) failed"
done

# No udev: name the virtio ports ourselves. Names arrive from the host
# after the driver has bound, so wait for the agent's port (up to 10 s).
mkdir -p /dev/virtio-ports
agent=/dev/virtio-ports/org.qemu.guest_agent.0
i=0
while [ ! -e "$agent" ] && [ "$i" -lt 1000 ]; do
	for p in /sys/class/virtio-ports/*; do
		[ -e "$p/name" ] || continue
		name=$(cat "$p/name")
		[ -n "$name" ] && [ ! -e "/dev/virtio-ports/$name" ] && ln -s "../${p##*/}" "/dev/virtio-ports/$name"
	done
	[ -e "$agent" ] || usleep 10000
	i=$((i + 1))
done
[ -e "$agent" ] || say "no virtio port org.qemu.guest_agent.0"

hook=
case " $(cat /proc/cmdline) " in
*" qsnap.failhook=1 "*)
	cat >/etc/qemu/fsfreeze-hook <<'HOOK'
#!/bin/sh
echo "qsnap fsfreeze-hook: $1: failing on purpose" >&2
[ "$1" = freeze ] && exit 1
exit 0
HOOK
	chmod 755 /etc/qemu/fsfreeze-hook
	hook=-F/etc/qemu/fsfreeze-hook
	;;
esac

say "starting qemu-ga"
# PID 1 stays in this loop: it restarts qemu-ga and reaps orphans.
while :; do
	qemu-ga -m virtio-serial -p "$agent" $hook
	say "qemu-ga exited with status $?, restarting"
	sleep 1
done
EOF
chmod 755 "$r/init"

(cd "$r" && find . | LC_ALL=C sort | "$r/bin/busybox" cpio -o -H newc 2>/dev/null) >initrd
[ -s initrd ] || die "empty initramfs"

mkdir result
mv vmlinux initrd result/
echo "$recipe" >result/recipe
rm -rf "$out"
mv result "$out"
remember
# Drop builds and memos nobody used for a month.
find "$cache" -mindepth 1 -maxdepth 1 \( -type d ! -name '.*' -o -type f -name '.resolved-*' \) \
	-mtime +30 -exec rm -rf {} + 2>/dev/null || true
log "built $out"
echo "$out"
