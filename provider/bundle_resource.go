package provider

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/booldefault"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-framework/types/basetypes"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

// bundleResource compiles objects into a signed bundle and publishes it to
// a file. Its plan shows the objects added, removed and changed (a changed
// object as an in-place update of its entry in objects), who gains or
// loses what, and its decisions; at apply it signs a bundle with a higher
// revision. If the file is changed or deleted behind Terraform's back,
// refresh shows the digest that is there now, and the plan publishes again.
type bundleResource struct{ cfg *config }

var (
	_ resource.ResourceWithValidateConfig = (*bundleResource)(nil)
	_ resource.ResourceWithModifyPlan     = (*bundleResource)(nil)
	_ resource.ResourceWithImportState    = (*bundleResource)(nil)
	_ resource.ResourceWithConfigure      = (*bundleResource)(nil)
	_ resource.ResourceWithUpgradeState   = (*bundleResource)(nil)
)

type bundleModel struct {
	ID       types.String `tfsdk:"id"`
	File     types.String `tfsdk:"file"`
	Objects  types.Map    `tfsdk:"objects"`
	RunTests types.Bool   `tfsdk:"run_tests"`
	// WarnUnlisted: report gatehouse_* objects planned in this provider
	// configuration that no bundle lists.
	WarnUnlisted types.Bool `tfsdk:"warn_unlisted_objects"`
	// Decisions are requests decided against the planned objects at plan
	// time, for check blocks and terraform test.
	Decisions types.Map    `tfsdk:"decisions"`
	Revision  types.Int64  `tfsdk:"revision"`
	Digest    types.String `tfsdk:"digest"`
	KeyID     types.String `tfsdk:"key_id"`
	CreatedAt types.String `tfsdk:"created_at"`
	// AccessChanges is who gains or loses what with these objects, against
	// the objects in the state: what a reviewer reads in the plan.
	AccessChanges types.List `tfsdk:"access_changes"`
}

// bundleDecision is one element of decisions.
type bundleDecision struct {
	decisionRequest
	decisionResult
}

var decisionAttrTypes = map[string]attr.Type{
	"identity": types.StringType, "identity_provider": types.StringType, "subject": types.StringType,
	"groups": types.ListType{ElemType: types.StringType}, "claims": types.StringType, "resource": types.StringType,
	"sql": types.StringType, "request": types.StringType, "now": types.StringType,
	"effect": types.StringType, "matched_rules": types.ListType{ElemType: types.StringType},
	"reasons": types.ListType{ElemType: types.StringType}, "masks": types.MapType{ElemType: types.StringType},
}

// privatePublished is the private-state key holding the digest this
// resource last wrote, to tell drift from a normal refresh.
const privatePublished = "published_digest"

func (r *bundleResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_bundle"
}

