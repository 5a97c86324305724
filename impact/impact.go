package impact

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
)

// Direction is which way a change moves access.
type Direction string

const (
	// Narrow: less access (allow becomes review or deny, review becomes
	// deny, masks added).
	Narrow Direction = "narrow"
	// Widen: more access (deny becomes review or allow, review becomes
	// allow, masks removed).
	Widen Direction = "widen"
	// Changed: neither strictly (masks exchanged for others).
	Changed Direction = "changed"
)

// Outcome is one side of a change: an effect and the masks it applies.
type Outcome struct {
	Effect string   `json:"effect"`
	Masks  []string `json:"masks,omitempty"`
}

func (o Outcome) String() string {
	if len(o.Masks) == 0 {
		return o.Effect
	}
	return o.Effect + " (masked: " + strings.Join(o.Masks, ", ") + ")"
}

// Change is a group of requests whose decision would change the same way:
// the same caller identity, resource, outcomes and deciding rule.
type Change struct {
	Direction Direction `json:"direction"`
	From      Outcome   `json:"from"`
	To        Outcome   `json:"to"`
	Identity  string    `json:"identity"`
	Resource  string    `json:"resource"`
	// Rule is what decides under the new policy: the rule (or rules)
	// whose effect it is, or why none does.
	Rule string `json:"rule"`
	// Reason is the new decision's reason.
	Reason string `json:"reason,omitempty"`
	// Requests counts the requests, Shapes the distinct requests.
	Requests int64 `json:"requests"`
	Shapes   int   `json:"shapes"`
	// Approximate counts the requests whose caller was resolved from the
	// groups recorded after resolution (older recordings).
	Approximate int64 `json:"approximate,omitempty"`
	// Examples are a few of the requests (normalised SQL unless constants
	// were kept).
	Examples []string `json:"examples"`
}

// Report is what a policy change does to recorded traffic.
type Report struct {
	Old     string `json:"old"`
	New     string `json:"new"`
	Traffic string `json:"traffic"`
	// Requests, Shapes and Sessions describe the traffic replayed.
	Requests int64 `json:"requests"`
	Shapes   int   `json:"shapes"`
	Sessions int   `json:"sessions,omitempty"`
	// Narrowed, Widened and Changed count requests by direction.
	Narrowed int64 `json:"narrowed"`
	Widened  int64 `json:"widened"`
	Changed  int64 `json:"changed"`
	// Approximate counts requests replayed with recorded (resolved) groups.
	Approximate int64    `json:"approximate"`
	Changes     []Change `json:"changes"`
	// Skipped counts requests that could not be replayed, by why.
	Skipped map[string]int64 `json:"skipped,omitempty"`
}

// CompareOptions tune Compare.
type CompareOptions struct {
	// Examples is how many examples each change keeps (default 3).
	Examples int
}

// Compare decides every record under both policies and groups the
// requests whose outcome changes. Each record (one caller, resource and
// request shape) is decided once, whatever its count.
func Compare(oldP, newP *celpolicy.Policy, t *Traffic, o CompareOptions) *Report {
	if o.Examples <= 0 {
		o.Examples = 3
	}
	rep := &Report{Requests: t.Requests, Shapes: len(t.Records), Sessions: t.Sessions, Skipped: map[string]int64{}}
	for k, v := range t.Skipped {
		rep.Skipped[k] = v
	}
	oldR, newR := newReplayer(oldP), newReplayer(newP)
	groups := map[string]*Change{}
	var order []string
	for _, r := range t.Records {
		if r.Approximate() {
			rep.Approximate += r.Count
		}
		before, err := oldR.decide(r)
		if err != nil {
			rep.Skipped["requests that do not decode: "+err.Error()] += r.Count
			continue
		}
		after, err := newR.decide(r)
		if err != nil {
			rep.Skipped["requests that do not decode: "+err.Error()] += r.Count
			continue
		}
		dir, ok := direction(before.out, after.out)
		if !ok {
			continue
		}
		identity := cmp.Or(after.identity, before.identity, r.Identity, "(no identity) "+r.Subject)
		key := strings.Join([]string{string(dir), before.out.String(), after.out.String(), identity, r.Resource, after.rule}, "\x00")
		c, ok := groups[key]
		if !ok {
			c = &Change{Direction: dir, From: before.out, To: after.out, Identity: identity, Resource: r.Resource,
				Rule: after.rule, Reason: after.reason, Examples: []string{}}
			groups[key] = c
			order = append(order, key)
		}
		c.Requests += r.Count
		c.Shapes++
		if r.Approximate() {
			c.Approximate += r.Count
		}
		if len(c.Examples) < o.Examples && !slices.Contains(c.Examples, r.Example) {
			c.Examples = append(c.Examples, r.Example)
		}
		switch dir {
		case Narrow:
			rep.Narrowed += r.Count
		case Widen:
			rep.Widened += r.Count
		default:
			rep.Changed += r.Count
		}
	}
	for _, k := range order {
		rep.Changes = append(rep.Changes, *groups[k])
	}
	slices.SortStableFunc(rep.Changes, func(a, b Change) int {
		return cmp.Or(cmp.Compare(directionRank(a.Direction), directionRank(b.Direction)), cmp.Compare(b.Requests, a.Requests),
			cmp.Compare(a.Identity, b.Identity), cmp.Compare(a.Resource, b.Resource))
	})
	return rep
}

func directionRank(d Direction) int {
	switch d {
	case Widen:
		return 0
	case Changed:
		return 1
	}
	return 2
}

