// Package kubernetes is the gateway's Kubernetes API wire: an HTTPS
// http.Handler in front of kube-apiservers. A caller runs an unmodified
// kubectl (or any client-go program) against
//
//	https://GATEWAY/k8s/CLUSTER
//
// with an OIDC access token as its bearer token (`gatehouse kubeconfig`
// writes such a kubeconfig). The cluster is chosen by the path prefix: one
// listener, one certificate, any number of clusters, and no DNS names to
// manage.
//
// Every request goes through the shared core (package session): the token
// is verified and resolved to an identity, the request's attributes (verb,
// group, resource, subresource, namespace, name, parsed with the API
// server's own RequestInfoFactory) are decided with CEL, the request is
// recorded before it is forwarded, and it reaches the API server with the
// cluster credential only the gateway holds (client-go's transport), never
// the caller's token. A denial is a Kubernetes Status 403 that kubectl
// prints. Masks on Kubernetes object fields (secrets/data) rewrite get,
// list and watch responses; exec and attach run over WebSocket and their
// output is recorded as terminal frames; review rules hold a request for
// approvers.
package kubernetes

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gatehouse-dev/gatehouse/gateway/secrets"
	core "github.com/gatehouse-dev/gatehouse/gateway/session"
)

// Protocol is the protocol's name in metrics and recordings.
const Protocol = "kubernetes"

// PathPrefix is where a cluster's API starts: /k8s/NAME/api/v1/...
const PathPrefix = "/k8s/"

// Config configures the Kubernetes proxy.
type Config struct {
	// TLS is the listener's certificate. Required: callers send bearer
	// tokens.
	TLS *tls.Config
	// RecordLimit bounds the bytes of exec and attach output recorded
	// per stream; beyond it they are counted, not kept. Default 16 MiB.
	RecordLimit int64
	// MaxBody bounds a response body the gateway rewrites (a masked
	// list). Default 64 MiB: larger lists must be read in chunks (kubectl
	// does, with limit and continue).
	MaxBody int64
	// RecheckEvery is how often a long watch or exec is re-checked (the
	// token's expiry and the bundle in force). Default 1s.
	RecheckEvery time.Duration
}

// Server is the Kubernetes proxy.
type Server struct {
	cfg      Config
	core     *core.Core
	secrets  secrets.Resolver
	log      *slog.Logger
	sessions sessions
	clusters upstreams
	wg       sync.WaitGroup
	// base is cancelled when Serve returns: long requests end with it.
	base   context.Context
	cancel context.CancelFunc
}

// Option configures a Server.
type Option func(*Server)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(s *Server) { s.log = l } }

// WithSecrets sets the resolver of cluster credentials.
func WithSecrets(r secrets.Resolver) Option { return func(s *Server) { s.secrets = r } }

// New makes a Kubernetes proxy on the gateway's enforcement core.
func New(cfg Config, c *core.Core, opts ...Option) (*Server, error) {
	if cfg.TLS == nil {
		return nil, errors.New("kubernetes: a TLS certificate is required: callers send bearer tokens")
	}
	if cfg.RecordLimit == 0 {
		cfg.RecordLimit = 16 << 20
	}
	if cfg.MaxBody == 0 {
		cfg.MaxBody = 64 << 20
	}
	if cfg.RecheckEvery == 0 {
		cfg.RecheckEvery = time.Second
	}
	s := &Server{cfg: cfg, core: c, log: slog.Default()}
	for _, o := range opts {
		o(s)
	}
	s.sessions.init()
	s.clusters.init(s)
	s.base, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// Kind is the protocol the server speaks.
func (s *Server) Kind() string { return Protocol }

// Serve serves HTTPS until ctx ends, then ends the open sessions and
// returns once every recording is sealed.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	tlsCfg := s.cfg.TLS.Clone()
	// HTTP/1.1 only: exec and attach upgrade the connection, which HTTP/2
	// cannot, and kubectl's requests are fine on keep-alive connections.
	tlsCfg.NextProtos = []string{"http/1.1"}
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return s.base },
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-ctx.Done():
		case <-s.base.Done():
			return
		}
		s.cancel()
		shut, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		_ = srv.Shutdown(shut)
	}()
	err := srv.Serve(tls.NewListener(ln, tlsCfg))
	s.cancel()
	<-done
	s.wg.Wait()
	s.sessions.endAll("the gateway is shutting down")
	s.clusters.close()
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("kubernetes: %w", err)
	}
	return nil
}

// ServeHTTP handles one API request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.wg.Add(1)
	defer s.wg.Done()
	name, rest, ok := splitCluster(r.URL.Path)
	if !ok {
		writeStatus(w, http.StatusNotFound, "NotFound",
			fmt.Sprintf("gatehouse: no cluster in the path %q: the API of cluster NAME is at %sNAME/ (run `gatehouse kubeconfig --resource NAME`)", r.URL.Path, PathPrefix))
		return
	}
	// Before anything reads the request: no header the caller sent may
	// speak for an identity upstream.
	token := bearer(r.Header)
	stripIdentityHeaders(r.Header)
	if token == "" {
		writeStatus(w, http.StatusUnauthorized, "Unauthorized", "gatehouse: no bearer token: send an OIDC access token in Authorization: Bearer (gatehouse kubeconfig sets this up)")
		return
	}
	s.serve(w, r, name, rest, token)
}

// splitCluster splits /k8s/NAME/REST into NAME and /REST.
func splitCluster(path string) (name, rest string, ok bool) {
	after, ok := strings.CutPrefix(path, PathPrefix)
	if !ok {
		return "", "", false
	}
	name, rest, _ = strings.Cut(after, "/")
	if name == "" {
		return "", "", false
	}
	return name, "/" + rest, true
}
