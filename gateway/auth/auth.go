// Package auth verifies callers' OIDC tokens against the identity providers
// of the active bundle: signature (keys from discovery or a static JWKS,
// refetched on an unknown key id, so issuers can rotate keys), issuer,
// audience, expiry and not-before with a small clock skew, and an algorithm
// allowlist that never includes "none" or an HMAC algorithm.
package auth

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
)

// DefaultAlgorithms are accepted when a provider names none.
func DefaultAlgorithms() []string { return []string{"RS256", "ES256"} }

// DefaultSkew is the clock skew allowed on exp and nbf.
const DefaultSkew = 30 * time.Second

// MaxTokenBytes bounds a token before it is parsed.
const MaxTokenBytes = 16 << 10

// Verification failures. Each error wraps one, so that callers can count
// them by kind; the message says what exactly was wrong.
var (
	ErrMalformed      = errors.New("token is not a well-formed signed JWT")
	ErrUnknownIssuer  = errors.New("token issuer is not trusted")
	ErrSignature      = errors.New("token signature does not verify")
	ErrAudience       = errors.New("token audience is not accepted")
	ErrExpired        = errors.New("token has expired")
	ErrNotYetValid    = errors.New("token is not valid yet")
	ErrMissingClaim   = errors.New("token lacks a required claim")
	ErrProviderFailed = errors.New("identity provider could not be reached")
)

// Verified is a verified token.
type Verified struct {
	// Provider names the bundle identity provider that vouched for it.
	Provider string
	Token    celpolicy.Token
	// Expiry is when the token stops being valid (its exp plus the skew);
	// sessions are cut at that moment.
	Expiry time.Time
}

// Option configures a Verifier.
type Option func(*Verifier)

// WithSkew sets the allowed clock skew.
func WithSkew(d time.Duration) Option { return func(v *Verifier) { v.skew = d } }

// WithClock sets the time source (tests).
func WithClock(now func() time.Time) Option { return func(v *Verifier) { v.now = now } }

// DevIssuerMarker is in the URL of every issuer `gatehouse dev` runs, and
// DevClaim is in every token it signs. Such an issuer signs tokens for
// anyone who asks, so a gateway refuses both unless AllowDevIssuers.
const (
	DevIssuerMarker = "/DEV-ONLY-NOT-FOR-PRODUCTION/"
	DevClaim        = "gatehouse_dev"
)

// ErrDevIssuer is returned for a development issuer's token at a gateway
// that is not `gatehouse dev`'s.
var ErrDevIssuer = errors.New("token comes from a development issuer (gatehouse dev), which signs tokens for anyone; only gatehouse dev's own gateway accepts it")

// AllowDevIssuers lets the verifier accept development issuers' tokens.
// Only `gatehouse dev` sets it.
func AllowDevIssuers() Option { return func(v *Verifier) { v.allowDev = true } }

// WithHTTPClient sets the client used for discovery and JWKS.
func WithHTTPClient(c *http.Client) Option { return func(v *Verifier) { v.client = c } }

// Verifier verifies tokens for one bundle's identity providers. Build a new
// one when the bundle changes; key sets are fetched lazily and cached.
type Verifier struct {
	byIssuer map[string]*provider
	skew     time.Duration
	now      func() time.Time
	client   *http.Client
	allowDev bool
	// keys are the providers' key sets, shared across bundles when the
	// store passes one cache to every verifier (WithKeyCache).
	keys *KeyCache
}

type provider struct {
	cfg  bundle.IdentityProvider
	algs []string

	mu       sync.Mutex
	verifier *oidc.IDTokenVerifier // nil until the key set is known
	remote   *keySet               // its key set, unless static
	lastErr  time.Time
}

