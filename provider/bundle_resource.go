package provider

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
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

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

// bundleResource compiles objects into a signed bundle and publishes it to
// a file. Its plan lists the objects added, removed and changed (each
// object's spec); at apply it signs a bundle with a higher revision. If the
// file is changed or deleted behind Terraform's back, refresh shows the
// digest that is there now, and the plan publishes again.
type bundleResource struct{ cfg *config }

var (
	_ resource.ResourceWithValidateConfig = (*bundleResource)(nil)
	_ resource.ResourceWithModifyPlan     = (*bundleResource)(nil)
	_ resource.ResourceWithImportState    = (*bundleResource)(nil)
	_ resource.ResourceWithConfigure      = (*bundleResource)(nil)
)

type bundleModel struct {
	ID        types.String `tfsdk:"id"`
	File      types.String `tfsdk:"file"`
	Objects   types.Set    `tfsdk:"objects"`
	RunTests  types.Bool   `tfsdk:"run_tests"`
	Revision  types.Int64  `tfsdk:"revision"`
	Digest    types.String `tfsdk:"digest"`
	KeyID     types.String `tfsdk:"key_id"`
	CreatedAt types.String `tfsdk:"created_at"`
	// AccessChanges is who gains or loses what with these objects, against
	// the objects in the state: what a reviewer reads in the plan.
	AccessChanges types.List `tfsdk:"access_changes"`
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
	resp.Schema = schema.Schema{
		MarkdownDescription: "Compiles policy objects into a signed bundle and publishes it to a file that gateways watch. " +
			"At plan time every object is validated together (references, duplicate names, CEL against the actual resource kind) " +
			"and the policy tests run; a failing test stops the plan. Each apply that changes something publishes a bundle with a " +
			"higher revision, so gateways take it and refuse older ones. If the file is changed or deleted outside Terraform, " +
			"the next plan publishes it again.\n\nImport with the bundle file's path: the objects are read from it, verified with the provider's keys.",
		Attributes: map[string]schema.Attribute{
			"id": schema.StringAttribute{Computed: true, MarkdownDescription: "The file path.",
				PlanModifiers: []planmodifier.String{stringplanmodifier.UseStateForUnknown()}},
			"file": schema.StringAttribute{Required: true, MarkdownDescription: "Where to publish the bundle (written atomically). Changing it publishes to the new path and removes the old file.",
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplace()}},
			"objects": schema.SetAttribute{ElementType: types.StringType, Required: true,
				MarkdownDescription: "The objects in the bundle: the `spec` attribute of `gatehouse_*` resources. Modules contribute objects by outputting their specs: " +
					"`objects = concat(module.team_a.gatehouse_specs, [gatehouse_policy.guardrails.spec])`."},
			"run_tests": schema.BoolAttribute{Optional: true, Computed: true, Default: booldefault.StaticBool(true),
				MarkdownDescription: "Run the `gatehouse_policy_test` objects at plan and apply, and refuse to publish when one fails. Default true."},
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
// policy tests.
func (r *bundleResource) ValidateConfig(ctx context.Context, req resource.ValidateConfigRequest, resp *resource.ValidateConfigResponse) {
	var m bundleModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() || m.Objects.IsUnknown() || m.Objects.IsNull() {
		return
	}
	for _, e := range m.Objects.Elements() {
		if e.IsUnknown() {
			return // checked at plan, once known
		}
	}
	var specs []string
	resp.Diagnostics.Append(m.Objects.ElementsAs(ctx, &specs, false)...)
	runTests := m.RunTests.IsNull() || m.RunTests.IsUnknown() || m.RunTests.ValueBool()
	compileSpecs(specs, runTests, &resp.Diagnostics)
}

// compileSpecs builds, validates and compiles the model and runs its tests
// when asked. Problems become attribute errors on objects that name the
// object, the attribute and, for CEL, the position.
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
		failed := 0
		for _, res := range pol.RunTests() {
			if res.Passed {
				continue
			}
			failed++
			diags.AddAttributeError(path.Root("objects"), fmt.Sprintf("Policy test %q fails", res.Name),
				fmt.Sprintf("gatehouse_policy_test %q: %s\nrequest: %s\ndecision: %s by [%s]: %s\n\nFix the policy or the test, or set run_tests = false to publish anyway.",
					res.Name, strings.Join(res.Failures, "; "), res.Request, res.Decision.Effect, strings.Join(res.Decision.Rules(), ", "), strings.Join(res.Decision.Reasons, "; ")))
		}
		if failed > 0 {
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

// ModifyPlan publishes again when the file drifted: the refreshed digest
// is not the one this resource wrote.
func (r *bundleResource) ModifyPlan(ctx context.Context, req resource.ModifyPlanRequest, resp *resource.ModifyPlanResponse) {
	if req.Plan.Raw.IsNull() {
		return
	}
	r.planAccessChanges(ctx, req, resp)
	if req.State.Raw.IsNull() {
		return
	}
	var state bundleModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	published, diags := req.Private.GetKey(ctx, privatePublished)
	resp.Diagnostics.Append(diags...)
	var want string
	if len(published) > 0 {
		_ = json.Unmarshal(published, &want)
	}
	if want == "" || want == state.Digest.ValueString() {
		return
	}
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
}

func (r *bundleResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	var plan bundleModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() {
		return
	}
	r.publish(ctx, &plan, 0, &resp.Diagnostics)
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
	r.publish(ctx, &plan, state.Revision.ValueInt64(), &resp.Diagnostics)
	if resp.Diagnostics.HasError() {
		return
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
	resp.Diagnostics.Append(resp.Private.SetKey(ctx, privatePublished, mustJSON(plan.Digest.ValueString()))...)
}

// publish compiles, signs and writes the bundle, and fills in the computed
// attributes. The revision is above the previous one, above whatever the
// file holds now, and at least the Unix time.
func (r *bundleResource) publish(ctx context.Context, plan *bundleModel, prevRevision int64, diags *diag.Diagnostics) {
	var specs []string
	diags.Append(plan.Objects.ElementsAs(ctx, &specs, false)...)
	m, ok := compileSpecs(specs, plan.RunTests.ValueBool(), diags)
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
	sort.Strings(specs)
	objects, d := types.SetValueFrom(ctx, types.StringType, specs)
	resp.Diagnostics.Append(d...)
	state := bundleModel{
		ID: types.StringValue(req.ID), File: types.StringValue(req.ID), Objects: objects, RunTests: types.BoolValue(true),
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
func (r *bundleResource) planAccessChanges(ctx context.Context, req resource.ModifyPlanRequest, resp *resource.ModifyPlanResponse) {
	var plan bundleModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() {
		return
	}
	set := func(v types.List) {
		resp.Diagnostics.Append(resp.Plan.SetAttribute(ctx, path.Root("access_changes"), v)...)
	}
	empty, _ := types.ListValueFrom(ctx, types.StringType, []string{})
	if req.State.Raw.IsNull() {
		set(empty)
		return
	}
	var state bundleModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if plan.Objects.IsUnknown() || plan.Objects.IsNull() {
		set(types.ListUnknown(types.StringType))
		return
	}
	for _, e := range plan.Objects.Elements() {
		if e.IsUnknown() {
			set(types.ListUnknown(types.StringType))
			return
		}
	}
	if plan.Objects.Equal(state.Objects) {
		// Nothing to publish: the plan must equal the state (a state
		// written before this attribute existed keeps it null), or apply
		// would publish again while the plan promised the same digest.
		set(state.AccessChanges)
		return
	}
	var oldSpecs, newSpecs []string
	resp.Diagnostics.Append(state.Objects.ElementsAs(ctx, &oldSpecs, false)...)
	resp.Diagnostics.Append(plan.Objects.ElementsAs(ctx, &newSpecs, false)...)
	oldP, errOld := policyOfSpecs(oldSpecs)
	newP, errNew := policyOfSpecs(newSpecs)
	if errNew != nil {
		// ValidateConfig reports what is wrong with the new objects.
		set(types.ListUnknown(types.StringType))
		return
	}
	if errOld != nil {
		resp.Diagnostics.AddAttributeWarning(path.Root("access_changes"), "No access diff against the state",
			"The objects in the state do not compile with this provider, so the plan cannot say who gains or loses what: "+errOld.Error())
		set(types.ListUnknown(types.StringType))
		return
	}
	var lines []string
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
	if lines == nil {
		lines = []string{}
	}
	v, d := types.ListValueFrom(ctx, types.StringType, lines)
	resp.Diagnostics.Append(d...)
	set(v)
}

// policyOfSpecs compiles objects' specs into a policy.
func policyOfSpecs(specs []string) (*celpolicy.Policy, error) {
	m, err := modelFromSpecs(specs)
	if err != nil {
		return nil, err
	}
	m.Normalize()
	return celpolicy.Compile(m, sqlfacts.Analysis())
}
