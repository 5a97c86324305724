package hclconfig

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

const quickstartDir = "../examples/quickstart"

func TestLoadQuickstart(t *testing.T) {
	res, diags := Load(quickstartDir)
	if len(diags) != 0 {
		t.Fatalf("quickstart: %d diagnostics, want none:\n%s", len(diags), dump(diags))
	}
	m := res.Model
	if m == nil || res.Policy == nil {
		t.Fatalf("quickstart: Model = %v, Policy = %v; want both set", m, res.Policy)
	}
	if got := len(m.Resources()); got != 3 {
		t.Errorf("resources = %d, want 3", got)
	}
	if len(m.Postgres) != 1 || len(m.SSHHosts) != 1 || len(m.KubernetesClusters) != 1 {
		t.Errorf("postgres/ssh_host/kubernetes_cluster = %d/%d/%d, want 1/1/1", len(m.Postgres), len(m.SSHHosts), len(m.KubernetesClusters))
	}
	if len(m.IdentityProviders) != 1 || len(m.Identities) != 2 {
		t.Errorf("identity_providers/identities = %d/%d, want 1/2", len(m.IdentityProviders), len(m.Identities))
	}
	if got := len(m.Policies); got != 8 {
		t.Errorf("policies = %d, want 8", got)
	}
	if got := len(m.Masks); got != 3 {
		t.Errorf("masks = %d, want 3", got)
	}
	if got := len(m.Tests); got < 30 {
		t.Errorf("tests = %d, want at least 30", got)
	}
	rules := 0
	for _, p := range m.Policies {
		rules += len(p.Rules)
	}
	if got := res.Policy.RuleCount(); got != rules || rules < len(m.Policies) {
		t.Errorf("compiled %d rules, model has %d", got, rules)
	}
	if got := len(res.Files); got != 5 {
		t.Errorf("Files has %d entries, want the 5 quickstart files", got)
	}
	// Lists are normalised: the top level is sorted by name, rules keep
	// their declaration order.
	if !sort.SliceIsSorted(m.Policies, func(i, j int) bool { return m.Policies[i].Name < m.Policies[j].Name }) {
		t.Errorf("policies are not sorted by name")
	}
	for _, p := range m.Policies {
		if p.Name == "guardrails" && (p.Rules[0].Name != "no-drop-or-truncate" || p.Rules[len(p.Rules)-1].Name != "payments-need-review") {
			t.Errorf("guardrails rules are not in declaration order: %v", p.Rules)
		}
	}
}

