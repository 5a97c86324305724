package provider

import (
	"context"
	"slices"

	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
)

// A decision is one request decided the way the gateway would: by the
// gatehouse_decision data source, and by gatehouse_bundle's decisions at
// plan time. The caller is given as a policy test gives it.

// decisionRequest is the request half of a decision, as written.
type decisionRequest struct {
	Identity types.String `tfsdk:"identity"`
	Provider types.String `tfsdk:"identity_provider"`
	Subject  types.String `tfsdk:"subject"`
	Groups   types.List   `tfsdk:"groups"`
	Claims   types.String `tfsdk:"claims"`
	Resource types.String `tfsdk:"resource"`
	SQL      types.String `tfsdk:"sql"`
	Request  types.String `tfsdk:"request"`
	Now      types.String `tfsdk:"now"`
}

// decisionResult is the decided half.
type decisionResult struct {
	Effect       types.String `tfsdk:"effect"`
	MatchedRules types.List   `tfsdk:"matched_rules"`
	Reasons      types.List   `tfsdk:"reasons"`
	Masks        types.Map    `tfsdk:"masks"`
}

const (
	descIdentity = "The identity calling; its provider and subject are used unless given."
	descProvider = "The identity provider of an ad-hoc caller (`provider` in a test block)."
	descSubject  = "The caller's token subject."
	descGroups   = "Groups the caller's token carries."
	descClaims   = "Extra token claims, as a JSON object (`jsonencode({ env = \"prod\" })`)."
	descResource = "The resource called."
	descSQL      = "A PostgreSQL query (several statements allowed). Exactly one of `sql` and `request`."
	descRequest  = "The request as a JSON object (`jsonencode({ kind = \"connect\" })`)."
	descNow      = "The evaluation time, RFC 3339. Default: now."
	descEffect   = "`allow`, `deny` or `review`."
	descRules    = "Rules that matched, as `policy/rule`."
	descReasons  = "Why: the matched rules' reasons, or why nothing matched."
	descMasks    = "Masked targets (a column `schema.table.column`, `detector:NAME`, or a Kubernetes object field `kubernetes:RESOURCE[.GROUP]/PATH`) and their methods."
)

// known reports whether every input is known.
func (q *decisionRequest) known() bool {
	for _, v := range []attr.Value{q.Identity, q.Provider, q.Subject, q.Groups, q.Claims, q.Resource, q.SQL, q.Request, q.Now} {
		if v.IsUnknown() {
			return false
		}
	}
	for _, g := range q.Groups.Elements() {
		if g.IsUnknown() {
			return false
		}
	}
	return true
}

// test is the request as a policy test without expectations.
func (q *decisionRequest) test(ctx context.Context, diags *diag.Diagnostics) *bundle.Test {
	t := &bundle.Test{
		Name: "decision", Identity: q.Identity.ValueString(), Provider: q.Provider.ValueString(),
		Subject: q.Subject.ValueString(), Claims: q.Claims.ValueString(), Resource: q.Resource.ValueString(),
		SQL: q.SQL.ValueString(), Request: q.Request.ValueString(), Now: q.Now.ValueString(),
	}
	diags.Append(q.Groups.ElementsAs(ctx, &t.Groups, false)...)
	return t
}

// decide decides q against pol. The error is the request's (an unknown
// identity, a query that does not parse).
func decide(ctx context.Context, pol *celpolicy.Policy, q *decisionRequest) (decisionResult, uint64, error) {
	var diags diag.Diagnostics
	in, err := pol.TestInput(q.test(ctx, &diags))
	if err != nil {
		return decisionResult{}, 0, err
	}
	dec := pol.Decide(in)
	masks := map[string]string{}
	for _, mk := range dec.Masks {
		masks[mk.Target.String()] = mk.Method
	}
	rules := dec.Rules()
	slices.Sort(rules)
	res := decisionResult{Effect: types.StringValue(string(dec.Effect))}
	res.MatchedRules, _ = types.ListValueFrom(ctx, types.StringType, nonNil(rules))
	res.Reasons, _ = types.ListValueFrom(ctx, types.StringType, nonNil(dec.Reasons))
	res.Masks, _ = types.MapValueFrom(ctx, types.StringType, masks)
	return res, dec.BundleRevision, nil
}

// unknownResult is a result not known until apply.
func unknownResult() decisionResult {
	return decisionResult{
		Effect: types.StringUnknown(), MatchedRules: types.ListUnknown(types.StringType),
		Reasons: types.ListUnknown(types.StringType), Masks: types.MapUnknown(types.StringType),
	}
}

func nonNil(xs []string) []string {
	if xs == nil {
		return []string{}
	}
	return xs
}
