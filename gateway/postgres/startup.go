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
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	core "github.com/gatehouse-dev/gatehouse/gateway/session"
)

// Startup parameters a client may send. Anything else is refused: every
// other startup parameter is a server setting (role, search_path,
// session_authorization, ...) that would apply before policy ever sees a
// statement.
var allowedStartupParams = map[string]bool{
	"user": true, "database": true, "application_name": true, "client_encoding": true,
	"DateStyle": true, "TimeZone": true, "extra_float_digits": true, "IntervalStyle": true,
	"fallback_application_name": true,
}

// handshake is the client's side of the startup before authentication.
type handshake struct {
	conn    net.Conn
	reader  *clientReader
	out     *dropWriter
	be      *pgproto3.Backend
	secure  bool
	startup *pgproto3.StartupMessage
}

// startup runs the handshake, has the core admit the caller, connects
// upstream and tells the client it is in.
func (s *Server) startup(ctx context.Context, conn net.Conn, id uint64, log *slog.Logger, deadline time.Time) (*session, error) {
	if d := time.Now().Add(s.cfg.StartupTimeout); d.Before(deadline) {
		deadline = d
	}
	_ = conn.SetDeadline(deadline)
	h, err := s.negotiate(ctx, conn)
	if err != nil {
		return nil, err
	}
	be := h.be
	params := h.startup.Parameters
	if err := checkStartupParams(be, params); err != nil {
		return nil, err
	}
	// Nothing about the bundle is said to a client that has not set up
	// TLS: not even whether a database exists.
	if !h.secure && !s.cfg.InsecurePlaintext {
		fatal(be, "28000", "gatehouse: TLS is required (use sslmode=require or stronger): the password is an access token")
		return nil, errHandled
	}
	database := params["database"]
	if database == "" {
		database = params["user"]
	}
	if active, ref := s.core.Lookup(bundle.KindPostgres, database); ref != nil {
		if ref.Code == core.UnknownResource {
			ref.Message = fmt.Sprintf("gatehouse: database %q is not a postgres resource of bundle revision %d", database, active.Revision)
		}
		fatal(be, sqlstate(ref), ref.Message)
		return nil, errHandled
	}
	token, err := readPassword(be)
	if err != nil {
		return nil, err
	}
	var sess *session
	cs, ref := s.core.Admit(ctx, core.Admission{
		Protocol: Protocol, Kind: bundle.KindPostgres, Resource: database, Token: token,
		ClientAddr: h.conn.RemoteAddr().String(), ID: id, Log: log, Noun: "statement",
		Guard: func(r celpolicy.Request, d celpolicy.Decision) celpolicy.Decision {
			if sess == nil {
				return d // the connect decision: no statement yet
			}
			return sess.guard(r, d)
		},
		Epoch: func() uint64 {
			if sess == nil {
				return 0
			}
			return sess.cat.epoch()
		},
	})
	if ref != nil {
		fatal(be, sqlstate(ref), ref.Message)
		return nil, errHandled
	}
	next := &session{srv: s, cs: cs, log: cs.Log(), client: h.conn, be: be, out: h.out, reader: h.reader,
		names: newNames(), q: newQueue()}
	res := findPostgres(&s.core.Bundles().Current().Payload.Model, database)
	if res == nil {
		cs.End("the resource left the bundle during the handshake")
		fatal(be, "3D000", fmt.Sprintf("gatehouse: database %q is no longer a postgres resource", database))
		return nil, errHandled
	}
	up, err := s.connectUpstream(ctx, res, cs.Identity())
	if err != nil {
		var re *errRole
		if errors.As(err, &re) {
			cs.End("no upstream role")
			next.log.Warn("upstream role refused", "err", err)
			fatal(be, "28000", "gatehouse: "+re.msg)
			return nil, errHandled
		}
		cs.End("upstream connection failed")
		next.log.Error("upstream connection failed", "err", err)
		fatal(be, "08006", fmt.Sprintf("gatehouse: cannot reach the %q database upstream; the error is in the gateway's log (session %d)", res.Name, id))
		return nil, errHandled
	}
	next.up, next.fe = up.conn, up.conn.Frontend
	next.role = up.role
	next.cat = newSessionCatalog(s, res.Name, up.searchPath)
	next.names.onDefine = next.cat.forgetNamed
	next.txStatus.Store(uint32(up.conn.TxStatus))
	if err := next.welcome(); err != nil {
		cs.End("the client left during the handshake")
		up.conn.Conn.Close()
		return nil, err
	}
	sess = next
	// The core ends the session without waiting for a statement (token
	// expiry, a revoking bundle, the idle timeout). A statement whose
	// answer is still coming, or one held for approval, is not idleness.
	cs.SetEnder(sess.endWith, func() bool { return sess.q.head(false) != nil })
	_ = h.conn.SetDeadline(time.Time{})
	sess.log.Info("session started", "subject", cs.Identity().Subject, "revision", s.core.Bundles().Current().Revision, "tls", h.secure, "role", up.role)
	return sess, nil
}

