package devenv

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/gatehouse-dev/gatehouse/gateway/auth"
)

// IssuerPathPrefix starts the path of every development issuer, so that an
// `iss` minted here says what it is wherever it ends up; a gateway other
// than gatehouse dev's refuses such issuers (and the gatehouse_dev claim
// every token here carries).
const IssuerPathPrefix = auth.DevIssuerMarker

// MaxTokenTTL bounds the lifetime of a minted token.
const MaxTokenTTL = 12 * time.Hour

// Issuer is the DEVELOPMENT OIDC issuer of `gatehouse dev`: discovery, a
// JWKS and a token endpoint that signs whatever subject and claims it is
// asked for, with no authentication at all. That is what makes it useful
// for trying policies and what makes it unfit for anything else, so it only
// listens on a loopback address and every issuer URL it serves carries
// IssuerPathPrefix.
//
// One Issuer serves one issuer URL per identity provider name, at
// http://127.0.0.1:PORT/DEV-ONLY-NOT-FOR-PRODUCTION/NAME, so that policies
// with several providers keep them apart.
type Issuer struct {
	base string // http://127.0.0.1:PORT
	key  *ecdsa.PrivateKey
	kid  string
	srv  *http.Server
	ln   net.Listener

	mu        sync.Mutex
	audiences map[string]string // provider name -> the audience its tokens carry
}

// StartIssuer listens on addr, which must be a loopback address
// ("127.0.0.1:0" for a random port).
func StartIssuer(addr string) (*Issuer, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dev issuer: address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("dev issuer: %q is not a loopback IP address; the development issuer signs tokens for anyone who asks and never listens elsewhere", addr)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("dev issuer: key: %w", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dev issuer: %w", err)
	}
	is := &Issuer{
		base:      "http://" + ln.Addr().String(),
		key:       key,
		kid:       "dev-" + rand.Text()[:8],
		ln:        ln,
		audiences: map[string]string{},
	}
	is.srv = &http.Server{Handler: is.handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = is.srv.Serve(ln) }()
	return is, nil
}

// Close stops the issuer.
func (is *Issuer) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return is.srv.Shutdown(ctx)
}

// AddProvider registers a provider name and returns its issuer URL. Its
// tokens carry audience aud.
func (is *Issuer) AddProvider(name, aud string) string {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.audiences[name] = aud
	return is.URL(name)
}

// URL returns the issuer URL of a provider name.
func (is *Issuer) URL(name string) string { return is.base + IssuerPathPrefix + name }

// TokenURL returns the token endpoint of a provider name.
func (is *Issuer) TokenURL(name string) string { return is.URL(name) + "/token" }

// Mint signs a token for provider name with subject sub, the provider's
// audience, and extra claims (which may not override iss, sub, aud, iat,
// nbf or exp).
func (is *Issuer) Mint(name, sub string, claims map[string]any, ttl time.Duration) (string, error) {
	is.mu.Lock()
	aud, ok := is.audiences[name]
	is.mu.Unlock()
	if !ok {
		return "", fmt.Errorf("dev issuer: no identity provider %q", name)
	}
	if sub == "" {
		return "", errors.New("dev issuer: a token needs a subject")
	}
	if ttl <= 0 || ttl > MaxTokenTTL {
		return "", fmt.Errorf("dev issuer: token lifetime %s is outside (0, %s]", ttl, MaxTokenTTL)
	}
	now := time.Now()
	body := map[string]any{}
	for k, v := range claims {
		body[k] = v
	}
	for k, v := range map[string]any{
		"iss": is.URL(name), "sub": sub, "aud": aud,
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(ttl).Unix(),
		auth.DevClaim: true,
	} {
		body[k] = v
	}
	payload, err := json.Marshal(body)
	if err != nil {
		return "", fmt.Errorf("dev issuer: claims: %w", err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: is.key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", is.kid))
	if err != nil {
		return "", err
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		return "", err
	}
	return jws.CompactSerialize()
}

// handler serves, under IssuerPathPrefix+NAME: discovery, the JWKS, and
// GET/POST /token?sub=SUBJECT[&ttl=1h][&CLAIM=VALUE...], which answers with
// the bare token (text/plain) so that PGPASSWORD=$(curl -s ...) works.
func (is *Issuer) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+IssuerPathPrefix+"{name}/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if !is.known(name) {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer":                                is.URL(name),
			"jwks_uri":                              is.URL(name) + "/jwks",
			"token_endpoint":                        is.TokenURL(name),
			"authorization_endpoint":                is.URL(name) + "/authorize",
			"id_token_signing_alg_values_supported": []string{"ES256"},
			"response_types_supported":              []string{"token"},
			"subject_types_supported":               []string{"public"},
		})
	})
	mux.HandleFunc("GET "+IssuerPathPrefix+"{name}/jwks", func(w http.ResponseWriter, r *http.Request) {
		if !is.known(r.PathValue("name")) {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{
			Key: &is.key.PublicKey, KeyID: is.kid, Algorithm: string(jose.ES256), Use: "sig",
		}}})
	})
	mux.HandleFunc(IssuerPathPrefix+"{name}/token", func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		ttl := time.Hour
		if v := r.Form.Get("ttl"); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				http.Error(w, "ttl: "+err.Error(), http.StatusBadRequest)
				return
			}
			ttl = d
		}
		claims := map[string]any{}
		for k, vs := range r.Form {
			if k == "sub" || k == "ttl" || len(vs) == 0 {
				continue
			}
			if len(vs) == 1 {
				claims[k] = vs[0]
			} else {
				claims[k] = vs
			}
		}
		tok, err := is.Mint(r.PathValue("name"), r.Form.Get("sub"), claims, ttl)
		if err != nil {
			http.Error(w, strings.TrimPrefix(err.Error(), "dev issuer: "), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		_, _ = fmt.Fprintln(w, tok)
	})
	return mux
}

func (is *Issuer) known(name string) bool {
	is.mu.Lock()
	defer is.mu.Unlock()
	_, ok := is.audiences[name]
	return ok
}
