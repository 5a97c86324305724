package postgres

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/gateway/masking"
	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

// ddlPolicy lets pci-auditor (exempt from the card mask, not the email
// one) define things, and analytics prepare statements and use cursors.
func ddlPolicy(e *env) string {
	p := e.policyF(e.issuer.URL, e.pg.Addr())
	p = strings.Replace(p, `s.command in ['SELECT', 'BEGIN', 'COMMIT', 'ROLLBACK', 'SHOW']`, `s.command in ['SELECT', 'BEGIN', 'COMMIT', 'ROLLBACK', 'SHOW', 'PREPARE', 'EXECUTE', 'DECLARE CURSOR', 'FETCH', 'CLOSE', 'DEALLOCATE']`, 1)
	return p + `
policy "auditor-ddl" {
  resources  = ["orders"]
  identities = ["pci-auditor"]

  rule "define" {
    effect = "allow"
    reason = "the auditor builds views"
  }
}
`
}

func one(t *testing.T, c *pgx.Conn, sql string) []string {
	t.Helper()
	rows, err := c.Query(context.Background(), sql, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		for _, v := range rows.RawValues() {
			out = append(out, string(v))
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return out
}

// TestLineageThroughTheCatalog: what only the database's catalog knows
// decides masks too: a view's definition (made outside the gateway, or by
// a caller the mask exempts, and changed through the gateway), relations
// and prepared statements the session itself created.
func TestLineageThroughTheCatalog(t *testing.T) {
	e := startEnv(t)
	e.publish(t, ddlPolicy(e))
	ctx := context.Background()
	e.pg.Exec(t, "orders", "CREATE VIEW public.v_cards AS SELECT id, card_number, upper(email) AS e FROM customers; GRANT SELECT ON v_cards TO gatehouse")
	a := e.connect(t, "analytics-job")
	if got := strings.Join(one(t, a, "SELECT * FROM v_cards WHERE id = 1"), "|"); got != "1|"+masking.Redacted+"|"+masking.Redacted {
		t.Fatalf("a view over masked columns: %q", got)
	}
	if _, err := a.Exec(ctx, "SELECT id FROM v_cards WHERE card_number LIKE '4%'"); pgCode(err) != "42501" {
		t.Fatalf("a predicate through a view: %v", err)
	}

	// The auditor (card exempt) builds a view through the gateway; the
	// analytics job reads it masked. Replacing it is seen at once.
	p := e.connect(t, "pci-auditor")
	if _, err := p.Exec(ctx, "CREATE VIEW public.v_ids AS SELECT id FROM customers"); err != nil {
		t.Fatal(err)
	}
	one(t, a, "SELECT * FROM v_ids")
	if _, err := p.Exec(ctx, "CREATE OR REPLACE VIEW public.v_ids AS SELECT id, card_number FROM customers"); err != nil {
		t.Fatal(err)
	}
	if got := one(t, a, "SELECT * FROM v_ids WHERE id = 2"); len(got) != 2 || got[1] != masking.Redacted {
		t.Fatalf("a view replaced through the gateway: %q", got)
	}
	// Its own temporary view resolves for the auditor, though the shared
	// catalog cannot see it: the card number in clear (exempt), and the
	// statement is not refused for naming an unknown relation.
	if _, err := p.Exec(ctx, "CREATE TEMP VIEW mine AS SELECT id, card_number FROM customers WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	if got := one(t, p, "SELECT * FROM mine"); len(got) != 2 || got[1] != "4111 1111 1111 1111" {
		t.Fatalf("a temporary view: %q", got)
	}
	// But not copies of emails, which its mask does not exempt.
	if _, err := p.Exec(ctx, "CREATE TEMP TABLE mails AS SELECT email FROM customers"); pgCode(err) != "42501" {
		t.Fatalf("copying emails: %v", err)
	}

	// Prepared statements and cursors made with SQL are masked when run.
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		if _, err := a.Exec(ctx, "DEALLOCATE ALL", pgx.QueryExecModeSimpleProtocol); err != nil && pgCode(err) != "42501" {
			t.Fatal(err)
		}
		if _, err := a.Exec(ctx, "PREPARE p AS SELECT email, card_number FROM customers WHERE id = 1", mode); err != nil {
			t.Fatal(err)
		}
		rows, _ := a.Query(ctx, "EXECUTE p", mode)
		var got []string
		for rows.Next() {
			for _, v := range rows.RawValues() {
				got = append(got, string(v))
			}
		}
		rows.Close()
		if rows.Err() != nil || len(got) != 2 || got[0] != "j***@example.com" || got[1] != masking.Redacted {
			t.Fatalf("%v EXECUTE: %q %v", mode, got, rows.Err())
		}
		if _, err := a.Exec(ctx, "PREPARE q AS SELECT id FROM customers WHERE card_number LIKE $1", mode); pgCode(err) != "42501" {
			t.Fatalf("%v PREPARE with a predicate on a masked column: %v", mode, err)
		}
		_, _ = a.Exec(ctx, "DEALLOCATE p", pgx.QueryExecModeSimpleProtocol)
	}
	if _, err := a.Exec(ctx, "EXECUTE never_prepared"); pgCode(err) != "42501" {
		t.Fatalf("EXECUTE of a name the gateway never saw: %v", err)
	}
	tx, err := a.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "DECLARE c CURSOR FOR SELECT card_number FROM customers ORDER BY id"); err != nil {
		t.Fatal(err)
	}
	rows, _ := tx.Query(ctx, "FETCH ALL FROM c")
	var cards []string
	for rows.Next() {
		cards = append(cards, string(rows.RawValues()[0]))
	}
	rows.Close()
	if rows.Err() != nil || len(cards) != 2 || cards[0] != masking.Redacted {
		t.Fatalf("FETCH: %q %v", cards, rows.Err())
	}
	_ = tx.Rollback(ctx)
}

