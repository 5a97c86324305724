package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/gateway/approval"
	"github.com/gatehouse-dev/gatehouse/gateway/auth"
	"github.com/gatehouse-dev/gatehouse/gateway/bundlestore"
	"github.com/gatehouse-dev/gatehouse/gateway/kubernetes"
	"github.com/gatehouse-dev/gatehouse/gateway/postgres"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/gateway/recordstore"
	"github.com/gatehouse-dev/gatehouse/gateway/secrets"
	"github.com/gatehouse-dev/gatehouse/gateway/session"
	"github.com/gatehouse-dev/gatehouse/gateway/sessionindex"
	"github.com/gatehouse-dev/gatehouse/gateway/ssh"
	"github.com/gatehouse-dev/gatehouse/internal/clock"
)

// Proxy is one protocol's listener: a wire package on the shared
// enforcement core. Serve accepts connections until ctx ends and returns
// once every session it started has ended and its recording is sealed.
type Proxy interface {
	Kind() string
	Serve(ctx context.Context, ln net.Listener) error
}

// listener is a proxy with the address it listens on.
type listener struct {
	proxy Proxy
	addr  string
}

// Gateway is an assembled gateway, ready to Run.
type Gateway struct {
	cfg   *Config
	log   *slog.Logger
	clock clock.Clock
	store *bundlestore.Store
	core  *session.Core
	rec   *recorder.Recorder
	// uploader copies sealed recordings to recorder.bucket; nil without.
	uploader *recordstore.Uploader
	// index is the session index in the state database, which uploader
	// writes; nil without a bucket and a state database.
	index *sessionindex.Index
	// approvals keeps review requests (files in the data directory, or
	// the state block's PostgreSQL); notifier tells their webhooks.
	approvals approval.Store
	notifier  *approval.Notifier
	adminTLS  *tls.Config
	upstreams upstreamProbe
	listeners []listener

	devIssuers bool

	// cancels relays PostgreSQL CancelRequests between replicas through
	// the state database; nil without one.
	cancels *cancelRelay

	// floor is the bundle revision floor in the state database; nil
	// without one.
	floor bundlestore.Floor

	// bundleURL is the bundle's URL source; nil for a file.
	bundleURL *bundlestore.URLSource

	// Ready is closed once the listeners are up (tests wait on it).
	Ready chan struct{}
	// AdminAddr is the admin listener's bound address, known once Ready
	// is closed.
	AdminAddr string

	mu    sync.Mutex
	addrs map[string]string
}

// Option configures a Gateway.
type Option func(*Gateway)

// WithLogger sets the logger (default: from the config's log block, to
// stderr).
func WithLogger(l *slog.Logger) Option { return func(g *Gateway) { g.log = l } }

// WithDevIssuers accepts tokens from `gatehouse dev`'s development issuer,
// which signs tokens for anyone who asks. Only gatehouse dev sets it; every
// other gateway refuses them.
func WithDevIssuers() Option { return func(g *Gateway) { g.devIssuers = true } }

// WithClock sets the time source of token expiry and approvals (tests).
func WithClock(c clock.Clock) Option { return func(g *Gateway) { g.clock = c } }

