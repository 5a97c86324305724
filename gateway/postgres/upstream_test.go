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

// testCA makes a CA and a server certificate for 127.0.0.1 signed by it.
func testCA(t *testing.T) (caPEM, certPEM, keyPEM []byte) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalPKCS8PrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb})
}

// TestUpstreamTLSVerified: with tls { mode = "verify-full" } the gateway
// verifies the upstream's certificate against the configured CA (and logs
// in with SCRAM inside TLS); a certificate from another CA is refused.
func TestUpstreamTLSVerified(t *testing.T) {
	caPEM, certPEM, keyPEM := testCA(t)
	pg := pgtest.Start(t, pgtest.WithTLS(certPEM, keyPEM))
	e := startEnv(t)
	// Point the policy at the TLS server, which has the same role.
	pg.CreateRole(t, "gatehouse", e.pgPass)
	pg.CreateDatabase(t, "orders", "gatehouse")
	pg.Exec(t, "orders", "CREATE TABLE orders (id int)")
	pg.Exec(t, "orders", "GRANT SELECT ON orders TO gatehouse")
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	withTLS := func(ca string) string {
		src := e.policyF(e.issuer.URL, pg.Addr())
		return strings.Replace(src, `password = "env:ORDERS_DB_PASSWORD"`, `password = "env:ORDERS_DB_PASSWORD"

  tls {
    mode    = "verify-full"
    ca_file = "`+ca+`"
  }`, 1)
	}
	e.publish(t, withTLS(caFile))
	c := e.connect(t, "analytics-job")
	var ssl bool
	if err := c.QueryRow(context.Background(), "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err == nil && !ssl {
		t.Error("the upstream connection is not TLS")
	}
	if _, err := c.Exec(context.Background(), "SELECT count(*) FROM orders"); err != nil {
		t.Fatal(err)
	}
	// Another CA: the upstream's certificate does not verify.
	otherCA, _, _ := testCA(t)
	other := filepath.Join(dir, "other.pem")
	if err := os.WriteFile(other, otherCA, 0o644); err != nil {
		t.Fatal(err)
	}
	e.publish(t, withTLS(other))
	_, err := pgx.Connect(context.Background(), e.connString(e.issuer.Token(t, "analytics-job", "gatehouse")))
	if pgCode(err) != "08006" {
		t.Fatalf("an upstream with an untrusted certificate: %v", err)
	}
	if !strings.Contains(e.logs.String(), "certificate") {
		t.Error("the gateway log does not say why the upstream was refused")
	}
}

// TestCopyIn: COPY ... FROM STDIN passes through for a caller allowed to
// write the table.
func TestCopyIn(t *testing.T) {
	e := startEnv(t)
	e.publish(t, strings.Replace(e.policyF(e.issuer.URL, e.pg.Addr()), "s.command in ['INSERT', 'UPDATE'", "s.command in ['COPY', 'INSERT', 'UPDATE'", 1))
	c := e.connect(t, "billing-service")
	n, err := c.CopyFrom(context.Background(), pgx.Identifier{"billing", "invoices"}, []string{"order_id", "amount"},
		pgx.CopyFromRows([][]any{{1, 1.5}, {2, 2.5}, {3, 3.5}}))
	if err != nil || n != 3 {
		t.Fatalf("CopyFrom: %d, %v", n, err)
	}
}

// TestUnresolvedColumns: a computed column escapes a column mask (it has no
// table column of origin); with deny_unresolved_columns the result is
// withheld instead.
func TestUnresolvedColumns(t *testing.T) {
	e := startEnv(t)
	c := e.connect(t, "analytics-job")
	var email string
	if err := c.QueryRow(context.Background(), "SELECT lower(email) FROM customers WHERE id = 1").Scan(&email); err != nil {
		t.Fatal(err)
	}
	if email != "jane.doe@example.com" {
		t.Fatalf("documented limitation changed: %q", email)
	}
	e.publish(t, strings.Replace(e.policyF(e.issuer.URL, e.pg.Addr()), `username = "gatehouse"`, `username = "gatehouse"
  deny_unresolved_columns = true`, 1))
	// Extended protocol: the gateway describes the portal before it runs,
	// so it refuses the statement and the session goes on.
	err := c.QueryRow(context.Background(), "SELECT lower(email) FROM customers WHERE id = 1").Scan(&email)
	if pgCode(err) != "42501" || !strings.Contains(err.Error(), "computed") {
		t.Fatalf("extended: %v (%q)", err, email)
	}
	var id int
	if err := c.QueryRow(context.Background(), "SELECT id FROM orders WHERE id = 1").Scan(&id); err != nil {
		t.Fatalf("after a refused result: %v", err)
	}
	// Simple protocol: the statement has run by the time its columns are
	// known, so the gateway ends the session, which rolls back what the
	// query string did.
	b := e.connect(t, "billing-service")
	_, err = b.Exec(context.Background(), "BEGIN; INSERT INTO billing.invoices (order_id, amount) VALUES (9, 9); SELECT lower(email) FROM customers", pgx.QueryExecModeSimpleProtocol)
	if pgCode(err) != "42501" {
		t.Fatalf("simple: %v", err)
	}
	var n int
	if err := e.pg.Conn(t, "orders").QueryRow(context.Background(), "SELECT count(*) FROM billing.invoices WHERE order_id = 9").Scan(&n); err != nil || n != 0 {
		t.Fatalf("the INSERT before the withheld result was kept: %v %d", err, n)
	}
}
