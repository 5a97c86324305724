// Package postgres is the gateway's PostgreSQL proxy: the enforcement point
// in the data path. A caller connects with an unmodified client, using an
// OIDC token as its password and a bundle resource's name as the database.
// The proxy verifies the token, opens the upstream connection with
// credentials only it holds, and then decides every statement against the
// active bundle: it forwards it, refuses it with SQLSTATE 42501 naming the
// rule, or masks its results.
package postgres

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/gateway/approval"
	"github.com/gatehouse-dev/gatehouse/gateway/bundlestore"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/gateway/secrets"
)

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
}

// Server is a running proxy.
type Server struct {
	cfg     Config
	store   *bundlestore.Store
	secrets secrets.Resolver
	log     *slog.Logger
	catalog *catalogs

	rec       *recorder.Recorder
	approvals *approval.Store
	sessions  sync.Map // cancel key -> *session
	nextID    atomic.Uint64
	wg        sync.WaitGroup

	Stats Stats
}

// Stats are counters for metrics.
type Stats struct {
	Sessions     atomic.Int64
	AuthFailures atomic.Int64
	// ConnectDenied counts connections the policy refused.
	ConnectDenied atomic.Int64
	Allowed       atomic.Int64
	Denied        atomic.Int64
	// Reviewed counts statements a review decision sent to approvers (or
	// that an earlier approval released); each also counts as allowed or
	// denied by how it ended.
	Reviewed       atomic.Int64
	ActiveSession  atomic.Int64
	RecorderErrors atomic.Int64
	// RecordNanos sums the time spent making events durable, Records
	// counts them, and RecordBuckets[i] counts those that took at most
	// RecordBounds[i] (the last bucket is everything slower).
	RecordNanos   atomic.Int64
	Records       atomic.Int64
	RecordBuckets [len(RecordBounds) + 1]atomic.Int64
}

// RecordBounds are the upper bounds of the recorder latency histogram. An
// fdatasync on a local disk takes a few hundred microseconds; the top
// buckets are for a struggling disk.
var RecordBounds = [...]time.Duration{
	50 * time.Microsecond, 100 * time.Microsecond, 250 * time.Microsecond,
	500 * time.Microsecond, time.Millisecond, 2500 * time.Microsecond,
	5 * time.Millisecond, 10 * time.Millisecond, 25 * time.Millisecond,
	50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond,
	time.Second,
}

// observeRecord adds one recorder write to the latency counters.
func (st *Stats) observeRecord(d time.Duration) {
	st.RecordNanos.Add(int64(d))
	st.Records.Add(1)
	i := 0
	for i < len(RecordBounds) && d > RecordBounds[i] {
		i++
	}
	st.RecordBuckets[i].Add(1)
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// Option configures a Server.
type Option func(*Server)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(s *Server) { s.log = l } }

// WithRecorder records every session. Without it nothing is recorded.
func WithRecorder(r *recorder.Recorder) Option { return func(s *Server) { s.rec = r } }

// WithApprovals lets review decisions hold statements for approvers.
// Without it a review decision denies.
func WithApprovals(a *approval.Store) Option { return func(s *Server) { s.approvals = a } }

// WithSecrets sets the secret resolver.
func WithSecrets(r secrets.Resolver) Option { return func(s *Server) { s.secrets = r } }

// New makes a proxy that decides with the store's active bundle.
func New(cfg Config, store *bundlestore.Store, opts ...Option) *Server {
	if cfg.MaxMessageBytes == 0 {
		cfg.MaxMessageBytes = 16 << 20
	}
	if cfg.StartupTimeout == 0 {
		cfg.StartupTimeout = 30 * time.Second
	}
	if cfg.UpstreamTimeout == 0 {
		cfg.UpstreamTimeout = 10 * time.Second
	}
	s := &Server{cfg: cfg, store: store, log: slog.Default()}
	for _, o := range opts {
		o(s)
	}
	s.catalog = newCatalogs(s)
	return s
}

// Serve accepts connections until ctx ends, then closes the listener and
// waits for sessions to finish (they are ended too).
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
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(ctx, conn)
		}()
	}
}

