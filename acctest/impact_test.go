package acctest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestImpactOnRecordedTraffic: sessions through the real gateway (Hydra
// tokens, PostgreSQL 15) are recorded; gatehouse impact replays them under
// a narrowed and a widened policy, counts exactly, keeps constants out of
// its output unless asked, fails --fail-on widen on the widening, and
// gives the same answer from an exported traffic file, which holds no
// constants either.
func TestImpactOnRecordedTraffic(t *testing.T) {
	s := startStack(t)
	analytics, billing := s.token(t, "analytics-job"), s.token(t, "billing-service")
	run := func(token, sql string, wantOK bool) {
		t.Helper()
		_, stderr, err := s.psql(t, token, sql)
		if (err == nil) != wantOK {
			t.Fatalf("%s: err %v, stderr %s", sql, err, stderr)
		}
	}
	// Three of one shape (different constants), one of another, and a
	// denied write.
	for _, id := range []string{"4242", "4343", "4444"} {
		run(analytics, "SELECT email FROM customers WHERE id = "+id, true)
	}
	run(analytics, "SELECT count(*) FROM orders WHERE total > 13.37", true)
	run(analytics, "DELETE FROM orders WHERE id = 987654", false)
	run(billing, "SELECT count(*) FROM customers WHERE id > 5150", true)

	policyOf := func(name string, edit func(string) string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(s.policyDir, "policy.hcl"))
		if err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(t.TempDir(), name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		out := edit(string(b))
		if out == string(b) {
			t.Fatalf("%s: the edit changed nothing", name)
		}
		if err := os.WriteFile(filepath.Join(dir, "policy.hcl"), []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	const readRule = `s.command == 'SELECT' && s.tables.all(t, t.access == 'read')`
	narrowed := policyOf("narrowed", func(p string) string {
		return strings.Replace(p, readRule, readRule+` && s.tables.all(t, t.name != 'customers')`, 1)
	})
	widened := policyOf("widened", func(p string) string {
		return strings.Replace(p, readRule, `(s.command in ['SELECT', 'DELETE']) && s.tables.all(t, t.access in ['read', 'write'])`, 1)
	})

	type report struct {
		Requests, Narrowed, Widened int64
		Approximate                 int64
		Changes                     []struct {
			Direction, Identity, Resource, Rule string
			From, To                            struct{ Effect string }
			Requests                            int64
			Shapes                              int
			Examples                            []string
		}
	}
	impact := func(args ...string) (report, string, int) {
		t.Helper()
		out, code := ghRun(t, append([]string{"impact"}, args...)...)
		var r report
		if i := strings.Index(out, "{"); i >= 0 && strings.Contains(strings.Join(args, " "), "json") {
			if err := json.Unmarshal([]byte(out[i:strings.LastIndex(out, "}")+1]), &r); err != nil {
				t.Fatalf("impact %v: %v\n%s", args, err, out)
			}
		}
		return r, out, code
	}

	// Narrowing: the three reads of customers, counted exactly, one shape.
	r, out, code := impact(s.policyDir, narrowed, "--traffic", s.dataDir, "--format", "json")
	if code != 0 {
		t.Fatalf("impact (narrowed): exit %d\n%s", code, out)
	}
	if r.Requests != 6 || r.Narrowed != 3 || r.Widened != 0 || r.Approximate != 0 || len(r.Changes) != 1 {
		t.Fatalf("narrowed: want 6 requests, 3 narrowed in one change, nothing approximate; got %+v\n%s", r, out)
	}
	c := r.Changes[0]
	if c.Direction != "narrow" || c.Identity != "analytics-job" || c.Resource != "orders" || c.From.Effect != "allow" ||
		c.To.Effect != "deny" || c.Requests != 3 || c.Shapes != 1 || c.Rule != "(no rule allows it)" {
		t.Errorf("narrowed change: %+v", c)
	}
	if len(c.Examples) != 1 || !strings.Contains(c.Examples[0], "FROM customers WHERE id = $1") {
		t.Errorf("examples: %q", c.Examples)
	}
	for _, constant := range []string{"4242", "4343", "4444", "13.37", "987654", "5150"} {
		if holdsConstant(out, constant) {
			t.Errorf("the report shows the constant %s without --show-constants:\n%s", constant, out)
		}
	}

	// --show-constants shows them, for local use.
	_, out, _ = impact(s.policyDir, narrowed, "--traffic", s.dataDir, "--show-constants")
	if !strings.Contains(out, "WHERE id = 4242") {
		t.Errorf("--show-constants: no constant in\n%s", out)
	}

	// Widening fails --fail-on widen, and names the rule that allows.
	r, out, code = impact(s.policyDir, widened, "--traffic", s.dataDir, "--fail-on", "widen", "--format", "json")
	if code != 1 || r.Widened != 1 || len(r.Changes) != 1 || r.Changes[0].Rule != "analytics/read" || r.Changes[0].From.Effect != "deny" {
		t.Fatalf("widened: exit %d (want 1), %+v\n%s", code, r, out)
	}
	if _, _, code = impact(s.policyDir, narrowed, "--traffic", s.dataDir, "--fail-on", "widen"); code != 0 {
		t.Errorf("narrowing failed --fail-on widen: exit %d", code)
	}
	if _, out, code = impact(s.policyDir, widened, "--traffic", s.dataDir, "--format", "markdown"); code != 0 ||
		!strings.Contains(out, "| ⚠️ widen | analytics-job | orders | deny | allow (masked: ") {
		t.Errorf("markdown (exit %d):\n%s", code, out)
	}

	// An exported traffic file: no constants, and the same answer.
	traffic := filepath.Join(t.TempDir(), "traffic.jsonl")
	if out, code := ghRun(t, "traffic", "export", s.dataDir, "-o", traffic); code != 0 {
		t.Fatalf("traffic export: exit %d\n%s", code, out)
	}
	data, err := os.ReadFile(traffic)
	if err != nil {
		t.Fatal(err)
	}
	for _, constant := range []string{"4242", "4343", "4444", "13.37", "987654", "5150"} {
		if holdsConstant(string(data), constant) {
			t.Errorf("the traffic file holds the constant %s", constant)
		}
	}
	if n := strings.Count(string(data), "\n"); n != 4 {
		t.Errorf("the traffic file has %d records, want 4 (one per caller and shape):\n%s", n, data)
	}
	r2, out, code := impact(s.policyDir, narrowed, "--traffic", traffic, "--format", "json")
	if code != 0 || r2.Requests != 6 || r2.Narrowed != 3 || r2.Approximate != 0 || len(r2.Changes) != 1 || r2.Changes[0].Requests != 3 {
		t.Errorf("impact over the export: exit %d, %+v\n%s", code, r2, out)
	}
}

// holdsConstant reports whether text holds the number as a token of its
// own, as a SQL constant would be: not inside a hex digest, a session id
// or a timestamp, where four digits can occur by chance (one run's traffic
// file once held "4444" that way).
func holdsConstant(text, constant string) bool {
	return regexp.MustCompile(`(^|[^0-9A-Za-z.])` + regexp.QuoteMeta(constant) + `($|[^0-9A-Za-z])`).MatchString(text)
}