func TestLoadDirectoryErrors(t *testing.T) {
	empty := t.TempDir()
	noHCL := t.TempDir()
	for name, data := range map[string]string{"README.md": "# not policy\n", ".hidden.hcl": "widget {}\n"} {
		if err := os.WriteFile(filepath.Join(noHCL, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(noHCL, "dir.hcl"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		dir     string
		summary string
		detail  string
	}{
		"missing directory":           {filepath.Join(empty, "nope"), "Cannot read policy directory", "no such file or directory"},
		"empty directory":             {empty, "No policy files", "contains no *.hcl files"},
		"hidden, non-hcl and dir.hcl": {noHCL, "No policy files", "contains no *.hcl files"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			res, diags := Load(tc.dir)
			if res == nil || res.Files == nil || res.Model != nil || res.Policy != nil {
				t.Fatalf("Result = %+v, want empty Files and no Model", res)
			}
			if len(diags) != 1 {
				t.Fatalf("got %d diagnostics, want 1:\n%s", len(diags), dump(diags))
			}
			d := diags[0]
			if d.Severity != hcl.DiagError || d.Summary != tc.summary || !strings.Contains(d.Detail, tc.detail) || d.Subject != nil {
				t.Errorf("got %s, want error %q containing %q without a Subject", dump(diags), tc.summary, tc.detail)
			}
		})
	}
}

// TestStructureDiagnostics covers problems HCL's schema decoding and the
// decoder itself find: unknown blocks and attributes, wrong types and
// duplicate names.
func TestStructureDiagnostics(t *testing.T) {
	dupIdentity := `identity "svc" {
  provider = "corp"
  subject  = "svc2"
}
`
	twoIdentities := `identity "x" {
  provider = "corp"
  subject  = "a"
}

identity "x" {
  provider = "corp"
  subject  = "b"
}
`
	tests := map[string]struct {
		src  string
		want []diagWant
	}{
		"unknown top-level block type": {
			src:  "widget \"w\" {}\n",
			want: []diagWant{hclErr("Unsupported block type", "t.hcl", "widget", `Blocks of type "widget" are not expected here.`)},
		},
		"misspelled block type suggests the right one": {
			src: "polcy \"p\" {}\n",
			want: []diagWant{hclErr("Unsupported block type", "t.hcl", "polcy",
				`Blocks of type "polcy" are not expected here. Did you mean "policy"?`)},
		},
		"unknown block inside a rule": {
			src: `policy "p" {
  resources = ["orders"]
  everyone  = true
  rule "r" {
    effect = "allow"
    reason = "x"
    approvals {}
  }
}
`,
			want: []diagWant{hclErr("Unsupported block type", "t.hcl", "approvals", `Blocks of type "approvals" are not expected here. Did you mean "approval"?`)},
		},
		"resource instead of resources in a policy": {
			src: `policy "p" {
  resource = ["orders"]
  rule "r" {
    effect = "allow"
    reason = "x"
  }
}
`,
			want: []diagWant{hclErr("Unsupported argument", "t.hcl", "resource",
				`An argument named "resource" is not expected here. Did you mean "resources"?`)},
		},
		"misspelled rule attribute": {
			src: `policy "p" {
  resources = ["orders"]
  everyone  = true
  rule "r" {
    efect  = "allow"
    reason = "x"
  }
}
`,
			want: []diagWant{hclErr("Unsupported argument", "t.hcl", "efect",
				`An argument named "efect" is not expected here. Did you mean "effect"?`)},
		},
		"unknown attribute without a near miss": {
			src: `postgres "db2" {
  address  = "db.internal:5432"
  database = "db2"
  username = "gatehouse"
  colour   = "red"
}
`,
			want: []diagWant{hclErr("Unsupported argument", "t.hcl", "colour", `An argument named "colour" is not expected here.`)},
		},
		"list for issuer": {
			src: `identity_provider "other" {
  issuer    = ["https://id.example.com"]
  audiences = ["gatehouse"]
}
`,
			want: []diagWant{hclErr("Incorrect attribute value type", "t.hcl", `["https://id.example.com"]`, "issuer must be a string")},
		},
		// HCL converts a number to a string, so a number for issuer is not
		// a type error: it is caught as an invalid URL, at the value.
		"number for issuer": {
			src: `identity_provider "other" {
  issuer    = 42
  audiences = ["gatehouse"]
}
`,
			want: []diagWant{problemErr(bundle.CodeInvalidValue, "Invalid value", "t.hcl", "issuer    = |42", `issuer "42" must be an https URL`)},
		},
		"string for audiences": {
			src: `identity_provider "other" {
  issuer    = "https://other.example.com"
  audiences = "gatehouse"
}
`,
			want: []diagWant{hclErr("Incorrect attribute value type", "t.hcl", `audiences = |"gatehouse"`, "audiences must be a list of strings")},
		},
		"word for a bool": {
			src: `postgres "db2" {
  address                 = "db.internal:5432"
  database                = "db2"
  username                = "gatehouse"
  deny_unresolved_columns = "yes"
}
`,
			want: []diagWant{hclErr("Incorrect attribute value type", "t.hcl", `"yes"`, "deny_unresolved_columns must be true or false")},
		},
		"string for approval count": {
			src: `policy "p" {
  resources = ["orders"]
  everyone  = true
  rule "r" {
    effect = "review"
    reason = "x"
    approval {
      groups = ["dba"]
      count  = "two"
    }
  }
}
`,
			want: []diagWant{hclErr("Incorrect attribute value type", "t.hcl", `"two"`, "count must be a number")},
		},
		"fractional approval count": {
			src: `policy "p" {
  resources = ["orders"]
  everyone  = true
  rule "r" {
    effect = "review"
    reason = "x"
    approval {
      groups = ["dba"]
      count  = 1.5
    }
  }
}
`,
			want: []diagWant{hclErr("Invalid number", "t.hcl", `1.5`, "count must be a whole number")},
		},
		"null list element": {
			src: `policy "p" {
  resources = ["orders", null]
  everyone  = true
  rule "r" {
    effect = "allow"
    reason = "x"
  }
}
`,
			want: []diagWant{hclErr("Null list element", "t.hcl", `["orders", null]`, "resources must not contain null")},
		},
		"variable reference": {
			src: `postgres "db2" {
  address  = "db.internal:5432"
  database = "db2"
  username = "gatehouse"
  password = hunter2
}
`,
			want: []diagWant{hclErr("Variables not allowed", "t.hcl", "hunter2")},
		},
		"identity defined again in another file": {
			src: dupIdentity,
			want: []diagWant{hclErr("Duplicate identity", "t.hcl", `identity |"svc"`,
				fmt.Sprintf(`identity "svc" is already defined at base.hcl:%d,1-15.`, lineOf(t, baseHCL, `identity "svc"`)))},
		},
		"identity defined twice in one file": {
			src:  twoIdentities,
			want: []diagWant{hclErr("Duplicate identity", "t.hcl", "}\n\nidentity |\"x\"", `identity "x" is already defined at t.hcl:1,1-13.`)},
		},
		"rule defined twice in a policy": {
			src: `policy "p" {
  resources = ["orders"]
  everyone  = true
  rule "r" {
    effect = "allow"
    reason = "x"
  }
  rule "s" {
    effect = "allow"
    reason = "x"
  }
  rule "r" {
    effect = "deny"
    reason = "y"
  }
}
`,
			want: []diagWant{hclErr("Duplicate rule", "t.hcl", "}\n  rule |\"r\"| {\n    effect = \"deny\"",
				`rule "r" is already defined in policy "p" at t.hcl:4,3-11`)},
		},
		"two tls blocks": {
			src: `postgres "db2" {
  address  = "db.internal:5432"
  database = "db2"
  username = "gatehouse"
  tls {
    mode = "require"
  }
  tls {
    mode = "verify-full"
  }
}
`,
			want: []diagWant{hclErr("Duplicate tls block", "t.hcl", "}\n  |tls", `only one tls block is allowed in postgres "db2"`)},
		},
		"ssh_host named like a postgres": {
			src: `ssh_host "orders" {
  address     = "orders.internal:22"
  user        = "ops"
  host_key    = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOEUTqBqeZQjtMndz1LphtYO5IcPCLaCN3hxN0yK1Sen"
  private_key = "env:ORDERS_SSH_KEY"
}
`,
			want: []diagWant{problemErr(bundle.CodeDuplicateName, "Duplicate name", "t.hcl", `ssh_host "orders"`,
				`resource names must be unique across postgres, ssh_host and kubernetes_cluster`, `"orders" is used more than once`)},
		},
		"kubernetes_cluster named like an ssh_host": {
			src: `kubernetes_cluster "bastion" {
  server = "https://k8s.internal:6443"
  token  = "env:K8S_TOKEN"
}
`,
			want: []diagWant{problemErr(bundle.CodeDuplicateName, "Duplicate name", "t.hcl", `kubernetes_cluster "bastion"`, `"bastion" is used more than once`)},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			checkDiags(t, withBase(tc.src), tc.want)
		})
	}
}

func lineOf(t testing.TB, src, s string) int {
	start, _ := locate(t, src, s)
	return start.Line
}

// TestModelDiagnostics covers problems found by bundle's validation,
// mapped back to the attribute, list element or block they are about.
func TestModelDiagnostics(t *testing.T) {
	tests := map[string]struct {
		src  string
		want []diagWant
	}{
		"unknown resource in a policy points at the element": {
			src: `policy "p" {
  resources = ["orders", "nope"]
  everyone  = true
  rule "r" {
    effect = "allow"
    reason = "x"
  }
}
`,
			want: []diagWant{problemErr(bundle.CodeUnknownReference, "Reference to undefined object", "t.hcl", `"nope"`,
				`resource "nope" is not defined`)},
		},
		"unknown resource on a continuation line": {
			src: `policy "p" {
  resources = [
    "orders",
    "nope",
  ]
  everyone = true
  rule "r" {
    effect = "allow"
    reason = "x"
  }
}
`,
			want: []diagWant{problemErr(bundle.CodeUnknownReference, "Reference to undefined object", "t.hcl", `"nope"`, `resource "nope" is not defined`)},
		},
		"unknown identity in a policy": {
			src: `policy "p" {
  resources  = ["orders"]
  identities = ["svc", "ghost"]
  rule "r" {
    effect = "allow"
    reason = "x"
  }
}
`,
			want: []diagWant{problemErr(bundle.CodeUnknownReference, "Reference to undefined object", "t.hcl", `"ghost"`, `identity "ghost" is not defined`)},
		},
		"unknown provider of an identity": {
			src: `identity "other" {
  provider = "nocorp"
  subject  = "x"
}
`,
			want: []diagWant{problemErr(bundle.CodeUnknownReference, "Reference to undefined object", "t.hcl", `"nocorp"`, `identity_provider "nocorp" is not defined`)},
		},
		"unknown identity, provider and resource of a test": {
			src: `test "t1" {
  identity = "nobody"
  resource = "nothing"
  sql      = "SELECT 1"
  expect   = "allow"
}

test "t2" {
  provider = "nocorp"
  subject  = "alice"
  resource = "orders"
  sql      = "SELECT 1"
  expect   = "allow"
}
`,
			want: []diagWant{
				problemErr(bundle.CodeUnknownReference, "Reference to undefined object", "t.hcl", `"nothing"`, `resource "nothing" is not defined`),
				problemErr(bundle.CodeUnknownReference, "Reference to undefined object", "t.hcl", `"nobody"`, `identity "nobody" is not defined`),
				problemErr(bundle.CodeUnknownReference, "Reference to undefined object", "t.hcl", `"nocorp"`, `identity_provider "nocorp" is not defined`),
			},
		},
		"unknown rule in expect_rules": {
			src: `policy "p" {
  resources = ["orders"]
  everyone  = true
  rule "r" {
    effect = "allow"
    reason = "x"
  }
}

test "t" {
  identity     = "svc"
  resource     = "orders"
  sql          = "SELECT 1"
  expect       = "allow"
  expect_rules = ["p/r", "p/typo"]
}
`,
			want: []diagWant{problemErr(bundle.CodeUnknownReference, "Reference to undefined object", "t.hcl", `"p/typo"`, `rule "p/typo" is not defined`)},
		},
		"unknown resource of a mask": {
			src: `mask "m" {
  resources = ["ordres"]
  columns   = ["customers.email"]
  method    = "redact"
}
`,
			want: []diagWant{problemErr(bundle.CodeUnknownReference, "Reference to undefined object", "t.hcl", `"ordres"`, `resource "ordres" is not defined`)},
		},
		"inline password": {
			src: `postgres "db2" {
  address  = "db.internal:5432"
  database = "db2"
  username = "gatehouse"
  password = "hunter2"
}
`,
			want: []diagWant{{summary: "Secret written inline", code: bundle.CodeInlineSecret, file: "t.hcl", at: `"hunter2"`,
				detail: []string{"password must be a secret reference", "env:", "file:", "k8s:"}, notDetail: []string{"hunter2"}}},
		},
		"inline kubernetes token": {
			src: `kubernetes_cluster "k8s" {
  server = "https://k8s.internal:6443"
  token  = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0.c2ln"
}
`,
			want: []diagWant{{summary: "Secret written inline", code: bundle.CodeInlineSecret, file: "t.hcl", at: `"eyJhbGciOiJSUzI1NiJ9.c2VjcmV0.c2ln"`,
				detail: []string{"token must be a secret reference", "env:", "file:"}, notDetail: []string{"eyJhbGciOiJSUzI1NiJ9", "c2VjcmV0"}}},
		},
		"malformed env reference": {
			src: `postgres "db2" {
  address  = "db.internal:5432"
  database = "db2"
  username = "gatehouse"
  password = "env:hunter 2"
}
`,
			want: []diagWant{{summary: "Invalid secret reference", code: bundle.CodeInvalidSecretRef, file: "t.hcl", at: `"env:hunter 2"`,
				detail: []string{"env: must be followed by an environment variable name"}, notDetail: []string{"hunter 2"}}},
		},
		"bad kubernetes mask field spelling": {
			src: kubeCluster + `mask "m" {
  resources = ["k8s"]
  fields    = ["secrets/data", "Secrets/stringData", "widgets.example.com/spec..password"]
  method    = "redact"
}
`,
			want: []diagWant{
				problemErr(bundle.CodeInvalidValue, "Invalid value", "t.hcl", `"Secrets/stringData"`,
					`field "Secrets/stringData": resource "Secrets" must be lower case`),
				problemErr(bundle.CodeInvalidValue, "Invalid value", "t.hcl", `"widgets.example.com/spec..password"`,
					`an empty path segment`),
			},
		},
		"kubernetes mask field without a path": {
			src: kubeCluster + `mask "m" {
  resources = ["k8s"]
  fields    = ["secrets"]
  method    = "redact"
}
`,
			want: []diagWant{problemErr(bundle.CodeInvalidValue, "Invalid value", "t.hcl", `"secrets"`,
				`field "secrets" names no path: want RESOURCE[.GROUP]/PATH such as secrets/data`)},
		},
		"kubernetes mask field listed twice": {
			src: kubeCluster + `mask "m" {
  resources = ["k8s"]
  fields    = ["secrets/data", "secrets/stringData", "secrets/data"]
  method    = "redact"
}
`,
			want: []diagWant{problemErr(bundle.CodeDuplicateName, "Duplicate name", "t.hcl", `"secrets/stringData", |"secrets/data"`,
				`field "secrets/data" is already listed (fields[0])`)},
		},
		"fields on a postgres mask": {
			src: `mask "m" {
  resources = ["orders"]
  columns   = ["customers.email"]
  fields    = ["secrets/data"]
  method    = "redact"
}
`,
			want: []diagWant{problemErr(bundle.CodeConflict, "Conflicting attributes", "t.hcl", `["secrets/data"]`,
				"fields names Kubernetes object fields, for masks of kubernetes_cluster resources; this mask applies to postgres resources")},
		},
		"columns and detectors on a kubernetes mask": {
			src: kubeCluster + `mask "m" {
  resources = ["k8s"]
  fields    = ["secrets/data"]
  columns   = ["customers.email"]
  detectors = ["email"]
  method    = "redact"
}
`,
			want: []diagWant{
				problemErr(bundle.CodeConflict, "Conflicting attributes", "t.hcl", `["customers.email"]`,
					"columns is for masks of postgres resources; this mask applies to kubernetes_cluster resources"),
				problemErr(bundle.CodeConflict, "Conflicting attributes", "t.hcl", `["email"]`,
					"detectors is for masks of postgres resources"),
			},
		},
		"kubernetes mask without fields": {
			src: kubeCluster + `mask "m" {
  resources = ["k8s"]
  method    = "redact"
}
`,
			want: []diagWant{problemErr(bundle.CodeMissingAttribute, "Missing required attribute", "t.hcl", `mask "m"`,
				"fields is required: name the Kubernetes object fields this mask hides, such as secrets/data")},
		},
		"mask mixing postgres and kubernetes_cluster": {
			src: kubeCluster + `mask "m" {
  resources = ["k8s", "orders"]
  fields    = ["secrets/data"]
  method    = "redact"
}
`,
			want: []diagWant{problemErr(bundle.CodeMixedKinds, "Mask covers several resource kinds", "t.hcl", `"orders"`,
				`resource "orders" is a postgres but this mask already applies to kubernetes_cluster resources`)},
		},
		"mask on an ssh_host": {
			src: `mask "m" {
  resources = ["bastion"]
  fields    = ["secrets/data"]
  method    = "redact"
}
`,
			want: []diagWant{problemErr(bundle.CodeInvalidValue, "Invalid value", "t.hcl", `"bastion"`,
				`resource "bastion" is a ssh_host; masks apply to postgres and kubernetes_cluster resources`)},
		},
		"expect_masks with a bad kubernetes field": {
			src: kubeCluster + `test "t" {
  identity     = "svc"
  resource     = "k8s"
  request      = { kind = "api", verb = "get", resource = "secrets" }
  expect       = "deny"
  expect_masks = { "kubernetes:secrets" = "redact" }
}
`,
			want: []diagWant{problemErr(bundle.CodeInvalidValue, "Invalid value", "t.hcl", `{ "kubernetes:secrets" = "redact" }`,
				`"kubernetes:secrets": field "secrets" names no path`)},
		},
		"policy mixing postgres and ssh_host": {
			src: `policy "p" {
  resources = ["orders", "bastion"]
  everyone  = true
  rule "r" {
    effect = "allow"
    reason = "x"
  }
}
`,
			want: []diagWant{problemErr(bundle.CodeMixedKinds, "Policy covers several resource kinds", "t.hcl", `"bastion"`,
				`resource "bastion" is a ssh_host but this policy already covers postgres resources`)},
		},
		"review rule without approval points at the rule": {
			src: `policy "p" {
  resources = ["orders"]
  everyone  = true
  rule "hold" {
    effect = "review"
    reason = "x"
  }
}
`,
			want: []diagWant{problemErr(bundle.CodeMissingAttribute, "Missing required attribute", "t.hcl", `rule "hold"`,
				"a review rule needs an approval block")},
		},
		"approval on an allow rule": {
			src: `policy "p" {
  resources = ["orders"]
  everyone  = true
  rule "ok" {
    effect = "allow"
    reason = "x"
    approval {
      groups = ["dba"]
    }
  }
}
`,
			want: []diagWant{problemErr(bundle.CodeConflict, "Conflicting attributes", "t.hcl", `rule "ok"`, "approval is only allowed on review rules")},
		},
		"approval timeout out of range": {
			src: `policy "p" {
  resources = ["orders"]
  everyone  = true
  rule "hold" {
    effect = "review"
    reason = "x"
    approval {
      groups  = ["dba"]
      timeout = "48h"
    }
  }
}
`,
			want: []diagWant{problemErr(bundle.CodeInvalidValue, "Invalid value", "t.hcl", `"48h"`, `approval.timeout "48h" must be a duration between 1s and 24h`)},
		},
		"approval wait beyond its timeout": {
			src: `policy "p" {
  resources = ["orders"]
  everyone  = true
  rule "hold" {
    effect = "review"
    reason = "x"
    approval {
      groups  = ["dba"]
      timeout = "10m"
      wait    = "20m"
    }
  }
}
`,
			want: []diagWant{problemErr(bundle.CodeInvalidValue, "Invalid value", "t.hcl", `"20m"`, `approval.wait "20m" is longer than approval.timeout (10m0s)`)},
		},
		"inline webhook secret": {
			src: `policy "p" {
  resources = ["orders"]
  everyone  = true
  rule "hold" {
    effect = "review"
    reason = "x"
    approval {
      groups = ["dba"]
      webhook {
        url    = "https://hooks.example.com/gatehouse"
        secret = "shhh-its-a-secret"
      }
    }
  }
}
`,
			want: []diagWant{{summary: "Secret written inline", code: bundle.CodeInlineSecret, file: "t.hcl", at: `"shhh-its-a-secret"`,
				detail: []string{"approval.webhook.secret must be a secret reference"}, notDetail: []string{"shhh"}}},
		},
		"missing reason points at the rule": {
			src: `policy "p" {
  resources = ["orders"]
  everyone  = true
  rule "silent" {
    effect = "deny"
  }
}
`,
			want: []diagWant{problemErr(bundle.CodeMissingAttribute, "Missing required attribute", "t.hcl", `rule "silent"`, "reason is required")},
		},
		"request kind of another resource kind": {
			src: `policy "p" {
  resources = ["orders"]
  everyone  = true
  rule "r" {
    effect = "allow"
    on     = ["query", "exec"]
    reason = "x"
  }
}
`,
			want: []diagWant{problemErr(bundle.CodeInvalidValue, "Invalid value", "t.hcl", `"exec"`, `"exec" is not a request kind of postgres resources`)},
		},
		"invalid object name": {
			src: `postgres "bad name" {
  address  = "db.internal:5432"
  database = "db2"
  username = "gatehouse"
}
`,
			want: []diagWant{problemErr(bundle.CodeInvalidName, "Invalid name", "t.hcl", `postgres "bad name"`, `name "bad name" is not valid`)},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			checkDiags(t, withBase(tc.src), tc.want)
		})
	}
}

