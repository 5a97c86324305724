package postgres

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/gatehouse-dev/gatehouse/internal/pgtest"
)

// pki is a test CA that signs a server certificate for 127.0.0.1 and
// client certificates.
type pki struct {
	caPEM                 []byte
	ca                    *x509.Certificate
	key                   *ecdsa.PrivateKey
	serverCert, serverKey []byte
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	p := &pki{caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), ca: ca, key: key}
	p.serverCert, p.serverKey = p.issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "127.0.0.1"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	return p
}

func (p *pki) issue(t *testing.T, tmpl *x509.Certificate) (certPEM, keyPEM []byte) {
	t.Helper()
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl.SerialNumber, tmpl.NotBefore, tmpl.NotAfter = serial, time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalPKCS8PrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb})
}

// TestUpstreamRolesSetRole: with upstream_roles, each caller's session
// runs as its mapped role (SET ROLE after the gateway's login): a grant
// narrower than the policy is enforced by the database, the caller cannot
// switch back, and a caller with no mapping is refused at connect.
func TestUpstreamRolesSetRole(t *testing.T) {
	e := startEnv(t)
	e.pg.Exec(t, "orders", "CREATE ROLE reader NOLOGIN; CREATE ROLE ledger NOLOGIN; GRANT reader, ledger TO gatehouse")
	e.pg.Exec(t, "orders", "GRANT SELECT ON orders TO reader; GRANT SELECT ON ALL TABLES IN SCHEMA public TO ledger")
	e.publish(t, strings.Replace(e.policyF(e.issuer.URL, e.pg.Addr()), `password = "env:ORDERS_DB_PASSWORD"`, `password = "env:ORDERS_DB_PASSWORD"
  upstream_roles {
    identities = { "analytics-job" = "reader", "billing-service" = "ledger" }
  }`, 1))
	ctx := context.Background()
	a := e.connect(t, "analytics-job")
	var who string
	if err := a.QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil || who != "reader" {
		t.Fatalf("current_user: %q %v", who, err)
	}
	var n int
	if err := a.QueryRow(ctx, "SELECT count(*) FROM orders").Scan(&n); err != nil || n != 2 {
		t.Fatalf("orders: %d %v", n, err)
	}
	// The policy lets analytics read customers; the database does not.
	err := a.QueryRow(ctx, "SELECT count(*) FROM customers").Scan(&n)
	if pgCode(err) != "42501" || !strings.Contains(err.Error(), "permission denied for table customers") {
		t.Fatalf("a grant narrower than the policy: %v", err)
	}
	e.publish(t, strings.Replace(strings.Replace(e.policyF(e.issuer.URL, e.pg.Addr()), `password = "env:ORDERS_DB_PASSWORD"`, `password = "env:ORDERS_DB_PASSWORD"
  upstream_roles {
    identities = { "analytics-job" = "reader", "billing-service" = "ledger" }
  }`, 1), `s.command in ['SELECT', 'BEGIN', 'COMMIT', 'ROLLBACK', 'SHOW']`, `s.command in ['SELECT', 'BEGIN', 'COMMIT', 'ROLLBACK', 'SHOW', 'SET', 'RESET', 'DISCARD']`, 1))
	for _, q := range []string{"SET ROLE gatehouse", "RESET ROLE", "SET SESSION AUTHORIZATION DEFAULT", "SELECT set_config('role', 'gatehouse', false)", "DISCARD ALL"} {
		_, err := a.Exec(ctx, q)
		if pgCode(err) != "42501" || !strings.Contains(err.Error(), "own database role") {
			t.Errorf("%s: %v", q, err)
		}
	}
	if err := a.QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil || who != "reader" {
		t.Fatalf("current_user after the attempts: %q %v", who, err)
	}
	// pci-auditor has no mapping and there is no default.
	_, err = e.tryConnect(t, "pci-auditor")
	if err == nil || !strings.Contains(err.Error(), "none is mapped for you") {
		t.Fatalf("an unmapped caller: %v", err)
	}
}

