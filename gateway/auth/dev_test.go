package auth_test

import (
	"errors"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/devenv"
	"github.com/gatehouse-dev/gatehouse/gateway/auth"
	"github.com/gatehouse-dev/gatehouse/internal/oidctest"
)

// A development issuer signs tokens for anyone who asks. A bundle that
// names one (a copy of gatehouse dev's policy, say) must not make a real
// gateway accept its tokens: both its URL marker and its claim are refused
// unless the gateway is gatehouse dev's.
func TestDevIssuersAreRefusedOutsideGatehouseDev(t *testing.T) {
	is, err := devenv.StartIssuer("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer is.Close()
	url := is.AddProvider("corp", "gatehouse")
	providers := []bundle.IdentityProvider{{Name: "corp", Issuer: url, Audiences: []string{"gatehouse"}, Algorithms: []string{"ES256"}}}
	tok, err := is.Mint("corp", "billing-service", nil, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := auth.New(providers).Verify(t.Context(), tok); !errors.Is(err, auth.ErrDevIssuer) {
		t.Errorf("a production verifier accepted a development issuer's token: %v", err)
	}
	if _, err := auth.New(providers, auth.AllowDevIssuers()).Verify(t.Context(), tok); err != nil {
		t.Errorf("gatehouse dev's verifier: %v", err)
	}

	// The claim alone is refused too, whatever the issuer's URL.
	other := oidctest.Start(t)
	c := other.Claims("billing-service", "gatehouse")
	c[auth.DevClaim] = true
	v := auth.New([]bundle.IdentityProvider{{Name: "x", Issuer: other.URL, Audiences: []string{"gatehouse"}}})
	if _, err := v.Verify(t.Context(), other.Sign(t, c)); !errors.Is(err, auth.ErrDevIssuer) {
		t.Errorf("a token with the %s claim: %v", auth.DevClaim, err)
	}
}