// TestVolatilityFromTheCatalog: a user function's volatility comes from
// pg_proc, so a rule that allows only functions without side effects
// allows a STABLE user function and not a VOLATILE one, and a user
// function shadowing a built-in's name is not taken for the built-in.
func TestVolatilityFromTheCatalog(t *testing.T) {
	e := startEnv(t)
	e.pg.Exec(t, "orders", "CREATE FUNCTION public.gh_answer() RETURNS int STABLE LANGUAGE sql AS 'SELECT 42'")
	e.pg.Exec(t, "orders", "CREATE FUNCTION public.upper(varchar) RETURNS text VOLATILE LANGUAGE sql AS 'SELECT $1::text'")
	p := e.policyF(e.issuer.URL, e.pg.Addr())
	p = p[:strings.Index(p, `mask "email"`)] // no masks: user functions are then allowed at all
	p = strings.Replace(p, `s.functions.all(f, f in ['count', 'now', 'lower'])`, `s.volatile_functions.size() == 0`, 1)
	e.publish(t, p)
	ctx := context.Background()
	a := e.connect(t, "analytics-job")
	var n int
	if err := a.QueryRow(ctx, "SELECT gh_answer()").Scan(&n); err != nil || n != 42 {
		t.Fatalf("a STABLE user function: %d %v", n, err)
	}
	if _, err := a.Exec(ctx, "SELECT gh_wipe()"); pgCode(err) != "42501" {
		t.Fatalf("a VOLATILE user function: %v", err)
	}
	if _, err := a.Exec(ctx, "SELECT upper('x'::varchar)"); pgCode(err) != "42501" {
		t.Fatalf("a user function shadowing upper: %v", err)
	}
	var v string
	if err := a.QueryRow(ctx, "SELECT lower('X')").Scan(&v); err != nil || v != "x" {
		t.Fatalf("a built-in: %q %v", v, err)
	}
}