// TestUpstreamRolesLogin: with method login, the gateway logs in as each
// caller's role with its own credential, a client certificate the database
// maps to the roles (pg_ident.conf), as Teleport's database access does:
// pg_stat_activity shows every session under its caller's role.
func TestUpstreamRolesLogin(t *testing.T) {
	p := newPKI(t)
	pg := pgtest.Start(t, pgtest.WithTLS(p.serverCert, p.serverKey), pgtest.WithClientCA(p.caPEM),
		pgtest.WithHBA("hostssl all reader,ledger,gatehouse 127.0.0.1/32 cert map=gw"),
		pgtest.WithIdent("gw gatehouse-gateway reader", "gw gatehouse-gateway ledger", "gw gatehouse-gateway gatehouse"))
	e := startEnv(t)
	pg.CreateRole(t, "gatehouse", e.pgPass)
	pg.CreateDatabase(t, "orders", "gatehouse")
	pg.Exec(t, "orders", "CREATE ROLE reader LOGIN; CREATE ROLE ledger LOGIN")
	pg.Exec(t, "orders", "CREATE TABLE orders (id int); INSERT INTO orders VALUES (1); CREATE TABLE customers (id int, email text)")
	pg.Exec(t, "orders", "GRANT SELECT ON orders TO reader; GRANT SELECT ON orders, customers TO ledger")
	dir := t.TempDir()
	cert, key := p.issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "gatehouse-gateway"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	for name, data := range map[string][]byte{"ca.pem": p.caPEM, "client.pem": cert, "client.key": key} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	e.publish(t, strings.Replace(e.policyF(e.issuer.URL, pg.Addr()), `password = "env:ORDERS_DB_PASSWORD"`, `tls {
    mode      = "verify-full"
    ca_file   = "`+filepath.Join(dir, "ca.pem")+`"
    cert_file = "`+filepath.Join(dir, "client.pem")+`"
    key       = "file:`+filepath.Join(dir, "client.key")+`"
  }
  upstream_roles {
    method     = "login"
    identities = { "analytics-job" = "reader", "billing-service" = "ledger" }
  }`, 1))
	ctx := context.Background()
	a := e.connect(t, "analytics-job")
	b := e.connect(t, "billing-service")
	var n int
	if err := a.QueryRow(ctx, "SELECT count(*) FROM orders").Scan(&n); err != nil || n != 1 {
		t.Fatalf("analytics: %d %v", n, err)
	}
	if err := b.QueryRow(ctx, "SELECT count(*) FROM customers").Scan(&n); err != nil {
		t.Fatalf("billing: %v", err)
	}
	if err := a.QueryRow(ctx, "SELECT count(*) FROM customers").Scan(&n); pgCode(err) != "42501" {
		t.Fatalf("a grant narrower than the policy: %v", err)
	}
	// Seen from the database, each session is its caller's role.
	rows, err := pg.Conn(t, "orders").Query(ctx, "SELECT usename, application_name FROM pg_stat_activity WHERE datname = 'orders' AND application_name LIKE 'gatehouse:%' AND application_name <> 'gatehouse:catalog' ORDER BY 1")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var u, app string
		if err := rows.Scan(&u, &app); err != nil {
			t.Fatal(err)
		}
		got = append(got, u+"="+app)
	}
	if strings.Join(got, " ") != "ledger=gatehouse:billing-service reader=gatehouse:analytics-job" {
		t.Fatalf("pg_stat_activity: %v", got)
	}
}

// tryConnect connects as subject and returns the error instead of failing.
func (e *env) tryConnect(t *testing.T, subject string) (*pgx.Conn, error) {
	t.Helper()
	c, err := pgx.Connect(context.Background(), e.connString(e.issuer.Token(t, subject, "gatehouse")))
	if err == nil {
		t.Cleanup(func() { c.Close(context.Background()) })
	}
	return c, err
}
