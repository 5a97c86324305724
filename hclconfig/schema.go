package hclconfig

import "github.com/hashicorp/hcl/v2"

// The schemas below are the HCL spelling of the model in package bundle. The
// Terraform provider uses the same names; keep them in step.

var topSchema = &hcl.BodySchema{Blocks: []hcl.BlockHeaderSchema{
	{Type: "identity_provider", LabelNames: []string{"name"}},
	{Type: "identity", LabelNames: []string{"name"}},
	{Type: "postgres", LabelNames: []string{"name"}},
	{Type: "ssh_host", LabelNames: []string{"name"}},
	{Type: "kubernetes_cluster", LabelNames: []string{"name"}},
	{Type: "policy", LabelNames: []string{"name"}},
	{Type: "mask", LabelNames: []string{"name"}},
	{Type: "test", LabelNames: []string{"name"}},
}}

func attrs(names ...string) []hcl.AttributeSchema {
	out := make([]hcl.AttributeSchema, len(names))
	for i, n := range names {
		out[i] = hcl.AttributeSchema{Name: n}
	}
	return out
}

var (
	identityProviderSchema = &hcl.BodySchema{Attributes: attrs(
		"description", "issuer", "audiences", "groups_claim", "groups_prefix", "jwks_url", "jwks", "algorithms")}
	identitySchema = &hcl.BodySchema{Attributes: attrs(
		"description", "provider", "subject", "match", "groups")}
	postgresSchema = &hcl.BodySchema{
		Attributes: attrs("description", "labels", "address", "database", "username", "password", "deny_unresolved_columns"),
		Blocks:     []hcl.BlockHeaderSchema{{Type: "tls"}},
	}
	tlsSchema     = &hcl.BodySchema{Attributes: attrs("mode", "ca_file", "server_name")}
	sshHostSchema = &hcl.BodySchema{Attributes: attrs(
		"description", "labels", "address", "user", "host_key", "private_key", "password")}
	kubernetesSchema = &hcl.BodySchema{Attributes: attrs(
		"description", "labels", "server", "kubeconfig", "token", "ca_file", "impersonate")}
	policySchema = &hcl.BodySchema{
		Attributes: attrs("description", "resources", "identities", "groups", "everyone"),
		Blocks:     []hcl.BlockHeaderSchema{{Type: "rule", LabelNames: []string{"name"}}},
	}
	ruleSchema = &hcl.BodySchema{
		Attributes: attrs("effect", "when", "reason", "on"),
		Blocks:     []hcl.BlockHeaderSchema{{Type: "approval"}},
	}
	approvalSchema = &hcl.BodySchema{Attributes: attrs("groups", "count", "timeout", "hold", "wait", "valid_for", "reusable"),
		Blocks: []hcl.BlockHeaderSchema{{Type: "webhook"}}}
	webhookSchema = &hcl.BodySchema{Attributes: attrs("url", "secret")}
	maskSchema    = &hcl.BodySchema{Attributes: attrs(
		"description", "resources", "columns", "detectors", "method", "hash_key", "unless")}
	testSchema = &hcl.BodySchema{Attributes: attrs(
		"description", "identity", "provider", "subject", "groups", "claims", "resource", "sql", "request",
		"now", "expect", "expect_rules", "expect_masks")}
)