// TestForgottenNamesBounded: a client that gives every statement a new
// name does not grow the session's record of taken names without end, and
// dropping that record never applies a definition it should not: an SQL
// PREPARE sent before the record was dropped is not applied (fail closed),
// and one sent after it is.
func TestForgottenNamesBounded(t *testing.T) {
	c := newSessionCatalog(nil, "orders", nil)
	sent := func(name string) *effects {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.stamps++
		return &effects{defines: &sqlfacts.Named{Kind: "prepared statement", Name: name, Query: "SELECT 1"}, stamp: c.stamps}
	}
	before := sent("early")
	for i := range 5 * maxForgot {
		c.forgetNamed(fmt.Sprintf("S:stmt_%d", i))
	}
	if len(c.forgot) > maxForgot {
		t.Fatalf("%d names remembered, more than %d", len(c.forgot), maxForgot)
	}
	after := sent("late")
	c.apply(before)
	c.apply(after)
	if _, ok := c.Named("prepared statement", "early"); ok {
		t.Error("a PREPARE sent before the record of taken names was dropped was applied")
	}
	if q, ok := c.Named("prepared statement", "late"); !ok || q != "SELECT 1" {
		t.Errorf("a PREPARE sent after it: %q, %v", q, ok)
	}
	// The ordinary rule still holds for a name taken after the drop.
	late := sent("again")
	c.forgetNamed("S:again")
	c.apply(late)
	if _, ok := c.Named("prepared statement", "again"); ok {
		t.Error("a PREPARE sent before a Parse took its name was applied")
	}
}

// TestMaskedColumnsThroughAParentTable: a SELECT of an inherited table
// returns its children's rows. A table customers was made to inherit from
// (by the caller, before masks applied to it, or by a DBA directly on the
// database) reads customers' masked columns under its own column names:
// they are masked as customers' are, and computing over them is refused.
func TestMaskedColumnsThroughAParentTable(t *testing.T) {
	e := startEnv(t)
	withMasks := developerPolicy(e)
	e.publish(t, withMasks[:strings.Index(withMasks, `mask "email"`)]+withMasks[strings.Index(withMasks, `policy "dev"`):])
	c := e.connect(t, "analytics-job")
	mustRun(t, c, "CREATE TABLE gh_parent (id int, name text, email text, card_number text)", "ALTER TABLE customers INHERIT gh_parent")
	e.pg.Exec(t, "orders", "CREATE TABLE dba_parent (id int, name text, email text, card_number text); CREATE TABLE dba_mid () INHERITS (dba_parent); ALTER TABLE customers INHERIT dba_mid; GRANT SELECT ON dba_parent TO gatehouse")
	e.publish(t, withMasks)
	for _, q := range []string{"SELECT email, card_number FROM gh_parent", "SELECT * FROM dba_parent", "SELECT p.email FROM gh_parent p JOIN orders o ON o.customer_id = p.id"} {
		vals, err := simple(c, q)
		if err != nil || len(vals) == 0 || inClear(vals) {
			t.Fatalf("%s: %q %v; want the masked values", q, vals, err)
		}
	}
	mustBeRefused(t, c, "SELECT id FROM gh_parent WHERE email LIKE 'jane%'", "public.customers.email is masked")
}

