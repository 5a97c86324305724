package provider

import (
	"context"
	"fmt"
	"os"
	"strings"
	"unicode/utf8"

	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-go/tftypes"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
)

// objectResource is one kind of policy object. Its state is its own
// configuration plus id and spec: the object exists in Terraform and in the
// bundles that include it, nowhere else, so there is nothing remote to read
// and Delete has nothing to remove.
type objectResource struct {
	k   *kindSpec
	cfg *config
}

var (
	_ resource.ResourceWithValidateConfig = (*objectResource)(nil)
	_ resource.ResourceWithModifyPlan     = (*objectResource)(nil)
	_ resource.ResourceWithImportState    = (*objectResource)(nil)
	_ resource.ResourceWithConfigure      = (*objectResource)(nil)
)

func pathRoot(name string) path.Path { return path.Root(name) }

func (r *objectResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_" + r.k.typeSuffix
}

func (r *objectResource) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	resp.Schema = r.k.resourceSchema()
	resp.Schema.MarkdownDescription += "\n\nImport with `BUNDLE_FILE#NAME`: the object is read from a published bundle, verified with the provider's keys."
}

func (r *objectResource) Configure(_ context.Context, req resource.ConfigureRequest, _ *resource.ConfigureResponse) {
	if c, ok := req.ProviderData.(*config); ok {
		r.cfg = c
	}
}

// ValidateConfig checks what can be checked of one object alone: names,
// enumerations, references that must be references (secrets), and CEL.
// References to other objects and anything needing the whole policy are
// checked by gatehouse_bundle.
func (r *objectResource) ValidateConfig(_ context.Context, req resource.ValidateConfigRequest, resp *resource.ValidateConfigResponse) {
	obj, err := objectFromValue(r.k, req.Config.Raw)
	if err == errUnknown {
		return // checked again when known
	}
	if err != nil {
		resp.Diagnostics.AddError("Invalid "+r.k.kind, err.Error())
		return
	}
	addProblems(&resp.Diagnostics, obj, checkAlone(r.k.kind, obj), "")
}

// checkAlone validates a single object.
func checkAlone(kind string, obj any) bundle.Problems {
	var m bundle.Model
	add(&m, obj)
	var out bundle.Problems
	for _, p := range m.Validate() {
		switch p.Code {
		case bundle.CodeUnknownReference, bundle.CodeMixedKinds:
			continue // the whole policy decides; gatehouse_bundle checks them
		}
		out = append(out, p)
	}
	switch o := obj.(type) {
	case *bundle.Identity:
		if strings.TrimSpace(o.Match) != "" {
			out = append(out, withRef(celpolicy.CheckExpression("", o.Match), bundle.At("identity", o.Name).Attribute("match"))...)
		}
	case *bundle.Mask:
		if strings.TrimSpace(o.Unless) != "" {
			// Alone, the mask's resources are unknown: what it hides says
			// their kind (object fields are Kubernetes'). gatehouse_bundle
			// checks it against the actual kind.
			kind := bundle.KindPostgres
			if len(o.Fields) > 0 {
				kind = bundle.KindKubernetes
			}
			out = append(out, withRef(celpolicy.CheckExpression(kind, o.Unless), bundle.At("mask", o.Name).Attribute("unless"))...)
		}
	case *bundle.Postgres:
		if strings.TrimSpace(o.Admins) != "" {
			out = append(out, withRef(celpolicy.CheckExpression(bundle.KindPostgres, o.Admins), bundle.At(bundle.KindPostgres, o.Name).Attribute("admins"))...)
		}
	case *bundle.Policy:
		for _, rule := range o.Rules {
			if strings.TrimSpace(rule.When) != "" {
				out = append(out, withRef(checkAnyKind(rule.When), bundle.At("policy", o.Name).InRule(rule.Name).Attribute("when"))...)
			}
		}
	}
	return out
}

// checkAnyKind type-checks a rule condition without knowing which kind of
// resource its policy covers (that takes the whole policy): it passes if it
// compiles for some kind; otherwise the problems reported are those of the
// kind whose first error comes furthest into the expression, the kind it
// was most likely written for. gatehouse_bundle checks it against the
// actual kind.
func checkAnyKind(src string) []bundle.Problem {
	var best []bundle.Problem
	bestAt := -1
	for _, kind := range []string{bundle.KindPostgres, bundle.KindSSHHost, bundle.KindKubernetes} {
		ps := celpolicy.CheckExpression(kind, src)
		if len(ps) == 0 {
			return nil
		}
		at := 0
		if ps[0].Span != nil {
			at = ps[0].Span.Offset
		}
		if at > bestAt {
			best, bestAt = ps, at
		}
	}
	return best
}

