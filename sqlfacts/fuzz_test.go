package sqlfacts_test

import (
	"errors"
	"slices"
	"testing"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
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

// FuzzLineage walks arbitrary SQL's lineage with a catalog that knows
// masked columns and PostgreSQL's own views, and plans masks from it: it
// must never panic, and whatever it allows must carry a plan for each
// statement as sent.
func FuzzLineage(f *testing.F) {
	for _, seed := range []string{
		"SELECT email, upper(name) FROM customers c WHERE card_number LIKE '4111%' ORDER BY 1",
		"WITH RECURSIVE r(n, e) AS (SELECT 1, email FROM customers UNION ALL SELECT n+1, e FROM r WHERE n < 3) SELECT * FROM r",
		"SELECT * FROM (SELECT card_number AS x FROM customers) s JOIN orders o USING (id) NATURAL JOIN payments",
		"INSERT INTO payments (note) SELECT card_number FROM customers ON CONFLICT (id) DO UPDATE SET note = excluded.note RETURNING *",
		"UPDATE payments SET (a, b) = (SELECT email, card_number FROM customers LIMIT 1) WHERE id = 1",
		"MERGE INTO t USING customers c ON t.id = c.id WHEN MATCHED THEN UPDATE SET x = c.email WHEN NOT MATCHED THEN INSERT VALUES (c.card_number)",
		"SELECT most_common_vals FROM pg_stats; SELECT query FROM pg_stat_activity",
		"SELECT (c).email, c, c.* FROM customers c, LATERAL (SELECT c.card_number) l, ROWS FROM (generate_series(1, 2), unnest(ARRAY[1])) AS g(a, b)",
		"CREATE TEMP VIEW v AS SELECT * FROM customers; EXPLAIN ANALYZE SELECT 1; PREPARE p AS SELECT 1; EXECUTE p; DECLARE c CURSOR FOR SELECT 1; FETCH c",
		"SELECT xmltable.* FROM XMLTABLE('/a' PASSING (SELECT email::xml FROM customers) COLUMNS x text)",
		"COPY (SELECT * FROM customers) TO STDOUT; COPY customers (email) TO STDOUT",
		"SELECT count(*) FILTER (WHERE email > 'a'), rank() OVER w FROM customers WINDOW w AS (PARTITION BY card_number)",
	} {
		f.Add(seed)
	}
	masks := []celpolicy.MaskAction{
		{Target: celpolicy.MaskTarget{Column: "public.customers.card_number"}, Method: bundle.MaskRedact, Mask: "card"},
		{Target: celpolicy.MaskTarget{Column: "public.customers.email"}, Method: bundle.MaskPartial, Mask: "email"},
	}
	f.Fuzz(func(t *testing.T, sql string) {
		if len(sql) > fuzzMaxBytes {
			t.Skip()
		}
		cat := sqlfacts.NewStaticCatalog([]string{"public.customers.card_number", "public.customers.email"})
		if _, err := sqlfacts.LineageOf(sql, cat, nil); err != nil {
			var pe *sqlfacts.ParseError
			if !errors.As(err, &pe) && !errors.Is(err, sqlfacts.ErrTooLarge) {
				t.Fatalf("LineageOf(%q): error %T %v", sql, err, err)
			}
			return
		}
		req := sqlfacts.Query(sql)
		if req.Problem != "" {
			return
		}
		d := sqlfacts.StaticGuard(&bundle.Postgres{Name: "orders"}, req, celpolicy.Decision{Effect: bundle.EffectAllow, Masks: masks})
		if d.Effect != bundle.EffectAllow {
			return
		}
		sent := 0
		for _, st := range req.Statements {
			if st.Via == "" {
				sent++
			}
		}
		if req.Masking == nil || len(req.Masking.Statements) != sent {
			t.Fatalf("%q: allowed with a plan for %v statements, %d sent", sql, req.Masking, sent)
		}
	})
}
