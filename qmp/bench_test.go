package qmp_test

import (
	"bufio"
	"context"
	"net"
	"testing"

	"github.com/qsnapd/qsnapd/internal/testing/qemutest"
	"github.com/qsnapd/qsnapd/qmp"
)

// BenchmarkQueryStatus compares a query-status round trip through the
// client with the same round trip as a bare socket write and read, on
// two monitors of one QEMU. The client's overhead target is 20%.
func BenchmarkQueryStatus(b *testing.B) {
	vm := qemutest.Start(b, qemutest.Options{SecondMonitor: true})

	b.Run("client", func(b *testing.B) {
		ctx := context.Background()
		c, err := qmp.Dial(ctx, vm.QMP)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := c.QueryStatus(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})

	b.Run("bare", func(b *testing.B) {
		conn, err := net.Dial("unix", vm.QMP2)
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		r := bufio.NewReader(conn)
		if _, err := r.ReadBytes('\n'); err != nil { // greeting
			b.Fatal(err)
		}
		if _, err := conn.Write([]byte(`{"execute":"qmp_capabilities"}` + "\n")); err != nil {
			b.Fatal(err)
		}
		if _, err := r.ReadBytes('\n'); err != nil {
			b.Fatal(err)
		}
		cmd := []byte(`{"execute":"query-status","id":"q1"}` + "\n")
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := conn.Write(cmd); err != nil {
				b.Fatal(err)
			}
			if _, err := r.ReadBytes('\n'); err != nil {
				b.Fatal(err)
			}
		}
	})
}