// celPolicy wraps a rule body in a policy over the postgres resource.
func celPolicy(rule string) string {
	return "policy \"p\" {\n  resources = [\"orders\"]\n  everyone  = true\n\n" + rule + "}\n"
}

// TestCELDiagnostics checks that CEL errors point at the offending token
// inside the expression string, whatever quoting, escapes or heredoc
// indentation the source uses.
func TestCELDiagnostics(t *testing.T) {
	typo := func(at string) []diagWant {
		return []diagWant{problemErr(bundle.CodeCELType, "CEL type error", "t.hcl", at, "undefined field 'grups'", `in when of rule "r" of policy "p"`)}
	}
	tests := map[string]struct {
		src  string
		want []diagWant
	}{
		"field typo in a quoted string": {
			src: celPolicy(`  rule "r" {
    effect = "allow"
    when   = "identity.grups.size() > 0"
    reason = "x"
  }
`),
			want: typo("grups"),
		},
		"field typo after escaped quotes and backslashes": {
			src: celPolicy(`  rule "r" {
    effect = "allow"
    when   = "'a\\'b' == \"x\" && identity.grups == []"
    reason = "x"
  }
`),
			want: typo("grups"),
		},
		"field typo after unicode escapes": {
			src: celPolicy(`  rule "r" {
    effect = "allow"
    when   = "identity.subject != '\u00e9\U0001F600' && identity.grups == []"
    reason = "x"
  }
`),
			want: typo("grups"),
		},
		"field typo after literal non-ASCII characters": {
			src: celPolicy(`  rule "r" {
    effect = "allow"
    when   = "identity.subject != 'é😀' && identity.grups == []"
    reason = "x"
  }
`),
			want: typo("grups"),
		},
		"field typo after a $${ escape": {
			src: celPolicy(`  rule "r" {
    effect = "allow"
    when   = "identity.subject != '$${x}%%{y}' && identity.grups == []"
    reason = "x"
  }
`),
			want: typo("grups"),
		},
		"field typo after an escaped newline": {
			src: celPolicy(`  rule "r" {
    effect = "allow"
    when   = "identity.subject == 'a' ||\n  identity.grups == []"
    reason = "x"
  }
`),
			want: typo("grups"),
		},
		"field typo spelled with a leading escape": {
			src: celPolicy(`  rule "r" {
    effect = "allow"
    when   = "identity.\u0067rups == []"
    reason = "x"
  }
`),
			want: typo(`\u0067rups`),
		},
		"field typo in an indented heredoc": {
			src: celPolicy(`  rule "r" {
    effect = "allow"
    when   = <<-CEL
      identity.groups.size() > 0 &&
        identity.subject != '' &&
          identity.grups.exists(g, g == 'x')
    CEL
    reason = "x"
  }
`),
			want: typo("grups"),
		},
		"field typo in a heredoc indented with tabs": {
			src:  celPolicy("  rule \"r\" {\n    effect = \"allow\"\n    when   = <<-CEL\n\t\tidentity.subject != '' &&\n\n\t\t\tidentity.grups == []\n\tCEL\n    reason = \"x\"\n  }\n"),
			want: typo("grups"),
		},
		"field typo in a plain heredoc": {
			src: celPolicy(`  rule "r" {
    effect = "allow"
    when   = <<EOT
identity.subject != '' &&
  identity.grups == []
EOT
    reason = "x"
  }
`),
			want: typo("grups"),
		},
		"field typo in a heredoc with CRLF line ends": {
			src: strings.ReplaceAll(celPolicy(`  rule "r" {
    effect = "allow"
    when   = <<-CEL
      identity.subject != '' &&
        identity.grups == []
    CEL
    reason = "x"
  }
`), "\n", "\r\n"),
			want: typo("grups"),
		},
		"request.verb in a postgres policy": {
			src: celPolicy(`  rule "r" {
    effect = "allow"
    when   = "request.verb == 'get'"
    reason = "x"
  }
`),
			want: []diagWant{problemErr(bundle.CodeCELType, "CEL type error", "t.hcl", "verb", "undefined field 'verb'")},
		},
		"request.statements in an ssh policy": {
			src: `policy "p" {
  resources = ["bastion"]
  everyone  = true
  rule "r" {
    effect = "allow"
    when   = "request.statements.size() == 0"
    reason = "x"
  }
}
`,
			want: []diagWant{problemErr(bundle.CodeCELType, "CEL type error", "t.hcl", "statements", "undefined field 'statements'")},
		},
		"undeclared variable": {
			src: celPolicy(`  rule "r" {
    effect = "allow"
    when   = "user.name == 'x'"
    reason = "x"
  }
`),
			want: []diagWant{problemErr(bundle.CodeCELType, "CEL type error", "t.hcl", "user", "undeclared reference to 'user'")},
		},
		"expression that is not a bool covers the expression": {
			src: celPolicy(`  rule "r" {
    effect = "allow"
    when   = "1 + 1"
    reason = "x"
  }
`),
			want: []diagWant{problemErr(bundle.CodeCELType, "CEL type error", "t.hcl", `"|1 + 1`, "expression must be a bool, but it is int")},
		},
		"syntax error at the end of the expression": {
			src: celPolicy(`  rule "r" {
    effect = "allow"
    when   = "identity.groups.size() > "
    reason = "x"
  }
`),
			want: []diagWant{problemErr(bundle.CodeCELSyntax, "CEL syntax error", "t.hcl", `> |`, "Syntax error: mismatched input '<EOF>'")},
		},
		"syntax error on a stray character": {
			src: celPolicy(`  rule "r" {
    effect = "allow"
    when   = "identity.subject == 'a' &&& true"
    reason = "x"
  }
`),
			want: []diagWant{problemErr(bundle.CodeCELSyntax, "CEL syntax error", "t.hcl", `&&|&`, "token recognition error at: '& '")},
		},
		"typo in an identity match": {
			src: `identity "jobs" {
  provider = "corp"
  match    = "identity.subjct.startsWith('job-')"
}
`,
			want: []diagWant{problemErr(bundle.CodeCELType, "CEL type error", "t.hcl", "subjct", "undefined field 'subjct'", `in match of identity "jobs"`)},
		},
		"request is not visible to identity match": {
			src: `identity "jobs" {
  provider = "corp"
  match    = "request.kind == 'connect'"
}
`,
			want: []diagWant{problemErr(bundle.CodeCELType, "CEL type error", "t.hcl", "request", "undeclared reference to 'request'")},
		},
		"typo in a mask's unless": {
			src: `mask "m" {
  resources = ["orders"]
  columns   = ["customers.email"]
  method    = "redact"
  unless    = "'pci' in identity.grups"
}
`,
			want: []diagWant{problemErr(bundle.CodeCELType, "CEL type error", "t.hcl", "grups", "undefined field 'grups'", `in unless of mask "m"`)},
		},
		"a kubernetes mask's unless sees the kubernetes request": {
			src: kubeCluster + `mask "m" {
  resources = ["k8s"]
  fields    = ["secrets/data"]
  method    = "redact"
  unless    = "request.namespace == 'dev' || request.statements.size() == 0"
}
`,
			want: []diagWant{problemErr(bundle.CodeCELType, "CEL type error", "t.hcl", "statements", "undefined field 'statements'", `in unless of mask "m"`)},
		},
		"worst-case cost over the static limit": {
			src: celPolicy(`  rule "r" {
    effect = "deny"
    when   = "request.statements.exists(s, s.tables.exists(t, identity.groups.exists(g, request.statements.exists(s2, s2.tables.exists(t2, t2.name == t.name + g)))))"
    reason = "x"
  }
`),
			want: []diagWant{problemErr(bundle.CodeCELCost, "CEL expression too expensive", "t.hcl",
				`"|request.statements.exists(s, s.tables.exists(t, identity.groups.exists(g, request.statements.exists(s2, s2.tables.exists(t2, t2.name == t.name + g)))))`,
				"over the limit of 1000000", `in when of rule "r" of policy "p"`)},
		},
		"several CEL errors in one policy": {
			src: celPolicy(`  rule "a" {
    effect = "allow"
    when   = "identity.grups == []"
    reason = "x"
  }

  rule "b" {
    effect = "deny"
    when   = "request.verb == 'delete'"
    reason = "x"
  }
`),
			want: []diagWant{
				problemErr(bundle.CodeCELType, "CEL type error", "t.hcl", "grups", `in when of rule "a" of policy "p"`),
				problemErr(bundle.CodeCELType, "CEL type error", "t.hcl", "verb", `in when of rule "b" of policy "p"`),
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, diags := checkDiags(t, withBase(tc.src), tc.want)
			// CEL problems carry the whole attribute as context.
			for _, d := range diags {
				if p, ok := ProblemOf(d); ok && p.Span != nil && (d.Context == nil || !d.Context.ContainsPos(d.Subject.Start)) {
					t.Errorf("Context %v does not contain Subject %v", d.Context, d.Subject)
				}
			}
		})
	}
}

func TestCELCostInHeredoc(t *testing.T) {
	src := celPolicy(`  rule "r" {
    effect = "deny"
    when   = <<-CEL
      request.statements.exists(s, s.tables.exists(t, identity.groups.exists(g,
        request.statements.exists(s2, s2.tables.exists(t2, t2.name == t.name + g)))))
    CEL
    reason = "x"
  }
`)
	checkDiags(t, withBase(src), []diagWant{{summary: "CEL expression too expensive", code: bundle.CodeCELCost, file: "t.hcl",
		at: "      |request.statements.exists(s, s.tables", noEnd: true, detail: []string{"worst-case cost"}}})
}

// TestCELPositionBugs documents CEL positions that are wrong today.
func TestCELPositionBugs(t *testing.T) {
	t.Run("column after a multi-rune grapheme cluster", func(t *testing.T) {
		// q + U+0301 COMBINING ACUTE ACCENT has no precomposed form, so HCL's
		// NFC normalisation leaves it alone and the span is mapped.
		src := celPolicy("  rule \"r\" {\n    effect = \"allow\"\n    when   = \"identity.subject != 'q\u0301' && identity.grups == []\"\n    reason = \"x\"\n  }\n")
		_, diags := LoadFiles(map[string][]byte{"base.hcl": []byte(baseHCL), "t.hcl": []byte(src)})
		if len(diags) != 1 || diags[0].Subject == nil || diags[0].Context == nil {
			t.Fatalf("want one CEL diagnostic with Subject and Context:\n%s", dump(diags))
		}
		d := diags[0]
		// HCL's own range of the attribute ends right after the closing
		// quote; the typo starts len(`grups == []"`) characters before.
		wantCol := d.Context.End.Column - len(`grups == []"`)
		if d.Subject.Start.Column != wantCol {
			t.Errorf("Subject starts at column %d, want %d (HCL columns count grapheme clusters)", d.Subject.Start.Column, wantCol)
		}
	})
	t.Run("string that NFC normalisation changes", func(t *testing.T) {
		for name, rule := range map[string]string{
			"quoted":  "  rule \"r\" {\n    effect = \"allow\"\n    when   = \"identity.subject != '\u2126' && identity.grups == []\"\n    reason = \"x\"\n  }\n",
			"heredoc": "  rule \"r\" {\n    effect = \"allow\"\n    when   = <<-CEL\n      identity.subject != '\u2126' &&\n        identity.grups == []\n    CEL\n    reason = \"x\"\n  }\n",
		} {
			t.Run(name, func(t *testing.T) {
				checkDiags(t, withBase(celPolicy(rule)), []diagWant{
					problemErr(bundle.CodeCELType, "CEL type error", "t.hcl", "grups", "undefined field 'grups'"),
				})
			})
		}
	})
	t.Run("token ending in an escape", func(t *testing.T) {
		src := celPolicy(`  rule "r" {
    effect = "allow"
    when   = "identity.grup\u0073 == []"
    reason = "x"
  }
`)
		checkDiags(t, withBase(src), []diagWant{
			problemErr(bundle.CodeCELType, "CEL type error", "t.hcl", `grup\u0073`, "undefined field 'grups'"),
		})
	})
}

// TestExpectRulesAndMasks: unset and empty stay apart, because an empty list
// or map asserts that nothing matches.
func TestExpectRulesAndMasks(t *testing.T) {
	testBlock := func(extra string) string {
		return "test \"t\" {\n  identity = \"svc\"\n  resource = \"orders\"\n  sql      = \"SELECT 1\"\n  expect   = \"deny\"\n" + extra + "}\n"
	}
	tests := map[string]struct {
		extra     string
		wantRules []string
		wantMasks map[string]string
	}{
		"unset": {"", nil, nil},
		"empty": {"  expect_rules = []\n  expect_masks = {}\n", []string{}, map[string]string{}},
		"set":   {"  expect_rules = []\n  expect_masks = { \"customers.email\" = \"redact\" }\n", []string{}, map[string]string{"public.customers.email": "redact"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			res, _ := checkDiags(t, withBase(testBlock(tc.extra)), nil)
			got := res.Model.Tests[0]
			if !reflect.DeepEqual(got.ExpectRules, tc.wantRules) || !reflect.DeepEqual(got.ExpectMasks, tc.wantMasks) {
				t.Errorf("ExpectRules = %#v, ExpectMasks = %#v; want %#v, %#v", got.ExpectRules, got.ExpectMasks, tc.wantRules, tc.wantMasks)
			}
		})
	}
	t.Run("null is unset", func(t *testing.T) {
		res, _ := checkDiags(t, withBase(testBlock("  expect_rules = null\n  expect_masks = null\n")), nil)
		got := res.Model.Tests[0]
		if got.ExpectRules != nil || got.ExpectMasks != nil {
			t.Errorf("ExpectRules = %#v, ExpectMasks = %#v; want nil, nil", got.ExpectRules, got.ExpectMasks)
		}
	})
}