// negotiate reads the client's first messages: TLS, GSS encryption
// (refused), a CancelRequest (handled here), and the StartupMessage.
func (s *Server) negotiate(ctx context.Context, conn net.Conn) (*handshake, error) {
	h := &handshake{conn: conn}
	h.reset()
	h.be.SetMaxBodyLen(s.cfg.MaxMessageBytes)
	for h.startup == nil {
		msg, err := h.be.ReceiveStartupMessage()
		if err != nil {
			return nil, err
		}
		switch m := msg.(type) {
		case *pgproto3.SSLRequest:
			if s.cfg.TLS == nil || h.secure {
				if _, err := h.conn.Write([]byte{'N'}); err != nil {
					return nil, err
				}
				continue
			}
			if _, err := h.conn.Write([]byte{'S'}); err != nil {
				return nil, err
			}
			tconn := tls.Server(h.conn, s.cfg.TLS)
			if err := tconn.HandshakeContext(ctx); err != nil {
				return nil, fmt.Errorf("tls handshake: %w", err)
			}
			h.conn, h.secure = tconn, true
			h.reset()
			h.be.SetMaxBodyLen(s.cfg.MaxMessageBytes)
		case *pgproto3.GSSEncRequest:
			if _, err := h.conn.Write([]byte{'N'}); err != nil {
				return nil, err
			}
		case *pgproto3.CancelRequest:
			s.cancel(m)
			return nil, errHandled
		case *pgproto3.StartupMessage:
			h.startup = m
		default:
			return nil, fmt.Errorf("unexpected startup message %T", msg)
		}
	}
	if h.startup.ProtocolVersion != pgproto3.ProtocolVersion30 {
		// Upstreams speak 3.0; offer that, as PostgreSQL itself does.
		h.be.Send(&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0})
	}
	return h, nil
}

func (h *handshake) reset() {
	h.reader = &clientReader{conn: h.conn}
	h.out = &dropWriter{w: h.conn}
	h.be = pgproto3.NewBackend(h.reader, h.out)
}

// dropWriter passes writes on to w, or, while drop is set, discards them:
// how responses buffered for the caller are thrown away when they must be
// withheld (session.durableLocked). drop is only set under writeMu.
type dropWriter struct {
	w    io.Writer
	drop bool
}

func (d *dropWriter) Write(p []byte) (int, error) {
	if d.drop {
		return len(p), nil
	}
	return d.w.Write(p)
}

// checkStartupParams refuses startup parameters that would change the
// server's settings before policy sees a statement, and client encodings
// the gateway's parser does not read.
func checkStartupParams(be *pgproto3.Backend, params map[string]string) error {
	for k := range params {
		if strings.HasPrefix(k, "_pq_.") {
			continue // protocol extensions: ignored, as PostgreSQL does
		}
		if !allowedStartupParams[k] {
			fatal(be, "28000", fmt.Sprintf("gatehouse: startup parameter %q is not allowed through the gateway (options, replication and server settings are refused; use SET, which policy governs)", k))
			return errHandled
		}
	}
	if enc := strings.ToUpper(params["client_encoding"]); enc != "" && enc != "UTF8" && enc != "UTF-8" && enc != "UNICODE" && enc != "AUTO" {
		// The gateway parses SQL as UTF-8; another client encoding could
		// make PostgreSQL read other statements from the same bytes.
		fatal(be, "22023", fmt.Sprintf("gatehouse: client_encoding %q is not supported; the gateway requires UTF8", params["client_encoding"]))
		return errHandled
	}
	return nil
}

// readPassword asks for the password in cleartext (the connection is TLS,
// or loopback in development) and returns it: the caller's token.
func readPassword(be *pgproto3.Backend) (string, error) {
	be.Send(&pgproto3.AuthenticationCleartextPassword{})
	if err := be.Flush(); err != nil {
		return "", err
	}
	if err := be.SetAuthType(pgproto3.AuthTypeCleartextPassword); err != nil {
		return "", err
	}
	msg, err := be.Receive()
	if err != nil {
		return "", err
	}
	pw, ok := msg.(*pgproto3.PasswordMessage)
	if !ok {
		fatal(be, "08P01", "gatehouse: expected a password message")
		return "", errHandled
	}
	return pw.Password, nil
}

// welcome gives the caller a cancel key of the gateway's own, mapped to
// the upstream's (the upstream key never leaves the gateway), and the
// upstream's parameters, and says the session is ready.
func (s *session) welcome() error {
	var key [8]byte
	if _, err := rand.Read(key[:]); err != nil {
		return err
	}
	s.cancelPID = binary.BigEndian.Uint32(key[:4]) &^ (1 << 31)
	s.cancelSecret = append([]byte(nil), key[4:]...)
	s.srv.sessions.Store(cancelKey(s.cancelPID, s.cancelSecret), s)
	s.be.Send(&pgproto3.AuthenticationOk{})
	for _, k := range sortedKeys(s.up.ParameterStatuses) {
		s.be.Send(&pgproto3.ParameterStatus{Name: k, Value: s.up.ParameterStatuses[k]})
	}
	s.be.Send(&pgproto3.BackendKeyData{ProcessID: s.cancelPID, SecretKey: s.cancelSecret})
	s.be.Send(&pgproto3.ReadyForQuery{TxStatus: s.up.TxStatus})
	if err := s.be.Flush(); err != nil {
		s.srv.sessions.Delete(cancelKey(s.cancelPID, s.cancelSecret))
		return err
	}
	return nil
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
