package acctest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
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

	t.Run("a state of schema version 0 upgrades without publishing", func(t *testing.T) {
		// What the provider wrote before objects was keyed: schema version
		// 0, objects a set (a JSON list), no decisions.
		digest, revision := x.bundleState(t)
		x.rewriteBundleState(t, func(inst map[string]any) {
			attrs := inst["attributes"].(map[string]any)
			var specs []string
			for _, v := range attrs["objects"].(map[string]any) {
				specs = append(specs, v.(string))
			}
			sort.Strings(specs)
			attrs["objects"] = specs
			delete(attrs, "decisions")
			delete(attrs, "warn_unlisted_objects")
			inst["schema_version"] = 0
		})
		// The old configuration had no decisions: with them, the plan adds
		// them and publishes nothing.
		plan := x.must("plan", "-no-color")
		if !strings.Contains(plan, "Plan: 0 to add, 1 to change, 0 to destroy.") || !strings.Contains(plan, "+ decisions") ||
			strings.Contains(plan, "(known after apply)") || strings.Contains(plan, "~ objects") {
			t.Errorf("after the upgrade, the plan should only add the decisions:\n%s", plan)
		}
		x.must("apply", "-auto-approve", "-no-color")
		if d, r := x.bundleState(t); d != digest || r != revision {
			t.Errorf("the upgrade published again: %s %v, was %s %v", d, r, digest, revision)
		}
		if out, code := x.run("plan", "-detailed-exitcode", "-no-color"); code != 0 {
			t.Fatalf("a plan after the upgrade is not empty (exit %d):\n%s", code, out)
		}
	})

	t.Run("objects in no bundle are reported", func(t *testing.T) {
		const unlisted = `
resource "gatehouse_policy" "forgotten" {
  name       = "forgotten-deny"
  resources  = [gatehouse_postgres.orders.name]
  everyone   = true
  %s
  rule {
    name   = "no-vacuum"
    effect = "deny"
    when   = "request.statements.exists(s, s.command == 'VACUUM')"
    reason = "no VACUUM through the gateway"
  }
}
`
		write := func(body string) {
			if err := os.WriteFile(filepath.Join(x.dir, "forgotten.tf"), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		defer os.Remove(filepath.Join(x.dir, "forgotten.tf"))
		// Planned before the bundle (the bundle waits for it without
		// listing it): the bundle reports it.
		write(fmt.Sprintf(unlisted, ""))
		x.edit("main.tf", "  decisions = var.decisions\n", "  decisions = var.decisions\n  depends_on = [gatehouse_policy.forgotten]\n")
		out := x.must("plan", "-no-color")
		for _, want := range []string{`Warning: gatehouse_policy "forgotten-deny" is in no bundle`, `with gatehouse_bundle.policy,`,
			`"policy/forgotten-deny" = gatehouse_policy.<resource name>.spec`} {
			if !strings.Contains(out, want) {
				t.Errorf("planned before the bundle: the plan lacks %q:\n%s", want, out)
			}
		}
		x.edit("main.tf", "  decisions = var.decisions\n  depends_on = [gatehouse_policy.forgotten]\n", "  decisions = var.decisions\n")
		// Planned after the bundle: it reports itself, at its name.
		write(fmt.Sprintf(unlisted, "description = \"after ${gatehouse_bundle.policy.file}\""))
		out = x.must("plan", "-no-color")
		for _, want := range []string{`Warning: gatehouse_policy "forgotten-deny" is in no bundle`, `with gatehouse_policy.forgotten,`,
			`name       = "forgotten-deny"`} {
			if !strings.Contains(out, want) {
				t.Errorf("planned after the bundle: the plan lacks %q:\n%s", want, out)
			}
		}
		// Listed: nothing to report. A second object of the same kind and
		// name, which the map's equal keys hide, is reported.
		write(fmt.Sprintf(unlisted, ""))
		x.edit("main.tf", `    "policy/guardrails" `, `    "policy/forgotten-deny" = gatehouse_policy.forgotten.spec
    "policy/guardrails" `)
		defer x.edit("main.tf", `    "policy/forgotten-deny" = gatehouse_policy.forgotten.spec
`, "")
		if out := x.must("plan", "-no-color"); strings.Contains(out, "in no bundle") || strings.Contains(out, "are named") {
			t.Errorf("a listed object is reported:\n%s", out)
		}
		write(fmt.Sprintf(unlisted, "") + strings.NewReplacer(`"forgotten"`, `"forgotten2"`, "VACUUM", "ANALYZE").Replace(fmt.Sprintf(unlisted, "")))
		x.edit("main.tf", `    "policy/guardrails" `, `    "policy/forgotten-deny" = gatehouse_policy.forgotten2.spec
    "policy/guardrails" `)
		defer x.edit("main.tf", `    "policy/forgotten-deny" = gatehouse_policy.forgotten2.spec
`, "")
		if out := x.must("plan", "-no-color"); !strings.Contains(out, `Warning: Two gatehouse_policy objects are named "forgotten-deny"`) {
			t.Errorf("two objects under one key: no warning:\n%s", out)
		}
	})

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
			// The changed object is an update of its entry in objects.
			`~ "policy/billing-service"`,
			"# (72 unchanged elements hidden)",
			"Plan: 0 to add, 2 to change, 0 to destroy.",
		} {
			if !strings.Contains(plan, want) {
				t.Errorf("the plan lacks %q:\n%s", want, plan)
			}
		}
		// No object reprinted: no data source read, no object removed and
		// added again.
		actions := plan[strings.Index(plan, "Terraform will perform"):]
		actions = actions[:strings.Index(actions, "\nPlan:")]
		if strings.Contains(actions, "<= data") || regexp.MustCompile(`(?m)^\s+[-+] jsonencode\(`).MatchString(actions) {
			t.Errorf("the plan reprints objects:\n%s", actions)
		}
		if n := strings.Count(actions, "\n"); n > 105 {
			t.Errorf("a one-line rule change plans %d lines of actions:\n%s", n, actions)
		} else {
			t.Logf("a one-line rule change plans %d lines of actions", n)
		}

		// A decision is decided against the planned objects, at plan time:
		// the published bundle denies md5, the planned one allows it.
		x.edit("decisions.auto.tfvars", "decisions = {\n", `decisions = {
  billing_md5 = {
    identity = "billing-service"
    resource = "orders"
    sql      = "SELECT md5('x')"
  }
`)
		plan = x.must("plan", "-no-color")
		if !regexp.MustCompile(`(?s)\+ "billing_md5" = \{.*\+ effect\s+= "allow".*\+ "billing-service/read"`).MatchString(plan) {
			t.Errorf("the new decision is not decided against the planned objects:\n%s", plan)
		}
		if out, _ := ghRun(t, "eval", bundleFile, "--trust", pub, "--identity", "billing-service", "--resource", "orders", "--sql", "SELECT md5('x')"); !strings.Contains(out, "deny") {
			t.Errorf("the published bundle should still deny md5: %s", out)
		}
		x.must("apply", "-auto-approve", "-no-color")
		// A change to decisions alone publishes nothing.
		revision := payload(t, bundleFile).Revision
		x.edit("decisions.auto.tfvars", `sql      = "SELECT md5('x')"`, `sql      = "SELECT md5('y')"`)
		if plan := x.must("plan", "-no-color"); !regexp.MustCompile(`~ sql\s+= "SELECT md5\('x'\)" -> "SELECT md5\('y'\)"`).MatchString(plan) || strings.Contains(plan, "(known after apply)") {
			t.Errorf("a changed decision: the plan should change it and publish nothing:\n%s", plan)
		}
		x.must("apply", "-auto-approve", "-no-color")
		if p := payload(t, bundleFile); p.Revision != revision {
			t.Errorf("a changed decision published revision %d after %d", p.Revision, revision)
		}
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
			"~ access_changes "} {
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
		if out := x.must("plan", "-no-color", "-input=false", "-out=p"); !regexp.MustCompile(`~ access_changes\s+= \[`).MatchString(out) ||
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

// bundleState reads gatehouse_bundle.policy's digest and revision from
// the state file.
func (x *tf) bundleState(t *testing.T) (digest, revision string) {
	t.Helper()
	state := x.state(t)
	attrs := bundleInstance(t, state)["attributes"].(map[string]any)
	return attrs["digest"].(string), attrs["revision"].(json.Number).String()
}

// rewriteBundleState edits gatehouse_bundle.policy's instance in the state
// file.
func (x *tf) rewriteBundleState(t *testing.T, edit func(inst map[string]any)) {
	t.Helper()
	state := x.state(t)
	edit(bundleInstance(t, state))
	data, err := json.MarshalIndent(state, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(x.dir, "terraform.tfstate"), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func (x *tf) state(t *testing.T) map[string]any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(mustRead(t, filepath.Join(x.dir, "terraform.tfstate"))))
	dec.UseNumber()
	var state map[string]any
	if err := dec.Decode(&state); err != nil {
		t.Fatal(err)
	}
	return state
}

func bundleInstance(t *testing.T, state map[string]any) map[string]any {
	t.Helper()
	for _, r := range state["resources"].([]any) {
		r := r.(map[string]any)
		if r["type"] == "gatehouse_bundle" && r["name"] == "policy" {
			return r["instances"].([]any)[0].(map[string]any)
		}
	}
	t.Fatal("no gatehouse_bundle.policy in the state")
	return nil
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
