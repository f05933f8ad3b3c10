//go:build benchlibvirt

package benchlibvirt

import (
	"bytes"
	"context"
	"encoding/xml"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"
)

// uri is libvirt's system instance: transient domains, run as libvirt-qemu.
const uri = "qemu:///system"

// libvirt is the libvirt side: virsh against the system instance, which
// the bench starts by hand when nothing serves it.
type libvirt struct {
	virsh    string
	emulator string
}

// startLibvirt makes sure libvirt's system instance answers. When it does
// not, it starts virtlogd (QEMU's output goes through it) and libvirtd by
// hand, each in its own process group so that a Ctrl-C reaches the bench
// first: the bench destroys its domains, then stops what it started, and
// only that.
func startLibvirt(ctx context.Context, t *testing.T, work string) *libvirt {
	t.Helper()
	lv := &libvirt{virsh: lookSbin(t, "virsh"), emulator: lookSbin(t, "qemu-system-x86_64")}
	kvmForLibvirt(t)
	if _, err := lv.run(ctx, 10*time.Second, "uri"); err == nil {
		t.Logf("libvirt: the running system instance answers; using it")
		return lv
	}
	if !accepts("/run/libvirt/virtlogd-sock") {
		startDaemon(t, lookSbin(t, "virtlogd"), filepath.Join(work, "virtlogd.log"))
	}
	d := startDaemon(t, lookSbin(t, "libvirtd"), filepath.Join(work, "libvirtd.log"))
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, err := lv.run(ctx, 10*time.Second, "uri")
		if err == nil {
			return lv
		}
		select {
		case <-d.exited:
			t.Fatalf("libvirtd exited at start: %s", tail(filepath.Join(work, "libvirtd.log")))
		default:
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("libvirtd does not answer on %s: %v", uri, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// daemon is a libvirt daemon the bench started.
type daemon struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

// startDaemon runs bin in the foreground in its own process group, its
// output in logPath, and stops it with SIGTERM when t ends.
func startDaemon(t *testing.T, bin, logPath string) *daemon {
	t.Helper()
	out, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{cmd: exec.Command(bin), exited: make(chan struct{})}
	d.cmd.Stdout, d.cmd.Stderr = out, out
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		out.Close()
		t.Fatalf("start %s: %v", bin, err)
	}
	go func() { _ = d.cmd.Wait(); out.Close(); close(d.exited) }()
	t.Logf("libvirt: started %s by hand (pid %d)", filepath.Base(bin), d.cmd.Process.Pid)
	t.Cleanup(func() {
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(30 * time.Second):
			_ = d.cmd.Process.Kill()
			<-d.exited
		}
		t.Logf("libvirt: stopped %s (pid %d)", filepath.Base(bin), d.cmd.Process.Pid)
	})
	return d
}

// kvmForLibvirt gives /dev/kvm to group kvm for the run, as udev does on
// an ordinary host. libvirt checks that its QEMU user can open /dev/kvm;
// when it cannot, but its cached capabilities (probed by root) say KVM,
// it probes QEMU again on every lookup, about 4 s each, and one virsh
// create takes minutes. A host without udev (a container, a microVM)
// leaves /dev/kvm 0600 root. The guests run under TCG either way.
func kvmForLibvirt(t *testing.T) {
	t.Helper()
	const dev = "/dev/kvm"
	fi, err := os.Stat(dev)
	if err != nil {
		return
	}
	g, err := user.LookupGroup("kvm")
	if err != nil {
		return
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return
	}
	st := fi.Sys().(*syscall.Stat_t)
	perm := fi.Mode().Perm()
	if int(st.Gid) == gid && perm&0o060 == 0o060 {
		return
	}
	if err := os.Chown(dev, -1, gid); err != nil {
		t.Fatalf("chgrp kvm %s: %v", dev, err)
	}
	t.Cleanup(func() {
		if err := os.Chown(dev, int(st.Uid), int(st.Gid)); err != nil {
			t.Errorf("restore the owner of %s: %v", dev, err)
		}
		if err := os.Chmod(dev, perm); err != nil {
			t.Errorf("restore the mode of %s: %v", dev, err)
		}
	})
	if err := os.Chmod(dev, perm|0o060); err != nil {
		t.Fatalf("chmod g+rw %s: %v", dev, err)
	}
	t.Logf("libvirt: %s is group kvm, mode %o, for the run (it was %d:%d, mode %o), as udev sets it", dev, perm|0o060, st.Uid, st.Gid, perm)
}

// run runs virsh against the system instance with a ceiling.
func (lv *libvirt) run(ctx context.Context, limit time.Duration, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	return output(lv.command(ctx, args...))
}

func (lv *libvirt) command(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, lv.virsh, append([]string{"-c", uri}, args...)...)
}

