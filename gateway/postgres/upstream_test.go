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

	"github.com/gatehouse-dev/gatehouse/gateway/masking"
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

// TestComputedColumns: a value computed from a masked column is refused
// before it runs (an error, the session goes on), in both protocols; a
// mask with allow_in_predicates lets it run, and the computed value is
// masked as the column is (partial becomes redact: part of a computed
// string is not the part the mask means to show).
func TestComputedColumns(t *testing.T) {
	e := startEnv(t)
	c := e.connect(t, "analytics-job")
	var email string
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		err := c.QueryRow(context.Background(), "SELECT lower(email) FROM customers WHERE id = 1", mode).Scan(&email)
		if pgCode(err) != "42501" || !strings.Contains(err.Error(), "computation") {
			t.Fatalf("%v: %v (%q)", mode, err, email)
		}
		var id int
		if err := c.QueryRow(context.Background(), "SELECT id FROM orders WHERE id = 1", mode).Scan(&id); err != nil {
			t.Fatalf("%v after a refused statement: %v", mode, err)
		}
	}
	e.publish(t, strings.Replace(e.policyF(e.issuer.URL, e.pg.Addr()), `method    = "partial"`, `method    = "partial"
  allow_in_predicates = true`, 1))
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		if err := c.QueryRow(context.Background(), "SELECT lower(email) FROM customers WHERE id = 1", mode).Scan(&email); err != nil {
			t.Fatalf("%v: %v", mode, err)
		}
		if email != masking.Redacted {
			t.Fatalf("%v: lower(email) came back as %q", mode, email)
		}
	}
}
