package postgres

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/gatehouse-dev/gatehouse/gateway/approval"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	core "github.com/gatehouse-dev/gatehouse/gateway/session"
)

// reviewWritesPolicy: one developer identity, no masks, allowed everything
// but writes to orders, which need a DBA's approval (not held: refused
// with the request's ID), and whatever extra adds.
func reviewWritesPolicy(issuer, addr, extra string) string {
	return fmt.Sprintf(`
identity_provider "corp" {
  issuer    = %q
  audiences = ["gatehouse"]
}

identity "dev" {
  provider = "corp"
  subject  = "dev"
}

postgres "orders" {
  address  = %q
  database = "orders"
  username = "gatehouse"
  password = "env:ORDERS_DB_PASSWORD"
}

policy "dev" {
  resources  = ["orders"]
  identities = ["dev"]

  rule "all" {
    effect = "allow"
    reason = "a developer"
  }
}

policy "approvals" {
  resources = ["orders"]
  everyone  = true

  rule "orders-write" {
    effect = "review"
    when   = "request.statements.exists(s, s.tables.exists(t, t.name == 'orders' && t.access == 'write'))"
    reason = "orders are changed with a DBA watching"
    approval {
      groups  = ["dba"]
      timeout = "1m"
      hold    = false
    }
  }
}
%s
`, issuer, addr, extra)
}

func startReviewWritesEnv(t *testing.T, extra string) *env {
	store, err := approval.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	e := startEnv(t, core.WithApprovals(store))
	e.policyF = func(issuer, addr string) string { return reviewWritesPolicy(issuer, addr, extra) }
	e.publish(t, e.policyF(e.issuer.URL, e.pg.Addr()))
	return e
}

// raw sends one simple query as written ($1 is PREPARE's, not pgx's).
func raw(c *pgx.Conn, sql string) error {
	_, err := c.PgConn().Exec(context.Background(), sql).ReadAll()
	return err
}

