package provider

import (
	"context"
	"fmt"
	"os"
	"sort"

	"github.com/hashicorp/terraform-plugin-framework-validators/datasourcevalidator"
	"github.com/hashicorp/terraform-plugin-framework/attr"
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
	Objects    types.Dynamic `tfsdk:"objects"`
	BundleFile types.String  `tfsdk:"bundle_file"`
	decisionRequest
	decisionResult
	Revision types.Int64 `tfsdk:"bundle_revision"`
}

func (d *decisionDataSource) Metadata(_ context.Context, req datasource.MetadataRequest, resp *datasource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_decision"
}

// decidingObjectsDeprecated is why objects is deprecated here.
const decidingObjectsDeprecated = "Decide the policy a bundle is about to publish with gatehouse_bundle's `decisions` instead: " +
	"Terraform reads a data source that takes objects during apply whenever an object changes (it depends on them), so its " +
	"checks do not run at plan time, and the plan prints every object once per data source. `decisions` are decided at plan " +
	"time, and the plan shows only the results that change. `objects` keeps working."

func (d *decisionDataSource) Schema(_ context.Context, _ datasource.SchemaRequest, resp *datasource.SchemaResponse) {
	in := func(desc string) schema.StringAttribute {
		return schema.StringAttribute{Optional: true, MarkdownDescription: desc}
	}
	out := func(desc string) schema.StringAttribute {
		return schema.StringAttribute{Computed: true, MarkdownDescription: desc}
	}
	resp.Schema = schema.Schema{
		MarkdownDescription: "Decides one request the way the gateway would, against a published bundle (or, deprecated, against objects' `spec`s). " +
			"To check the policy a `gatehouse_bundle` is about to publish, use that bundle's `decisions`: they are decided at plan time, " +
			"against the planned objects, and the plan shows a result when it changes. The caller is given as a " +
			"policy test gives it: an identity, or a provider and subject, with groups and claims.",
		Attributes: map[string]schema.Attribute{
			"objects": schema.DynamicAttribute{Optional: true, DeprecationMessage: decidingObjectsDeprecated,
				MarkdownDescription: "Deprecated: " + decidingObjectsDeprecated + " Objects to decide against: `spec` attributes of `gatehouse_*` resources, " +
					"as a list or set, or a map such as `gatehouse_bundle.policy.objects`. Exactly one of `objects` and `bundle_file`."},
			"bundle_file":       in("A published bundle to decide against, verified with the provider's keys."),
			"identity":          in(descIdentity),
			"identity_provider": in(descProvider),
			"subject":           in(descSubject),
			"groups":            schema.ListAttribute{ElementType: types.StringType, Optional: true, MarkdownDescription: descGroups},
			"claims":            in(descClaims),
			"resource":          schema.StringAttribute{Required: true, MarkdownDescription: descResource},
			"sql":               in(descSQL),
			"request":           in(descRequest),
			"now":               in(descNow),

			"effect":          out(descEffect),
			"matched_rules":   schema.ListAttribute{ElementType: types.StringType, Computed: true, MarkdownDescription: descRules},
			"reasons":         schema.ListAttribute{ElementType: types.StringType, Computed: true, MarkdownDescription: descReasons},
			"masks":           schema.MapAttribute{ElementType: types.StringType, Computed: true, MarkdownDescription: descMasks},
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
		specs, err := dynamicStrings(m.Objects)
		if err != nil {
			resp.Diagnostics.AddAttributeError(path.Root("objects"), "Invalid objects", err.Error())
			return
		}
		model, ok := compileSpecs(specs, false, &resp.Diagnostics)
		if !ok {
			return
		}
		if pol, err = celpolicy.Compile(model, sqlfacts.Analysis()); err != nil {
			resp.Diagnostics.AddAttributeError(path.Root("objects"), "Cannot compile the policy", err.Error())
			return
		}
	}
	res, rev, err := decide(ctx, pol, &m.decisionRequest)
	if err != nil {
		resp.Diagnostics.AddError("Cannot build the request", err.Error())
		return
	}
	m.decisionResult = res
	m.Revision = types.Int64Value(int64(rev))
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}

// dynamicStrings reads the strings of a list, set, tuple, map or object.
func dynamicStrings(v types.Dynamic) ([]string, error) {
	var elems []attr.Value
	switch u := v.UnderlyingValue().(type) {
	case types.List:
		elems = u.Elements()
	case types.Set:
		elems = u.Elements()
	case types.Tuple:
		elems = u.Elements()
	case types.Map:
		for _, e := range u.Elements() {
			elems = append(elems, e)
		}
	case types.Object:
		for _, e := range u.Attributes() {
			elems = append(elems, e)
		}
	default:
		return nil, fmt.Errorf("objects must be a list, set or map of specs, not %s", v.UnderlyingValue().Type(context.Background()))
	}
	out := make([]string, 0, len(elems))
	for _, e := range elems {
		s, ok := e.(types.String)
		if !ok {
			return nil, fmt.Errorf("objects must hold specs (strings), not %s", e.Type(context.Background()))
		}
		out = append(out, s.ValueString())
	}
	sort.Strings(out)
	return out, nil
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
	Objects     types.Map    `tfsdk:"objects"`
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
			"objects":      schema.MapAttribute{ElementType: types.StringType, Computed: true, MarkdownDescription: "Its objects, as `spec`s keyed by `KIND/NAME` (the form `gatehouse_bundle.objects` takes)."},
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
	objects, err := specMap(specs)
	if err != nil {
		resp.Diagnostics.AddError("Cannot read the bundle's objects", err.Error())
		return
	}
	m.Objects, diags = types.MapValueFrom(ctx, types.StringType, objects)
	resp.Diagnostics.Append(diags...)
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}
