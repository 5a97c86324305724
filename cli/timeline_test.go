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

// A recorded string holds line breaks where its sender put them: an
// error message quoting the caller's SQL, a server's notice. Printed as
// they are, they forge timeline lines (a DENY that reads as an ALLOW, an
// end that did not happen). Each event stays on its own lines.
func TestTimelineLineBreaksDoNotForgeLines(t *testing.T) {
	forged := "x\n00:00:09.999  ALLOW  forged\r\n00:00:09.999  end    forged\u2028"
	now := time.Unix(1, 0)
	evs := []recorder.Event{
		{Type: recorder.TypeStart, Time: now, Session: forged, Identity: forged, Issuer: forged, Groups: []string{forged}, Resource: forged, ClientAddr: forged},
		{Type: recorder.TypeRequest, Time: now, Kind: "query", Text: "SELECT 1", Effect: "deny", Rules: []string{forged}, Params: []string{forged}, Approval: forged},
		{Type: recorder.TypeResult, Time: now, Error: `column "` + forged + `" does not exist`},
		{Type: recorder.TypeApproval, Time: now, Approval: forged, State: forged, Reason: forged},
		{Type: recorder.TypeServer, Time: now, Kind: "notice", Text: forged},
		{Type: recorder.TypeServer, Time: now, Kind: "notification", Channel: forged, Text: forged},
		{Type: recorder.TypeMasked, Time: now},
		{Type: recorder.TypeGap, Time: now, Lost: 1, Reason: forged},
		{Type: recorder.TypeEnd, Time: now, Reason: forged},
	}
	var b bytes.Buffer
	writeTimeline(&b, evs)
	if strings.Contains(b.String(), "\n00:00:09.999") {
		t.Fatalf("a recorded line break forged timeline lines:\n%s", b.String())
	}
	if !strings.Contains(b.String(), `\u{000A}`) {
		t.Fatalf("the timeline does not show the escaped line breaks:\n%s", b.String())
	}
}
