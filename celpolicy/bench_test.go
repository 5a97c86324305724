package celpolicy_test

import (
	"fmt"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/sqlfacts"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// ruleBodies are realistic conditions, the shapes of the quickstart's rules.
// %d is replaced by the policy number, so that every rule's text is unique
// and no benchmark profits from compiling identical text once.
var ruleBodies = []struct{ effect, when string }{
	{"allow", "request.statements.all(s, s.command in ['SELECT', 'SHOW'] && s.tables.all(t, t.access == 'read' && t.schema != 'secret_%d'))"},
	{"allow", "request.statements.all(s, s.command in ['SELECT', 'INSERT', 'UPDATE'] && s.tables.all(t, t.access == 'read' || t.schema == 'billing_%d'))"},
	{"deny", "request.statements.exists(s, s.command.startsWith('DROP ') || s.command == 'TRUNCATE' || 'fn_%d' in s.functions)"},
	{"deny", "request.statements.exists(s, s.command in ['DELETE', 'UPDATE'] && !s.has_where && s.tables.exists(t, t.name != 'scratch_%d'))"},
	{"review", "request.statements.exists(s, s.tables.exists(t, t.name == 'payments_%d' && t.access == 'write'))"},
}

// benchModel builds a model of resources postgres resources and policies
// policies of rulesPer rules each. celpolicy.Policy j covers resource j % resources
// and, when perIdentity, one of 100 identities (so a caller is covered by a
// few of a resource's policies); otherwise every caller.
func benchModel(resources, policies, rulesPer int, perIdentity bool) *bundle.Model {
	m := &bundle.Model{
		IdentityProviders: []bundle.IdentityProvider{{Name: "corp", Issuer: "https://id.example.com", Audiences: []string{"gatehouse"}}},
	}
	for i := range 100 {
		m.Identities = append(m.Identities, bundle.Identity{Name: fmt.Sprintf("svc-%d", i), Provider: "corp", Subject: fmt.Sprintf("svc-%d", i)})
	}
	for i := range resources {
		m.Postgres = append(m.Postgres, bundle.Postgres{Name: fmt.Sprintf("db-%d", i), Address: "db:5432", Database: "app", Username: "gw"})
	}
	for j := range policies {
		p := bundle.Policy{Name: fmt.Sprintf("p-%d", j), Resources: []string{fmt.Sprintf("db-%d", j%resources)}}
		if perIdentity {
			p.Identities = []string{fmt.Sprintf("svc-%d", (j/resources)%100)}
		} else {
			p.Everyone = true
		}
		for k := range rulesPer {
			b := ruleBodies[(j+k)%len(ruleBodies)]
			r := bundle.Rule{Name: fmt.Sprintf("r-%d", k), Effect: bundle.Effect(b.effect), When: fmt.Sprintf(b.when, j), Reason: "benchmark rule"}
			if b.effect == "review" {
				r.Approval = &bundle.Approval{Groups: []string{"dba"}}
			}
			p.Rules = append(p.Rules, r)
		}
		m.Policies = append(m.Policies, p)
	}
	return m
}

func benchDecide(b *testing.B, p *celpolicy.Policy, resource string) {
	in := &celpolicy.Input{
		Identity: celpolicy.Identity{Name: "svc-0", Issuer: "https://id.example.com", Subject: "svc-0", Groups: []string{"apps"}, Claims: map[string]any{}},
		Resource: resource,
		Request:  sqlfacts.Query("SELECT o.id, c.email FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id = 42"),
		Now:      time.Unix(1764000000, 0),
	}
	var d celpolicy.Decision
	b.ReportAllocs()
	for b.Loop() {
		d = p.Decide(in)
	}
	if d.Effect == "" {
		b.Fatal("no decision")
	}
}

// BenchmarkDecide compares one decision against one rule with one decision
// against a bundle of 10,000 rules over 1,000 resources. The index keeps the
// second to the rules of the one resource asked about:
//
//   - 1rule: one resource, one policy, one rule.
//   - 10k-rules/1k-resources: 5,000 policies of 2 rules; each resource has
//     10 rules from 5 policies, each for one of 100 identities, so the
//     caller's own policy's 2 rules are evaluated.
//   - 10k-rules/1k-resources/all-apply: the same rules, but every policy
//     covers every caller, so all 10 rules of the resource are evaluated:
//     the worst case for a resource with 10 rules.
//   - 10rules/1resource/all-apply: those same 10 rules in a bundle of one
//     resource. Comparing it with the case above isolates what the 9,990
//     unrelated rules cost: only the garbage collector's larger live heap.
func BenchmarkDecide(b *testing.B) {
	b.Run("1rule", func(b *testing.B) {
		p := celpolicy.MustCompile(b, benchModel(1, 1, 1, true))
		benchDecide(b, p, "db-0")
	})
	b.Run("10k-rules/1k-resources", func(b *testing.B) {
		p := celpolicy.MustCompile(b, benchModel(1000, 5000, 2, true))
		if p.RuleCount() != 10000 {
			b.Fatalf("%d rules", p.RuleCount())
		}
		benchDecide(b, p, "db-500")
	})
	b.Run("10k-rules/1k-resources/all-apply", func(b *testing.B) {
		p := celpolicy.MustCompile(b, benchModel(1000, 5000, 2, false))
		benchDecide(b, p, "db-500")
	})
	b.Run("10rules/1resource/all-apply", func(b *testing.B) {
		// Policies 500, 1500, ..., 4500 of the bundle above, alone.
		m := benchModel(1000, 5000, 2, false)
		m.Postgres = m.Postgres[500:501]
		var keep []bundle.Policy
		for j := 500; j < 5000; j += 1000 {
			keep = append(keep, m.Policies[j])
		}
		m.Policies = keep
		p := celpolicy.MustCompile(b, m)
		if p.RuleCount() != 10 {
			b.Fatalf("%d rules", p.RuleCount())
		}
		benchDecide(b, p, "db-500")
	})
}

// BenchmarkCompile10kRules is the CEL share of a bundle build.
func BenchmarkCompile10kRules(b *testing.B) {
	m := benchModel(1000, 5000, 2, true)
	m.Normalize()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := celpolicy.Compile(m); err != nil {
			b.Fatal(err)
		}
	}
}
