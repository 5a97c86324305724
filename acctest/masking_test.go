package acctest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/gatehouse-dev/gatehouse/gateway"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/internal/pgtest"
)

// maskingPolicy is the quickstart's shape: a read-only job, a service that
// writes billing tables, a DBA outside pci and one inside it; an email mask
// for everyone and a card mask unless pci.
func maskingPolicy(issuer, dbAddr string) string {
	return fmt.Sprintf(`
identity_provider "hydra" {
  issuer    = %q
  audiences = ["gatehouse"]
}

identity "analytics-job" {
  provider = "hydra"
  subject  = "analytics-job"
  groups   = ["analytics"]
}

identity "billing-service" {
  provider = "hydra"
  subject  = "billing-service"
  groups   = ["billing"]
}

identity "dba-ops" {
  provider = "hydra"
  subject  = "dba-ops"
  groups   = ["dba"]
}

identity "pci-dba" {
  provider = "hydra"
  subject  = "pci-dba"
  groups   = ["dba", "pci"]
}

postgres "orders" {
  address  = %q
  database = "orders"
  username = "gatehouse"
  password = "env:ORDERS_DB_PASSWORD"
  admins   = "'dba' in identity.groups"
}

policy "guardrails" {
  resources = ["orders"]
  everyone  = true

  rule "no-drop" {
    effect = "deny"
    when   = "request.statements.exists(s, s.command.startsWith('DROP ') || s.command == 'TRUNCATE')"
    reason = "nobody may DROP or TRUNCATE"
  }
}

policy "analytics" {
  resources  = ["orders"]
  identities = ["analytics-job"]

  rule "read" {
    effect = "allow"
    when   = <<-CEL
      request.statements.all(s,
        s.command in ['SELECT', 'EXPLAIN', 'SHOW', 'BEGIN', 'COMMIT', 'ROLLBACK'] &&
        s.tables.all(t, t.access == 'read') && s.locking == '' &&
        s.volatile_functions.all(f, f in ['pg_partition_ancestors']))
    CEL
    reason = "analytics reads"
  }
}

policy "billing" {
  resources  = ["orders"]
  identities = ["billing-service"]

  rule "work" {
    effect = "allow"
    when   = "request.statements.all(s, s.command in ['SELECT', 'INSERT', 'UPDATE', 'BEGIN', 'COMMIT'] && s.tables.all(t, t.access == 'read' || t.schema == 'billing' || t.name == 'payments'))"
    reason = "billing reads, and writes billing tables"
  }
}

policy "dba" {
  resources = ["orders"]
  groups    = ["dba"]

  rule "administer" {
    effect = "allow"
    reason = "DBAs administer"
  }
}

mask "email" {
  resources = ["orders"]
  columns   = ["customers.email"]
  method    = "partial"
}

mask "card" {
  resources = ["orders"]
  columns   = ["customers.card_number"]
  method    = "redact"
  unless    = "'pci' in identity.groups"
}
`, issuer, dbAddr)
}

const maskingSchema = `
CREATE TABLE payments (id serial PRIMARY KEY, order_id int, amount numeric, note text);
INSERT INTO payments (order_id, amount) VALUES (1, 120.50);
INSERT INTO customers VALUES (2, 'Ravi Patel', 'ravi@example.org', '5500 0000 0000 0004');
CREATE VIEW customer_cards AS SELECT id, card_number, lower(email) AS login FROM customers;
`

// Values no masked caller may receive, in any form the database could send
// them. otherSecret is in another session's SQL.
var (
	cardSecrets  = []string{"4111 1111 1111 1111", "4111111111111111", "5500 0000 0000 0004", "5500000000000004"}
	emailSecrets = []string{"jane.doe@example.com", "ravi@example.org"}
	otherSecrets = []string{"other-session-secret-42", "other-session-secret-43"}
)

// probe is a statement an attacker would try, and what it touches: masked
// cards, masked emails, or neither. Refused probes must be refused for
// every caller a mask on what it touches applies to; every probe must leak
// nothing, and gatehouse eval must decide it as the gateway did.
type probe struct {
	sql     string
	refused bool
	card    bool // it is about card numbers only (pci callers are exempt)
	// catalog: deciding it needs the database's catalog (a view's
	// definition), which gatehouse eval has only with --database.
	catalog bool
}

