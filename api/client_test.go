package api

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// TestNoAnswer: a request whose context ends before any answer, on a
// socket that queues the connection and never answers, is a
// NoAnswerError that names the socket and the request and keeps the
// context's cause.
func TestNoAnswer(t *testing.T) {
	sock, l := listenUnix(t)
	t.Cleanup(func() { l.Close() })
	c := NewClient(sock)
	defer c.Close()

	cause := errors.New("the test's bound passed")
	for _, tc := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		want error
	}{
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 50*time.Millisecond)
		}, context.DeadlineExceeded},
		{"deadline with a cause", func() (context.Context, context.CancelFunc) {
			return context.WithTimeoutCause(context.Background(), 50*time.Millisecond, cause)
		}, cause},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := tc.ctx()
			defer cancel()
			_, err := c.Domains(ctx)
			var na *NoAnswerError
			if !errors.As(err, &na) || na.Socket != sock || na.Request != "GET /v1/domains" || !errors.Is(err, tc.want) {
				t.Errorf("error %#v (%v), want a NoAnswerError on %s for GET /v1/domains, of %v", err, err, sock, tc.want)
			}
		})
	}
}

// TestRetryUnderTheSameID: a mutating request whose connection drops
// before the answer is sent once more under the same operation id, with
// the same body; one named by OperationIDs when it names none. A read,
// and a request under no id, is not sent again.
func TestRetryUnderTheSameID(t *testing.T) {
	type seen struct{ id, body string }
	for _, tc := range []struct {
		name      string
		method    string
		ids       func() string
		wantSends int
	}{
		{"change under a generated id", http.MethodPost, func() string { return "op-7" }, 2},
		{"change under no id", http.MethodPost, nil, 1},
		{"read", http.MethodGet, func() string { return "op-7" }, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock, l := listenUnix(t)
			var mu sync.Mutex
			var sends []seen
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				body, _ := io.ReadAll(r.Body)
				mu.Lock()
				sends = append(sends, seen{r.Header.Get(OperationHeader), string(body)})
				first := len(sends) == 1
				mu.Unlock()
				if first { // the connection drops before the answer
					conn, _, err := http.NewResponseController(w).Hijack()
					if err == nil {
						conn.Close()
					}
					return
				}
				w.WriteHeader(http.StatusNoContent)
			})}
			go func() { _ = srv.Serve(l) }()
			t.Cleanup(func() { srv.Close() })
			c := NewClient(sock)
			defer c.Close()
			c.OperationIDs = tc.ids
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var body any
			if tc.method != http.MethodGet {
				body = map[string]string{"name": "s1"}
			}
			err := c.do(ctx, tc.method, "/v1/x", nil, body, nil)
			mu.Lock()
			defer mu.Unlock()
			if len(sends) != tc.wantSends {
				t.Fatalf("sent %d times, want %d: %+v (%v)", len(sends), tc.wantSends, sends, err)
			}
			if tc.wantSends == 2 {
				if err != nil || sends[0] != sends[1] || sends[0].id != "op-7" || sends[0].body == "" {
					t.Errorf("the retry: %+v, %v; want the same id and body, and its answer", sends, err)
				}
			} else if err == nil {
				t.Error("a lost answer not retried reads as a success")
			}
		})
	}
}

// listenUnix listens on a unix socket in a short directory (socket
// paths must be under 108 bytes), removed when t ends.
func listenUnix(t *testing.T) (string, net.Listener) {
	t.Helper()
	dir, err := os.MkdirTemp("", "qs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	return sock, l
}
