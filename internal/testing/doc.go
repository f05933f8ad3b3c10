// Package testing holds no code: its subpackages are the test rigs (real
// QEMU, the test guest, a QMP fault proxy, a systemd container to
// install the package in, end-to-end runs of the binaries, a side-by-side
// bench against libvirt), kept apart from the daemon's own packages.
package testing
