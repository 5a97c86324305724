package postgres

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/gateway/auth"
	"github.com/gatehouse-dev/gatehouse/gateway/bundlestore"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/gateway/secrets"
	core "github.com/gatehouse-dev/gatehouse/gateway/session"
	"github.com/gatehouse-dev/gatehouse/hclconfig"
	"github.com/gatehouse-dev/gatehouse/internal/clock"
	"github.com/gatehouse-dev/gatehouse/internal/oidctest"
	"github.com/gatehouse-dev/gatehouse/internal/pgtest"
)

// schema is the quickstart's database: what the example policy is about.
const schema = `
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, card_number text);
CREATE TABLE orders (id serial PRIMARY KEY, customer_id int REFERENCES customers, total numeric, created_at timestamptz DEFAULT now());
CREATE TABLE payments (id serial PRIMARY KEY, order_id int, amount numeric);
CREATE SCHEMA billing;
CREATE TABLE billing.invoices (id serial PRIMARY KEY, order_id int, amount numeric);
INSERT INTO customers VALUES (1, 'Jane Doe', 'jane.doe@example.com', '4111 1111 1111 1111'), (2, 'Raj Patel', 'raj@example.org', '5500 0000 0000 0004');
INSERT INTO orders (customer_id, total) VALUES (1, 120.50), (2, 99.00);
INSERT INTO billing.invoices (order_id, amount) VALUES (1, 120.50);
`

// policyHCL is the test policy: the quickstart's shape, pointed at the
// test database and issuer.
func policyHCL(issuer, addr string) string {
	return fmt.Sprintf(`
identity_provider "corp" {
  issuer    = %q
  audiences = ["gatehouse"]
}

identity "billing-service" {
  provider = "corp"
  subject  = "billing-service"
  groups   = ["billing"]
}

identity "analytics-job" {
  provider = "corp"
  subject  = "analytics-job"
}

identity "pci-auditor" {
  provider = "corp"
  subject  = "pci-auditor"
  groups   = ["pci"]
}

postgres "orders" {
  address  = %q
  database = "orders"
  username = "gatehouse"
  password = "env:ORDERS_DB_PASSWORD"
}

policy "guardrails" {
  resources = ["orders"]
  everyone  = true

  rule "no-drop" {
    effect = "deny"
    when   = "request.statements.exists(s, s.command.startsWith('DROP ') || s.command == 'TRUNCATE')"
    reason = "nobody may DROP or TRUNCATE"
  }

  rule "no-unfiltered-writes" {
    effect = "deny"
    when   = "request.statements.exists(s, s.command in ['DELETE', 'UPDATE'] && !s.has_where)"
    reason = "DELETE and UPDATE need a WHERE"
  }
}

policy "readers" {
  resources  = ["orders"]
  identities = ["analytics-job", "pci-auditor", "billing-service"]

  rule "read" {
    effect = "allow"
    when   = "request.statements.all(s, s.command in ['SELECT', 'BEGIN', 'COMMIT', 'ROLLBACK', 'SHOW'] && s.tables.all(t, t.access == 'read') && s.locking == '' && s.functions.all(f, f in ['count', 'now', 'lower']))"
    reason = "reads"
  }
}

policy "billing" {
  resources  = ["orders"]
  identities = ["billing-service"]

  rule "write" {
    effect = "allow"
    when   = "request.statements.all(s, s.command in ['INSERT', 'UPDATE', 'DELETE', 'SELECT', 'BEGIN', 'COMMIT', 'ROLLBACK'] && s.tables.all(t, t.access == 'read' || t.schema == 'billing'))"
    reason = "billing writes billing tables"
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
`, issuer, addr)
}

// env is a running test setup: PostgreSQL, an issuer, a bundle store and
// the gateway in front of the database.
type env struct {
	pg     *pgtest.Server
	issuer *oidctest.Issuer
	store  *bundlestore.Store
	key    ed25519.PrivateKey
	srv    *Server
	core   *core.Core
	addr   string
	// failSync makes the recorder's fdatasync fail (a full disk).
	failSync atomic.Bool
	rev      atomic.Uint64
	logs     *syncWriter
	pgPass   string
	rec      *recorder.Recorder
	recKeys  bundle.Keyring
	policyF  func(issuer, addr string) string
	// shutdown stops the gateway (as SIGTERM does) and waits for it.
	shutdown func()
}

// startEnv starts the setup; opts are added to the core's (after the
// logger and recorder).
func startEnv(t testing.TB, opts ...core.Option) *env {
	t.Helper()
	return startEnvClock(t, clock.Real, opts...)
}

