package sqlfacts

import (
	"encoding/json"
	"strings"
	"testing"

	pg "github.com/pganalyze/pg_query_go/v6"
)

// freshQuery analyses a text without the cache.
func freshQuery(t testing.TB, sql string) string {
	t.Helper()
	stmts, err := Analyze(sql)
	if err != nil {
		return "error: " + err.Error()
	}
	b, _ := json.Marshal(stmts)
	return string(b)
}

func factsJSON(t testing.TB, sql string) string {
	t.Helper()
	req := Query(sql)
	if req.Problem != "" {
		return "error: " + strings.TrimSuffix(req.Problem, "; SQL that cannot be parsed is denied")
	}
	b, _ := json.Marshal(req.Statements)
	return string(b)
}

// TestFactsCache: texts of one shape (different constants) get, from the
// cache, exactly the facts a fresh analysis gives each of them; texts whose
// facts depend on a constant, or whose shapes differ, never share an entry.
func TestFactsCache(t *testing.T) {
	groups := [][]string{
		{"SELECT abalance FROM pgbench_accounts WHERE aid = 1", "SELECT abalance FROM pgbench_accounts WHERE aid = 99999", "  SELECT abalance FROM pgbench_accounts WHERE aid = -7  ",
			// pgbench -S, and most drivers, end the statement with a ';'.
			"SELECT abalance FROM pgbench_accounts WHERE aid = 55616;", "SELECT abalance FROM pgbench_accounts WHERE aid = 2 ;\n"},
		{"UPDATE orders SET total = 1.5 WHERE id = 3 RETURNING id", "UPDATE orders SET total = 99 WHERE id = 4 RETURNING id"},
		{"SELECT * FROM customers WHERE email = 'a;b' OR name = '--x'", "SELECT * FROM customers WHERE email = '/* no */' OR name = $$x$$"},
		{"INSERT INTO t (a, b) VALUES (1, 'x')", "INSERT INTO t (a, b) VALUES (2, E'y\\'z')"},
		{"SELECT 1", "SELECT 2", "SELECT 'three'"},
		{"SELECT count(*) FROM customers WHERE card_number LIKE '4111%'", "SELECT count(*) FROM customers WHERE card_number LIKE '5500%'"},
	}
	for _, g := range groups {
		for _, sql := range g {
			want := freshQuery(t, sql)
			if got := factsJSON(t, sql); got != want {
				t.Fatalf("%q:\n got %s\nwant %s", sql, got, want)
			}
			// And again, from the cache.
			if got := factsJSON(t, sql); got != want {
				t.Fatalf("%q (cached):\n got %s\nwant %s", sql, got, want)
			}
		}
		k0, ok := shapeKey(g[0])
		for _, sql := range g[1:] {
			if k, _ := shapeKey(sql); !ok || k != k0 {
				t.Errorf("%q and %q should share a shape (%q, %q)", g[0], sql, k0, k)
			}
		}
	}
	// Texts whose facts depend on a constant are not cached by shape.
	for _, sql := range []string{
		"SELECT set_config('role', 'x', false)",
		"SELECT set_config('work_mem', '1GB', false)",
		"SET work_mem = '1GB'",
		"COPY t TO PROGRAM 'cat'",
		"EXPLAIN (ANALYZE 'off') SELECT 1",
		"CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'DELETE FROM t; SELECT 1'",
		"DO $$ BEGIN DELETE FROM t; END $$",
		"WITH d AS (DELETE FROM t WHERE id = 5 RETURNING *) SELECT * FROM d",
		"SELECT 1; SELECT 2",
		"SELECT 1;;",
		"SELECT 1; ;",
		"SELECT 1; -- after",
		";SELECT 1",
		"SELECT 1 -- a comment",
		"SELECT a INTO b FROM t",
		// Positions that normalize replaces: DISTINCT ON (1) and (2)
		// share a normalized text, and use different columns.
		"SELECT DISTINCT ON (1) id, email FROM customers",
		"SELECT DISTINCT ON (2) id, email FROM customers",
		"SELECT id, email FROM customers GROUP BY ROLLUP (1, 2)",
		"SELECT id, email FROM customers GROUP BY GROUPING SETS ((1), (2))",
		"SELECT id, email FROM customers GROUP BY CUBE (2)",
		"SELECT id, email FROM customers GROUP BY (1, 2)",
		"SELECT id, email FROM customers GROUP BY (2, 2)",
		"SELECT * FROM (SELECT DISTINCT ON (2) id, email FROM customers) s WHERE id = 1",
		// Positions this walk cannot resolve: over * (the database's
		// catalog can), and those the database refuses (0, 3 of 2).
		"SELECT DISTINCT ON (2) * FROM customers",
		"SELECT count(*) FROM customers GROUP BY ROLLUP (7)",
		"SELECT DISTINCT ON (0) id, email FROM customers",
		"SELECT id, email FROM customers GROUP BY (3, 3)",
		"SELECT id, email FROM customers GROUP BY GROUPING SETS ((3), ())",
	} {
		stmts, byConstant, err := analyze(sql, "", 0)
		if err == nil && !byConstant && cacheable(stmts) {
			if _, ok := shapeKey(sql); ok {
				t.Errorf("%q would be cached by shape", sql)
			}
		}
		if got, want := factsJSON(t, sql), freshQuery(t, sql); got != want {
			t.Errorf("%q:\n got %s\nwant %s", sql, got, want)
		}
	}
	// Positions kept by normalize: ORDER BY 1 and ORDER BY 2 differ.
	for _, g := range [][]string{
		{"SELECT id, email FROM customers ORDER BY 1", "SELECT id, email FROM customers ORDER BY 2"},
		{"SELECT id, email FROM customers GROUP BY 1, 2", "SELECT id, email FROM customers GROUP BY 2, 1"},
	} {
		for _, sql := range g {
			for range 2 {
				if got, want := factsJSON(t, sql), freshQuery(t, sql); got != want {
					t.Errorf("%q:\n got %s\nwant %s", sql, got, want)
				}
			}
		}
	}
	// Shapes that must differ.
	for _, pair := range [][2]string{
		{"SELECT a FROM t", "SELECT b FROM t"},
		{"SELECT a FROM t WHERE x = 1", "SELECT a FROM t WHERE true"},
		{"SELECT a FROM s.t", "SELECT a FROM t"},
		{"SELECT lower(a) FROM t", "SELECT upper(a) FROM t"},
		{"SELECT a FROM t", "SELECT a FROM t FOR UPDATE"},
		{`SELECT a FROM "T"`, "SELECT a FROM t"},
		// Both normalize to SELECT $1, but -42 is one constant and -'x'
		// an operator applied to one: their fingerprints differ.
		{"SELECT -42", "SELECT -'x'"},
		{"SELECT (-1.5)", "SELECT (-$$d$$)"},
		{"SELECT id, email FROM customers ORDER BY 1", "SELECT id, email FROM customers ORDER BY 2"},
		{"SELECT id, email FROM customers GROUP BY 1, 2", "SELECT id, email FROM customers GROUP BY 1, 1"},
		{"SELECT id, email FROM customers ORDER BY (1)", "SELECT id, email FROM customers ORDER BY (2)"},
		{"SELECT email FROM customers UNION SELECT email FROM customers ORDER BY 1", "SELECT email FROM customers UNION SELECT email FROM customers ORDER BY 2"},
		{"SELECT (SELECT email FROM customers ORDER BY 1 LIMIT 1)", "SELECT (SELECT email FROM customers ORDER BY 2 LIMIT 1)"},
		{"WITH s AS (SELECT id, email FROM customers ORDER BY 1) SELECT * FROM s", "WITH s AS (SELECT id, email FROM customers ORDER BY 2) SELECT * FROM s"},
		{"INSERT INTO t SELECT id, email FROM customers GROUP BY 1, 2", "INSERT INTO t SELECT id, email FROM customers GROUP BY 2, 2"},
	} {
		k1, _ := shapeKey(pair[0])
		k2, _ := shapeKey(pair[1])
		if k1 == k2 {
			t.Errorf("%q and %q share the key %q", pair[0], pair[1], k1)
		}
	}
	// A caller editing its request cannot change the cached entry.
	req := Query("SELECT abalance FROM pgbench_accounts WHERE aid = 5")
	req.Statements[0].Calls = append(req.Statements[0].Calls, Call{Name: "evil"})
	req.Statements[0].Tables[0].Name = "evil"
	if got, want := factsJSON(t, "SELECT abalance FROM pgbench_accounts WHERE aid = 6"), freshQuery(t, "SELECT abalance FROM pgbench_accounts WHERE aid = 6"); got != want {
		t.Fatalf("the cache was changed through a request:\n got %s\nwant %s", got, want)
	}
}