// NewLogger makes the logger a config asks for.
func NewLogger(c LogConfig, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// New assembles a gateway: it loads the trusted keys and the TLS
// certificates, prepares the data directory, the recorder and the
// approvals, and builds a proxy for every protocol the config serves. It
// starts nothing.
func New(cfg *Config, opts ...Option) (*Gateway, error) {
	g := &Gateway{cfg: cfg, clock: clock.Real, Ready: make(chan struct{}), addrs: map[string]string{}}
	for _, o := range opts {
		o(g)
	}
	if g.log == nil {
		g.log = NewLogger(cfg.Log, os.Stderr)
	}
	if !cfg.servesAProtocol() {
		return nil, errors.New("gateway: no protocol listener is configured (add a postgres, ssh or kubernetes block)")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("gateway: data_dir: %w", err)
	}
	kr, err := bundle.LoadKeyring(cfg.Bundle.TrustedKeys...)
	if err != nil {
		return nil, fmt.Errorf("gateway: trusted_keys: %w", err)
	}
	authOpts := []auth.Option{auth.WithSkew(cfg.ClockSkew), auth.WithClock(g.clock.Now)}
	if g.devIssuers {
		authOpts = append(authOpts, auth.AllowDevIssuers())
	}
	// From here on, a failure closes what was opened.
	built := false
	defer func() {
		if !built && g.floor != nil {
			g.floor.Close()
		}
	}()
	storeOpts := []bundlestore.Option{bundlestore.WithLogger(g.log), bundlestore.WithAuthOptions(authOpts...)}
	if ref := cfg.State.Postgres; ref != "" {
		// Replicas that share a state database share the revision floor
		// too: one with an empty data directory still refuses a bundle
		// older than what any of them activated.
		floor, err := openFloor(ref, secrets.Resolver{})
		if err != nil {
			return nil, fmt.Errorf("gateway: %w", err)
		}
		g.floor = floor
		storeOpts = append(storeOpts, bundlestore.WithFloor(floor))
	}
	g.store = bundlestore.New(kr, cfg.DataDir, storeOpts...)
	if cfg.Bundle.URL != "" {
		if g.bundleURL, err = bundleURLSource(cfg.Bundle, secrets.Resolver{}); err != nil {
			return nil, fmt.Errorf("gateway: bundle: %w", err)
		}
	}
	if cfg.Admin.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.Admin.TLSCert, cfg.Admin.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("gateway: admin TLS certificate: %w", err)
		}
		g.adminTLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	// Every session is recorded, sealed with the recorder key (a file,
	// by default DATA_DIR/recorder.key, or a PKCS#11 token) and named in
	// the recordings' ledger (recording.go).
	// With a bucket, sealed recordings are uploaded; with a state database
	// too, the session index catalogues them (recordingbucket.go).
	var hooks []recorder.Option
	if cfg.Recorder.Bucket != nil {
		// g.uploader is set below, before any session starts.
		hooks = append(hooks, recorder.WithOnSeal(func(id string) { g.uploader.Sealed(id) }))
		if cfg.State.Postgres != "" {
			hooks = append(hooks, recorder.WithOnStart(func(id string, ev recorder.Event) { g.uploader.Started(id, ev) }))
		}
	}
	g.rec, err = openRecorder(cfg, g.log, hooks...)
	if err != nil {
		return nil, err
	}
	defer func() {
		if built {
			return
		}
		if g.approvals != nil {
			g.approvals.Close()
		}
		if g.index != nil {
			g.index.Close()
		}
		g.rec.Close()
	}()
	if cfg.Recorder.Bucket != nil {
		if g.uploader, g.index, err = openUploader(cfg, g.rec, g.log); err != nil {
			return nil, fmt.Errorf("gateway: recorder.bucket: %w", err)
		}
	}
	for _, p := range g.rec.Recovered {
		g.log.Warn("a recording could not be repaired after a crash; audit verify reports it", "detail", p)
	}
	var res secrets.Resolver
	g.notifier = approval.NewNotifier(res.Resolve, g.log)
	if ref := cfg.State.Postgres; ref != "" && cfg.Postgres != nil {
		dsn, err := res.Resolve(ref)
		if err != nil {
			return nil, fmt.Errorf("gateway: state.postgres: %w", err)
		}
		g.cancels = newCancelRelay(dsn, g.log)
	}
	approvals, err := g.openApprovals(res)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	g.approvals = approvals
	g.core = session.New(g.store, session.WithRecorder(g.rec), session.WithApprovals(g.approvals),
		session.WithClock(g.clock), session.WithLogger(g.log))
	if err := g.buildProxies(res); err != nil {
		return nil, err
	}
	built = true
	return g, nil
}

