package impact

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/hclconfig"
	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

func TestDirection(t *testing.T) {
	allow := func(m ...string) Outcome { return Outcome{Effect: "allow", Masks: m} }
	for _, tc := range []struct {
		before, after Outcome
		want          Direction
		changed       bool
	}{
		{allow(), Outcome{Effect: "deny"}, Narrow, true},
		{allow(), Outcome{Effect: "review"}, Narrow, true},
		{Outcome{Effect: "review"}, Outcome{Effect: "deny"}, Narrow, true},
		{Outcome{Effect: "deny"}, allow(), Widen, true},
		{Outcome{Effect: "deny"}, Outcome{Effect: "review"}, Widen, true},
		{allow("a=redact"), allow(), Widen, true},
		{allow(), allow("a=redact"), Narrow, true},
		{allow("a=redact"), allow("b=redact"), Changed, true},
		{allow("a=redact"), allow("a=redact"), "", false},
		{Outcome{Effect: "deny"}, Outcome{Effect: "deny"}, "", false},
	} {
		got, changed := direction(tc.before, tc.after)
		if got != tc.want || changed != tc.changed {
			t.Errorf("%v → %v: got %q %v, want %q %v", tc.before, tc.after, got, changed, tc.want, tc.changed)
		}
	}
}

func TestNormalize(t *testing.T) {
	for in, want := range map[string]string{
		"SELECT * FROM t WHERE a = 'jane@example.com' AND b = 42": "SELECT * FROM t WHERE a = $1 AND b = $2",
		"SELEC oops 'secret'": "(SQL that does not parse; not shown)",
		"":                    "",
	} {
		if got := Normalize(in); got != want {
			t.Errorf("Normalize(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestReadFileErrors(t *testing.T) {
	dir := t.TempDir()
	for name, tc := range map[string]struct{ data, want string }{
		"garbage": {`{"resource":"orders","kind":"postgres","request":{},"count":1}` + "\nnot json\n", "bad.jsonl:2: not a traffic record"},
		"fields":  {`{"resource":"orders","kind":"postgres","request":{},"count":0}` + "\n", "bad.jsonl:1: a traffic record needs resource, kind, request and a positive count"},
	} {
		p := filepath.Join(dir, "bad.jsonl")
		if err := os.WriteFile(p, []byte(tc.data), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadFile(p); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
}

// FuzzReadFile: a traffic file is outside input. Whatever it holds,
// reading it does not panic, and what reads writes back to the same.
func FuzzReadFile(f *testing.F) {
	f.Add(`{"issuer":"i","subject":"s","groups":["g"],"resource":"orders","kind":"postgres","request":{"kind":"query","statements":[]},"example":"SELECT $1","effect":"allow","count":3}`)
	f.Add(`{"resource":"h","kind":"ssh_host","request":{"kind":"exec","command":"ls"},"count":1}` + "\n" + `{}`)
	f.Fuzz(func(t *testing.T, data string) {
		p := filepath.Join(t.TempDir(), "t.jsonl")
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		tr, err := ReadFile(p)
		if err != nil {
			return
		}
		var b bytes.Buffer
		if err := tr.Write(&b); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		again, err := ReadFile(p)
		if err != nil {
			t.Fatalf("what Write wrote does not read: %v\n%s", err, b.String())
		}
		if again.Requests != tr.Requests || len(again.Records) != len(tr.Records) {
			t.Fatalf("round trip: %d requests in %d records, then %d in %d", tr.Requests, len(tr.Records), again.Requests, len(again.Records))
		}
	})
}

// corpus writes sessions × perSession recorded requests with the real
// recorder (no fdatasync: this is set-up), for callers of the quickstart.
func corpus(tb testing.TB, sessions, perSession int) string {
	tb.Helper()
	dir := tb.TempDir()
	k, _ := bundle.GenerateKey()
	r, err := recorder.Open(dir, k, recorder.WithSync(func(*os.File) error { return nil }))
	if err != nil {
		tb.Fatal(err)
	}
	defer r.Close()
	shapes := []string{
		"SELECT o.id, o.total, c.email FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.total > %d",
		"SELECT count(*) FROM orders WHERE customer_id = %d",
		"UPDATE orders SET total = %d WHERE id = 7",
		"SELECT name FROM customers WHERE id = %d",
	}
	callers := []struct{ identity, subject string }{{"analytics-job", "analytics-7f9c"}, {"billing-service", "billing-service"}}
	for i := range sessions {
		c := callers[i%len(callers)]
		claims := json.RawMessage(`{}`)
		if c.identity == "analytics-job" {
			claims = json.RawMessage(`{"env":"prod"}`)
		}
		s, err := r.Start(fmt.Sprintf("s%06d", i), recorder.Event{Protocol: "postgres", Identity: c.identity, Subject: c.subject,
			Issuer: "https://auth.example.com/", Provider: "corp", Claims: claims, TokenGroups: json.RawMessage(`[]`), Resource: "orders"})
		if err != nil {
			tb.Fatal(err)
		}
		for j := range perSession {
			sql := fmt.Sprintf(shapes[j%len(shapes)], j)
			req, _ := json.Marshal(sqlfacts.Query(sql))
			if _, err := s.Append(recorder.Event{Type: recorder.TypeRequest, Kind: "query", Text: sql, Request: req, Effect: "allow", Time: time.Now()}); err != nil {
				tb.Fatal(err)
			}
		}
		if err := s.End("done"); err != nil {
			tb.Fatal(err)
		}
	}
	return dir
}

func quickstart(tb testing.TB, edit func(string) string) *celpolicy.Policy {
	tb.Helper()
	files := map[string][]byte{}
	entries, err := os.ReadDir("../examples/quickstart")
	if err != nil {
		tb.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".hcl") {
			b, err := os.ReadFile(filepath.Join("../examples/quickstart", e.Name()))
			if err != nil {
				tb.Fatal(err)
			}
			files[e.Name()] = []byte(edit(string(b)))
		}
	}
	res, diags := hclconfig.LoadFiles(files)
	if diags.HasErrors() {
		tb.Fatal(diags)
	}
	return res.Policy
}

// TestCompareCountsExactly: one decision per distinct request, every
// request counted; the quickstart's analytics narrowed off customers.
func TestCompareCountsExactly(t *testing.T) {
	dir := corpus(t, 4, 8)
	tr, err := Read([]string{dir}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if tr.Requests != 32 || tr.Sessions != 4 {
		t.Fatalf("read %d requests from %d sessions, want 32 from 4", tr.Requests, tr.Sessions)
	}
	old := quickstart(t, func(s string) string { return s })
	narrowed := quickstart(t, func(s string) string {
		return strings.Replace(s, "s.tables.all(t, t.access == 'read') &&", "s.tables.all(t, t.access == 'read' && t.name != 'customers') &&", 1)
	})
	rep := Compare(old, narrowed, tr, CompareOptions{})
	// analytics ran sessions 0 and 2: 8 requests each, 2 of each shape;
	// the join and the customers read (4 per session) are narrowed.
	if rep.Narrowed != 8 || rep.Widened != 0 || len(rep.Changes) != 1 || rep.Changes[0].Shapes != 2 {
		var b bytes.Buffer
		_ = rep.WriteText(&b)
		t.Fatalf("want 8 narrowed in one change of 2 shapes:\n%s", b.String())
	}
	for _, e := range rep.Changes[0].Examples {
		if strings.ContainsAny(e, "0123456789") && !strings.Contains(e, "$") {
			t.Errorf("an example with its constants: %q", e)
		}
	}
}

// BenchmarkImpactReplay reads recordings and decides them under two
// policies; requests/s is the replay rate (the goal: a million requests
// in under a minute, about 17,000/s).
func BenchmarkImpactReplay(b *testing.B) {
	const sessions, per = 100, 200
	dir := corpus(b, sessions, per)
	old := quickstart(b, func(s string) string { return s })
	narrowed := quickstart(b, func(s string) string {
		return strings.Replace(s, "s.tables.all(t, t.access == 'read') &&", "s.tables.all(t, t.access == 'read' && t.name != 'customers') &&", 1)
	})
	b.ResetTimer()
	start := time.Now()
	for b.Loop() {
		tr, err := Read([]string{dir}, Options{})
		if err != nil {
			b.Fatal(err)
		}
		Compare(old, narrowed, tr, CompareOptions{})
	}
	b.ReportMetric(float64(sessions*per*b.N)/time.Since(start).Seconds(), "requests/s")
}

// A request whose SQL did not parse keeps no constant: the parser's
// message (which quotes the text near the error) is replaced, and the
// request still decides as invalid (denied).
func TestSanitizeDropsParserMessages(t *testing.T) {
	sql := "SELEC card FROM t WHERE n = '4111 1111 1111 1111'"
	raw, _ := json.Marshal(sqlfacts.Query(sql))
	if !strings.Contains(string(raw), `near \"SELEC\"`) {
		t.Fatalf("set-up: the parser's message should quote the text near the error: %s", raw)
	}
	out, example, err := sanitize("postgres", raw, sql, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, leak := range []string{"4111", "SELEC"} {
		if strings.Contains(string(out), leak) || strings.Contains(example, leak) {
			t.Errorf("%q reaches the export: %s / %s", leak, out, example)
		}
	}
	req, err := celpolicy.DecodeRecorded("postgres", out)
	if err != nil || req.Invalid() == "" {
		t.Errorf("the sanitized request is no longer invalid: %v %+v", err, req)
	}
}
