package celpolicy_test

import (
	"errors"
	"fmt"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

// testModel is a small model: one issuer, two identities, a database and
// an SSH host, and policies that exercise each decision path.
func testModel() *bundle.Model {
	return &bundle.Model{
		IdentityProviders: []bundle.IdentityProvider{{Name: "corp", Issuer: "https://id.example.com", Audiences: []string{"gatehouse"}}},
		Identities: []bundle.Identity{
			{Name: "app", Provider: "corp", Subject: "app", Groups: []string{"apps"}},
			{Name: "batch", Provider: "corp", Match: "identity.subject.startsWith('batch-')"},
		},
		Postgres: []bundle.Postgres{
			{Name: "db", Address: "db:5432", Database: "db", Username: "gw", Password: "env:DB_PASSWORD"},
			{Name: "other", Address: "other:5432", Database: "other", Username: "gw"},
		},
		SSHHosts: []bundle.SSHHost{{Name: "host", Address: "host:22", User: "ops", HostKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOEUTqBqeZQjtMndz1LphtYO5IcPCLaCN3hxN0yK1Sen", PrivateKey: "file:/k"}},
		Policies: []bundle.Policy{
			{Name: "app", Resources: []string{"db"}, Identities: []string{"app"}, Rules: []bundle.Rule{
				{Name: "read", Effect: "allow", When: "request.statements.all(s, s.command == 'SELECT')", Reason: "app reads"},
				{Name: "write", Effect: "allow", When: "request.statements.all(s, s.command in ['INSERT', 'UPDATE'])", Reason: "app writes"},
				{Name: "big-writes", Effect: "review", When: "request.statements.exists(s, s.tables.exists(t, t.name == 'ledger'))", Reason: "ledger writes need review",
					Approval: &bundle.Approval{Groups: []string{"dba"}, Count: 2, Timeout: "5m"}},
			}},
			{Name: "guard", Resources: []string{"db"}, Everyone: true, Rules: []bundle.Rule{
				{Name: "no-drop", Effect: "deny", When: "request.statements.exists(s, s.command.startsWith('DROP '))", Reason: "no drops"},
				{Name: "claims", Effect: "deny", When: "identity.claims['tier'] == 'blocked'", Reason: "blocked tier"},
			}},
			{Name: "ops", Resources: []string{"host"}, Groups: []string{"ops"}, Rules: []bundle.Rule{
				{Name: "connect", Effect: "allow", On: []string{"connect"}, Reason: "ops connect"},
				{Name: "uptime", Effect: "allow", On: []string{"exec"}, When: "request.command == 'uptime'", Reason: "diagnostics"},
			}},
		},
		Masks: []bundle.Mask{
			{Name: "email", Resources: []string{"db"}, Columns: []string{"users.email"}, Method: "partial"},
			{Name: "email-strict", Resources: []string{"db"}, Columns: []string{"public.users.email"}, Method: "null", Unless: "'support' in identity.groups"},
			{Name: "cards", Resources: []string{"db"}, Detectors: []string{"card_number"}, Method: "redact", Unless: "identity.claims['pci'] == true"},
		},
	}
}

var appID = celpolicy.Identity{Name: "app", Issuer: "https://id.example.com", Subject: "app", Groups: []string{"apps"}, Claims: map[string]any{"tier": "gold"}}

func TestDecide(t *testing.T) {
	p := celpolicy.MustCompile(t, testModel(), celpolicy.WithRevision(7))
	support := appID
	support.Groups = []string{"apps", "support"}
	blocked := appID
	blocked.Claims = map[string]any{"tier": "blocked"}
	noClaims := appID
	noClaims.Claims = map[string]any{}
	ops := celpolicy.Identity{Subject: "alice", Groups: []string{"ops"}, Claims: map[string]any{}}

	tests := map[string]struct {
		id       celpolicy.Identity
		resource string
		req      celpolicy.Request
		effect   bundle.Effect
		rules    []string
		reason   string // substring of one reason
		masks    []string
	}{
		"allow by the matching rule": {appID, "db", sqlfacts.Query("SELECT * FROM users"), "allow", []string{"app/read"}, "app reads",
			[]string{"detector:card_number=redact", "public.users.email=null"}},
		"deny wins over allow": {appID, "db", sqlfacts.Query("SELECT 1; DROP TABLE users"), "deny", []string{"guard/no-drop"}, "no drops", nil},
		"review wins over allow": {appID, "db", sqlfacts.Query("INSERT INTO ledger VALUES (1)"), "review", []string{"app/write", "app/big-writes"}, "ledger writes need review",
			[]string{"detector:card_number=redact", "public.users.email=null"}},
		"deny by default":                           {appID, "db", sqlfacts.Query("DELETE FROM users WHERE id = 1"), "deny", nil, "deny by default", nil},
		"unmatched caller is denied by default":     {celpolicy.Identity{Subject: "x", Claims: map[string]any{"tier": "gold"}}, "db", sqlfacts.Query("SELECT 1"), "deny", nil, `subject "x"`, nil},
		"an evaluation error denies with the error": {noClaims, "db", sqlfacts.Query("SELECT 1"), "deny", []string{"app/read"}, "rule guard/claims could not be evaluated", nil},
		"a claim-based deny":                        {blocked, "db", sqlfacts.Query("SELECT 1"), "deny", []string{"app/read", "guard/claims"}, "blocked tier", nil},
		"unless lifts a mask; the weaker one remains": {support, "db", sqlfacts.Query("SELECT email FROM users"), "allow", []string{"app/read"}, "",
			[]string{"detector:card_number=redact", "public.users.email=partial"}},
		"SQL that does not parse is denied before rules run": {appID, "db", sqlfacts.Query("SELEC 1"), "deny", nil, "does not parse", nil},
		"unknown resource":                                       {appID, "nope", sqlfacts.Query("SELECT 1"), "deny", nil, `resource "nope" is not defined in bundle revision 7`, nil},
		"a request of the wrong kind":                            {appID, "host", sqlfacts.Query("SELECT 1"), "deny", nil, "a postgres request cannot be sent to ssh_host resource", nil},
		"rules of other resources do not apply":                  {appID, "other", sqlfacts.Query("SELECT 1"), "deny", nil, "deny by default", nil},
		"on restricts a rule to its request kinds":               {ops, "host", &celpolicy.SSHRequest{Kind: "connect"}, "allow", []string{"ops/connect"}, "ops connect", nil},
		"exec allowed":                                           {ops, "host", &celpolicy.SSHRequest{Kind: "exec", Command: "uptime"}, "allow", []string{"ops/uptime"}, "", nil},
		"exec not allowed":                                       {ops, "host", &celpolicy.SSHRequest{Kind: "exec", Command: "rm -rf /"}, "deny", nil, "deny by default", nil},
		"shell is not covered by any rule":                       {ops, "host", &celpolicy.SSHRequest{Kind: "shell"}, "deny", nil, "deny by default", nil},
		"unknown request kind":                                   {ops, "host", &celpolicy.SSHRequest{Kind: "teleport"}, "deny", nil, `"teleport" is not a request kind`, nil},
		"a fast-path call is not a SELECT":                       {appID, "db", celpolicy.FunctionCall("lo_export"), "deny", nil, "deny by default", nil},
		"connect is allowed when all() holds over no statements": {appID, "db", celpolicy.Connect(), "allow", []string{"app/read", "app/write"}, "", []string{"detector:card_number=redact", "public.users.email=null"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			d := p.Decide(&celpolicy.Input{Identity: tc.id, Resource: tc.resource, Request: tc.req, Now: time.Unix(1764000000, 0)})
			if d.Effect != tc.effect {
				t.Errorf("effect = %s, want %s (reasons %q)", d.Effect, tc.effect, d.Reasons)
			}
			got := d.Rules()
			slices.Sort(got)
			want := slices.Clone(tc.rules)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("matched = %v, want %v", got, want)
			}
			if tc.reason != "" && !slices.ContainsFunc(d.Reasons, func(r string) bool { return strings.Contains(r, tc.reason) }) {
				t.Errorf("reasons %q do not mention %q", d.Reasons, tc.reason)
			}
			if len(d.Reasons) == 0 {
				t.Error("a decision without a reason cannot be explained")
			}
			var masks []string
			for _, m := range d.Masks {
				masks = append(masks, m.Target.String()+"="+m.Method)
			}
			if !slices.Equal(masks, tc.masks) {
				t.Errorf("masks = %v, want %v", masks, tc.masks)
			}
			if d.BundleRevision != 7 {
				t.Errorf("revision = %d", d.BundleRevision)
			}
			if d.Effect == "deny" && len(d.Masks) != 0 {
				t.Error("a deny carries masks")
			}
		})
	}
}

func TestDecideReviewCarriesApprovals(t *testing.T) {
	p := celpolicy.MustCompile(t, testModel())
	d := p.Decide(&celpolicy.Input{Identity: appID, Resource: "db", Request: sqlfacts.Query("UPDATE ledger SET x = 1 WHERE id = 1")})
	if d.Effect != "review" || len(d.Approvals) != 1 {
		t.Fatalf("decision %+v", d)
	}
	a := d.Approvals[0]
	if a.Rule != "app/big-writes" || a.Count != 2 || a.Timeout != 5*time.Minute || !slices.Equal(a.Groups, []string{"dba"}) {
		t.Errorf("approval %+v", a)
	}
}

// TestDecideRuntimeCostLimit: an expression that passes the static estimate
// (which assumes at most 64 statements of 64 tables) but meets a far larger
// request stops at the runtime limit, and the request is denied.
func TestDecideRuntimeCostLimit(t *testing.T) {
	m := testModel()
	m.Policies[0].Rules = append(m.Policies[0].Rules, bundle.Rule{
		Name: "pairs", Effect: "deny", Reason: "pairwise check",
		When: "request.statements.exists(a, a.tables.exists(x, x.name == 'zzz'))",
	})
	p := celpolicy.MustCompile(t, m)
	tables := make([]celpolicy.Table, 64)
	for i := range tables {
		tables[i] = celpolicy.Table{Schema: "public", Name: fmt.Sprintf("t%d", i), Access: "read"}
	}
	stmts := make([]celpolicy.Statement, 10000)
	for i := range stmts {
		stmts[i] = celpolicy.Statement{Command: "SELECT", Tables: tables, Functions: []string{}}
	}
	d := p.Decide(&celpolicy.Input{Identity: appID, Resource: "db", Request: &celpolicy.PostgresRequest{Kind: "query", Statements: stmts}})
	if d.Effect != "deny" || !slices.ContainsFunc(d.Reasons, func(r string) bool { return strings.Contains(r, "cost limit") }) {
		t.Fatalf("decision %s %q, want a deny for the cost limit", d.Effect, d.Reasons)
	}
}

func TestCompileProblems(t *testing.T) {
	tests := map[string]struct {
		edit    func(m *bundle.Model)
		code    string
		ref     string
		message string
		token   string // the text the span must cover
	}{
		"misspelled field": {
			func(m *bundle.Model) { m.Masks[1].Unless = "'support' in identity.grups" },
			bundle.CodeCELType, `mask "email-strict" unless`, "undefined field 'grups'", "grups",
		},
		"request is typed by the resource kind": {
			func(m *bundle.Model) { m.Policies[0].Rules[0].When = "request.verb == 'get'" },
			bundle.CodeCELType, `policy "app" rule "read" when`, "undefined field 'verb'", "verb",
		},
		"field of a nested type": {
			func(m *bundle.Model) {
				m.Policies[0].Rules[0].When = "request.statements.all(s, s.tables.all(t, t.acess == 'read'))"
			},
			bundle.CodeCELType, `policy "app" rule "read" when`, "undefined field 'acess'", "acess",
		},
		"syntax error": {
			func(m *bundle.Model) { m.Policies[1].Rules[0].When = "request.statements.exists(s, s.command == )" },
			bundle.CodeCELSyntax, `policy "guard" rule "no-drop" when`, "Syntax error", ")",
		},
		"not a bool": {
			func(m *bundle.Model) { m.Policies[1].Rules[0].When = "size(request.statements)" },
			bundle.CodeCELType, `policy "guard" rule "no-drop" when`, "must be a bool, but it is int", "size(request.statements)",
		},
		"identity match sees only the token": {
			func(m *bundle.Model) { m.Identities[1].Match = "request.kind == 'query'" },
			bundle.CodeCELType, `identity "batch" match`, "undeclared reference to 'request'", "request",
		},
		"too expensive": {
			func(m *bundle.Model) {
				m.Policies[1].Rules[0].When = "request.statements.all(a, request.statements.all(b, a.tables.all(x, b.tables.all(y, identity.groups.all(g, x.name + y.name != g)))))"
			},
			bundle.CodeCELCost, `policy "guard" rule "no-drop" when`, "worst-case cost", "",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			m := testModel()
			tc.edit(m)
			_, err := celpolicy.Compile(m)
			var ps bundle.Problems
			if !errors.As(err, &ps) || len(ps) != 1 {
				t.Fatalf("Compile: %v, want exactly one problem", err)
			}
			p := ps[0]
			if p.Code != tc.code || p.Ref.String() != tc.ref || !strings.Contains(p.Message, tc.message) {
				t.Fatalf("problem %s %q %q, want %s %q containing %q", p.Code, p.Ref, p.Message, tc.code, tc.ref, tc.message)
			}
			if tc.token == "" {
				return
			}
			src := exprOf(m, p.Ref)
			if p.Span == nil {
				t.Fatalf("no span for %q", src)
			}
			if got := src[p.Span.Offset : p.Span.Offset+p.Span.Length]; got != tc.token {
				t.Errorf("span covers %q of %q, want %q", got, src, tc.token)
			}
		})
	}
}

func exprOf(m *bundle.Model, r bundle.Ref) string {
	switch r.Kind {
	case "mask":
		for _, mk := range m.Masks {
			if mk.Name == r.Name {
				return mk.Unless
			}
		}
	case "identity":
		for _, id := range m.Identities {
			if id.Name == r.Name {
				return id.Match
			}
		}
	case "policy":
		for _, p := range m.Policies {
			for _, rl := range p.Rules {
				if p.Name == r.Name && rl.Name == r.Rule {
					return rl.When
				}
			}
		}
	}
	return ""
}

func TestCompileRefusesInvalidModels(t *testing.T) {
	m := testModel()
	m.Postgres[0].Password = "hunter2"
	_, err := celpolicy.Compile(m)
	var ps bundle.Problems
	if !errors.As(err, &ps) || ps[0].Code != bundle.CodeInlineSecret {
		t.Fatalf("Compile: %v, want an inline secret problem", err)
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Error("the error repeats the secret")
	}
}

func TestResolveIdentity(t *testing.T) {
	m := testModel()
	m.Identities = append(m.Identities, bundle.Identity{Name: "batch-2", Provider: "corp", Match: "identity.subject == 'batch-7'"})
	p := celpolicy.MustCompile(t, m)
	tests := map[string]struct {
		tok    celpolicy.Token
		name   string
		groups []string
		err    string
	}{
		"by subject, groups merged":   {celpolicy.Token{Issuer: "https://id.example.com", Subject: "app", Claims: map[string]any{"groups": []any{"x", "apps"}}}, "app", []string{"apps", "x"}, ""},
		"by predicate":                {celpolicy.Token{Issuer: "https://id.example.com", Subject: "batch-1", Claims: map[string]any{}}, "batch", []string{}, ""},
		"no match keeps token groups": {celpolicy.Token{Issuer: "https://id.example.com", Subject: "zed", Claims: map[string]any{"groups": "ops"}}, "", []string{"ops"}, ""},
		"non-string groups ignored":   {celpolicy.Token{Issuer: "https://id.example.com", Subject: "zed", Claims: map[string]any{"groups": []any{1, "ok", nil}}}, "", []string{"ok"}, ""},
		"two identities match":        {celpolicy.Token{Issuer: "https://id.example.com", Subject: "batch-7", Claims: map[string]any{}}, "", nil, "matches several identities (batch, batch-2)"},
		"issuer mismatch":             {celpolicy.Token{Issuer: "https://evil.example.com", Subject: "app"}, "", nil, "is not the issuer of identity provider"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			id, err := p.ResolveIdentity("corp", tc.tok)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id.Name != tc.name || !slices.Equal(id.Groups, tc.groups) {
				t.Errorf("identity %q groups %v, want %q %v", id.Name, id.Groups, tc.name, tc.groups)
			}
		})
	}
	if _, err := p.ResolveIdentity("nope", celpolicy.Token{}); err == nil {
		t.Error("an unknown provider resolved")
	}
}

