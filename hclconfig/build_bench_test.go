package hclconfig_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/hclconfig"
)

// writeLargePolicy writes a policy directory of 1,000 postgres resources and
// 5,000 policies of 2 rules each (10,000 rules), every rule with its own CEL
// text, split over 10 files as a team would split them.
func writeLargePolicy(tb testing.TB, dir string) {
	tb.Helper()
	bodies := []struct{ effect, when string }{
		{"allow", "request.statements.all(s, s.command in ['SELECT', 'SHOW'] && s.tables.all(t, t.access == 'read' && t.schema != 'secret_%d'))"},
		{"allow", "request.statements.all(s, s.command in ['SELECT', 'INSERT', 'UPDATE'] && s.tables.all(t, t.access == 'read' || t.schema == 'billing_%d'))"},
		{"deny", "request.statements.exists(s, s.command.startsWith('DROP ') || s.command == 'TRUNCATE' || 'fn_%d' in s.functions)"},
		{"deny", "request.statements.exists(s, s.command in ['DELETE', 'UPDATE'] && !s.has_where && s.tables.exists(t, t.name != 'scratch_%d'))"},
		{"review", "request.statements.exists(s, s.tables.exists(t, t.name == 'payments_%d' && t.access == 'write'))"},
	}
	var head strings.Builder
	head.WriteString("identity_provider \"corp\" {\n  issuer    = \"https://id.example.com\"\n  audiences = [\"gatehouse\"]\n}\n\n")
	for i := range 100 {
		fmt.Fprintf(&head, "identity \"svc-%d\" {\n  provider = \"corp\"\n  subject  = \"svc-%d\"\n}\n\n", i, i)
	}
	for i := range 1000 {
		fmt.Fprintf(&head, "postgres \"db-%d\" {\n  address  = \"db-%d.internal:5432\"\n  database = \"app\"\n  username = \"gatehouse\"\n  password = \"env:DB_%d_PASSWORD\"\n}\n\n", i, i, i)
	}
	if err := os.WriteFile(filepath.Join(dir, "objects.hcl"), []byte(head.String()), 0o644); err != nil {
		tb.Fatal(err)
	}
	files := make([]strings.Builder, 10)
	for j := range 5000 {
		f := &files[j%10]
		fmt.Fprintf(f, "policy \"p-%d\" {\n  resources  = [\"db-%d\"]\n  identities = [\"svc-%d\"]\n\n", j, j%1000, (j/1000)%100)
		for k := range 2 {
			b := bodies[(j+k)%len(bodies)]
			fmt.Fprintf(f, "  rule \"r-%d\" {\n    effect = %q\n    when   = %q\n    reason = \"generated rule\"\n", k, b.effect, fmt.Sprintf(b.when, j))
			if b.effect == "review" {
				f.WriteString("\n    approval {\n      groups = [\"dba\"]\n    }\n")
			}
			f.WriteString("  }\n\n")
		}
		f.WriteString("}\n\n")
	}
	for i := range files {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("policies-%02d.hcl", i)), []byte(files[i].String()), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
}

// BenchmarkBundleBuild10kRules measures what `gatehouse bundle build` does
// for a 10,000-rule policy directory: read and decode the HCL, validate,
// type-check and cost-check every CEL expression, encode the canonical
// payload and sign it.
func BenchmarkBundleBuild10kRules(b *testing.B) {
	dir := b.TempDir()
	writeLargePolicy(b, dir)
	priv, err := bundle.GenerateKey()
	if err != nil {
		b.Fatal(err)
	}
	var size int
	b.ReportAllocs()
	for b.Loop() {
		res, diags := hclconfig.Load(dir)
		if diags.HasErrors() {
			b.Fatal(diags)
		}
		if n := res.Policy.RuleCount(); n != 10000 {
			b.Fatalf("%d rules", n)
		}
		p, err := bundle.NewPayload(*res.Model, bundle.BuildOptions{Revision: 1, Compiler: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		raw, err := bundle.EncodePayload(p)
		if err != nil {
			b.Fatal(err)
		}
		file, err := bundle.Sign(raw, priv)
		if err != nil {
			b.Fatal(err)
		}
		size = len(file)
	}
	b.ReportMetric(float64(size), "bundle-bytes")
}
