package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Key set timing. A token whose key id is unknown triggers at most one
// fetch per MinRefetchInterval per key set, so a flood of forged tokens
// cannot make the gateway hammer the identity provider. Keys are
// refreshed after RefreshAfter, and stay usable while the provider cannot
// be reached for up to MaxKeyAge after they were last fetched.
const (
	MinRefetchInterval = 30 * time.Second
	RefreshAfter       = time.Hour
	MaxKeyAge          = 24 * time.Hour
	// discoveryAge is how long a discovered jwks_uri is trusted before
	// discovery runs again (only when the key set cannot be fetched).
	discoveryAge = time.Hour
)

// KeyCache holds identity providers' key sets (and discovery results) for
// every bundle a store loads, so that a bundle reload keeps them: a policy
// push during a provider outage must not lock out new logins.
type KeyCache struct {
	client *http.Client
	now    func() time.Time

	mu   sync.Mutex
	sets map[string]*keySet     // by JWKS URL
	disc map[string]*discovered // by issuer

	// Fetches counts key set and discovery fetches, for metrics and tests.
	Fetches atomic.Int64
}

type discovered struct {
	jwksURL string
	at      time.Time
}

// NewKeyCache makes an empty cache. client may be nil (a 10s-timeout
// default); now may be nil (time.Now).
func NewKeyCache(client *http.Client, now func() time.Time) *KeyCache {
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	if now == nil {
		now = time.Now
	}
	return &KeyCache{client: client, now: now, sets: map[string]*keySet{}, disc: map[string]*discovered{}}
}

// WithKeyCache shares key sets across verifiers (bundles).
func WithKeyCache(c *KeyCache) Option { return func(v *Verifier) { v.keys = c } }

// jwksURL returns an issuer's jwks_uri, by discovery (cached).
func (c *KeyCache) jwksURL(ctx context.Context, issuer string) (string, error) {
	c.mu.Lock()
	d := c.disc[issuer]
	c.mu.Unlock()
	if d != nil && c.now().Sub(d.at) < discoveryAge {
		return d.jwksURL, nil
	}
	var meta struct {
		Issuer  string `json:"issuer"`
		JWKSURL string `json:"jwks_uri"`
	}
	err := c.getJSON(ctx, issuer+"/.well-known/openid-configuration", &meta)
	switch {
	case err == nil && meta.Issuer != issuer:
		err = fmt.Errorf("discovery document names issuer %q", meta.Issuer)
	case err == nil && meta.JWKSURL == "":
		err = errors.New("discovery document has no jwks_uri")
	}
	if err != nil {
		if d != nil {
			return d.jwksURL, nil // an old answer beats none while the provider is down
		}
		return "", err
	}
	c.mu.Lock()
	c.disc[issuer] = &discovered{jwksURL: meta.JWKSURL, at: c.now()}
	c.mu.Unlock()
	return meta.JWKSURL, nil
}

func (c *KeyCache) getJSON(ctx context.Context, url string, into any) error {
	c.Fetches.Add(1)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	return json.Unmarshal(body, into)
}

// set returns the key set of a JWKS URL, shared by every bundle.
func (c *KeyCache) set(url string) *keySet {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.sets[url]
	if !ok {
		s = &keySet{cache: c, url: url}
		c.sets[url] = s
	}
	return s
}

// keySet is one JWKS URL's keys.
type keySet struct {
	cache *KeyCache
	url   string

	mu          sync.Mutex
	keys        []jose.JSONWebKey
	fetchedAt   time.Time // last successful fetch
	attemptedAt time.Time // last fetch, successful or not
	lastErr     error
}

// keysFor returns the keys that may have signed a token with this key id,
// fetching when the set is empty, stale, or lacks the id, within the
// refetch interval.
func (s *keySet) keysFor(ctx context.Context, kid string) ([]jose.JSONWebKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cache.now()
	match := func() []jose.JSONWebKey {
		var out []jose.JSONWebKey
		for _, k := range s.keys {
			if kid == "" || k.KeyID == kid {
				out = append(out, k)
			}
		}
		return out
	}
	found := match()
	stale := s.fetchedAt.IsZero() || now.Sub(s.fetchedAt) > RefreshAfter
	if (len(found) == 0 || stale) && now.Sub(s.attemptedAt) >= MinRefetchInterval {
		s.attemptedAt = now
		var set jose.JSONWebKeySet
		if err := s.cache.getJSON(ctx, s.url, &set); err != nil {
			s.lastErr = err
		} else {
			s.keys, s.fetchedAt, s.lastErr = set.Keys, now, nil
			found = match()
		}
	}
	switch {
	case s.fetchedAt.IsZero():
		if s.lastErr == nil {
			s.lastErr = errors.New("not fetched yet")
		}
		return nil, fmt.Errorf("%w: key set: %v", ErrProviderFailed, s.lastErr)
	case now.Sub(s.fetchedAt) > MaxKeyAge:
		return nil, fmt.Errorf("%w: the key set was last fetched %s ago, over the %s limit: %v", ErrProviderFailed, now.Sub(s.fetchedAt).Round(time.Second), MaxKeyAge, s.lastErr)
	case len(found) == 0:
		return nil, fmt.Errorf("%w: no key with id %q (the key set is refetched at most every %s)", ErrSignature, kid, MinRefetchInterval)
	}
	return found, nil
}

// remoteKeys is an oidc.KeySet over a shared key set.
type remoteKeys struct{ set *keySet }

// VerifySignature implements oidc.KeySet. A known key that does not verify
// the signature never triggers a fetch.
func (r remoteKeys) VerifySignature(ctx context.Context, raw string) ([]byte, error) {
	jws, err := jose.ParseSigned(raw, []jose.SignatureAlgorithm{
		jose.RS256, jose.RS384, jose.RS512, jose.ES256, jose.ES384, jose.ES512,
		jose.PS256, jose.PS384, jose.PS512, jose.EdDSA,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if len(jws.Signatures) != 1 {
		return nil, fmt.Errorf("%w: %d signatures", ErrMalformed, len(jws.Signatures))
	}
	keys, err := r.set.keysFor(ctx, jws.Signatures[0].Header.KeyID)
	if err != nil {
		return nil, err
	}
	for _, k := range keys {
		if payload, err := jws.Verify(k.Key); err == nil {
			return payload, nil
		}
	}
	return nil, fmt.Errorf("%w: no key of the set verifies it", ErrSignature)
}
