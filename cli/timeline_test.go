package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
)

// A recording holds what callers, tokens and servers sent; the timeline
// must not pass a terminal escape sequence to the auditor's terminal.
func TestTimelineEscapesControlCharacters(t *testing.T) {
	esc := "\x1b]0;owned\x07\x1b[2J"
	now := time.Unix(1, 0)
	evs := []recorder.Event{
		{Type: recorder.TypeStart, Time: now, Session: "s" + esc, Identity: esc, Issuer: esc, Groups: []string{esc}, Resource: esc, ClientAddr: esc},
		{Type: recorder.TypeRequest, Time: now, Kind: "query", Text: "SELECT 1" + esc, Effect: "deny" + esc, Rules: []string{esc}, Approval: esc},
		{Type: recorder.TypeResult, Time: now, Error: `column "` + esc + `" does not exist`},
		{Type: recorder.TypeApproval, Time: now, Approval: esc, State: esc, Reason: esc},
		{Type: recorder.TypeServer, Time: now, Kind: "notice", Text: esc},
		{Type: recorder.TypeGap, Time: now, Lost: 1, Reason: esc},
		{Type: recorder.TypeEnd, Time: now, Reason: esc},
	}
	var b bytes.Buffer
	writeTimeline(&b, evs)
	if strings.ContainsAny(b.String(), "\x1b\x07") {
		t.Fatalf("the timeline passes control characters through:\n%q", b.String())
	}
	if !strings.Contains(b.String(), `\u{001B}`) {
		t.Fatalf("the timeline does not show the escaped characters:\n%s", b.String())
	}
}
