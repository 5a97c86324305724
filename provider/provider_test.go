package provider_test

import (
	"crypto/ed25519"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/hashicorp/terraform-plugin-framework/providerserver"
	"github.com/hashicorp/terraform-plugin-go/tfprotov6"
	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/cli"
	"github.com/gatehouse-dev/gatehouse/provider"
)

// These acceptance tests run the real terraform CLI (TF_ACC=1, set by the
// Makefile; terraform from PATH, offline) against the provider in this
// process.

var factories = map[string]func() (tfprotov6.ProviderServer, error){
	"gatehouse": providerserver.NewProtocol6WithError(provider.New("test")()),
}

// keys writes a signing key pair and returns the private key's path, the
// public key's path, and the PEM (for env: references).
func keys(t *testing.T) (priv, pub string, pem []byte) {
	t.Helper()
	dir := t.TempDir()
	k, err := bundle.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pem, _ = bundle.MarshalPrivateKey(k)
	pubPEM, _ := bundle.MarshalPublicKey(k.Public().(ed25519.PublicKey))
	priv, pub = filepath.Join(dir, "gatehouse.key"), filepath.Join(dir, "gatehouse.pub")
	if err := os.WriteFile(priv, pem, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pub, pubPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return priv, pub, pem
}

// objects is a configuration with one resource of every kind and a bundle
// of them. readVerbs is what the read rule allows.
func objects(keyRef, file, readVerbs, extra string) string {
	return objectsWith(keyRef, file, readVerbs, "", extra)
}

// objectsWith is objects with more of the bundle's attributes (inBundle).
func objectsWith(keyRef, file, readVerbs, inBundle, extra string) string {
	return fmt.Sprintf(`
provider "gatehouse" {
  signing_key = %q
}

resource "gatehouse_identity_provider" "corp" {
  name          = "corp"
  description   = "workload identities"
  issuer        = "https://id.example.com"
  audiences     = ["gatehouse"]
  groups_prefix = "corp:"
}

resource "gatehouse_identity" "billing" {
  name              = "billing-service"
  identity_provider = gatehouse_identity_provider.corp.name
  subject           = "billing-service"
  groups            = ["billing"]
}

resource "gatehouse_identity" "analytics" {
  name              = "analytics-job"
  identity_provider = gatehouse_identity_provider.corp.name
  match             = "identity.subject.startsWith('analytics-')"
}

resource "gatehouse_postgres" "orders" {
  name                    = "orders"
  address                 = "orders-db.internal:5432"
  database                = "orders"
  username                = "gatehouse"
  password                = "env:ORDERS_DB_PASSWORD"
  deny_unresolved_columns = true
  labels = {
    env = "prod"
  }
  tls {
    mode    = "verify-full"
    ca_file = "/etc/gatehouse/ca.pem"
  }
}

resource "gatehouse_ssh_host" "bastion" {
  name        = "bastion"
  address     = "bastion.internal:22"
  user        = "ops"
  host_key    = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOEUTqBqeZQjtMndz1LphtYO5IcPCLaCN3hxN0yK1Sen"
  private_key = "file:/etc/gatehouse/keys/bastion"
}

resource "gatehouse_kubernetes_cluster" "prod" {
  name    = "prod-cluster"
  server  = "https://k8s.internal:6443"
  token   = "k8s:gatehouse/prod#token"
  ca_file = "/etc/gatehouse/k8s-ca.pem"
}

resource "gatehouse_policy" "billing" {
  name       = "billing"
  resources  = [gatehouse_postgres.orders.name]
  identities = [gatehouse_identity.billing.name]

  rule {
    name   = "read"
    effect = "allow"
    when   = "request.statements.all(s, s.command in [%s])"
    reason = "billing may read"
  }

  rule {
    name   = "payments-need-review"
    effect = "review"
    when   = "request.statements.exists(s, s.tables.exists(t, t.name == 'payments' && t.access == 'write'))"
    reason = "writes to payments need a DBA"
    approval {
      groups    = ["dba"]
      count     = 2
      timeout   = "30m"
      hold      = false
      valid_for = "1h"
      webhook {
        url    = "https://hooks.example.com/gatehouse"
        secret = "env:GATEHOUSE_WEBHOOK_SECRET"
      }
    }
  }
}

resource "gatehouse_mask" "email" {
  name      = "email"
  resources = [gatehouse_postgres.orders.name]
  columns   = ["customers.email"]
  method    = "partial"
  unless    = "'pci' in identity.groups"
}

resource "gatehouse_policy_test" "reads" {
  name         = "billing reads customers"
  identity     = gatehouse_identity.billing.name
  resource     = gatehouse_postgres.orders.name
  sql          = "SELECT email FROM customers WHERE id = 1"
  expect       = "allow"
  expect_rules = ["billing/read"]
  expect_masks = {
    "public.customers.email" = "partial"
  }
}

resource "gatehouse_policy" "k8s_read" {
  name       = "k8s-read"
  resources  = [gatehouse_kubernetes_cluster.prod.name]
  identities = [gatehouse_identity.billing.name]

  rule {
    name   = "get"
    effect = "allow"
    when   = "request.verb == 'get'"
    reason = "billing may read objects"
  }
}

resource "gatehouse_mask" "secret_values" {
  name      = "secret-values"
  resources = [gatehouse_kubernetes_cluster.prod.name]
  fields    = ["secrets/data", "secrets/stringData"]
  method    = "redact"
  unless    = "'corp:secret-admins' in identity.groups || request.namespace == 'sandbox'"
}

resource "gatehouse_policy_test" "secrets" {
  name     = "billing reads redacted secrets"
  identity = gatehouse_identity.billing.name
  resource = gatehouse_kubernetes_cluster.prod.name
  request  = jsonencode({ kind = "api", verb = "get", resource = "secrets", namespace = "prod" })
  expect   = "allow"
  expect_masks = {
    "kubernetes:secrets/data"       = "redact"
    "kubernetes:secrets/stringData" = "redact"
  }
}

resource "gatehouse_policy_test" "analytics" {
  name     = "analytics connects nowhere"
  identity = gatehouse_identity.analytics.name
  subject  = "analytics-7f9c"
  claims   = jsonencode({ env = "prod" })
  resource = gatehouse_postgres.orders.name
  request  = jsonencode({ kind = "connect" })
  expect   = "deny"
}

resource "gatehouse_bundle" "all" {
  file = %q
  objects = {
    "identity_provider/corp"                    = gatehouse_identity_provider.corp.spec
    "identity/billing-service"                  = gatehouse_identity.billing.spec
    "identity/analytics-job"                    = gatehouse_identity.analytics.spec
    "postgres/orders"                           = gatehouse_postgres.orders.spec
    "ssh_host/bastion"                          = gatehouse_ssh_host.bastion.spec
    "kubernetes_cluster/prod-cluster"           = gatehouse_kubernetes_cluster.prod.spec
    "policy/billing"                            = gatehouse_policy.billing.spec
    "mask/email"                                = gatehouse_mask.email.spec
    "policy/k8s-read"                           = gatehouse_policy.k8s_read.spec
    "mask/secret-values"                        = gatehouse_mask.secret_values.spec
    "test/billing reads redacted secrets"       = gatehouse_policy_test.secrets.spec
    "test/billing reads customers"              = gatehouse_policy_test.reads.spec
    "test/analytics connects nowhere"           = gatehouse_policy_test.analytics.spec
  }
%s
}
%s
`, keyRef, readVerbs, file, inBundle, extra)
}

var importable = map[string]string{
	"gatehouse_identity_provider.corp":  "corp",
	"gatehouse_identity.billing":        "billing-service",
	"gatehouse_identity.analytics":      "analytics-job",
	"gatehouse_postgres.orders":         "orders",
	"gatehouse_ssh_host.bastion":        "bastion",
	"gatehouse_kubernetes_cluster.prod": "prod-cluster",
	"gatehouse_policy.billing":          "billing",
	"gatehouse_mask.email":              "email",
	"gatehouse_policy.k8s_read":         "k8s-read",
	"gatehouse_mask.secret_values":      "secret-values",
	"gatehouse_policy_test.secrets":     "billing reads redacted secrets",
	"gatehouse_policy_test.reads":       "billing reads customers",
	"gatehouse_policy_test.analytics":   "analytics connects nowhere",
}

// TestAccEveryResource: every resource is created, imported from the
// published bundle (ImportStateVerify), updated and destroyed; the bundle
// verifies with `gatehouse bundle verify`; and the state holds no secret.
func TestAccEveryResource(t *testing.T) {
	priv, pub, pem := keys(t)
	file := filepath.Join(t.TempDir(), "policy.bundle")
	const password = "s3cret-upstream-password"
	t.Setenv("ORDERS_DB_PASSWORD", password)
	var rev1 int64

	steps := []resource.TestStep{{
		Config: objects("file:"+priv, file, "'SELECT'", ""),
		Check: resource.ComposeAggregateTestCheckFunc(
			resource.TestCheckResourceAttr("gatehouse_bundle.all", "objects.%", "13"),
			resource.TestCheckResourceAttr("gatehouse_bundle.all", "objects.policy/billing", `{"policy":{"name":"billing","resources":["orders"],"identities":["billing-service"],"rules":[{"name":"read","effect":"allow","when":"request.statements.all(s, s.command in ['SELECT'])","reason":"billing may read"},{"name":"payments-need-review","effect":"review","when":"request.statements.exists(s, s.tables.exists(t, t.name == 'payments' \u0026\u0026 t.access == 'write'))","reason":"writes to payments need a DBA","approval":{"groups":["dba"],"count":2,"timeout":"30m0s","hold":false,"valid_for":"1h0m0s","webhook":{"url":"https://hooks.example.com/gatehouse","secret":"env:GATEHOUSE_WEBHOOK_SECRET"}}}]}}`),
			resource.TestMatchResourceAttr("gatehouse_bundle.all", "digest", regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)),
			resource.TestCheckResourceAttrWith("gatehouse_bundle.all", "revision", func(v string) error {
				rev1, _ = strconv.ParseInt(v, 10, 64)
				return nil
			}),
			resource.TestCheckResourceAttr("gatehouse_policy.billing", "id", "billing"),
			verifiedByCLI(file, pub, 0),
			noSecrets(password, string(pem)),
		),
	}}
	for addr, name := range importable {
		step := resource.TestStep{
			ResourceName:      addr,
			ImportState:       true,
			ImportStateId:     file + "#" + name,
			ImportStateVerify: true,
		}
		// The bundle holds some values canonically: "30m0s" for the
		// "30m" written, public.customers.email for customers.email.
		// The specs are equal, so after an import the plan is empty
		// (TestAccImportThenPlanIsEmpty).
		switch addr {
		case "gatehouse_policy.billing":
			step.ImportStateVerifyIgnore = []string{"rule.1.approval.timeout", "rule.1.approval.valid_for"}
		case "gatehouse_mask.email":
			step.ImportStateVerifyIgnore = []string{"columns.0"}
		}
		steps = append(steps, step)
	}
	steps = append(steps,
		resource.TestStep{ResourceName: "gatehouse_bundle.all", ImportState: true, ImportStateId: file, ImportStateVerify: true,
			// The import reads what the file holds; run_tests is a
			// setting of the resource, true by default.
			ImportStateVerifyIgnore: []string{"run_tests"}},
		resource.TestStep{
			// An update: one rule changes; a new bundle with a higher
			// revision is published.
			Config: objects("file:"+priv, file, "'SELECT', 'SHOW'", ""),
			Check: resource.ComposeAggregateTestCheckFunc(
				resource.TestCheckResourceAttr("gatehouse_policy.billing", "rule.0.when", "request.statements.all(s, s.command in ['SELECT', 'SHOW'])"),
				resource.TestCheckResourceAttrWith("gatehouse_bundle.all", "revision", func(v string) error {
					if n, _ := strconv.ParseInt(v, 10, 64); n <= rev1 {
						return fmt.Errorf("revision %d is not above %d", n, rev1)
					}
					return nil
				}),
				verifiedByCLI(file, pub, rev1),
				noSecrets(password, string(pem)),
			),
		},
		resource.TestStep{
			// The same again: an empty plan.
			Config:   objects("file:"+priv, file, "'SELECT', 'SHOW'", ""),
			PlanOnly: true,
		},
	)
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: factories,
		Steps:                    steps,
		CheckDestroy: func(*terraform.State) error {
			if _, err := os.Stat(file); !os.IsNotExist(err) {
				return fmt.Errorf("the bundle file remains after destroy: %v", err)
			}
			return nil
		},
	})
}