// BenchmarkQueryShape is the cost of facts for a shape already seen.
func BenchmarkQueryShape(b *testing.B) {
	Query("SELECT abalance FROM pgbench_accounts WHERE aid = 1")
	i := 0
	for b.Loop() {
		i++
		Query("SELECT abalance FROM pgbench_accounts WHERE aid = " + itoa(i))
	}
}

func itoa(i int) string {
	b, _ := json.Marshal(i)
	return string(b)
}

// FuzzFactsCache: for any text, texts of the same shape (its placeholders
// filled with other constants) get from the cache exactly what a fresh
// analysis gives them.
func FuzzFactsCache(f *testing.F) {
	for _, seed := range []string{
		"SELECT abalance FROM pgbench_accounts WHERE aid = 1",
		"SELECT abalance FROM pgbench_accounts WHERE aid = 1;",
		"UPDATE t SET a = 'x' WHERE id = 2 RETURNING *",
		"INSERT INTO t VALUES (1, 'a', 2.5, true, NULL)",
		"SELECT * FROM t WHERE a IN (1, 2, 3) AND b LIKE 'x%' LIMIT 10 OFFSET 5",
		"SELECT set_config('x', 'y', false)",
		"DELETE FROM t WHERE id = $1",
		"MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = 1",
		"SELECT DISTINCT ON (1) a, b FROM t",
		"SELECT a, b FROM t GROUP BY ROLLUP (1, 2)",
		"SELECT a, b FROM t GROUP BY (1, 2) ORDER BY 2",
		"SELECT DISTINCT ON (3) * FROM t",
		"SELECT a, b, row_number() OVER w FROM t WINDOW w AS (ORDER BY 2)",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		if len(sql) > 4096 {
			t.Skip()
		}
		key, ok := shapeKey(sql)
		if !ok {
			return
		}
		if got, want := factsJSON(t, sql), freshQuery(t, sql); got != want {
			t.Fatalf("%q:\n got %s\nwant %s", sql, got, want)
		}
		// 1 and 2: a placeholder may stand for a position.
		for _, lit := range []string{"0", "1", "2", "3", "NULL", "42", "'s'", "-1.5", "E'a\\'b'", "$$d$$"} {
			v := fillPlaceholders(key, lit)
			if k, ok := shapeKey(v); !ok || k != key {
				continue
			}
			if got, want := factsJSON(t, v), freshQuery(t, v); got != want {
				t.Fatalf("%q shares %q's shape:\n got %s\nwant %s", v, sql, got, want)
			}
		}
	})
}

