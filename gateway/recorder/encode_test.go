package recorder

import (
	"bytes"
	"encoding/json"
	"math"
	"testing"
	"time"
)

func marshalBoth(t testing.TB, ev *Event) {
	t.Helper()
	want, werr := json.Marshal(ev)
	got, gerr := encodeEvent(ev)
	if (werr == nil) != (gerr == nil) {
		t.Fatalf("json.Marshal: %v, encodeEvent: %v", werr, gerr)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("encodeEvent differs from json.Marshal:\n got %s\nwant %s", got, want)
	}
	if bytes.IndexByte(got, '\n') >= 0 {
		t.Fatalf("a newline inside the event: %q", got)
	}
}

// TestEncodeMatchesMarshal: the hand encoder writes exactly json.Marshal's
// bytes, so recordings hash and verify as before.
func TestEncodeMatchesMarshal(t *testing.T) {
	code := 3
	now := time.Date(2026, 12, 4, 22, 1, 2, 345678000, time.UTC)
	for _, ev := range []Event{
		{},
		{Seq: 1, Time: now, Type: TypeStart, Format: 3, Session: "s1", Protocol: "postgres", Identity: "app", Subject: "sub", Issuer: "https://id/",
			Groups: []string{"a", "b<c>"}, TokenGroups: json.RawMessage(`["a"]`), Provider: "corp", Claims: json.RawMessage(`{"env":"prod"}`), Resource: "db", BundleRevision: 42, BundleDigest: "sha256:ab", ClientAddr: "127.0.0.1:5"},
		{Seq: 2, Time: now, Type: TypeRequest, Prev: "ff", Kind: "query", Text: "SELECT '\x00\x1f\"\\</script>&\u2028\u2029é\xff'",
			Request: json.RawMessage(`{"kind":"query","statements":[{"command":"SELECT"}]}`), Decision: json.RawMessage(`{"effect":"allow"}`),
			Effect: "allow", Rules: []string{"p/r"}, Params: []string{"$1 = 'x'"}, Approval: "ap", ApprovalHash: "h"},
		{Seq: 3, Time: now.In(time.FixedZone("x", 5*3600+1800)), Type: TypeResult, Ref: 2, DurationMS: 0.123456789, Rows: -1, Status: 200, ExitCode: &code, Bytes: 9, Error: "e\tf\r\n"},
		{Seq: 4, Type: TypeResult, DurationMS: 1e-9},
		{Seq: 5, Type: TypeResult, DurationMS: 1e21},
		{Seq: 6, Type: TypeResult, DurationMS: 123456789.5},
		{Seq: 7, Type: TypeMasked, Fields: []string{"public.t.ssn=redact"}, Columns: []string{"c"}, Channel: "ch", State: "approved", Reason: "r", Lost: 3, KeyID: "k", Signature: "sig"},
		// Raw messages not in json.Marshal's form go through it.
		{Seq: 8, Request: json.RawMessage("{ \"a\" : [1, 2] }"), Facts: json.RawMessage(`{"x":"<b>"}`)},
		{Seq: 9, Frames: []Frame{{T: 0.5, Stream: "o", Data: "hi\n"}}},
		{Seq: 10, Votes: []Vote{{Approver: "a", Decision: "approve", Time: now}}},
		{Seq: 11, Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},
		{Seq: 12, DurationMS: math.NaN()},
		{Seq: 13, Groups: []string{}, Rules: []string{""}},
		// Spaces in strings are fine as they are; outside them, not.
		{Seq: 14, Request: json.RawMessage(`{"text":"SELECT a FROM t \\" x","n":[1,2]}`)},
		{Seq: 15, Request: json.RawMessage(`{"text":"a\u2028b — é"}`), Decision: json.RawMessage("{\"t\":\"a\u2028b\"}")},
		{Seq: 16, Request: json.RawMessage(`{"a":1} `)},
	} {
		marshalBoth(t, &ev)
	}
}

func FuzzEncodeEvent(f *testing.F) {
	f.Add("SELECT 1", "app", "ok", int64(5), 1.5, `{"a":1}`)
	f.Add("\xff\x00<>&\u2028", "\\\"", "", int64(-1), 1e-7, `[1,"x"]`)
	f.Fuzz(func(t *testing.T, text, identity, errText string, n int64, d float64, raw string) {
		ev := Event{Seq: int(n), Time: time.Unix(n%1e10, n%1e9).UTC(), Type: TypeRequest, Prev: identity, Identity: identity, Text: text,
			Rules: []string{text, identity}, Rows: n, DurationMS: d, Error: errText, Request: json.RawMessage(raw), Params: []string{errText}}
		if !json.Valid([]byte(raw)) {
			ev.Request = nil
		}
		if v, err := json.Marshal(raw); err == nil {
			ev.Decision = v // a JSON string holding anything
		}
		marshalBoth(t, &ev)
		// As the gateway records requests: both raw fields are
		// json.Marshal's output, and the encoder trusts them unchecked.
		var v any
		if json.Unmarshal([]byte(raw), &v) == nil {
			if m, err := json.Marshal(v); err == nil {
				ev.Request, ev.Marshalled = m, true
				marshalBoth(t, &ev)
			}
		}
	})
}

func BenchmarkEncodeEvent(b *testing.B) {
	ev := Event{Seq: 2, Time: time.Now().UTC(), Type: TypeRequest, Prev: "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", Kind: "query",
		Text:     "SELECT abalance FROM pgbench_accounts WHERE aid = 55616",
		Request:  json.RawMessage(`{"kind":"query","statements":[{"command":"SELECT","tables":[{"schema":"public","name":"pgbench_accounts","access":"read"}],"functions":[],"has_where":true}]}`),
		Decision: json.RawMessage(`{"effect":"allow","rules":["bench-read/read"]}`), Effect: "allow", Rules: []string{"bench-read/read"}}
	b.Run("json.Marshal", func(b *testing.B) {
		for b.Loop() {
			_, _ = json.Marshal(&ev)
		}
	})
	b.Run("encodeEvent", func(b *testing.B) {
		for b.Loop() {
			_, _ = encodeEvent(&ev)
		}
	})
	// As the gateway records requests: Request and Decision come from
	// json.Marshal, and are not checked again.
	trusted := ev
	trusted.Marshalled = true
	b.Run("encodeEvent-marshalled", func(b *testing.B) {
		for b.Loop() {
			_, _ = encodeEvent(&trusted)
		}
	})
}
