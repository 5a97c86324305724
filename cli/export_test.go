package cli

import (
	"os"
	"path/filepath"
	"testing"
)

// The committed Terraform quickstart is what export-terraform writes from
// the HCL quickstart, so the two cannot drift apart unnoticed (the
// acceptance tests apply it and compare the bundles).
func TestExportTerraformQuickstartIsCurrent(t *testing.T) {
	r := mustRun(t, 0, "export-terraform", quickstart)
	want, err := os.ReadFile(filepath.Join("..", "examples", "terraform", "quickstart", "main.tf"))
	if err != nil {
		t.Fatal(err)
	}
	if r.stdout != string(want) {
		t.Errorf("examples/terraform/quickstart/main.tf is stale: run\n  go run . export-terraform examples/quickstart --out examples/terraform/quickstart/main.tf")
	}
}

// Object names become valid, distinct Terraform resource names.
func TestExportTerraformNames(t *testing.T) {
	used := map[string]bool{}
	seen := map[string]string{}
	for _, in := range []string{"billing-service", "nobody may drop", "9lives", "Billing Service", "billing service", "  ", "ünïcödé", "set_config(role)!"} {
		got := tfName(in, used)
		if !validTFName(got) {
			t.Errorf("tfName(%q) = %q, not a valid Terraform name", in, got)
		}
		if prev, dup := seen[got]; dup {
			t.Errorf("tfName(%q) = tfName(%q) = %q", in, prev, got)
		}
		seen[got] = in
	}
	if got := tfName("nobody may drop", map[string]bool{}); got != "nobody_may_drop" {
		t.Errorf("a sentence: %q", got)
	}
}

func validTFName(s string) bool {
	for i, r := range s {
		switch {
		case r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z'):
		case i > 0 && (r == '-' || (r >= '0' && r <= '9')):
		default:
			return false
		}
	}
	return s != ""
}
