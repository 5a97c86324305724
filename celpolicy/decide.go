package celpolicy

import (
	"fmt"
	"slices"
	"sort"
	"time"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/interpreter"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// Input is everything a decision depends on.
type Input struct {
	Identity Identity
	// Resource names the target resource.
	Resource string
	Request  Request
	Session  Session
	// Now is the evaluation time; zero means time.Now().
	Now time.Time
}

// Decision is the outcome of Decide, with what is needed to explain it.
type Decision struct {
	Effect bundle.Effect `json:"effect"`
	// MatchedRules are the rules whose conditions held, in evaluation order.
	MatchedRules []MatchedRule `json:"matched_rules"`
	// Reasons explain the effect: the reasons of the rules that decided it,
	// evaluation errors, or why nothing allowed the request.
	Reasons []string `json:"reasons"`
	// Masks to apply to the response, sorted by target. Empty on deny.
	Masks []MaskAction `json:"masks"`
	// Approvals needed before a review decision may proceed, one per
	// matching review rule; all must be satisfied.
	Approvals []ApprovalNeed `json:"approvals,omitempty"`
	// BundleRevision is the revision of the bundle that decided.
	BundleRevision uint64 `json:"bundle_revision"`
	// Admin is true when the caller administers the resource (a
	// PostgreSQL resource's admins predicate): other sessions' SQL is not
	// hidden from administrators.
	Admin bool `json:"admin,omitempty"`
	// Masking is the mask plan a protocol's guard decided with the
	// decision (the same as the request's Masking), kept with it so that
	// a reused decision carries its plan.
	Masking *MaskPlan `json:"-"`
}

// Clone copies a decision's lists, so that a reused decision cannot be
// changed through a copy.
func (d Decision) Clone() Decision {
	d.MatchedRules = slices.Clone(d.MatchedRules)
	d.Reasons = slices.Clone(d.Reasons)
	d.Masks = slices.Clone(d.Masks)
	d.Approvals = slices.Clone(d.Approvals)
	return d
}

// MatchedRule is a rule whose condition held.
type MatchedRule struct {
	Rule   string        `json:"rule"` // "policy/rule"
	Effect bundle.Effect `json:"effect"`
	Reason string        `json:"reason"`
}

// MaskAction is one masked target.
type MaskAction struct {
	Target MaskTarget `json:"target"`
	Method string     `json:"method"`
	// Mask names the mask block.
	Mask string `json:"mask"`
	// AllowInPredicates lets statements filter, join, sort, group and
	// compute on the column (the mask's allow_in_predicates; never set
	// for a Kubernetes field).
	AllowInPredicates bool `json:"allow_in_predicates,omitempty"`
}

// ApprovalNeed says who must approve a review decision, and how the
// request waits for them.
type ApprovalNeed struct {
	Rule    string        `json:"rule"`
	Reason  string        `json:"reason"`
	Groups  []string      `json:"groups"`
	Count   int           `json:"count"`
	Timeout time.Duration `json:"timeout"`
	// Hold: the statement waits in its session (for up to Wait).
	Hold bool          `json:"hold"`
	Wait time.Duration `json:"wait"`
	// ValidFor is how long an approval may be used once given; Reusable
	// lets it be used more than once.
	ValidFor time.Duration `json:"valid_for"`
	Reusable bool          `json:"reusable,omitempty"`
	// Webhook is not part of a decision's JSON: decisions are recorded,
	// and a webhook URL may be a secret.
	Webhook *bundle.Webhook `json:"-"`
}

// Rules names the matched rules.
func (d *Decision) Rules() []string {
	out := make([]string, len(d.MatchedRules))
	for i, r := range d.MatchedRules {
		out[i] = r.Rule
	}
	return out
}

// activation hands Decide's input to CEL without building a map per call.
type activation struct {
	identity *Identity
	resource *Resource
	request  any
	session  *Session
	now      types.Timestamp
}

func (a *activation) ResolveName(name string) (any, bool) {
	switch name {
	case "identity":
		return a.identity, true
	case "resource":
		return a.resource, true
	case "request":
		return a.request, true
	case "session":
		return a.session, true
	case "now":
		return a.now, true
	}
	return nil, false
}

func (a *activation) Parent() interpreter.Activation { return nil }

func deny(rev uint64, reason string) Decision {
	return Decision{Effect: bundle.EffectDeny, MatchedRules: []MatchedRule{}, Reasons: []string{reason}, Masks: []MaskAction{}, BundleRevision: rev}
}

// Decide evaluates a request. Deny by default; any matching deny wins;
// otherwise a matching review holds the request; otherwise a matching allow
// allows it. Every rule that applies is evaluated, so that the decision lists
// all matched rules. Anything that goes wrong (an unknown resource, a request
// of the wrong kind, SQL that does not parse, an evaluation error or a
// cost-limit overrun) denies, with the cause as the reason: the gateway never
// lets a request through because it could not judge it.
func (p *Policy) Decide(in *Input) Decision {
	e, ok := p.resources[in.Resource]
	if !ok {
		return deny(p.revision, fmt.Sprintf("resource %q is not defined in bundle revision %d", in.Resource, p.revision))
	}
	if in.Request == nil {
		return deny(p.revision, "no request to decide")
	}
	if k := in.Request.ResourceKind(); k != e.value.Kind {
		return deny(p.revision, fmt.Sprintf("a %s request cannot be sent to %s resource %q", k, e.value.Kind, in.Resource))
	}
	kind := in.Request.RequestKind()
	if !slices.Contains(bundle.RequestKinds[e.value.Kind], kind) {
		return deny(p.revision, fmt.Sprintf("%q is not a request kind of %s resources", kind, e.value.Kind))
	}
	if why := in.Request.Invalid(); why != "" {
		return deny(p.revision, why)
	}
	now := in.Now
	if now.IsZero() {
		now = time.Now()
	}
	act := &activation{identity: &in.Identity, resource: &e.value, request: in.Request, session: &in.Session, now: types.Timestamp{Time: now}}

	d := Decision{MatchedRules: []MatchedRule{}, Reasons: []string{}, Masks: []MaskAction{}, BundleRevision: p.revision}
	var denies, reviews, allows, errs []string
	for _, r := range e.rules[kind] {
		if !r.policy.covers(&in.Identity) {
			continue
		}
		matched, err := eval(r.prg, act)
		if err != nil {
			errs = append(errs, fmt.Sprintf("rule %s could not be evaluated, so the request is denied: %v", r.ref, err))
			continue
		}
		if !matched {
			continue
		}
		d.MatchedRules = append(d.MatchedRules, MatchedRule{Rule: r.ref, Effect: r.rule.Effect, Reason: r.rule.Reason})
		switch r.rule.Effect {
		case bundle.EffectDeny:
			denies = append(denies, r.rule.Reason)
		case bundle.EffectReview:
			reviews = append(reviews, r.rule.Reason)
			a := r.rule.Approval
			d.Approvals = append(d.Approvals, approvalNeed(r.ref, r.rule.Reason, a))
		case bundle.EffectAllow:
			allows = append(allows, r.rule.Reason)
		}
	}
	switch {
	case len(denies) > 0 || len(errs) > 0:
		d.Effect = bundle.EffectDeny
		d.Reasons = append(append(d.Reasons, denies...), errs...)
		d.Approvals = nil
		return d
	case len(reviews) > 0:
		d.Effect = bundle.EffectReview
		d.Reasons = append(d.Reasons, reviews...)
	case len(allows) > 0:
		d.Effect = bundle.EffectAllow
		d.Reasons = append(d.Reasons, allows...)
	default:
		d.Effect = bundle.EffectDeny
		d.Reasons = append(d.Reasons, fmt.Sprintf("no rule allows this %s request by %s on %q (deny by default)", kind, describeCaller(&in.Identity), in.Resource))
		return d
	}
	d.Masks = p.masks(e, act)
	if e.admins != nil {
		d.Admin, _ = eval(e.admins, act)
	}
	if p.guard != nil {
		if req, ok := in.Request.(*PostgresRequest); ok && req.Kind == "query" && e.postgres != nil {
			d = p.guard(e.postgres, req, d)
		}
	}
	return d
}

func describeCaller(id *Identity) string {
	if id.Name != "" {
		return fmt.Sprintf("identity %q", id.Name)
	}
	return fmt.Sprintf("subject %q", id.Subject)
}

// eval runs a boolean program. A nil program is an absent condition: true.
func eval(prg cel.Program, act *activation) (bool, error) {
	if prg == nil {
		return true, nil
	}
	out, _, err := prg.Eval(act)
	if err != nil {
		return false, err
	}
	b, ok := out.Value().(bool)
	if !ok {
		return false, fmt.Errorf("condition gave %v, not a bool", out)
	}
	return b, nil
}

// masks returns the masks that apply. An `unless` that fails to evaluate
// counts as false: the mask applies (fail closed).
func (p *Policy) masks(e *resourceEntry, act *activation) []MaskAction {
	if len(e.masks) == 0 {
		return []MaskAction{}
	}
	byTarget := map[MaskTarget]MaskAction{}
	for _, m := range e.masks {
		if m.unless != nil {
			if skip, err := eval(m.unless, act); err == nil && skip {
				continue
			}
		}
		add := func(target MaskTarget) {
			cur, ok := byTarget[target]
			if !ok || bundle.MaskStrength(m.mask.Method) > bundle.MaskStrength(cur.Method) {
				byTarget[target] = MaskAction{Target: target, Method: m.mask.Method, Mask: m.mask.Name, AllowInPredicates: m.mask.AllowInPredicates}
			}
		}
		for _, c := range m.columns {
			add(MaskTarget{Column: c})
		}
		for _, d := range m.mask.Detectors {
			add(MaskTarget{Detector: d})
		}
		for _, f := range m.fields {
			add(MaskTarget{Field: f})
		}
	}
	out := make([]MaskAction, 0, len(byTarget))
	for _, a := range byTarget {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Target.String() < out[j].Target.String() })
	return out
}

// Cacheable reports whether decisions for a resource's requests of a kind
// depend only on the caller, the resource and the request: no rule, mask
// condition or admins predicate that applies reads now or session. A
// protocol may then reuse a decision for the same caller, request facts and
// bundle revision (a Policy is one revision).
func (p *Policy) Cacheable(resource, kind string) bool {
	key := resource + "\x00" + kind
	if v, ok := p.cacheable.Load(key); ok {
		return v.(bool)
	}
	e, ok := p.resources[resource]
	ok = ok && (e.admins == nil || !p.dynamic[e.admins])
	if ok {
		for _, r := range e.rules[kind] {
			if r.prg != nil && p.dynamic[r.prg] {
				ok = false
				break
			}
		}
	}
	if ok {
		for _, m := range e.masks {
			if m.unless != nil && p.dynamic[m.unless] {
				ok = false
				break
			}
		}
	}
	p.cacheable.Store(key, ok)
	return ok
}
