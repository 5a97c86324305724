package celpolicy_test

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
)

// kubeModel is a Kubernetes cluster whose developers may read Secrets and
// ConfigMaps, with masks over their values: Secret values for everyone
// but secret-admins, and ConfigMap data in the prod namespace only.
func kubeModel() *bundle.Model {
	return &bundle.Model{
		IdentityProviders: []bundle.IdentityProvider{{Name: "corp", Issuer: "https://id.example.com", Audiences: []string{"gatehouse"}}},
		KubernetesClusters: []bundle.KubernetesCluster{
			{Name: "prod-cluster", Server: "https://k8s.example.com:6443", Token: "env:K8S_TOKEN"},
			{Name: "dev-cluster", Server: "https://k8s-dev.example.com:6443", Token: "env:K8S_DEV_TOKEN"},
		},
		Postgres: []bundle.Postgres{{Name: "db", Address: "db:5432", Database: "db", Username: "gw"}},
		Policies: []bundle.Policy{{
			Name: "devs-read", Resources: []string{"prod-cluster", "dev-cluster"}, Groups: []string{"devs", "secret-admins"},
			Rules: []bundle.Rule{{Name: "read", Effect: bundle.EffectAllow, When: "request.verb in ['get', 'list', 'watch']", Reason: "developers read"}},
		}},
		Masks: []bundle.Mask{
			{Name: "secret-values", Resources: []string{"prod-cluster", "dev-cluster"}, Fields: []string{"secrets/stringData", "secrets/data"},
				Method: bundle.MaskRedact, Unless: "'secret-admins' in identity.groups"},
			{Name: "prod-config", Resources: []string{"prod-cluster"}, Fields: []string{"configmaps/data"},
				Method: bundle.MaskPartial, Unless: "request.namespace != 'prod' || request.verb == 'watch'"},
			{Name: "widget-passwords", Resources: []string{"prod-cluster"}, Fields: []string{"widgets.example.com/spec.password"},
				Method: bundle.MaskNull},
			// A weaker mask of the same field: the stronger method wins.
			{Name: "secret-values-hash", Resources: []string{"prod-cluster"}, Fields: []string{"secrets/data"},
				Method: bundle.MaskHash, HashKey: "env:MASK_KEY"},
			{Name: "email", Resources: []string{"db"}, Columns: []string{"users.email"}, Method: bundle.MaskRedact},
		},
	}
}

func TestDecideKubernetesMasks(t *testing.T) {
	p := celpolicy.MustCompile(t, kubeModel())
	dev := celpolicy.Identity{Subject: "alice", Groups: []string{"devs"}, Claims: map[string]any{}}
	admin := celpolicy.Identity{Subject: "bob", Groups: []string{"devs", "secret-admins"}, Claims: map[string]any{}}
	get := func(resource, ns string) *celpolicy.KubernetesRequest {
		return &celpolicy.KubernetesRequest{Kind: "api", Verb: "get", Resource: resource, Namespace: ns}
	}
	all := []string{
		"kubernetes:configmaps/data=partial",
		"kubernetes:secrets/data=redact",
		"kubernetes:secrets/stringData=redact",
		"kubernetes:widgets.example.com/spec.password=null",
	}
	for name, tc := range map[string]struct {
		id       celpolicy.Identity
		resource string
		req      *celpolicy.KubernetesRequest
		effect   bundle.Effect
		masks    []string
	}{
		"a developer gets every field mask": {dev, "prod-cluster", get("secrets", "prod"), bundle.EffectAllow, all},
		// The weaker hash mask of secrets/data has no unless: it remains.
		"unless exempts a secret admin": {admin, "prod-cluster", get("secrets", "prod"), bundle.EffectAllow,
			[]string{"kubernetes:configmaps/data=partial", "kubernetes:secrets/data=hash", "kubernetes:widgets.example.com/spec.password=null"}},
		"unless reads request.namespace": {dev, "prod-cluster", get("configmaps", "staging"), bundle.EffectAllow, all[1:]},
		"unless reads request.verb": {dev, "prod-cluster", &celpolicy.KubernetesRequest{Kind: "api", Verb: "watch", Resource: "configmaps", Namespace: "prod"},
			bundle.EffectAllow, all[1:]},
		"masks are per resource":          {dev, "dev-cluster", get("secrets", "prod"), bundle.EffectAllow, []string{"kubernetes:secrets/data=redact", "kubernetes:secrets/stringData=redact"}},
		"an admin on the other cluster":   {admin, "dev-cluster", get("secrets", "prod"), bundle.EffectAllow, nil},
		"a deny carries no masks":         {dev, "prod-cluster", &celpolicy.KubernetesRequest{Kind: "api", Verb: "delete", Resource: "secrets", Namespace: "prod"}, bundle.EffectDeny, nil},
		"a caller no policy covers: deny": {celpolicy.Identity{Subject: "eve", Claims: map[string]any{}}, "prod-cluster", get("secrets", "prod"), bundle.EffectDeny, nil},
	} {
		t.Run(name, func(t *testing.T) {
			d := p.Decide(&celpolicy.Input{Identity: tc.id, Resource: tc.resource, Request: tc.req, Now: time.Unix(1764000000, 0)})
			if d.Effect != tc.effect {
				t.Fatalf("effect %s, want %s (%q)", d.Effect, tc.effect, d.Reasons)
			}
			var got []string
			for _, m := range d.Masks {
				got = append(got, m.Target.String()+"="+m.Method)
				if m.Target.Field == "" || m.Target.Column != "" || m.Target.Detector != "" {
					t.Errorf("target %#v is not a field target", m.Target)
				}
				if m.AllowInPredicates {
					t.Errorf("%s allows predicates", m.Target)
				}
			}
			if !slices.Equal(got, tc.masks) {
				t.Errorf("masks %v, want %v", got, tc.masks)
			}
		})
	}

	// The decision's JSON names the target as the gateway and tests spell it.
	d := p.Decide(&celpolicy.Input{Identity: dev, Resource: "dev-cluster", Request: get("secrets", "prod")})
	raw, err := json.Marshal(d.Masks)
	if err != nil {
		t.Fatal(err)
	}
	if want := `[{"target":"kubernetes:secrets/data","method":"redact","mask":"secret-values"},{"target":"kubernetes:secrets/stringData","method":"redact","mask":"secret-values"}]`; string(raw) != want {
		t.Errorf("masks JSON\n got %s\nwant %s", raw, want)
	}
	var back []celpolicy.MaskAction
	if err := json.Unmarshal(raw, &back); err != nil || !slices.Equal(back, d.Masks) {
		t.Errorf("masks JSON read back as %+v, %v; want %+v", back, err, d.Masks)
	}
}