// version is the daemon's version line, as virsh prints it.
func (lv *libvirt) version(ctx context.Context) string {
	out, err := lv.run(ctx, 10*time.Second, "version", "--daemon")
	if err != nil {
		return "libvirt (version unknown)"
	}
	var lib, hv string
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(l, "Running against daemon: "); ok {
			lib = v
		}
		if v, ok := strings.CutPrefix(l, "Running hypervisor: "); ok {
			hv = v
		}
	}
	return fmt.Sprintf("libvirt %s, %s", lib, hv)
}

// domain is what the domain XML template takes.
type domain struct {
	Name      string
	UUID      string // empty: libvirt makes one up
	Emulator  string
	MemoryMiB int
	// Kernel, Initrd and Cmdline boot the test guest directly; empty for
	// a VM without a guest OS.
	Kernel, Initrd, Cmdline string
	Disks                   []domainDisk
	SerialLog               string // the guest's console, if any
	Agent                   bool   // a virtio-serial channel org.qemu.guest_agent.0
}

type domainDisk struct {
	Target, Path, Serial string
}

// The test guest's QEMU settings in libvirt's terms: q35 under TCG
// (type 'qemu'), one vCPU, ACPI, no reboot, virtio disks, and no devices
// beyond those (QEMU runs with -nodefaults either way).
var domainXML = template.Must(template.New("domain").Funcs(template.FuncMap{"x": xmlText}).Parse(`<domain type='qemu'>
  <name>{{x .Name}}</name>
{{- if .UUID}}
  <uuid>{{x .UUID}}</uuid>
{{- end}}
  <memory unit='MiB'>{{.MemoryMiB}}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
{{- if .Kernel}}
    <kernel>{{x .Kernel}}</kernel>
    <initrd>{{x .Initrd}}</initrd>
    <cmdline>{{x .Cmdline}}</cmdline>
{{- end}}
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{{x .Emulator}}</emulator>
{{- range .Disks}}
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{{x .Path}}'/>
      <target dev='{{x .Target}}' bus='virtio'/>
{{- if .Serial}}
      <serial>{{x .Serial}}</serial>
{{- end}}
    </disk>
{{- end}}
{{- if .SerialLog}}
    <serial type='file'>
      <source path='{{x .SerialLog}}'/>
      <target port='0'/>
    </serial>
{{- end}}
{{- if .Agent}}
    <channel type='unix'>
      <source mode='bind'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
{{- end}}
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
`))

func xmlText(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s)) // a strings.Builder does not fail
	return b.String()
}

// create starts d as a transient domain (paused if asked) and destroys it
// when t ends.
func (lv *libvirt) create(ctx context.Context, t *testing.T, d domain, dir string, paused bool) {
	t.Helper()
	var buf bytes.Buffer
	if err := domainXML.Execute(&buf, d); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, d.Name+".xml")
	if err := os.WriteFile(file, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"create", file}
	if paused {
		args = append(args, "--paused")
	}
	if _, err := lv.run(ctx, 2*time.Minute, args...); err != nil {
		t.Fatalf("virsh create %s: %v", d.Name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if out, err := lv.run(ctx, time.Minute, "destroy", d.Name); err != nil && !strings.Contains(string(out)+err.Error(), "failed to get domain") {
			t.Errorf("virsh destroy %s: %v", d.Name, err)
		}
	})
}

// waitAgent waits until libvirt's agent connection answers and the guest
// has mounted every mountpoint.
func (lv *libvirt) waitAgent(ctx context.Context, t *testing.T, name string, mountpoints []string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		out, err := lv.run(ctx, 30*time.Second, "domfsinfo", name)
		if err == nil && containsAll(string(out), mountpoints) {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("libvirt domain %s: the guest agent did not show %v: %v\n%s", name, mountpoints, err, out)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// sources returns the active image of each of dom's disks, by target.
func (lv *libvirt) sources(ctx context.Context, dom string) (map[string]string, error) {
	out, err := lv.run(ctx, 30*time.Second, "domblklist", dom)
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) == 2 && f[0] != "Target" {
			m[f[0]] = f[1]
		}
	}
	return m, nil
}

// output runs cmd and returns its standard output; a failure carries
// standard error.
func output(cmd *exec.Cmd) ([]byte, error) {
	out, _, err := timed(cmd)
	return out, err
}

// timed runs cmd and returns its standard output and its wall time, from
// just before the process starts to just after it has exited and its
// output is read.
func timed(cmd *exec.Cmd) ([]byte, time.Duration, error) {
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	if err != nil {
		return stdout.Bytes(), took, fmt.Errorf("%s: %w: %s", filepath.Base(cmd.Path), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), took, nil
}

// lookSbin finds a program that may live in an sbin directory missing
// from PATH.
func lookSbin(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatalf("%s not found: run make bench-libvirt, which installs it", name)
	return ""
}

// accepts reports whether a unix socket takes connections.
func accepts(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// tail is the end of a log file, for an error message.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}
