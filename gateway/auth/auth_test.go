package auth

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/internal/oidctest"
)

func TestVerify(t *testing.T) {
	is := oidctest.Start(t)
	other := oidctest.Start(t)
	v := New([]bundle.IdentityProvider{{Name: "corp", Issuer: is.URL, Audiences: []string{"gatehouse"}}})
	ctx := context.Background()

	good := is.Token(t, "billing", "gatehouse")
	got, err := v.Verify(ctx, good)
	if err != nil {
		t.Fatalf("a good token: %v", err)
	}
	if got.Provider != "corp" || got.Token.Subject != "billing" || got.Token.Issuer != is.URL {
		t.Errorf("verified %+v", got)
	}

	with := func(edit func(c map[string]any)) string {
		c := is.Claims("billing", "gatehouse")
		edit(c)
		return is.Sign(t, c)
	}
	foreign, _ := rsa.GenerateKey(rand.Reader, 2048)
	hmacKey := is.PublicKeyBytes(t)

	tests := map[string]struct {
		token string
		err   error
		msg   string
	}{
		"expired":              {with(func(c map[string]any) { c["exp"] = time.Now().Add(-time.Hour).Unix() }), ErrExpired, "expired"},
		"not yet valid":        {with(func(c map[string]any) { c["nbf"] = time.Now().Add(time.Hour).Unix() }), ErrNotYetValid, "not before"},
		"wrong audience":       {with(func(c map[string]any) { c["aud"] = []string{"another-service"} }), ErrAudience, `"another-service"`},
		"no expiry":            {with(func(c map[string]any) { delete(c, "exp") }), ErrMissingClaim, "exp"},
		"no subject":           {with(func(c map[string]any) { delete(c, "sub") }), ErrMissingClaim, "sub"},
		"issuer not in bundle": {other.Token(t, "billing", "gatehouse"), ErrUnknownIssuer, other.URL},
		"wrong issuer claim":   {with(func(c map[string]any) { c["iss"] = "https://evil.example.com" }), ErrUnknownIssuer, "evil.example.com"},
		"alg none":             {oidctest.Unsigned(is.Claims("billing", "gatehouse")), ErrMalformed, ""},
		"HS256 signed with the issuer's public key": {
			oidctest.SignWith(t, jose.SigningKey{Algorithm: jose.HS256, Key: hmacKey}, "key-1", is.Claims("billing", "gatehouse")), ErrMalformed, "",
		},
		"unknown key id": {
			oidctest.SignWith(t, jose.SigningKey{Algorithm: jose.RS256, Key: foreign}, "key-99", is.Claims("billing", "gatehouse")), ErrSignature, "",
		},
		"signed by another key under a known kid": {
			oidctest.SignWith(t, jose.SigningKey{Algorithm: jose.RS256, Key: foreign}, "key-1", is.Claims("billing", "gatehouse")), ErrSignature, "",
		},
		"tampered payload": {oidctest.Tamper(t, good, map[string]any{"iss": is.URL, "sub": "dba", "aud": []string{"gatehouse"}, "exp": time.Now().Add(time.Hour).Unix()}), ErrSignature, ""},
		"not a JWT":        {"hunter2", ErrMalformed, ""},
		"empty":            {"", ErrMalformed, ""},
		"oversized":        {strings.Repeat("a", MaxTokenBytes+1), ErrMalformed, "limit"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := v.Verify(ctx, tc.token)
			if !errors.Is(err, tc.err) {
				t.Fatalf("Verify = %+v, %v; want %v", got, err, tc.err)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not mention %q", err, tc.msg)
			}
		})
	}
}

func TestVerifySkewAndRotation(t *testing.T) {
	is := oidctest.Start(t)
	now := time.Now()
	v := New([]bundle.IdentityProvider{{Name: "corp", Issuer: is.URL, Audiences: []string{"gatehouse"}}},
		WithSkew(30*time.Second), WithClock(func() time.Time { return now }))
	ctx := context.Background()

	c := is.Claims("svc", "gatehouse")
	c["exp"] = now.Add(-10 * time.Second).Unix() // expired, within the skew
	if _, err := v.Verify(ctx, is.Sign(t, c)); err != nil {
		t.Errorf("a token 10s past exp is within a 30s skew: %v", err)
	}
	c["exp"] = now.Add(-time.Minute).Unix()
	if _, err := v.Verify(ctx, is.Sign(t, c)); !errors.Is(err, ErrExpired) {
		t.Errorf("a token a minute past exp: %v", err)
	}

	// The issuer rotates its key; the verifier, which cached the old key
	// set, refetches on the unknown key id.
	if _, err := v.Verify(ctx, is.Token(t, "svc", "gatehouse")); err != nil {
		t.Fatal(err)
	}
	is.Rotate(t)
	now = now.Add(MinRefetchInterval)
	if _, err := v.Verify(ctx, is.Token(t, "svc", "gatehouse")); err != nil {
		t.Errorf("after key rotation: %v", err)
	}
}

