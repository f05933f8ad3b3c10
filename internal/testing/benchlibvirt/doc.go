// Package benchlibvirt times qsnapd against libvirt side by side, each on
// its own copy of the same VM, with interleaved runs (make bench-libvirt;
// the test needs -tags benchlibvirt and root).
package benchlibvirt