// TestKubernetesMaskUnlessEnv: a mask's unless is typed by its resources'
// kind, as a policy's rules are.
func TestKubernetesMaskUnlessEnv(t *testing.T) {
	for name, tc := range map[string]struct {
		mask    string
		unless  string
		message string
	}{
		"a kubernetes mask cannot read statements": {"secret-values", "request.statements.size() > 0", "undefined field 'statements'"},
		"a postgres mask cannot read verb":         {"email", "request.verb == 'get'", "undefined field 'verb'"},
	} {
		t.Run(name, func(t *testing.T) {
			m := kubeModel()
			for i := range m.Masks {
				if m.Masks[i].Name == tc.mask {
					m.Masks[i].Unless = tc.unless
				}
			}
			_, err := celpolicy.Compile(m)
			var ps bundle.Problems
			if !errors.As(err, &ps) || len(ps) != 1 {
				t.Fatalf("Compile: %v, want one problem", err)
			}
			if ps[0].Code != bundle.CodeCELType || ps[0].Ref.String() != `mask "`+tc.mask+`" unless` || !strings.Contains(ps[0].Message, tc.message) {
				t.Errorf("problem %s %s %q, want a type error at mask %q unless containing %q", ps[0].Code, ps[0].Ref, ps[0].Message, tc.mask, tc.message)
			}
		})
	}
	for _, unless := range []string{"request.namespace == 'kube-system'", "request.api_group == '' && request.resource == 'secrets'", "'secret-admins' in identity.groups && resource.kind == 'kubernetes_cluster'"} {
		m := kubeModel()
		m.Masks[0].Unless = unless
		if _, err := celpolicy.Compile(m); err != nil {
			t.Errorf("unless %q: %v", unless, err)
		}
	}
}

// TestRunTestsKubernetesMasks: a policy test with a Kubernetes request
// asserts field masks with expect_masks.
func TestRunTestsKubernetesMasks(t *testing.T) {
	m := kubeModel()
	req := `{"kind":"api","verb":"get","resource":"secrets","namespace":"prod"}`
	m.Tests = []bundle.Test{
		{Name: "developers see redacted secrets", Provider: "corp", Subject: "alice", Groups: []string{"devs"}, Resource: "dev-cluster", Request: req,
			Expect: bundle.EffectAllow, ExpectMasks: map[string]string{"kubernetes:secrets/data": "redact", "kubernetes:secrets/stringData": "redact"}},
		{Name: "secret admins see secrets", Provider: "corp", Subject: "bob", Groups: []string{"devs", "secret-admins"}, Resource: "dev-cluster", Request: req,
			Expect: bundle.EffectAllow, ExpectMasks: map[string]string{}},
		{Name: "wrong expectation", Provider: "corp", Subject: "alice", Groups: []string{"devs"}, Resource: "dev-cluster", Request: req,
			Expect: bundle.EffectAllow, ExpectMasks: map[string]string{"kubernetes:secrets/data": "hash"}},
	}
	p := celpolicy.MustCompile(t, m)
	res := p.RunTests()
	byName := map[string]celpolicy.TestResult{}
	for _, r := range res {
		byName[r.Name] = r
	}
	for _, name := range []string{"developers see redacted secrets", "secret admins see secrets"} {
		if r := byName[name]; !r.Passed {
			t.Errorf("%s: %q", name, r.Failures)
		}
	}
	r := byName["wrong expectation"]
	want := "expected masks {kubernetes:secrets/data=hash}, got {kubernetes:secrets/data=redact, kubernetes:secrets/stringData=redact}"
	if r.Passed || !slices.Contains(r.Failures, want) {
		t.Errorf("wrong expectation: passed %v, failures %q; want %q", r.Passed, r.Failures, want)
	}
	cov := p.Coverage(res)
	if !slices.Contains(cov.UntestedMasks, "widget-passwords") || slices.Contains(cov.UntestedMasks, "secret-values") {
		t.Errorf("untested masks %v", cov.UntestedMasks)
	}
}

