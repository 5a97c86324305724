// Package hclconfig reads a directory of *.hcl policy files into the model of
// package bundle. Every problem, from a misspelled attribute to a CEL type
// error deep inside a rule's `when`, comes back as an hcl.Diagnostic whose
// range points into the user's file, down to the offending token inside an
// expression string.
package hclconfig

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
	ctyjson "github.com/zclconf/go-cty/cty/json"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

// MaxFileBytes bounds a single policy file.
const MaxFileBytes = 8 << 20

// Result is a loaded policy directory.
type Result struct {
	// Model is validated and normalised. Nil when there are errors.
	Model *bundle.Model
	// Policy is the compiled model. Nil when there are errors.
	Policy *celpolicy.Policy
	// Files are the parsed sources, by file name, for printing diagnostics.
	Files map[string]*hcl.File
	// Blocks are where each object is defined, by "kind/name" (block type
	// and label: "test/analytics cannot write").
	Blocks map[string]hcl.Range
}

// Load reads every *.hcl file directly inside dir, in name order.
func Load(dir string) (*Result, hcl.Diagnostics) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return &Result{Files: map[string]*hcl.File{}}, hcl.Diagnostics{{
			Severity: hcl.DiagError, Summary: "Cannot read policy directory",
			Detail: fmt.Sprintf("%s: %v", dir, errors.Unwrap(err)),
		}}
	}
	files := map[string][]byte{}
	var diags hcl.Diagnostics
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".hcl") || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		data, err := readLimited(path)
		if err != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Cannot read policy file", Detail: err.Error()})
			continue
		}
		files[path] = data
	}
	if len(files) == 0 && !diags.HasErrors() {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "No policy files",
			Detail: fmt.Sprintf("%s contains no *.hcl files", dir)})
	}
	if diags.HasErrors() {
		return &Result{Files: map[string]*hcl.File{}}, diags
	}
	return LoadFiles(files)
}

// readLimited reads a policy file. Only regular files are read (a FIFO or
// /dev/zero behind a symlink would block or never end), and never more than
// MaxFileBytes, whatever the file grows to while it is read.
func readLimited(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s disappeared while reading", path)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxFileBytes {
		return nil, fmt.Errorf("%s is over the %d byte limit for a policy file", path, MaxFileBytes)
	}
	return data, nil
}

// LoadFiles loads policy sources given by file name. It is what Load uses,
// and what tests and fuzzing use directly.
func LoadFiles(files map[string][]byte) (*Result, hcl.Diagnostics) {
	d := newDecoder()
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		if len(files[name]) > MaxFileBytes {
			d.diags = append(d.diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Policy file too large",
				Detail: fmt.Sprintf("%s is %d bytes, over the %d byte limit", name, len(files[name]), MaxFileBytes)})
			continue
		}
		if diag := CheckNesting(files[name], name); diag != nil {
			d.diags = append(d.diags, diag)
			d.files[name] = &hcl.File{Bytes: files[name]}
			continue
		}
		f, diags := hclsyntax.ParseConfig(files[name], name, hcl.InitialPos)
		d.diags = append(d.diags, diags...)
		if f == nil {
			continue
		}
		d.files[name] = f
		if diags.HasErrors() {
			continue
		}
		d.file(f)
	}
	res := &Result{Files: d.files, Blocks: d.seen}
	if d.diags.HasErrors() {
		return res, d.diags
	}
	// Problems are mapped back to the source before normalising, because
	// normalising reorders lists and the problems' element indexes refer to
	// the order in the files.
	if ps := d.model.Validate(); len(ps) > 0 {
		d.problems(ps)
		return res, d.diags
	}
	d.model.Normalize()
	pol, err := celpolicy.Compile(&d.model, sqlfacts.Analysis())
	if err != nil {
		var ps bundle.Problems
		if errors.As(err, &ps) {
			d.problems(ps)
		} else {
			d.diags = append(d.diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Cannot compile policy", Detail: err.Error()})
		}
		return res, d.diags
	}
	res.Model, res.Policy = &d.model, pol
	return res, d.diags
}

