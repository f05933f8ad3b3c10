package libvirtrpc_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// checkVirshHammer runs 20 stock virsh processes at once against 4
// domains of 2 disks: each creates, lists, inspects and deletes its own
// snapshots. A virsh may fail only as libvirt's busy domain does
// ("Timed out during operation"); the snapshots left are exactly those
// created and not deleted; and once the endpoint is shut down no
// goroutine or file descriptor of it is left.
func checkVirshHammer(t *testing.T) {
	virsh := requireTool(t, "virsh")
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	fdsBefore := openFDs(t)
	t.Run("hammer", func(t *testing.T) {
		e := startEndpoint(t, endpointOpts{})
		const domains, clients, rounds = 4, 20, 3
		for i := range domains {
			e.vm(fmt.Sprintf("vm%d", i), 2)
		}
		var (
			mu      sync.Mutex
			created = map[string][]string{} // domain → snapshots virsh said it created
			deleted = map[string][]string{}
			wg      sync.WaitGroup
		)
		errs := make(chan error, clients*rounds*5)
		for c := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				dom := fmt.Sprintf("vm%d", c%domains)
				for r := range rounds {
					name := fmt.Sprintf("c%d-r%d", c, r)
					run := func(args ...string) (string, bool) {
						out, err := runVirsh(virsh, e.uri(false), args...)
						if err != nil {
							if !strings.Contains(out, "error: Timed out during operation") {
								errs <- fmt.Errorf("client %d: virsh %v: %v\n%s", c, args, err, out)
							}
							return out, false
						}
						return out, true
					}
					out, made := run("snapshot-create-as", dom, name, "--disk-only", "--atomic")
					if made {
						if !strings.Contains(out, "Domain snapshot "+name+" created") {
							errs <- fmt.Errorf("client %d: create %s: %s", c, name, out)
						}
						mu.Lock()
						created[dom] = append(created[dom], name)
						mu.Unlock()
					}
					if out, ok := run("snapshot-list", dom, "--name"); ok && made && !strings.Contains(out, name+"\n") {
						errs <- fmt.Errorf("client %d: %s not listed: %s", c, name, out)
					}
					if made {
						if out, ok := run("snapshot-info", dom, name); ok && !strings.Contains(out, "Name:           "+name) {
							errs <- fmt.Errorf("client %d: info %s: %s", c, name, out)
						}
					}
					run("dominfo", dom)
					if made {
						if out, ok := run("snapshot-delete", dom, name); ok {
							if !strings.Contains(out, "Domain snapshot "+name+" deleted") {
								errs <- fmt.Errorf("client %d: delete %s: %s", c, name, out)
							}
							mu.Lock()
							deleted[dom] = append(deleted[dom], name)
							mu.Unlock()
						}
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		for i := range domains {
			dom := fmt.Sprintf("vm%d", i)
			var want, got []string
			for _, n := range created[dom] {
				if !slices.Contains(deleted[dom], n) {
					want = append(want, n)
				}
			}
			snaps, err := e.drv.Snapshots(dom)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range snaps {
				got = append(got, s.Name)
			}
			slices.Sort(want)
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Errorf("%s: snapshots %v, want %v (created %v, deleted %v)", dom, got, want, created[dom], deleted[dom])
			}
		}
		t.Logf("created %d, deleted %d", count(created), count(deleted))
	})
	// QEMU's exit settles shortly after the test's cleanup.
	deadline := time.Now().Add(5 * time.Second)
	for openFDs(t) > fdsBefore && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if after := openFDs(t); after > fdsBefore {
		t.Errorf("file descriptors: %d before, %d after", fdsBefore, after)
	}
}

func count(m map[string][]string) int {
	n := 0
	for _, v := range m {
		n += len(v)
	}
	return n
}

// runVirsh runs one virsh command; a failure's error carries its exit
// and its output says why.
func runVirsh(virsh, uri string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, virsh, append([]string{"-c", uri}, args...)...).CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return string(out), fmt.Errorf("run: %w", err)
	}
	return string(out), err
}
