package ssh

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/gateway/approval"
	"github.com/gatehouse-dev/gatehouse/gateway/auth"
	"github.com/gatehouse-dev/gatehouse/gateway/bundlestore"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/gateway/secrets"
	core "github.com/gatehouse-dev/gatehouse/gateway/session"
	"github.com/gatehouse-dev/gatehouse/hclconfig"
	"github.com/gatehouse-dev/gatehouse/internal/clock"
	"github.com/gatehouse-dev/gatehouse/internal/oidctest"
	"github.com/gatehouse-dev/gatehouse/internal/sshd"
	"github.com/gatehouse-dev/gatehouse/internal/sshdtest"
)

// policyHCL is the tests' policy: ops may connect, run diagnostics, open a
// shell, use sftp, and run `echo approved` once a second ops member
// approves; dev may connect and run uptime only; nobody forwards ports.
func policyHCL(issuer string, up *sshd.Server, hostKey, user, credential string) string {
	return fmt.Sprintf(`
identity_provider "corp" {
  issuer    = %q
  audiences = ["gatehouse"]
}

identity "ops" {
  provider = "corp"
  subject  = "ops"
  groups   = ["ops"]
}

identity "dev" {
  provider = "corp"
  subject  = "dev"
}

ssh_host "bastion" {
  address  = %q
  user     = %q
  host_key = %q
  %s
}

policy "everyone" {
  resources  = ["bastion"]
  identities = ["ops", "dev"]

  rule "connect" {
    effect = "allow"
    on     = ["connect"]
    reason = "ops and dev may connect"
  }

  rule "diagnostics" {
    effect = "allow"
    on     = ["exec"]
    when   = "request.simple && request.argv[0] in ['uptime', 'echo', 'cat', 'printf', 'sleep']"
    reason = "diagnostics"
  }

  rule "no-rm" {
    effect = "deny"
    on     = ["exec"]
    when   = "request.command.contains('rm ')"
    reason = "nobody removes files through the bastion"
  }

  rule "no-forwarding" {
    effect = "deny"
    on     = ["forward", "remote_forward"]
    reason = "port forwarding through the bastion is not allowed"
  }
}

policy "ops" {
  resources  = ["bastion"]
  identities = ["ops"]

  rule "shell" {
    effect = "allow"
    on     = ["shell", "pty", "subsystem", "env"]
    reason = "ops may use a shell and sftp"
  }

  rule "approved" {
    effect = "review"
    on     = ["exec"]
    when   = "request.command.startsWith('echo approved')"
    reason = "this needs a second pair of eyes"
    approval {
      groups  = ["ops"]
      timeout = "1m"
    }
  }
}
`, issuer, up.Addr, user, hostKey, credential)
}

type env struct {
	up      *sshd.Server
	issuer  *oidctest.Issuer
	key     ed25519.PrivateKey
	store   *bundlestore.Store
	core    *core.Core
	srv     *Server
	addr    string
	rec     *recorder.Recorder
	recKeys bundle.Keyring
	recDir  string
	apv     *approval.FileStore
	clock   clock.Clock
	rev     atomic.Uint64
	logs    *syncWriter
	hostKey string
	// user and credential are the ssh_host's login (default: the sshd
	// user, by key).
	user, credential string
}

func startEnv(t *testing.T) *env { return startEnvClock(t, clock.Real) }

