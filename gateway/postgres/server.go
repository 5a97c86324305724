// Package postgres is the gateway's PostgreSQL wire: the enforcement point
// for PostgreSQL clients. A caller connects with an unmodified client,
// using an OIDC token as its password and a bundle resource's name as the
// database. The shared core (package session) admits it, decides every
// statement against the active bundle, records it and holds it for
// approvers; this package speaks the protocol around those steps: the
// startup, the frontend and backend halves, statement and portal names,
// the response queue, column masking and cancel.
package postgres

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/gateway/secrets"
	core "github.com/gatehouse-dev/gatehouse/gateway/session"
)

// Protocol is the protocol's name in metrics and recordings.
const Protocol = "postgres"

// Config configures the proxy.
type Config struct {
	// TLS, when set, is offered to clients (sslmode=require and up).
	TLS *tls.Config
	// InsecurePlaintext allows the token to travel without TLS. Only for
	// a listener on loopback, for development; the config loader refuses
	// it elsewhere.
	InsecurePlaintext bool
	// MaxMessageBytes bounds one client message. Default 16 MiB.
	MaxMessageBytes int
	// StartupTimeout bounds the handshake, token verification included.
	// Default 30s.
	StartupTimeout time.Duration
	// UpstreamTimeout bounds connecting upstream. Default 10s.
	UpstreamTimeout time.Duration
	// BeforeResponse is the overlapped durability mode: an allowed
	// statement is forwarded once its event is written, and nothing is
	// flushed to any caller before the event of every statement forwarded
	// so far is durable (the fdatasync runs during the upstream's round
	// trip). The default (false) makes the event durable
	// before the statement is forwarded. docs/gateway.md says what each
	// guarantees on a crash.
	BeforeResponse bool
}

// Server is a running proxy.
type Server struct {
	cfg     Config
	core    *core.Core
	secrets secrets.Resolver
	log     *slog.Logger
	catalog *catalogs
	types   *typeNames

	sessions sync.Map // cancel key -> *session
	// relayCancel passes a CancelRequest for a session held by another
	// replica on to the others (nil: one gateway alone).
	relayCancel func(pid uint32, secret []byte)
	wg          sync.WaitGroup
}

// Option configures a Server.
type Option func(*Server)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(s *Server) { s.log = l } }

// WithCancelRelay passes CancelRequests for sessions this gateway does
// not hold to relay (to the other replicas).
func WithCancelRelay(relay func(pid uint32, secret []byte)) Option {
	return func(s *Server) { s.relayCancel = relay }
}

// WithSecrets sets the secret resolver.
func WithSecrets(r secrets.Resolver) Option { return func(s *Server) { s.secrets = r } }

// New makes a proxy on the gateway's enforcement core.
func New(cfg Config, c *core.Core, opts ...Option) *Server {
	if cfg.MaxMessageBytes == 0 {
		cfg.MaxMessageBytes = 16 << 20
	}
	if cfg.StartupTimeout == 0 {
		cfg.StartupTimeout = 30 * time.Second
	}
	if cfg.UpstreamTimeout == 0 {
		cfg.UpstreamTimeout = 10 * time.Second
	}
	s := &Server{cfg: cfg, core: c, log: slog.Default(), types: newTypeNames()}
	for _, o := range opts {
		o(s)
	}
	s.catalog = newCatalogs(s)
	return s
}

// Kind is the protocol the server speaks.
func (s *Server) Kind() string { return Protocol }

// Stats are the protocol's counters in the core.
func (s *Server) Stats() *core.Stats { return s.core.Stats(Protocol) }

// Serve accepts connections until ctx ends, then closes the listener and
// waits for sessions to finish (they are ended too, and their recordings
// sealed).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	defer func() {
		s.wg.Wait()
		s.catalog.close()
	}()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return fmt.Errorf("postgres: accept: %w", err)
		}
		// Pending in the order of acceptance, not when the session's
		// goroutine first runs: in a flood, a caller accepted after the
		// silent sockets is newer than all of them, and they make room
		// first.
		wrapped, done, timeout := s.core.Pending(Protocol, conn, func() { conn.Close() })
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(ctx, conn, wrapped, done, timeout)
		}()
	}
}

