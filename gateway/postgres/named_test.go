package postgres

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

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

func startReviewWritesEnv(t *testing.T) *env {
	store, err := approval.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	e := startEnv(t, core.WithApprovals(store))
	e.policyF = func(issuer, addr string) string { return reviewWritesPolicy(issuer, addr, "") }
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
	e := startReviewWritesEnv(t)
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
	e := startReviewWritesEnv(t)
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
