package kubernetes

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// upstream is how the gateway reaches one cluster: client-go transports
// built from the cluster's kubeconfig or token, carrying the gateway's own
// credential. Callers' credentials never reach the cluster.
type upstream struct {
	server *url.URL
	// rt serves ordinary requests (HTTP/2 when the server offers it);
	// upgrade serves exec, attach and port-forward (HTTP/1.1 only: an
	// upgrade cannot ride HTTP/2).
	rt, upgrade http.RoundTripper
	transports  []*http.Transport
}

// upstreams caches one upstream per cluster definition: a new bundle that
// changes a cluster's server or credential makes a new one.
type upstreams struct {
	srv *Server
	mu  sync.Mutex
	by  map[string]*cachedUpstream
}

type cachedUpstream struct {
	spec string // the cluster's definition, as JSON
	u    *upstream
}

func (us *upstreams) init(s *Server) { us.srv, us.by = s, map[string]*cachedUpstream{} }

// get returns the upstream of a cluster as the bundle defines it now.
func (us *upstreams) get(c *bundle.KubernetesCluster) (*upstream, error) {
	spec, _ := json.Marshal(c)
	us.mu.Lock()
	defer us.mu.Unlock()
	if cu, ok := us.by[c.Name]; ok && cu.spec == string(spec) {
		return cu.u, nil
	}
	u, err := us.srv.newUpstream(c)
	if err != nil {
		return nil, err
	}
	if old, ok := us.by[c.Name]; ok {
		// Requests in flight keep their connections; idle ones go.
		old.u.closeIdle()
	}
	us.by[c.Name] = &cachedUpstream{spec: string(spec), u: u}
	return u, nil
}

func (us *upstreams) close() {
	us.mu.Lock()
	defer us.mu.Unlock()
	for _, cu := range us.by {
		cu.u.closeIdle()
	}
}

func (u *upstream) closeIdle() {
	for _, t := range u.transports {
		t.CloseIdleConnections()
	}
}

// restConfig is the client-go configuration of a cluster: its kubeconfig
// (a secret reference), or its server, token (a secret reference) and CA
// file. The error names the cluster and what is wrong, never a secret.
func (s *Server) restConfig(c *bundle.KubernetesCluster) (*rest.Config, error) {
	var cfg *rest.Config
	if c.Kubeconfig != "" {
		raw, err := s.secrets.Resolve(c.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("cluster %q: kubeconfig: %w", c.Name, err)
		}
		cfg, err = clientcmd.RESTConfigFromKubeConfig([]byte(raw))
		if err != nil {
			return nil, fmt.Errorf("cluster %q: the kubeconfig %s does not load: %v", c.Name, c.Kubeconfig, err)
		}
	} else {
		cfg = &rest.Config{}
	}
	if c.Server != "" {
		cfg.Host = c.Server
	}
	if c.Token != "" {
		tok, err := s.secrets.Resolve(c.Token)
		if err != nil {
			return nil, fmt.Errorf("cluster %q: token: %w", c.Name, err)
		}
		cfg.BearerToken, cfg.BearerTokenFile = tok, ""
	}
	if c.CAFile != "" {
		cfg.TLSClientConfig.CAFile, cfg.TLSClientConfig.CAData = c.CAFile, nil
	}
	if cfg.Host == "" {
		return nil, fmt.Errorf("cluster %q has no server: set server, or a kubeconfig that names one", c.Name)
	}
	// The gateway's own identity upstream: impersonation, when on, is set
	// per request from the verified caller, never from a kubeconfig.
	cfg.Impersonate = rest.ImpersonationConfig{}
	cfg.UserAgent = "gatehouse"
	return cfg, nil
}

// newUpstream builds a cluster's transports.
func (s *Server) newUpstream(c *bundle.KubernetesCluster) (*upstream, error) {
	cfg, err := s.restConfig(c)
	if err != nil {
		return nil, err
	}
	server, err := url.Parse(cfg.Host)
	if err != nil || server.Host == "" {
		return nil, fmt.Errorf("cluster %q: server %q is not a URL", c.Name, cfg.Host)
	}
	if server.Scheme != "https" {
		return nil, fmt.Errorf("cluster %q: server %q is not https: the gateway's credential would cross the network in the clear", c.Name, cfg.Host)
	}
	tlsCfg, err := rest.TLSConfigFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("cluster %q: TLS: %v", c.Name, err)
	}
	if tlsCfg == nil {
		return nil, errors.New("cluster " + c.Name + ": no TLS configuration")
	}
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	base := &http.Transport{
		Proxy: http.ProxyFromEnvironment, DialContext: dialer.DialContext, TLSClientConfig: tlsCfg.Clone(),
		ForceAttemptHTTP2: true, MaxIdleConns: 256, MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second, ExpectContinueTimeout: time.Second,
		// Responses are rewritten (masks) from JSON: the transport must
		// not ask for compression on the caller's behalf and hide it.
		DisableCompression: true,
	}
	h1 := tlsCfg.Clone()
	h1.NextProtos = []string{"http/1.1"}
	up := &http.Transport{
		Proxy: http.ProxyFromEnvironment, DialContext: dialer.DialContext, TLSClientConfig: h1,
		TLSHandshakeTimeout: 10 * time.Second, DisableCompression: true, MaxIdleConnsPerHost: -1,
	}
	rt, err := rest.HTTPWrappersForConfig(cfg, base)
	if err != nil {
		return nil, fmt.Errorf("cluster %q: %v", c.Name, err)
	}
	urt, err := rest.HTTPWrappersForConfig(cfg, up)
	if err != nil {
		return nil, fmt.Errorf("cluster %q: %v", c.Name, err)
	}
	return &upstream{server: server, rt: rt, upgrade: urt, transports: []*http.Transport{base, up}}, nil
}