// deepNesting is a policy file, far under MaxFileBytes, whose attribute
// value nests n tuple constructors.
func deepNesting(n int) []byte {
	return []byte("policy \"p\" {\n  resources = " + strings.Repeat("[", n) + "\n}\n")
}

func TestDeeplyNestedExpressionDoesNotCrash(t *testing.T) {
	const depth = 200_000 // 200 KB; about 60 000 is enough to crash
	if os.Getenv("HCLCONFIG_DEEP_NESTING_CHILD") == "1" {
		LoadFiles(map[string][]byte{"deep.hcl": deepNesting(depth)})
		return
	}
	// The crash cannot be recovered, so it runs in a child process.
	cmd := exec.Command(os.Args[0], "-test.run=^TestDeeplyNestedExpressionDoesNotCrash$", "-test.count=1")
	cmd.Env = append(os.Environ(), "HCLCONFIG_DEEP_NESTING_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		first, _, _ := strings.Cut(string(out), "\n")
		t.Fatalf("LoadFiles of a %d byte file nesting %d '[' killed the process: %v: %s", len(deepNesting(depth)), depth, err, first)
	}
}

// TestOrderIndependence: objects split across files, in any order, give the
// same model.
func TestOrderIndependence(t *testing.T) {
	objs := []string{
		baseHCL,
		`policy "reads" {
  resources  = ["orders"]
  identities = ["svc"]
  rule "first" {
    effect = "allow"
    when   = "request.statements.all(s, s.command == 'SELECT')"
    reason = "reads"
  }
  rule "second" {
    effect = "deny"
    when   = "request.statements.exists(s, s.command == 'DROP')"
    reason = "no drops"
  }
}
`,
		`policy "ops" {
  resources = ["bastion"]
  groups    = ["ops", "dba"]
  rule "connect" {
    effect = "allow"
    on     = ["connect", "exec"]
    reason = "ops"
  }
}
`,
		`mask "email" {
  resources = ["orders"]
  columns   = ["customers.email", "public.users.email"]
  method    = "partial"
}
`,
		`test "svc reads" {
  identity     = "svc"
  resource     = "orders"
  sql          = "SELECT 1"
  expect       = "allow"
  expect_rules = ["reads/first"]
}
`,
		`identity "other" {
  provider = "corp"
  subject  = "other"
  groups   = ["b", "a"]
}
`,
	}
	layouts := map[string]map[string]string{
		"one file": {"all.hcl": strings.Join(objs, "\n")},
		"two files": {
			"a.hcl": strings.Join(objs[:3], "\n"),
			"b.hcl": strings.Join(objs[3:], "\n"),
		},
		"two files reversed": {
			"a.hcl": strings.Join([]string{objs[5], objs[4], objs[3]}, "\n"),
			"b.hcl": strings.Join([]string{objs[2], objs[1], objs[0]}, "\n"),
		},
		"interleaved": {
			"x.hcl": strings.Join([]string{objs[4], objs[0], objs[2]}, "\n"),
			"y.hcl": strings.Join([]string{objs[1], objs[5], objs[3]}, "\n"),
		},
		"one object per file": {
			"6.hcl": objs[0], "5.hcl": objs[1], "4.hcl": objs[2],
			"3.hcl": objs[3], "2.hcl": objs[4], "1.hcl": objs[5],
		},
	}
	var ref *bundle.Model
	var refName string
	for _, name := range sortedKeys(layouts) {
		res, diags := checkDiags(t, layouts[name], nil)
		if res.Model == nil || res.Policy == nil {
			t.Fatalf("%s: no model: %s", name, dump(diags))
		}
		if ref == nil {
			ref, refName = res.Model, name
			continue
		}
		if !reflect.DeepEqual(ref, res.Model) {
			t.Errorf("model of %q differs from model of %q:\n%+v\n%+v", name, refName, res.Model, ref)
		}
	}
}

