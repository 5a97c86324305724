package postgres

import (
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

// Each test here is a route by which a caller could compare a masked value
// with a guess, or compute over it, out of the lineage's sight. Each
// route must be refused before the statement runs.

// mustBeRefused runs sql and fails unless the gateway refused it, with a
// reason that says want.
func mustBeRefused(t *testing.T, c *pgx.Conn, sql, want string) {
	t.Helper()
	vals, err := simple(c, sql)
	pe, ok := err.(*pgconn.PgError)
	if !ok || pe.Code != "42501" || !strings.Contains(pe.Message, sqlfacts.Refused) || !strings.Contains(pe.Message, want) {
		t.Fatalf("%s\nnot refused by the gateway for %q: rows %q, error %v", sql, want, vals, err)
	}
}

// TestGreatestAndMaxOfMaskedValuesAreRefused: GREATEST, LEAST, max and min
// return one of their arguments, but which one compares them: with a
// guess among them, the partial mask applied to the winner says whether
// the clear value sorts after the guess, and a binary search recovers it.
func TestGreatestAndMaxOfMaskedValuesAreRefused(t *testing.T) {
	e := startEnv(t)
	c := e.connect(t, "analytics-job")   // the readers policy
	b := e.connect(t, "billing-service") // may call max()
	mustBeRefused(t, c, "SELECT greatest(email, 'jane') FROM customers WHERE id = 1", "public.customers.email is masked")
	mustBeRefused(t, c, "SELECT least(card_number, '5') FROM customers WHERE id = 1", "public.customers.card_number is masked")
	mustBeRefused(t, b, "SELECT max(x) FROM (SELECT email FROM customers WHERE id = 1 UNION ALL SELECT 'jane') s(x)", "public.customers.email is masked")
	mustBeRefused(t, b, "SELECT min(card_number) FROM customers", "public.customers.card_number is masked")
}

// TestRecursiveCycleClauseOverMaskedValuesIsRefused: a recursive CTE's
// CYCLE clause compares each new row's cycle columns with the rows on its
// path; with a guess in the recursive part, the row count says whether
// the masked value equals it.
func TestRecursiveCycleClauseOverMaskedValuesIsRefused(t *testing.T) {
	e := startEnv(t)
	c := e.connect(t, "analytics-job")
	mustBeRefused(t, c, `WITH RECURSIVE t(x, n) AS (
  SELECT card_number, 1 FROM customers WHERE id = 1
  UNION ALL
  SELECT '4111 1111 1111 1111', n + 1 FROM t WHERE n < 3
) CYCLE x SET is_cycle USING path
SELECT n FROM t`, "public.customers.card_number is masked")
	// The generated columns carry what they were computed from.
	mustBeRefused(t, c, `WITH RECURSIVE t(x) AS (
  SELECT email FROM customers UNION ALL SELECT x FROM t WHERE false
) CYCLE x SET is_cycle USING path
SELECT path FROM t`, "public.customers.email is masked")
}

// TestRecursiveSearchClauseOverMaskedValuesIsRefused: SEARCH ... BY x SET
// ord orders rows by x; ORDER BY ord with a guess among the rows is a
// comparison oracle on the masked value.
func TestRecursiveSearchClauseOverMaskedValuesIsRefused(t *testing.T) {
	e := startEnv(t)
	c := e.connect(t, "analytics-job")
	mustBeRefused(t, c, `WITH RECURSIVE t(x, tag) AS (
  SELECT * FROM (SELECT '4', 'guess'
                 UNION ALL SELECT card_number, 'card' FROM customers WHERE id = 1) s
  UNION ALL SELECT x, tag FROM t WHERE false
) SEARCH BREADTH FIRST BY x SET ord
SELECT tag FROM t ORDER BY ord`, "public.customers.card_number is masked")
}

// TestXmltableColumnExpressionsAreFollowed: an XMLTABLE column's DEFAULT is
// the column's value when the path finds nothing, and its PATH decides
// what is found: both are followed, so a DEFAULT over masked columns is
// masked (or refused) and a PATH that tests one is refused.
func TestXmltableColumnExpressionsAreFollowed(t *testing.T) {
	e := startEnv(t)
	c := e.connect(t, "analytics-job")
	q := `SELECT x.v FROM customers c, XMLTABLE('/a' PASSING '<a/>' COLUMNS v text PATH 'b' DEFAULT c.card_number || ' ' || c.email) x`
	vals, err := simple(c, q)
	for _, v := range vals {
		if strings.Contains(v, "4111 1111 1111 1111") || strings.Contains(v, "jane.doe@example.com") || strings.Contains(v, "raj@example.org") {
			t.Fatalf("masked values in the clear through XMLTABLE DEFAULT: %q", vals)
		}
	}
	if err == nil && len(vals) == 0 {
		t.Fatal("no rows and no refusal")
	}
	mustBeRefused(t, c, `SELECT x.v FROM customers c, XMLTABLE('/a' PASSING '<a><b>yes</b></a>' COLUMNS v text PATH (CASE WHEN c.card_number LIKE '4111%' THEN 'b' ELSE 'z' END)) x WHERE c.id = 1`,
		"public.customers.card_number is masked")
	// A plain DEFAULT carries the value: masked as the column is.
	vals, err = simple(c, `SELECT x.v FROM customers c, XMLTABLE('/a' PASSING '<a/>' COLUMNS v text PATH 'b' DEFAULT c.email) x WHERE c.id = 1`)
	if err != nil || len(vals) != 1 || strings.Contains(vals[0], "jane.doe@example.com") {
		t.Fatalf("XMLTABLE DEFAULT email: %q %v", vals, err)
	}
}

// TestTablesampleRepeatableIsAUse: TABLESAMPLE's REPEATABLE seed is an
// expression; over a masked column, whether it raises division by zero
// answers a question about the value.
func TestTablesampleRepeatableIsAUse(t *testing.T) {
	e := startEnv(t)
	c := e.connect(t, "billing-service")
	for d := 0; d <= 9; d++ {
		mustBeRefused(t, c, fmt.Sprintf(`SELECT count(*) FROM customers c, LATERAL (SELECT 1 FROM orders TABLESAMPLE BERNOULLI (100) REPEATABLE (1/(ascii(c.card_number) - %d))) s WHERE c.id = 1`, 48+d),
			"public.customers.card_number is masked")
	}
}

// TestWriteTargetSubscriptsAreUses: the subscript of an UPDATE or INSERT
// target column (arr[expr]) is an expression; a subquery there computing
// over a masked column would store its answer as the array's bounds.
func TestWriteTargetSubscriptsAreUses(t *testing.T) {
	e := startEnv(t)
	e.publish(t, developerPolicy(e))
	c := e.connect(t, "analytics-job")
	mustRun(t, c, "CREATE TEMP TABLE gh_arr (id int, arr int[])", "INSERT INTO gh_arr VALUES (1, '{}')")
	mustBeRefused(t, c, "UPDATE gh_arr SET arr[(SELECT ascii(substr(card_number, 1, 1)) FROM customers WHERE id = 1)] = 1 WHERE id = 1",
		"public.customers.card_number is masked")
	mustBeRefused(t, c, "INSERT INTO gh_arr (id, arr[(SELECT ascii(substr(card_number, 1, 1)) FROM customers WHERE id = 1)]) VALUES (2, 1)",
		"public.customers.card_number is masked")
	vals, err := simple(c, "SELECT count(*) FROM gh_arr WHERE array_lower(arr, 1) IS NOT NULL")
	if err != nil || len(vals) != 1 || vals[0] != "0" {
		t.Fatalf("a refused write ran: %q %v", vals, err)
	}
}

// TestTsRewriteWithQueryTextIsOpaque: ts_rewrite(tsquery, text) runs the
// SELECT given as text, like ts_stat and query_to_xml.
func TestTsRewriteWithQueryTextIsOpaque(t *testing.T) {
	e := startEnv(t)
	c := e.connect(t, "billing-service")
	mustBeRefused(t, c, `SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, quote_literal(card_number || '' '' || email)::tsquery FROM customers WHERE id = 1')`,
		"runs SQL")
}

// TestUniqueIndexOnMaskedColumnIsAnOracle: a write of a guess into a
// masked column that a unique index checks answers whether the value is
// there (the write fails, ON CONFLICT DO NOTHING returns no row), and ON
// CONFLICT (email) DO UPDATE … RETURNING id even says whose it is: WHERE
// email = guess by another name. So is a write into a column whose foreign
// key references a masked one. Each is refused while the mask applies.
func TestUniqueIndexOnMaskedColumnIsAnOracle(t *testing.T) {
	e := startEnv(t)
	e.pg.Exec(t, "orders", "CREATE UNIQUE INDEX ON customers (email); CREATE TABLE contacts (id int, email text REFERENCES customers (email)); ALTER TABLE contacts OWNER TO gatehouse")
	e.publish(t, developerPolicy(e))
	c := e.connect(t, "analytics-job")
	for _, q := range []string{
		"INSERT INTO customers (id, email) VALUES (50, 'jane.doe@example.com') ON CONFLICT DO NOTHING RETURNING id",
		"INSERT INTO customers (id, email) VALUES (53, 'raj@example.org') ON CONFLICT (email) DO UPDATE SET name = 'hit' RETURNING id",
		"UPDATE customers SET email = 'jane.doe@example.com' WHERE id = 2",
		"INSERT INTO contacts VALUES (1, 'raj@example.org')",
		"COPY customers (id, email) FROM STDIN",
	} {
		mustBeRefused(t, c, q, "public.customers.email is masked")
	}
	// Columns no unique index or foreign key checks are written as before.
	mustRun(t, c, "UPDATE customers SET name = 'Jane' WHERE id = 1", "INSERT INTO customers (id, name) VALUES (60, 'New')")
}