// startEnvClock starts the setup with the core's token expiry read from
// clk, so a test moves time instead of sleeping for a token to expire.
func startEnvClock(t testing.TB, clk clock.Clock, opts ...core.Option) *env {
	t.Helper()
	return startEnvWith(t, envSetup{clock: clk, core: opts})
}

// envSetup is what a test may change in the setup: the core's clock and
// options, and the proxy's config (plaintext on loopback is always on).
type envSetup struct {
	clock clock.Clock
	core  []core.Option
	proxy Config
}

func startEnvWith(t testing.TB, setup envSetup) *env {
	t.Helper()
	clk, opts := setup.clock, setup.core
	if clk == nil {
		clk = clock.Real
	}
	pg := pgtest.Start(t, pgtest.WithStatementLog())
	pgPass := "upstream-" + fmt.Sprint(time.Now().UnixNano())
	pg.CreateRole(t, "gatehouse", pgPass)
	pg.CreateDatabase(t, "orders", "gatehouse")
	conn, err := pgx.Connect(context.Background(), pg.ConnString("gatehouse", pgPass, "orders"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(context.Background(), schema); err != nil {
		t.Fatal(err)
	}
	conn.Close(context.Background())
	// A function that writes, reachable from a SELECT.
	pg.Exec(t, "orders", "CREATE FUNCTION gh_wipe() RETURNS int LANGUAGE sql AS 'DELETE FROM customers; SELECT 1'")

	e := &env{pg: pg, issuer: oidctest.Start(t), pgPass: pgPass, policyF: policyHCL}
	k, err := bundle.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	e.key = k
	logs := &syncWriter{}
	e.logs = logs
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("gateway log:\n%s", logs.String())
		}
	})
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e.store = bundlestore.New(bundle.NewKeyring(k.Public().(ed25519.PublicKey)), t.TempDir(), bundlestore.WithLogger(log),
		bundlestore.WithAuthOptions(auth.WithClock(clk.Now)))
	e.publish(t, e.policyF(e.issuer.URL, pg.Addr()))
	res := secrets.Resolver{Getenv: func(name string) (string, bool) {
		if name == "ORDERS_DB_PASSWORD" {
			return pgPass, true
		}
		return "", false
	}}
	recKey, err := bundle.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	e.rec, err = recorder.Open(t.TempDir(), recKey, recorder.WithSync(func(f *os.File) error {
		if e.failSync.Load() {
			return errors.New("no space left on device")
		}
		return recorder.Fdatasync(f)
	}))
	if err != nil {
		t.Fatal(err)
	}
	e.recKeys = bundle.NewKeyring(recKey.Public().(ed25519.PublicKey))
	e.core = core.New(e.store, append([]core.Option{core.WithLogger(log), core.WithRecorder(e.rec), core.WithClock(clk)}, opts...)...)
	setup.proxy.InsecurePlaintext = true
	e.srv = New(setup.proxy, e.core, WithLogger(log), WithSecrets(res))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.srv.Serve(ctx, ln) }()
	var once sync.Once
	e.shutdown = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
	}
	t.Cleanup(e.shutdown)
	return e
}

// publish compiles, signs and activates a policy at the next revision.
func (e *env) publish(t testing.TB, src string) {
	t.Helper()
	data := e.sign(t, src, e.rev.Add(1))
	if _, err := e.store.Apply(data, "test"); err != nil {
		t.Fatalf("publish: %v", err)
	}
}

func (e *env) sign(t testing.TB, src string, rev uint64) []byte {
	t.Helper()
	res, diags := hclconfig.LoadFiles(map[string][]byte{"policy.hcl": []byte(src)})
	if diags.HasErrors() {
		t.Fatalf("policy: %v", diags)
	}
	p, err := bundle.NewPayload(*res.Model, bundle.BuildOptions{Revision: rev, CreatedAt: time.Unix(1764000000, 0), Compiler: "test"})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := bundle.EncodePayload(p)
	if err != nil {
		t.Fatal(err)
	}
	data, err := bundle.Sign(raw, e.key)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// connString is a libpq connection string through the gateway.
func (e *env) connString(token string, extra ...string) string {
	host, port, _ := net.SplitHostPort(e.addr)
	s := fmt.Sprintf("host=%s port=%s dbname=orders user=svc password=%s sslmode=disable", host, port, token)
	for _, x := range extra {
		s += " " + x
	}
	return s
}

func (e *env) connect(t testing.TB, subject string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(context.Background(), e.connString(e.issuer.Token(t, subject, "gatehouse")))
	if err != nil {
		t.Fatalf("connect as %s: %v", subject, err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// syncWriter collects the gateway's log for a failing test.
type syncWriter struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}