type decoder struct {
	files map[string]*hcl.File
	model bundle.Model
	src   *sourceMap
	diags hcl.Diagnostics
	seen  map[string]hcl.Range // kind/name -> first definition
}

func newDecoder() *decoder {
	return &decoder{files: map[string]*hcl.File{}, src: newSourceMap(), seen: map[string]hcl.Range{}}
}

func (d *decoder) errorf(rng hcl.Range, summary, format string, args ...any) {
	r := rng
	d.diags = append(d.diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary, Detail: fmt.Sprintf(format, args...), Subject: &r})
}

func (d *decoder) warnf(rng hcl.Range, summary, format string, args ...any) {
	r := rng
	d.diags = append(d.diags, &hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: summary, Detail: fmt.Sprintf(format, args...), Subject: &r})
}

func (d *decoder) file(f *hcl.File) {
	content, diags := f.Body.Content(topSchema)
	d.diags = append(d.diags, diags...)
	for _, b := range content.Blocks {
		name := b.Labels[0]
		key := b.Type + "/" + name
		if first, dup := d.seen[key]; dup {
			d.errorf(b.LabelRanges[0], "Duplicate "+b.Type,
				"%s %q is already defined at %s. Names must be unique: policies refer to objects by name.", b.Type, name, first)
			continue
		}
		d.seen[key] = b.DefRange
		ref := bundle.At(b.Type, name)
		d.src.object(ref, b.DefRange, f)
		switch b.Type {
		case "identity_provider":
			d.identityProvider(ref, b)
		case "identity":
			d.identity(ref, b)
		case "postgres":
			d.postgres(ref, b)
		case "ssh_host":
			d.sshHost(ref, b)
		case "kubernetes_cluster":
			d.kubernetes(ref, b)
		case "policy":
			d.policy(ref, b, f)
		case "mask":
			d.mask(ref, b)
		case "test":
			d.test(ref, b)
		}
	}
}

// body decodes a block's content against its schema and returns an accessor
// for its attributes.
func (d *decoder) body(ref bundle.Ref, prefix string, body hcl.Body, schema *hcl.BodySchema) (*attrReader, *hcl.BodyContent) {
	content, diags := body.Content(schema)
	d.diags = append(d.diags, diags...)
	return &attrReader{d: d, ref: ref, prefix: prefix, attrs: content.Attributes}, content
}

func (d *decoder) identityProvider(ref bundle.Ref, b *hcl.Block) {
	a, _ := d.body(ref, "", b.Body, identityProviderSchema)
	d.model.IdentityProviders = append(d.model.IdentityProviders, bundle.IdentityProvider{
		Name: ref.Name, Description: a.str("description"), Issuer: a.str("issuer"),
		Audiences: a.strs("audiences"), GroupsClaim: a.str("groups_claim"), GroupsPrefix: a.str("groups_prefix"),
		JWKSURL: a.str("jwks_url"), JWKS: a.str("jwks"), Algorithms: a.strs("algorithms"),
	})
}

func (d *decoder) identity(ref bundle.Ref, b *hcl.Block) {
	a, _ := d.body(ref, "", b.Body, identitySchema)
	d.model.Identities = append(d.model.Identities, bundle.Identity{
		Name: ref.Name, Description: a.str("description"), Provider: a.str("provider"),
		Subject: a.str("subject"), Match: a.str("match"), Groups: a.strs("groups"),
	})
}