// verifiedByCLI runs `gatehouse bundle verify` on the published file.
func verifiedByCLI(file, pub string, above int64) resource.TestCheckFunc {
	return func(*terraform.State) error {
		args := []string{"bundle", "verify", file, "--trust", pub}
		if above > 0 {
			args = append(args, "--min-revision", strconv.FormatInt(above, 10))
		}
		if code := cli.Execute(args); code != 0 {
			return fmt.Errorf("gatehouse %s: exit %d", strings.Join(args, " "), code)
		}
		return nil
	}
}

// noSecrets reads every attribute of every resource in state.
func noSecrets(secrets ...string) resource.TestCheckFunc {
	return func(s *terraform.State) error {
		for addr, r := range s.RootModule().Resources {
			for k, v := range r.Primary.Attributes {
				for _, secret := range secrets {
					if strings.Contains(v, strings.TrimSpace(secret)) || strings.Contains(v, "PRIVATE KEY") {
						return fmt.Errorf("%s.%s holds a secret", addr, k)
					}
				}
			}
		}
		return nil
	}
}

// TestAccSigningKeyFromEnv: the key may come from an environment variable.
func TestAccSigningKeyFromEnv(t *testing.T) {
	_, pub, pem := keys(t)
	t.Setenv("GATEHOUSE_SIGNING_KEY", string(pem))
	file := filepath.Join(t.TempDir(), "policy.bundle")
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: factories,
		Steps: []resource.TestStep{{
			Config: objects("env:GATEHOUSE_SIGNING_KEY", file, "'SELECT'", ""),
			Check:  resource.ComposeAggregateTestCheckFunc(verifiedByCLI(file, pub, 0), noSecrets(string(pem))),
		}},
	})
}

