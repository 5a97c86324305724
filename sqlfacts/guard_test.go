package sqlfacts_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

// masks are the quickstart's, as a caller outside pci gets them.
var guardMasks = []celpolicy.MaskAction{
	{Target: celpolicy.MaskTarget{Column: "public.customers.card_number"}, Method: bundle.MaskRedact, Mask: "card-number"},
	{Target: celpolicy.MaskTarget{Column: "public.customers.email"}, Method: bundle.MaskPartial, Mask: "customer-email"},
}

func guarded(t *testing.T, sql string, masks []celpolicy.MaskAction, admin bool) (*celpolicy.PostgresRequest, celpolicy.Decision) {
	t.Helper()
	req := sqlfacts.Query(sql)
	if req.Problem != "" {
		t.Fatalf("%s: %s", sql, req.Problem)
	}
	d := celpolicy.Decision{Effect: bundle.EffectAllow, Masks: masks, Admin: admin, MatchedRules: []celpolicy.MatchedRule{}}
	return req, sqlfacts.StaticGuard(&bundle.Postgres{Name: "orders"}, req, d)
}

// TestGuardRefuses: every route by which a masked value could be learnt
// without being read (a filter, an order, a copy, statistics, another
// session's SQL) is refused before the statement runs, with a reason that
// names the column and the route.
func TestGuardRefuses(t *testing.T) {
	for _, c := range []struct{ sql, why string }{
		// Predicates: each answers a question about the value.
		{"SELECT id FROM customers WHERE card_number LIKE '4111%'", "WHERE"},
		{"SELECT count(*) FROM customers WHERE email = 'jane.doe@example.com'", "WHERE"},
		{"SELECT id FROM customers c WHERE c.card_number BETWEEN '4' AND '5'", "WHERE"},
		{"SELECT id FROM customers WHERE card_number IN (SELECT '4111 1111 1111 1111')", "WHERE"},
		{"SELECT id FROM customers WHERE EXISTS (SELECT 1 FROM orders WHERE card_number LIKE '4%')", "WHERE"},
		{"SELECT * FROM (SELECT card_number AS x FROM customers) s WHERE x LIKE '4%'", "WHERE"},
		{"WITH t AS (SELECT email AS e FROM customers) SELECT count(*) FROM t WHERE e > 'j'", "WHERE"},
		{"SELECT id FROM customers ORDER BY card_number", "ORDER BY"},
		{"SELECT email FROM customers ORDER BY 1", "ORDER BY"},
		{"SELECT email AS e FROM customers ORDER BY e", "ORDER BY"},
		{"SELECT count(*) FROM customers GROUP BY email", "GROUP BY"},
		// PostgreSQL takes positions inside grouping sets, and flattens a
		// row written without ROW into its items.
		{"SELECT email, count(*) FROM customers GROUP BY ROLLUP (1)", "GROUP BY"},
		{"SELECT email, count(*) FROM customers GROUP BY GROUPING SETS ((1), ())", "GROUP BY"},
		{"SELECT id, email FROM customers GROUP BY (1, 2)", "GROUP BY"},
		{"SELECT id, email FROM customers GROUP BY (id, (1, 2))", "GROUP BY"},
		{"SELECT email, count(*) FROM customers GROUP BY CUBE ((1, 1))", "GROUP BY"},
		{"SELECT count(*) FROM customers HAVING max(card_number) > '4'", "HAVING"},
		{"SELECT o.id FROM orders o JOIN customers c ON c.email = 'x' || o.id", "join"},
		{"SELECT 1 FROM customers a JOIN customers b USING (email)", "join"},
		{"SELECT DISTINCT email FROM customers", "DISTINCT"},
		{"SELECT DISTINCT ON (card_number) id FROM customers", "DISTINCT"},
		{"SELECT DISTINCT ON (2) id, email FROM customers", "DISTINCT"},
		{"SELECT count(DISTINCT card_number) FROM customers", "DISTINCT"},
		{"SELECT row_number() OVER (ORDER BY card_number) FROM customers", "window"},
		{"SELECT rank() OVER (PARTITION BY email) FROM customers", "window"},
		{"SELECT card_number FROM customers UNION SELECT '4111 1111 1111 1111'", "UNION"},
		{"SELECT email FROM customers INTERSECT SELECT 'jane.doe@example.com'", "UNION"},
		{"SELECT email FROM customers EXCEPT SELECT 'x'", "UNION"},
		{"SELECT CASE WHEN card_number LIKE '4%' THEN 1 ELSE 0 END FROM customers", "CASE"},
		{"SELECT count(*) FILTER (WHERE email LIKE 'j%') FROM customers", "FILTER"},
		{"SELECT string_agg(name, ',' ORDER BY card_number) FROM customers", "ORDER BY"},
		{"SELECT id FROM customers LIMIT (SELECT length(card_number) FROM customers LIMIT 1)", "computation"},
		{"SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY card_number) FROM customers", "ORDER BY"},
		// A recursive CTE's SEARCH orders by its columns, and CYCLE
		// compares them with the rows on each path.
		{"WITH RECURSIVE t(x) AS (SELECT card_number FROM customers UNION ALL SELECT x FROM t WHERE false) SEARCH BREADTH FIRST BY x SET ord SELECT 1 FROM t", "ORDER BY"},
		{"WITH RECURSIVE t(x, n) AS (SELECT email, 1 FROM customers UNION ALL SELECT 'j', n + 1 FROM t WHERE n < 3) CYCLE x SET is_cycle USING path SELECT n FROM t", "DISTINCT"},
		{"WITH RECURSIVE t(x) AS (SELECT email FROM customers UNION ALL SELECT x FROM t WHERE false) CYCLE y SET is_cycle USING path SELECT 1 FROM t", `column y of the CYCLE clause is not a column of t`},
		{"WITH RECURSIVE t(x) AS (SELECT email FROM customers UNION ALL SELECT x FROM t WHERE false) SEARCH DEPTH FIRST BY nope SET ord SELECT 1 FROM t", `column nope of the SEARCH clause is not a column of t`},
		// XMLTABLE's PATH and namespaces decide what a column finds, and
		// its DEFAULT is the column's value, converted to its type.
		{"SELECT x.v FROM customers c, XMLTABLE('/a' PASSING '<a/>' COLUMNS v text PATH (CASE WHEN c.card_number LIKE '4%' THEN 'b' ELSE 'z' END)) x", "CASE"},
		{"SELECT x.v FROM customers c, XMLTABLE('/a' PASSING '<a/>' COLUMNS v text PATH 'b' || c.email) x", "computation"},
		{"SELECT x.v FROM customers c, XMLTABLE(XMLNAMESPACES(c.email AS n), '/a' PASSING '<a/>' COLUMNS v text) x", "computation"},
		{"SELECT x.v FROM customers c, XMLTABLE('/a' PASSING '<a/>' COLUMNS v varchar(4) PATH 'b' DEFAULT c.card_number) x", "computation"},
		{"SELECT x.v FROM customers c, XMLTABLE('/a' PASSING '<a/>' COLUMNS v text PATH 'b' DEFAULT c.card_number || '') x", "computation"},
		// TABLESAMPLE's arguments and REPEATABLE seed are computed.
		{"SELECT 1 FROM customers c, LATERAL (SELECT 1 FROM orders TABLESAMPLE BERNOULLI (100) REPEATABLE (1/(ascii(c.card_number) - 52))) s", "TABLESAMPLE"},
		// A written column's subscripts are computed, and kept as the
		// array's bounds.
		{"UPDATE payments SET tags[(SELECT ascii(card_number) FROM customers LIMIT 1)] = 'x' WHERE id = 1", "computation"},
		{"UPDATE payments SET tags[1:(SELECT card_number FROM customers LIMIT 1)::int] = '{x}' WHERE id = 1", "computation"},
		{"INSERT INTO payments (tags[(SELECT length(email) FROM customers LIMIT 1)]) VALUES ('x')", "computation"},
		{"INSERT INTO payments (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET tags[(SELECT ascii(email) FROM customers LIMIT 1)] = 'x'", "computation"},
		// A name that resolves to nothing has no known origin.
		{"SELECT nope FROM (SELECT 1 AS a) s", "column nope is not a column of any relation in scope"},
		{"SELECT s.nope FROM (SELECT 1 AS a) s", "column nope is not a column of s"},
		// Computations: their errors and results answer questions too.
		{"SELECT lower(email) FROM customers", "computation"},
		{"SELECT 1/(ascii(card_number) - 52) FROM customers", "computation"},
		{"SELECT card_number::varchar(4) FROM customers", "computation"},
		{"SELECT card_number || '' FROM customers", "computation"},
		{"SELECT card_number = '4111 1111 1111 1111' FROM customers", "computation"},
		{"SELECT (SELECT card_number FROM customers LIMIT 1)::int", "computation"},
		{"SELECT array_agg(email) FROM customers", "computation"},
		{"SELECT to_json(c) FROM customers c", "computation"},
		// Which value GREATEST, LEAST, min or max returns compares them:
		// with a guess among them, a comparison oracle.
		{"SELECT greatest(email, 'jane') FROM customers", "public.customers.email is masked (mask \"customer-email\") and may not be used in a computation"},
		{"SELECT least(card_number, '4') FROM customers", "public.customers.card_number is masked (mask \"card-number\") and may not be used in a computation"},
		{"SELECT max(card_number) FROM customers", "public.customers.card_number is masked (mask \"card-number\") and may not be used in a computation"},
		{"SELECT min(email) OVER () FROM customers", "public.customers.email is masked (mask \"customer-email\") and may not be used in a computation"},
		{"SELECT max(x) FROM (SELECT email FROM customers UNION ALL SELECT 'jane') s(x)", "public.customers.email is masked (mask \"customer-email\") and may not be used in a computation"},
		// Copies to a place the caller can read back.
		{"INSERT INTO payments (note) SELECT card_number FROM customers RETURNING note", "would be written to public.payments.note"},
		{"INSERT INTO payments (note) VALUES ((SELECT email FROM customers LIMIT 1))", "would be written"},
		{"UPDATE payments p SET note = c.card_number FROM customers c WHERE p.id = c.id", "would be written"},
		{"CREATE TEMP TABLE x AS SELECT email FROM customers", "would be written to pg_temp.x.email"},
		{"SELECT card_number INTO TEMP x FROM customers", "would be written"},
		{"CREATE TEMP VIEW v AS SELECT card_number FROM customers", "would be written"},
		{"CREATE MATERIALIZED VIEW mv AS SELECT email FROM customers", "would be written"},
		{"WITH c AS (SELECT card_number FROM customers) INSERT INTO payments (note) SELECT * FROM c", "would be written"},
		{"MERGE INTO payments p USING customers c ON p.id = c.id WHEN MATCHED THEN UPDATE SET note = c.email", "would be written"},
		{"SELECT set_config('my.x', card_number, false) FROM customers", "would be written to function"},
		{"SELECT pg_notify('c', email) FROM customers", "would be written to function"},
		{"SELECT setval('orders_id_seq', length(card_number)) FROM customers", "would be written to function"},
		{"COPY (SELECT email FROM customers) TO STDOUT", "COPY"},
		{"COPY customers TO STDOUT", "COPY"},
		{"COPY customers (card_number) TO STDOUT", "COPY"},
		// Definitions that move, expose or rename masked columns.
		{"ALTER TABLE customers RENAME COLUMN card_number TO cc", "changing its definition"},
		{"ALTER TABLE customers RENAME TO clients", "changing its definition"},
		{"ALTER TABLE mine ATTACH PARTITION customers FOR VALUES FROM (MINVALUE) TO (MAXVALUE)", "changing its definition"},
		{"ALTER TABLE mine ATTACH PARTITION public.customers DEFAULT", "changing its definition"},
		{"ALTER TABLE mine INHERIT customers", "changing its definition"},
		{"SELECT 1 OPERATOR(public.###) 0", "operator public.### is not built in"},
		{"ALTER TABLE customers ADD COLUMN cc text GENERATED ALWAYS AS (card_number) STORED", "changing its definition"},
		{"CREATE INDEX ON customers (card_number) WHERE card_number LIKE '4%'", "changing its definition"},
		{"CREATE TABLE p PARTITION OF customers FOR VALUES IN (1)", "changing its definition"},
		{"CREATE POLICY p ON customers USING (card_number LIKE '4%')", "changing its definition"},
		// Statements that run others: each is judged as what it runs.
		{"EXPLAIN SELECT * FROM customers WHERE card_number = '4111 1111 1111 1111'", "WHERE"},
		{"EXPLAIN ANALYZE SELECT 1 FROM customers WHERE email LIKE 'j%'", "WHERE"},
		{"PREPARE p AS SELECT count(*) FROM customers WHERE email = $1", "WHERE"},
		{"DECLARE c CURSOR FOR SELECT id FROM customers ORDER BY card_number", "ORDER BY"},
		{"EXECUTE p('x')", "earlier in the session"},
		{"SELECT query_to_xml('SELECT card_number FROM customers', true, false, '')", "runs SQL"},
		{"SELECT * FROM ts_stat('SELECT to_tsvector(email) FROM customers')", "runs SQL"},
		{"SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, quote_literal(card_number)::tsquery FROM customers')", "runs SQL"},
		{"SELECT my_function(id) FROM customers", "not built in"},
		{"SELECT public.lower(name) FROM customers", "not built in"},
		{"DO $$ BEGIN PERFORM 1; END $$", "DO"},
		{"CALL my_procedure()", "not built in"},
		// Catalog routes.
		{"SELECT 1 FROM pg_stats WHERE most_common_vals::text LIKE '%4111%'", "gatehouse:statistics"},
		{"SELECT 1 FROM pg_stat_activity WHERE query LIKE '%4111%'", "gatehouse:other-sessions"},
		{"SELECT 1 FROM pg_stat_get_activity(NULL) a WHERE a.query LIKE '%x%'", "gatehouse:other-sessions"},
		// Names must resolve as the session resolves them.
		{"SET search_path = evil, public", "search_path"},
		// The PostgreSQL gateway follows one copy's data per query.
		{"COPY payments FROM STDIN; COPY payments FROM STDIN", "one COPY FROM STDIN"},
		{"SELECT set_config('search_path', 'evil', false)", "search_path"},
	} {
		t.Run(c.sql, func(t *testing.T) {
			req, d := guarded(t, c.sql, guardMasks, false)
			if d.Effect != bundle.EffectDeny {
				t.Fatalf("allowed; plan %+v", req.Masking)
			}
			why := strings.Join(d.Reasons, "; ")
			if !strings.HasPrefix(why, sqlfacts.Refused) || !strings.Contains(why, c.why) {
				t.Fatalf("reason %q does not say %q", why, c.why)
			}
		})
	}
}

