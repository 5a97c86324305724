// Package acctest runs Gatehouse end to end against real counterparts: the
// gatehouse binary itself, PostgreSQL 15, ORY Hydra as the identity
// provider, and psql.
package acctest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/gatehouse-dev/gatehouse/internal/hydratest"
	"github.com/gatehouse-dev/gatehouse/internal/pgtest"
)

var gatehouseBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "gatehouse-acctest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	gatehouseBin = filepath.Join(dir, "gatehouse")
	build := exec.Command("go", "build", "-o", gatehouseBin, ".")
	build.Dir = ".."
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "acctest: building gatehouse:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// gh runs the gatehouse CLI and fails the test on a non-zero exit.
func gh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(gatehouseBin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("gatehouse %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// ghEnv runs the gatehouse CLI with env added to the test's environment,
// and returns its output and exit code.
func ghEnv(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(gatehouseBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), errOut.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatalf("gatehouse %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), errOut.String(), 0
}

const schema = `
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, card_number text);
CREATE TABLE orders (id serial PRIMARY KEY, customer_id int, total numeric);
CREATE SCHEMA billing;
CREATE TABLE billing.invoices (id serial PRIMARY KEY, order_id int, amount numeric);
INSERT INTO customers VALUES (1, 'Jane Doe', 'jane.doe@example.com', '4111 1111 1111 1111');
INSERT INTO orders (customer_id, total) VALUES (1, 120.50);
`

func policy(issuer, dbAddr string) string {
	return fmt.Sprintf(`
identity_provider "hydra" {
  issuer    = %q
  audiences = ["gatehouse"]
}

identity "billing-service" {
  provider = "hydra"
  subject  = "billing-service"
}

identity "analytics-job" {
  provider = "hydra"
  subject  = "analytics-job"
  groups   = ["analytics"]
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
}

policy "billing" {
  resources  = ["orders"]
  identities = ["billing-service"]

  rule "work" {
    effect = "allow"
    when   = "request.statements.all(s, s.command in ['SELECT', 'INSERT', 'BEGIN', 'COMMIT'] && s.tables.all(t, t.access == 'read' || t.schema == 'billing') && s.functions.all(f, f in ['count']))"
    reason = "billing reads, and writes the billing schema"
  }
}

policy "analytics" {
  resources = ["orders"]
  groups    = ["analytics"]

  rule "read" {
    effect = "allow"
    when   = "request.statements.all(s, s.command == 'SELECT' && s.tables.all(t, t.access == 'read') && s.functions.all(f, f in ['count']))"
    reason = "analytics reads"
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
}
`, issuer, dbAddr)
}

// tlsFiles writes a CA and a server certificate for 127.0.0.1.
func tlsFiles(t *testing.T, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "gatehouse test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	caFile, certFile, keyFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	write := func(p, typ string, b []byte, mode os.FileMode) {
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), mode); err != nil {
			t.Fatal(err)
		}
	}
	write(caFile, "CERTIFICATE", caDER, 0o644)
	write(certFile, "CERTIFICATE", der, 0o644)
	write(keyFile, "PRIVATE KEY", keyDER, 0o600)
	return caFile, certFile, keyFile
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type stack struct {
	dataDir   string
	adminAddr string
	pg        *pgtest.Server
	hydra     *hydratest.Hydra
	pgPass    string
	caFile    string
	pgAddr    string // the gateway's PostgreSQL listener
	logs      *lockedBuffer
	gateway   *exec.Cmd
	exited    chan error
	killed    bool // the test killed the gateway on purpose
	cfgFile   string
	env       []string
	policyDir string // the policy the bundle was built from
	// keyFile signs bundles; bundleFile is where the gateway reads them.
	keyFile, bundleFile string
}

// stackOptions vary the stack.
type stackOptions struct {
	dataDir string                             // the gateway's data_dir (fresh when empty)
	policy  func(issuer, dbAddr string) string // default policy
	schema  string                             // extra SQL for the orders database
	clients []string                           // Hydra clients (default billing-service, analytics-job)
	env     []string                           // extra gateway environment
	pgOpts  []pgtest.Option                    // extra PostgreSQL settings
	config  string                             // extra gateway.hcl blocks (a recorder block)
	// hydraOpts configure Hydra (token lifetimes).
	hydraOpts []hydratest.Option
	// extraConfig is appended to gateway.hcl; postgresLimits goes inside
	// its postgres block; readyDiskFree sets admin.ready_disk_free.
	extraConfig    string
	postgresLimits string
	readyDiskFree  int64
}

// startStack runs PostgreSQL, Hydra and `gatehouse gateway` with a bundle
// built by `gatehouse bundle build`.
func startStack(t *testing.T) *stack { return startStackWith(t, stackOptions{}) }

// startStackIn is startStack with the gateway's data_dir at dataDir (a
// fresh one when empty).
func startStackIn(t *testing.T, dataDir string) *stack {
	return startStackWith(t, stackOptions{dataDir: dataDir})
}

func startStackWith(t *testing.T, o stackOptions) *stack {
	t.Helper()
	if o.policy == nil {
		o.policy = policy
	}
	if o.clients == nil {
		o.clients = []string{"billing-service", "analytics-job"}
	}
	s := &stack{pg: pgtest.Start(t, append([]pgtest.Option{pgtest.WithStatementLog()}, o.pgOpts...)...), hydra: hydratest.Start(t, o.hydraOpts...), pgPass: "acc-" + rand.Text()}
	s.pg.CreateRole(t, "gatehouse", s.pgPass)
	s.pg.CreateDatabase(t, "orders", "gatehouse")
	c, err := pgx.Connect(context.Background(), s.pg.ConnString("gatehouse", s.pgPass, "orders"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(context.Background(), schema+o.schema); err != nil {
		t.Fatal(err)
	}
	c.Close(context.Background())
	for _, id := range o.clients {
		s.hydra.CreateClient(t, id, id+"-secret", []string{"gatehouse", "another-service"})
	}

	dir := t.TempDir()
	policies := filepath.Join(dir, "policies")
	if err := os.MkdirAll(policies, 0o755); err != nil {
		t.Fatal(err)
	}
	s.policyDir = policies
	if err := os.WriteFile(filepath.Join(policies, "policy.hcl"), []byte(o.policy(s.hydra.Issuer(), s.pg.Addr())), 0o644); err != nil {
		t.Fatal(err)
	}
	gh(t, "keygen", "--out", filepath.Join(dir, "keys"))
	bundleFile := filepath.Join(dir, "policy.bundle")
	s.keyFile, s.bundleFile = filepath.Join(dir, "keys", "gatehouse.key"), bundleFile
	gh(t, "bundle", "build", policies, "--key", filepath.Join(dir, "keys", "gatehouse.key"), "--out", bundleFile)
	var cert, key string
	s.caFile, cert, key = tlsFiles(t, dir)
	adminAddr := freePort(t)
	s.adminAddr = adminAddr
	s.pgAddr = freePort(t)
	dataDir := o.dataDir
	if dataDir == "" {
		dataDir = filepath.Join(dir, "data")
	}
	s.dataDir = dataDir
	cfg := fmt.Sprintf(`data_dir = %q

postgres {
  listen   = %q
  tls_cert = %q
  tls_key  = %q
%s}

bundle {
  file          = %q
  trusted_keys  = [%q]
  poll_interval = "1s"
}

admin {
  listen = %q
%s}

log {
  level = "debug"
}
%s`, dataDir, s.pgAddr, cert, key, o.postgresLimits, bundleFile, filepath.Join(dir, "keys", "gatehouse.pub"), adminAddr, readyDisk(o.readyDiskFree), o.extraConfig) + o.config
	s.cfgFile = filepath.Join(dir, "gateway.hcl")
	if err := os.WriteFile(s.cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	s.env = append(append(os.Environ(), "ORDERS_DB_PASSWORD="+s.pgPass), o.env...)
	// --check resolves the bundle's credential references, so it runs
	// with the gateway's environment.
	check := exec.Command(gatehouseBin, "gateway", "--config", s.cfgFile, "--check")
	check.Env = s.env
	if out, err := check.CombinedOutput(); err != nil {
		t.Fatalf("gateway --check: %v\n%s", err, out)
	}
	s.logs = &lockedBuffer{}
	t.Cleanup(func() {
		s.stopGateway(t)
		if t.Failed() {
			t.Logf("gateway log:\n%s", s.logs.String())
		}
	})
	s.startGateway(t)
	return s
}

// startGateway starts `gatehouse gateway` and waits until it is ready.
func (s *stack) startGateway(t *testing.T) {
	t.Helper()
	s.gateway = exec.Command(gatehouseBin, "gateway", "--config", s.cfgFile)
	s.gateway.Env = s.env
	s.gateway.Stdout, s.gateway.Stderr = s.logs, s.logs
	if err := s.gateway.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	s.exited = exited
	go func() { exited <- s.gateway.Wait() }()
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get("http://" + s.adminAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway not ready: %v\n%s", err, s.logs.String())
		}
	}
}

// stopGateway stops the gateway with SIGTERM, as an operator would.
func (s *stack) stopGateway(t *testing.T) {
	t.Helper()
	if s.gateway == nil {
		return
	}
	_ = s.gateway.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.exited:
		if err != nil && !s.killed {
			t.Errorf("gateway exited with %v", err)
		}
	case <-time.After(10 * time.Second):
		_ = s.gateway.Process.Kill()
		t.Error("gateway did not stop on SIGTERM")
	}
	s.gateway = nil
}

func (s *stack) token(t *testing.T, client string) string {
	return s.hydra.Token(t, client, client+"-secret", []string{"gatehouse"})
}

// psql runs psql through the gateway (the simple protocol), with TLS
// verified against the test CA.
func (s *stack) psql(t *testing.T, token string, sql string) (string, string, error) {
	t.Helper()
	host, port, _ := net.SplitHostPort(s.pgAddr)
	cmd := exec.Command("psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
		fmt.Sprintf("host=%s port=%s dbname=orders user=svc sslmode=verify-full sslrootcert=%s", host, port, s.caFile), "-c", sql)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+token, "PGCONNECT_TIMEOUT=10")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return strings.TrimSpace(out.String()), errb.String(), err
}

func (s *stack) pgx(t *testing.T, token string) (*pgx.Conn, error) {
	t.Helper()
	host, port, _ := net.SplitHostPort(s.pgAddr)
	return pgx.Connect(context.Background(), fmt.Sprintf("host=%s port=%s dbname=orders user=svc password=%s sslmode=verify-full sslrootcert=%s", host, port, token, s.caFile))
}

func TestPostgresWithHydra(t *testing.T) {
	if _, err := exec.LookPath("psql"); err != nil {
		t.Fatalf("psql is required: %v (apt package postgresql-client-15)", err)
	}
	s := startStack(t)
	billing := s.token(t, "billing-service")

	t.Run("psql reads masked data", func(t *testing.T) {
		out, stderr, err := s.psql(t, billing, "SELECT email, card_number FROM customers WHERE id = 1")
		if err != nil {
			t.Fatalf("%v: %s", err, stderr)
		}
		if out != "j***@example.com|[REDACTED]" {
			t.Errorf("got %q", out)
		}
	})
	t.Run("psql write allowed by policy", func(t *testing.T) {
		if _, stderr, err := s.psql(t, billing, "INSERT INTO billing.invoices (order_id, amount) VALUES (1, 10)"); err != nil {
			t.Fatalf("%v: %s", err, stderr)
		}
	})
	t.Run("psql DROP is denied", func(t *testing.T) {
		_, stderr, err := s.psql(t, billing, "/* tidy */ DROP TABLE customers")
		if err == nil || !strings.Contains(stderr, "gatehouse: permission denied by rule guardrails/no-drop") {
			t.Fatalf("err %v, stderr %q", err, stderr)
		}
	})
	t.Run("psql with a token for another audience", func(t *testing.T) {
		other := s.hydra.Token(t, "billing-service", "billing-service-secret", []string{"another-service"})
		_, stderr, err := s.psql(t, other, "SELECT 1")
		if err == nil || !strings.Contains(stderr, "token rejected") {
			t.Fatalf("err %v, stderr %q", err, stderr)
		}
	})
	t.Run("psql without TLS is refused", func(t *testing.T) {
		host, port, _ := net.SplitHostPort(s.pgAddr)
		cmd := exec.Command("psql", "-X", fmt.Sprintf("host=%s port=%s dbname=orders user=svc sslmode=disable", host, port), "-c", "SELECT 1")
		cmd.Env = append(os.Environ(), "PGPASSWORD="+billing)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "TLS is required") {
			t.Fatalf("err %v, out %q", err, out)
		}
	})

	t.Run("pgx extended protocol with binary results", func(t *testing.T) {
		analytics := s.token(t, "analytics-job")
		c, err := s.pgx(t, analytics)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(context.Background())
		var email, card string
		var total float64
		// pgx asks for binary results where it can (numeric, int).
		err = c.QueryRow(context.Background(), "SELECT c.email, c.card_number, o.total::float8 FROM customers c JOIN orders o ON o.customer_id = c.id WHERE c.id = $1", 1).Scan(&email, &card, &total)
		if err != nil {
			t.Fatal(err)
		}
		if email != "j***@example.com" || card != "[REDACTED]" || total != 120.5 {
			t.Errorf("got %q %q %v", email, card, total)
		}
		_, err = c.Exec(context.Background(), "INSERT INTO billing.invoices (order_id, amount) VALUES ($1, $2)", 1, 5)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
			t.Fatalf("analytics insert: %v", err)
		}
		var n int
		if err := c.QueryRow(context.Background(), "SELECT count(*) FROM orders").Scan(&n); err != nil || n != 1 {
			t.Fatalf("after a denial: %v %d", err, n)
		}
	})

	t.Run("metrics count what happened", func(t *testing.T) {
		resp, err := http.Get("http://" + s.adminAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		metrics := map[string]float64{}
		for _, line := range strings.Split(string(body), "\n") {
			name, value, ok := strings.Cut(line, " ")
			if !ok || strings.HasPrefix(line, "#") {
				continue
			}
			v, err := strconv.ParseFloat(value, 64)
			if err != nil {
				t.Fatalf("metrics line %q: %v", line, err)
			}
			metrics[name] = v
		}
		// At least: the masked read, the insert, and the DROP and the
		// pgx insert denied; one token rejected; four sessions (psql x3,
		// pgx); the bundle active.
		for name, atLeast := range map[string]float64{
			`gatehouse_requests_total{decision="allow",protocol="postgres"}`: 2,
			`gatehouse_requests_total{decision="deny",protocol="postgres"}`:  2,
			`gatehouse_auth_failures_total{protocol="postgres"}`:             1,
			`gatehouse_sessions_total{protocol="postgres"}`:                  4,
			`gatehouse_bundle_revision`:                                      1,
			`gatehouse_bundle_reloads_total`:                                 1,
			`gatehouse_recorder_write_seconds_count`:                         4,
		} {
			if got, ok := metrics[name]; !ok || got < atLeast {
				t.Errorf("%s = %v (present %v), want >= %v", name, got, ok, atLeast)
			}
		}
		if got := metrics[`gatehouse_recorder_write_seconds_bucket{le="+Inf"}`]; got != metrics["gatehouse_recorder_write_seconds_count"] {
			t.Errorf("histogram +Inf bucket %v != count %v", got, metrics["gatehouse_recorder_write_seconds_count"])
		}
		if metrics["gatehouse_recorder_errors_total"] != 0 || metrics["gatehouse_bundle_reload_failures_total"] != 0 {
			t.Errorf("unexpected failures: %v", metrics)
		}
	})

	// What reached the database: the allowed statements, never the denied.
	log := s.pg.QueryLog(t)
	if strings.Contains(log, "DROP TABLE customers") {
		t.Error("the denied DROP reached the database")
	}
	if !strings.Contains(log, "INSERT INTO billing.invoices") {
		t.Error("the allowed INSERT did not reach the database")
	}
	if strings.Contains(s.logs.String(), s.pgPass) || strings.Contains(s.logs.String(), billing) {
		t.Error("the gateway log holds a secret")
	}
}

func readyDisk(n int64) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf("  ready_disk_free = %d\n", n)
}