// TestKeyFetchesAreBounded: forged tokens (an unknown key id, or a known
// one with a bad signature) cannot make the gateway fetch the provider's
// keys more than once per interval, and a bundle reload (a new verifier on
// the same cache) fetches nothing.
func TestKeyFetchesAreBounded(t *testing.T) {
	is := oidctest.Start(t)
	now := time.Now()
	cache := NewKeyCache(nil, func() time.Time { return now })
	providers := []bundle.IdentityProvider{{Name: "corp", Issuer: is.URL, Audiences: []string{"gatehouse"}}}
	v := New(providers, WithKeyCache(cache), WithClock(func() time.Time { return now }))
	ctx := context.Background()
	if _, err := v.Verify(ctx, is.Token(t, "svc", "gatehouse")); err != nil {
		t.Fatal(err)
	}
	base := is.Fetches()
	foreign, _ := rsa.GenerateKey(rand.Reader, 2048)
	unknownKid := oidctest.SignWith(t, jose.SigningKey{Algorithm: jose.RS256, Key: foreign}, "key-99", is.Claims("svc", "gatehouse"))
	knownKid := oidctest.SignWith(t, jose.SigningKey{Algorithm: jose.RS256, Key: foreign}, "key-1", is.Claims("svc", "gatehouse"))
	for i := 0; i < 1000; i++ {
		tok := unknownKid
		if i%2 == 1 {
			tok = knownKid
		}
		if _, err := v.Verify(ctx, tok); !errors.Is(err, ErrSignature) {
			t.Fatalf("forged token %d: %v", i, err)
		}
		if i%100 == 0 {
			now = now.Add(time.Second)
		}
	}
	if n := is.Fetches() - base; n > 1 {
		t.Errorf("1000 forged tokens caused %d key fetches, want at most 1", n)
	}
	// A bundle reload: a new verifier, the same cache.
	base = is.Fetches()
	v2 := New(providers, WithKeyCache(cache), WithClock(func() time.Time { return now }))
	if _, err := v2.Verify(ctx, is.Token(t, "svc", "gatehouse")); err != nil {
		t.Fatal(err)
	}
	if n := is.Fetches() - base; n != 0 {
		t.Errorf("a reload fetched %d times", n)
	}
}

// TestKeysOutliveAnOutage: while the provider is down, a bundle reload
// still verifies tokens with the cached keys, up to MaxKeyAge; after that
// the provider's failure is reported, without its URL in the public
// reason.
func TestKeysOutliveAnOutage(t *testing.T) {
	is := oidctest.Start(t)
	now := time.Now()
	clock := func() time.Time { return now }
	cache := NewKeyCache(nil, clock)
	providers := []bundle.IdentityProvider{{Name: "corp", Issuer: is.URL, Audiences: []string{"gatehouse"}}}
	ctx := context.Background()
	token := func() string {
		c := is.Claims("svc", "gatehouse")
		c["exp"] = now.Add(time.Hour).Unix()
		c["iat"] = now.Unix()
		return is.Sign(t, c)
	}
	if _, err := New(providers, WithKeyCache(cache), WithClock(clock)).Verify(ctx, token()); err != nil {
		t.Fatal(err)
	}
	is.SetDown(true)
	now = now.Add(2 * RefreshAfter) // stale: a refresh is tried, fails, the old keys serve
	v := New(providers, WithKeyCache(cache), WithClock(clock))
	if _, err := v.Verify(ctx, token()); err != nil {
		t.Fatalf("during an outage, after a reload: %v", err)
	}
	now = now.Add(MaxKeyAge)
	_, err := v.Verify(ctx, token())
	if !errors.Is(err, ErrProviderFailed) {
		t.Fatalf("keys older than MaxKeyAge: %v", err)
	}
	if r := PublicReason(err); strings.Contains(r, is.URL) || strings.Contains(r, "127.0.0.1") {
		t.Errorf("the public reason shows the provider: %q", r)
	}
	is.SetDown(false)
	now = now.Add(MinRefetchInterval)
	if _, err := v.Verify(ctx, token()); err != nil {
		t.Fatalf("after the outage: %v", err)
	}
}

func TestVerifyStaticJWKSAndAlgorithms(t *testing.T) {
	is := oidctest.Start(t)
	jwks := is.JWKS()
	b, err := jsonMarshal(jwks)
	if err != nil {
		t.Fatal(err)
	}
	// The static key set is used without contacting the issuer: its URL
	// here is unroutable.
	v := New([]bundle.IdentityProvider{{Name: "static", Issuer: is.URL, Audiences: []string{"gatehouse"}, JWKS: string(b), Algorithms: []string{"ES256"}}})
	_, err = v.Verify(context.Background(), is.Token(t, "svc", "gatehouse"))
	if !errors.Is(err, ErrSignature) || !strings.Contains(err.Error(), "RS256") {
		t.Errorf("an RS256 token where only ES256 is allowed: %v", err)
	}
	v = New([]bundle.IdentityProvider{{Name: "static", Issuer: is.URL, Audiences: []string{"gatehouse"}, JWKS: string(b)}})
	if _, err := v.Verify(context.Background(), is.Token(t, "svc", "gatehouse")); err != nil {
		t.Errorf("static JWKS: %v", err)
	}
}

func TestVerifyUnreachableIssuer(t *testing.T) {
	v := New([]bundle.IdentityProvider{{Name: "gone", Issuer: "http://127.0.0.1:1", Audiences: []string{"x"}}})
	is := oidctest.Start(t)
	c := is.Claims("svc", "x")
	c["iss"] = "http://127.0.0.1:1"
	_, err := v.Verify(context.Background(), is.Sign(t, c))
	if !errors.Is(err, ErrProviderFailed) {
		t.Errorf("unreachable issuer: %v", err)
	}
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }
