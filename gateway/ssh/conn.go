package ssh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/gatehouse-dev/gatehouse/bundle"
	core "github.com/gatehouse-dev/gatehouse/gateway/session"
)

// extSession is the Permissions extension that carries the admitted
// session's id from the authentication that succeeded.
const extSession = "gatehouse-session"

// errUseToken is what public-key authentication gets.
var errUseToken = errors.New("public-key authentication is not accepted")

// conn is one caller's SSH connection: its core session, its upstream, and
// its channels.
type conn struct {
	srv   *Server
	id    uint64
	log   *slog.Logger
	nc    net.Conn
	sconn *gossh.ServerConn

	// cs is the session admitted by the authentication that succeeded.
	cs        *core.Session
	toldToken atomic.Bool

	upMu sync.Mutex
	up   *upstream
	// gone is closed when the caller's connection ends.
	gone     chan struct{}
	channels atomic.Int32
	ending   atomic.Bool
	// running counts programs (exec, shell, subsystem) running, and
	// sessions the session channels open, told when the core ends the
	// connection.
	running atomic.Int32
	openMu  sync.Mutex
	open    map[*sessionChannel]struct{}

	// allowMu guards what the policy granted that the upstream uses later,
	// by opening channels towards the caller: X11 and agent channels, and
	// remote forwards (by bound "host:port"). Each such channel is
	// decided again under the bundle in force (relay.go).
	allowMu       sync.Mutex
	x11, agent    *grant
	remoteForward map[string]*grant
}

// handle runs one client connection. A panic is contained: it ends that
// connection, never the gateway. Until it authenticates the connection is
// pending (core.Pending, called at accept): wrapped is nc as Pending
// wrapped it, done ends the pending state.
func (s *Server) handle(ctx context.Context, nc, wrapped net.Conn, done func(), timeout time.Duration) {
	c := &conn{srv: s, id: s.core.NextID(), nc: nc, gone: make(chan struct{}), remoteForward: map[string]*grant{}, open: map[*sessionChannel]struct{}{}}
	c.log = s.log.With("session", c.id, "client", nc.RemoteAddr().String())
	defer nc.Close()
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("ssh session failed", "panic", r)
		}
	}()
	defer done()
	deadline := time.Now().Add(min(timeout, s.cfg.HandshakeTimeout))
	_ = nc.SetDeadline(deadline)
	sconn, chans, reqs, err := gossh.NewServerConn(wrapped, c.serverConfig(ctx))
	done()
	if err != nil {
		if c.cs != nil {
			c.cs.End("the SSH handshake failed after authentication")
		}
		c.log.Debug("ssh handshake failed", "err", err)
		return
	}
	_ = nc.SetDeadline(time.Time{})
	// CVE-2024-45337: authorise only on what the authentication that
	// succeeded returned, never on what a callback saw last.
	if c.cs == nil || sconn.Permissions == nil || sconn.Permissions.Extensions[extSession] != c.cs.ID() {
		c.log.Error("ssh authentication state does not match the connection; closed")
		if c.cs != nil {
			c.cs.End("authentication state mismatch")
		}
		sconn.Close()
		return
	}
	c.sconn = sconn
	c.log = c.cs.Log()
	// The core ends the connection without waiting for a request (token
	// expiry, a revoking bundle, the idle timeout): every open session
	// channel is told why on stderr first. A running program is not idle.
	c.cs.SetEnder(func(r *core.Refusal) {
		c.tellAll(r.Message)
		c.end(r.Message)
	}, func() bool { return c.running.Load() > 0 })
	c.log.Info("session started", "subject", c.cs.Identity().Subject, "user", sconn.User())
	c.serve(ctx, chans, reqs)
}

// serve runs the connection until the caller leaves or the gateway stops.
func (c *conn) serve(ctx context.Context, chans <-chan gossh.NewChannel, reqs <-chan *gossh.Request) {
	stop := context.AfterFunc(ctx, func() { c.end("the gateway is shutting down") })
	defer stop()
	go func() {
		_ = c.sconn.Wait()
		close(c.gone)
	}()
	go c.globalRequests(ctx, reqs)
	var wg sync.WaitGroup
	for nch := range chans {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.channel(ctx, nch)
		}()
	}
	wg.Wait()
	c.closeUpstream()
	reason := "client disconnected"
	if c.ending.Load() {
		reason = "ended by the gateway"
	}
	c.cs.End(reason)
}

// serverConfig is the connection's SSH server configuration: the token is
// the password or the keyboard-interactive answer; public keys are refused
// with a message that says so.
func (c *conn) serverConfig(ctx context.Context) *gossh.ServerConfig {
	cfg := &gossh.ServerConfig{
		Config:        gossh.Config{Ciphers: c.srv.cfg.Ciphers},
		MaxAuthTries:  6,
		ServerVersion: "SSH-2.0-Gatehouse",
		PasswordCallback: func(meta gossh.ConnMetadata, password []byte) (*gossh.Permissions, error) {
			return c.admit(ctx, meta, string(password))
		},
		KeyboardInteractiveCallback: func(meta gossh.ConnMetadata, challenge gossh.KeyboardInteractiveChallenge) (*gossh.Permissions, error) {
			token, err := readToken(challenge)
			if err != nil {
				return nil, err
			}
			return c.admit(ctx, meta, token)
		},
		PublicKeyCallback: func(meta gossh.ConnMetadata, key gossh.PublicKey) (*gossh.Permissions, error) {
			if c.toldToken.Swap(true) {
				return nil, errUseToken
			}
			return nil, &gossh.BannerError{Err: errUseToken, Message: "gatehouse: SSH keys are not accepted here. Authenticate with an OIDC access token as the password\n" +
				"(for example: ssh -o PreferredAuthentications=keyboard-interactive,password " + meta.User() + "@HOST).\n"}
		},
	}
	cfg.AddHostKey(c.srv.cfg.HostKey)
	return cfg
}

// TokenPart is the size of the parts a long token is given in. OpenSSH's
// client reads at most 1023 bytes per password or prompt (its askpass and
// terminal buffers are 1024 bytes), and an OIDC token with an RSA
// signature is often longer: so keyboard-interactive asks again while an
// answer is at least TokenPart bytes long, and the parts are joined.
// `gatehouse ssh-askpass` answers these prompts from a token.
const TokenPart = 1000

// maxTokenParts bounds the prompts (64 KB of token).
const maxTokenParts = 64

// readToken asks for the token, in parts when it is long.
func readToken(challenge gossh.KeyboardInteractiveChallenge) (string, error) {
	var token []byte
	for part := 1; part <= maxTokenParts; part++ {
		instruction, prompt := "", "Access token: "
		if part == 1 {
			instruction = "Gatehouse: authenticate with an OIDC access token."
		} else {
			prompt = fmt.Sprintf("Access token, part %d: ", part)
		}
		answers, err := challenge("", instruction, []string{prompt}, []bool{false})
		if err != nil {
			return "", err
		}
		if len(answers) != 1 {
			return "", errors.New("one answer expected")
		}
		token = append(token, answers[0]...)
		if len(answers[0]) < TokenPart {
			return string(token), nil
		}
	}
	return "", fmt.Errorf("the token is longer than %d parts", maxTokenParts)
}

// admit has the core admit the caller: the SSH user names the ssh_host
// resource, the token verifies, the identity resolves, the policy allows
// the connection, and the recording starts. A refusal is shown to the
// caller as a banner (its message holds no secret).
func (c *conn) admit(ctx context.Context, meta gossh.ConnMetadata, token string) (*gossh.Permissions, error) {
	if c.cs != nil {
		return nil, errors.New("already authenticated")
	}
	cs, ref := c.srv.core.Admit(ctx, core.Admission{
		Protocol: Protocol, Kind: bundle.KindSSHHost, Resource: meta.User(), Token: token,
		ClientAddr: meta.RemoteAddr().String(), ID: c.id, Log: c.log, Noun: "command",
	})
	if ref != nil {
		msg := ref.Message
		if ref.Code == core.UnknownResource {
			msg = fmt.Sprintf("gatehouse: %q is not an ssh_host of this gateway's bundle: use the host's name as the SSH user (ssh HOST@gateway)", meta.User())
		}
		return nil, &gossh.BannerError{Err: errors.New(ref.Code.String()), Message: msg + "\n"}
	}
	c.cs = cs
	return &gossh.Permissions{Extensions: map[string]string{extSession: cs.ID()}}, nil
}

// check runs before every new channel and request: a refusal ends the
// whole connection, after telling the caller on w (when there is one).
func (c *conn) check(ctx context.Context, stderr interface{ Write([]byte) (int, error) }) bool {
	ref := c.cs.Check(ctx)
	if ref == nil {
		return true
	}
	if stderr != nil {
		_, _ = stderr.Write([]byte(ref.Message + "\r\n"))
	}
	c.log.Warn("session ended by the gateway", "code", ref.Code.String(), "reason", ref.Message)
	c.end(ref.Message)
	return false
}

// tellAll writes a line on every open session channel's stderr.
func (c *conn) tellAll(msg string) {
	c.openMu.Lock()
	defer c.openMu.Unlock()
	for sc := range c.open {
		_, _ = sc.down.Stderr().Write([]byte("\r\n" + msg + "\r\n"))
	}
}

// end closes the connection (and with it every channel).
func (c *conn) end(reason string) {
	if !c.ending.CompareAndSwap(false, true) {
		return
	}
	c.log.Info("closing the ssh connection", "reason", reason)
	c.cs.Close()
	if c.sconn != nil {
		c.sconn.Close()
	}
	c.closeUpstream()
}
