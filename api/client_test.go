package api

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestNoAnswer: a request whose context ends before any answer, on a
// socket that queues the connection and never answers, is a
// NoAnswerError that names the socket and the request and keeps the
// context's cause.
func TestNoAnswer(t *testing.T) {
	dir, err := os.MkdirTemp("", "qs") // short: unix socket paths are under 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
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