// handle runs one client connection. A panic in a session is contained:
// it ends that session with an error, never the gateway.
func (s *Server) handle(ctx context.Context, conn net.Conn) {
	id := s.nextID.Add(1)
	log := s.log.With("session", id, "client", conn.RemoteAddr().String())
	defer conn.Close()
	defer func() {
		if r := recover(); r != nil {
			log.Error("session failed", "panic", r)
		}
	}()
	sess, err := s.startup(ctx, conn, id, log)
	if err != nil {
		if !errors.Is(err, errHandled) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			log.Warn("connection refused", "err", err)
		}
		return
	}
	s.Stats.Sessions.Add(1)
	s.Stats.ActiveSession.Add(1)
	defer s.Stats.ActiveSession.Add(-1)
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

// Startup parameters a client may send. Anything else is refused: every
// other startup parameter is a server setting (role, search_path,
// session_authorization, ...) that would apply before policy ever sees a
// statement.
var allowedStartupParams = map[string]bool{
	"user": true, "database": true, "application_name": true, "client_encoding": true,
	"DateStyle": true, "TimeZone": true, "extra_float_digits": true, "IntervalStyle": true,
	"fallback_application_name": true,
}

func (s *Server) startup(ctx context.Context, conn net.Conn, id uint64, log *slog.Logger) (*session, error) {
	_ = conn.SetDeadline(time.Now().Add(s.cfg.StartupTimeout))
	cr := &clientReader{conn: conn}
	be := pgproto3.NewBackend(cr, conn)
	be.SetMaxBodyLen(s.cfg.MaxMessageBytes)
	var secure bool
	var startup *pgproto3.StartupMessage
	for startup == nil {
		msg, err := be.ReceiveStartupMessage()
		if err != nil {
			return nil, err
		}
		switch m := msg.(type) {
		case *pgproto3.SSLRequest:
			if s.cfg.TLS == nil || secure {
				if _, err := conn.Write([]byte{'N'}); err != nil {
					return nil, err
				}
				continue
			}
			if _, err := conn.Write([]byte{'S'}); err != nil {
				return nil, err
			}
			tconn := tls.Server(conn, s.cfg.TLS)
			if err := tconn.HandshakeContext(ctx); err != nil {
				return nil, fmt.Errorf("tls handshake: %w", err)
			}
			conn, secure = tconn, true
			cr = &clientReader{conn: conn}
			be = pgproto3.NewBackend(cr, conn)
			be.SetMaxBodyLen(s.cfg.MaxMessageBytes)
		case *pgproto3.GSSEncRequest:
			if _, err := conn.Write([]byte{'N'}); err != nil {
				return nil, err
			}
		case *pgproto3.CancelRequest:
			s.cancel(m)
			return nil, errHandled
		case *pgproto3.StartupMessage:
			startup = m
		default:
			return nil, fmt.Errorf("unexpected startup message %T", msg)
		}
	}
	if startup.ProtocolVersion != pgproto3.ProtocolVersion30 {
		// Upstreams speak 3.0; offer that, as PostgreSQL itself does.
		be.Send(&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0})
	}
	params := startup.Parameters
	for k := range params {
		if strings.HasPrefix(k, "_pq_.") {
			continue // protocol extensions: ignored, as PostgreSQL does
		}
		if !allowedStartupParams[k] {
			fatal(be, "28000", fmt.Sprintf("gatehouse: startup parameter %q is not allowed through the gateway (options, replication and server settings are refused; use SET, which policy governs)", k))
			return nil, errHandled
		}
	}
	if enc := strings.ToUpper(params["client_encoding"]); enc != "" && enc != "UTF8" && enc != "UTF-8" && enc != "UNICODE" && enc != "AUTO" {
		// The gateway parses SQL as UTF-8; another client encoding could
		// make PostgreSQL read other statements from the same bytes.
		fatal(be, "22023", fmt.Sprintf("gatehouse: client_encoding %q is not supported; the gateway requires UTF8", params["client_encoding"]))
		return nil, errHandled
	}
	// Nothing about the bundle is said to a client that has not set up
	// TLS: not even whether a database exists.
	if !secure && !s.cfg.InsecurePlaintext {
		fatal(be, "28000", "gatehouse: TLS is required (use sslmode=require or stronger): the password is an access token")
		return nil, errHandled
	}
	database := params["database"]
	if database == "" {
		database = params["user"]
	}
	active := s.store.Current()
	if active == nil {
		fatal(be, "57P03", "gatehouse: no policy bundle is loaded yet; the gateway refuses connections until one is")
		return nil, errHandled
	}
	res := findPostgres(active, database)
	if res == nil {
		fatal(be, "3D000", fmt.Sprintf("gatehouse: database %q is not a postgres resource of bundle revision %d", database, active.Revision))
		return nil, errHandled
	}
	be.Send(&pgproto3.AuthenticationCleartextPassword{})
	if err := be.Flush(); err != nil {
		return nil, err
	}
	if err := be.SetAuthType(pgproto3.AuthTypeCleartextPassword); err != nil {
		return nil, err
	}
	msg, err := be.Receive()
	if err != nil {
		return nil, err
	}
	pw, ok := msg.(*pgproto3.PasswordMessage)
	if !ok {
		fatal(be, "08P01", "gatehouse: expected a password message")
		return nil, errHandled
	}
	vtok, err := active.Verifier.Verify(ctx, pw.Password)
	if err != nil {
		s.Stats.AuthFailures.Add(1)
		log.Warn("token rejected", "database", database, "reason", err)
		fatal(be, "28000", "gatehouse: token rejected: "+err.Error())
		return nil, errHandled
	}
	identity, err := active.Policy.ResolveIdentity(vtok.Provider, vtok.Token)
	if err != nil {
		s.Stats.AuthFailures.Add(1)
		log.Warn("identity not resolved", "database", database, "subject", vtok.Token.Subject, "reason", err)
		fatal(be, "28000", "gatehouse: "+err.Error())
		return nil, errHandled
	}
	sess := &session{
		srv: s, id: id, client: conn, be: be, secure: secure,
		resource: res.Name, token: vtok, rawToken: pw.Password, identity: identity,
		started: time.Now(), revision: active.Revision,
		names: newNames(), closed: make(chan struct{}), reader: cr,
	}
	sess.log = log.With("identity", identityName(identity), "resource", res.Name)
	d := active.Policy.Decide(sess.input(celpolicy.Connect()))
	if d.Effect != bundle.EffectAllow {
		s.Stats.ConnectDenied.Add(1)
		sess.log.Warn("connection denied by policy", "effect", d.Effect, "rules", d.Rules(), "reasons", d.Reasons)
		fatal(be, "42501", fmt.Sprintf("gatehouse: connection to %q denied by bundle revision %d: %s", res.Name, active.Revision, strings.Join(d.Reasons, "; ")))
		return nil, errHandled
	}
	if s.rec != nil {
		// The session is recorded before anything reaches the database;
		// a gateway that cannot record refuses to proxy.
		sess.recID = fmt.Sprintf("%s-%d-%x", time.Now().UTC().Format("20060102T150405Z"), id, randomBytes(4))
		sess.rec, err = s.rec.Start(sess.recID, recorder.Event{
			Identity: identityName(identity), Subject: identity.Subject, Issuer: identity.Issuer, Groups: identity.Groups,
			Resource: res.Name, BundleRevision: active.Revision, BundleDigest: active.Digest, ClientAddr: conn.RemoteAddr().String(),
		})
		if err != nil {
			s.Stats.RecorderErrors.Add(1)
			sess.log.Error("session not recorded; refused", "err", err)
			fatal(be, "58030", "gatehouse: the session cannot be recorded, so it is refused (the gateway's log has the cause)")
			return nil, errHandled
		}
		sess.log = sess.log.With("recording", sess.recID)
	}
	up, err := s.connectUpstream(ctx, res, identity)
	if err != nil {
		sess.endRecording("upstream connection failed")
		sess.log.Error("upstream connection failed", "err", err)
		fatal(be, "08006", fmt.Sprintf("gatehouse: cannot reach the %q database upstream; the error is in the gateway's log (session %d)", res.Name, id))
		return nil, errHandled
	}
	sess.up = up
	sess.fe = up.Frontend
	sess.txStatus.Store(uint32(up.TxStatus))
	// The caller gets a cancel key of the gateway's own, mapped to the
	// upstream's: the upstream key never leaves the gateway.
	var key [8]byte
	if _, err := rand.Read(key[:]); err != nil {
		up.Conn.Close()
		return nil, err
	}
	sess.cancelPID = binary.BigEndian.Uint32(key[:4]) &^ (1 << 31)
	sess.cancelSecret = append([]byte(nil), key[4:]...)
	s.sessions.Store(cancelKey(sess.cancelPID, sess.cancelSecret), sess)

	be.Send(&pgproto3.AuthenticationOk{})
	for _, k := range sortedKeys(up.ParameterStatuses) {
		be.Send(&pgproto3.ParameterStatus{Name: k, Value: up.ParameterStatuses[k]})
	}
	be.Send(&pgproto3.BackendKeyData{ProcessID: sess.cancelPID, SecretKey: sess.cancelSecret})
	be.Send(&pgproto3.ReadyForQuery{TxStatus: up.TxStatus})
	if err := be.Flush(); err != nil {
		s.sessions.Delete(cancelKey(sess.cancelPID, sess.cancelSecret))
		up.Conn.Close()
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	sess.log.Info("session started", "subject", identity.Subject, "revision", active.Revision, "tls", secure)
	return sess, nil
}

