// Package e2e tests qsnapd and qsnapctl end to end, as built binaries
// against real QEMU.
package e2e