func TestParseRequest(t *testing.T) {
	tests := map[string]struct {
		kind, js string
		want     string
		err      string
	}{
		"sql":             {"postgres", `{"sql":"SELECT 1"}`, "query: SELECT", ""},
		"connect":         {"postgres", `{"kind":"connect"}`, "connect", ""},
		"function call":   {"postgres", `{"kind":"function_call","function":"lo_export"}`, "function_call", ""},
		"unknown field":   {"postgres", `{"sql":"SELECT 1","user":"x"}`, "", `unknown field "user"`},
		"ssh exec":        {"ssh_host", `{"command":"uptime"}`, "exec: uptime", ""},
		"kubernetes":      {"kubernetes_cluster", `{"verb":"get","resource":"pods","namespace":"a"}`, "get /pods a/", ""},
		"kubernetes verb": {"kubernetes_cluster", `{"resource":"pods"}`, "", "verb is required"},
		"trailing data":   {"ssh_host", `{"kind":"shell"} {}`, "", "data after"},
	}
	p := celpolicy.MustCompile(t, testModel(), sqlfacts.Analysis())
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r, err := p.ParseRequest(tc.kind, []byte(tc.js))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := r.Describe(); got != tc.want {
				t.Errorf("request %q, want %q", got, tc.want)
			}
		})
	}
}