var probes = []probe{
	// Benign: no masked value travels.
	{sql: "SELECT 1"},
	{sql: "SELECT count(*) FROM orders"},
	{sql: "SELECT now()"},
	{sql: "SELECT id, name, email, card_number FROM customers ORDER BY id"},
	{sql: "SELECT c.card_number AS not_a_card FROM customers c"},
	{sql: "SELECT name FROM customers UNION ALL SELECT email FROM customers"},
	{sql: "SELECT * FROM customer_cards"},
	// Statistics, after ANALYZE.
	{sql: "SELECT attname, most_common_vals::text, histogram_bounds::text FROM pg_stats WHERE tablename = 'customers'"},
	{sql: "SELECT * FROM pg_stats WHERE tablename = 'customers'"},
	{sql: "SELECT count(*) FROM pg_stats WHERE histogram_bounds::text LIKE '%4111%'", refused: true},
	// Predicates, ordering, grouping, joins, windows, set operations.
	{sql: "SELECT count(*) FROM customers WHERE card_number LIKE '4111%'", refused: true, card: true},
	{sql: "SELECT count(*) FROM customers WHERE email = 'jane.doe@example.com'", refused: true},
	{sql: "SELECT id FROM customers ORDER BY card_number", refused: true, card: true},
	{sql: "SELECT count(*) FROM customers GROUP BY email", refused: true},
	{sql: "SELECT o.id FROM orders o JOIN customers c ON c.email > 'j' AND c.id = o.customer_id", refused: true},
	{sql: "SELECT DISTINCT email FROM customers", refused: true},
	{sql: "SELECT card_number FROM customers UNION SELECT '4111 1111 1111 1111'", refused: true, card: true},
	{sql: "SELECT rank() OVER (ORDER BY card_number) FROM customers", refused: true, card: true},
	{sql: "SELECT CASE WHEN card_number LIKE '4%' THEN 1 END FROM customers", refused: true, card: true},
	{sql: "SELECT id FROM customers WHERE EXISTS (SELECT 1 FROM orders WHERE card_number LIKE '4%')", refused: true, card: true},
	{sql: "SELECT id FROM customer_cards WHERE card_number LIKE '4%'", refused: true, card: true, catalog: true},
	{sql: "EXPLAIN SELECT * FROM customers WHERE card_number = '4111 1111 1111 1111'", refused: true, card: true},
	{sql: "SELECT lower(email) FROM customers", refused: true},
	{sql: "SELECT 1/(ascii(card_number) - 52) FROM customers", refused: true, card: true},
	{sql: "SELECT query_to_xml('SELECT card_number FROM customers', true, false, '')", refused: true},
	// Copies into places the caller can read back.
	{sql: "CREATE TEMP TABLE loot AS SELECT card_number FROM customers", refused: true, card: true},
	{sql: "SELECT email INTO TEMP loot2 FROM customers", refused: true},
	{sql: "CREATE TEMP VIEW loot3 AS SELECT card_number FROM customers", refused: true, card: true},
	{sql: "INSERT INTO payments (order_id, amount, note) SELECT 1, 0, card_number FROM customers RETURNING note", refused: true, card: true},
	{sql: "UPDATE payments SET note = (SELECT email FROM customers LIMIT 1) WHERE id = 1 RETURNING note", refused: true},
	// Other sessions' SQL.
	{sql: "SELECT pid, query FROM pg_stat_activity"},
	{sql: "SELECT query FROM pg_stat_statements"},
	{sql: "SELECT pg_stat_get_backend_activity(b) FROM pg_stat_get_backend_idset() b"},
}

// capture records every byte a pgx connection receives, after TLS.
type capture struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *capture) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}

func (c *capture) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

func (s *stack) capturedConn(t *testing.T, token string) (*pgx.Conn, *capture) {
	t.Helper()
	host, port, _ := net.SplitHostPort(s.pgAddr)
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%s dbname=orders user=svc password=%s sslmode=verify-full sslrootcert=%s", host, port, token, s.caFile))
	if err != nil {
		t.Fatal(err)
	}
	c := &capture{}
	cfg.BuildFrontend = func(r io.Reader, w io.Writer) *pgproto3.Frontend {
		return pgproto3.NewFrontend(io.TeeReader(r, c), w)
	}
	conn, err := pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn, c
}

// run sends one probe and reads everything back; it reports whether the
// gateway refused it (rather than forwarding it).
func run(conn *pgx.Conn, sql string, mode pgx.QueryExecMode) (refused bool, errText string) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rows, err := conn.Query(ctx, sql, mode)
	if err == nil {
		for rows.Next() {
			_ = rows.RawValues()
		}
		rows.Close()
		err = rows.Err()
	}
	if err == nil {
		return false, ""
	}
	return strings.Contains(err.Error(), "gatehouse: permission denied"), err.Error()
}

