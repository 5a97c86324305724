package pgtest

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/gatehouse-dev/gatehouse/internal/pgcluster"
)

// Shared is one PostgreSQL server for a package's tests, started by the
// first test that needs it, with a role that is not a superuser and owns
// a fresh database per test, as a gateway's state database would be. Keep
// it in a package variable, and Close it from TestMain.
type Shared struct {
	Role, Password string

	once sync.Once
	srv  *Server
	err  error
	seq  atomic.Int64
}

// Server starts the server (once) and returns it.
func (s *Shared) Server(tb testing.TB) *Server {
	tb.Helper()
	s.once.Do(func() {
		var srv *pgcluster.Server
		if srv, s.err = pgcluster.Start(); s.err == nil {
			s.srv = &Server{Server: srv}
			s.err = srv.CreateRole(s.Role, s.Password)
		}
	})
	if s.err != nil {
		tb.Fatalf("pgcluster: %v", s.err)
	}
	return s.srv
}

// NewDatabase makes an empty database owned by the role and returns its
// name and the role's DSN for it.
func (s *Shared) NewDatabase(tb testing.TB) (name, dsn string) {
	tb.Helper()
	srv := s.Server(tb)
	name = fmt.Sprint("state_", s.seq.Add(1))
	srv.CreateDatabase(tb, name, s.Role)
	return name, srv.ConnString(s.Role, s.Password, name)
}

// Close stops the server, if a test started it.
func (s *Shared) Close() error {
	if s.srv == nil {
		return nil
	}
	return s.srv.Close()
}