// fillPlaceholders replaces $1, $2, ... with a constant.
func fillPlaceholders(norm, lit string) string {
	var b strings.Builder
	for i := 0; i < len(norm); i++ {
		if norm[i] == '$' && i+1 < len(norm) && norm[i+1] >= '0' && norm[i+1] <= '9' {
			j := i + 1
			for j < len(norm) && norm[j] >= '0' && norm[j] <= '9' {
				j++
			}
			b.WriteString(lit)
			i = j - 1
			continue
		}
		b.WriteByte(norm[i])
	}
	return b.String()
}

// TestNormalizeKeepsPositions: the cache takes positions in ORDER BY and
// GROUP BY proper from the key, because pg_query's normalize keeps them
// (it replaces those in DISTINCT ON, grouping sets and rows, which the
// walk marks instead: lw.byConstant). A pg_query that replaced them would
// let ORDER BY 1 and ORDER BY 2 share an entry.
func TestNormalizeKeepsPositions(t *testing.T) {
	for _, sql := range []string{
		"SELECT a, b FROM t ORDER BY 2",
		"SELECT a, b FROM t ORDER BY (2) DESC NULLS FIRST",
		"SELECT a, b FROM t GROUP BY 2, a",
		"SELECT a FROM t UNION SELECT b FROM t ORDER BY 2",
		"SELECT (SELECT a FROM t ORDER BY 2 LIMIT 1)",
		"WITH s AS (SELECT a, b FROM t GROUP BY 2) SELECT * FROM s",
		"INSERT INTO u SELECT a, b FROM t ORDER BY 2",
		"SELECT * FROM (SELECT a, b FROM t ORDER BY 2) s",
	} {
		norm, err := pg.Normalize(sql)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(norm, "2") {
			t.Errorf("normalize replaced a position: %q became %q", sql, norm)
		}
	}
}
