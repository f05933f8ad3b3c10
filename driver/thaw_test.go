package driver

import (
	"errors"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/guestagent"
)

func TestClassifyThaw(t *testing.T) {
	sent := time.Unix(1000, 0)
	const maxFreeze = 10 * time.Second
	inTime, late := sent.Add(time.Second), sent.Add(maxFreeze+time.Millisecond)
	vss := &guestagent.Error{Command: "guest-fsfreeze-thaw", Class: "GenericError", Desc: "couldn't hold writes: fsfreeze is limited up to 10 seconds"}
	thawErr := errors.New("agent went away")
	for _, tc := range []struct {
		name      string
		f         thawFacts
		quiesced  bool
		indicated string // "" for none
	}{
		{"thawed in time", thawFacts{switchEnd: inTime, thawed: true}, true, ""},
		{"switch ended after the deadline", thawFacts{switchEnd: late, thawed: true}, false, IndDeadlineExceeded},
		{"late even if the thaw has not answered", thawFacts{switchEnd: late}, false, IndDeadlineExceeded},
		{"the timer thawed first", thawFacts{switchEnd: inTime, thawed: true, byTimer: true}, false, IndDeadlineExceeded},
		{"thaw not answered yet", thawFacts{switchEnd: inTime}, true, IndThawFailed},
		{"a timer not yet known is not read", thawFacts{switchEnd: inTime, byTimer: true}, true, IndThawFailed},
		{"writes released early (VSS)", thawFacts{switchEnd: inTime, thawed: true, err: vss}, false, IndHoldExpired},
		{"thaw error", thawFacts{switchEnd: inTime, thawed: true, err: thawErr}, true, IndThawFailed},
		{"lateness wins over a thaw error", thawFacts{switchEnd: late, thawed: true, err: thawErr}, false, IndDeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.f.sent, tc.f.maxFreeze = sent, maxFreeze
			quiesced, ind := classifyThaw(tc.f)
			got := ""
			if ind != nil {
				got = ind.Code
				if ind.Message == "" {
					t.Errorf("indication %s has no message", ind.Code)
				}
			}
			if quiesced != tc.quiesced || got != tc.indicated {
				t.Errorf("got quiesced %v, indication %q; want %v, %q", quiesced, got, tc.quiesced, tc.indicated)
			}
			if !quiesced && ind == nil {
				t.Error("not quiesced, and no indication says why")
			}
		})
	}
}