func withRef(ps []bundle.Problem, ref bundle.Ref) []bundle.Problem {
	for i := range ps {
		ps[i].Ref = ref
	}
	return ps
}

// addProblems reports model problems as attribute errors on the object's
// resource. prefix, when set, says which object (for gatehouse_bundle, whose
// errors are about other resources' objects).
func addProblems(diags *diag.Diagnostics, obj any, ps bundle.Problems, prefix string) {
	for _, p := range ps {
		summary, detail := problemText(obj, p)
		if prefix != "" {
			diags.AddAttributeError(path.Root("objects"), prefix+summary, detail)
			continue
		}
		diags.AddAttributeError(problemPath(obj, p.Ref), summary, detail)
	}
}

// problemText words a problem. For CEL it gives the line and column inside
// the expression and shows the line with a caret under the token.
func problemText(obj any, p bundle.Problem) (summary, detail string) {
	where := p.Ref.Attr
	if p.Ref.Rule != "" {
		where = fmt.Sprintf("rule %q %s", p.Ref.Rule, p.Ref.Attr)
	}
	summary = codeTitle(p.Code)
	detail = p.Message
	if p.Span != nil {
		src := exprOf(obj, p.Ref)
		line, col, text := position(src, p.Span.Offset)
		summary = fmt.Sprintf("%s in %s %q, %s at %d:%d", codeTitle(p.Code), p.Ref.Kind, p.Ref.Name, where, line, col)
		detail = fmt.Sprintf("%s %q %s, line %d, column %d of the expression: %s\n\n    %s\n    %s^", p.Ref.Kind, p.Ref.Name, where, line, col, p.Message, text, strings.Repeat(" ", col-1))
	} else if where != "" {
		detail = fmt.Sprintf("%s %q %s: %s", p.Ref.Kind, p.Ref.Name, where, p.Message)
	} else {
		detail = fmt.Sprintf("%s %q: %s", p.Ref.Kind, p.Ref.Name, p.Message)
	}
	return summary, detail
}

func codeTitle(code string) string {
	switch code {
	case bundle.CodeCELSyntax:
		return "CEL syntax error"
	case bundle.CodeCELType:
		return "CEL type error"
	case bundle.CodeCELCost:
		return "CEL expression too expensive"
	case bundle.CodeInlineSecret:
		return "Secret written inline"
	case bundle.CodeUnknownReference:
		return "Unknown reference"
	case bundle.CodeDuplicateName:
		return "Duplicate name"
	case bundle.CodeMissingAttribute:
		return "Missing attribute"
	}
	return "Invalid value"
}

// exprOf finds the expression a CEL problem is about.
func exprOf(obj any, ref bundle.Ref) string {
	switch o := obj.(type) {
	case *bundle.Identity:
		return o.Match
	case *bundle.Mask:
		return o.Unless
	case *bundle.Policy:
		for _, r := range o.Rules {
			if r.Name == ref.Rule {
				return r.When
			}
		}
	}
	return ""
}

// position turns a byte offset into a 1-based line and column (in
// characters) and returns that line's text.
func position(src string, off int) (line, col int, text string) {
	off = min(max(off, 0), len(src))
	before := src[:off]
	line = strings.Count(before, "\n") + 1
	start := strings.LastIndexByte(before, '\n') + 1
	col = utf8.RuneCountInString(src[start:off]) + 1
	end := strings.IndexByte(src[start:], '\n')
	if end < 0 {
		text = src[start:]
	} else {
		text = src[start : start+end]
	}
	return line, col, text
}

// ModifyPlan computes id and spec at plan time, so gatehouse_bundle's plan
// shows exactly which objects change; and reports the object when a bundle
// planned in this run without it.
func (r *objectResource) ModifyPlan(ctx context.Context, req resource.ModifyPlanRequest, resp *resource.ModifyPlanResponse) {
	if req.Plan.Raw.IsNull() {
		return // destroy
	}
	var name types.String
	resp.Diagnostics.Append(req.Plan.GetAttribute(ctx, path.Root("name"), &name)...)
	spec := ""
	defer func() { r.reportUnlisted(name, spec, &resp.Diagnostics) }()
	obj, err := objectFromValue(r.k, req.Plan.Raw)
	if err != nil {
		return // unknown until apply
	}
	spec, err = specOf(r.k.kind, obj)
	if err != nil {
		resp.Diagnostics.AddError("Cannot encode "+r.k.kind, err.Error())
		return
	}
	if !req.State.Raw.IsNull() {
		var prior types.String
		resp.Diagnostics.Append(req.State.GetAttribute(ctx, path.Root("spec"), &prior)...)
		if prior.ValueString() == spec {
			// The same object, spelt differently ("30m" for "30m0s",
			// customers.email for public.customers.email, a list in
			// another order): nothing to change, in particular after an
			// import, which reads the bundle's canonical spelling.
			resp.Plan.Raw = req.State.Raw
			return
		}
	}
	resp.Diagnostics.Append(resp.Plan.SetAttribute(ctx, path.Root("id"), name)...)
	resp.Diagnostics.Append(resp.Plan.SetAttribute(ctx, path.Root("spec"), spec)...)
}

