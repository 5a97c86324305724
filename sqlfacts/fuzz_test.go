package sqlfacts_test

import (
	"errors"
	"slices"
	"testing"

	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

// fuzzMaxBytes keeps each input small enough for the fuzzer to mutate
// usefully. Deep nesting is refused at any size (see depth.go and
// TestAnalyzeRefusesDeepChains), so this is about throughput, not safety.
const fuzzMaxBytes = 64 << 10

func FuzzAnalyze(f *testing.F) {
	for _, seed := range []string{
		"/* a /* nested */ b */ -- x\n DELETE FROM t WHERE id = 1",
		`DELETE FROM "Orders" WHERE "Id" = 1; delete from ORDERS`,
		"COMMIT; SET TRANSACTION READ WRITE",
		"WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d",
		"EXPLAIN (ANALYZE false, ANALYZE true) DELETE FROM t",
		"SELECT $tag$ DROP TABLE users; $tag$ AS x; SELECT a INTO newtable FROM t",
		"COPY (SELECT * FROM s.t) TO PROGRAM 'cat'; COPY t FROM STDIN",
		"DO $$BEGIN DELETE FROM t; END$$; CALL p(1); PREPARE p AS DELETE FROM t WHERE id = $1; EXECUTE p(1)",
		"SET ROLE admin; SET SESSION AUTHORIZATION bob; RESET ROLE; SELECT pg_catalog.set_config('role', 'x', false)",
		"WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM r) SELECT * FROM r, payments",
		"CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'CREATE FUNCTION g() RETURNS void LANGUAGE sql AS ''DELETE FROM t'''",
		"CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC DELETE FROM t; SELECT 1; END",
		"CREATE RULE r AS ON INSERT TO t DO ALSO (DELETE FROM u; INSERT INTO v VALUES (new.id))",
		"CREATE SCHEMA s CREATE TABLE t (id int) GRANT ALL ON TABLE public.secret TO PUBLIC",
		`SELECT * FROM U&"d\0061ta" UESCAPE '\'; SELECT E'\''; DROP TABLE x; --'`,
		"MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE; DROP TABLE db.s.t, u",
		"SELECT 'é' FROM WHERE",
		"SELECT 1;\x00DROP TABLE t",
		";",
		"",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		if len(sql) > fuzzMaxBytes {
			t.Skip()
		}
		stmts, err := sqlfacts.Analyze(sql)
		// The approval hash parses the same text: whatever Analyze
		// accepts, it must hash.
		if _, herr := sqlfacts.CanonicalHash(sql); err == nil && herr != nil {
			t.Fatalf("CanonicalHash(%q): %v, though Analyze accepted it", sql, herr)
		}
		if err != nil {
			var pe *sqlfacts.ParseError
			if !errors.As(err, &pe) && !errors.Is(err, sqlfacts.ErrTooLarge) {
				t.Fatalf("Analyze(%q): error %T %v, want *ParseError or ErrTooLarge", sql, err, err)
			}
			if stmts != nil {
				t.Fatalf("Analyze(%q): statements %+v along with error %v", sql, stmts, err)
			}
			return
		}
		for i, s := range stmts {
			if s.Command == "" {
				t.Errorf("Analyze(%q): statement %d has no command: %+v", sql, i, s)
			}
			if s.Tables == nil || s.Functions == nil {
				t.Errorf("Analyze(%q): statement %d (%s) has a nil list", sql, i, s.Command)
			}
			seen := map[[2]string]bool{}
			for _, tb := range s.Tables {
				if tb.Name == "" || tb.Schema == "" {
					t.Errorf("Analyze(%q): statement %d (%s) has table %+v with an empty name or schema", sql, i, s.Command, tb)
				}
				if tb.Access != sqlfacts.Read && tb.Access != sqlfacts.Write {
					t.Errorf("Analyze(%q): statement %d (%s) has table %+v with access %q", sql, i, s.Command, tb, tb.Access)
				}
				key := [2]string{tb.Schema, tb.Name}
				if seen[key] {
					t.Errorf("Analyze(%q): statement %d (%s) lists %s.%s twice", sql, i, s.Command, tb.Schema, tb.Name)
				}
				seen[key] = true
			}
			if !slices.IsSorted(s.Functions) {
				t.Errorf("Analyze(%q): statement %d (%s) functions not sorted: %v", sql, i, s.Command, s.Functions)
			}
			if len(slices.Compact(slices.Clone(s.Functions))) != len(s.Functions) {
				t.Errorf("Analyze(%q): statement %d (%s) functions repeat: %v", sql, i, s.Command, s.Functions)
			}
			if s.Via == "" && s.Fingerprint == "" {
				t.Errorf("Analyze(%q): statement %d (%s) as sent has no fingerprint", sql, i, s.Command)
			}
		}
	})
}
