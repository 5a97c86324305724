package postgres

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// connectUpstream logs in to the resource with the credentials the bundle
// references, resolved now, on the gateway host. The caller's name goes
// into application_name, so the upstream's own logs say who it was.
func (s *Server) connectUpstream(ctx context.Context, res *bundle.Postgres, identity, subject string) (*pgconn.HijackedConn, error) {
	cfg, err := s.upstreamConfig(res)
	if err != nil {
		return nil, err
	}
	name := identity
	if name == "" {
		name = "subject:" + subject
	}
	cfg.RuntimeParams["application_name"] = truncate("gatehouse:"+name, 63)
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
