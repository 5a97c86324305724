package devenv

import (
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/gateway/auth"
)

func startIssuer(t *testing.T) *Issuer {
	t.Helper()
	is, err := StartIssuer("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = is.Close() })
	return is
}

// The gateway's own verifier (go-oidc discovery, JWKS, audience, expiry)
// accepts what the development issuer mints, and keeps providers apart.
func TestIssuerTokensVerifyWithTheGatewayVerifier(t *testing.T) {
	is := startIssuer(t)
	corp := is.AddProvider("corp", "gatehouse")
	other := is.AddProvider("other", "gatehouse")
	if !strings.Contains(corp, IssuerPathPrefix) || corp == other {
		t.Fatalf("issuer URLs %q %q", corp, other)
	}
	v := auth.New([]bundle.IdentityProvider{
		{Name: "corp", Issuer: corp, Audiences: []string{"gatehouse"}, Algorithms: []string{"ES256"}},
		{Name: "other", Issuer: other, Audiences: []string{"gatehouse"}, Algorithms: []string{"ES256"}},
	}, auth.AllowDevIssuers())
	tok, err := is.Mint("corp", "analytics-1", map[string]any{"env": "prod", "groups": []string{"pci"}, "sub": "forged", "iss": "forged"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	got, err := v.Verify(t.Context(), tok)
	if err != nil {
		t.Fatal(err)
	}
	if got.Provider != "corp" || got.Token.Subject != "analytics-1" || got.Token.Claims["env"] != "prod" {
		t.Errorf("verified %+v", got)
	}

	// Over HTTP, as the printed curl line does it.
	resp, err := http.PostForm(is.TokenURL("other"), url.Values{"sub": {"svc"}, "team": {"a", "b"}, "ttl": {"5m"}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("token endpoint: %d %s", resp.StatusCode, body)
	}
	got, err = v.Verify(t.Context(), strings.TrimSpace(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	if got.Provider != "other" || got.Token.Subject != "svc" {
		t.Errorf("verified %+v", got)
	}
	if until := time.Until(got.Expiry); until > 6*time.Minute || until < 4*time.Minute {
		t.Errorf("ttl=5m gave a token valid for %s", until)
	}
}

func TestIssuerRefuses(t *testing.T) {
	if _, err := StartIssuer("0.0.0.0:0"); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Errorf("a non-loopback address: %v", err)
	}
	is := startIssuer(t)
	is.AddProvider("corp", "gatehouse")
	for name, q := range map[string]string{
		"no subject":       "",
		"a bad ttl":        "sub=x&ttl=forever",
		"a ttl too long":   "sub=x&ttl=48h",
		"a negative ttl":   "sub=x&ttl=-1m",
		"unknown provider": "sub=x",
	} {
		u := is.TokenURL("corp") + "?" + q
		if name == "unknown provider" {
			u = is.TokenURL("nobody") + "?" + q
		}
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: status %d", name, resp.StatusCode)
		}
	}
	resp, err := http.Get(is.URL("nobody") + "/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("discovery of an unknown provider: %d", resp.StatusCode)
	}
	if _, err := is.Mint("corp", "x", nil, 0); err == nil {
		t.Error("a zero ttl was accepted")
	}
	_, err = auth.New([]bundle.IdentityProvider{{Name: "corp", Issuer: is.URL("corp"), Audiences: []string{"someone-else"}}}, auth.AllowDevIssuers()).
		Verify(t.Context(), mustMint(t, is, "corp", "x"))
	if !errors.Is(err, auth.ErrAudience) {
		t.Errorf("a gateway expecting another audience: %v", err)
	}
}

func mustMint(t *testing.T, is *Issuer, provider, sub string) string {
	t.Helper()
	tok, err := is.Mint(provider, sub, nil, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}
