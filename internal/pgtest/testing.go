// Package pgtest starts a real, private PostgreSQL server for tests.
//
// A test gets a fresh cluster in one line:
//
//	srv := pgtest.Start(t)
//	srv.CreateRole(t, "app", "secret")
//	srv.CreateDatabase(t, "appdb", "app")
//	conn, err := pgx.Connect(ctx, srv.ConnString("app", "secret", "appdb"))
//
// Every server is its own initdb'd cluster in a temp dir (internal/pgcluster
// runs it), listening on 127.0.0.1 at a random port, with SCRAM-SHA-256
// required over TCP. No fake stands in for the database: what a test asserts
// is what PostgreSQL did.
//
// tb.Cleanup stops the server, and if the test binary dies without running
// cleanups (a timeout panic, a SIGKILL), the kernel sends the postmaster
// SIGQUIT through the parent-death signal, so no server outlives `go test`.
package pgtest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/gatehouse-dev/gatehouse/internal/pgcluster"
)

// Superuser is the name of the cluster's superuser role.
const Superuser = pgcluster.Superuser

// Option configures a Server before it starts.
type Option = pgcluster.Option

// Statement is one statement the server logged under WithStatementLog.
type Statement = pgcluster.Statement

// The options, as pgcluster defines them.
var (
	// WithTLS enables ssl=on with the given PEM certificate and key.
	WithTLS = pgcluster.WithTLS
	// WithConfig adds a postgresql.conf setting.
	WithConfig = pgcluster.WithConfig
	// WithStatementLog sets log_statement=all for Statements and QueryLog.
	WithStatementLog = pgcluster.WithStatementLog
	// WithClientCA, WithHBA and WithIdent set up certificate
	// authentication.
	WithClientCA = pgcluster.WithClientCA
	WithHBA      = pgcluster.WithHBA
	WithIdent    = pgcluster.WithIdent
)

// FindBinDir returns the directory holding the PostgreSQL server binaries.
func FindBinDir() (string, error) { return pgcluster.FindBinDir() }

// Server is a running PostgreSQL cluster owned by one test. The methods it
// adds to pgcluster.Server fail the test instead of returning errors.
type Server struct {
	*pgcluster.Server
}

// Start initialises a fresh cluster, starts it on 127.0.0.1 at a random free
// port, waits until it accepts connections and registers its shutdown with
// tb.Cleanup. It fails the test when the PostgreSQL server binaries are
// missing, naming the package that provides them.
func Start(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	srv, err := pgcluster.Start(opts...)
	if err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	tb.Cleanup(func() {
		if err := srv.Close(); err != nil {
			tb.Errorf("pgtest: %v", err)
		}
	})
	return &Server{srv}
}

// Conn opens a superuser connection to db over TCP and closes it in
// tb.Cleanup. Its statements are not logged and Conns does not count it.
func (s *Server) Conn(tb testing.TB, db string) *pgx.Conn {
	tb.Helper()
	conn, err := s.Server.Connect(db)
	if err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = conn.Close(ctx)
	})
	return conn
}

// Exec runs sql as the superuser on db. Arguments are passed as bind
// parameters, which utility statements (CREATE, ALTER, ...) do not accept.
func (s *Server) Exec(tb testing.TB, db, sql string, args ...any) {
	tb.Helper()
	if err := s.Server.Exec(db, sql, args...); err != nil {
		tb.Fatalf("pgtest: %v\n%s", err, sql)
	}
}

// CreateRole creates a LOGIN role whose password is stored as a
// SCRAM-SHA-256 verifier, so logging in as it exercises SCRAM.
func (s *Server) CreateRole(tb testing.TB, name, password string) {
	tb.Helper()
	if err := s.Server.CreateRole(name, password); err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
}

// CreateDatabase creates db owned by owner.
func (s *Server) CreateDatabase(tb testing.TB, name, owner string) {
	tb.Helper()
	if err := s.Server.CreateDatabase(name, owner); err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
}

// Conns returns how many client backends are connected to db, not counting
// the helper's own connections. A backend leaves pg_stat_activity a moment
// after its client disconnects, so a test waiting for a pool to drain should
// poll.
func (s *Server) Conns(tb testing.TB, db string) int {
	tb.Helper()
	n, err := s.Server.Conns(db)
	if err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	return n
}

// Statements returns the statements that reached the server, in order, from
// every connection except the helper's own. The test fails if the server was
// not started WithStatementLog.
//
// PostgreSQL logs a statement before it runs it, so a statement appears here
// even when it then fails; a statement a proxy refused never does.
func (s *Server) Statements(tb testing.TB) []Statement {
	tb.Helper()
	st, err := s.Server.Statements()
	if err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	return st
}

// QueryLog returns the SQL of Statements, one statement per line (a
// multi-line statement keeps its line breaks).
func (s *Server) QueryLog(tb testing.TB) string {
	tb.Helper()
	var b strings.Builder
	for _, st := range s.Statements(tb) {
		b.WriteString(st.SQL)
		b.WriteByte('\n')
	}
	return b.String()
}