// New builds a verifier for the given providers. It does no network I/O:
// discovery happens on the first token of each issuer, so one unreachable
// issuer does not keep a bundle from loading.
func New(providers []bundle.IdentityProvider, opts ...Option) *Verifier {
	v := &Verifier{
		byIssuer: map[string]*provider{},
		skew:     DefaultSkew,
		now:      time.Now,
		client:   &http.Client{Timeout: 10 * time.Second},
	}
	for _, o := range opts {
		o(v)
	}
	if v.keys == nil {
		v.keys = NewKeyCache(v.client, v.now)
	}
	for _, p := range providers {
		algs := p.Algorithms
		if len(algs) == 0 {
			algs = DefaultAlgorithms()
		}
		v.byIssuer[p.Issuer] = &provider{cfg: p, algs: algs}
	}
	return v
}

// PublicReason is what an unauthenticated caller is told about a failed
// verification: the kind of failure, never the detail (a provider's URL,
// a key id), which goes to the gateway's log.
func PublicReason(err error) string {
	for _, kind := range []error{ErrMalformed, ErrUnknownIssuer, ErrSignature, ErrAudience, ErrExpired, ErrNotYetValid, ErrMissingClaim, ErrDevIssuer} {
		if errors.Is(err, kind) {
			return kind.Error()
		}
	}
	if errors.Is(err, ErrProviderFailed) {
		return "the identity provider could not be reached to verify the token; try again shortly"
	}
	return "the token could not be verified"
}

// Verify checks a raw token. The error wraps one of the Err values.
func (v *Verifier) Verify(ctx context.Context, raw string) (*Verified, error) {
	raw = strings.TrimSpace(raw)
	if len(raw) > MaxTokenBytes {
		return nil, fmt.Errorf("%w: %d bytes is over the %d byte limit", ErrMalformed, len(raw), MaxTokenBytes)
	}
	// The issuer picks the keys, so it is read before the signature is
	// checked; nothing else from the unverified payload is used.
	iss, kid, err := unverifiedIssuer(raw)
	if err != nil {
		return nil, err
	}
	p, ok := v.byIssuer[iss]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownIssuer, iss)
	}
	if !v.allowDev && strings.Contains(iss, DevIssuerMarker) {
		return nil, fmt.Errorf("%w: issuer %q", ErrDevIssuer, iss)
	}
	ver, err := p.verifierFor(ctx, v)
	if err != nil {
		return nil, err
	}
	if p.remote != nil {
		// go-oidc reports every key set error as a bad signature; an
		// unreachable provider must be told apart.
		if _, err := p.remote.keysFor(ctx, kid); errors.Is(err, ErrProviderFailed) {
			return nil, err
		}
	}
	tok, err := ver.Verify(ctx, raw)
	if err != nil {
		// The issuer and the JWT shape were checked above, so what go-oidc
		// refuses here is the signature or its algorithm.
		return nil, fmt.Errorf("%w: %v", ErrSignature, err)
	}
	var claims map[string]any
	if err := tok.Claims(&claims); err != nil {
		return nil, fmt.Errorf("%w: claims: %v", ErrMalformed, err)
	}
	if tok.Subject == "" {
		return nil, fmt.Errorf("%w: sub", ErrMissingClaim)
	}
	if _, dev := claims[DevClaim]; dev && !v.allowDev {
		return nil, fmt.Errorf("%w: it carries the %s claim", ErrDevIssuer, DevClaim)
	}
	if !audienceAccepted(tok.Audience, p.cfg.Audiences) {
		return nil, fmt.Errorf("%w: token is for %q, provider %q accepts %q", ErrAudience, tok.Audience, p.cfg.Name, p.cfg.Audiences)
	}
	now := v.now()
	if tok.Expiry.IsZero() {
		return nil, fmt.Errorf("%w: exp", ErrMissingClaim)
	}
	if now.After(tok.Expiry.Add(v.skew)) {
		return nil, fmt.Errorf("%w: at %s", ErrExpired, tok.Expiry.UTC().Format(time.RFC3339))
	}
	if nbf, ok := numericDate(claims["nbf"]); ok && now.Add(v.skew).Before(nbf) {
		return nil, fmt.Errorf("%w: not before %s", ErrNotYetValid, nbf.UTC().Format(time.RFC3339))
	}
	return &Verified{
		Provider: p.cfg.Name,
		Token:    celpolicy.Token{Issuer: iss, Subject: tok.Subject, Claims: claims},
		Expiry:   tok.Expiry.Add(v.skew),
	}, nil
}

