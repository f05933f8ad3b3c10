package revert

import (
	"context"
	"errors"
	"reflect"
	"testing"
)

func TestRevertRunsInReverseAndJoinsErrors(t *testing.T) {
	var s Stack
	var order []int
	errTwo := errors.New("two")
	for i := 1; i <= 3; i++ {
		s.Add(func(context.Context) error {
			order = append(order, i)
			if i == 2 {
				return errTwo
			}
			return nil
		})
	}
	err := s.Revert(context.Background())
	if !errors.Is(err, errTwo) {
		t.Errorf("err = %v, want it to wrap %v", err, errTwo)
	}
	if want := []int{3, 2, 1}; !reflect.DeepEqual(order, want) {
		t.Errorf("order = %v, want %v", order, want)
	}
	if s.Len() != 0 {
		t.Errorf("Len after Revert = %d, want 0", s.Len())
	}
}

func TestReleaseKeepsEffects(t *testing.T) {
	var s Stack
	ran := false
	s.Add(func(context.Context) error { ran = true; return nil })
	s.Release()
	if err := s.Revert(context.Background()); err != nil || ran {
		t.Errorf("Revert after Release: err %v, ran %v; want nil, false", err, ran)
	}
}