// TestQuickstartOrderIndependence reshuffles the quickstart's blocks across
// files and compares with the model Load gives.
func TestQuickstartOrderIndependence(t *testing.T) {
	want, diags := Load(quickstartDir)
	if diags.HasErrors() {
		t.Fatal(dump(diags))
	}
	var blocks []string
	entries, err := os.ReadDir(quickstartDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if filepath.Ext(e.Name()) != ".hcl" {
			continue // quickstart.go and seed.sql are for gatehouse dev
		}
		data, err := os.ReadFile(filepath.Join(quickstartDir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		f, diags := hclsyntax.ParseConfig(data, e.Name(), hcl.InitialPos)
		if diags.HasErrors() {
			t.Fatal(dump(diags))
		}
		for _, b := range f.Body.(*hclsyntax.Body).Blocks {
			blocks = append(blocks, string(data[b.Range().Start.Byte:b.Range().End.Byte]))
		}
	}
	if len(blocks) < 40 {
		t.Fatalf("found %d quickstart blocks", len(blocks))
	}
	reversed := make(map[string]string)
	interleaved := make(map[string]string)
	for i := len(blocks) - 1; i >= 0; i-- {
		reversed[fmt.Sprintf("part%d.hcl", i*2/len(blocks))] += blocks[i] + "\n\n"
		interleaved[fmt.Sprintf("%c.hcl", 'a'+i%3)] += blocks[i] + "\n\n"
	}
	for name, files := range map[string]map[string]string{"reversed halves": reversed, "interleaved thirds": interleaved} {
		t.Run(name, func(t *testing.T) {
			res, _ := checkDiags(t, files, nil)
			if !reflect.DeepEqual(want.Model, res.Model) {
				t.Errorf("model differs from the quickstart's")
			}
		})
	}
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func TestWriteDiagnostics(t *testing.T) {
	src := celPolicy(`  rule "r" {
    effect = "allow"
    when   = "identity.grups.size() > 0"
    reason = "x"
  }
`)
	res, diags := LoadFiles(map[string][]byte{"base.hcl": []byte(baseHCL), "policy.hcl": []byte(src)})
	if len(diags) != 1 {
		t.Fatalf("want one diagnostic:\n%s", dump(diags))
	}
	var buf bytes.Buffer
	if err := WriteDiagnostics(&buf, res.Files, diags); err != nil {
		t.Fatal(err)
	}
	start, _ := locate(t, src, "grups")
	srcLine := strings.Split(src, "\n")[start.Line-1]
	want := []string{
		fmt.Sprintf(`policy.hcl:%d:%d: error: CEL type error: undefined field 'grups' (in when of rule "r" of policy "p")`, start.Line, start.Column),
		fmt.Sprintf("%5d | %s", start.Line, srcLine),
		"      | " + strings.Repeat(" ", start.Column-1) + "^^^^^",
	}
	got := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if !reflect.DeepEqual(got, want) {
		t.Errorf("WriteDiagnostics wrote\n%s\nwant\n%s", buf.String(), strings.Join(want, "\n"))
	}
	// celPolicy puts the when attribute on line 6, its string at column 14.
	if !strings.HasPrefix(got[0], "policy.hcl:7:24: error: CEL type error: undefined field 'grups'") {
		t.Errorf("first line %q, want policy.hcl:7:24", got[0])
	}
	// The caret sits under the typo.
	if i := strings.Index(got[2], "^"); got[1][i:i+5] != "grups" {
		t.Errorf("carets are under %q, want grups", got[1][i:i+5])
	}
}

func TestWriteDiagnosticsWithoutSubject(t *testing.T) {
	var buf bytes.Buffer
	diags := hcl.Diagnostics{
		{Severity: hcl.DiagError, Summary: "No policy files", Detail: "dir contains no *.hcl files"},
		{Severity: hcl.DiagWarning, Summary: "Careful"},
	}
	if err := WriteDiagnostics(&buf, nil, diags); err != nil {
		t.Fatal(err)
	}
	want := "error: No policy files: dir contains no *.hcl files\nwarning: Careful\n"
	if buf.String() != want {
		t.Errorf("got %q, want %q", buf.String(), want)
	}
}

func TestWriteDiagnosticsHCLError(t *testing.T) {
	src := "policy \"p\" {\n\tresource = [\"orders\"]\n}\n"
	res, diags := LoadFiles(map[string][]byte{"t.hcl": []byte(src)})
	var buf bytes.Buffer
	if err := WriteDiagnostics(&buf, res.Files, diags); err != nil {
		t.Fatal(err)
	}
	// Tabs are shown as one space, so the caret stays under the token.
	want := "t.hcl:2:2: error: Unsupported argument: An argument named \"resource\" is not expected here. Did you mean \"resources\"?\n" +
		"    2 |  resource = [\"orders\"]\n" +
		"      |  ^^^^^^^^\n"
	if buf.String() != want {
		t.Errorf("got\n%s\nwant\n%s", buf.String(), want)
	}
}

// TestWriteDiagnosticsHidesInlineSecrets: the diagnostic for a secret
// written inline points at it but never prints the source line, which is
// the secret.
func TestWriteDiagnosticsHidesInlineSecrets(t *testing.T) {
	src := "postgres \"db\" {\n  address  = \"db:5432\"\n  database = \"db\"\n  username = \"gw\"\n  password = \"hunter2-SUPERSECRET\"\n}\n"
	res, diags := LoadFiles(map[string][]byte{"s.hcl": []byte(src)})
	if !diags.HasErrors() {
		t.Fatal("an inline secret was accepted")
	}
	var b strings.Builder
	if err := WriteDiagnostics(&b, res.Files, diags); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	if strings.Contains(out, "hunter2") {
		t.Errorf("diagnostics print the secret:\n%s", out)
	}
	if !strings.Contains(out, "s.hcl:5:14: error: Secret written inline") {
		t.Errorf("diagnostics do not point at the secret:\n%s", out)
	}
}

// TestKubernetesMask: a mask of Kubernetes object fields loads, its fields
// are kept in canonical order, its unless reads the Kubernetes request, and
// a policy test asserts its targets.
func TestKubernetesMask(t *testing.T) {
	src := kubeCluster + `policy "read" {
  resources = ["k8s"]
  everyone  = true
  rule "get" {
    effect = "allow"
    when   = "request.verb == 'get'"
    reason = "anyone may read"
  }
}

mask "secret-values" {
  resources = ["k8s"]
  fields    = ["secrets/stringData", "secrets/data"]
  method    = "redact"
  unless    = "'secret-admins' in identity.groups || request.namespace == 'sandbox'"
}

test "secrets are redacted" {
  identity     = "svc"
  resource     = "k8s"
  request      = { kind = "api", verb = "get", resource = "secrets", namespace = "prod" }
  expect       = "allow"
  expect_masks = { "kubernetes:secrets/data" = "redact", "kubernetes:secrets/stringData" = "redact" }
}

test "secret admins see values" {
  identity     = "svc"
  groups       = ["secret-admins"]
  resource     = "k8s"
  request      = { kind = "api", verb = "get", resource = "secrets", namespace = "prod" }
  expect       = "allow"
  expect_masks = {}
}
`
	res, _ := checkDiags(t, withBase(src), nil)
	var mk *bundle.Mask
	for i := range res.Model.Masks {
		if res.Model.Masks[i].Name == "secret-values" {
			mk = &res.Model.Masks[i]
		}
	}
	if mk == nil || !reflect.DeepEqual(mk.Fields, []string{"secrets/data", "secrets/stringData"}) || mk.Columns != nil || mk.Detectors != nil {
		t.Fatalf("mask %+v, want fields [secrets/data secrets/stringData] only", mk)
	}
	for _, r := range res.Policy.RunTests() {
		if !r.Passed {
			t.Errorf("test %q failed: %q", r.Name, r.Failures)
		}
	}
}