// reportUnlisted registers the object as planned in this run, and warns
// when a bundle has planned without listing it (see registry): a bundle
// that lists it depends on it, so plans after it.
func (r *objectResource) reportUnlisted(name types.String, spec string, diags *diag.Diagnostics) {
	if r.cfg == nil || name.IsUnknown() || name.IsNull() {
		return
	}
	if !r.cfg.run.object(r.k.kind, name.ValueString(), spec) {
		return
	}
	o := &plannedObject{key: objectKey(r.k.kind, name.ValueString()), kind: r.k.kind, name: name.ValueString(), spec: spec}
	summary, detail := r.cfg.run.unlisted([]*plannedObject{o})
	diags.AddAttributeWarning(path.Root("name"), summary, detail)
}

func (r *objectResource) store(ctx context.Context, plan tftypes.Value, state interface {
	SetAttribute(context.Context, path.Path, any) diag.Diagnostics
}, diags *diag.Diagnostics) {
	obj, err := objectFromValue(r.k, plan)
	if err != nil {
		diags.AddError("Invalid "+r.k.kind, err.Error())
		return
	}
	spec, err := specOf(r.k.kind, obj)
	if err != nil {
		diags.AddError("Cannot encode "+r.k.kind, err.Error())
		return
	}
	diags.Append(state.SetAttribute(ctx, path.Root("spec"), spec)...)
}

func (r *objectResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	resp.State.Raw = req.Plan.Raw
	var name types.String
	resp.Diagnostics.Append(req.Plan.GetAttribute(ctx, path.Root("name"), &name)...)
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("id"), name)...)
	r.store(ctx, req.Plan.Raw, &resp.State, &resp.Diagnostics)
}

func (r *objectResource) Read(context.Context, resource.ReadRequest, *resource.ReadResponse) {
	// The state is the object: nothing else holds it until a bundle does,
	// and gatehouse_bundle watches the published file.
}

func (r *objectResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	resp.State.Raw = req.Plan.Raw
	r.store(ctx, req.Plan.Raw, &resp.State, &resp.Diagnostics)
}

func (r *objectResource) Delete(context.Context, resource.DeleteRequest, *resource.DeleteResponse) {}

// ImportState reads the object from a published bundle: ID BUNDLE_FILE#NAME.
func (r *objectResource) ImportState(_ context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	file, name, ok := strings.Cut(req.ID, "#")
	if !ok || file == "" || name == "" {
		resp.Diagnostics.AddError("Invalid import ID",
			fmt.Sprintf("Import gatehouse_%s with BUNDLE_FILE#NAME, for example ./policy.bundle#%s; got %q.", r.k.typeSuffix, exampleName(r.k.kind), req.ID))
		return
	}
	m, err := readBundle(r.cfg, file)
	if err != nil {
		resp.Diagnostics.AddError("Cannot read the bundle", err.Error())
		return
	}
	var found any
	var names []string
	each(&m.Model, func(kind string, obj any) {
		if kind != r.k.kind {
			return
		}
		n := objectName(obj)
		names = append(names, n)
		if n == name {
			found = obj
		}
	})
	if found == nil {
		resp.Diagnostics.AddError("Not in the bundle",
			fmt.Sprintf("%s has no %s named %q; it has: %s.", file, r.k.kind, name, strings.Join(names, ", ")))
		return
	}
	v, err := valueFromObject(r.k, found)
	if err != nil {
		resp.Diagnostics.AddError("Cannot import "+r.k.kind, err.Error())
		return
	}
	resp.State.Raw = v
}

func exampleName(kind string) string {
	if kind == "test" {
		return "analytics may connect"
	}
	return "orders"
}

func objectName(obj any) string {
	switch o := obj.(type) {
	case *bundle.IdentityProvider:
		return o.Name
	case *bundle.Identity:
		return o.Name
	case *bundle.Postgres:
		return o.Name
	case *bundle.SSHHost:
		return o.Name
	case *bundle.KubernetesCluster:
		return o.Name
	case *bundle.Policy:
		return o.Name
	case *bundle.Mask:
		return o.Name
	case *bundle.Test:
		return o.Name
	}
	return ""
}

// readBundle reads and verifies a published bundle.
func readBundle(c *config, file string) (*bundle.Payload, error) {
	kr, err := c.keyring()
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	v, err := bundle.Verify(data, kr, bundle.VerifyOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return v.Payload, nil
}