// TestMaskingHoldsAgainstACaller: the routes an outside test found leaks
// by (statistics, predicates, copies, other sessions' SQL, views) return no
// clear value to a read-only job, a DBA outside pci or the billing service,
// through pgx in the simple and extended protocols with text and binary
// results and through psql; what the gateway refuses never reaches
// PostgreSQL and is recorded as refused; and gatehouse eval --database
// decides every statement as the gateway did (and without --database,
// every one that does not depend on the database's catalog).
func TestMaskingHoldsAgainstACaller(t *testing.T) {
	if _, err := exec.LookPath("psql"); err != nil {
		t.Fatalf("psql is required: %v (apt package postgresql-client-15)", err)
	}
	s := startStackWith(t, stackOptions{
		policy: maskingPolicy, schema: maskingSchema,
		clients: []string{"analytics-job", "billing-service", "dba-ops", "pci-dba"},
		pgOpts:  []pgtest.Option{pgtest.WithConfig("shared_preload_libraries", "pg_stat_statements")},
	})
	ctx := context.Background()
	s.pg.Exec(t, "orders", "CREATE EXTENSION pg_stat_statements")
	s.pg.Exec(t, "orders", "GRANT pg_read_all_stats TO gatehouse")
	s.pg.Exec(t, "orders", "ANALYZE")
	// Another session's SQL, live and in pg_stat_statements' history.
	s.pg.Exec(t, "orders", "COMMENT ON TABLE orders IS 'other-session-secret-43'")
	other := s.pg.Conn(t, "orders")
	sleeping := make(chan struct{})
	go func() {
		defer close(sleeping)
		_, _ = other.Exec(ctx, "SELECT pg_sleep(60), 'other-session-secret-42'")
	}()
	t.Cleanup(func() {
		_ = other.PgConn().CancelRequest(ctx)
		<-sleeping
	})
	waitActivity(t, s, "other-session-secret-42")

	evals := map[string]string{}
	forwarded := map[string]bool{}
	modes := map[string]pgx.QueryExecMode{"simple": pgx.QueryExecModeSimpleProtocol, "extended-binary": pgx.QueryExecModeDescribeExec, "extended-text": pgx.QueryExecModeExec}
	var refusedSQL []string
	for _, who := range []string{"analytics-job", "dba-ops", "billing-service", "pci-dba"} {
		secrets := append(append([]string{}, emailSecrets...), otherSecrets...)
		if who != "pci-dba" {
			secrets = append(secrets, cardSecrets...)
		}
		if who == "dba-ops" || who == "pci-dba" {
			secrets = emailSecrets // administrators see other sessions' SQL
			if who == "dba-ops" {
				secrets = append(secrets, cardSecrets...)
			}
		}
		token := s.token(t, who)
		for mode, qm := range modes {
			conn, got := s.capturedConn(t, token)
			for _, p := range probes {
				refused, errText := run(conn, p.sql, qm)
				masked := !(p.card && who == "pci-dba")
				if p.refused && masked && !refused {
					t.Errorf("%s %s: %q was not refused (%s)", who, mode, p.sql, errText)
				}
				if refused {
					refusedSQL = append(refusedSQL, p.sql)
				} else {
					forwarded[p.sql] = true
				}
				key := who + "\x00" + p.sql
				if _, ok := evals[key]; !ok {
					evals[key] = evalEffect(t, s, who, p.sql)
					evals["db\x00"+key] = evalEffect(t, s, who, p.sql, "--database", s.pg.ConnString("gatehouse", s.pgPass, "orders"))
				}
				if eval := evals[key]; (eval == "deny") != refused && !p.catalog {
					t.Errorf("%s %s: %q: gatehouse eval says %s, the gateway refused=%v (%s)", who, mode, p.sql, eval, refused, errText)
				}
				if eval := evals["db\x00"+key]; (eval == "deny") != refused {
					t.Errorf("%s %s: %q: gatehouse eval --database says %s, the gateway refused=%v (%s)", who, mode, p.sql, eval, refused, errText)
				}
			}
			received := got.String()
			for _, secret := range secrets {
				if strings.Contains(received, secret) {
					t.Errorf("%s %s: the client received %q", who, mode, secret)
				}
			}
			if !strings.Contains(received, "[REDACTED]") {
				t.Errorf("%s %s: no masked value came back at all", who, mode)
			}
		}
	}
	// Administrators do see other sessions' SQL: the test can tell.
	conn, got := s.capturedConn(t, s.token(t, "dba-ops"))
	run(conn, "SELECT query FROM pg_stat_activity", pgx.QueryExecModeSimpleProtocol)
	if !strings.Contains(got.String(), "other-session-secret-42") {
		t.Error("an administrator does not see other sessions' SQL: the other-session probes prove nothing")
	}

	// psql, as a person would use it: the session survives a refusal, and
	// \dt and \d work for the read-only job.
	out := s.psqlScript(t, s.token(t, "analytics-job"), `SELECT 1 AS one;
SELECT count(*) AS n FROM customers WHERE card_number LIKE '4111%';
SELECT count(*) AS orders FROM orders;
SELECT now() > '2020-01-01' AS recent;
\dt
\d customers
SELECT attname, histogram_bounds FROM pg_stats WHERE tablename = 'customers';
SELECT query FROM pg_stat_activity;
SELECT 'still here' AS done;
`)
	for _, want := range []string{"one", "permission denied", "orders", "recent", "List of relations", `Table "public.customers"`, "[REDACTED]", "still here"} {
		if !strings.Contains(out, want) {
			t.Errorf("psql as analytics: the output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "FATAL") {
		t.Errorf("psql as analytics: a FATAL error:\n%s", out)
	}
	out = s.psqlScript(t, s.token(t, "billing-service"), "COPY customers TO STDOUT;\nCOPY (SELECT email FROM customers) TO STDOUT;\nSELECT 'still here';\n")
	if !strings.Contains(out, "still here") || strings.Count(out, "permission denied") != 2 {
		t.Errorf("psql COPY as billing:\n%s", out)
	}
	for _, secret := range append(append([]string{}, cardSecrets...), append(emailSecrets, otherSecrets...)...) {
		if strings.Contains(out, secret) {
			t.Errorf("psql as billing received %q", secret)
		}
	}

	// What the gateway refused never reached PostgreSQL...
	for _, st := range s.pg.Statements(t) {
		for _, r := range refusedSQL {
			if !forwarded[r] && strings.Contains(st.SQL, r) {
				t.Errorf("a refused statement reached PostgreSQL: %q", st.SQL)
			}
		}
	}
	// ...and every one was recorded as refused, with the reason.
	s.stopGateway(t)
	recorded := map[string]bool{}
	dir := gateway.RecordingsDir(s.dataDir)
	files, _ := filepath.Glob(filepath.Join(dir, "*.jsonl"))
	for _, f := range files {
		evs, err := recorder.ReadEvents(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range evs {
			if recorder.IsRequest(ev.Type) && ev.Effect == "deny" {
				recorded[ev.Display()] = true
			}
		}
	}
	for _, r := range refusedSQL {
		if !recorded[r] {
			t.Errorf("refused statement not recorded as denied: %q", r)
		}
	}
}

// waitActivity waits until a statement containing text is running.
func waitActivity(t *testing.T, s *stack, text string) {
	t.Helper()
	c := s.pg.Conn(t, "orders")
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var n int
		if err := c.QueryRow(context.Background(), "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()", text).Scan(&n); err == nil && n > 0 {
			return
		}
	}
	t.Fatalf("%q never showed in pg_stat_activity", text)
}

// evalEffect is gatehouse eval's decision for a caller and statement.
func evalEffect(t *testing.T, s *stack, who, sql string, extra ...string) string {
	t.Helper()
	args := append([]string{"eval", s.policyDir, "--identity", who, "--resource", "orders", "--sql", sql, "--format", "json"}, extra...)
	out, err := exec.Command(gatehouseBin, args...).Output()
	if err != nil {
		t.Fatalf("gatehouse eval %q: %v", sql, err)
	}
	var d struct {
		Effect  string   `json:"effect"`
		Reasons []string `json:"reasons"`
	}
	if err := json.Unmarshal(out, &d); err != nil {
		t.Fatal(err)
	}
	return d.Effect
}

// psqlScript runs a psql script through the gateway without stopping at
// errors, and returns everything psql printed.
func (s *stack) psqlScript(t *testing.T, token, script string) string {
	t.Helper()
	host, port, _ := net.SplitHostPort(s.pgAddr)
	cmd := exec.Command("psql", "-X", "-P", "pager=off",
		fmt.Sprintf("host=%s port=%s dbname=orders user=svc sslmode=verify-full sslrootcert=%s", host, port, s.caFile))
	cmd.Env = append(os.Environ(), "PGPASSWORD="+token, "PGCONNECT_TIMEOUT=10")
	cmd.Stdin = strings.NewReader(script)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("psql: %v\n%s", err, out.String())
	}
	return out.String()
}