func identityName(id celpolicy.Identity) string {
	if id.Name != "" {
		return id.Name
	}
	return "subject:" + id.Subject
}

func findPostgres(a *bundlestore.Active, name string) *bundle.Postgres {
	for i := range a.Payload.Model.Postgres {
		if a.Payload.Model.Postgres[i].Name == name {
			return &a.Payload.Model.Postgres[i]
		}
	}
	return nil
}

// connectUpstream logs in to the resource with the credentials the bundle
// references, resolved now, on the gateway host.
func (s *Server) connectUpstream(ctx context.Context, res *bundle.Postgres, id celpolicy.Identity) (*pgconn.HijackedConn, error) {
	cfg, err := s.upstreamConfig(res)
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["application_name"] = truncate("gatehouse:"+identityName(id), 63)
	cctx, cancel := context.WithTimeout(ctx, s.cfg.UpstreamTimeout)
	defer cancel()
	pc, err := pgconn.ConnectConfig(cctx, cfg)
	if err != nil {
		return nil, err
	}
	h, err := pc.Hijack()
	if err != nil {
		pc.Close(ctx)
		return nil, err
	}
	return h, nil
}

func (s *Server) upstreamConfig(res *bundle.Postgres) (*pgconn.Config, error) {
	host, port, err := net.SplitHostPort(res.Address)
	if err != nil {
		return nil, fmt.Errorf("resource %q address: %w", res.Name, err)
	}
	mode := "disable"
	var ca string
	if res.TLS != nil {
		if res.TLS.Mode != "" {
			mode = res.TLS.Mode
		}
		ca = res.TLS.CAFile
	}
	dsn := fmt.Sprintf("host=%s port=%s dbname=%s user=%s sslmode=%s", quoteDSN(host), quoteDSN(port), quoteDSN(res.Database), quoteDSN(res.Username), mode)
	if ca != "" {
		dsn += " sslrootcert=" + quoteDSN(ca)
	}
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("resource %q: %w", res.Name, err)
	}
	cfg.Fallbacks = nil // never fall back to a weaker TLS mode or another host
	if res.TLS != nil && res.TLS.ServerName != "" && cfg.TLSConfig != nil {
		cfg.TLSConfig.ServerName = res.TLS.ServerName
	}
	if res.Password != "" {
		pw, err := s.secrets.Resolve(res.Password)
		if err != nil {
			return nil, fmt.Errorf("resource %q: %w", res.Name, err)
		}
		cfg.Password = pw
	}
	// The gateway parses SQL as UTF-8 with standard conforming strings;
	// the upstream session must read it the same way.
	cfg.RuntimeParams = map[string]string{"client_encoding": "UTF8", "standard_conforming_strings": "on"}
	return cfg, nil
}

func quoteDSN(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

func cancelKey(pid uint32, secret []byte) string {
	return fmt.Sprintf("%d:%x", pid, secret)
}

// cancel forwards a client's CancelRequest to the upstream of the session
// it names, with the upstream's own key. Unknown keys are ignored, as
// PostgreSQL ignores them.
func (s *Server) cancel(m *pgproto3.CancelRequest) {
	v, ok := s.sessions.Load(cancelKey(m.ProcessID, m.SecretKey))
	if !ok {
		return
	}
	sess := v.(*session)
	if sess.cancelHold() {
		// The statement was held for approval and never reached the
		// upstream: withdrawing it is the whole cancel.
		return
	}
	if err := sess.cancelUpstream(); err != nil {
		sess.log.Warn("cancel request failed", "err", err)
	}
}
