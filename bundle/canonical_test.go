package bundle

import (
	"bytes"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func normalized(m Model) Model {
	m.Normalize()
	return m
}

func payloadBytes(t *testing.T, m Model) []byte {
	t.Helper()
	return encode(t, &Payload{SchemaVersion: SchemaVersion, Revision: 1, CreatedAt: testCreatedAt, Model: m})
}

func TestNormalizeSortsObjectsAndSets(t *testing.T) {
	m := normalized(realisticModel())

	got := map[string][]string{
		"identity_providers":  names(m.IdentityProviders, func(x IdentityProvider) string { return x.Name }),
		"identities":          names(m.Identities, func(x Identity) string { return x.Name }),
		"postgres":            names(m.Postgres, func(x Postgres) string { return x.Name }),
		"ssh_hosts":           names(m.SSHHosts, func(x SSHHost) string { return x.Name }),
		"kubernetes_clusters": names(m.KubernetesClusters, func(x KubernetesCluster) string { return x.Name }),
		"policies":            names(m.Policies, func(x Policy) string { return x.Name }),
		"masks":               names(m.Masks, func(x Mask) string { return x.Name }),
		"tests":               names(m.Tests, func(x Test) string { return x.Name }),
	}
	want := map[string][]string{
		"identity_providers":  {"ci-github", "corp-okta", "dev-local"},
		"identities":          {"deploy-bot", "etl"},
		"postgres":            {"analytics", "orders-db"},
		"ssh_hosts":           {"bastion"},
		"kubernetes_clusters": {"prod-cluster"},
		"policies":            {"k8s-deploy", "orders-access", "ssh-ops"},
		"masks":               {"card-numbers", "emails", "secret-values"},
		"tests":               {"adhoc-forward", "deploy", "etl-reads-orders"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("object order:\n got %v\nwant %v", got, want)
	}

	sets := map[string]struct{ got, want []string }{
		"identity_provider audiences":  {idp(&m, "corp-okta").Audiences, []string{"api://gatehouse", "gatehouse"}},
		"identity_provider algorithms": {idp(&m, "corp-okta").Algorithms, []string{"ES256", "RS256"}},
		"identity groups":              {identity(&m, "etl").Groups, []string{"etl", "readers"}},
		"policy resources":             {policy(&m, "orders-access").Resources, []string{"analytics", "orders-db"}},
		"policy groups":                {policy(&m, "orders-access").Groups, []string{"engineering", "sre"}},
		"rule on":                      {rule(&m, "ssh-ops", "shell").On, []string{"connect", "exec", "shell"}},
		"approval groups":              {rule(&m, "orders-access", "prod-writes").Approval.Groups, []string{"dba", "sre"}},
		"mask resources":               {mask(&m, "emails").Resources, []string{"analytics", "orders-db"}},
		"mask detectors":               {mask(&m, "card-numbers").Detectors, []string{"card_number", "iban"}},
		"mask fields":                  {mask(&m, "secret-values").Fields, []string{"secrets/data", "secrets/stringData", "widgets.example.com/spec.password"}},
		"test groups":                  {test(&m, "adhoc-forward").Groups, []string{"sre"}},
	}
	for name, s := range sets {
		if !slices.Equal(s.got, s.want) {
			t.Errorf("%s = %q, want %q", name, s.got, s.want)
		}
	}

	// Rules keep their declaration order: it is part of the source.
	if got := names(policy(&m, "ssh-ops").Rules, func(r Rule) string { return r.Name }); !slices.Equal(got, []string{"shell", "forward"}) {
		t.Errorf("ssh-ops rules reordered: %v", got)
	}
	// Host keys lose their comment and extra whitespace.
	if m.SSHHosts[0].HostKey != testHostKey {
		t.Errorf("host key = %q, want %q", m.SSHHosts[0].HostKey, testHostKey)
	}
	// Empty labels and TLS blocks are dropped.
	if m.SSHHosts[0].Labels != nil || pg(&m, "analytics").TLS != nil {
		t.Errorf("empty labels / tls kept: %v %v", m.SSHHosts[0].Labels, pg(&m, "analytics").TLS)
	}
	// A "true" condition is the same as none.
	if w := rule(&m, "orders-access", "read").When; w != "" {
		t.Errorf(`when " true " normalised to %q, want ""`, w)
	}
}

func TestNormalizeMaskColumns(t *testing.T) {
	m := realisticModel()
	k := mask(&m, "card-numbers")
	k.Columns = []string{"orders.card_number", "billing.invoices.card_number", "public.orders.card_number", "Orders.Card", `"Orders".email`}
	test(&m, "etl-reads-orders").ExpectMasks = map[string]string{
		"orders.card_number":    MaskPartial,
		"billing.invoices.iban": MaskRedact,
		"detector:email":        MaskHash,
	}
	m.Normalize()

	// Unquoted names fold to lower case, as in SQL; quoted ones keep their
	// case and stay quoted.
	wantCols := []string{"billing.invoices.card_number", `public."Orders".email`, "public.orders.card", "public.orders.card_number"}
	if got := mask(&m, "card-numbers").Columns; !slices.Equal(got, wantCols) {
		t.Errorf("columns = %q, want %q", got, wantCols)
	}
	wantMasks := map[string]string{
		"public.orders.card_number": MaskPartial,
		"billing.invoices.iban":     MaskRedact,
		"detector:email":            MaskHash,
	}
	if got := test(&m, "etl-reads-orders").ExpectMasks; !reflect.DeepEqual(got, wantMasks) {
		t.Errorf("expect_masks = %v, want %v", got, wantMasks)
	}
	// Invalid columns are left for Validate to report, not dropped.
	bad := Model{Masks: []Mask{{Name: "m", Columns: []string{"a.b.c.d", "x"}}}}
	bad.Normalize()
	if got := bad.Masks[0].Columns; !slices.Equal(got, []string{"a.b.c.d", "x"}) {
		t.Errorf("invalid columns normalised to %q", got)
	}
}

// TestNormalizeDefaultSpellings: two spellings of the same policy give the
// same payload bytes.
func TestNormalizeDefaultSpellings(t *testing.T) {
	tests := map[string]struct {
		a, b func(m *Model)
	}{
		`groups_claim "groups" == ""`: {
			a: func(m *Model) { idp(m, "corp-okta").GroupsClaim = "groups" },
			b: func(m *Model) { idp(m, "corp-okta").GroupsClaim = "" },
		},
		"approval count 1 == 0": {
			a: func(m *Model) { rule(m, "ssh-ops", "forward").Approval.Count = 1 },
			b: func(m *Model) { rule(m, "ssh-ops", "forward").Approval.Count = 0 },
		},
		`approval timeout "15m" == ""`: {
			a: func(m *Model) { rule(m, "ssh-ops", "forward").Approval.Timeout = "15m" },
			b: func(m *Model) { rule(m, "ssh-ops", "forward").Approval.Timeout = "" },
		},
		`approval timeout "15m0s" == ""`: {
			a: func(m *Model) { rule(m, "ssh-ops", "forward").Approval.Timeout = "15m0s" },
			b: func(m *Model) { rule(m, "ssh-ops", "forward").Approval.Timeout = "" },
		},
		"approval hold true == unset": {
			a: func(m *Model) { yes := true; rule(m, "ssh-ops", "forward").Approval.Hold = &yes },
			b: func(m *Model) { rule(m, "ssh-ops", "forward").Approval.Hold = nil },
		},
		`approval wait equal to the timeout == ""`: {
			a: func(m *Model) { a := rule(m, "ssh-ops", "forward").Approval; a.Timeout, a.Wait = "1h", "60m" },
			b: func(m *Model) { a := rule(m, "ssh-ops", "forward").Approval; a.Timeout, a.Wait = "1h", "" },
		},
		`approval valid_for "15m" == ""`: {
			a: func(m *Model) { rule(m, "ssh-ops", "forward").Approval.ValidFor = "900s" },
			b: func(m *Model) { rule(m, "ssh-ops", "forward").Approval.ValidFor = "" },
		},
		`when "true" == ""`: {
			a: func(m *Model) { rule(m, "ssh-ops", "shell").When = "true" },
			b: func(m *Model) { rule(m, "ssh-ops", "shell").When = "" },
		},
		"set order and duplicates": {
			a: func(m *Model) { policy(m, "ssh-ops").Groups = []string{"sre", "oncall", "sre"} },
			b: func(m *Model) { policy(m, "ssh-ops").Groups = []string{"oncall", "sre"} },
		},
		"empty set == nil": {
			a: func(m *Model) { identity(m, "etl").Groups = []string{} },
			b: func(m *Model) { identity(m, "etl").Groups = nil },
		},
		"empty approval groups == nil": {
			a: func(m *Model) { rule(m, "ssh-ops", "forward").Approval.Groups = []string{} },
			b: func(m *Model) { rule(m, "ssh-ops", "forward").Approval.Groups = nil },
		},
		"empty labels == nil": {
			a: func(m *Model) { pg(m, "analytics").Labels = map[string]string{} },
			b: func(m *Model) { pg(m, "analytics").Labels = nil },
		},
		"empty tls block == none": {
			a: func(m *Model) { pg(m, "analytics").TLS = &TLS{} },
			b: func(m *Model) { pg(m, "analytics").TLS = nil },
		},
		"host key comment and spacing": {
			a: func(m *Model) {
				m.SSHHosts[0].HostKey = " " + strings.Replace(testHostKey, " ", "\t ", 1) + " ops@laptop\n"
			},
			b: func(m *Model) { m.SSHHosts[0].HostKey = testHostKey },
		},
		"two-part mask column == public schema": {
			a: func(m *Model) { mask(m, "card-numbers").Columns = []string{"orders.card_number"} },
			b: func(m *Model) { mask(m, "card-numbers").Columns = []string{"public.orders.card_number"} },
		},
		"top-level order": {
			a: func(m *Model) {
				slices.Reverse(m.Policies)
				slices.Reverse(m.IdentityProviders)
				slices.Reverse(m.Tests)
			},
			b: func(m *Model) {},
		},
		"empty top-level list == nil": {
			a: func(m *Model) { m.Masks = []Mask{}; m.Tests = []Test{} },
			b: func(m *Model) { m.Masks = nil; m.Tests = nil },
		},
		"claims JSON key order and spacing": {
			a: func(m *Model) { test(m, "etl-reads-orders").Claims = `{"b": [1, 2], "a": {"y": true, "x": null}}` },
			b: func(m *Model) {
				test(m, "etl-reads-orders").Claims = "{\n  \"a\": {\"x\": null, \"y\": true},\n  \"b\": [1,2]\n}\n"
			},
		},
		"request JSON key order and spacing": {
			a: func(m *Model) { test(m, "deploy").Request = `{"verb":"patch","kind":"api"}` },
			b: func(m *Model) { test(m, "deploy").Request = ` { "kind" : "api" , "verb" : "patch" } ` },
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			a, b := realisticModel(), realisticModel()
			tc.a(&a)
			tc.b(&b)
			a.Normalize()
			b.Normalize()
			pa, pb := payloadBytes(t, a), payloadBytes(t, b)
			if !bytes.Equal(pa, pb) {
				i := firstDiff(pa, pb)
				t.Errorf("payloads differ at byte %d:\n a: ...%s\n b: ...%s", i, pa[max(0, i-60):min(len(pa), i+40)], pb[max(0, i-60):min(len(pb), i+40)])
			}
		})
	}

	// Values that are not the default are kept.
	m := normalized(realisticModel())
	if got := idp(&m, "dev-local").GroupsClaim; got != "roles" {
		t.Errorf("groups_claim roles normalised to %q", got)
	}
	if a := rule(&m, "orders-access", "prod-writes").Approval; a.Count != 2 || a.Timeout != "30m0s" {
		t.Errorf("non-default approval normalised to %+v", a)
	}
	if a := rule(&m, "ssh-ops", "forward").Approval; a.Count != 0 || a.Timeout != "" {
		t.Errorf("default approval normalised to %+v", a)
	}
}

func TestNormalizeCanonicalJSON(t *testing.T) {
	tests := map[string]struct{ in, want string }{
		"key order and whitespace":    {`{ "sub": "etl-nightly", "email": "etl@acme.com" }`, `{"email":"etl@acme.com","sub":"etl-nightly"}`},
		"nested objects and arrays":   {"{\"z\":[{\"b\":1,\"a\":2}],\n\"a\":{}}", `{"a":{},"z":[{"a":2,"b":1}]}`},
		"big integers stay exact":     {`{"n": 12345678901234567890}`, `{"n":12345678901234567890}`},
		"number spelling is kept":     {`{"n": 1.50}`, `{"n":1.50}`},
		"no HTML escaping":            {`{"q": "a<b && c>d"}`, `{"q":"a<b && c>d"}`},
		"escaped HTML is unescaped":   {`{"q": "\u003cb\u003e"}`, `{"q":"<b>"}`},
		"unicode escapes are decoded": {`{"q": "caf\u00e9"}`, `{"q":"café"}`},
		"invalid JSON is unchanged":   {`{"sub": `, `{"sub": `},
		"not JSON is unchanged":       {`sub=alice`, `sub=alice`},
		"empty stays empty":           {``, ``},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			m := Model{Tests: []Test{{Name: "t", Claims: tc.in, Request: tc.in}}}
			m.Normalize()
			if got := m.Tests[0].Claims; got != tc.want {
				t.Errorf("claims %q normalised to %q, want %q", tc.in, got, tc.want)
			}
			if got := m.Tests[0].Request; got != tc.want {
				t.Errorf("request %q normalised to %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

// TestNormalizeKeepsTrailingJSON: canonicalJSON promises "Invalid JSON is
// returned unchanged (Validate reports it)".
func TestNormalizeKeepsTrailingJSON(t *testing.T) {
	const in = `{"kind":"api"} {"verb":"delete"}`
	m := realisticModel()
	test(&m, "deploy").Request = in
	if ps := m.Validate(); len(ps) != 1 || ps[0].Code != CodeInvalidValue {
		t.Fatalf("Validate before Normalize: %v", ps)
	}
	m.Normalize()
	if got := test(&m, "deploy").Request; got != in {
		t.Fatalf("regression: Normalize silently truncates a test request/claims with trailing JSON: %q became %q, "+
			"so a model normalised before it is validated loses the error (Validate now reports %d problems). "+
			"canonicalJSON decodes only the first value and never checks dec.More()/EOF.", in, got, len(m.Validate()))
	}
}

func TestNormalizeIdempotent(t *testing.T) {
	m := normalized(realisticModel())
	once := payloadBytes(t, m)
	m.Normalize()
	if twice := payloadBytes(t, m); !bytes.Equal(once, twice) {
		t.Errorf("Normalize is not idempotent: differs at byte %d", firstDiff(once, twice))
	}
	var empty Model
	empty.Normalize()
	if !reflect.DeepEqual(empty, Model{}) {
		t.Errorf("empty model normalised to %+v", empty)
	}
}

// TestNormalizeDeterministicExpectMasks: two spellings of one column in
// expect_masks collapse into one key; which method survives must not depend
// on map iteration order.
func TestNormalizeDeterministicExpectMasks(t *testing.T) {
	build := func() []byte {
		m := realisticModel()
		test(&m, "etl-reads-orders").ExpectMasks = map[string]string{
			"orders.card_number":        MaskPartial,
			"public.orders.card_number": MaskRedact,
		}
		if ps := m.Validate(); len(ps) != 0 {
			// Refusing the conflict is a fine answer too.
			t.Logf("Validate refuses the conflicting expect_masks: %v", ps)
			return nil
		}
		m.Normalize()
		return payloadBytes(t, m)
	}
	first := build()
	if first == nil {
		return
	}
	for i := 0; i < 100; i++ {
		if got := build(); !bytes.Equal(got, first) {
			i := firstDiff(first, got)
			t.Fatalf("regression: a valid model normalises to different payloads run to run: expect_masks "+
				`{"orders.card_number": "partial", "public.orders.card_number": "redact"} passes Validate, `+
				"and Normalize keeps whichever of the two the map range visits last: ...%s vs ...%s",
				first[max(0, i-40):i+10], got[max(0, i-40):i+10])
		}
	}
}

func TestEncodeDecodePayload(t *testing.T) {
	p := testPayload(t)
	b := encode(t, p)
	if bytes.HasSuffix(b, []byte("\n")) || bytes.Contains(b, []byte("\n")) {
		t.Errorf("payload is not compact")
	}
	if !bytes.HasPrefix(b, []byte(`{"schema_version":1,"revision":1700000000,"created_at":"2023-11-14T22:13:20Z","compiler":"gatehouse test","model":{"identity_providers":[`)) {
		t.Errorf("payload does not start with the metadata in declaration order: %.120s", b)
	}
	got, err := DecodePayload(b)
	if err != nil {
		t.Fatalf("DecodePayload: %v", err)
	}
	if !reflect.DeepEqual(got, p) {
		t.Errorf("round trip changed the payload\n got: %+v\nwant: %+v", got, p)
	}
	again := encode(t, got)
	if !bytes.Equal(again, b) {
		t.Errorf("re-encoding differs at byte %d", firstDiff(again, b))
	}

	// No HTML escaping: "<", ">" and "&" are written as themselves.
	for _, s := range []string{"Workforce SSO <prod> & friends", "PCI <scope>", "id < 10", `"pii-reader" in caller.groups`} {
		enc := strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), `"`, `\"`)
		if !bytes.Contains(b, []byte(enc)) {
			t.Errorf("payload does not contain %s literally", enc)
		}
	}
	for _, esc := range []string{`\u003c`, `\u003e`, `\u0026`} {
		if bytes.Contains(b, []byte(esc)) {
			t.Errorf("payload contains HTML escape %s", esc)
		}
	}

	// Strings JSON must escape still round-trip.
	q := *p
	q.Compiler = "line\nbreak \u2028 tab\t quote\" backslash\\ nul\x00 é 🔑"
	qb := encode(t, &q)
	qq, err := DecodePayload(qb)
	if err != nil {
		t.Fatalf("DecodePayload with escapes: %v", err)
	}
	if qq.Compiler != q.Compiler {
		t.Errorf("compiler %q round-tripped to %q", q.Compiler, qq.Compiler)
	}
}

func TestDecodePayloadErrors(t *testing.T) {
	good := encode(t, testPayload(t))
	tests := map[string]struct {
		data    []byte
		wantMsg string
		schema  int // when non-zero, a *SchemaError with this Got
	}{
		"empty":                {nil, "bundle: payload is not valid JSON", 0},
		"not an object":        {[]byte(`[1]`), "bundle: payload is not valid JSON", 0},
		"no schema_version":    {[]byte(`{"revision":1}`), "bundle: payload has no schema_version", 0},
		"null schema_version":  {[]byte(`{"schema_version":null}`), "bundle: payload has no schema_version", 0},
		"schema_version 2":     {[]byte(`{"schema_version":2,"model":{"future":1}}`), "unsupported schema_version 2", 2},
		"schema_version -1":    {[]byte(`{"schema_version":-1}`), "unsupported schema_version -1", -1},
		"unknown field":        {bytes.Replace(good, []byte(`"compiler"`), []byte(`"signer":"x","compiler"`), 1), `bundle: decode payload: json: unknown field "signer"`, 0},
		"field in other case":  {bytes.Replace(good, []byte(`"compiler"`), []byte(`"Compiler"`), 1), "bundle: payload is not in canonical form (differs at byte", 0},
		"duplicate field":      {bytes.Replace(good, []byte(`"compiler"`), []byte(`"compiler":"x","compiler"`), 1), "not in canonical form", 0},
		"whitespace":           {bytes.Replace(good, []byte(`,"revision"`), []byte(`, "revision"`), 1), "not in canonical form (differs at byte 20)", 0},
		"trailing newline":     {append(bytes.Clone(good), '\n'), "not in canonical form", 0},
		"trailing value":       {append(bytes.Clone(good), `{}`...), "bundle: payload is not valid JSON", 0},
		"revision as float":    {bytes.Replace(good, []byte(`"revision":1700000000`), []byte(`"revision":1.7e9`), 1), "bundle: decode payload:", 0},
		"revision negative":    {bytes.Replace(good, []byte(`"revision":1700000000`), []byte(`"revision":-1`), 1), "bundle: decode payload:", 0},
		"revision leading 0":   {bytes.Replace(good, []byte(`"revision":1700000000`), []byte(`"revision":01700000000`), 1), "bundle: payload is not valid JSON", 0},
		"HTML-escaped string":  {bytes.Replace(good, []byte(`<prod>`), []byte(`\u003cprod>`), 1), "not in canonical form", 0},
		"explicit empty field": {bytes.Replace(good, []byte(`"compiler":"gatehouse test"`), []byte(`"compiler":"gatehouse test","model":{},"compiler":"gatehouse test"`), 1), "not in canonical form", 0},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p, err := DecodePayload(tc.data)
			if err == nil {
				t.Fatalf("DecodePayload accepted it: %+v", p)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not contain %q", err, tc.wantMsg)
			}
			var se *SchemaError
			if errors.As(err, &se) != (tc.schema != 0) || (se != nil && se.Got != tc.schema) {
				t.Errorf("error %v: SchemaError %+v, want Got %d", err, se, tc.schema)
			}
		})
	}
}

// TestNormalizeExpectUnsetVsEmpty: for expect_rules and expect_masks, unset
// (no assertion) and empty (nothing may match / be masked) are different
// tests, so they must stay apart through Normalize and the payload encoding,
// while two spellings of the same non-empty set still become one.
func TestNormalizeExpectUnsetVsEmpty(t *testing.T) {
	build := func(rules []string, masks map[string]string) (Test, []byte) {
		m := realisticModel()
		tt := test(&m, "deploy")
		tt.ExpectRules, tt.ExpectMasks = rules, masks
		m.Normalize()
		b := payloadBytes(t, m)
		p, err := DecodePayload(b)
		if err != nil {
			t.Fatalf("DecodePayload: %v", err)
		}
		return *test(&p.Model, "deploy"), b
	}
	unset, unsetBytes := build(nil, nil)
	empty, emptyBytes := build([]string{}, map[string]string{})
	if unset.ExpectRules != nil || unset.ExpectMasks != nil {
		t.Errorf("unset expectations decoded as %#v / %#v", unset.ExpectRules, unset.ExpectMasks)
	}
	if empty.ExpectRules == nil || len(empty.ExpectRules) != 0 || empty.ExpectMasks == nil || len(empty.ExpectMasks) != 0 {
		t.Errorf("empty expectations decoded as %#v / %#v", empty.ExpectRules, empty.ExpectMasks)
	}
	if bytes.Equal(unsetBytes, emptyBytes) {
		t.Errorf("unset and empty expectations encode the same")
	}
	for _, s := range []string{`"expect_rules":null`, `"expect_masks":null`} {
		if !bytes.Contains(unsetBytes, []byte(s)) {
			t.Errorf("unset payload lacks %s", s)
		}
	}
	for _, s := range []string{`"expect_rules":[]`, `"expect_masks":{}`} {
		if !bytes.Contains(emptyBytes, []byte(s)) {
			t.Errorf("empty payload lacks %s", s)
		}
	}

	_, a := build([]string{"k8s-deploy/deploy", "k8s-deploy/deploy"}, map[string]string{"orders.card_number": MaskPartial})
	_, b := build([]string{"k8s-deploy/deploy"}, map[string]string{"public.orders.card_number": MaskPartial})
	if !bytes.Equal(a, b) {
		t.Errorf("equal expectation sets encode differently at byte %d", firstDiff(a, b))
	}
}