func rowsIn(t *testing.T, e *env, table string) int {
	var n int
	if err := e.pg.Conn(t, "orders").QueryRow(context.Background(), "SELECT count(*) FROM "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestSQLExecuteJudgedByWhatItRuns: SQL EXECUTE runs a statement prepared
// by name, through the protocol or SQL PREPARE, and is judged by that
// statement under the bundle in force: a protocol Parse refuses only what
// no rule could allow, and its review waits for an Execute, which SQL
// EXECUTE of the same name must not skip. The recording of the EXECUTE
// holds the statement it ran.
func TestSQLExecuteJudgedByWhatItRuns(t *testing.T) {
	e := startReviewWritesEnv(t, "")
	c := e.connect(t, "dev")
	ctx := context.Background()
	before := rowsIn(t, e, "orders")
	if _, err := c.PgConn().Prepare(ctx, "p", "DELETE FROM orders WHERE id > $1", nil); err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if _, err := simple(c, "EXECUTE p(0)"); pgCode(err) != "42501" || !strings.Contains(err.Error(), "DBA") {
		t.Fatalf("EXECUTE of a DELETE prepared through the protocol: %v", err)
	}
	if n := rowsIn(t, e, "orders"); n != before {
		t.Fatalf("the DELETE ran without approval: %d rows left of %d", n, before)
	}
	// Named by SQL PREPARE in the same query, or earlier: judged the same.
	for _, q := range []string{"PREPARE d1 AS DELETE FROM orders WHERE id > $1; EXECUTE d1(0)", "EXECUTE d1(0)"} {
		if err := raw(c, q); pgCode(err) != "42501" {
			t.Fatalf("%s: %v", q, err)
		}
	}
	// A name the gateway does not know is refused; reads still run.
	if _, err := simple(c, "EXECUTE nosuch(1)"); pgCode(err) != "42501" || !strings.Contains(err.Error(), "knows no prepared statement") {
		t.Fatalf("EXECUTE of an unknown name: %v", err)
	}
	if err := raw(c, "PREPARE r AS SELECT count(*) FROM orders; EXECUTE r"); err != nil {
		t.Fatalf("PREPARE and EXECUTE of a read: %v", err)
	}
	if vals, err := simple(c, "EXECUTE r"); err != nil || len(vals) != 1 {
		t.Fatalf("EXECUTE of a read prepared earlier: %q %v", vals, err)
	}
	if n := rowsIn(t, e, "orders"); n != before {
		t.Fatalf("orders changed: %d rows of %d", n, before)
	}
	c.Close(ctx)
	ss := waitSealed(t, e, 1)
	evs, err := recorder.ReadEvents(ss[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs {
		if ev.Type == recorder.TypeRequest && ev.Text == "EXECUTE p(0)" {
			if !strings.Contains(string(ev.Request), "DELETE FROM orders") || !strings.Contains(string(ev.Request), `"via":"EXECUTE"`) {
				t.Fatalf("the EXECUTE's event does not hold the DELETE it ran: %s", ev.Request)
			}
			return
		}
	}
	t.Fatal("no event for EXECUTE p(0)")
}

// TestSQLExecuteUnderTheBundleInForce: a statement prepared while allowed
// is judged again when SQL EXECUTE runs it, under the bundle in force.
func TestSQLExecuteUnderTheBundleInForce(t *testing.T) {
	e := startReviewWritesEnv(t, "")
	c := e.connect(t, "dev")
	ctx := context.Background()
	if _, err := c.PgConn().Prepare(ctx, "p", "DELETE FROM payments WHERE id > $1", nil); err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if err := raw(c, "PREPARE q AS DELETE FROM payments WHERE id > $1"); err != nil {
		t.Fatalf("PREPARE: %v", err)
	}
	if _, err := e.pg.Conn(t, "orders").Exec(ctx, "INSERT INTO payments (order_id, amount) VALUES (1, 5), (2, 6)"); err != nil {
		t.Fatal(err)
	}
	e.publish(t, reviewWritesPolicy(e.issuer.URL, e.pg.Addr(), freezeRule))
	for _, q := range []string{"EXECUTE p(0)", "EXECUTE q(0)"} {
		if _, err := simple(c, q); pgCode(err) != "42501" {
			t.Fatalf("%s under a bundle that denies it: %v", q, err)
		}
	}
	if n := rowsIn(t, e, "payments"); n != 2 {
		t.Fatalf("payments frozen, yet a DELETE ran: %d rows", n)
	}
}

// TestWritesReachTablesTheyDoNotName: a rule about a table sees the writes
// that reach it without naming it: through a foreign key's cascade
// (TRUNCATE … CASCADE, ON DELETE CASCADE), into a partition through its
// parent, and a DROP SCHEMA … CASCADE of the schema it is in.
func TestWritesReachTablesTheyDoNotName(t *testing.T) {
	e := startReviewWritesEnv(t, `
policy "closed" {
  resources = ["orders"]
  everyone  = true
  rule "closed" {
    effect = "deny"
    when   = "request.statements.exists(s, s.tables.exists(t, t.name in ['ledger_2023', 'invoices'] && t.access == 'write'))"
    reason = "2023 is closed, and invoices are immutable"
  }
}`)
	ctx := context.Background()
	su := e.pg.Conn(t, "orders")
	for _, q := range []string{
		"CREATE TABLE ledger (id int, yr int) PARTITION BY LIST (yr)",
		"CREATE TABLE ledger_2023 PARTITION OF ledger FOR VALUES IN (2023)",
		"CREATE TABLE ledger_2024 PARTITION OF ledger FOR VALUES IN (2024)",
		"INSERT INTO ledger VALUES (1, 2023), (2, 2024)",
		"GRANT ALL ON ledger, ledger_2023, ledger_2024 TO gatehouse",
	} {
		if _, err := su.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	c := e.connect(t, "dev")
	orders := rowsIn(t, e, "orders")
	for _, q := range []string{
		"TRUNCATE customers CASCADE",         // orders references customers
		"DELETE FROM ledger WHERE yr = 2023", // the rows are ledger_2023's
		"INSERT INTO ledger VALUES (3, 2023)",
		"DROP SCHEMA billing CASCADE", // billing.invoices
	} {
		if _, err := simple(c, q); pgCode(err) != "42501" {
			t.Errorf("%s: %v", q, err)
		}
	}
	if n := rowsIn(t, e, "orders"); n != orders {
		t.Errorf("orders: %d rows of %d", n, orders)
	}
	if n := rowsIn(t, e, "ledger_2023"); n != 1 {
		t.Errorf("ledger_2023: %d rows", n)
	}
	if n := rowsIn(t, e, "billing.invoices"); n < 0 {
		t.Errorf("billing.invoices")
	}
	// Writes that reach no such table still run.
	if _, err := simple(c, "DELETE FROM ledger WHERE yr = 2024 AND id = 0"); err == nil {
		t.Errorf("a DELETE through the parent reaches ledger_2023 too: it must be refused")
	}
	if _, err := simple(c, "DELETE FROM ledger_2024 WHERE id = 0"); err != nil {
		t.Errorf("a DELETE of the open year's partition: %v", err)
	}
}

// closedPolicy denies writes to closed partitions and to kids (which a
// foreign key's cascades reach); orders' writes need review.
const closedPolicy = `
policy "closed" {
  resources = ["orders"]
  everyone  = true
  rule "closed" {
    effect = "deny"
    when   = "request.statements.exists(s, s.tables.exists(t, t.name in ['ledger_2023', 'closed_2022', 'kids'] && t.access == 'write'))"
    reason = "closed"
  }
}`

// TestWritesThatReachCoveredTablesRefused: every way a write reaches a
// covered table without naming it is judged as a write to that table: a
// COPY into the parent, a rename in the same query, a view, an upsert's
// ON UPDATE cascade, ALTER TABLE and DROP TABLE of the parent, and SQL
// EXECUTE inside EXPLAIN ANALYZE or CREATE TABLE AS. Each must be refused
// and leave the data as it was.
func TestWritesThatReachCoveredTablesRefused(t *testing.T) {
	ctx := context.Background()
	sq := func(sql string) func(c *pgx.Conn) error { return func(c *pgx.Conn) error { return raw(c, sql) } }
	for _, tc := range []struct {
		name string
		run  func(c *pgx.Conn) error
	}{
		{"COPY into the partitioned parent", func(c *pgx.Conn) error {
			_, err := c.PgConn().CopyFrom(ctx, strings.NewReader("7\t2023\n"), "COPY ledger FROM STDIN")
			return err
		}},
		{"rename the parent in the same query", sq("ALTER TABLE ledger RENAME TO zz; DELETE FROM zz WHERE yr = 2023; ALTER TABLE zz RENAME TO ledger")},
		{"a schema renamed in the same query", sq("ALTER SCHEMA acct RENAME TO zz; DELETE FROM zz.ledger; ALTER SCHEMA zz RENAME TO acct")},
		{"UPDATE through a view on the parent", sq("UPDATE lv SET id = id + 100 WHERE yr = 2023")},
		{"INSERT ON CONFLICT DO UPDATE cascades ON UPDATE", sq("INSERT INTO parents VALUES (1) ON CONFLICT (id) DO UPDATE SET id = 99")},
		{"ALTER TABLE of the parent rewrites its partitions", sq("DROP VIEW lv; ALTER TABLE ledger ALTER COLUMN id TYPE bigint USING 0")},
		{"DROP TABLE of the parent drops its partitions", sq("DROP TABLE ledger CASCADE")},
		{"EXPLAIN ANALYZE EXECUTE", func(c *pgx.Conn) error {
			if _, err := c.PgConn().Prepare(ctx, "po", "DELETE FROM orders WHERE id > $1", nil); err != nil {
				return err
			}
			return raw(c, "EXPLAIN ANALYZE EXECUTE po(0)")
		}},
		{"CREATE TABLE AS EXECUTE", func(c *pgx.Conn) error {
			if _, err := c.PgConn().Prepare(ctx, "pq", "WITH d AS (DELETE FROM orders WHERE id > $1 RETURNING id) SELECT * FROM d", nil); err != nil {
				return err
			}
			return raw(c, "CREATE TABLE zz_ctas AS EXECUTE pq(0)")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startReviewWritesEnv(t, closedPolicy)
			owner := e.pg.Conn(t, "orders")
			for _, q := range []string{
				"CREATE TABLE ledger (id int, yr int) PARTITION BY LIST (yr)",
				"CREATE TABLE ledger_2023 PARTITION OF ledger FOR VALUES IN (2023)",
				"CREATE TABLE ledger_2024 PARTITION OF ledger FOR VALUES IN (2024)",
				"CREATE SCHEMA acct",
				"CREATE TABLE acct.ledger (id int, yr int) PARTITION BY LIST (yr)",
				"CREATE TABLE acct.closed_2022 PARTITION OF acct.ledger FOR VALUES IN (2022)",
				"CREATE TABLE parents (id int PRIMARY KEY)",
				"CREATE TABLE kids (pid int REFERENCES parents ON UPDATE CASCADE ON DELETE CASCADE)",
				"CREATE VIEW lv AS SELECT * FROM ledger",
				"INSERT INTO parents VALUES (1); INSERT INTO kids VALUES (1)",
				"INSERT INTO ledger VALUES (1, 2023), (2, 2024); INSERT INTO acct.ledger VALUES (1, 2022)",
				"GRANT ALL ON ALL TABLES IN SCHEMA public, acct TO gatehouse",
				"GRANT ALL ON SCHEMA acct TO gatehouse",
				"ALTER TABLE ledger OWNER TO gatehouse", "ALTER TABLE ledger_2023 OWNER TO gatehouse",
				"ALTER TABLE ledger_2024 OWNER TO gatehouse", "ALTER VIEW lv OWNER TO gatehouse",
				"ALTER SCHEMA acct OWNER TO gatehouse",
			} {
				if _, err := owner.Exec(ctx, q); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			state := func() string {
				var s string
				if err := owner.QueryRow(ctx, `SELECT concat_ws(' ',
					(SELECT count(*)||'/'||coalesce(sum(id),0) FROM ledger_2023),
					(SELECT count(*)||'/'||coalesce(sum(id),0) FROM acct.closed_2022),
					(SELECT count(*)||'/'||coalesce(sum(pid),0) FROM kids),
					(SELECT count(*) FROM orders))`).Scan(&s); err != nil {
					return "gone: " + err.Error()
				}
				return s
			}
			before := state()
			err := tc.run(e.connect(t, "dev"))
			if after := state(); after != before {
				t.Fatalf("ran without approval (err %v): %s -> %s", err, before, after)
			}
			if pgCode(err) != "42501" {
				t.Fatalf("not refused by the gateway: %v", err)
			}
		})
	}
}

// TestPlainInsertNotJudgedAsAnUpdate: a foreign key's ON UPDATE actions
// reach the referencing table only from a statement that may update: an
// INSERT … ON CONFLICT DO UPDATE, not a plain INSERT.
func TestPlainInsertNotJudgedAsAnUpdate(t *testing.T) {
	e := startReviewWritesEnv(t, closedPolicy)
	ctx := context.Background()
	owner := e.pg.Conn(t, "orders")
	for _, q := range []string{
		"CREATE TABLE parents (id int PRIMARY KEY)",
		"CREATE TABLE kids (pid int REFERENCES parents ON UPDATE CASCADE)",
		"GRANT ALL ON parents, kids TO gatehouse",
	} {
		if _, err := owner.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	c := e.connect(t, "dev")
	if _, err := simple(c, "INSERT INTO parents VALUES (1)"); err != nil {
		t.Fatalf("a plain INSERT: %v", err)
	}
	if _, err := simple(c, "INSERT INTO parents VALUES (1) ON CONFLICT (id) DO UPDATE SET id = 2"); pgCode(err) != "42501" {
		t.Fatalf("an upsert that may cascade into kids: %v", err)
	}
}

// TestMoveAndFetchRunWhatThePortalRuns: SQL MOVE and FETCH of a portal
// bound through the protocol run its statement: a DELETE … RETURNING
// portal runs to completion at its first MOVE. Neither may skip the review
// its Execute would need, whether the gateway still knows the portal
// (MOVE is judged by its statement, as FETCH is) or forgot it when a
// DECLARE in the transaction made it forget every portal (refused: the
// upstream may still hold it).
func TestMoveAndFetchRunWhatThePortalRuns(t *testing.T) {
	e := startReviewWritesEnv(t, "")
	before := rowsIn(t, e, "orders")
	conn, fe := rawSession(t, e, "dev")
	bindDelete := func(stmt string) {
		t.Helper()
		send(t, fe, &pgproto3.Query{String: "BEGIN"})
		collect(t, conn, fe, 5*time.Second)
		send(t, fe, &pgproto3.Parse{Name: stmt, Query: "DELETE FROM orders WHERE id > $1 RETURNING id"},
			&pgproto3.Bind{DestinationPortal: "x", PreparedStatement: stmt, Parameters: [][]byte{[]byte("0")}}, &pgproto3.Sync{})
		if tr, _, _ := collect(t, conn, fe, 5*time.Second); strings.Join(tr, " ") != "ParseComplete BindComplete Z(T)" {
			t.Fatalf("Parse and Bind of a DELETE that needs review at Execute: %v", tr)
		}
	}
	run := func(sql, want string) {
		t.Helper()
		send(t, fe, &pgproto3.Query{String: sql})
		tr, _, _ := collect(t, conn, fe, 5*time.Second)
		send(t, fe, &pgproto3.Query{String: "COMMIT"})
		collect(t, conn, fe, 5*time.Second)
		if got := strings.Join(tr, " "); !strings.Contains(got, "E(42501:") || !strings.Contains(got, want) {
			t.Fatalf("%s: %v, want a refusal naming %q", sql, tr, want)
		}
		if n := rowsIn(t, e, "orders"); n != before {
			t.Fatalf("%s ran the DELETE without approval: %d rows left of %d", sql, n, before)
		}
	}
	bindDelete("d1")
	run("MOVE ALL x", "DBA")
	bindDelete("d2")
	send(t, fe, &pgproto3.Query{String: "DECLARE gh_other CURSOR FOR SELECT 1"})
	collect(t, conn, fe, 5*time.Second)
	run("FETCH ALL x", "no longer knows what the portal")
}