// unverifiedIssuer reads the issuer (which picks the keys) and the key id
// from a token whose signature is not checked yet.
func unverifiedIssuer(raw string) (iss, kid string, err error) {
	// Parse with every asymmetric algorithm: the provider's own allowlist
	// is enforced by the verifier once the provider is known.
	jws, err := jose.ParseSigned(raw, []jose.SignatureAlgorithm{
		jose.RS256, jose.RS384, jose.RS512, jose.ES256, jose.ES384, jose.ES512,
		jose.PS256, jose.PS384, jose.PS512, jose.EdDSA,
	})
	if err != nil {
		return "", "", fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if len(jws.Signatures) != 1 {
		return "", "", fmt.Errorf("%w: %d signatures", ErrMalformed, len(jws.Signatures))
	}
	var c struct {
		Issuer string `json:"iss"`
	}
	if err := json.Unmarshal(jws.UnsafePayloadWithoutVerification(), &c); err != nil {
		return "", "", fmt.Errorf("%w: payload is not a JSON object", ErrMalformed)
	}
	if c.Issuer == "" {
		return "", "", fmt.Errorf("%w: iss", ErrMissingClaim)
	}
	return c.Issuer, jws.Signatures[0].Header.KeyID, nil
}

// retryAfter spaces out discovery attempts against a failing issuer.
const retryAfter = 5 * time.Second

func (p *provider) verifierFor(ctx context.Context, v *Verifier) (*oidc.IDTokenVerifier, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.verifier != nil {
		return p.verifier, nil
	}
	if !p.lastErr.IsZero() && v.now().Sub(p.lastErr) < retryAfter {
		return nil, fmt.Errorf("%w: %s (retrying shortly)", ErrProviderFailed, p.cfg.Issuer)
	}
	var keys oidc.KeySet
	switch {
	case p.cfg.JWKS != "":
		var set jose.JSONWebKeySet
		if err := json.Unmarshal([]byte(p.cfg.JWKS), &set); err != nil {
			return nil, fmt.Errorf("%w: static jwks of %q: %v", ErrProviderFailed, p.cfg.Name, err)
		}
		var pubs []crypto.PublicKey
		for _, k := range set.Keys {
			pubs = append(pubs, k.Key)
		}
		keys = &oidc.StaticKeySet{PublicKeys: pubs}
	case p.cfg.JWKSURL != "":
		p.remote = v.keys.set(p.cfg.JWKSURL)
		keys = remoteKeys{p.remote}
	default:
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		url, err := v.keys.jwksURL(dctx, p.cfg.Issuer)
		if err != nil {
			p.lastErr = v.now()
			return nil, fmt.Errorf("%w: discovery for %s: %v", ErrProviderFailed, p.cfg.Issuer, err)
		}
		// The key set is the cache's: it outlives this bundle, and
		// refetches (at most every MinRefetchInterval) on an unknown key
		// id, which is how an issuer's key rotation is picked up.
		p.remote = v.keys.set(url)
		keys = remoteKeys{p.remote}
	}
	p.verifier = oidc.NewVerifier(p.cfg.Issuer, keys, &oidc.Config{
		SkipClientIDCheck:    true, // audiences are checked against the provider's list
		SkipExpiryCheck:      true, // exp and nbf are checked with our skew
		SupportedSigningAlgs: p.algs,
		Now:                  v.now,
	})
	return p.verifier, nil
}

func audienceAccepted(got, accepted []string) bool {
	for _, a := range got {
		for _, b := range accepted {
			if a == b {
				return true
			}
		}
	}
	return false
}

func numericDate(v any) (time.Time, bool) {
	switch n := v.(type) {
	case float64:
		return time.Unix(int64(n), 0), true
	case json.Number:
		f, err := n.Float64()
		return time.Unix(int64(f), 0), err == nil
	}
	return time.Time{}, false
}
