package qmp

import (
	"strings"
	"time"
)

// Default ceilings. Queries answer from memory; graph changes and jobs
// may wait on I/O (flushes, file opens), so they get longer.
const (
	DefaultQueryCeiling       = 5 * time.Second
	DefaultCommandCeiling     = 10 * time.Second
	DefaultBlockCeiling       = 30 * time.Second
	DefaultTransactionCeiling = 60 * time.Second
	DefaultHandshakeTimeout   = 5 * time.Second
)

// Option configures a Client.
type Option func(*options)

type options struct {
	observe     func(command string, took time.Duration, err error)
	handshake   time.Duration
	maxLine     int
	defaultCeil time.Duration
	ceilings    map[string]time.Duration
}

func defaultOptions() options {
	return options{
		handshake:   DefaultHandshakeTimeout,
		maxLine:     MaxLineBytes,
		defaultCeil: DefaultCommandCeiling,
		ceilings:    map[string]time.Duration{},
	}
}

// WithCeiling sets the ceiling of one command, overriding its default.
func WithCeiling(command string, d time.Duration) Option {
	return func(o *options) { o.ceilings[command] = d }
}

// WithDefaultCeiling sets the ceiling of commands with no other rule.
func WithDefaultCeiling(d time.Duration) Option {
	return func(o *options) { o.defaultCeil = d }
}

// WithObserver calls f after every command with its duration and
// error, for metrics. f must return quickly.
func WithObserver(f func(command string, took time.Duration, err error)) Option {
	return func(o *options) { o.observe = f }
}

// WithHandshakeTimeout bounds connect, greeting and negotiation.
func WithHandshakeTimeout(d time.Duration) Option {
	return func(o *options) { o.handshake = d }
}

// WithMaxLineBytes sets the longest line accepted from the peer.
func WithMaxLineBytes(n int) Option {
	return func(o *options) { o.maxLine = n }
}

// ceiling is the longest one command may wait for its reply.
func (o *options) ceiling(command string) time.Duration {
	if d, ok := o.ceilings[command]; ok {
		return d
	}
	switch {
	case strings.HasPrefix(command, "query-"), command == "qom-get", command == "qom-list":
		return DefaultQueryCeiling
	case command == "transaction":
		return DefaultTransactionCeiling
	case strings.HasPrefix(command, "blockdev-"),
		strings.HasPrefix(command, "block-"),
		strings.HasPrefix(command, "job-"),
		command == "human-monitor-command":
		return DefaultBlockCeiling
	}
	return o.defaultCeil
}