// TestAccPlanTimeErrors: mistakes fail terraform plan, at the attribute,
// with the position inside a CEL expression.
func TestAccPlanTimeErrors(t *testing.T) {
	priv, _, _ := keys(t)
	file := filepath.Join(t.TempDir(), "policy.bundle")
	base := objects("file:"+priv, file, "'SELECT'", "")
	for name, tc := range map[string]struct {
		config string
		want   string
	}{
		"CEL typo": {
			strings.Replace(base, `unless    = "'pci' in identity.groups"`, `unless    = "'pci' in identity.grups"`, 1),
			`(?s)CEL type error in mask "email", unless at 1:19.*undefined field\s+'grups'.*\^`,
		},
		"CEL typo in a rule": {
			strings.Replace(base, "s.command in ['SELECT']", "s.comand in ['SELECT']", 1),
			`(?s)CEL type error in policy "billing", rule "read" when at 1:\d+.*undefined field\s+'comand'`,
		},
		// Cross-object errors are on the object's entry in the bundle's
		// objects: Terraform shows that line, which names the resource,
		// and the summary names the resource type, object and attribute.
		"unknown reference": {
			strings.Replace(base, "identities = [gatehouse_identity.billing.name]", `identities = ["billing-svc"]`, 1),
			`(?s)Error: Unknown reference in gatehouse_policy "billing", identities\[0\].*with gatehouse_bundle.all,.*"policy/billing"\s+= gatehouse_policy.billing.spec\n.*identity\s+"billing-svc"\s+is\s+not\s+defined`,
		},
		"rule CEL against the actual resource kind": {
			strings.Replace(base, "when   = \"request.verb == 'get'\"", "when   = \"request.statements.size() > 0\"", 1),
			`(?s)CEL type error in policy "k8s-read", rule "get" when at 1:\d+.*"policy/k8s-read"\s+= gatehouse_policy.k8s_read.spec\n.*In\s+gatehouse_policy\s+"k8s-read",\s+rule\[0\].when`,
		},
		"object under the wrong key": {
			strings.Replace(base, `"mask/email"                                = gatehouse_mask.email.spec`, `"mask/e-mail"                                = gatehouse_mask.email.spec`, 1),
			`(?s)Object under the wrong key.*"mask/e-mail"\s+= gatehouse_mask.email.spec\n.*objects\["mask/e-mail"\]\s+holds\s+mask\s+"email".*"mask/email"`,
		},
		"inline secret": {
			strings.Replace(base, `password                = "env:ORDERS_DB_PASSWORD"`, `password                = "hunter2"`, 1),
			`(?s)Secret written inline.*env:`,
		},
		"duplicate name": {
			// Keys are KIND/NAME, so duplicates are across kinds: resource
			// names are unique among all resources.
			strings.Replace(base, `    "mask/email"  `, `    "ssh_host/orders" = gatehouse_ssh_host.orders.spec
    "mask/email"  `, 1) + `
resource "gatehouse_ssh_host" "orders" {
  name     = "orders"
  address  = "orders.internal:22"
  user     = "ops"
  host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOEUTqBqeZQjtMndz1LphtYO5IcPCLaCN3hxN0yK1Sen"
  password = "env:OPS_PASSWORD"
}
`,
			`(?s)Duplicate name in gatehouse_(postgres|ssh_host) "orders"`,
		},
		"failing test": {
			strings.Replace(base, `expect       = "allow"`, `expect       = "deny"`, 1),
			`(?s)Policy test "billing reads customers" fails.*"test/billing reads customers"\s+= gatehouse_policy_test.reads.spec\n.*gatehouse_policy_test "billing reads customers": expected deny, got allow`,
		},
		"bad kubernetes mask field": {
			strings.Replace(base, `fields    = ["secrets/data", "secrets/stringData"]`, `fields    = ["secrets/data", "Secrets/stringData"]`, 1),
			`(?s)mask "secret-values"\s+fields: field\s+"Secrets/stringData": resource\s+"Secrets"\s+must\s+be\s+lower\s+case`,
		},
		"kubernetes mask field without a path": {
			strings.Replace(base, `fields    = ["secrets/data", "secrets/stringData"]`, `fields    = ["secrets"]`, 1),
			`(?s)field\s+"secrets"\s+names\s+no\s+path`,
		},
		"fields on a postgres mask": {
			strings.Replace(base, `columns   = ["customers.email"]`, `fields    = ["secrets/data"]`, 1),
			`(?s)Invalid value in gatehouse_mask "email", fields.*"mask/email"\s+= gatehouse_mask.email.spec\n.*fields\s+names\s+Kubernetes\s+object\s+fields`,
		},
		"columns on a kubernetes mask": {
			strings.Replace(base, `fields    = ["secrets/data", "secrets/stringData"]`, `fields    = ["secrets/data"]
  columns   = ["customers.email"]`, 1),
			`(?s)set\s+fields.*or\s+columns\s+and\s+detectors.*not\s+both`,
		},
		"kubernetes mask unless reads the kubernetes request": {
			strings.Replace(base, `request.namespace == 'sandbox'`, `request.statements.size() > 0`, 1),
			`(?s)CEL type error in mask "secret-values", unless at 1:\d+.*undefined\s+field\s+'statements'`,
		},
		"failing kubernetes mask expectation": {
			strings.Replace(base, `"kubernetes:secrets/data"       = "redact"`, `"kubernetes:secrets/data"       = "hash"`, 1),
			`(?s)Policy test "billing reads redacted secrets" fails.*expected masks`,
		},
		"decision without a request": {
			objectsWith("file:"+priv, file, "'SELECT'", `
  decisions = {
    drop = {
      identity = "billing-service"
      resource = "orders"
    }
  }
`, ""),
			`(?s)Invalid decision.*decisions\["drop"\]: give exactly one of sql and request`,
		},
		"decision for an unknown identity": {
			objectsWith("file:"+priv, file, "'SELECT'", `
  decisions = {
    drop = {
      identity = "billing-svc"
      resource = "orders"
      sql      = "DROP TABLE customers"
    }
  }
`, ""),
			`(?s)Cannot decide "drop".*billing-svc`,
		},
		"invalid mask method": {
			strings.Replace(base, `method    = "partial"`, `method    = "blur"`, 1),
			`(?s)mask "email" method.*blur`,
		},
	} {
		t.Run(name, func(t *testing.T) {
			resource.Test(t, resource.TestCase{
				ProtoV6ProviderFactories: factories,
				Steps:                    []resource.TestStep{{Config: tc.config, PlanOnly: true, ExpectError: regexp.MustCompile(tc.want)}},
			})
		})
	}
}