func (d *decoder) postgres(ref bundle.Ref, b *hcl.Block) {
	a, content := d.body(ref, "", b.Body, postgresSchema)
	r := bundle.Postgres{
		Name: ref.Name, Description: a.str("description"), Labels: a.strMap("labels"),
		Address: a.str("address"), Database: a.str("database"), Username: a.str("username"),
		Password: a.secret("password"), DenyUnresolvedColumns: a.boolean("deny_unresolved_columns"),
		Admins: a.str("admins"), IdleTimeout: a.str("idle_timeout"),
	}
	if a.present("deny_unresolved_columns") {
		d.warnf(a.attrs["deny_unresolved_columns"].NameRange, "Deprecated attribute",
			"deny_unresolved_columns no longer has an effect in postgres %q: masks follow each result column's lineage, and a value computed from a masked column is masked or refused before the statement runs. Remove the attribute.", ref.Name)
	}
	seen := map[string]bool{}
	for _, tb := range content.Blocks {
		if seen[tb.Type] {
			d.errorf(tb.DefRange, "Duplicate "+tb.Type+" block", "only one %s block is allowed in postgres %q", tb.Type, ref.Name)
			continue
		}
		seen[tb.Type] = true
		switch tb.Type {
		case "tls":
			t, _ := d.body(ref, "tls.", tb.Body, tlsSchema)
			r.TLS = &bundle.TLS{Mode: t.str("mode"), CAFile: t.str("ca_file"), ServerName: t.str("server_name"), CertFile: t.str("cert_file"), Key: t.secret("key")}
		case "upstream_roles":
			u, _ := d.body(ref, "upstream_roles.", tb.Body, upstreamRolesSchema)
			r.UpstreamRoles = &bundle.UpstreamRoles{Method: u.str("method"), Identities: u.strMap("identities"), Groups: u.strMap("groups"), Default: u.str("default")}
		}
	}
	d.model.Postgres = append(d.model.Postgres, r)
}

func (d *decoder) sshHost(ref bundle.Ref, b *hcl.Block) {
	a, _ := d.body(ref, "", b.Body, sshHostSchema)
	d.model.SSHHosts = append(d.model.SSHHosts, bundle.SSHHost{
		Name: ref.Name, Description: a.str("description"), Labels: a.strMap("labels"),
		Address: a.str("address"), User: a.str("user"), HostKey: a.str("host_key"),
		PrivateKey: a.secret("private_key"), Password: a.secret("password"), IdleTimeout: a.str("idle_timeout"),
	})
}

func (d *decoder) kubernetes(ref bundle.Ref, b *hcl.Block) {
	a, _ := d.body(ref, "", b.Body, kubernetesSchema)
	d.model.KubernetesClusters = append(d.model.KubernetesClusters, bundle.KubernetesCluster{
		Name: ref.Name, Description: a.str("description"), Labels: a.strMap("labels"),
		Server: a.str("server"), Kubeconfig: a.secret("kubeconfig"), Token: a.secret("token"),
		CAFile: a.str("ca_file"), Impersonate: a.boolean("impersonate"), IdleTimeout: a.str("idle_timeout"),
	})
}