// TestMaskedColumnsOfAPartition: a partition's (or child's) inherited
// columns are its parent's. With customers partitioned by a DBA (in two
// levels), a caller reading a partition directly gets customers' masks,
// and may not change the partition's definition (a column copying email).
func TestMaskedColumnsOfAPartition(t *testing.T) {
	e := startEnv(t)
	e.pg.Exec(t, "orders", `ALTER TABLE orders DROP CONSTRAINT orders_customer_id_fkey;
ALTER TABLE customers RENAME TO customers_old;
CREATE TABLE customers (id int, name text, email text, card_number text) PARTITION BY RANGE (id);
CREATE TABLE customers_low PARTITION OF customers FOR VALUES FROM (0) TO (100) PARTITION BY RANGE (id);
CREATE TABLE customers_low_a PARTITION OF customers_low FOR VALUES FROM (0) TO (100);
INSERT INTO customers SELECT * FROM customers_old;
ALTER TABLE customers OWNER TO gatehouse; ALTER TABLE customers_low OWNER TO gatehouse; ALTER TABLE customers_low_a OWNER TO gatehouse`)
	e.publish(t, developerPolicy(e))
	c := e.connect(t, "analytics-job")
	for _, q := range []string{"SELECT email, card_number FROM customers_low", "SELECT * FROM customers_low_a", "SELECT email FROM customers"} {
		vals, err := simple(c, q)
		if err != nil || len(vals) == 0 || inClear(vals) {
			t.Fatalf("%s: %q %v; want the masked values", q, vals, err)
		}
	}
	mustBeRefused(t, c, "SELECT id FROM customers_low WHERE card_number LIKE '4%'", "public.customers.card_number is masked")
	mustBeRefused(t, c, "ALTER TABLE customers_low_a ADD COLUMN gh_copy text GENERATED ALWAYS AS (email) STORED", "public.customers has masked columns")
}

// TestViewReadsKeptWhenAViewIsReplaced: a session's record of what its
// views read only grows. CREATE OR REPLACE VIEW may be rolled back (ROLLBACK
// TO SAVEPOINT), and the view then reads what it read before, which the
// shared catalog cannot show while the first definition is uncommitted: a
// later read of the view must still be judged with it.
func TestViewReadsKeptWhenAViewIsReplaced(t *testing.T) {
	c := newSessionCatalog(nil, "orders", nil)
	v := celpolicy.Table{Schema: "s", Name: "v", Access: "write"}
	payments := celpolicy.Table{Schema: "public", Name: "payments", Access: "read", Via: "s.v"}
	c.apply(&effects{view: v, viewReads: []celpolicy.Table{payments}})
	// CREATE OR REPLACE VIEW s.v AS SELECT * FROM items, later rolled back.
	c.apply(&effects{view: v, viewReads: []celpolicy.Table{{Schema: "public", Name: "items", Access: "read", Via: "s.v"}}})
	got, _ := c.viewReadsOf("s", "v")
	if !slices.Contains(got, payments) {
		t.Fatalf("a read of s.v after its definition was replaced reaches %v, not public.payments", got)
	}
}

// TestFunctionCursorsFetchableAfterManyStatementNames: a driver that names
// every statement anew (pgjdbc's S_1, S_2, …, pgx's statement cache) takes
// more names than the session remembers. That must not make a cursor a
// function returned (FETCH ALL IN "<unnamed portal 1>") count as a portal
// the gateway forgot: only a named portal taken before the record was
// emptied does that.
func TestFunctionCursorsFetchableAfterManyStatementNames(t *testing.T) {
	c := newSessionCatalog(nil, "orders", nil)
	c.forgetNamed("P:") // the unnamed portal, bound again and again
	for i := range 2 * maxForgot {
		c.forgetNamed(fmt.Sprintf("S:S_%d", i))
		c.forgetNamed("P:")
	}
	if c.tookName("cursor", "<unnamed portal 1>") {
		t.Error("after many statement names, a cursor a function opened counts as a forgotten portal")
	}

	// A named portal taken before the record was emptied: every cursor
	// name counts then (fail closed).
	c = newSessionCatalog(nil, "orders", nil)
	c.forgetNamed("P:mine")
	for i := range 2 * maxForgot {
		c.forgetNamed(fmt.Sprintf("S:S_%d", i))
	}
	if !c.tookName("cursor", "mine") || !c.tookName("cursor", "other") {
		t.Error("a named portal taken before the record was emptied is not counted as taken")
	}
}