// buildProxies makes the proxy of every protocol block in the config.
func (g *Gateway) buildProxies(res secrets.Resolver) error {
	if pg := g.cfg.Postgres; pg != nil {
		var tlsCfg *tls.Config
		if pg.TLSCert != "" {
			cert, err := tls.LoadX509KeyPair(pg.TLSCert, pg.TLSKey)
			if err != nil {
				return fmt.Errorf("gateway: postgres TLS certificate: %w", err)
			}
			tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		}
		g.core.SetLimits(postgres.Protocol, pg.Limits)
		opts := []postgres.Option{postgres.WithLogger(g.log), postgres.WithSecrets(res)}
		if g.cancels != nil {
			opts = append(opts, postgres.WithCancelRelay(g.cancels.Publish))
		}
		p := postgres.New(postgres.Config{TLS: tlsCfg, InsecurePlaintext: pg.InsecurePlaintext,
			BeforeResponse: g.cfg.Recorder.Durability == DurabilityBeforeResponse}, g.core, opts...)
		if g.cancels != nil {
			g.cancels.local = p.CancelLocal
		}
		g.listeners = append(g.listeners, listener{proxy: p, addr: pg.Listen})
	}
	if sc := g.cfg.SSH; sc != nil {
		path := sc.HostKey
		if path == "" {
			path = SSHHostKeyPath(g.cfg.DataDir)
		}
		key, err := ssh.LoadOrCreateHostKey(path)
		if err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
		g.core.SetLimits(ssh.Protocol, sc.Limits)
		p, err := ssh.New(ssh.Config{HostKey: key, RecordShellInput: sc.RecordShellInput, RecordLimit: sc.RecordLimit}, g.core,
			ssh.WithLogger(g.log), ssh.WithSecrets(res))
		if err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
		g.log.Info("ssh host key", "fingerprint", p.Fingerprint(), "path", path)
		g.listeners = append(g.listeners, listener{proxy: p, addr: sc.Listen})
	}
	if kc := g.cfg.Kubernetes; kc != nil {
		certFile, keyFile := kc.TLSCert, kc.TLSKey
		if certFile == "" {
			var err error
			certFile, keyFile, err = EnsureKubernetesTLS(g.cfg.DataDir)
			if err != nil {
				return fmt.Errorf("gateway: %w", err)
			}
		}
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return fmt.Errorf("gateway: kubernetes TLS certificate: %w", err)
		}
		g.core.SetLimits(kubernetes.Protocol, kc.Limits)
		p, err := kubernetes.New(kubernetes.Config{TLS: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
			RecordLimit: kc.RecordLimit}, g.core, kubernetes.WithLogger(g.log), kubernetes.WithSecrets(res))
		if err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
		g.log.Info("kubernetes listener certificate", "cert", certFile)
		g.listeners = append(g.listeners, listener{proxy: p, addr: kc.Listen})
	}
	return nil
}

// SSHHostKeyPath is the gateway's SSH host key in a data directory.
func SSHHostKeyPath(dataDir string) string { return filepath.Join(dataDir, "ssh_host_ed25519_key") }

// ApprovalsDir is where a data directory keeps approval requests.
func ApprovalsDir(dataDir string) string { return filepath.Join(dataDir, "approvals") }

// RecordingsDir is where a data directory keeps session recordings.
func RecordingsDir(dataDir string) string { return filepath.Join(dataDir, "recordings") }

// RecorderKeyPath is the recorder's signing key in a data directory; its
// public key is beside it as recorder.pub.
func RecorderKeyPath(dataDir string) string { return filepath.Join(dataDir, "recorder.key") }

// Approvals is the gateway's approval store.
func (g *Gateway) Approvals() approval.Store { return g.approvals }

// RecorderStats are the recorder's counters (the metrics read them).
func (g *Gateway) RecorderStats() *recorder.Stats { return &g.rec.Stats }

// Store is the gateway's bundle store.
func (g *Gateway) Store() *bundlestore.Store { return g.store }

// Core is the gateway's enforcement core.
func (g *Gateway) Core() *session.Core { return g.core }

// Addr is the address a protocol's listener is bound to ("" when the
// gateway does not serve it), known once Ready is closed.
func (g *Gateway) Addr(protocol string) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.addrs[protocol]
}

// Run runs the gateway until ctx ends. It closes the recorder when it
// returns, so a Gateway runs once. Every protocol listener is bound before
// any serves: if one cannot be, those already bound are closed and Run
// fails. If one proxy fails while serving, the others are stopped too.
func (g *Gateway) Run(ctx context.Context) (err error) {
	defer func() {
		g.approvals.Close()
		// Every proxy has waited for its sessions to end and seal their
		// recordings, or nothing was served.
		if cerr := g.rec.Close(); cerr != nil {
			g.log.Error("closing the recorder", "err", cerr)
			if err == nil {
				err = fmt.Errorf("gateway: recorder: %w", cerr)
			}
		}
		if g.uploader != nil {
			flushUploads(g.uploader, g.log)
		}
		if g.index != nil {
			g.index.Close()
		}
		if g.floor != nil {
			g.floor.Close()
		}
	}()
	// The persisted bundle first: it sets the revision floor, so a source
	// rolled back while the gateway was down is refused.
	if a, err := g.store.LoadPersisted(); err == nil {
		g.log.Info("loaded the persisted bundle", "revision", a.Revision, "path", g.store.PersistedPath())
	} else if !errors.Is(err, os.ErrNotExist) {
		g.log.Error("persisted bundle refused", "path", g.store.PersistedPath(), "err", err)
	}
	lns, err := g.bind()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var bg sync.WaitGroup
	defer func() { cancel(); bg.Wait() }()
	bg.Add(2)
	go func() { defer bg.Done(); g.notifier.Run(ctx) }()
	go func() { defer bg.Done(); g.watchBundle(ctx) }()
	if g.uploader != nil {
		bg.Add(1)
		go func() { defer bg.Done(); g.uploader.Run(ctx) }()
	}
	if g.cancels != nil {
		bg.Add(1)
		go func() { defer bg.Done(); g.cancels.Run(ctx) }()
	}

	errs := make(chan error, len(lns)+1)
	for i, l := range g.listeners {
		go func() {
			if err := l.proxy.Serve(ctx, lns[i]); err != nil {
				errs <- fmt.Errorf("gateway: %s: %w", l.proxy.Kind(), err)
				return
			}
			errs <- nil
		}()
	}
	running := len(g.listeners)
	if admin := lns[len(g.listeners):]; len(admin) == 1 {
		running++
		go func() { errs <- g.serveAdmin(ctx, admin[0]) }()
	}
	attrs := []any{"tls_admin", g.adminTLS != nil, "admin", g.AdminAddr, "bundle", g.cfg.Bundle.where()}
	for _, l := range g.listeners {
		attrs = append(attrs, l.proxy.Kind(), g.Addr(l.proxy.Kind()))
	}
	g.log.Info("gateway listening", attrs...)
	close(g.Ready)
	var first error
	for range running {
		if err := <-errs; err != nil && first == nil {
			first = err
			cancel()
		}
	}
	return first
}

// bind opens every listener, the admin one last. When one fails, those
// already open are closed: a gateway serves all it was configured to
// serve, or nothing.
func (g *Gateway) bind() ([]net.Listener, error) {
	var lns []net.Listener
	fail := func(err error) ([]net.Listener, error) {
		for _, ln := range lns {
			ln.Close()
		}
		return nil, err
	}
	for _, l := range g.listeners {
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			return fail(fmt.Errorf("gateway: %s listener: %w", l.proxy.Kind(), err))
		}
		lns = append(lns, ln)
		g.mu.Lock()
		g.addrs[l.proxy.Kind()] = ln.Addr().String()
		g.mu.Unlock()
	}
	if g.cfg.Admin.Listen != "" {
		ln, err := net.Listen("tcp", g.cfg.Admin.Listen)
		if err != nil {
			return fail(fmt.Errorf("gateway: admin listener: %w", err))
		}
		g.AdminAddr = ln.Addr().String()
		lns = append(lns, ln)
	}
	return lns, nil
}

// serveAdmin serves the admin API until ctx ends.
func (g *Gateway) serveAdmin(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: g.adminHandler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shut, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		_ = srv.Shutdown(shut)
	}()
	if g.adminTLS != nil {
		ln = tls.NewListener(ln, g.adminTLS)
	} else if host, _, _ := net.SplitHostPort(g.AdminAddr); !net.ParseIP(host).IsLoopback() {
		// The config refuses this unless admin.insecure_plaintext says so.
		g.log.Warn("INSECURE: the admin listener serves plain HTTP on a non-loopback address (admin.insecure_plaintext = true): approvers' bearer tokens cross it in the clear; set admin.tls_cert and admin.tls_key", "admin", g.AdminAddr)
	}
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("gateway: admin: %w", err)
	}
	return nil
}
