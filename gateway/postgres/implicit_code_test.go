package postgres

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// Code the database runs without a statement naming it (rules, triggers,
// operators, defaults, row-level security policies) is in no statement's
// lineage. A masked caller whose policy allows DDL must not be able to
// install it, even on its own objects, and so must not get masked values
// in the clear through it.

// developerPolicy lets analytics-job run anything the guardrails allow; its
// masks (email partial, card redact) still apply.
func developerPolicy(e *env) string {
	return e.policyF(e.issuer.URL, e.pg.Addr()) + `
policy "dev" {
  resources  = ["orders"]
  identities = ["analytics-job"]

  rule "all" {
    effect = "allow"
    reason = "a developer"
  }
}
`
}

// simple runs one statement in the simple protocol and returns every
// value of every row as text.
func simple(c *pgx.Conn, sql string) ([]string, error) {
	rows, err := c.Query(context.Background(), sql, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		for _, v := range rows.RawValues() {
			out = append(out, string(v))
		}
	}
	return out, rows.Err()
}

// mustRun runs setup statements through the gateway.
func mustRun(t *testing.T, c *pgx.Conn, sqls ...string) {
	t.Helper()
	for _, s := range sqls {
		if _, err := simple(c, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

// mustRefuse runs a statement the gateway must refuse as installing code
// that runs implicitly while masks apply.
func mustRefuse(t *testing.T, c *pgx.Conn, sql, command string) {
	t.Helper()
	_, err := simple(c, sql)
	if pgCode(err) != "42501" || !strings.Contains(err.Error(), command) || !strings.Contains(err.Error(), "while masks apply") {
		t.Fatalf("%s: got %v, want the gateway's refusal (SQLSTATE 42501) naming %s", sql, err, command)
	}
}

// inClear reports whether masked values came back unmasked.
func inClear(vals []string) bool {
	for _, v := range vals {
		if strings.Contains(v, "4111 1111 1111 1111") || strings.Contains(v, "jane.doe@example.com") || strings.Contains(v, "raj@example.org") {
			return true
		}
	}
	return false
}

// TestMaskedCallerCannotCreateRuleInsteadSelect: a rule on the caller's
// own table would turn an INSERT (no outputs, so nothing masked) into a
// SELECT of masked columns.
func TestMaskedCallerCannotCreateRuleInsteadSelect(t *testing.T) {
	e := startEnv(t)
	e.publish(t, developerPolicy(e))
	c := e.connect(t, "analytics-job")
	mustRun(t, c, "CREATE TEMP TABLE gh_t (a int)")
	mustRefuse(t, c, "CREATE RULE gh_r AS ON INSERT TO gh_t DO INSTEAD SELECT coalesce(card_number, '') AS x, coalesce(email, '') AS y FROM customers", "CREATE RULE")
	vals, err := simple(c, "INSERT INTO gh_t VALUES (1)")
	if err != nil || inClear(vals) {
		t.Fatalf("INSERT: %q %v", vals, err)
	}
}

// TestMaskedCallerCannotCreateRuleAlsoCopy: a rule's action would copy
// masked values into a table of the caller's, to be read back plainly.
func TestMaskedCallerCannotCreateRuleAlsoCopy(t *testing.T) {
	e := startEnv(t)
	e.publish(t, developerPolicy(e))
	c := e.connect(t, "analytics-job")
	mustRun(t, c, "CREATE TABLE gh_loot (card text, mail text)", "CREATE TABLE gh_trig (a int)")
	mustRefuse(t, c, "CREATE RULE gh_r AS ON INSERT TO gh_trig DO ALSO INSERT INTO gh_loot SELECT card_number, email FROM customers", "CREATE RULE")
	mustRun(t, c, "INSERT INTO gh_trig VALUES (1)")
	vals, err := simple(c, "SELECT card, mail FROM gh_loot")
	if err != nil || inClear(vals) {
		t.Fatalf("loot: %q %v", vals, err)
	}
}

// stealSQL is a function that reads masked columns, made on the database
// directly (a masked caller cannot create one through the gateway).
const stealSQL = "CREATE FUNCTION gh_steal(int, int) RETURNS text LANGUAGE sql AS 'SELECT card_number || '' '' || email FROM customers WHERE id = $1'"

// TestMaskedCallerCannotCreateOperator: an operator runs its function
// wherever it is written, and an operator is not a function call.
func TestMaskedCallerCannotCreateOperator(t *testing.T) {
	e := startEnv(t)
	e.publish(t, developerPolicy(e))
	c := e.connect(t, "analytics-job")
	mustRefuse(t, c, strings.Replace(stealSQL, "gh_steal", "gh_steal2", 1), "CREATE FUNCTION")
	e.pg.Exec(t, "orders", stealSQL)
	mustRefuse(t, c, "CREATE OPERATOR ### (LEFTARG = int, RIGHTARG = int, FUNCTION = gh_steal)", "CREATE OPERATOR")
	if vals, err := simple(c, "SELECT 1 ### 0"); err == nil || inClear(vals) {
		t.Fatalf("operator: %q %v", vals, err)
	}
}

// TestMaskedCallerCannotCreateTrigger: a trigger on the caller's own table
// runs a function no statement names.
func TestMaskedCallerCannotCreateTrigger(t *testing.T) {
	e := startEnv(t)
	e.publish(t, developerPolicy(e))
	c := e.connect(t, "analytics-job")
	fn := "CREATE FUNCTION gh_tf() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN NEW.x := (SELECT string_agg(card_number || ' ' || email, ',') FROM customers); RETURN NEW; END$$"
	mustRefuse(t, c, fn, "CREATE FUNCTION")
	e.pg.Exec(t, "orders", fn)
	mustRun(t, c, "CREATE TABLE gh_tt (a int, x text)")
	mustRefuse(t, c, "CREATE TRIGGER gh_tr BEFORE INSERT ON gh_tt FOR EACH ROW EXECUTE FUNCTION gh_tf()", "CREATE TRIGGER")
	vals, err := simple(c, "INSERT INTO gh_tt (a) VALUES (1) RETURNING x")
	if err != nil || inClear(vals) {
		t.Fatalf("INSERT: %q %v", vals, err)
	}
}

// TestMaskedCallerCannotSetDefaultCallingUserFunction: a column default
// (or generated column) runs its function on an INSERT that names
// neither; built-in defaults still pass.
func TestMaskedCallerCannotSetDefaultCallingUserFunction(t *testing.T) {
	e := startEnv(t)
	e.publish(t, developerPolicy(e))
	c := e.connect(t, "analytics-job")
	e.pg.Exec(t, "orders", "CREATE FUNCTION gh_df() RETURNS text LANGUAGE sql AS 'SELECT string_agg(card_number || '' '' || email, '','') FROM customers'")
	mustRefuse(t, c, "CREATE TEMP TABLE gh_dt (a int, x text DEFAULT gh_df())", "CREATE TABLE")
	mustRefuse(t, c, "CREATE TEMP TABLE gh_dt (a int, x text GENERATED ALWAYS AS (gh_df() || a) STORED)", "CREATE TABLE")
	mustRun(t, c, "CREATE TEMP TABLE gh_dt (a int, x text DEFAULT now()::text)")
	mustRefuse(t, c, "ALTER TABLE gh_dt ALTER COLUMN x SET DEFAULT gh_df()", "ALTER TABLE")
	mustRefuse(t, c, "CREATE DOMAIN gh_dom AS text DEFAULT gh_df()", "CREATE DOMAIN")
	vals, err := simple(c, "INSERT INTO gh_dt (a) VALUES (1) RETURNING x")
	if err != nil || len(vals) != 1 || inClear(vals) {
		t.Fatalf("INSERT: %q %v", vals, err)
	}
}

// TestMaskedCallerCannotCreateRowSecurityPolicy: a policy's USING clause
// is a predicate over whatever it reads, and row counts answer it.
func TestMaskedCallerCannotCreateRowSecurityPolicy(t *testing.T) {
	e := startEnv(t)
	e.publish(t, developerPolicy(e))
	c := e.connect(t, "analytics-job")
	mustRun(t, c, "CREATE TABLE gh_rls (a int)", "INSERT INTO gh_rls VALUES (1)",
		"ALTER TABLE gh_rls ENABLE ROW LEVEL SECURITY", "ALTER TABLE gh_rls FORCE ROW LEVEL SECURITY")
	mustRefuse(t, c, "CREATE POLICY gh_p ON gh_rls USING (true)", "CREATE POLICY")
	e.pg.Exec(t, "orders", "CREATE POLICY gh_p ON gh_rls USING (true)")
	count := func(prefix string) string {
		mustRefuse(t, c, "ALTER POLICY gh_p ON gh_rls USING (EXISTS (SELECT 1 FROM customers WHERE id = 1 AND card_number LIKE '"+prefix+"%'))", "ALTER POLICY")
		vals, err := simple(c, "SELECT count(*) FROM gh_rls")
		if err != nil || len(vals) != 1 {
			t.Fatalf("count: %q %v", vals, err)
		}
		return vals[0]
	}
	if right, wrong := count("4111"), count("5111"); right != wrong {
		t.Fatalf("LIKE on a masked column answered through a row-level security policy: %s vs %s rows", right, wrong)
	}
}

// TestUserSchemaOnSearchPathBeforeItExists: "$user" is on the server's
// search path even while no such schema exists. Once the caller creates
// it, a function there (gatehouse.lower(int)) shadows the built-in for
// the server, so the gateway must resolve names through it too.
func TestUserSchemaOnSearchPathBeforeItExists(t *testing.T) {
	e := startEnv(t)
	e.publish(t, developerPolicy(e))
	c := e.connect(t, "analytics-job")
	mustRun(t, c, "CREATE SCHEMA gatehouse")
	fn := "CREATE FUNCTION gatehouse.lower(int) RETURNS text LANGUAGE sql AS 'SELECT card_number || '' '' || email FROM public.customers WHERE id = $1'"
	// Made on the database directly: through the gateway CREATE
	// FUNCTION is refused while masks apply.
	e.pg.Exec(t, "orders", fn)
	vals, err := simple(c, "SELECT lower(1)")
	if inClear(vals) {
		t.Fatalf("a user function ran as the built-in lower(): %q", vals)
	}
	if pgCode(err) != "42501" || !strings.Contains(err.Error(), "gatehouse.lower") {
		t.Fatalf("SELECT lower(1): got %q %v, want the refusal of gatehouse.lower", vals, err)
	}
}

// TestMaskedCallerCannotAttachAMaskedTable: ATTACH PARTITION names the
// parent as the table altered, but it is the partition whose rows move:
// the masked table, attached under the caller's own table, would be read
// back in the clear through it. Attaching changes the partition's
// definition, which is refused for a table with masked columns.
func TestMaskedCallerCannotAttachAMaskedTable(t *testing.T) {
	e := startEnv(t)
	e.publish(t, developerPolicy(e))
	c := e.connect(t, "analytics-job")
	mustRun(t, c, "CREATE TABLE gh_parent (id int NOT NULL, name text, email text, card_number text) PARTITION BY RANGE (id)")
	_, err := simple(c, "ALTER TABLE gh_parent ATTACH PARTITION customers FOR VALUES FROM (MINVALUE) TO (MAXVALUE)")
	if pgCode(err) != "42501" {
		t.Fatalf("ATTACH PARTITION of the masked table: %v", err)
	}
	if vals, err := simple(c, "SELECT card_number, email FROM gh_parent"); err != nil || len(vals) != 0 {
		t.Fatalf("the parent: %q %v", vals, err)
	}
}

// TestMaskedCallerCannotRenameSchema: masks name their columns by schema,
// so a schema renamed would take the masked tables out from under them.
func TestMaskedCallerCannotRenameSchema(t *testing.T) {
	e := startEnv(t)
	e.publish(t, developerPolicy(e))
	c := e.connect(t, "analytics-job")
	mustRefuse(t, c, "ALTER SCHEMA public RENAME TO gh_pub", "ALTER SCHEMA")
	if vals, err := simple(c, "SELECT card_number, email FROM customers"); err != nil || inClear(vals) {
		t.Fatalf("after the refusal: %q %v", vals, err)
	}
}

// TestMaskedCallerCannotReadOtherSessionsThroughADefault: a built-in
// whose output the gateway protects (another session's statement text,
// which every caller's shared database role may read) in a default runs
// where no statement's lineage shows it.
func TestMaskedCallerCannotReadOtherSessionsThroughADefault(t *testing.T) {
	e := startEnv(t)
	e.publish(t, developerPolicy(e))
	other := e.connect(t, "pci-auditor")
	if _, err := simple(other, "SELECT 'gh-other-session-secret' AS x"); err != nil {
		t.Fatal(err)
	}
	c := e.connect(t, "analytics-job")
	mustRun(t, c, "CREATE TEMP SEQUENCE gh_s")
	mustRefuse(t, c, "CREATE TEMP TABLE gh_q (a int, q text DEFAULT pg_stat_get_backend_activity(nextval('gh_s')::int))", "pg_stat_get_backend_activity")
}

// TestExistingUserOperatorNotTakenForBuiltin: an operator an
// administrator made outside pg_catalog runs its function wherever it is
// written, unqualified too. Which of same-named operators runs depends on
// the operand types, so while masks apply a name defined outside
// pg_catalog is refused, in a statement and in a default.
func TestExistingUserOperatorNotTakenForBuiltin(t *testing.T) {
	e := startEnv(t)
	e.publish(t, developerPolicy(e))
	e.pg.Exec(t, "orders", stealSQL)
	e.pg.Exec(t, "orders", "CREATE OPERATOR ### (LEFTARG = int, RIGHTARG = int, FUNCTION = gh_steal)")
	c := e.connect(t, "analytics-job")
	vals, err := simple(c, "SELECT 1 ### 0")
	if pgCode(err) != "42501" || !strings.Contains(err.Error(), "operator ###") || inClear(vals) {
		t.Fatalf("SELECT 1 ### 0: %q %v", vals, err)
	}
	mustRefuse(t, c, "CREATE TEMP TABLE gh_op (a int, x text DEFAULT (1 ### 0))", "operator ###")
	// Built-in operators still pass, and so do an extension's, which an
	// administrator installed like the built-ins (citext defines = too).
	e.pg.Exec(t, "orders", "CREATE EXTENSION IF NOT EXISTS citext")
	if vals, err := simple(c, "SELECT 1 + 1, 'a' || 'b'"); err != nil || len(vals) != 2 {
		t.Fatalf("built-in operators: %q %v", vals, err)
	}
	if vals, err := simple(c, "SELECT count(*) FROM orders WHERE id = 1 AND 'a'::citext = 'A'::citext"); err != nil || len(vals) != 1 {
		t.Fatalf("= with citext installed: %q %v", vals, err)
	}
}
