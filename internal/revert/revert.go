// Package revert is an undo stack: register the undo of each side effect
// as it happens, run them in reverse on failure, drop them on success.
//
// The usual shape, as in incus's shared/revert:
//
//	undo := revert.New()
//	defer undo.Fail(ctx) // or a deferred call that reports its error
//	... do something; undo.Add(its undo) ...
//	undo.Success()
package revert

import (
	"context"
	"errors"
	"sync"
)

// Func undoes one side effect.
type Func func(ctx context.Context) error

// Stack holds undo functions. It is safe for concurrent Add, so steps
// that run in parallel can register their own undo.
type Stack struct {
	mu   sync.Mutex
	fns  []Func
	done bool // Success or Fail ran: the stack is spent
}

// New returns an armed, empty stack.
func New() *Stack { return &Stack{} }

// Add registers the undo of a side effect that has just happened.
func (s *Stack) Add(f Func) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fns = append(s.fns, f)
}

// Len is the number of pending undo functions.
func (s *Stack) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.fns)
}

// Revert runs every undo function in reverse order, even when some
// fail, and returns their errors joined. The stack is empty afterwards.
func (s *Stack) Revert(ctx context.Context) error {
	s.mu.Lock()
	fns := s.fns
	s.fns = nil
	s.mu.Unlock()
	var errs []error
	for i := len(fns) - 1; i >= 0; i-- {
		if err := fns[i](ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Release drops the undo functions: the side effects are kept.
func (s *Stack) Release() {
	s.mu.Lock()
	s.fns = nil
	s.mu.Unlock()
}

// Success keeps the side effects and disarms the stack, so that a
// deferred Fail does nothing.
func (s *Stack) Success() {
	s.mu.Lock()
	s.fns, s.done = nil, true
	s.mu.Unlock()
}

// Fail reverts, once: after Success or an earlier Fail it does nothing
// and returns nil. It is meant to be deferred right after New.
func (s *Stack) Fail(ctx context.Context) error {
	s.mu.Lock()
	if s.done {
		s.mu.Unlock()
		return nil
	}
	s.done = true
	s.mu.Unlock()
	return s.Revert(ctx)
}