func (r *bundleResource) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	computed := func(desc string) schema.StringAttribute {
		return schema.StringAttribute{Computed: true, MarkdownDescription: desc}
	}
	in := func(desc string) schema.StringAttribute {
		return schema.StringAttribute{Optional: true, MarkdownDescription: desc}
	}
	resp.Schema = schema.Schema{
		// Version 1: objects is a map keyed by KIND/NAME (a set before), so
		// that a changed object plans as an in-place update of its entry.
		Version: 1,
		MarkdownDescription: "Compiles policy objects into a signed bundle and publishes it to a file that gateways watch. " +
			"At plan time every object is validated together (references, duplicate names, CEL against the actual resource kind) " +
			"and the policy tests run; a failing test stops the plan. An error about one object is reported on that object's entry " +
			"in `objects`, with the resource type, name and attribute. Each apply that changes the objects publishes a bundle with a " +
			"higher revision, so gateways take it and refuse older ones. If the file is changed or deleted outside Terraform, " +
			"the next plan publishes it again.\n\n" +
			"The plan says who gains or loses what (`access_changes`) and decides the `decisions`, against the planned objects.\n\n" +
			"**Objects in no bundle.** A `gatehouse_*` object planned in the same provider configuration that no bundle lists is " +
			"reported with a warning (it would never be published): on this bundle when the object planned first, or on the object " +
			"when this bundle did. With one bundle per provider configuration the warning is exact. With several, an object that only " +
			"a bundle planned later lists can be reported by one planned earlier: set `warn_unlisted_objects = false`, or give each " +
			"bundle and its objects a provider configuration (alias) of their own.\n\n" +
			"Import with the bundle file's path: the objects are read from it, verified with the provider's keys.",
		Attributes: map[string]schema.Attribute{
			"id": schema.StringAttribute{Computed: true, MarkdownDescription: "The file path.",
				PlanModifiers: []planmodifier.String{stringplanmodifier.UseStateForUnknown()}},
			"file": schema.StringAttribute{Required: true, MarkdownDescription: "Where to publish the bundle (written atomically). Changing it publishes to the new path and removes the old file.",
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplace()}},
			"objects": schema.MapAttribute{ElementType: types.StringType, Required: true,
				MarkdownDescription: "The objects in the bundle: the `spec` attributes of `gatehouse_*` resources, each keyed by its kind and name, " +
					"`KIND/NAME` (`\"policy/guardrails\" = gatehouse_policy.guardrails.spec`; the kinds are `identity_provider`, `identity`, " +
					"`postgres`, `ssh_host`, `kubernetes_cluster`, `policy`, `mask` and `test`). A changed object plans as an in-place update of its entry, " +
					"showing only what changed in it. Modules contribute objects by outputting such a map: " +
					"`objects = merge(module.team_a.gatehouse_objects, { \"policy/guardrails\" = gatehouse_policy.guardrails.spec })`."},
			"run_tests": schema.BoolAttribute{Optional: true, Computed: true, Default: booldefault.StaticBool(true),
				MarkdownDescription: "Run the `gatehouse_policy_test` objects at plan and apply, and refuse to publish when one fails. Default true."},
			"warn_unlisted_objects": schema.BoolAttribute{Optional: true, Computed: true, Default: booldefault.StaticBool(true),
				MarkdownDescription: "Warn at plan time about `gatehouse_*` objects of this provider configuration that no bundle lists. Default true. " +
					"Set it to false on the bundles of a provider configuration that has several bundles, or objects meant to stay out of every bundle."},
			"decisions": schema.MapNestedAttribute{Optional: true,
				MarkdownDescription: "Requests decided the way the gateway would, against the objects this bundle is about to publish, at plan time: " +
					"the plan shows a result when it changes, and `check` blocks and `terraform test` assert on them " +
					"(`gatehouse_bundle.policy.decisions[\"billing_drop\"].effect == \"deny\"`). Deciding them never publishes the bundle again: " +
					"a change to `decisions` alone updates them in the state. A request that depends on the time should set `now`, or its result " +
					"can differ between plan and apply.",
				NestedObject: schema.NestedAttributeObject{Attributes: map[string]schema.Attribute{
					"identity":          in(descIdentity),
					"identity_provider": in(descProvider),
					"subject":           in(descSubject),
					"groups":            schema.ListAttribute{ElementType: types.StringType, Optional: true, MarkdownDescription: descGroups},
					"claims":            in(descClaims),
					"resource":          schema.StringAttribute{Required: true, MarkdownDescription: descResource},
					"sql":               in(descSQL),
					"request":           in(descRequest),
					"now":               in(descNow),
					"effect":            computed(descEffect),
					"matched_rules":     schema.ListAttribute{ElementType: types.StringType, Computed: true, MarkdownDescription: descRules},
					"reasons":           schema.ListAttribute{ElementType: types.StringType, Computed: true, MarkdownDescription: descReasons},
					"masks":             schema.MapAttribute{ElementType: types.StringType, Computed: true, MarkdownDescription: descMasks},
				}}},
			"revision":   schema.Int64Attribute{Computed: true, MarkdownDescription: "The published bundle's revision: the Unix time of the apply, or one more than the previous revision if that is higher. Gateways only ever move to a higher revision."},
			"digest":     computed("`sha256:` and the SHA-256 of the signed payload, as `gatehouse bundle verify` and the gateway report it. After a refresh, the digest of what the file holds now (empty when it is missing)."),
			"key_id":     computed("The id of the signing key."),
			"created_at": computed("When it was built (RFC 3339)."),
			"access_changes": schema.ListAttribute{ElementType: types.StringType, Computed: true,
				MarkdownDescription: "Who gains or loses what with this configuration's objects, against the bundle in the state, computed at plan " +
					"time so that `terraform plan` shows it: one line per caller, resource and change, with the rules that decide it, for example " +
					"`identity analytics-job lost allow on \"orders\" via analytics-read-only/read (3 probe requests, e.g. SELECT * FROM public.payments WHERE id = 1; ...)`. Both policies decide the same " +
					"probe requests, as `gatehouse bundle diff` does. Empty for a new bundle, or when access does not change; kept from the last " +
					"apply while the objects do not change."},
		},
	}
}

