// Package revert is an undo stack: register the undo of each side effect
// as it happens, run them in reverse on failure, drop them on success.
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
	mu  sync.Mutex
	fns []Func
}

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
