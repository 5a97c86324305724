package hydratest_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"

	"github.com/gatehouse-dev/gatehouse/internal/hydratest"
)

func TestClientCredentialsTokenVerifies(t *testing.T) {
	t.Parallel()
	hydratest.Binary(t) // build outside the start-up timing
	start := time.Now()
	h := hydratest.Start(t)
	t.Logf("started in %s, issuer %s", time.Since(start).Round(time.Millisecond), h.Issuer())

	h.CreateClient(t, "ci-bot", "ci-bot-secret", []string{"gatehouse", "other"})
	token := h.Token(t, "ci-bot", "ci-bot-secret", []string{"gatehouse"})

	ctx := t.Context()
	provider, err := oidc.NewProvider(ctx, h.Issuer())
	if err != nil {
		t.Fatalf("discovery: %v", err)
	}
	idt, err := provider.Verifier(&oidc.Config{ClientID: "gatehouse"}).Verify(ctx, token)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if idt.Issuer != h.Issuer() || idt.Subject != "ci-bot" || !slices.Contains(idt.Audience, "gatehouse") {
		t.Fatalf("iss = %q, sub = %q, aud = %q; want %q, ci-bot, [gatehouse]", idt.Issuer, idt.Subject, idt.Audience, h.Issuer())
	}
	// Only the requested audience is granted.
	if slices.Contains(idt.Audience, "other") {
		t.Fatalf("aud = %q, want only the requested audience", idt.Audience)
	}
	if _, err := provider.Verifier(&oidc.Config{ClientID: "other"}).Verify(ctx, token); err == nil {
		t.Fatal("token verified for an audience it was not issued for")
	}

	// JWKSURL serves the keys that sign access tokens.
	keys := oidc.NewRemoteKeySet(ctx, h.JWKSURL())
	if _, err := oidc.NewVerifier(h.Issuer(), keys, &oidc.Config{ClientID: "gatehouse"}).Verify(ctx, token); err != nil {
		t.Fatalf("verify against JWKSURL: %v", err)
	}
}

func TestTokenHookAddsClaims(t *testing.T) {
	t.Parallel()
	var (
		mu   sync.Mutex
		seen []hookRequest
	)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req hookRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		seen = append(seen, req)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"session":{"access_token":{"groups":["admins","dev"]}}}`))
	}))
	t.Cleanup(hook.Close)

	h := hydratest.Start(t, hydratest.WithTokenHook(hook.URL), hydratest.WithTopLevelClaims("groups"))
	h.CreateClient(t, "ci-bot", "ci-bot-secret", []string{"gatehouse"})
	token := h.Token(t, "ci-bot", "ci-bot-secret", []string{"gatehouse"})

	ctx := t.Context()
	provider, err := oidc.NewProvider(ctx, h.Issuer())
	if err != nil {
		t.Fatalf("discovery: %v", err)
	}
	idt, err := provider.Verifier(&oidc.Config{ClientID: "gatehouse"}).Verify(ctx, token)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	var claims struct {
		Groups []string `json:"groups"`
		Ext    struct {
			Groups []string `json:"groups"`
		} `json:"ext"`
	}
	if err := idt.Claims(&claims); err != nil {
		t.Fatal(err)
	}
	want := []string{"admins", "dev"}
	if !slices.Equal(claims.Groups, want) || !slices.Equal(claims.Ext.Groups, want) {
		t.Fatalf("groups = %q, ext.groups = %q; want %q in both", claims.Groups, claims.Ext.Groups, want)
	}

	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 1 {
		t.Fatalf("hook called %d times, want 1", len(seen))
	}
	got := seen[0].Request
	if got.ClientID != "ci-bot" || !slices.Equal(got.GrantedAudience, []string{"gatehouse"}) || !slices.Equal(got.GrantTypes, []string{"client_credentials"}) {
		t.Fatalf("hook saw %+v", got)
	}
}

// hookRequest is the part of Hydra's token hook request the test checks.
type hookRequest struct {
	Request struct {
		ClientID        string   `json:"client_id"`
		GrantedAudience []string `json:"granted_audience"`
		GrantTypes      []string `json:"grant_types"`
	} `json:"request"`
}
