package gateway

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/gateway/approval"
	"github.com/gatehouse-dev/gatehouse/gateway/auth"
	"github.com/gatehouse-dev/gatehouse/gateway/bundlestore"
	"github.com/gatehouse-dev/gatehouse/gateway/postgres"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/gateway/secrets"
)

// Gateway is an assembled gateway, ready to Run.
type Gateway struct {
	cfg   *Config
	log   *slog.Logger
	store *bundlestore.Store
	pg    *postgres.Server
	rec   *recorder.Recorder
	tls   *tls.Config
	// approvals keeps review requests; notifier tells their webhooks.
	approvals *approval.Store
	notifier  *approval.Notifier
	adminTLS  *tls.Config

	devIssuers bool

	// Ready is closed once the listeners are up (tests wait on it).
	Ready chan struct{}
	// Addrs are the bound addresses, known once Ready is closed.
	PostgresAddr, AdminAddr string
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
// certificate, and prepares the data directory. It starts nothing.
func New(cfg *Config, opts ...Option) (*Gateway, error) {
	g := &Gateway{cfg: cfg, Ready: make(chan struct{})}
	for _, o := range opts {
		o(g)
	}
	if g.log == nil {
		g.log = NewLogger(cfg.Log, os.Stderr)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("gateway: data_dir: %w", err)
	}
	kr, err := bundle.LoadKeyring(cfg.Bundle.TrustedKeys...)
	if err != nil {
		return nil, fmt.Errorf("gateway: trusted_keys: %w", err)
	}
	if cfg.Postgres.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.Postgres.TLSCert, cfg.Postgres.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("gateway: postgres TLS certificate: %w", err)
		}
		g.tls = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	authOpts := []auth.Option{auth.WithSkew(cfg.ClockSkew)}
	if g.devIssuers {
		authOpts = append(authOpts, auth.AllowDevIssuers())
	}
	g.store = bundlestore.New(kr, cfg.DataDir, bundlestore.WithLogger(g.log), bundlestore.WithAuthOptions(authOpts...))
	// Every session is recorded, signed with the gateway's recorder key
	// (created on first start; its .pub verifies recordings offline).
	recKey, err := recorder.LoadOrCreateKey(RecorderKeyPath(cfg.DataDir))
	if err != nil {
		return nil, fmt.Errorf("gateway: recorder key: %w", err)
	}
	g.rec, err = recorder.Open(RecordingsDir(cfg.DataDir), recKey)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	for _, p := range g.rec.Recovered {
		g.log.Warn("a recording could not be repaired after a crash; audit verify reports it", "detail", p)
	}
	if cfg.Admin.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.Admin.TLSCert, cfg.Admin.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("gateway: admin TLS certificate: %w", err)
		}
		g.adminTLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	var res secrets.Resolver
	g.notifier = approval.NewNotifier(res.Resolve, g.log)
	g.approvals, err = approval.Open(ApprovalsDir(cfg.DataDir), approval.WithLogger(g.log), approval.WithNotify(g.notifier.Notify))
	if err != nil {
		g.rec.Close()
		return nil, fmt.Errorf("gateway: %w", err)
	}
	g.pg = postgres.New(postgres.Config{TLS: g.tls, InsecurePlaintext: cfg.Postgres.InsecurePlaintext}, g.store,
		postgres.WithLogger(g.log), postgres.WithRecorder(g.rec), postgres.WithSecrets(res), postgres.WithApprovals(g.approvals))
	return g, nil
}

// ApprovalsDir is where a data directory keeps approval requests.
func ApprovalsDir(dataDir string) string { return filepath.Join(dataDir, "approvals") }

// Approvals is the gateway's approval store.
func (g *Gateway) Approvals() *approval.Store { return g.approvals }

// authenticate verifies an admin API caller's token with the active
// bundle's identity providers and resolves it to an identity, as a caller
// of the data path would be.
func (g *Gateway) authenticate(ctx context.Context, token string) (approval.Principal, error) {
	a := g.store.Current()
	if a == nil {
		return approval.Principal{}, errors.New("no policy bundle is loaded, so no issuer is trusted yet")
	}
	v, err := a.Verifier.Verify(ctx, token)
	if err != nil {
		return approval.Principal{}, err
	}
	id, err := a.Policy.ResolveIdentity(v.Provider, v.Token)
	if err != nil {
		return approval.Principal{}, err
	}
	return approval.Principal{Name: id.Name, Issuer: id.Issuer, Subject: id.Subject, Groups: id.Groups}, nil
}

// approverGroups are the approver groups of the active bundle's review
// rules.
func (g *Gateway) approverGroups() []string {
	a := g.store.Current()
	if a == nil {
		return nil
	}
	var out []string
	for _, p := range a.Payload.Model.Policies {
		for _, r := range p.Rules {
			if r.Approval != nil {
				out = append(out, r.Approval.Groups...)
			}
		}
	}
	return out
}

// RecordingsDir is where a data directory keeps session recordings.
func RecordingsDir(dataDir string) string { return filepath.Join(dataDir, "recordings") }

// RecorderKeyPath is the recorder's signing key in a data directory; its
// public key is beside it as recorder.pub.
func RecorderKeyPath(dataDir string) string { return filepath.Join(dataDir, "recorder.key") }

// Store is the gateway's bundle store.
func (g *Gateway) Store() *bundlestore.Store { return g.store }

// Run runs the gateway until ctx ends. It closes the recorder when it
// returns, so a Gateway runs once.
func (g *Gateway) Run(ctx context.Context) (err error) {
	defer func() {
		g.approvals.Close()
		// Serve has waited for every session to end and seal its
		// recording, or nothing was served.
		if cerr := g.rec.Close(); cerr != nil {
			g.log.Error("closing the recorder", "err", cerr)
			if err == nil {
				err = fmt.Errorf("gateway: recorder: %w", cerr)
			}
		}
	}()
	// The persisted bundle first: it sets the revision floor, so a source
	// rolled back while the gateway was down is refused.
	if a, err := g.store.LoadPersisted(); err == nil {
		g.log.Info("loaded the persisted bundle", "revision", a.Revision, "path", g.store.PersistedPath())
	} else if !errors.Is(err, os.ErrNotExist) {
		g.log.Error("persisted bundle refused", "path", g.store.PersistedPath(), "err", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	notifyDone := make(chan struct{})
	go func() {
		defer close(notifyDone)
		g.notifier.Run(ctx)
	}()
	defer func() { cancel(); <-notifyDone }()
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		g.store.WatchFile(ctx, g.cfg.Bundle.File, g.cfg.Bundle.PollInterval)
	}()
	defer func() { cancel(); <-watchDone }()

	pgLn, err := net.Listen("tcp", g.cfg.Postgres.Listen)
	if err != nil {
		return fmt.Errorf("gateway: postgres listener: %w", err)
	}
	g.PostgresAddr = pgLn.Addr().String()
	errs := make(chan error, 2)
	go func() { errs <- g.pg.Serve(ctx, pgLn) }()
	running := 1
	if g.cfg.Admin.Listen != "" {
		adLn, err := net.Listen("tcp", g.cfg.Admin.Listen)
		if err != nil {
			cancel()
			<-errs
			return fmt.Errorf("gateway: admin listener: %w", err)
		}
		g.AdminAddr = adLn.Addr().String()
		srv := &http.Server{Handler: g.adminHandler(), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			<-ctx.Done()
			shut, c := context.WithTimeout(context.Background(), 5*time.Second)
			defer c()
			_ = srv.Shutdown(shut)
		}()
		if g.adminTLS != nil {
			adLn = tls.NewListener(adLn, g.adminTLS)
		} else if host, _, _ := net.SplitHostPort(g.AdminAddr); !net.ParseIP(host).IsLoopback() {
			g.log.Warn("the admin listener serves plain HTTP on a non-loopback address: approvers' tokens cross it in the clear; set admin.tls_cert and admin.tls_key", "admin", g.AdminAddr)
		}
		go func() {
			if err := srv.Serve(adLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errs <- fmt.Errorf("gateway: admin: %w", err)
				return
			}
			errs <- nil
		}()
		running++
	}
	g.log.Info("gateway listening", "postgres", g.PostgresAddr, "tls", g.tls != nil, "admin", g.AdminAddr, "bundle", g.cfg.Bundle.File)
	close(g.Ready)
	var first error
	for i := 0; i < running; i++ {
		if err := <-errs; err != nil && first == nil {
			first = err
			cancel()
		}
	}
	return first
}

func (g *Gateway) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if g.store.Current() == nil {
			http.Error(w, "no policy bundle loaded\n", http.StatusServiceUnavailable)
			return
		}
		if err := g.rec.Healthy(); err != nil {
			// Every statement would be refused: send traffic elsewhere.
			http.Error(w, "the session recorder cannot record: "+err.Error()+"\n", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.Handle("GET /metrics", g.metricsHandler())
	api := &approval.API{Store: g.approvals, Authenticate: g.authenticate, ApproverGroups: g.approverGroups, AdminGroups: g.cfg.Admin.AdminGroups}
	api.Register(mux)
	mux.HandleFunc("GET /v1/bundle", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		status := map[string]any{
			"reloads": g.store.Stats.Reloads.Load(), "reload_failures": g.store.Stats.ReloadFailures.Load(),
		}
		if e := g.store.Stats.LastError.Load(); e != nil {
			status["last_error"] = *e
		}
		if a := g.store.Current(); a != nil {
			status["revision"], status["digest"], status["key_id"] = a.Revision, a.Digest, a.KeyID
			status["loaded_at"], status["source"] = a.LoadedAt.UTC().Format(time.RFC3339), a.Source
		}
		_ = json.NewEncoder(w).Encode(status)
	})
	return mux
}