func (r *bundleResource) Configure(_ context.Context, req resource.ConfigureRequest, _ *resource.ConfigureResponse) {
	if c, ok := req.ProviderData.(*config); ok {
		r.cfg = c
	}
}

// ValidateConfig checks the objects together: what no single object can
// know (references, duplicates, CEL against its resource kind), then the
// policy tests; and that each decision is a request.
func (r *bundleResource) ValidateConfig(ctx context.Context, req resource.ValidateConfigRequest, resp *resource.ValidateConfigResponse) {
	var m bundleModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	validateDecisions(ctx, m.Decisions, &resp.Diagnostics)
	objects, known := knownObjects(m.Objects)
	if !known {
		return // checked at plan, once known
	}
	runTests := m.RunTests.IsNull() || m.RunTests.IsUnknown() || m.RunTests.ValueBool()
	compileObjects(objects, runTests, &resp.Diagnostics)
}

// knownObjects reads objects; false while any of them is unknown.
func knownObjects(v types.Map) (map[string]string, bool) {
	if v.IsUnknown() || v.IsNull() {
		return nil, false
	}
	out := map[string]string{}
	for k, e := range v.Elements() {
		s, ok := e.(types.String)
		if !ok || s.IsUnknown() {
			return nil, false
		}
		out[k] = s.ValueString()
	}
	return out, true
}

func validateDecisions(ctx context.Context, v types.Map, diags *diag.Diagnostics) {
	if v.IsNull() || v.IsUnknown() {
		return
	}
	var ds map[string]bundleDecision
	if d := v.ElementsAs(ctx, &ds, false); d.HasError() {
		return // unknown elements: checked at plan
	}
	for key, d := range ds {
		at := path.Root("decisions").AtMapKey(key)
		if !d.SQL.IsUnknown() && !d.Request.IsUnknown() && d.SQL.IsNull() == d.Request.IsNull() {
			diags.AddAttributeError(at, "Invalid decision", fmt.Sprintf("decisions[%q]: give exactly one of sql and request.", key))
		}
		if !d.Identity.IsUnknown() && !d.Provider.IsUnknown() && d.Identity.IsNull() && d.Provider.IsNull() {
			diags.AddAttributeError(at, "Invalid decision", fmt.Sprintf("decisions[%q]: give the caller: identity, or identity_provider and subject.", key))
		}
	}
}

// objectsPath is where a problem with one object is reported: its entry
// in objects. Terraform shows the line of that entry in the configuration
// (the one naming the resource) when objects is written as a map there.
func objectsPath(objects map[string]string, key string) path.Path {
	if _, ok := objects[key]; ok {
		return path.Root("objects").AtMapKey(key)
	}
	return path.Root("objects")
}