// TestGuardPlans: statements that carry no masked value pass unmasked;
// those that carry one pass with the column masked as its mask says (a
// computed value by redact), decided before they run.
func TestGuardPlans(t *testing.T) {
	for _, c := range []struct {
		sql  string
		want []string // per output: "" or the method
	}{
		{"SELECT 1", []string{""}},
		{"SELECT count(*) FROM orders", []string{""}},
		{"SELECT now()", []string{""}},
		{"SELECT count(*) FROM customers", []string{""}},
		{"SELECT count(card_number) FROM customers", []string{""}},
		{"SELECT upper(name), id + 1 FROM customers", []string{"", ""}},
		{"SELECT id FROM customers WHERE email IS NOT NULL", []string{""}},
		{"SELECT name, email, card_number FROM customers", []string{"", "partial", "redact"}},
		{"SELECT email AS e, c.card_number AS n FROM customers c", []string{"partial", "redact"}},
		{"SELECT email::text FROM customers", []string{"partial"}},
		{"SELECT coalesce(email, '-') FROM customers", []string{"partial"}},
		{"SELECT (SELECT email FROM customers LIMIT 1)", []string{"partial"}},
		{"WITH t AS (SELECT email FROM customers) SELECT * FROM t", []string{"partial"}},
		{"SELECT x FROM (SELECT card_number AS x FROM customers) s", []string{"redact"}},
		{"SELECT name FROM customers UNION ALL SELECT email FROM customers", []string{"partial"}},
		{"SELECT CASE WHEN id = 1 THEN email ELSE name END FROM customers", []string{"partial"}},
		{"SELECT c FROM customers c", []string{"redact"}},
		{"SELECT (c).email FROM customers c", []string{"partial"}},
		{"SELECT * FROM customers", []string{"redact"}},
		{"SELECT o.id, c.email FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.total > 10 ORDER BY o.id", []string{"", "partial"}},
		{"INSERT INTO payments (order_id, amount) VALUES (1, 2) RETURNING id", []string{""}},
		{"UPDATE customers SET name = name WHERE id = 1 RETURNING card_number", []string{"redact"}},
		// Each protection (sqlfacts.Protections) through each route.
		{"SELECT most_common_vals FROM pg_stats", []string{"redact"}},
		{"SELECT stavalues1, stavalues2, stavalues3, stavalues4, stavalues5 FROM pg_statistic", []string{"redact", "redact", "redact", "redact", "redact"}},
		{"SELECT stxdmcv, stxdexpr, stxdndistinct FROM pg_statistic_ext_data", []string{"redact", "redact", ""}},
		{"SELECT most_common_vals FROM pg_stats_ext", []string{"redact"}},
		{"SELECT most_common_vals, histogram_bounds FROM pg_stats_ext_exprs", []string{"redact", "redact"}},
		{"SELECT query FROM pg_stat_statements", []string{"redact"}},
		{"SELECT query FROM public.pg_stat_statements(true)", []string{"redact"}},
		{"SELECT query, pid FROM pg_stat_activity", []string{"redact", ""}},
		{"SELECT pg_stat_get_backend_activity(1)", []string{"redact"}},
		{"EXPLAIN SELECT email FROM customers", []string{""}},
		{"SELECT ctid, c.xmin FROM customers c", []string{"", ""}},
		{"SELECT ts_rewrite('a & b'::tsquery, 'a'::tsquery, 'c'::tsquery)", []string{""}},
		{"SELECT xmltable.v, x.w FROM customers c, XMLTABLE('/a' PASSING '<a/>' COLUMNS v text PATH 'b' DEFAULT c.email), XMLTABLE('/a' PASSING '<a/>' COLUMNS w text DEFAULT c.card_number) x", []string{"partial", "redact"}},
		{"SELECT x, y, n FROM unnest('{1}'::int[], '{a}'::text[]) WITH ORDINALITY u(x, y, n)", []string{"", "", ""}},
		{"WITH RECURSIVE t(x, n) AS (SELECT email, 1 FROM customers UNION ALL SELECT x, n + 1 FROM t WHERE n < 3) SELECT x FROM t", []string{"partial"}},
	} {
		t.Run(c.sql, func(t *testing.T) {
			req, d := guarded(t, c.sql, guardMasks, false)
			if d.Effect != bundle.EffectAllow {
				t.Fatalf("refused: %v", d.Reasons)
			}
			if req.Masking == nil || len(req.Masking.Statements) != 1 {
				t.Fatalf("no plan: %+v", req.Masking)
			}
			var got []string
			for _, o := range req.Masking.Statements[0].Outputs {
				got = append(got, o.Method)
			}
			if strings.Join(got, ",") != strings.Join(c.want, ",") {
				t.Fatalf("methods %q, want %q (%+v)", got, c.want, req.Masking.Statements[0].Outputs)
			}
		})
	}
}

