package postgres

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
)

// upstream is a caller's connection to the resource, and what the gateway
// learnt while setting it up.
type upstream struct {
	conn *pgconn.HijackedConn
	// role the session runs as ("" for the login role).
	role string
	// searchPath is the session's effective search path
	// (current_schemas(true), with the schemas of the setting that do not
	// exist yet: readSearchPath), which resolves its unqualified names.
	searchPath []string
}

// errRole is a role mapping the database refused, or none at all.
type errRole struct{ msg string }

func (e *errRole) Error() string { return e.msg }

// connectUpstream logs in to the resource with the credentials the bundle
// references, resolved now, on the gateway host. The caller's name goes
// into application_name, so the upstream's own logs say who it was. With
// upstream_roles, the session then runs as the caller's mapped role.
func (s *Server) connectUpstream(ctx context.Context, res *bundle.Postgres, id celpolicy.Identity) (*upstream, error) {
	role, method := "", ""
	if ur := res.UpstreamRoles; ur != nil {
		r, ok := ur.Role(id.Name, id.Groups)
		if !ok {
			return nil, &errRole{fmt.Sprintf("resource %q maps callers to database roles, and none is mapped for you (identity %q)", res.Name, id.Name)}
		}
		role, method = r, ur.MethodOrDefault()
	}
	user := ""
	if method == bundle.RoleLogin {
		user = role
	}
	cfg, err := s.upstreamConfig(res, user)
	if err != nil {
		return nil, err
	}
	name := id.Name
	if name == "" {
		name = "subject:" + id.Subject
	}
	cfg.RuntimeParams["application_name"] = truncate("gatehouse:"+name, 63)
	cctx, cancel := context.WithTimeout(ctx, s.cfg.UpstreamTimeout)
	defer cancel()
	pc, err := pgconn.ConnectConfig(cctx, cfg)
	if err != nil {
		if role != "" && method == bundle.RoleLogin {
			return nil, &errRole{fmt.Sprintf("the database refused a login as role %q for you: %v", role, pgMessage(err))}
		}
		return nil, err
	}
	up := &upstream{role: role}
	fail := func(err error) (*upstream, error) {
		pc.Close(context.Background())
		return nil, err
	}
	switch method {
	case bundle.RoleSetRole:
		if _, err := pc.Exec(cctx, "SET ROLE "+quoteIdent(role)).ReadAll(); err != nil {
			return fail(&errRole{fmt.Sprintf("the database refused SET ROLE %s for you: %v", quoteIdent(role), pgMessage(err))})
		}
	case bundle.RoleSetSessionAuthorization:
		if _, err := pc.Exec(cctx, "SET SESSION AUTHORIZATION "+quoteIdent(role)).ReadAll(); err != nil {
			return fail(&errRole{fmt.Sprintf("the database refused SET SESSION AUTHORIZATION %s for you: %v", quoteIdent(role), pgMessage(err))})
		}
	}
	if up.searchPath, err = readSearchPath(cctx, pc); err != nil {
		return fail(err)
	}
	h, err := pc.Hijack()
	if err != nil {
		return fail(err)
	}
	up.conn = h
	return up, nil
}

// pgMessage is a server error's message, or the error.
func pgMessage(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Message
	}
	return err.Error()
}

// quoteIdent quotes a role name for the gateway's own SET ROLE.
func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// upstreamConfig is how the gateway logs in to a resource: as user, or
// (when "") the resource's username.
func (s *Server) upstreamConfig(res *bundle.Postgres, user string) (*pgconn.Config, error) {
	host, port, err := net.SplitHostPort(res.Address)
	if err != nil {
		return nil, fmt.Errorf("resource %q address: %w", res.Name, err)
	}
	if user == "" {
		user = res.Username
	}
	mode := "disable"
	var ca string
	if res.TLS != nil {
		if res.TLS.Mode != "" {
			mode = res.TLS.Mode
		}
		ca = res.TLS.CAFile
	}
	dsn := fmt.Sprintf("host=%s port=%s dbname=%s user=%s sslmode=%s", quoteDSN(host), quoteDSN(port), quoteDSN(res.Database), quoteDSN(user), mode)
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
	if res.TLS != nil && res.TLS.CertFile != "" {
		if cfg.TLSConfig == nil {
			return nil, fmt.Errorf("resource %q: a client certificate needs TLS (tls.mode require or stronger)", res.Name)
		}
		cert, err := s.clientCertificate(res)
		if err != nil {
			return nil, err
		}
		cfg.TLSConfig.Certificates = []tls.Certificate{cert}
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

// clientCertificate loads the gateway's client certificate for a resource:
// the certificate from its file, the key through the secret reference.
func (s *Server) clientCertificate(res *bundle.Postgres) (tls.Certificate, error) {
	certPEM, err := os.ReadFile(res.TLS.CertFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("resource %q: client certificate: %w", res.Name, err)
	}
	if res.TLS.Key == "" {
		return tls.Certificate{}, fmt.Errorf("resource %q: tls.cert_file needs tls.key, a secret reference to the private key", res.Name)
	}
	keyPEM, err := s.secrets.Resolve(res.TLS.Key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("resource %q: client key: %w", res.Name, err)
	}
	cert, err := tls.X509KeyPair(certPEM, []byte(keyPEM))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("resource %q: client certificate and key: %w", res.Name, err)
	}
	return cert, nil
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

// cancelUpstream sends a CancelRequest to the session's upstream with the
// upstream's own key, over TLS when the upstream connection uses TLS.
func (s *session) cancelUpstream() error {
	cfg := s.up.Config
	addr := net.JoinHostPort(cfg.Host, fmt.Sprint(cfg.Port))
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	var c net.Conn = conn
	if s.up.TLSConfig != nil {
		req, err := (&pgproto3.SSLRequest{}).Encode(nil)
		if err != nil {
			return err
		}
		if _, err := conn.Write(req); err != nil {
			return err
		}
		var b [1]byte
		if _, err := io.ReadFull(conn, b[:]); err != nil {
			return err
		}
		if b[0] == 'S' {
			tc := tls.Client(conn, s.up.TLSConfig.Clone())
			if err := tc.Handshake(); err != nil {
				return err
			}
			c = tc
		}
	}
	buf, err := (&pgproto3.CancelRequest{ProcessID: s.up.PID, SecretKey: s.up.SecretKey}).Encode(nil)
	if err != nil {
		return err
	}
	_, err = c.Write(buf)
	return err
}