// compileObjects builds, validates and compiles the model of a bundle's
// objects and runs its tests when asked. A problem is reported on the
// object's entry in objects, and names the resource type, the object and
// the attribute inside it: only the bundle sees the objects together, so
// Terraform cannot show it on the object's own resource.
func compileObjects(objects map[string]string, runTests bool, diags *diag.Diagnostics) (*bundle.Model, bool) {
	keys, _ := keyedSpecs(objects)
	m := &bundle.Model{}
	bad := false
	for _, key := range keys {
		kind, obj, err := parseSpec(objects[key])
		if err != nil {
			diags.AddAttributeError(objectsPath(objects, key), "Invalid object", fmt.Sprintf("objects[%q]: %v", key, err))
			bad = true
			continue
		}
		if want := objectKey(kind, objectName(obj)); want != key {
			diags.AddAttributeError(objectsPath(objects, key), "Object under the wrong key",
				fmt.Sprintf("objects[%q] holds %s %q: key each object by its kind and name, %q = gatehouse_%s.<name>.spec, so that the plan, "+
					"errors and warnings name the object it holds.", key, kind, objectName(obj), want, typeSuffixOf(kind)))
			bad = true
			continue
		}
		add(m, obj)
	}
	if bad {
		return nil, false
	}
	m.Normalize()
	pol, err := celpolicy.Compile(m, sqlfacts.Analysis())
	var ps bundle.Problems
	if errors.As(err, &ps) {
		for _, p := range ps {
			obj := findObject(m, p.Ref)
			summary, detail := problemText(obj, p)
			key := objectKey(p.Ref.Kind, p.Ref.Name)
			at := "gatehouse_" + typeSuffixOf(p.Ref.Kind) + fmt.Sprintf(" %q", p.Ref.Name)
			if obj != nil {
				if attr := problemPath(obj, p.Ref); !attr.Equal(path.Root("name")) || p.Ref.Attr == "name" {
					at += ", " + attr.String()
				}
			}
			if p.Span == nil {
				summary += " in " + at
			}
			diags.AddAttributeError(objectsPath(objects, key), summary,
				fmt.Sprintf("%s\n\nIn %s: found when checking the bundle's objects together, so it is reported on its entry objects[%q].", detail, at, key))
		}
		return nil, false
	}
	if err != nil {
		diags.AddAttributeError(path.Root("objects"), "Cannot compile the policy", err.Error())
		return nil, false
	}
	if runTests {
		failed := 0
		for _, res := range pol.RunTests() {
			if res.Passed {
				continue
			}
			failed++
			key := objectKey("test", res.Name)
			diags.AddAttributeError(objectsPath(objects, key), fmt.Sprintf("Policy test %q fails", res.Name),
				fmt.Sprintf("gatehouse_policy_test %q: %s\nrequest: %s\ndecision: %s by [%s]: %s\n\nFix the policy or the test, or set run_tests = false to publish anyway.",
					res.Name, strings.Join(res.Failures, "; "), res.Request, res.Decision.Effect, strings.Join(res.Decision.Rules(), ", "), strings.Join(res.Decision.Reasons, "; ")))
		}
		if failed > 0 {
			return nil, false
		}
	}
	return m, true
}

// compileSpecs builds, validates and compiles the model of a list of
// specs (gatehouse_decision's deprecated objects) and runs its tests when
// asked. Problems are attribute errors on objects.
func compileSpecs(specs []string, runTests bool, diags *diag.Diagnostics) (*bundle.Model, bool) {
	m, err := modelFromSpecs(specs)
	if err != nil {
		diags.AddAttributeError(path.Root("objects"), "Invalid objects", err.Error())
		return nil, false
	}
	m.Normalize()
	pol, err := celpolicy.Compile(m, sqlfacts.Analysis())
	var ps bundle.Problems
	if errors.As(err, &ps) {
		for _, p := range ps {
			obj := findObject(m, p.Ref)
			addProblems(diags, obj, bundle.Problems{p}, fmt.Sprintf("%s %q: ", p.Ref.Kind, p.Ref.Name))
		}
		return nil, false
	}
	if err != nil {
		diags.AddAttributeError(path.Root("objects"), "Cannot compile the policy", err.Error())
		return nil, false
	}
	if runTests {
		for _, res := range pol.RunTests() {
			if !res.Passed {
				diags.AddAttributeError(path.Root("objects"), fmt.Sprintf("Policy test %q fails", res.Name), strings.Join(res.Failures, "; "))
			}
		}
		if diags.HasError() {
			return nil, false
		}
	}
	return m, true
}

// findObject returns the model object a Ref names.
func findObject(m *bundle.Model, ref bundle.Ref) any {
	var found any
	each(m, func(kind string, obj any) {
		if kind == ref.Kind && objectName(obj) == ref.Name {
			found = obj
		}
	})
	return found
}

