package server_test

import (
	"fmt"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/api/server"
	"github.com/qsnapd/qsnapd/driver"
)

func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// checkHammer runs 20 clients against one daemon with 4 domains: lists,
// disks and snapshots at once. Nothing may fail that should not, and no
// goroutine or file descriptor may be left once the daemon is gone.
func checkHammer(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	fdsBefore := openFDs(t)
	t.Run("hammer", func(t *testing.T) {
		d := startDaemon(t, server.Access{})
		const domains, clients, rounds = 4, 20, 6
		for i := 0; i < domains; i++ {
			d.vm(fmt.Sprintf("vm%d", i), 2)
		}
		var wg sync.WaitGroup
		errs := make(chan error, clients*rounds)
		for c := 0; c < clients; c++ {
			wg.Add(1)
			go func(c int) {
				defer wg.Done()
				cl := api.NewClient(d.rw)
				defer cl.Close()
				for r := 0; r < rounds; r++ {
					dom := fmt.Sprintf("vm%d", (c+r)%domains)
					var err error
					switch (c + r) % 3 {
					case 0:
						_, err = cl.Domains(ctx(t))
						if err == nil {
							_, err = cl.Snapshots(ctx(t), dom, url.Values{"tree": {""}})
						}
					case 1:
						_, err = cl.Disks(ctx(t), dom)
					case 2:
						name := fmt.Sprintf("c%d-r%d", c, r)
						_, err = cl.CreateSnapshot(ctx(t), dom, api.CreateSnapshotRequest{
							XML: "<domainsnapshot><name>" + name + "</name></domainsnapshot>", Flags: api.Flags(driver.FlagDiskOnly | driver.FlagAtomic)}, "")
					}
					if err != nil {
						errs <- fmt.Errorf("client %d round %d on %s: %w", c, r, dom, err)
					}
				}
			}(c)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		total := 0
		for i := 0; i < domains; i++ {
			snaps, err := d.drv.Snapshots(fmt.Sprintf("vm%d", i))
			if err != nil {
				t.Fatal(err)
			}
			total += len(snaps)
		}
		want := 0
		for c := 0; c < clients; c++ {
			for r := 0; r < rounds; r++ {
				if (c+r)%3 == 2 {
					want++
				}
			}
		}
		if total != want {
			t.Errorf("snapshots: %d, want %d", total, want)
		}
	})
	// QEMU's exit and the HTTP transports' idle connections settle
	// shortly after the test's cleanup.
	deadline := time.Now().Add(5 * time.Second)
	for openFDs(t) > fdsBefore && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if after := openFDs(t); after > fdsBefore {
		t.Errorf("file descriptors: %d before, %d after", fdsBefore, after)
	}
}