// TestGuardExemptions: a caller the card mask's unless exempts may filter
// and copy card numbers, and still not emails; an administrator sees
// other sessions' SQL; a mask with allow_in_predicates may be filtered on.
func TestGuardExemptions(t *testing.T) {
	emailOnly := guardMasks[1:]
	for _, sql := range []string{
		"SELECT id FROM customers WHERE card_number LIKE '4111%'",
		"CREATE TEMP TABLE x AS SELECT card_number FROM customers",
		"SELECT lower(card_number) FROM customers",
	} {
		if _, d := guarded(t, sql, emailOnly, false); d.Effect != bundle.EffectAllow {
			t.Errorf("%s: %v", sql, d.Reasons)
		}
	}
	if _, d := guarded(t, "CREATE TEMP TABLE x AS SELECT email FROM customers", emailOnly, false); d.Effect != bundle.EffectDeny {
		t.Error("a pci caller copied emails")
	}
	req, d := guarded(t, "SELECT query FROM pg_stat_activity WHERE query LIKE '%x%'", nil, true)
	if d.Effect != bundle.EffectAllow || req.Masking != nil {
		t.Errorf("admin: %v %+v", d.Reasons, req.Masking)
	}
	if _, d := guarded(t, "SELECT query FROM pg_stat_activity WHERE query LIKE '%x%'", nil, false); d.Effect != bundle.EffectDeny {
		t.Error("a caller who is not an admin filtered on other sessions' SQL")
	}
	// Names must resolve as the session's do: only administrators (whom
	// no mask or protection covers) may change the search path.
	if _, d := guarded(t, "SET search_path = evil, pg_catalog", nil, false); d.Effect != bundle.EffectDeny {
		t.Error("a caller who is not an admin changed search_path")
	}
	if _, d := guarded(t, "SET search_path = evil, pg_catalog", nil, true); d.Effect != bundle.EffectAllow {
		t.Errorf("an admin without masks: %v", d.Reasons)
	}
	// Without column masks, statistics are not protected.
	if req, d := guarded(t, "SELECT most_common_vals FROM pg_stats", nil, true); d.Effect != bundle.EffectAllow || req.Masking != nil {
		t.Errorf("unmasked admin reading pg_stats: %v %+v", d.Reasons, req.Masking)
	}
	allow := []celpolicy.MaskAction{guardMasks[0], guardMasks[1]}
	allow[1].AllowInPredicates = true
	req, d = guarded(t, "SELECT lower(email) FROM customers WHERE email LIKE 'j%' ORDER BY email", allow, false)
	if d.Effect != bundle.EffectAllow || req.Masking.Statements[0].Outputs[0].Method != bundle.MaskRedact {
		t.Errorf("allow_in_predicates: %v %+v", d.Reasons, req.Masking)
	}
	if _, d := guarded(t, "SELECT id FROM customers WHERE card_number LIKE '4%'", allow, false); d.Effect != bundle.EffectDeny {
		t.Error("allow_in_predicates on one mask allowed another's column")
	}
}