// handle runs one client connection. A panic in a session is contained:
// it ends that session with an error, never the gateway. Until it
// authenticates the connection is pending (core.Pending): bounded in
// number (silent ones are closed first to make room) and in time; wrapped
// is conn as Pending wrapped it, done ends the pending state.
func (s *Server) handle(ctx context.Context, conn, wrapped net.Conn, done func(), timeout time.Duration) {
	id := s.core.NextID()
	log := s.log.With("session", id, "client", conn.RemoteAddr().String())
	defer conn.Close()
	defer func() {
		if r := recover(); r != nil {
			log.Error("session failed", "panic", r)
		}
	}()
	defer done()
	sess, err := s.startup(ctx, wrapped, id, log, time.Now().Add(timeout))
	done()
	if err != nil {
		if !errors.Is(err, errHandled) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			log.Warn("connection refused", "err", err)
		}
		return
	}
	sess.run(ctx)
}

// errHandled marks an error already reported to the client and logged.
var errHandled = errors.New("handled")

// fatal sends a FATAL error to the client. The message must not contain
// secrets: it reaches the caller.
func fatal(be *pgproto3.Backend, code, msg string) {
	be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: msg})
	_ = be.Flush()
}

// sqlstate is the SQLSTATE a refusal of the core is sent with.
func sqlstate(r *core.Refusal) string {
	switch r.Code {
	case core.NotReady:
		return "57P03"
	case core.UnknownResource:
		return "3D000"
	case core.TokenRejected, core.TokenExpired:
		return "28000"
	case core.Unrecorded, core.Unavailable:
		return "58030"
	case core.Cancelled:
		return "57014"
	case core.TooMany:
		return "53400"
	case core.Limited:
		return "53300" // too_many_connections
	case core.Idle:
		return "57P05" // idle_session_timeout
	}
	return "42501" // Denied, Revoked, Pending, ApprovalDenied
}

// errorOf renders a refusal of a statement as PostgreSQL's ERROR: the
// session stays usable.
func errorOf(r *core.Refusal) *pgproto3.ErrorResponse {
	hint := r.Hint
	if r.Code == core.Denied && hint == "" {
		hint = "Run `gatehouse eval` with this statement to see the decision explained."
	}
	return &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: sqlstate(r), Message: r.Message, Detail: r.Detail, Hint: hint}
}

// findPostgres is the bundle's postgres resource of that name.
func findPostgres(m *bundle.Model, name string) *bundle.Postgres {
	for i := range m.Postgres {
		if m.Postgres[i].Name == name {
			return &m.Postgres[i]
		}
	}
	return nil
}

// cancel forwards a client's CancelRequest to the upstream of the session
// it names, with the upstream's own key. Unknown keys are ignored, as
// PostgreSQL ignores them.
func (s *Server) cancel(m *pgproto3.CancelRequest) {
	if !s.CancelLocal(m.ProcessID, m.SecretKey) && s.relayCancel != nil {
		// Not a session of this replica: another may hold it (a load
		// balancer sends a client's cancel connection anywhere).
		s.relayCancel(m.ProcessID, m.SecretKey)
	}
}

// CancelLocal cancels the session of this gateway with that key, if it
// has one, and reports whether it had.
func (s *Server) CancelLocal(pid uint32, secret []byte) bool {
	v, ok := s.sessions.Load(cancelKey(pid, secret))
	if !ok {
		return false
	}
	sess := v.(*session)
	if sess.cs.CancelHold() {
		// The statement was held for approval and never reached the
		// upstream: withdrawing it is the whole cancel.
		return true
	}
	if err := sess.cancelUpstream(); err != nil {
		sess.log.Warn("cancel request failed", "err", err)
	}
	return true
}

func cancelKey(pid uint32, secret []byte) string {
	return fmt.Sprintf("%d:%x", pid, secret)
}