// ModifyPlan fills in what the plan shows: who gains or loses what, the
// decisions, and whether apply publishes (only when the objects change, or
// the file drifted); and reports objects of this run that no bundle lists.
func (r *bundleResource) ModifyPlan(ctx context.Context, req resource.ModifyPlanRequest, resp *resource.ModifyPlanResponse) {
	if req.Plan.Raw.IsNull() {
		return
	}
	var plan bundleModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() {
		return
	}
	r.reportUnlisted(plan, &resp.Diagnostics)

	objects, known := knownObjects(plan.Objects)
	var pol *celpolicy.Policy
	if known {
		pol, _ = policyOfObjects(objects) // ValidateConfig reports what is wrong
	}
	var state *bundleModel
	if !req.State.Raw.IsNull() {
		state = &bundleModel{}
		resp.Diagnostics.Append(req.State.Get(ctx, state)...)
	}
	r.planAccessChanges(ctx, plan, state, pol, known, resp)
	if !plan.Decisions.IsNull() {
		decisions, d := decideAll(ctx, plan.Decisions, pol)
		resp.Diagnostics.Append(d...)
		resp.Diagnostics.Append(resp.Plan.SetAttribute(ctx, path.Root("decisions"), decisions)...)
	}
	if state == nil || resp.Diagnostics.HasError() {
		return
	}

	published, diags := req.Private.GetKey(ctx, privatePublished)
	resp.Diagnostics.Append(diags...)
	var want string
	if len(published) > 0 {
		_ = json.Unmarshal(published, &want)
	}
	if want != "" && want != state.Digest.ValueString() {
		what := fmt.Sprintf("holds a bundle with digest %s, not the %s this resource published", state.Digest.ValueString(), want)
		if state.Digest.ValueString() == "" {
			what = "is missing, or is not a bundle"
		}
		resp.Diagnostics.AddWarning("The published bundle changed outside Terraform",
			fmt.Sprintf("%s %s. Apply publishes the bundle again, with a higher revision.", state.File.ValueString(), what))
		for _, a := range []string{"digest", "key_id", "created_at"} {
			resp.Diagnostics.Append(resp.Plan.SetAttribute(ctx, path.Root(a), types.StringUnknown())...)
		}
		resp.Diagnostics.Append(resp.Plan.SetAttribute(ctx, path.Root("revision"), types.Int64Unknown())...)
		return
	}
	if plan.Objects.Equal(state.Objects) {
		// Nothing to publish (decisions, run_tests or warn_unlisted_objects
		// changed, or nothing did): the published bundle stays, and apply
		// only records the new settings.
		resp.Diagnostics.Append(resp.Plan.SetAttribute(ctx, path.Root("digest"), state.Digest)...)
		resp.Diagnostics.Append(resp.Plan.SetAttribute(ctx, path.Root("key_id"), state.KeyID)...)
		resp.Diagnostics.Append(resp.Plan.SetAttribute(ctx, path.Root("created_at"), state.CreatedAt)...)
		resp.Diagnostics.Append(resp.Plan.SetAttribute(ctx, path.Root("revision"), state.Revision)...)
	}
}

// reportUnlisted registers this bundle's listing in the run and warns
// about the objects planned so far that no bundle lists.
func (r *bundleResource) reportUnlisted(plan bundleModel, diags *diag.Diagnostics) {
	if r.cfg == nil {
		return
	}
	l := &plannedListing{specs: map[string]string{}, warn: plan.WarnUnlisted.IsNull() || plan.WarnUnlisted.IsUnknown() || plan.WarnUnlisted.ValueBool()}
	if plan.Objects.IsUnknown() {
		l.all = true
	}
	for k, v := range plan.Objects.Elements() {
		if s, ok := v.(types.String); ok && !s.IsUnknown() {
			l.specs[k] = s.ValueString()
		} else {
			l.specs[k] = ""
		}
	}
	unlisted := r.cfg.run.bundle(l)
	if len(unlisted) == 0 {
		return
	}
	// On the resource, not on objects: Terraform would print the whole
	// objects expression, which does not hold the object.
	diags.AddWarning(r.cfg.run.unlisted(unlisted))
}

// decideAll decides every decision against pol: unknown results while
// pol is (objects unknown, or not compiling) or the request is.
func decideAll(ctx context.Context, v types.Map, pol *celpolicy.Policy) (types.Map, diag.Diagnostics) {
	var diags diag.Diagnostics
	if v.IsUnknown() || v.IsNull() {
		return v, nil
	}
	elemType := types.ObjectType{AttrTypes: decisionAttrTypes}
	out := map[string]attr.Value{}
	for key, e := range v.Elements() {
		obj, ok := e.(types.Object)
		if !ok || obj.IsUnknown() || obj.IsNull() {
			out[key] = e
			continue
		}
		var d bundleDecision
		if diags.Append(obj.As(ctx, &d, basetypes.ObjectAsOptions{})...); diags.HasError() {
			return v, diags
		}
		if pol == nil || !d.known() {
			d.decisionResult = unknownResult()
		} else if res, _, err := decide(ctx, pol, &d.decisionRequest); err != nil {
			diags.AddAttributeError(path.Root("decisions").AtMapKey(key), "Cannot decide "+strconv.Quote(key), err.Error())
			d.decisionResult = unknownResult()
		} else {
			d.decisionResult = res
		}
		decided, dd := types.ObjectValueFrom(ctx, decisionAttrTypes, d)
		if diags.Append(dd...); diags.HasError() {
			return v, diags
		}
		out[key] = decided
	}
	m, d := types.MapValue(elemType, out)
	diags.Append(d...)
	return m, diags
}