// TestIndexSkipsUnrelatedRules proves the index: a rule whose condition
// would fail to evaluate (an error, which denies) is never evaluated for
// requests to other resources or of other kinds.
func TestIndexSkipsUnrelatedRules(t *testing.T) {
	m := testModel()
	m.Policies = append(m.Policies, bundle.Policy{Name: "broken", Resources: []string{"other"}, Everyone: true, Rules: []bundle.Rule{
		{Name: "boom", Effect: "allow", When: "identity.claims['missing'] == 1", Reason: "errors when evaluated"},
	}})
	m.Policies[2].Rules = append(m.Policies[2].Rules, bundle.Rule{Name: "boom", Effect: "allow", On: []string{"subsystem"}, When: "identity.claims['missing'] == 1", Reason: "errors when evaluated"})
	p := celpolicy.MustCompile(t, m)
	if d := p.Decide(&celpolicy.Input{Identity: appID, Resource: "db", Request: sqlfacts.Query("SELECT 1")}); d.Effect != "allow" {
		t.Errorf("db: %s %q", d.Effect, d.Reasons)
	}
	ops := celpolicy.Identity{Subject: "alice", Groups: []string{"ops"}, Claims: map[string]any{}}
	if d := p.Decide(&celpolicy.Input{Identity: ops, Resource: "host", Request: &celpolicy.SSHRequest{Kind: "exec", Command: "uptime"}}); d.Effect != "allow" {
		t.Errorf("host exec: %s %q", d.Effect, d.Reasons)
	}
	if d := p.Decide(&celpolicy.Input{Identity: ops, Resource: "host", Request: &celpolicy.SSHRequest{Kind: "subsystem", Subsystem: "sftp"}}); d.Effect != "deny" || !strings.Contains(strings.Join(d.Reasons, " "), "could not be evaluated") {
		t.Errorf("host subsystem: %s %q, want the evaluation error", d.Effect, d.Reasons)
	}
}

func TestCoverage(t *testing.T) {
	p := celpolicy.MustCompile(t, testModel())
	none := p.Coverage(nil)
	if none.Rules != 7 || len(none.UntestedRules) != 7 || none.Masks != 3 || len(none.UntestedMasks) != 3 {
		t.Fatalf("coverage of no tests: %+v", none)
	}
	d := p.Decide(&celpolicy.Input{Identity: appID, Resource: "db", Request: sqlfacts.Query("SELECT 1; DROP TABLE x")})
	c := p.Coverage([]celpolicy.TestResult{{Decision: d}})
	if slices.Contains(c.UntestedRules, "guard/no-drop") || len(c.UntestedRules) != 6 {
		t.Errorf("untested rules after one test: %v", c.UntestedRules)
	}
}
