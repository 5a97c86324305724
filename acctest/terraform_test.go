package acctest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/hclconfig"
)

// The Terraform provider through the real terraform CLI, the way a user
// runs it: the gatehouse binary as a dev_overrides provider (what make
// install-provider sets up), the committed examples/terraform/quickstart,
// terraform test, and the GitOps example's make targets.

type tf struct {
	t   *testing.T
	env []string
	dir string // a copy of examples/terraform/quickstart
}

func newTF(t *testing.T) *tf {
	t.Helper()
	if _, err := exec.LookPath("terraform"); err != nil {
		t.Fatalf("terraform is required: %v", err)
	}
	home := t.TempDir()
	// scripts/install-provider.sh, run in a scratch tree shaped like the
	// repository, with the test's own CLI config.
	tree := filepath.Join(home, "tree")
	copyDir(t, "../examples/terraform/quickstart", filepath.Join(tree, "examples/terraform/quickstart"))
	bin := filepath.Join(home, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(gatehouseBin, filepath.Join(bin, "gatehouse")); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(home, "terraformrc")
	script, _ := filepath.Abs("../scripts/install-provider.sh")
	cmd := exec.Command(script, filepath.Join(bin, "gatehouse"))
	cmd.Dir = tree
	cmd.Env = append(os.Environ(), "TF_CLI_CONFIG_FILE="+cfg)
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "dev_overrides") {
		t.Fatalf("install-provider: %v\n%s", err, out)
	}
	return &tf{t: t, dir: filepath.Join(tree, "examples/terraform/quickstart"),
		env: append(os.Environ(), "TF_CLI_CONFIG_FILE="+cfg, "CHECKPOINT_DISABLE=1", "TF_IN_AUTOMATION=1")}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		if d.IsDir() {
			if d.Name() == "keys" || d.Name() == ".terraform" {
				return filepath.SkipDir
			}
			return os.MkdirAll(filepath.Join(to, rel), 0o755)
		}
		if strings.HasSuffix(p, ".bundle") || strings.Contains(p, "tfstate") {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// run runs terraform in the quickstart copy and returns its output and
// exit code.
func (x *tf) run(args ...string) (string, int) {
	x.t.Helper()
	cmd := exec.Command("terraform", append([]string{"-chdir=" + x.dir}, args...)...)
	cmd.Env = x.env
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		x.t.Fatal(err)
	}
	return string(out), code
}

func (x *tf) must(args ...string) string {
	x.t.Helper()
	out, code := x.run(args...)
	if code != 0 {
		x.t.Fatalf("terraform %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

func (x *tf) edit(file, old, new string) {
	x.t.Helper()
	p := filepath.Join(x.dir, file)
	data, err := os.ReadFile(p)
	if err != nil {
		x.t.Fatal(err)
	}
	if !bytes.Contains(data, []byte(old)) {
		x.t.Fatalf("%s does not contain %q", file, old)
	}
	if err := os.WriteFile(p, bytes.Replace(data, []byte(old), []byte(new), 1), 0o644); err != nil {
		x.t.Fatal(err)
	}
}

func payload(t *testing.T, file string) *bundle.Payload {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	p, _, err := bundle.ReadUnverified(data)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestTerraformQuickstart follows the README: install the provider, apply
// the quickstart, verify the bundle; a second apply is a no-op; the bundle
// is the HCL quickstart's, byte for byte apart from build metadata; a rule
// change plans readably and publishes a higher revision whose diff says who
// gained what; a CEL typo fails the plan at the attribute and position;
// terraform test passes.
func TestTerraformQuickstart(t *testing.T) {
	x := newTF(t)
	out := x.must("apply", "-auto-approve", "-no-color")
	if !strings.Contains(out, "Apply complete! Resources: 74 added") {
		t.Fatalf("apply:\n%s", out)
	}
	bundleFile, pub := filepath.Join(x.dir, "policy.bundle"), filepath.Join(x.dir, "keys", "gatehouse.pub")
	if out := gh(t, "bundle", "verify", bundleFile, "--trust", pub); !strings.HasPrefix(out, "OK ") {
		t.Fatalf("verify: %s", out)
	}
	if out, code := x.run("plan", "-detailed-exitcode", "-no-color"); code != 0 {
		t.Fatalf("a second plan is not empty (exit %d):\n%s", code, out)
	}

	t.Run("same payload as the HCL quickstart", func(t *testing.T) {
		res, diags := hclconfig.Load("../examples/quickstart")
		if diags.HasErrors() {
			t.Fatal(diags)
		}
		fromTF := payload(t, bundleFile)
		fromHCL, err := bundle.NewPayload(*res.Model, bundle.BuildOptions{Revision: fromTF.Revision, Compiler: fromTF.Compiler})
		if err != nil {
			t.Fatal(err)
		}
		fromHCL.CreatedAt = fromTF.CreatedAt
		a, _ := bundle.EncodePayload(fromTF)
		b, _ := bundle.EncodePayload(fromHCL)
		if !bytes.Equal(a, b) {
			t.Errorf("the Terraform and HCL quickstarts give different payloads:\n%s", gh(t, "bundle", "diff", "../examples/quickstart", bundleFile, "--trust", pub))
		}
	})

	t.Run("a rule change: readable plan, higher revision, access diff", func(t *testing.T) {
		old := filepath.Join(t.TempDir(), "old.bundle")
		data, _ := os.ReadFile(bundleFile)
		if err := os.WriteFile(old, data, 0o644); err != nil {
			t.Fatal(err)
		}
		x.edit("main.tf", "'lower', 'upper', 'round', 'coalesce']", "'lower', 'upper', 'round', 'coalesce', 'md5']")
		plan := x.must("plan", "-no-color")
		for _, want := range []string{
			"gatehouse_policy.billing-service will be updated in-place",
			"'coalesce', 'md5']",
			"gatehouse_bundle.policy will be updated in-place",
			"Plan: 0 to add, 2 to change, 0 to destroy.",
		} {
			if !strings.Contains(plan, want) {
				t.Errorf("the plan lacks %q:\n%s", want, plan)
			}
		}
		x.must("apply", "-auto-approve", "-no-color")
		if p, o := payload(t, bundleFile), payload(t, old); p.Revision <= o.Revision {
			t.Errorf("revision %d after %d", p.Revision, o.Revision)
		}
		diff := gh(t, "bundle", "diff", old, bundleFile, "--trust", pub)
		if !strings.Contains(diff, `policy "billing-service" changed`) || !regexp.MustCompile(`identity billing-service gained allow on "orders"`).MatchString(diff) {
			t.Errorf("bundle diff:\n%s", diff)
		}
	})

	t.Run("a CEL typo fails the plan at the attribute", func(t *testing.T) {
		x.edit("main.tf", `unless      = "'pci' in identity.groups"`, `unless      = "'pci' in identity.grups"`)
		defer x.edit("main.tf", `unless      = "'pci' in identity.grups"`, `unless      = "'pci' in identity.groups"`)
		out, code := x.run("plan", "-no-color")
		if code == 0 {
			t.Fatal("the plan passed")
		}
		for _, want := range []string{
			`Error: CEL type error in mask "card-number", unless at 1:19`,
			`with gatehouse_mask.card-number`,
			`unless      = "'pci' in identity.grups"`,
		} {
			if !strings.Contains(out, want) {
				t.Errorf("the error lacks %q:\n%s", want, out)
			}
		}
		if !regexp.MustCompile(`undefined\s+field\s+'grups'\s+'pci' in identity.grups\s+\^`).MatchString(out) {
			t.Errorf("the error does not show the expression with a caret:\n%s", out)
		}
	})

	t.Run("terraform test", func(t *testing.T) {
		out := x.must("test", "-no-color")
		if !strings.Contains(out, "Success! 3 passed, 0 failed.") {
			t.Errorf("terraform test:\n%s", out)
		}
		if _, err := os.Stat(filepath.Join(x.dir, "test.bundle")); !os.IsNotExist(err) {
			t.Errorf("terraform test left its bundle behind: %v", err)
		}
	})

	t.Run("state holds no secret", func(t *testing.T) {
		state, err := os.ReadFile(filepath.Join(x.dir, "terraform.tfstate"))
		if err != nil {
			t.Fatal(err)
		}
		key, _ := os.ReadFile(filepath.Join(x.dir, "keys", "gatehouse.key"))
		block := strings.Split(strings.TrimSpace(string(key)), "\n")[1]
		if bytes.Contains(state, []byte(block)) || bytes.Contains(state, []byte("PRIVATE KEY")) {
			t.Error("the state holds the signing key")
		}
		if !bytes.Contains(state, []byte("env:ORDERS_DB_PASSWORD")) {
			t.Error("the state should hold the password's reference")
		}
	})

	t.Run("the GitOps pipeline's make targets", func(t *testing.T) {
		published := filepath.Join(t.TempDir(), "published.bundle")
		data, _ := os.ReadFile(bundleFile)
		if err := os.WriteFile(published, data, 0o644); err != nil {
			t.Fatal(err)
		}
		x.edit("main.tf", "'coalesce', 'md5']", "'coalesce', 'md5', 'sha256']")
		work := t.TempDir()
		makeArgs := []string{"-C", "../examples/gitops", "TF_DIR=" + x.dir, "PUBLISHED=" + published, "TRUST=" + pub,
			"GATEHOUSE=" + gatehouseBin, "WORK=" + work}
		cmd := exec.Command("make", append(makeArgs, "pr")...)
		cmd.Env = x.env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("make pr: %v\n%s", err, out)
		}
		for _, want := range []string{"terraform", "fmt -check", "validate", "Plan: 0 to add, 2 to change", "passed", `identity billing-service gained allow`,
			"access_changes = ["} {
			if !strings.Contains(string(out), want) {
				t.Errorf("make pr output lacks %q:\n%s", want, out)
			}
		}
		if _, err := os.Stat(filepath.Join(work, "policy-tests.xml")); err != nil {
			t.Error(err)
		}
		// plan-check on the saved plan: one report with the tests, the
		// diff against the state and the impact on the committed sample.
		report, err := os.ReadFile(filepath.Join(work, "report.md"))
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"## Gatehouse plan check", "### `gatehouse_bundle.policy` (update)", "56 passed, 0 failed",
			"#### Access diff (against " + published + ")", "billing-service gained allow", "#### Impact on recorded traffic",
			"replayed over 31 requests", "**No decision changes.**"} {
			if !strings.Contains(string(report), want) {
				t.Errorf("report.md lacks %q:\n%s", want, report)
			}
		}
		// The merge signs (apply) and publishes where the gateways read,
		// verified, in one rename.
		live := filepath.Join(t.TempDir(), "policy.bundle")
		cmd = exec.Command("make", append(makeArgs, "merge", "PUBLISH_TO="+live)...)
		cmd.Env = x.env
		if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "Apply complete! Resources: 0 added, 2 changed") ||
			!strings.Contains(string(out), "published "+live) {
			t.Fatalf("make merge: %v\n%s", err, out)
		}
		if p := payload(t, bundleFile); !strings.Contains(string(mustJSON(t, p)), "sha256") {
			t.Error("the merge did not publish the change")
		}
		if a, b := mustRead(t, live), mustRead(t, bundleFile); !bytes.Equal(a, b) {
			t.Error("the published bundle is not the one apply signed")
		}

		// A narrowing the recorded traffic feels: analytics may no longer
		// read payments. The plan, its JSON and plan-check by hand, as the
		// guide says; then the pipeline with FAIL_ON=narrow fails on it.
		x.edit("main.tf", "t.access == 'read') &&", "t.access == 'read' && t.name != 'payments') &&")
		// The plan itself says who loses what (the bundle's access_changes).
		if out := x.must("plan", "-no-color", "-input=false", "-out=p"); !strings.Contains(out, "~ access_changes = [") ||
			!strings.Contains(out, `"identity analytics-job lost allow on \"orders\" via analytics-read-only/read (3 probe requests, e.g. SELECT * FROM public.payments WHERE id = 1; SELECT * FROM billing.payments WHERE id = 1)"`) {
			t.Errorf("the plan does not show the access change:\n%s", out)
		}
		planJSON := filepath.Join(t.TempDir(), "p.json")
		if err := os.WriteFile(planJSON, []byte(x.must("show", "-json", "p")), 0o644); err != nil {
			t.Fatal(err)
		}
		pc, code := ghRun(t, "plan-check", planJSON, "--traffic", "../examples/gitops/traffic.sample.jsonl")
		if code != 0 {
			t.Fatalf("plan-check: exit %d\n%s", code, pc)
		}
		for _, want := range []string{"56 passed, 0 failed", `policy "analytics-read-only" changed`, "analytics-job lost allow",
			"| narrow | analytics-job | orders |", "SELECT count(*) FROM payments"} {
			if !strings.Contains(pc, want) {
				t.Errorf("plan-check lacks %q:\n%s", want, pc)
			}
		}
		cmd = exec.Command("make", append(makeArgs, "pr", "FAIL_ON=narrow")...)
		cmd.Env = x.env
		if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "| narrow | analytics-job") {
			t.Errorf("make pr FAIL_ON=narrow should fail on the narrowing: %v\n%s", err, out)
		}
	})
}

func mustJSON(t *testing.T, p *bundle.Payload) []byte {
	t.Helper()
	b, err := bundle.EncodePayload(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