func (r *bundleResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	var plan bundleModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() {
		return
	}
	r.apply(ctx, &plan, nil, &resp.Diagnostics)
	if resp.Diagnostics.HasError() {
		return
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
	resp.Diagnostics.Append(resp.Private.SetKey(ctx, privatePublished, mustJSON(plan.Digest.ValueString()))...)
}

func (r *bundleResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	var plan, state bundleModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	published := r.apply(ctx, &plan, &state, &resp.Diagnostics)
	if resp.Diagnostics.HasError() {
		return
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
	if published {
		resp.Diagnostics.Append(resp.Private.SetKey(ctx, privatePublished, mustJSON(plan.Digest.ValueString()))...)
	}
}

// apply publishes when the plan says so (its digest is unknown: the
// objects changed, the file drifted, or the bundle is new) and fills in
// what the plan could not know (objects unknown at plan time).
func (r *bundleResource) apply(ctx context.Context, plan, state *bundleModel, diags *diag.Diagnostics) (published bool) {
	objects, known := knownObjects(plan.Objects)
	if !known {
		diags.AddError("Objects not known", "The bundle's objects are still unknown at apply.")
		return false
	}
	if plan.Digest.IsUnknown() {
		prev := int64(0)
		if state != nil {
			prev = state.Revision.ValueInt64()
		}
		r.publish(objects, plan, prev, diags)
		published = true
	}
	if diags.HasError() {
		return false
	}
	if plan.AccessChanges.IsUnknown() || !fullyKnown(ctx, plan.Decisions) {
		pol, err := policyOfObjects(objects)
		if err != nil {
			diags.AddError("Cannot compile the policy", err.Error())
			return false
		}
		if plan.AccessChanges.IsUnknown() {
			lines := []string{}
			if state != nil {
				if old, ok := knownObjects(state.Objects); ok {
					if oldP, err := policyOfObjects(old); err == nil {
						lines = accessLines(oldP, pol)
					}
				}
			}
			plan.AccessChanges, _ = types.ListValueFrom(ctx, types.StringType, lines)
		}
		if !plan.Decisions.IsNull() {
			var d diag.Diagnostics
			plan.Decisions, d = decideAll(ctx, plan.Decisions, pol)
			diags.Append(d...)
		}
	}
	return published
}

// publish compiles, signs and writes the bundle, and fills in the computed
// attributes. The revision is above the previous one, above whatever the
// file holds now, and at least the Unix time.
func (r *bundleResource) publish(objects map[string]string, plan *bundleModel, prevRevision int64, diags *diag.Diagnostics) {
	m, ok := compileObjects(objects, plan.RunTests.ValueBool(), diags)
	if !ok {
		return
	}
	key, err := r.cfg.key()
	if err != nil {
		diags.AddError("No signing key", err.Error())
		return
	}
	file := plan.File.ValueString()
	now := time.Now().UTC()
	rev := max(uint64(prevRevision)+1, uint64(now.Unix()))
	if data, err := os.ReadFile(file); err == nil {
		if p, _, err := bundle.ReadUnverified(data); err == nil && p.Revision >= rev {
			rev = p.Revision + 1
		}
	}
	payload, err := bundle.NewPayload(*m, bundle.BuildOptions{Revision: rev, CreatedAt: now, Compiler: "terraform-provider-gatehouse"})
	if err != nil {
		diags.AddError("Cannot build the bundle", err.Error())
		return
	}
	raw, err := bundle.EncodePayload(payload)
	if err != nil {
		diags.AddError("Cannot build the bundle", err.Error())
		return
	}
	signed, err := bundle.Sign(raw, key)
	if err != nil {
		diags.AddError("Cannot sign the bundle", err.Error())
		return
	}
	if err := bundle.WriteFileAtomic(file, signed, 0o644); err != nil {
		diags.AddAttributeError(path.Root("file"), "Cannot write the bundle", err.Error())
		return
	}
	plan.ID = plan.File
	plan.Revision = types.Int64Value(int64(payload.Revision))
	plan.Digest = types.StringValue(bundle.Digest(raw))
	plan.KeyID = types.StringValue(bundle.KeyID(key.Public().(ed25519.PublicKey)))
	plan.CreatedAt = types.StringValue(payload.CreatedAt)
}

// Read shows what the file holds now: its digest, or "" when it is missing
// or is not a bundle. A digest other than the one written is drift.
func (r *bundleResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	var state bundleModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	state.Digest = types.StringValue(fileDigest(state.File.ValueString()))
	resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
}

func fileDigest(file string) string {
	data, err := os.ReadFile(file)
	if err != nil {
		return ""
	}
	_, env, err := bundle.ReadUnverified(data)
	if err != nil {
		return ""
	}
	raw, err := base64.StdEncoding.DecodeString(env.Payload)
	if err != nil {
		return ""
	}
	return bundle.Digest(raw)
}

func (r *bundleResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	var state bundleModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if err := os.Remove(state.File.ValueString()); err != nil && !errors.Is(err, os.ErrNotExist) {
		resp.Diagnostics.AddError("Cannot remove the bundle", err.Error())
	}
}

func (r *bundleResource) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	kr, err := r.cfg.keyring()
	if err != nil {
		resp.Diagnostics.AddError("Cannot verify the bundle", err.Error())
		return
	}
	data, err := os.ReadFile(req.ID)
	if err != nil {
		resp.Diagnostics.AddError("Cannot read the bundle", fmt.Sprintf("Import gatehouse_bundle with the bundle file's path: %v", err))
		return
	}
	v, err := bundle.Verify(data, kr, bundle.VerifyOptions{})
	if err != nil {
		resp.Diagnostics.AddError("The bundle does not verify", err.Error())
		return
	}
	specs, err := specsOf(&v.Payload.Model)
	if err != nil {
		resp.Diagnostics.AddError("Cannot import the bundle", err.Error())
		return
	}
	keyed, err := specMap(specs)
	if err != nil {
		resp.Diagnostics.AddError("Cannot import the bundle", err.Error())
		return
	}
	objects, d := types.MapValueFrom(ctx, types.StringType, keyed)
	resp.Diagnostics.Append(d...)
	state := bundleModel{
		ID: types.StringValue(req.ID), File: types.StringValue(req.ID), Objects: objects, RunTests: types.BoolValue(true),
		WarnUnlisted: types.BoolValue(true), Decisions: types.MapNull(types.ObjectType{AttrTypes: decisionAttrTypes}),
		Revision: types.Int64Value(int64(v.Payload.Revision)), Digest: types.StringValue(v.Digest),
		KeyID: types.StringValue(v.KeyID), CreatedAt: types.StringValue(v.Payload.CreatedAt),
		AccessChanges: types.ListValueMust(types.StringType, []attr.Value{}),
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
	resp.Diagnostics.Append(resp.Private.SetKey(ctx, privatePublished, mustJSON(v.Digest))...)
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

// planAccessChanges sets access_changes in the plan: the access diff of
// the planned objects against the state's, so that the plan says who gains
// or loses what; the state's value when the objects do not change; empty
// for a new bundle; unknown while the objects are.
func (r *bundleResource) planAccessChanges(ctx context.Context, plan bundleModel, state *bundleModel, newP *celpolicy.Policy, known bool, resp *resource.ModifyPlanResponse) {
	set := func(v types.List) {
		resp.Diagnostics.Append(resp.Plan.SetAttribute(ctx, path.Root("access_changes"), v)...)
	}
	if state == nil {
		set(types.ListValueMust(types.StringType, []attr.Value{}))
		return
	}
	if !known {
		set(types.ListUnknown(types.StringType))
		return
	}
	if plan.Objects.Equal(state.Objects) {
		// Nothing to publish: the plan must equal the state (a state
		// written before this attribute existed keeps it null), or apply
		// would publish again while the plan promised the same digest.
		set(state.AccessChanges)
		return
	}
	if newP == nil {
		// ValidateConfig reports what is wrong with the new objects.
		set(types.ListUnknown(types.StringType))
		return
	}
	old, _ := knownObjects(state.Objects)
	oldP, errOld := policyOfObjects(old)
	if errOld != nil {
		resp.Diagnostics.AddAttributeWarning(path.Root("access_changes"), "No access diff against the state",
			"The objects in the state do not compile with this provider, so the plan cannot say who gains or loses what: "+errOld.Error())
		set(types.ListUnknown(types.StringType))
		return
	}
	v, d := types.ListValueFrom(ctx, types.StringType, accessLines(oldP, newP))
	resp.Diagnostics.Append(d...)
	set(v)
}

// accessLines words the access diff of two policies, a line per change.
func accessLines(oldP, newP *celpolicy.Policy) []string {
	lines := []string{}
	for _, c := range celpolicy.Diff(oldP, newP).Access {
		line := fmt.Sprintf("%s %s on %q", c.Caller, c.Summary, c.Resource)
		if len(c.Rules) > 0 {
			line += " via " + strings.Join(c.Rules, ", ")
		}
		// The probe requests make the line specific: two changes that give
		// the same caller the same effect still read (and plan) differently.
		examples := c.Requests
		if len(examples) > 2 {
			examples = examples[:2]
		}
		line += fmt.Sprintf(" (%d probe request", len(c.Requests))
		if len(c.Requests) != 1 {
			line += "s"
		}
		if len(examples) > 0 {
			line += ", e.g. " + strings.Join(examples, "; ")
		}
		lines = append(lines, line+")")
	}
	return lines
}

// fullyKnown reports whether a value and everything in it is known.
func fullyKnown(ctx context.Context, v attr.Value) bool {
	tv, err := v.ToTerraformValue(ctx)
	return err == nil && tv.IsFullyKnown()
}

// policyOfObjects compiles a bundle's objects into a policy.
func policyOfObjects(objects map[string]string) (*celpolicy.Policy, error) {
	_, specs := keyedSpecs(objects)
	m, err := modelFromSpecs(specs)
	if err != nil {
		return nil, err
	}
	m.Normalize()
	return celpolicy.Compile(m, sqlfacts.Analysis())
}

// bundleModelV0 is the state of schema version 0, where objects was a set
// of specs.
type bundleModelV0 struct {
	ID            types.String `tfsdk:"id"`
	File          types.String `tfsdk:"file"`
	Objects       types.Set    `tfsdk:"objects"`
	RunTests      types.Bool   `tfsdk:"run_tests"`
	Revision      types.Int64  `tfsdk:"revision"`
	Digest        types.String `tfsdk:"digest"`
	KeyID         types.String `tfsdk:"key_id"`
	CreatedAt     types.String `tfsdk:"created_at"`
	AccessChanges types.List   `tfsdk:"access_changes"`
}

// UpgradeState moves a version 0 state (objects a set) to version 1
// (objects keyed by KIND/NAME), so that a configuration migrated to the
// map plans no change and publishes nothing.
func (r *bundleResource) UpgradeState(context.Context) map[int64]resource.StateUpgrader {
	str := func() schema.StringAttribute { return schema.StringAttribute{Computed: true} }
	v0 := &schema.Schema{Attributes: map[string]schema.Attribute{
		"id": str(), "file": schema.StringAttribute{Required: true},
		"objects":   schema.SetAttribute{ElementType: types.StringType, Required: true},
		"run_tests": schema.BoolAttribute{Optional: true, Computed: true},
		"revision":  schema.Int64Attribute{Computed: true}, "digest": str(), "key_id": str(), "created_at": str(),
		"access_changes": schema.ListAttribute{ElementType: types.StringType, Computed: true},
	}}
	return map[int64]resource.StateUpgrader{0: {
		PriorSchema: v0,
		StateUpgrader: func(ctx context.Context, req resource.UpgradeStateRequest, resp *resource.UpgradeStateResponse) {
			var old bundleModelV0
			resp.Diagnostics.Append(req.State.Get(ctx, &old)...)
			if resp.Diagnostics.HasError() {
				return
			}
			var specs []string
			resp.Diagnostics.Append(old.Objects.ElementsAs(ctx, &specs, false)...)
			keyed, err := specMap(specs)
			if err != nil {
				resp.Diagnostics.AddError("Cannot upgrade the gatehouse_bundle state", "objects: "+err.Error())
				return
			}
			objects, d := types.MapValueFrom(ctx, types.StringType, keyed)
			resp.Diagnostics.Append(d...)
			resp.Diagnostics.Append(resp.State.Set(ctx, &bundleModel{
				ID: old.ID, File: old.File, Objects: objects, RunTests: old.RunTests, WarnUnlisted: types.BoolValue(true),
				Decisions: types.MapNull(types.ObjectType{AttrTypes: decisionAttrTypes}),
				Revision:  old.Revision, Digest: old.Digest, KeyID: old.KeyID, CreatedAt: old.CreatedAt, AccessChanges: old.AccessChanges,
			})...)
		},
	}}
}