// TestAccDrift: a published file deleted or replaced behind Terraform's
// back shows as a change and is published again, at a higher revision.
func TestAccDrift(t *testing.T) {
	priv, pub, _ := keys(t)
	file := filepath.Join(t.TempDir(), "policy.bundle")
	config := objects("file:"+priv, file, "'SELECT'", "")
	var rev int64
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: factories,
		Steps: []resource.TestStep{
			{Config: config, Check: resource.TestCheckResourceAttrWith("gatehouse_bundle.all", "revision", func(v string) error {
				rev, _ = strconv.ParseInt(v, 10, 64)
				return nil
			})},
			{PreConfig: func() { _ = os.Remove(file) }, Config: config, PlanOnly: true, ExpectNonEmptyPlan: true},
			{PreConfig: func() { _ = os.WriteFile(file, []byte("{}"), 0o644) }, Config: config, Check: verifiedByCLI(file, pub, rev)},
		},
	})
}

// TestAccDecision: gatehouse_decision decides against the published bundle
// and, deprecated, against objects (a list, or the bundle's map), as a check
// block or terraform test would use it.
func TestAccDecision(t *testing.T) {
	priv, _, _ := keys(t)
	file := filepath.Join(t.TempDir(), "policy.bundle")
	extra := `
data "gatehouse_decision" "drop" {
  objects  = gatehouse_bundle.all.objects
  identity = "billing-service"
  resource = "orders"
  sql      = "SELECT email FROM customers; DELETE FROM payments WHERE id = 1"
}

data "gatehouse_decision" "from_bundle" {
  bundle_file = gatehouse_bundle.all.file
  identity    = "billing-service"
  resource    = "orders"
  sql         = "SELECT email FROM customers"
  depends_on  = [gatehouse_bundle.all]
}

data "gatehouse_decision" "secret" {
  objects  = values(gatehouse_bundle.all.objects)
  identity = "billing-service"
  resource = "prod-cluster"
  request  = jsonencode({ kind = "api", verb = "get", resource = "secrets", namespace = "prod" })
}

data "gatehouse_bundle" "published" {
  file       = gatehouse_bundle.all.file
  depends_on = [gatehouse_bundle.all]
}
`
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: factories,
		Steps: []resource.TestStep{{
			Config: objects("file:"+priv, file, "'SELECT', 'DELETE'", extra),
			Check: resource.ComposeAggregateTestCheckFunc(
				resource.TestCheckResourceAttr("data.gatehouse_decision.drop", "effect", "review"),
				resource.TestCheckResourceAttr("data.gatehouse_decision.drop", "matched_rules.#", "2"),
				resource.TestCheckResourceAttr("data.gatehouse_decision.from_bundle", "effect", "allow"),
				resource.TestCheckResourceAttr("data.gatehouse_decision.from_bundle", "masks.public.customers.email", "partial"),
				resource.TestCheckResourceAttr("data.gatehouse_decision.secret", "effect", "allow"),
				resource.TestCheckResourceAttr("data.gatehouse_decision.secret", "masks.%", "2"),
				resource.TestCheckResourceAttr("data.gatehouse_decision.secret", "masks.kubernetes:secrets/data", "redact"),
				resource.TestCheckResourceAttrPair("data.gatehouse_decision.from_bundle", "bundle_revision", "gatehouse_bundle.all", "revision"),
				resource.TestCheckResourceAttrPair("data.gatehouse_bundle.published", "digest", "gatehouse_bundle.all", "digest"),
				resource.TestCheckResourceAttr("data.gatehouse_bundle.published", "objects.%", "13"),
				resource.TestCheckResourceAttrPair("data.gatehouse_bundle.published", "objects.policy/billing", "gatehouse_bundle.all", "objects.policy/billing"),
			),
		}},
	})
}

