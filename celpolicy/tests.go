package celpolicy

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// TestResult is the outcome of one test block.
type TestResult struct {
	Name     string        `json:"name"`
	Passed   bool          `json:"passed"`
	Expected bundle.Effect `json:"expected"`
	Decision Decision      `json:"decision"`
	// Request describes the request in one line.
	Request string `json:"request"`
	// Failures say what differed; empty when Passed.
	Failures []string      `json:"failures,omitempty"`
	Duration time.Duration `json:"duration_ns"`
}

// RunTests runs the model's test blocks, in name order.
func (p *Policy) RunTests() []TestResult {
	out := make([]TestResult, 0, len(p.model.Tests))
	for i := range p.model.Tests {
		out = append(out, p.RunTest(&p.model.Tests[i]))
	}
	return out
}

// RunTest runs one test block: it resolves the caller the way the gateway
// would resolve a verified token, decides the request, and compares.
func (p *Policy) RunTest(t *bundle.Test) (res TestResult) {
	start := time.Now()
	res = TestResult{Name: t.Name, Expected: t.Expect}
	fail := func(format string, args ...any) {
		res.Failures = append(res.Failures, fmt.Sprintf(format, args...))
	}
	defer func() {
		res.Passed = len(res.Failures) == 0
		res.Duration = time.Since(start)
	}()

	in, err := p.TestInput(t)
	if err != nil {
		fail("%v", err)
		res.Decision = deny(p.revision, err.Error())
		return res
	}
	res.Request = describeRequest(in.Request)
	d := p.Decide(in)
	res.Decision = d
	if d.Effect != t.Expect {
		fail("expected %s, got %s", t.Expect, d.Effect)
	}
	if t.ExpectRules != nil {
		got := d.Rules()
		slices.Sort(got)
		want := slices.Clone(t.ExpectRules)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			fail("expected matched rules [%s], got [%s]", strings.Join(want, ", "), strings.Join(got, ", "))
		}
	}
	if t.ExpectMasks != nil {
		got := map[string]string{}
		for _, m := range d.Masks {
			got[m.Target.String()] = m.Method
		}
		want := map[string]string{}
		for k, v := range t.ExpectMasks {
			if canon, err := bundle.CanonicalColumn(k); err == nil {
				k = canon
			} else if target, err := ParseMaskTarget(k); err == nil && target.Field != "" {
				k = target.String()
			}
			want[k] = v
		}
		if !maps.Equal(got, want) {
			fail("expected masks %s, got %s", formatMasks(want), formatMasks(got))
		}
	}
	return res
}

func formatMasks(m map[string]string) string {
	if len(m) == 0 {
		return "{}"
	}
	parts := make([]string, 0, len(m))
	for _, k := range sortedKeys(m) {
		parts = append(parts, k+"="+m[k])
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

// TestInput builds the decision input a test block describes.
func (p *Policy) TestInput(t *bundle.Test) (*Input, error) {
	provider, subject := t.Provider, t.Subject
	if t.Identity != "" {
		ci, ok := p.identity[t.Identity]
		if !ok {
			return nil, fmt.Errorf("identity %q is not defined", t.Identity)
		}
		if provider == "" {
			provider = ci.id.Provider
		}
		if subject == "" {
			subject = ci.id.Subject
		}
		if subject == "" {
			subject = t.Identity
		}
	}
	ip, ok := p.providers[provider]
	if !ok {
		return nil, fmt.Errorf("identity provider %q is not defined", provider)
	}
	claims := map[string]any{}
	if t.Claims != "" {
		if err := json.Unmarshal([]byte(t.Claims), &claims); err != nil || claims == nil {
			return nil, fmt.Errorf("claims must be a JSON object, such as {\"env\": \"prod\"}")
		}
	}
	claims["iss"] = ip.Issuer
	claims["sub"] = subject
	if len(t.Groups) > 0 {
		claim := ip.GroupsClaim
		if claim == "" {
			claim = "groups"
		}
		gs := claimGroups(claims[claim])
		for _, g := range t.Groups {
			gs = append(gs, g)
		}
		anyGroups := make([]any, len(gs))
		for i, g := range gs {
			anyGroups[i] = g
		}
		claims[claim] = anyGroups
	}
	id, err := p.ResolveIdentity(provider, Token{Issuer: ip.Issuer, Subject: subject, Claims: claims})
	if err != nil {
		return nil, fmt.Errorf("caller: %w", err)
	}
	if t.Identity != "" && id.Name != t.Identity {
		got := id.Name
		if got == "" {
			got = "no identity"
		}
		return nil, fmt.Errorf("the caller resolved to %s, not identity %q; give the subject or claims that identity matches", got, t.Identity)
	}
	kind, ok := p.ResourceKind(t.Resource)
	if !ok {
		return nil, fmt.Errorf("resource %q is not defined", t.Resource)
	}
	var req Request
	switch {
	case t.SQL != "":
		req = p.Query(t.SQL)
	default:
		if req, err = p.ParseRequest(kind, []byte(t.Request)); err != nil {
			return nil, err
		}
	}
	now := time.Now()
	if t.Now != "" {
		if now, err = time.Parse(time.RFC3339, t.Now); err != nil {
			return nil, fmt.Errorf("now: %w", err)
		}
	}
	return &Input{Identity: id, Resource: t.Resource, Request: req, Now: now, Session: Session{ID: "test:" + t.Name, StartedAt: now}}, nil
}

// Coverage lists the rules and masks that no test exercised: rules that
// matched in no test's decision, and masks that applied in none. A rule no
// test reaches is a rule whose behaviour nobody has pinned down.
type Coverage struct {
	Rules         int      `json:"rules"`
	UntestedRules []string `json:"untested_rules"`
	Masks         int      `json:"masks"`
	UntestedMasks []string `json:"untested_masks"`
}

// Coverage computes test coverage from RunTests results.
func (p *Policy) Coverage(results []TestResult) Coverage {
	hitRules, hitMasks := map[string]bool{}, map[string]bool{}
	for _, r := range results {
		for _, m := range r.Decision.MatchedRules {
			hitRules[m.Rule] = true
		}
		for _, m := range r.Decision.Masks {
			hitMasks[m.Mask] = true
		}
	}
	c := Coverage{Rules: len(p.rules), Masks: len(p.model.Masks), UntestedRules: []string{}, UntestedMasks: []string{}}
	for _, ref := range sortedKeys(p.rules) {
		if !hitRules[ref] {
			c.UntestedRules = append(c.UntestedRules, ref)
		}
	}
	for _, m := range p.model.Masks {
		if !hitMasks[m.Name] {
			c.UntestedMasks = append(c.UntestedMasks, m.Name)
		}
	}
	return c
}