func TestMaskTargetRoundTrip(t *testing.T) {
	for s, want := range map[string]celpolicy.MaskTarget{
		"public.users.email":                           {Column: "public.users.email"},
		"detector:email":                               {Detector: "email"},
		"kubernetes:secrets/data":                      {Field: "secrets/data"},
		"kubernetes:widgets.example.com/spec.password": {Field: "widgets.example.com/spec.password"},
	} {
		got, err := celpolicy.ParseMaskTarget(s)
		if err != nil || got != want {
			t.Errorf("ParseMaskTarget(%q) = %#v, %v; want %#v", s, got, err, want)
			continue
		}
		if got.String() != s {
			t.Errorf("%#v.String() = %q, want %q", got, got.String(), s)
		}
		raw, err := json.Marshal(got)
		if err != nil || string(raw) != `"`+s+`"` {
			t.Errorf("JSON of %#v = %s, %v", got, raw, err)
		}
		var back celpolicy.MaskTarget
		if err := json.Unmarshal(raw, &back); err != nil || back != got {
			t.Errorf("JSON %s read back as %#v, %v", raw, back, err)
		}
	}
	for s, want := range map[string]string{
		"kubernetes:":              "empty field",
		"kubernetes:secrets":       `field "secrets" names no path`,
		"kubernetes:Secrets/data":  "must be lower case",
		"kubernetes:secrets/a..b":  "an empty path segment",
		"detector:":                "names no detector",
		"":                         "kubernetes:RESOURCE[.GROUP]/PATH",
		"kubernetes:secrets/data/": "contains '/'",
	} {
		_, err := celpolicy.ParseMaskTarget(s)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseMaskTarget(%q) = %v, want an error containing %q", s, err, want)
		}
		var mt celpolicy.MaskTarget
		if err := json.Unmarshal([]byte(`"`+s+`"`), &mt); err == nil {
			t.Errorf("JSON %q accepted as %#v", s, mt)
		}
	}
}

// TestDiffProbesMaskedKubernetesResources: the resources Kubernetes masks
// name (with their API group) are probed, as the tables of PostgreSQL
// masks are, so a rule change about them shows as an access change.
func TestDiffProbesMaskedKubernetesResources(t *testing.T) {
	oldM := kubeModel()
	newM := kubeModel()
	newM.Policies = append(newM.Policies, bundle.Policy{
		Name: "widget-writers", Resources: []string{"prod-cluster"}, Groups: []string{"devs"},
		Rules: []bundle.Rule{{Name: "write", Effect: bundle.EffectAllow, When: "request.api_group == 'example.com' && request.verb == 'update'", Reason: "widgets"}},
	})
	d := celpolicy.Diff(celpolicy.MustCompile(t, oldM), celpolicy.MustCompile(t, newM))
	found := false
	for _, a := range d.Access {
		if a.Caller == "group devs" && a.Resource == "prod-cluster" && a.New == bundle.EffectAllow &&
			slices.ContainsFunc(a.Requests, func(r string) bool { return strings.Contains(r, "example.com/widgets") }) {
			found = true
		}
	}
	if !found {
		t.Errorf("no access change for group devs on example.com/widgets: %+v", d.Access)
	}

	// Adding a mask is an object change.
	newM = kubeModel()
	newM.Masks = append(newM.Masks, bundle.Mask{Name: "tokens", Resources: []string{"prod-cluster"}, Fields: []string{"serviceaccounts/secrets"}, Method: bundle.MaskRedact})
	d = celpolicy.Diff(celpolicy.MustCompile(t, kubeModel()), celpolicy.MustCompile(t, newM))
	if len(d.Objects) != 1 || d.Objects[0].Kind != "mask" || d.Objects[0].Change != "added" {
		t.Errorf("objects %+v, want the mask added", d.Objects)
	}
}

// TestCacheableKubernetesMask: a Kubernetes mask's unless that reads now
// makes its resources' decisions uncacheable; the other masks' do not.
func TestCacheableKubernetesMask(t *testing.T) {
	m := kubeModel()
	if p := celpolicy.MustCompile(t, m); !p.Cacheable("prod-cluster", "api") {
		t.Error("prod-cluster is not cacheable without a dynamic condition")
	}
	m = kubeModel()
	m.Masks[1].Unless = "now.getHours() < 9" // prod-config, on prod-cluster only
	p := celpolicy.MustCompile(t, m)
	if p.Cacheable("prod-cluster", "api") {
		t.Error("prod-cluster is cacheable though a mask's unless reads now")
	}
	if !p.Cacheable("dev-cluster", "api") {
		t.Error("dev-cluster is not cacheable, though no condition of its reads now")
	}
}
