// Package oidctest is an in-process OIDC issuer for unit tests: discovery,
// a JWKS, and tokens signed with go-jose, including the malformed and
// hostile kinds a verifier must refuse. Acceptance tests use a real
// provider (package hydratest) instead.
package oidctest

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Issuer is a running test issuer.
type Issuer struct {
	URL string

	mu   sync.Mutex
	keys []*rsa.PrivateKey // keys[len-1] signs; all are published
	kids []string
	srv  *httptest.Server
	down bool
	hits int
}

// SetDown makes discovery and the JWKS answer 503 (a provider outage) or
// serve again.
func (is *Issuer) SetDown(down bool) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.down = down
}

// Fetches counts discovery and JWKS requests served or refused.
func (is *Issuer) Fetches() int {
	is.mu.Lock()
	defer is.mu.Unlock()
	return is.hits
}

// count records a request and reports whether the issuer is down.
func (is *Issuer) count(w http.ResponseWriter) bool {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.hits++
	if is.down {
		http.Error(w, "identity provider down", http.StatusServiceUnavailable)
	}
	return is.down
}

// Start runs an issuer on a loopback port until the test ends.
func Start(tb testing.TB) *Issuer {
	tb.Helper()
	is := &Issuer{}
	is.Rotate(tb)
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		if is.count(w) {
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer":                                is.URL,
			"jwks_uri":                              is.URL + "/jwks",
			"authorization_endpoint":                is.URL + "/auth",
			"token_endpoint":                        is.URL + "/token",
			"id_token_signing_alg_values_supported": []string{"RS256"},
			"response_types_supported":              []string{"code"},
			"subject_types_supported":               []string{"public"},
		})
	})
	mux.HandleFunc("/jwks", func(w http.ResponseWriter, r *http.Request) {
		if is.count(w) {
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(is.JWKS())
	})
	is.srv = httptest.NewServer(mux)
	is.URL = is.srv.URL
	tb.Cleanup(is.srv.Close)
	return is
}

// Rotate adds a new signing key; old keys stay published.
func (is *Issuer) Rotate(tb testing.TB) {
	tb.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		tb.Fatal(err)
	}
	is.mu.Lock()
	defer is.mu.Unlock()
	is.keys = append(is.keys, k)
	is.kids = append(is.kids, fmt.Sprintf("key-%d", len(is.keys)))
}

// JWKS returns the published key set.
func (is *Issuer) JWKS() jose.JSONWebKeySet {
	is.mu.Lock()
	defer is.mu.Unlock()
	var set jose.JSONWebKeySet
	for i, k := range is.keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: &k.PublicKey, KeyID: is.kids[i], Algorithm: "RS256", Use: "sig"})
	}
	return set
}

// Claims returns standard claims for a subject and audience, valid for an
// hour from now; adjust them before signing.
func (is *Issuer) Claims(sub string, aud ...string) map[string]any {
	now := time.Now()
	return map[string]any{
		"iss": is.URL, "sub": sub, "aud": aud,
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	}
}

// Sign signs claims with the current key (RS256).
func (is *Issuer) Sign(tb testing.TB, claims map[string]any) string {
	tb.Helper()
	is.mu.Lock()
	k, kid := is.keys[len(is.keys)-1], is.kids[len(is.kids)-1]
	is.mu.Unlock()
	return SignWith(tb, jose.SigningKey{Algorithm: jose.RS256, Key: k}, kid, claims)
}

// Token is Sign(Claims(sub, aud...)).
func (is *Issuer) Token(tb testing.TB, sub string, aud ...string) string {
	return is.Sign(tb, is.Claims(sub, aud...))
}

// SignWith signs claims with any key, for hostile tokens (another key, an
// unknown kid, HMAC with the issuer's public key).
func SignWith(tb testing.TB, key jose.SigningKey, kid string, claims map[string]any) string {
	tb.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if kid != "" {
		opts = opts.WithHeader(jose.HeaderKey("kid"), kid)
	}
	s, err := jose.NewSigner(key, opts)
	if err != nil {
		tb.Fatal(err)
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		tb.Fatal(err)
	}
	jws, err := s.Sign(payload)
	if err != nil {
		tb.Fatal(err)
	}
	out, err := jws.CompactSerialize()
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// PublicKeyPEMBytes is the current public key's PKIX DER, the bytes an
// attacker would use as an HMAC secret in an algorithm-confusion attack.
func (is *Issuer) PublicKeyBytes(tb testing.TB) []byte {
	tb.Helper()
	set := is.JWKS()
	b, err := json.Marshal(set.Keys[len(set.Keys)-1])
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// Unsigned returns an "alg": "none" token.
func Unsigned(claims map[string]any) string {
	h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
	p, _ := json.Marshal(claims)
	return h + "." + base64.RawURLEncoding.EncodeToString(p) + "."
}

// Tamper replaces the payload of a signed token, keeping its signature.
func Tamper(tb testing.TB, token string, claims map[string]any) string {
	tb.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		tb.Fatalf("not a compact JWS: %q", token)
	}
	p, _ := json.Marshal(claims)
	parts[1] = base64.RawURLEncoding.EncodeToString(p)
	return strings.Join(parts, ".")
}