func (d *decoder) policy(ref bundle.Ref, b *hcl.Block, f *hcl.File) {
	a, content := d.body(ref, "", b.Body, policySchema)
	p := bundle.Policy{
		Name: ref.Name, Description: a.str("description"), Resources: a.strs("resources"),
		Identities: a.strs("identities"), Groups: a.strs("groups"), Everyone: a.boolean("everyone"),
	}
	seen := map[string]hcl.Range{}
	for _, rb := range content.Blocks {
		name := rb.Labels[0]
		if first, dup := seen[name]; dup {
			d.errorf(rb.LabelRanges[0], "Duplicate rule", "rule %q is already defined in policy %q at %s", name, ref.Name, first)
			continue
		}
		seen[name] = rb.DefRange
		rref := ref.InRule(name)
		d.src.object(rref, rb.DefRange, f)
		ra, rc := d.body(rref, "", rb.Body, ruleSchema)
		r := bundle.Rule{Name: name, Effect: bundle.Effect(ra.str("effect")), When: ra.str("when"), Reason: ra.str("reason"), On: ra.strs("on")}
		for i, ab := range rc.Blocks {
			if i > 0 {
				d.errorf(ab.DefRange, "Duplicate approval block", "only one approval block is allowed in a rule")
				continue
			}
			aa, ac := d.body(rref, "approval.", ab.Body, approvalSchema)
			count, countOK := aa.integerOK("count")
			r.Approval = &bundle.Approval{Groups: aa.strs("groups"), Count: count, Timeout: aa.str("timeout"),
				Hold: aa.optBool("hold"), Wait: aa.str("wait"), ValidFor: aa.str("valid_for"), Reusable: aa.boolean("reusable")}
			for j, wb := range ac.Blocks {
				if j > 0 {
					d.errorf(wb.DefRange, "Duplicate webhook block", "only one webhook block is allowed in an approval block")
					continue
				}
				wa, _ := d.body(rref, "approval.webhook.", wb.Body, webhookSchema)
				r.Approval.Webhook = &bundle.Webhook{URL: wa.secret("url"), Secret: wa.secret("secret")}
			}
			if countOK && count == 0 {
				// The model reads 0 as "the default, 1"; written out, 0
				// approvals would be a review nobody has to give.
				d.errorf(aa.attrs["count"].Expr.Range(), "Invalid value", "approval.count must be between 1 and 10, got 0")
			}
		}
		p.Rules = append(p.Rules, r)
	}
	d.model.Policies = append(d.model.Policies, p)
}

func (d *decoder) mask(ref bundle.Ref, b *hcl.Block) {
	a, _ := d.body(ref, "", b.Body, maskSchema)
	d.model.Masks = append(d.model.Masks, bundle.Mask{
		Name: ref.Name, Description: a.str("description"), Resources: a.strs("resources"),
		Columns: a.strs("columns"), Detectors: a.strs("detectors"), Fields: a.strs("fields"), Method: a.str("method"),
		HashKey: a.secret("hash_key"), Unless: a.str("unless"), AllowInPredicates: a.boolean("allow_in_predicates"),
	})
}

func (d *decoder) test(ref bundle.Ref, b *hcl.Block) {
	a, _ := d.body(ref, "", b.Body, testSchema)
	t := bundle.Test{
		Name: ref.Name, Description: a.str("description"), Identity: a.str("identity"),
		Provider: a.str("provider"), Subject: a.str("subject"), Groups: a.strs("groups"),
		Claims: a.json("claims"), Resource: a.str("resource"), SQL: a.str("sql"),
		Request: a.json("request"), Now: a.str("now"), Expect: bundle.Effect(a.str("expect")),
	}
	// Unset (or null) means "not checked"; [] and {} assert "none".
	if a.present("expect_rules") {
		t.ExpectRules = append([]string{}, a.strs("expect_rules")...)
	}
	if a.present("expect_masks") {
		t.ExpectMasks = a.strMap("expect_masks")
		if t.ExpectMasks == nil {
			t.ExpectMasks = map[string]string{}
		}
	}
	d.model.Tests = append(d.model.Tests, t)
}

// attrReader converts attribute expressions to Go values, reporting type
// errors at the attribute, and records where each attribute is so that later
// problems can point at it.
type attrReader struct {
	d      *decoder
	ref    bundle.Ref
	prefix string
	attrs  hcl.Attributes
}

// present reports whether an attribute is set to something other than null.
func (a *attrReader) present(name string) bool {
	attr, ok := a.attrs[name]
	if !ok {
		return false
	}
	v, diags := attr.Expr.Value(nil)
	return !diags.HasErrors() && !v.IsNull()
}

