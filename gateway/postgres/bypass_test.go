package postgres

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// bypasses are attempts by a read-only caller (analytics-job) to get a
// statement past the gateway that policy denies. Each must come back as
// SQLSTATE 42501 and never reach the database.
var bypasses = []struct{ name, sql string }{
	{"leading comment", "/* harmless */ DROP TABLE customers"},
	{"line comment", "-- just a read\nDROP TABLE customers"},
	{"nested comment", "/* a /* nested */ b */ DROP TABLE customers"},
	{"mixed case", "dRoP tAbLe CuStOmErS"},
	{"quoted identifier", `DROP TABLE "customers"`},
	{"unicode escaped identifier", `DROP TABLE U&"cust\006Fmers"`},
	{"multi-statement", "SELECT 1; DROP TABLE customers"},
	{"dollar quote then delete", "SELECT $$harmless$$; DELETE FROM customers WHERE id = 1"},
	{"CTE-wrapped delete", "WITH d AS (DELETE FROM customers WHERE id = 1 RETURNING *) SELECT * FROM d"},
	{"explain analyze delete", "EXPLAIN ANALYZE DELETE FROM customers WHERE id = 1"},
	{"DO block", "DO $$BEGIN EXECUTE 'DROP TABLE customers'; END$$"},
	{"create function", "CREATE FUNCTION gh_evil() RETURNS void LANGUAGE sql AS 'DELETE FROM customers'"},
	{"call a writing function in a SELECT", "SELECT gh_wipe()"},
	{"SQL prepare of a delete", "PREPARE gh_p AS DELETE FROM customers WHERE id = $1"},
	{"SQL execute", "EXECUTE gh_p(1)"},
	{"copy to program", "COPY customers TO PROGRAM 'cat > /tmp/stolen'"},
	{"copy masked table out", "COPY customers TO STDOUT"},
	{"copy masked query out", "COPY (SELECT email FROM customers) TO STDOUT"},
	{"set role", "SET ROLE postgres"},
	{"set_config role", "SELECT set_config('role', 'postgres', false)"},
	{"set session authorization", "SET SESSION AUTHORIZATION postgres"},
	{"side effect in a select", "SELECT pg_terminate_backend(pg_backend_pid())"},
	{"setval in a select", "SELECT setval('orders_id_seq', 1000)"},
	{"lo_export", "SELECT lo_export(1, '/tmp/stolen')"},
	{"row locks", "SELECT * FROM customers WHERE id = 1 FOR UPDATE"},
	{"truncate", "TRUNCATE orders"},
	{"update without where", "UPDATE customers SET email = 'x'"},
	{"delete where 1=1", "DELETE FROM customers WHERE 1=1"},
	{"insert", "INSERT INTO orders (customer_id, total) VALUES (1, 1)"},
	{"select into", "SELECT * INTO stolen FROM customers"},
	{"create table as", "CREATE TABLE stolen AS SELECT * FROM customers"},
	{"alter table", "ALTER TABLE customers DROP COLUMN email"},
	{"grant", "GRANT ALL ON customers TO PUBLIC"},
	{"unparseable", "SELEC * FROM customers"},
	{"write inside a transaction", "BEGIN; DELETE FROM orders WHERE id = 1; COMMIT"},
	{"lock table", "LOCK TABLE customers"},
	{"catalog write", "UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'"},
}

func TestBypassSuite(t *testing.T) {
	e := startEnv(t)
	ctx := context.Background()
	for _, mode := range []struct {
		name string
		mode pgx.QueryExecMode
	}{
		{"simple", pgx.QueryExecModeSimpleProtocol},
		{"extended", pgx.QueryExecModeCacheStatement},
		{"extended-describe", pgx.QueryExecModeDescribeExec},
	} {
		t.Run(mode.name, func(t *testing.T) {
			c := e.connect(t, "analytics-job")
			for _, b := range bypasses {
				t.Run(b.name, func(t *testing.T) {
					_, err := c.Exec(ctx, b.sql, mode.mode)
					var pgErr *pgconn.PgError
					if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
						t.Fatalf("%q: got %v, want SQLSTATE 42501", b.sql, err)
					}
					if !strings.HasPrefix(pgErr.Message, "gatehouse: permission denied") {
						t.Errorf("message %q", pgErr.Message)
					}
					// The session stays usable after every denial.
					var n int
					if err := c.QueryRow(ctx, "SELECT count(*) FROM orders", mode.mode).Scan(&n); err != nil || n != 2 {
						t.Fatalf("after the denial: %v (%d rows)", err, n)
					}
				})
			}
		})
	}
	// Nothing reached the database: the data is intact and none of the
	// attempts is in the server's statement log.
	su := e.pg.Conn(t, "orders")
	var customers, orders, stolen int
	if err := su.QueryRow(ctx, "SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM orders), (SELECT count(*) FROM pg_class WHERE relname = 'stolen')").Scan(&customers, &orders, &stolen); err != nil {
		t.Fatal(err)
	}
	if customers != 2 || orders != 2 || stolen != 0 {
		t.Errorf("database changed: customers=%d orders=%d stolen=%d", customers, orders, stolen)
	}
	log := e.pg.QueryLog(t)
	for _, b := range bypasses {
		if strings.Contains(log, b.sql) {
			t.Errorf("%q reached the database", b.sql)
		}
	}
}
