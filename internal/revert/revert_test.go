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

func TestFailRevertsOnceUnlessSuccess(t *testing.T) {
	for _, tc := range []struct {
		name    string
		success bool
		fails   int
		want    []int
	}{
		{"fail reverts in reverse", false, 1, []int{2, 1}},
		{"a second fail does nothing", false, 2, []int{2, 1}},
		{"success disarms fail", true, 1, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := New()
			var order []int
			for i := 1; i <= 2; i++ {
				s.Add(func(context.Context) error { order = append(order, i); return nil })
			}
			if tc.success {
				s.Success()
			}
			for range tc.fails {
				if err := s.Fail(context.Background()); err != nil {
					t.Errorf("Fail: %v", err)
				}
			}
			if !reflect.DeepEqual(order, tc.want) {
				t.Errorf("ran %v, want %v", order, tc.want)
			}
			if s.Len() != 0 {
				t.Errorf("Len = %d, want 0", s.Len())
			}
		})
	}
}

func TestFailReturnsUndoErrors(t *testing.T) {
	s := New()
	errUndo := errors.New("undo failed")
	s.Add(func(context.Context) error { return errUndo })
	if err := s.Fail(context.Background()); !errors.Is(err, errUndo) {
		t.Errorf("Fail = %v, want it to wrap %v", err, errUndo)
	}
	if err := s.Fail(context.Background()); err != nil {
		t.Errorf("second Fail = %v, want nil", err)
	}
}
