package sqlfacts_test

import (
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// TestGuardRefusesImplicitCode: while column masks apply, a statement that
// installs code or a predicate the database runs later without a
// statement naming it (so outside any lineage) is refused, with a reason
// that names the command; without masks it is the policy's to decide.
func TestGuardRefusesImplicitCode(t *testing.T) {
	for _, c := range []struct{ sql, why string }{
		// Code installed outright.
		{"CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "CREATE FUNCTION installs a function"},
		{"CREATE OR REPLACE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$", "CREATE FUNCTION"},
		{"CREATE PROCEDURE p() LANGUAGE sql AS 'SELECT 1'", "CREATE PROCEDURE"},
		{"ALTER FUNCTION f() RENAME TO lower", "ALTER FUNCTION"},
		{"ALTER FUNCTION f() SET SCHEMA gatehouse", "ALTER FUNCTION"},
		{"ALTER ROUTINE f() STABLE", "ALTER ROUTINE"},
		{"CREATE OPERATOR ### (LEFTARG = int, RIGHTARG = int, FUNCTION = f)", "CREATE OPERATOR installs an operator"},
		{"ALTER OPERATOR ### (int, int) SET (RESTRICT = eqsel)", "ALTER OPERATOR"},
		{"CREATE OPERATOR CLASS c DEFAULT FOR TYPE int USING btree AS OPERATOR 1 <, FUNCTION 1 f(int, int)", "CREATE OPERATOR CLASS"},
		{"CREATE AGGREGATE a (int) (SFUNC = f, STYPE = int)", "CREATE AGGREGATE"},
		{"CREATE TRIGGER t BEFORE INSERT ON mine FOR EACH ROW EXECUTE FUNCTION f()", "CREATE TRIGGER installs a trigger"},
		{"CREATE CONSTRAINT TRIGGER t AFTER INSERT ON mine FOR EACH ROW EXECUTE FUNCTION f()", "CREATE TRIGGER"},
		{"CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION f()", "CREATE EVENT TRIGGER"},
		{"CREATE RULE r AS ON INSERT TO mine DO INSTEAD SELECT card_number FROM customers", "CREATE RULE installs a rule"},
		{"CREATE RULE r AS ON INSERT TO mine DO ALSO INSERT INTO loot SELECT card_number, email FROM customers", "CREATE RULE"},
		{"CREATE POLICY p ON mine USING (EXISTS (SELECT 1 FROM customers WHERE card_number LIKE '4%'))", "CREATE POLICY installs a row-level security policy"},
		{"ALTER POLICY p ON mine USING (true)", "ALTER POLICY"},
		{"CREATE CAST (int AS text) WITH FUNCTION f(int)", "CREATE CAST installs a cast"},
		{"CREATE TRANSFORM FOR int LANGUAGE sql (FROM SQL WITH FUNCTION f(internal))", "CREATE TRANSFORM"},
		{"CREATE CONVERSION c FOR 'LATIN1' TO 'UTF8' FROM f", "CREATE CONVERSION"},
		{"ALTER SCHEMA public RENAME TO elsewhere", "schemas are not renamed"},
		// Expressions the database runs later.
		{"CREATE TEMP TABLE q (a int, x text DEFAULT pg_stat_get_backend_activity(a))", "whose output the gateway protects"},
		{"CREATE TEMP TABLE t (a int, x text DEFAULT f())", "calls f, which is not built in"},
		{"CREATE TABLE t (a int, x text DEFAULT public.lower(a))", "calls public.lower, which is not built in"},
		{"CREATE TABLE t (a int, x text GENERATED ALWAYS AS (f(a)) STORED)", "CREATE TABLE calls f"},
		{"CREATE TABLE t (a int CHECK (f(a)))", "CREATE TABLE calls f"},
		{"CREATE TABLE t (a text DEFAULT query_to_xml('SELECT card_number FROM customers', true, false, ''))", "runs SQL"},
		{"CREATE TABLE t (a int DEFAULT 1 OPERATOR(public.###) 0)", "operator public.###"},
		{"CREATE TABLE t (LIKE other INCLUDING ALL)", "LIKE ... INCLUDING"},
		{"CREATE TABLE t (LIKE other INCLUDING DEFAULTS)", "LIKE ... INCLUDING"},
		{"ALTER TABLE mine ALTER COLUMN x SET DEFAULT f()", "ALTER TABLE calls f"},
		{"ALTER TABLE mine ADD COLUMN y text DEFAULT f()", "ALTER TABLE calls f"},
		{"ALTER TABLE mine ADD CONSTRAINT c CHECK (f(a))", "ALTER TABLE calls f"},
		{"ALTER TABLE mine ENABLE ALWAYS TRIGGER t", "enables a trigger"},
		{"ALTER VIEW v ALTER COLUMN x SET DEFAULT f()", "ALTER VIEW calls f"},
		{"CREATE INDEX ON mine (f(a))", "CREATE INDEX calls f"},
		{"CREATE STATISTICS s ON (f(a)) FROM mine", "CREATE STATISTICS calls f"},
		{"CREATE DOMAIN d AS int CHECK (f(VALUE))", "CREATE DOMAIN calls f"},
		{"CREATE DOMAIN d AS text DEFAULT f()", "CREATE DOMAIN calls f"},
		{"ALTER DOMAIN d ADD CHECK (f(VALUE))", "ALTER DOMAIN calls f"},
		{"CREATE TYPE ty (INPUT = f, OUTPUT = g)", "base type"},
		{"CREATE TYPE r AS RANGE (SUBTYPE = float8, SUBTYPE_DIFF = f)", "subtype_diff"},
		{"ALTER TYPE ty SET (ANALYZE = f)", "ALTER TYPE"},
		{"CREATE SCHEMA s CREATE TABLE t (a int DEFAULT f())", "CREATE SCHEMA calls f"},
		{"CREATE SCHEMA s CREATE TRIGGER t BEFORE INSERT ON s.t FOR EACH ROW EXECUTE FUNCTION f()", "installs a trigger"},
	} {
		t.Run(c.sql, func(t *testing.T) {
			req, d := guarded(t, c.sql, guardMasks, false)
			if d.Effect != bundle.EffectDeny {
				t.Fatalf("allowed; plan %+v", req.Masking)
			}
			why := strings.Join(d.Reasons, "; ")
			if !strings.HasPrefix(why, "refused by the gateway: ") || !strings.Contains(why, c.why) || !strings.Contains(why, "while masks apply") {
				t.Fatalf("reason %q does not say %q", why, c.why)
			}
			if _, d := guarded(t, c.sql, nil, true); d.Effect != bundle.EffectAllow {
				t.Fatalf("refused without masks: %v", d.Reasons)
			}
		})
	}
}

// TestGuardAllowsBuiltinExpressions: definitions whose expressions call
// only PostgreSQL's own functions, and definitions that run nothing, pass
// while masks apply.
func TestGuardAllowsBuiltinExpressions(t *testing.T) {
	for _, sql := range []string{
		"CREATE TEMP TABLE t (id serial, a int DEFAULT 1 + 2, at timestamptz DEFAULT now(), b text CHECK (length(b) < 10))",
		"CREATE TABLE t (a int, b int GENERATED ALWAYS AS (abs(a) * 2) STORED)",
		"CREATE TABLE t (a int DEFAULT pg_catalog.abs(-1))",
		"CREATE TABLE t (LIKE other)",
		"CREATE TABLE t (LIKE other INCLUDING COMMENTS INCLUDING STORAGE)",
		"ALTER TABLE mine ALTER COLUMN at SET DEFAULT clock_timestamp()",
		"ALTER TABLE mine ADD COLUMN n int",
		"ALTER TABLE mine DISABLE TRIGGER ALL",
		"CREATE INDEX ON mine (lower(b))",
		"CREATE DOMAIN d AS int CHECK (VALUE > 0) DEFAULT 1",
		"CREATE TYPE mood AS ENUM ('sad', 'ok')",
		"CREATE TYPE pair AS (a int, b text)",
		"CREATE TYPE r AS RANGE (SUBTYPE = float8)",
		"CREATE SCHEMA s CREATE TABLE t (a int DEFAULT 0)",
		"CREATE VIEW v AS SELECT id FROM orders",
		"DROP FUNCTION f()",
		"DROP TRIGGER t ON mine",
	} {
		if _, d := guarded(t, sql, guardMasks, false); d.Effect != bundle.EffectAllow {
			t.Errorf("%s: %v", sql, d.Reasons)
		}
	}
}
