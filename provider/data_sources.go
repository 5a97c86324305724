package provider

import (
	"context"
	"fmt"
	"os"
	"slices"

	"github.com/hashicorp/terraform-plugin-framework-validators/datasourcevalidator"
	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/datasource/schema"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

// decisionDataSource evaluates one request against the configured objects
// or a published bundle: what `gatehouse eval` does, for check blocks and
// `terraform test`.
type decisionDataSource struct{ cfg *config }

var _ datasource.DataSourceWithConfigValidators = (*decisionDataSource)(nil)

type decisionModel struct {
	Objects    types.Set    `tfsdk:"objects"`
	BundleFile types.String `tfsdk:"bundle_file"`
	Identity   types.String `tfsdk:"identity"`
	Provider   types.String `tfsdk:"identity_provider"`
	Subject    types.String `tfsdk:"subject"`
	Groups     types.List   `tfsdk:"groups"`
	Claims     types.String `tfsdk:"claims"`
	Resource   types.String `tfsdk:"resource"`
	SQL        types.String `tfsdk:"sql"`
	Request    types.String `tfsdk:"request"`
	Now        types.String `tfsdk:"now"`

	Effect       types.String `tfsdk:"effect"`
	MatchedRules types.List   `tfsdk:"matched_rules"`
	Reasons      types.List   `tfsdk:"reasons"`
	Masks        types.Map    `tfsdk:"masks"`
	Revision     types.Int64  `tfsdk:"bundle_revision"`
}

func (d *decisionDataSource) Metadata(_ context.Context, req datasource.MetadataRequest, resp *datasource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_decision"
}

func (d *decisionDataSource) Schema(_ context.Context, _ datasource.SchemaRequest, resp *datasource.SchemaResponse) {
	in := func(desc string) schema.StringAttribute {
		return schema.StringAttribute{Optional: true, MarkdownDescription: desc}
	}
	out := func(desc string) schema.StringAttribute {
		return schema.StringAttribute{Computed: true, MarkdownDescription: desc}
	}
	resp.Schema = schema.Schema{
		MarkdownDescription: "Decides one request the way the gateway would: against objects (their `spec`s, before they are published) " +
			"or a published bundle. Use it in `check` blocks and in `terraform test` assertions. The caller is given as a " +
			"policy test gives it: an identity, or a provider and subject, with groups and claims.",
		Attributes: map[string]schema.Attribute{
			"objects":           schema.SetAttribute{ElementType: types.StringType, Optional: true, MarkdownDescription: "Objects to decide against: `spec` attributes of `gatehouse_*` resources. Exactly one of `objects` and `bundle_file`."},
			"bundle_file":       in("A published bundle to decide against, verified with the provider's keys."),
			"identity":          in("The identity calling; its provider and subject are used unless given."),
			"identity_provider": in("The identity provider of an ad-hoc caller (`provider` in a test block)."),
			"subject":           in("The caller's token subject."),
			"groups":            schema.ListAttribute{ElementType: types.StringType, Optional: true, MarkdownDescription: "Groups the caller's token carries."},
			"claims":            in("Extra token claims, as a JSON object (`jsonencode({ env = \"prod\" })`)."),
			"resource":          schema.StringAttribute{Required: true, MarkdownDescription: "The resource called."},
			"sql":               in("A PostgreSQL query (several statements allowed). Exactly one of `sql` and `request`."),
			"request":           in("The request as a JSON object (`jsonencode({ kind = \"connect\" })`)."),
			"now":               in("The evaluation time, RFC 3339. Default: now."),

			"effect":          out("`allow`, `deny` or `review`."),
			"matched_rules":   schema.ListAttribute{ElementType: types.StringType, Computed: true, MarkdownDescription: "Rules that matched, as `policy/rule`."},
			"reasons":         schema.ListAttribute{ElementType: types.StringType, Computed: true, MarkdownDescription: "Why: the matched rules' reasons, or why nothing matched."},
			"masks":           schema.MapAttribute{ElementType: types.StringType, Computed: true, MarkdownDescription: "Masked targets (a column `schema.table.column`, `detector:NAME`, or a Kubernetes object field `kubernetes:RESOURCE[.GROUP]/PATH`) and their methods."},
			"bundle_revision": schema.Int64Attribute{Computed: true, MarkdownDescription: "The bundle's revision (0 for objects)."},
		},
	}
}

func (d *decisionDataSource) ConfigValidators(context.Context) []datasource.ConfigValidator {
	return []datasource.ConfigValidator{
		datasourcevalidator.ExactlyOneOf(path.MatchRoot("objects"), path.MatchRoot("bundle_file")),
		datasourcevalidator.ExactlyOneOf(path.MatchRoot("sql"), path.MatchRoot("request")),
		datasourcevalidator.AtLeastOneOf(path.MatchRoot("identity"), path.MatchRoot("identity_provider")),
	}
}

func (d *decisionDataSource) Configure(_ context.Context, req datasource.ConfigureRequest, _ *datasource.ConfigureResponse) {
	if c, ok := req.ProviderData.(*config); ok {
		d.cfg = c
	}
}

func (d *decisionDataSource) Read(ctx context.Context, req datasource.ReadRequest, resp *datasource.ReadResponse) {
	var m decisionModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	var pol *celpolicy.Policy
	if !m.BundleFile.IsNull() {
		p, err := readBundle(d.cfg, m.BundleFile.ValueString())
		if err != nil {
			resp.Diagnostics.AddAttributeError(path.Root("bundle_file"), "Cannot read the bundle", err.Error())
			return
		}
		if pol, err = celpolicy.FromPayload(p, sqlfacts.Analysis()); err != nil {
			resp.Diagnostics.AddAttributeError(path.Root("bundle_file"), "Cannot compile the bundle", err.Error())
			return
		}
	} else {
		var specs []string
		resp.Diagnostics.Append(m.Objects.ElementsAs(ctx, &specs, false)...)
		model, ok := compileSpecs(specs, false, &resp.Diagnostics)
		if !ok {
			return
		}
		var err error
		if pol, err = celpolicy.Compile(model, sqlfacts.Analysis()); err != nil {
			resp.Diagnostics.AddAttributeError(path.Root("objects"), "Cannot compile the policy", err.Error())
			return
		}
	}
	t := &bundle.Test{
		Name: "decision", Identity: m.Identity.ValueString(), Provider: m.Provider.ValueString(),
		Subject: m.Subject.ValueString(), Claims: m.Claims.ValueString(), Resource: m.Resource.ValueString(),
		SQL: m.SQL.ValueString(), Request: m.Request.ValueString(), Now: m.Now.ValueString(),
	}
	resp.Diagnostics.Append(m.Groups.ElementsAs(ctx, &t.Groups, false)...)
	in, err := pol.TestInput(t)
	if err != nil {
		resp.Diagnostics.AddError("Cannot build the request", err.Error())
		return
	}
	dec := pol.Decide(in)
	masks := map[string]string{}
	for _, mk := range dec.Masks {
		masks[mk.Target.String()] = mk.Method
	}
	rules := dec.Rules()
	slices.Sort(rules)
	m.Effect = types.StringValue(string(dec.Effect))
	m.Revision = types.Int64Value(int64(dec.BundleRevision))
	var diags diag.Diagnostics
	m.MatchedRules, diags = types.ListValueFrom(ctx, types.StringType, nonNil(rules))
	resp.Diagnostics.Append(diags...)
	m.Reasons, diags = types.ListValueFrom(ctx, types.StringType, nonNil(dec.Reasons))
	resp.Diagnostics.Append(diags...)
	m.Masks, diags = types.MapValueFrom(ctx, types.StringType, masks)
	resp.Diagnostics.Append(diags...)
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}

func nonNil(xs []string) []string {
	if xs == nil {
		return []string{}
	}
	return xs
}

// bundleDataSource reads and verifies a published bundle.
type bundleDataSource struct{ cfg *config }

type bundleDataModel struct {
	File        types.String `tfsdk:"file"`
	MinRevision types.Int64  `tfsdk:"min_revision"`
	Revision    types.Int64  `tfsdk:"revision"`
	Digest      types.String `tfsdk:"digest"`
	KeyID       types.String `tfsdk:"key_id"`
	CreatedAt   types.String `tfsdk:"created_at"`
	Compiler    types.String `tfsdk:"compiler"`
	Objects     types.Set    `tfsdk:"objects"`
	Summary     types.String `tfsdk:"summary"`
}

func (d *bundleDataSource) Metadata(_ context.Context, req datasource.MetadataRequest, resp *datasource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_bundle"
}

func (d *bundleDataSource) Schema(_ context.Context, _ datasource.SchemaRequest, resp *datasource.SchemaResponse) {
	out := func(desc string) schema.StringAttribute {
		return schema.StringAttribute{Computed: true, MarkdownDescription: desc}
	}
	resp.Schema = schema.Schema{
		MarkdownDescription: "Reads a published bundle and verifies it as a gateway would: signature by a trusted key (the provider's " +
			"`trusted_keys`, or its signing key's public half), canonical bytes, schema, and optionally a revision floor. Fails when it does not verify.",
		Attributes: map[string]schema.Attribute{
			"file":         schema.StringAttribute{Required: true, MarkdownDescription: "The bundle file."},
			"min_revision": schema.Int64Attribute{Optional: true, MarkdownDescription: "The bundle must be newer than this revision (the one in force), as a gateway requires."},
			"revision":     schema.Int64Attribute{Computed: true, MarkdownDescription: "Its revision."},
			"digest":       out("`sha256:` and the SHA-256 of the signed payload."),
			"key_id":       out("The id of the key that signed it."),
			"created_at":   out("When it was built (RFC 3339)."),
			"compiler":     out("What built it."),
			"objects":      schema.SetAttribute{ElementType: types.StringType, Computed: true, MarkdownDescription: "Its objects, as `spec`s (the form `gatehouse_bundle.objects` takes)."},
			"summary":      out("A one-line count of what it holds."),
		},
	}
}

func (d *bundleDataSource) Configure(_ context.Context, req datasource.ConfigureRequest, _ *datasource.ConfigureResponse) {
	if c, ok := req.ProviderData.(*config); ok {
		d.cfg = c
	}
}

func (d *bundleDataSource) Read(ctx context.Context, req datasource.ReadRequest, resp *datasource.ReadResponse) {
	var m bundleDataModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	kr, err := d.cfg.keyring()
	if err != nil {
		resp.Diagnostics.AddError("No key to verify with", err.Error())
		return
	}
	data, err := os.ReadFile(m.File.ValueString())
	if err != nil {
		resp.Diagnostics.AddAttributeError(path.Root("file"), "Cannot read the bundle", err.Error())
		return
	}
	v, err := bundle.Verify(data, kr, bundle.VerifyOptions{ActiveRevision: uint64(m.MinRevision.ValueInt64())})
	if err != nil {
		resp.Diagnostics.AddAttributeError(path.Root("file"), "The bundle does not verify", err.Error())
		return
	}
	specs, err := specsOf(&v.Payload.Model)
	if err != nil {
		resp.Diagnostics.AddError("Cannot read the bundle's objects", err.Error())
		return
	}
	mod := &v.Payload.Model
	rules := 0
	for _, p := range mod.Policies {
		rules += len(p.Rules)
	}
	m.Revision = types.Int64Value(int64(v.Payload.Revision))
	m.Digest = types.StringValue(v.Digest)
	m.KeyID = types.StringValue(v.KeyID)
	m.CreatedAt = types.StringValue(v.Payload.CreatedAt)
	m.Compiler = types.StringValue(v.Payload.Compiler)
	m.Summary = types.StringValue(fmt.Sprintf("%d identity providers, %d identities, %d resources, %d policies (%d rules), %d masks, %d tests",
		len(mod.IdentityProviders), len(mod.Identities), len(mod.Resources()), len(mod.Policies), rules, len(mod.Masks), len(mod.Tests)))
	var diags diag.Diagnostics
	m.Objects, diags = types.SetValueFrom(ctx, types.StringType, specs)
	resp.Diagnostics.Append(diags...)
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}