// bundleDecisions are decisions of gatehouse_bundle.all; secretGroups are
// the groups of the secret_admin caller.
func bundleDecisions(secretGroups string) string {
	return fmt.Sprintf(`
  decisions = {
    drop = {
      identity = "billing-service"
      resource = "orders"
      sql      = "SELECT email FROM customers; DELETE FROM payments WHERE id = 1"
    }
    secret_admin = {
      identity = "billing-service"
      groups   = %s
      resource = "prod-cluster"
      request  = jsonencode({ kind = "api", verb = "get", resource = "secrets", namespace = "prod" })
    }
  }
`, secretGroups)
}

// TestAccBundleDecisions: gatehouse_bundle decides its decisions against
// the planned objects at plan time (the plan holds the new results before
// anything is applied, and a check block fails the plan's checks), and a
// change to decisions alone publishes nothing.
func TestAccBundleDecisions(t *testing.T) {
	priv, _, _ := keys(t)
	file := filepath.Join(t.TempDir(), "policy.bundle")
	check := `
check "drops_need_review" {
  assert {
    condition     = gatehouse_bundle.all.decisions["drop"].effect == "review"
    error_message = "the DELETE is ${gatehouse_bundle.all.decisions["drop"].effect}"
  }
}
`
	decision := func(key, attr string) tfjsonpath.Path {
		return tfjsonpath.New("decisions").AtMapKey(key).AtMapKey(attr)
	}
	var revision, digest string
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: factories,
		Steps: []resource.TestStep{
			{
				// Created: decided at plan time.
				Config: objectsWith("file:"+priv, file, "'SELECT', 'DELETE'", bundleDecisions(`[]`), check),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectKnownValue("gatehouse_bundle.all", decision("drop", "effect"), knownvalue.StringExact("review")),
					plancheck.ExpectKnownValue("gatehouse_bundle.all", decision("drop", "matched_rules"),
						knownvalue.ListExact([]knownvalue.Check{knownvalue.StringExact("billing/payments-need-review"), knownvalue.StringExact("billing/read")})),
				}},
				Check: resource.ComposeAggregateTestCheckFunc(
					resource.TestCheckResourceAttr("gatehouse_bundle.all", "decisions.drop.effect", "review"),
					resource.TestCheckResourceAttr("gatehouse_bundle.all", "decisions.secret_admin.effect", "allow"),
					resource.TestCheckResourceAttr("gatehouse_bundle.all", "decisions.secret_admin.masks.%", "2"),
					resource.TestCheckResourceAttrWith("gatehouse_bundle.all", "revision", func(v string) error { revision = v; return nil }),
					resource.TestCheckResourceAttrWith("gatehouse_bundle.all", "digest", func(v string) error { digest = v; return nil }),
				),
			},
			{
				// The read rule no longer allows DELETE: the plan already
				// says the DELETE is denied, and the check fails at plan.
				Config: objectsWith("file:"+priv, file, "'SELECT'", bundleDecisions(`[]`), check),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("gatehouse_bundle.all", plancheck.ResourceActionUpdate),
					plancheck.ExpectKnownValue("gatehouse_bundle.all", decision("drop", "effect"), knownvalue.StringExact("review")),
					plancheck.ExpectKnownValue("gatehouse_bundle.all", decision("drop", "matched_rules"),
						knownvalue.ListExact([]knownvalue.Check{knownvalue.StringExact("billing/payments-need-review")})),
					plancheck.ExpectUnknownValue("gatehouse_bundle.all", tfjsonpath.New("digest")),
				}},
			},
			{
				// Only a decision changes: the plan updates it, and the
				// bundle is not published again.
				Config: objectsWith("file:"+priv, file, "'SELECT'", bundleDecisions(`["secret-admins"]`), check),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("gatehouse_bundle.all", plancheck.ResourceActionUpdate),
					plancheck.ExpectKnownValue("gatehouse_bundle.all", decision("secret_admin", "masks"), knownvalue.MapExact(map[string]knownvalue.Check{})),
					plancheck.ExpectKnownValue("gatehouse_bundle.all", tfjsonpath.New("digest"), knownvalue.NotNull()),
				}},
				Check: resource.ComposeAggregateTestCheckFunc(
					resource.TestCheckResourceAttr("gatehouse_bundle.all", "decisions.secret_admin.masks.%", "0"),
					resource.TestCheckResourceAttrWith("gatehouse_bundle.all", "revision", func(v string) error {
						if v == revision {
							return fmt.Errorf("revision %s: the rule change of step 2 was not published", v)
						}
						revision = v
						return nil
					}),
				),
			},
			{
				Config: objectsWith("file:"+priv, file, "'SELECT'", bundleDecisions(`[]`), check),
				Check: resource.ComposeAggregateTestCheckFunc(
					resource.TestCheckResourceAttrWith("gatehouse_bundle.all", "revision", func(v string) error {
						if v != revision {
							return fmt.Errorf("revision %s after %s: a change to decisions alone published the bundle", v, revision)
						}
						return nil
					}),
					resource.TestCheckResourceAttrWith("gatehouse_bundle.all", "digest", func(v string) error {
						if v == digest {
							return fmt.Errorf("digest %s unchanged since step 1", v)
						}
						return nil
					}),
				),
			},
			{Config: objectsWith("file:"+priv, file, "'SELECT'", bundleDecisions(`[]`), check), PlanOnly: true},
		},
	})
}

