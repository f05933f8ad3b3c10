package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// shutdownTimeout bounds the wait for scrapes in progress at shutdown.
const shutdownTimeout = 5 * time.Second

// Serve serves m on addr at /metrics until ctx ends, then shuts down
// gracefully. It returns a listen error at once, and nil at once if addr
// is empty (metrics disabled).
func Serve(ctx context.Context, addr string, m *Metrics, log *zap.Logger) error {
	if addr == "" {
		return nil
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics: listen: %w", err)
	}
	return serve(ctx, ln, m, log)
}

// serve serves m on ln until ctx ends; it closes ln.
func serve(ctx context.Context, ln net.Listener, m *Metrics, log *zap.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          zap.NewStdLog(log.Named("metrics.http")),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	log.Info("serving metrics", zap.Stringer("addr", ln.Addr()))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("metrics: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	if err != nil {
		return fmt.Errorf("metrics: shutdown: %w", err)
	}
	return nil
}
