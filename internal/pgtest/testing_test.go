package pgtest_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/gatehouse-dev/gatehouse/internal/pgtest"
)

func connect(t *testing.T, connString string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func TestStartSCRAMRoleAndDatabase(t *testing.T) {
	t.Parallel()
	start := time.Now()
	srv := pgtest.Start(t)
	t.Logf("started in %s on %s", time.Since(start).Round(time.Millisecond), srv.Addr())

	if host, port, _ := net.SplitHostPort(srv.Addr()); host != "127.0.0.1" || port == "" || srv.Host() != host || srv.Port() == 0 {
		t.Fatalf("Addr = %q, Host = %q, Port = %d", srv.Addr(), srv.Host(), srv.Port())
	}

	// A quote in the password proves the literal is escaped.
	const password = "s3cret'pw"
	srv.CreateRole(t, "app", password)
	srv.CreateDatabase(t, "appdb", "app")

	ctx := t.Context()
	conn := connect(t, srv.ConnString("app", password, "appdb"))
	var user, db string
	if err := conn.QueryRow(ctx, "SELECT current_user, current_database()").Scan(&user, &db); err != nil {
		t.Fatal(err)
	}
	if user != "app" || db != "appdb" {
		t.Fatalf("connected as %s to %s, want app to appdb", user, db)
	}

	// TCP logins go through scram-sha-256 in pg_hba.conf, and the stored
	// password is a SCRAM verifier, so the login above was a SCRAM exchange.
	var verifier string
	srv.Conn(t, "postgres").QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = 'app'").Scan(&verifier)
	if !strings.HasPrefix(verifier, "SCRAM-SHA-256$") {
		t.Fatalf("stored password %q is not a SCRAM verifier", verifier)
	}
	_, err := pgx.Connect(ctx, srv.ConnString("app", "wrong", "appdb"))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
		t.Fatalf("wrong password: got %v, want SQLSTATE 28P01 (invalid_password)", err)
	}

	// The superuser works with the generated password, and Exec passes
	// bind parameters.
	srv.Exec(t, "appdb", "CREATE TABLE t (v text)")
	srv.Exec(t, "appdb", "INSERT INTO t VALUES ($1)", "x")
	if su := connect(t, srv.ConnString("postgres", srv.SuperuserPassword(), "appdb")); su.PgConn().ParameterStatus("is_superuser") != "on" {
		t.Fatal("postgres is not a superuser")
	}

	// Conns counts the test's two connections to appdb, not the helper's.
	if n := srv.Conns(t, "appdb"); n != 2 {
		t.Fatalf("Conns(appdb) = %d, want 2", n)
	}
	if n := srv.Conns(t, "postgres"); n != 0 {
		t.Fatalf("Conns(postgres) = %d, want 0", n)
	}
}

func TestWithConfig(t *testing.T) {
	t.Parallel()
	srv := pgtest.Start(t, pgtest.WithConfig("work_mem", "7MB"), pgtest.WithConfig("application_name", "it's set"))
	conn := srv.Conn(t, "postgres")
	var workMem string
	if err := conn.QueryRow(t.Context(), "SHOW work_mem").Scan(&workMem); err != nil {
		t.Fatal(err)
	}
	if workMem != "7MB" {
		t.Fatalf("work_mem = %q, want 7MB", workMem)
	}
	// Other settings keep the helper's defaults.
	var fsync string
	conn.QueryRow(t.Context(), "SHOW fsync").Scan(&fsync)
	if fsync != "off" {
		t.Fatalf("fsync = %q, want off", fsync)
	}
}

func TestWithTLS(t *testing.T) {
	t.Parallel()
	certPEM, keyPEM := selfSigned(t)
	srv := pgtest.Start(t, pgtest.WithTLS(certPEM, keyPEM))
	srv.CreateRole(t, "app", "pw")

	// verify-full against the test certificate proves the server presents
	// exactly that certificate for 127.0.0.1.
	rootCert := filepath.Join(t.TempDir(), "root.crt")
	if err := os.WriteFile(rootCert, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(srv.ConnString("app", "pw", "postgres"))
	q := u.Query()
	q.Set("sslmode", "verify-full")
	q.Set("sslrootcert", rootCert)
	u.RawQuery = q.Encode()
	conn := connect(t, u.String())

	var ssl bool
	var version string
	err := conn.QueryRow(t.Context(), "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl, &version)
	if err != nil {
		t.Fatal(err)
	}
	if !ssl {
		t.Fatal("connection is not encrypted")
	}
	t.Logf("TLS %s", version)

	// ConnString asks for TLS when the server has it.
	if !strings.Contains(srv.ConnString("app", "pw", "postgres"), "sslmode=require") {
		t.Fatalf("ConnString = %q, want sslmode=require", srv.ConnString("app", "pw", "postgres"))
	}
}

func TestWithStatementLog(t *testing.T) {
	t.Parallel()
	srv := pgtest.Start(t, pgtest.WithStatementLog())
	const password = "do-not-log-me"
	srv.CreateRole(t, "alice@example.com", password)
	srv.CreateDatabase(t, "appdb", "alice@example.com")

	conn := connect(t, srv.ConnString("alice@example.com", password, "appdb"))
	ctx := t.Context()
	// Simple protocol, extended protocol with a parameter, and a
	// multi-line statement.
	if _, err := conn.Exec(ctx, "CREATE TABLE marker (v int)"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO marker VALUES ($1)", 42); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "SELECT v\nFROM marker"); err != nil {
		t.Fatal(err)
	}
	// A failing statement is still logged: it reached the server.
	if _, err := conn.Exec(ctx, "SELECT * FROM missing_table"); err == nil {
		t.Fatal("query on a missing table succeeded")
	}

	got := srv.Statements(t)
	want := []pgtest.Statement{
		{User: "alice@example.com", Database: "appdb", SQL: "CREATE TABLE marker (v int)"},
		{User: "alice@example.com", Database: "appdb", SQL: "INSERT INTO marker VALUES ($1)"},
		{User: "alice@example.com", Database: "appdb", SQL: "SELECT v\nFROM marker"},
		{User: "alice@example.com", Database: "appdb", SQL: "SELECT * FROM missing_table"},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("Statements =\n%q\nwant\n%q\nlog:\n%s", got, want, readFile(t, srv.LogFile()))
	}
	if log := srv.QueryLog(t); log != "CREATE TABLE marker (v int)\nINSERT INTO marker VALUES ($1)\nSELECT v\nFROM marker\nSELECT * FROM missing_table\n" {
		t.Fatalf("QueryLog = %q", log)
	}
	// The helper's own statements (CREATE ROLE ... PASSWORD) stay out of
	// the log.
	if log := readFile(t, srv.LogFile()); strings.Contains(log, password) || strings.Contains(log, "CREATE ROLE") {
		t.Fatalf("the helper's statements reached the log:\n%s", log)
	}
}

func TestFindBinDir(t *testing.T) {
	dir, err := pgtest.FindBinDir()
	if err != nil {
		t.Skipf("no PostgreSQL server binaries: %v", err)
	}
	for _, name := range []string{"initdb", "postgres", "pg_ctl"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("FindBinDir = %s: %v", dir, err)
		}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// selfSigned returns a self-signed certificate for 127.0.0.1 and localhost,
// and its key, in PEM.
func selfSigned(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "pgtest"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}