// direction compares two outcomes; false when they are the same.
func direction(before, after Outcome) (Direction, bool) {
	rb, ra := rank(before.Effect), rank(after.Effect)
	switch {
	case ra > rb:
		return Widen, true
	case ra < rb:
		return Narrow, true
	case before.Effect != string(bundle.EffectAllow) || slices.Equal(before.Masks, after.Masks):
		return "", false
	}
	// Both allow, with different masks.
	removed := !isSubset(before.Masks, after.Masks)
	added := !isSubset(after.Masks, before.Masks)
	switch {
	case removed && added:
		return Changed, true
	case removed:
		return Widen, true
	}
	return Narrow, true
}

func isSubset(a, b []string) bool {
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

// rank orders effects by how much they let through.
func rank(effect string) int {
	switch effect {
	case string(bundle.EffectAllow):
		return 2
	case string(bundle.EffectReview):
		return 1
	}
	return 0
}

// replayer decides records under one policy.
type replayer struct {
	p *celpolicy.Policy
	// connect caches whether a caller may connect to a resource.
	connect map[string]decided
}

type decided struct {
	out      Outcome
	identity string
	rule     string
	reason   string
}

func newReplayer(p *celpolicy.Policy) *replayer {
	return &replayer{p: p, connect: map[string]decided{}}
}

// decide is the outcome of a record's requests under the policy: the
// caller is resolved again (a token from an issuer the policy does not
// trust, or that resolves ambiguously, is refused as the gateway would),
// the connection decided, then the request.
func (rp *replayer) decide(r *Record) (decided, error) {
	req, err := celpolicy.DecodeRecorded(r.Kind, r.Request)
	if err != nil {
		return decided{}, err
	}
	kind, ok := rp.p.ResourceKind(r.Resource)
	if !ok || kind != r.Kind {
		return denied("", "(resource not in the policy)", fmt.Sprintf("the policy has no %s resource %q", r.Kind, r.Resource)), nil
	}
	id, err := rp.resolve(r)
	if err != nil {
		return denied("", "(caller not admitted)", err.Error()), nil
	}
	in := &celpolicy.Input{Identity: id, Resource: r.Resource, Now: r.Last}
	ckey := strings.Join([]string{id.Name, id.Issuer, id.Subject, strings.Join(id.Groups, "\x01"), r.Resource}, "\x00")
	c, ok := rp.connect[ckey]
	if !ok {
		c = decided{out: Outcome{Effect: string(bundle.EffectAllow)}}
		if creq, decides := celpolicy.ConnectRequest(r.Kind); decides {
			in.Request = creq
			if d := rp.p.Decide(in); d.Effect != bundle.EffectAllow {
				c = denied(id.Name, deciding(d), "connection: "+strings.Join(d.Reasons, "; "))
			}
		}
		rp.connect[ckey] = c
	}
	if c.out.Effect != string(bundle.EffectAllow) {
		return c, nil
	}
	in.Request = req
	d := rp.p.Decide(in)
	out := Outcome{Effect: string(d.Effect)}
	if d.Effect == bundle.EffectAllow {
		for _, m := range d.Masks {
			out.Masks = append(out.Masks, fmt.Sprintf("%s=%s", m.Target, m.Method))
		}
		slices.Sort(out.Masks)
	}
	return decided{out: out, identity: id.Name, rule: deciding(d), reason: strings.Join(d.Reasons, "; ")}, nil
}

func denied(identity, rule, reason string) decided {
	return decided{out: Outcome{Effect: string(bundle.EffectDeny)}, identity: identity, rule: rule, reason: reason}
}

// deciding names the rules whose effect the decision has, or why none.
func deciding(d celpolicy.Decision) string {
	var rules []string
	for _, m := range d.MatchedRules {
		if m.Effect == d.Effect {
			rules = append(rules, m.Rule)
		}
	}
	if len(rules) > 0 {
		return strings.Join(rules, ", ")
	}
	if d.Effect == bundle.EffectDeny {
		return "(no rule allows it)"
	}
	return "(none)"
}

// resolve resolves a record's caller as the gateway would: the provider
// that trusts the issuer, then the identity the token matches.
func (rp *replayer) resolve(r *Record) (celpolicy.Identity, error) {
	// By the provider's name when recorded (an issuer's URL differs
	// between environments, as gatehouse dev's does from the policy's),
	// else by the issuer.
	var provider *bundle.IdentityProvider
	for i := range rp.p.Model().IdentityProviders {
		ip := &rp.p.Model().IdentityProviders[i]
		if r.Provider != "" && ip.Name == r.Provider || r.Provider == "" && ip.Issuer == r.Issuer {
			provider = ip
			break
		}
	}
	if provider == nil {
		if r.Provider != "" {
			return celpolicy.Identity{}, fmt.Errorf("the policy has no identity provider %q", r.Provider)
		}
		return celpolicy.Identity{}, fmt.Errorf("no identity provider trusts issuer %q", r.Issuer)
	}
	groups := r.TokenGroups
	if r.Approximate() {
		// Older recordings kept only the resolved groups: take them back
		// to the token's (without the provider's prefix) as best we can.
		groups = nil
		for _, g := range r.Groups {
			groups = append(groups, strings.TrimPrefix(g, provider.GroupsPrefix))
		}
	}
	claim := cmp.Or(provider.GroupsClaim, "groups")
	anyGroups := make([]any, len(groups))
	for i, g := range groups {
		anyGroups[i] = g
	}
	claims := map[string]any{}
	for k, v := range r.Claims {
		claims[k] = v
	}
	claims["iss"], claims["sub"], claims[claim] = provider.Issuer, r.Subject, anyGroups
	// The provider's own issuer: the recorded one may be another
	// environment's (the provider was matched by name).
	tok := celpolicy.Token{Issuer: provider.Issuer, Subject: r.Subject, Claims: claims}
	return rp.p.ResolveIdentity(provider.Name, tok)
}