func startEnvClock(t *testing.T, clk clock.Clock, opts ...sshd.Option) *env {
	t.Helper()
	e := &env{up: sshdtest.Start(t, opts...), issuer: oidctest.Start(t), clock: clk, logs: &syncWriter{}}
	e.hostKey = e.up.HostKey
	e.user, e.credential = e.up.User, `private_key = "env:BASTION_KEY"`
	if e.up.PasswordUser != "" {
		e.user, e.credential = e.up.PasswordUser, `password = "env:BASTION_PASSWORD"`
	}
	var err error
	if e.key, err = bundle.GenerateKey(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("gateway log:\n%s", e.logs.String())
		}
	})
	log := slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e.store = bundlestore.New(bundle.NewKeyring(e.key.Public().(ed25519.PublicKey)), "", bundlestore.WithLogger(log),
		bundlestore.WithAuthOptions(auth.WithClock(clk.Now)))
	e.publish(t)
	recKey, _ := bundle.GenerateKey()
	e.recDir = t.TempDir()
	if e.rec, err = recorder.Open(e.recDir, recKey); err != nil {
		t.Fatal(err)
	}
	e.recKeys = bundle.NewKeyring(recKey.Public().(ed25519.PublicKey))
	if e.apv, err = approval.Open(t.TempDir(), approval.WithClock(clk)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.apv.Close() })
	e.core = core.New(e.store, core.WithRecorder(e.rec), core.WithApprovals(e.apv), core.WithLogger(log), core.WithClock(clk))
	hostKey, err := LoadOrCreateHostKey(t.TempDir() + "/host_key")
	if err != nil {
		t.Fatal(err)
	}
	res := secrets.Resolver{Getenv: func(name string) (string, bool) {
		switch name {
		case "BASTION_KEY":
			return string(e.up.ClientKey), true
		case "BASTION_PASSWORD":
			return e.up.Password, e.up.Password != ""
		}
		return "", false
	}}
	if e.srv, err = New(Config{HostKey: hostKey, UpstreamTimeout: 5 * time.Second}, e.core, WithLogger(log), WithSecrets(res)); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		e.rec.Close()
	})
	return e
}

// publish signs the policy (with the env's pinned host key) and activates
// it at the next revision.
func (e *env) publish(t *testing.T, extra ...string) {
	t.Helper()
	e.publishSource(t, policyHCL(e.issuer.URL, e.up, e.hostKey, e.user, e.credential)+strings.Join(extra, "\n"))
}

// publishSource signs the HCL src and applies it at the next revision.
func (e *env) publishSource(t *testing.T, src string) {
	t.Helper()
	res, diags := hclconfig.LoadFiles(map[string][]byte{"p.hcl": []byte(src)})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	p, err := bundle.NewPayload(*res.Model, bundle.BuildOptions{Revision: e.rev.Add(1), CreatedAt: time.Unix(1764000000, 0), Compiler: "test"})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := bundle.EncodePayload(p)
	data, _ := bundle.Sign(raw, e.key)
	if _, err := e.store.Apply(data, "test"); err != nil {
		t.Fatal(err)
	}
}

// dial connects to the gateway as subject, with its token as the password.
func (e *env) dial(t *testing.T, subject string) *gossh.Client {
	t.Helper()
	c, err := e.dialToken(e.issuer.Token(t, subject, "gatehouse"), "bastion")
	if err != nil {
		t.Fatalf("dial as %s: %v", subject, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (e *env) dialToken(token, user string, methods ...gossh.AuthMethod) (*gossh.Client, error) {
	if len(methods) == 0 {
		methods = []gossh.AuthMethod{gossh.Password(token)}
	}
	return gossh.Dial("tcp", e.addr, &gossh.ClientConfig{User: user, Auth: methods,
		HostKeyCallback: gossh.FixedHostKey(e.srv.cfg.HostKey.PublicKey()), Timeout: 5 * time.Second})
}

// run execs cmd on a new session and returns stdout, stderr and the exit
// status.
func run(t *testing.T, c *gossh.Client, cmd string) (string, string, int) {
	t.Helper()
	s, err := c.NewSession()
	if err != nil {
		t.Fatalf("new session for %q: %v", cmd, err)
	}
	defer s.Close()
	var out, errb bytes.Buffer
	s.Stdout, s.Stderr = &out, &errb
	err = s.Run(cmd)
	code := 0
	if ee, ok := err.(*gossh.ExitError); ok {
		code = ee.ExitStatus()
	} else if err != nil {
		t.Fatalf("run %q: %v", cmd, err)
	}
	return out.String(), errb.String(), code
}

// sessions are the recordings, read.
func (e *env) recordings(t *testing.T) map[string][]recorder.Event {
	t.Helper()
	ss, err := recorder.List(e.recDir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]recorder.Event{}
	for _, s := range ss {
		evs, err := recorder.ReadEvents(s.Path)
		if err != nil {
			t.Fatal(err)
		}
		out[s.Path] = evs
	}
	return out
}

type syncWriter struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}
