package hclconfig

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
)

// FuzzLoad: LoadFiles never panics, a load without errors yields a model
// and a compiled policy, and every error diagnostic that has a Subject
// points at a real line of the input.
func FuzzLoad(f *testing.F) {
	entries, err := os.ReadDir(quickstartDir)
	if err != nil {
		f.Fatal(err)
	}
	var all []string
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".hcl") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(quickstartDir, e.Name()))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
		all = append(all, string(data))
	}
	// The whole quickstart in one file loads cleanly, so mutations of it
	// reach validation and CEL compilation.
	f.Add([]byte(strings.Join(all, "\n")))
	f.Add([]byte(baseHCL))
	for _, s := range []string{
		"",
		"\x00",
		"\xff\xfe",
		"policy \"p\" {",
		"policy {}",
		"policy \"a\" \"b\" {}",
		"rule \"r\" {}",
		"widget \"w\" {}",
		"policy \"p\" {\n  resource = [\"orders\"]\n}\n",
		"identity_provider \"x\" {\n  issuer = 42\n  audiences = \"a\"\n}\n",
		"postgres \"db\" {\n  address = \"db:5432\"\n  database = \"db\"\n  username = \"u\"\n  password = \"hunter2\"\n}\n",
		"policy \"p\" {\n  resources = [\"db\", null]\n}\n",
		baseHCL + "policy \"p\" {\n  resources = [\"orders\", \"nope\"]\n  rule \"r\" {\n    effect = \"allow\"\n    reason = \"x\"\n  }\n}\n",
		baseHCL + "policy \"p\" {\n  resources = [\"orders\"]\n  rule \"r\" {\n    effect = \"allow\"\n    when   = \"identity.grups.size() > 0\"\n    reason = \"x\"\n  }\n}\n",
		baseHCL + "policy \"p\" {\n  resources = [\"orders\"]\n  rule \"r\" {\n    effect = \"allow\"\n    when   = \"'a\\\\'b' == \\\"x\\\" && identity.grups == [] && '\\u00e9$${x}' != ''\"\n    reason = \"x\"\n  }\n}\n",
		baseHCL + "policy \"p\" {\n  resources = [\"orders\"]\n  rule \"r\" {\n    effect = \"allow\"\n    when   = <<-CEL\n      identity.groups.size() > 0 &&\n        identity.grups == []\n    CEL\n    reason = \"x\"\n  }\n}\n",
		baseHCL + "policy \"p\" {\n  resources = [\"orders\"]\n  rule \"r\" {\n    effect = \"allow\"\n    when   = \"${\"identity.grups\"} == [] %{ if true }x%{ endif }\"\n    reason = \"x\"\n  }\n}\n",
		baseHCL + "policy \"p\" {\n  resources = [\"orders\"]\n  rule \"r\" {\n    effect = \"allow\"\n    when   = \"identity.groups.size( > \"\n    reason = \"x\"\n  }\n}\n",
		baseHCL + "policy \"p\" {\n  resources = [\"orders\"]\n  rule \"r\" {\n    effect = \"review\"\n    reason = \"x\"\n    approval {\n      groups = [\"dba\"]\n      count = 1e300\n    }\n  }\n}\n",
		baseHCL + "test \"t\" {\n  identity = \"svc\"\n  resource = \"orders\"\n  request = { kind = \"connect\", n = [1, null, { a = true }] }\n  claims = { x = null }\n  expect = \"allow\"\n  expect_masks = {}\n}\n",
		"x = <<EOT\nabc\n",
		"policy \"p\" {\n  when = \"\\q\"\n}\n",
	} {
		f.Add([]byte(s))
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		res, diags := LoadFiles(map[string][]byte{"fuzz.hcl": data})
		if res == nil {
			t.Fatal("nil Result")
		}
		if !diags.HasErrors() {
			if res.Model == nil || res.Policy == nil {
				t.Fatalf("no errors, but Model = %v, Policy = %v", res.Model, res.Policy)
			}
		} else if res.Model != nil || res.Policy != nil {
			t.Fatalf("errors, but Model or Policy is set:\n%s", dump(diags))
		}
		for _, d := range diags {
			if d.Severity != hcl.DiagError || d.Subject == nil {
				continue
			}
			if d.Subject.Start.Line < 1 || d.Subject.Start.Column < 1 {
				t.Fatalf("diagnostic %q %q has Subject %#v", d.Summary, d.Detail, d.Subject)
			}
		}
		if err := WriteDiagnostics(io.Discard, res.Files, diags); err != nil {
			t.Fatal(err)
		}
	})
}