// TestAccChangedObjectIsAnUpdate: a changed object is an update of its
// entry in objects (the map keeps its key; the other entries are the same).
func TestAccChangedObjectIsAnUpdate(t *testing.T) {
	priv, _, _ := keys(t)
	file := filepath.Join(t.TempDir(), "policy.bundle")
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: factories,
		Steps: []resource.TestStep{
			{Config: objects("file:"+priv, file, "'SELECT'", "")},
			{
				Config: objects("file:"+priv, file, "'SELECT', 'SHOW'", ""),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("gatehouse_bundle.all", plancheck.ResourceActionUpdate),
					plancheck.ExpectKnownValue("gatehouse_bundle.all", tfjsonpath.New("objects").AtMapKey("policy/billing"),
						knownvalue.StringRegexp(regexp.MustCompile(`'SELECT', 'SHOW'`))),
					plancheck.ExpectKnownValue("gatehouse_bundle.all", tfjsonpath.New("access_changes"),
						knownvalue.ListExact([]knownvalue.Check{knownvalue.StringRegexp(regexp.MustCompile(`^identity billing-service gained allow on "orders" via billing/read`))})),
				}},
			},
		},
	})
}

// TestAccImportThenPlanIsEmpty: objects and a bundle imported with import
// blocks from a published bundle plan as no change, although the bundle
// spells some values canonically ("30m0s", public.customers.email).
func TestAccImportThenPlanIsEmpty(t *testing.T) {
	priv, _, _ := keys(t)
	file := filepath.Join(t.TempDir(), "policy.bundle")
	config := objects("file:"+priv, file, "'SELECT'", "")
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: factories,
		Steps:                    []resource.TestStep{{Config: config}},
		CheckDestroy: func(*terraform.State) error {
			return nil
		},
	})
	// Destroy removed the file; publish it again, outside this state.
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: factories,
		Steps: []resource.TestStep{{
			Config: config,
			Check: func(*terraform.State) error {
				data, err := os.ReadFile(file)
				if err != nil {
					return err
				}
				return os.WriteFile(file+".kept", data, 0o644)
			},
		}},
	})
	var imports strings.Builder
	for addr, name := range importable {
		fmt.Fprintf(&imports, "import {\n  to = %s\n  id = %q\n}\n", addr, file+"#"+name)
	}
	fmt.Fprintf(&imports, "import {\n  to = gatehouse_bundle.all\n  id = %q\n}\n", file)
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: factories,
		Steps: []resource.TestStep{
			{
				PreConfig: func() {
					data, err := os.ReadFile(file + ".kept")
					if err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(file, data, 0o644); err != nil {
						t.Fatal(err)
					}
				},
				Config: config + imports.String(),
				Check:  resource.TestCheckResourceAttr("gatehouse_mask.email", "columns.0", "public.customers.email"),
			},
			{Config: config + imports.String(), PlanOnly: true},
		},
	})
}
