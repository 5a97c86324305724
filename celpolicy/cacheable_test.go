package celpolicy

import (
	"testing"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// TestCacheable: a resource whose rules read now or session (or whose
// masks' conditions do) is never cacheable; one whose rules read only the
// caller and the request is.
func TestCacheable(t *testing.T) {
	model := func(when, unless string) *bundle.Model {
		m := &bundle.Model{
			IdentityProviders: []bundle.IdentityProvider{{Name: "corp", Issuer: "https://id.example.com", Audiences: []string{"g"}}},
			Postgres:          []bundle.Postgres{{Name: "orders", Address: "db:5432", Database: "orders", Username: "g"}},
			Policies: []bundle.Policy{{Name: "p", Resources: []string{"orders"}, Everyone: true,
				Rules: []bundle.Rule{{Name: "r", Effect: bundle.EffectAllow, When: when, Reason: "x"}}}},
		}
		if unless != "" {
			m.Masks = []bundle.Mask{{Name: "m", Resources: []string{"orders"}, Columns: []string{"t.c"}, Method: bundle.MaskRedact, Unless: unless}}
		}
		return m
	}
	for _, c := range []struct {
		when, unless string
		want         bool
	}{
		{"request.statements.all(s, s.command == 'SELECT')", "", true},
		{"'dba' in identity.groups", "'pci' in identity.groups", true},
		{"now.getHours() < 18", "", false},
		{"session.counters.requests < 100", "", false},
		{"true", "now.getDayOfWeek() == 0", false},
	} {
		p, err := Compile(model(c.when, c.unless))
		if err != nil {
			t.Fatalf("%s: %v", c.when, err)
		}
		if got := p.Cacheable("orders", "query"); got != c.want {
			t.Errorf("when %q unless %q: cacheable %v, want %v", c.when, c.unless, got, c.want)
		}
	}
}