// TestGuardRoles: with upstream roles, a caller cannot change its role.
func TestGuardRoles(t *testing.T) {
	res := &bundle.Postgres{Name: "orders", UpstreamRoles: &bundle.UpstreamRoles{Default: "app"}}
	for _, sql := range []string{"SET ROLE postgres", "RESET ROLE", "SET SESSION AUTHORIZATION DEFAULT", "SELECT set_config('role', 'postgres', false)", "DISCARD ALL", "SET LOCAL ROLE x", "DO $$ BEGIN END $$"} {
		req := sqlfacts.Query(sql)
		d := sqlfacts.StaticGuard(res, req, celpolicy.Decision{Effect: bundle.EffectAllow})
		if d.Effect != bundle.EffectDeny || !strings.Contains(strings.Join(d.Reasons, ""), "role") {
			t.Errorf("%s: %v %v", sql, d.Effect, d.Reasons)
		}
	}
	res.UpstreamRoles.Method = bundle.RoleLogin
	if d := sqlfacts.StaticGuard(res, sqlfacts.Query("DO $$ BEGIN END $$"), celpolicy.Decision{Effect: bundle.EffectAllow}); d.Effect != bundle.EffectAllow {
		t.Errorf("DO with method login: %v", d.Reasons)
	}
}

// failingCatalog cannot reach its database.
type failingCatalog struct{}

func (failingCatalog) Relation(string, string) (*sqlfacts.RelationInfo, error) {
	return nil, errors.New("connection refused")
}
func (failingCatalog) Function(string, string) (*sqlfacts.FunctionInfo, error) {
	return nil, errors.New("connection refused")
}

// TestGuardFailsClosedWithoutCatalog: when the catalog cannot be asked, a
// statement is refused to anyone a mask or protection covers, even one
// that would only read other sessions' SQL (a protection, not a column
// mask); an administrator without masks is not held up.
func TestGuardFailsClosedWithoutCatalog(t *testing.T) {
	g := sqlfacts.Guard{Resource: &bundle.Postgres{Name: "orders"}, Catalog: failingCatalog{}}
	req := sqlfacts.Query("SELECT query FROM pg_stat_activity")
	d := g.Apply(req, celpolicy.Decision{Effect: bundle.EffectAllow})
	if d.Effect != bundle.EffectDeny || !strings.Contains(strings.Join(d.Reasons, ""), "could not be looked up") {
		t.Fatalf("not an admin: %v %v", d.Effect, d.Reasons)
	}
	req = sqlfacts.Query("SELECT query FROM pg_stat_activity")
	if d := g.Apply(req, celpolicy.Decision{Effect: bundle.EffectAllow, Admin: true}); d.Effect != bundle.EffectAllow {
		t.Fatalf("an admin without masks: %v", d.Reasons)
	}
}
