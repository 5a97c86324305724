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
		Attributes: attrs("description", "labels", "address", "database", "username", "password", "deny_unresolved_columns", "admins", "idle_timeout"),
		Blocks:     []hcl.BlockHeaderSchema{{Type: "tls"}, {Type: "upstream_roles"}},
	}
	tlsSchema           = &hcl.BodySchema{Attributes: attrs("mode", "ca_file", "server_name", "cert_file", "key")}
	upstreamRolesSchema = &hcl.BodySchema{Attributes: attrs("method", "identities", "groups", "default")}
	sshHostSchema       = &hcl.BodySchema{Attributes: attrs(
		"description", "labels", "address", "user", "host_key", "private_key", "password", "idle_timeout")}
	kubernetesSchema = &hcl.BodySchema{Attributes: attrs(
		"description", "labels", "server", "kubeconfig", "token", "ca_file", "impersonate", "idle_timeout")}
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
		"description", "resources", "columns", "detectors", "fields", "method", "hash_key", "unless", "allow_in_predicates")}
	testSchema = &hcl.BodySchema{Attributes: attrs(
		"description", "identity", "provider", "subject", "groups", "claims", "resource", "sql", "request",
		"now", "expect", "expect_rules", "expect_masks")}
)

// Fields lists the attributes and nested blocks of every block of the HCL
// spelling, keyed by the block's path ("policy", "policy.rule",
// "postgres.tls"); a block's label counts as its "name". The provider's
// tests compare it with the Terraform schema and the model's JSON fields,
// so that a field added to one front end and not the other fails a test.
func Fields() map[string][]string {
	out := map[string][]string{}
	var walk func(path string, s *hcl.BodySchema, labelled bool)
	walk = func(path string, s *hcl.BodySchema, labelled bool) {
		var names []string
		if labelled {
			names = append(names, "name")
		}
		for _, a := range s.Attributes {
			names = append(names, a.Name)
		}
		for _, b := range s.Blocks {
			names = append(names, b.Type)
			walk(path+"."+b.Type, blockSchemas[path+"."+b.Type], len(b.LabelNames) > 0)
		}
		out[path] = names
	}
	for _, b := range topSchema.Blocks {
		walk(b.Type, blockSchemas[b.Type], true)
	}
	return out
}

// blockSchemas are the schemas by block path.
var blockSchemas = map[string]*hcl.BodySchema{
	"identity_provider":            identityProviderSchema,
	"identity":                     identitySchema,
	"postgres":                     postgresSchema,
	"postgres.tls":                 tlsSchema,
	"postgres.upstream_roles":      upstreamRolesSchema,
	"ssh_host":                     sshHostSchema,
	"kubernetes_cluster":           kubernetesSchema,
	"policy":                       policySchema,
	"policy.rule":                  ruleSchema,
	"policy.rule.approval":         approvalSchema,
	"policy.rule.approval.webhook": webhookSchema,
	"mask":                         maskSchema,
	"test":                         testSchema,
}
