// Package ssh is the gateway's SSH wire: the enforcement point for SSH
// clients. A caller runs an unmodified ssh, scp or sftp against the
// gateway, with the name of a bundle ssh_host resource as the user name
// (`ssh bastion@gateway`) and an OIDC access token as the password (or the
// keyboard-interactive answer). The shared core (package session) admits
// it and decides every channel and request; this package speaks SSH around
// those steps, with golang.org/x/crypto/ssh on both sides: it logs in
// upstream with a credential only the gateway holds, checks the upstream's
// host key against the pinned one, relays what the policy allows, and
// records commands before they run and their output as they come.
package ssh

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/gatehouse-dev/gatehouse/gateway/secrets"
	core "github.com/gatehouse-dev/gatehouse/gateway/session"
)

// Protocol is the protocol's name in metrics and recordings.
const Protocol = "ssh"

// Config configures the SSH proxy.
type Config struct {
	// HostKey is the gateway's own host key (LoadOrCreateHostKey).
	HostKey gossh.Signer
	// HandshakeTimeout bounds the SSH handshake, token verification
	// included. Default 30s.
	HandshakeTimeout time.Duration
	// UpstreamTimeout bounds connecting and logging in upstream. Default
	// 10s.
	UpstreamTimeout time.Duration
	// MaxChannels bounds the channels one connection may have open: the
	// caller's, and those the host opens back (X11, agent, remote
	// forwards).
	// Default 16.
	MaxChannels int
	// RecordShellInput records what the caller types into an interactive
	// shell. Off by default: passwords typed at a prompt would land in the
	// recording. A command's piped input is always recorded (up to
	// RecordLimit); a command with a terminal (ssh -t host sudo …) is
	// typed into, and its input follows this setting.
	RecordShellInput bool
	// RecordLimit bounds the bytes recorded per stream of one channel
	// (input, output); beyond it the bytes are counted, not kept. Default
	// 16 MiB.
	RecordLimit int64
	// Ciphers are the ciphers offered to callers. The client's order
	// decides among them, and OpenSSH puts chacha20-poly1305 and the CTR
	// modes first, which Go computes several times slower than AES-GCM
	// (hardware-accelerated): the default offers AES-GCM only, which every
	// OpenSSH since 6.2 has.
	Ciphers []string
}

// Server is a running SSH proxy.
type Server struct {
	cfg     Config
	core    *core.Core
	secrets secrets.Resolver
	log     *slog.Logger
	wg      sync.WaitGroup
}

// Option configures a Server.
type Option func(*Server)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(s *Server) { s.log = l } }

// WithSecrets sets the resolver of upstream credentials.
func WithSecrets(r secrets.Resolver) Option { return func(s *Server) { s.secrets = r } }

// New makes an SSH proxy on the gateway's enforcement core.
func New(cfg Config, c *core.Core, opts ...Option) (*Server, error) {
	if cfg.HostKey == nil {
		return nil, errors.New("ssh: a host key is required")
	}
	if cfg.HandshakeTimeout == 0 {
		cfg.HandshakeTimeout = 30 * time.Second
	}
	if cfg.UpstreamTimeout == 0 {
		cfg.UpstreamTimeout = 10 * time.Second
	}
	if cfg.MaxChannels == 0 {
		cfg.MaxChannels = 16
	}
	if cfg.RecordLimit == 0 {
		cfg.RecordLimit = 16 << 20
	}
	if len(cfg.Ciphers) == 0 {
		cfg.Ciphers = []string{gossh.CipherAES128GCM, gossh.CipherAES256GCM}
	}
	s := &Server{cfg: cfg, core: c, log: slog.Default()}
	for _, o := range opts {
		o(s)
	}
	return s, nil
}

// Kind is the protocol the server speaks.
func (s *Server) Kind() string { return Protocol }

// Serve accepts connections until ctx ends, then closes the listener and
// the open sessions, and returns once every session's recording is sealed.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	defer s.wg.Wait()
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return fmt.Errorf("ssh: accept: %w", err)
		}
		// Pending in the order of acceptance (see the PostgreSQL
		// server): a caller accepted after a flood is newer than it.
		wrapped, done, timeout := s.core.Pending(Protocol, nc, func() { nc.Close() })
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(ctx, nc, wrapped, done, timeout)
		}()
	}
}

// Fingerprint is the SHA-256 fingerprint of the gateway's host key, as
// ssh-keygen -l shows it.
func (s *Server) Fingerprint() string { return gossh.FingerprintSHA256(s.cfg.HostKey.PublicKey()) }

// LoadOrCreateHostKey reads the gateway's SSH host key (OpenSSH PEM) from
// path, creating an ed25519 key there (0600, with path.pub beside it) on
// first start.
func LoadOrCreateHostKey(path string) (gossh.Signer, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		k, err := gossh.ParsePrivateKey(b)
		if err != nil {
			return nil, fmt.Errorf("ssh host key %s: %w", path, err)
		}
		return k, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("ssh host key: %w", err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	block, err := gossh.MarshalPrivateKey(priv, "gatehouse gateway host key")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("ssh host key: %w", err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, fmt.Errorf("ssh host key: %w", err)
	}
	signer, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(path+".pub", gossh.MarshalAuthorizedKey(signer.PublicKey()), 0o644); err != nil {
		return nil, fmt.Errorf("ssh host key: %w", err)
	}
	return signer, nil
}