func (a *attrReader) value(name string, ty cty.Type) (cty.Value, bool) {
	attr, ok := a.attrs[name]
	if !ok {
		return cty.NilVal, false
	}
	a.d.src.attribute(a.ref.Attribute(a.prefix+name), attr)
	v, diags := attr.Expr.Value(nil)
	a.d.diags = append(a.d.diags, diags...)
	if diags.HasErrors() {
		return cty.NilVal, false
	}
	if v.IsNull() {
		return cty.NilVal, false
	}
	if ty == cty.DynamicPseudoType {
		return v, true
	}
	cv, err := convert.Convert(v, ty)
	if err != nil {
		a.d.errorf(attr.Expr.Range(), "Incorrect attribute value type",
			"%s must be %s: %s", name, friendlyType(ty), err)
		return cty.NilVal, false
	}
	if !cv.IsWhollyKnown() {
		a.d.errorf(attr.Expr.Range(), "Unknown value", "%s must be a literal value", name)
		return cty.NilVal, false
	}
	return cv, true
}

func friendlyType(ty cty.Type) string {
	switch {
	case ty == cty.String:
		return "a string"
	case ty == cty.Bool:
		return "true or false"
	case ty == cty.Number:
		return "a number"
	case ty.IsListType():
		return "a list of strings"
	case ty.IsMapType():
		return "a map of strings"
	}
	return ty.FriendlyName()
}

func (a *attrReader) str(name string) string {
	v, ok := a.value(name, cty.String)
	if !ok {
		return ""
	}
	return v.AsString()
}

// secret reads an attribute that must hold a secret reference. bundle's
// Validate checks the value, and its message never repeats it: if it is not a
// reference, it may be the secret itself.
func (a *attrReader) secret(name string) string { return a.str(name) }

func (a *attrReader) strs(name string) []string {
	v, ok := a.value(name, cty.List(cty.String))
	if !ok {
		return nil
	}
	out := make([]string, 0, v.LengthInt())
	for it := v.ElementIterator(); it.Next(); {
		_, e := it.Element()
		if e.IsNull() {
			a.d.errorf(a.attrs[name].Expr.Range(), "Null list element", "%s must not contain null", name)
			continue
		}
		out = append(out, e.AsString())
	}
	return out
}

func (a *attrReader) strMap(name string) map[string]string {
	v, ok := a.value(name, cty.Map(cty.String))
	if !ok {
		return nil
	}
	out := map[string]string{}
	for it := v.ElementIterator(); it.Next(); {
		k, e := it.Element()
		if e.IsNull() {
			continue
		}
		out[k.AsString()] = e.AsString()
	}
	return out
}

// optBool reads a bool whose absence means its default (nil).
func (a *attrReader) optBool(name string) *bool {
	v, ok := a.value(name, cty.Bool)
	if !ok {
		return nil
	}
	b := v.True()
	return &b
}

func (a *attrReader) boolean(name string) bool {
	v, ok := a.value(name, cty.Bool)
	return ok && v.True()
}

// integerOK reads a whole number; ok is false when the attribute is unset
// or not a whole number (which is reported).
func (a *attrReader) integerOK(name string) (int, bool) {
	v, ok := a.value(name, cty.Number)
	if !ok {
		return 0, false
	}
	bf := v.AsBigFloat()
	i, acc := bf.Int64()
	if acc != big.Exact || i < -1<<31 || i > 1<<31-1 {
		a.d.errorf(a.attrs[name].Expr.Range(), "Invalid number", "%s must be a whole number", name)
		return 0, false
	}
	return int(i), true
}

// json reads an object attribute (claims, request) as canonical JSON.
func (a *attrReader) json(name string) string {
	v, ok := a.value(name, cty.DynamicPseudoType)
	if !ok {
		return ""
	}
	if !v.Type().IsObjectType() && !v.Type().IsMapType() {
		a.d.errorf(a.attrs[name].Expr.Range(), "Incorrect attribute value type", "%s must be an object, such as { kind = \"exec\", command = \"uptime\" }", name)
		return ""
	}
	b, err := ctyjson.SimpleJSONValue{Value: v}.MarshalJSON()
	if err != nil {
		a.d.errorf(a.attrs[name].Expr.Range(), "Invalid value", "%s cannot be encoded as JSON: %v", name, err)
		return ""
	}
	return string(b)
}
