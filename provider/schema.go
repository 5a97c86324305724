package provider

import (
	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-go/tftypes"
)

// The Terraform spelling of the policy model. Every object is a resource
// whose attributes have the names of the HCL attributes (and of the model's
// JSON fields): hclconfig/schema.go is the HCL side. Blocks that carry a
// label in HCL (`rule "read" {}`) carry a `name` attribute here, since
// Terraform's nested blocks have no labels, and HCL's `provider` is
// `identity_provider`, since Terraform reserves `provider` in every
// resource and data source.

type attrKind int

const (
	aString attrKind = iota
	aStrings
	aStringMap
	aBool
	aInt
)

type attrSpec struct {
	name     string
	kind     attrKind
	required bool
	desc     string
}

type blockSpec struct {
	name   string
	list   bool // a list of blocks (rule); otherwise at most one (tls, approval)
	desc   string
	attrs  []attrSpec
	blocks []blockSpec
}

// kindSpec is one object kind of the model.
type kindSpec struct {
	// kind is the HCL block name and the model's kind ("policy").
	kind string
	// typeSuffix makes the resource type gatehouse_<typeSuffix>.
	typeSuffix string
	desc       string
	attrs      []attrSpec // besides name
	blocks     []blockSpec
}

const (
	refDesc = " A credential *reference*, never a value: `env:NAME` (an environment variable of the gateway), " +
		"`file:/path` (a file on the gateway host) or `k8s:namespace/secret#key` (a Kubernetes Secret). The gateway " +
		"resolves it at run time; the value never enters the bundle or Terraform state."
	celDesc      = " A CEL expression (see docs/policy-language.md for the variables and their types); type errors are reported at plan time with the line and column inside the expression."
	labelsDesc   = "Labels for policies to match on (`resource.labels.env == 'prod'`)."
	resourceDesc = "Names of the resources it applies to."
)

var kinds = []kindSpec{
	{
		kind: "identity_provider", typeSuffix: "identity_provider",
		desc: "A trusted OIDC issuer. Callers' tokens are verified against it: signature (keys from discovery, or a static JWKS), issuer, audience, expiry.",
		attrs: []attrSpec{
			{name: "description", desc: "What it is, for people."},
			{name: "issuer", required: true, desc: "The issuer URL, exactly as tokens carry it in `iss`. HTTPS, or http on a loopback address for development."},
			{name: "audiences", kind: aStrings, required: true, desc: "Accepted `aud` values. A token minted for another service is refused."},
			{name: "groups_claim", desc: "The token claim holding the caller's groups. Default `groups`."},
			{name: "groups_prefix", desc: "Put before every group this provider's tokens carry (`github:`), so one issuer cannot grant another's groups."},
			{name: "jwks_url", desc: "Overrides the `jwks_uri` from discovery."},
			{name: "jwks", desc: "A static JSON Web Key Set; when set, discovery is not used."},
			{name: "algorithms", kind: aStrings, desc: "Accepted signature algorithms. Default `RS256` and `ES256`; `none` and HMAC are never accepted."},
		},
	},
	{
		kind: "identity", typeSuffix: "identity",
		desc: "A named service principal: the tokens of one provider with a given subject, or those a CEL predicate over the verified token matches.",
		attrs: []attrSpec{
			{name: "description", desc: "What it is, for people."},
			{name: "identity_provider", required: true, desc: "The `gatehouse_identity_provider` that vouches for it (its name). `provider` in HCL: the name is Terraform's own here."},
			{name: "subject", desc: "The exact `sub` of its tokens. Exactly one of `subject` and `match`."},
			{name: "match", desc: "A CEL predicate over the verified token (`identity.subject`, `identity.claims`, `identity.groups`)." + celDesc},
			{name: "groups", kind: aStrings, desc: "Groups added to those its tokens carry."},
		},
	},
	{
		kind: "postgres", typeSuffix: "postgres",
		desc: "A PostgreSQL database reached through the gateway. Callers select it by using its name as the database name.",
		attrs: []attrSpec{
			{name: "description", desc: "What it is, for people."},
			{name: "labels", kind: aStringMap, desc: labelsDesc},
			{name: "address", required: true, desc: "`host:port` of the upstream server."},
			{name: "database", required: true, desc: "The upstream database name."},
			{name: "username", required: true, desc: "The upstream role the gateway logs in as."},
			{name: "password", desc: "The upstream password." + refDesc},
			{name: "deny_unresolved_columns", kind: aBool, desc: "Deprecated; no effect. Masks follow each result column's lineage, decided before a statement runs."},
			{name: "idle_timeout", desc: "End a session its caller has not used for this long (`30m`; `0`: never; default `1h`)."},
			{name: "admins", desc: "Who administers the database: a CEL predicate over the caller (`'dba' in identity.groups`). Other sessions' SQL (`pg_stat_activity`, `pg_stat_statements`) is hidden from everyone else." + celDesc},
		},
		blocks: []blockSpec{{name: "tls", desc: "How the gateway connects upstream.", attrs: []attrSpec{
			{name: "mode", desc: "`disable`, `require`, `verify-ca` or `verify-full`."},
			{name: "ca_file", desc: "A CA bundle on the gateway host that the server's certificate must chain to."},
			{name: "server_name", desc: "The name verified in the server's certificate, when not the address's host."},
			{name: "cert_file", desc: "The gateway's client certificate (PEM, a path on the gateway host), for databases that authenticate it by certificate."},
			{name: "key", desc: "The client certificate's private key." + refDesc},
		}}, {name: "upstream_roles", desc: "Run each caller's session as a database role mapped from its identity, so that database grants apply on top of policy and `pg_stat_activity` tells callers apart.", attrs: []attrSpec{
			{name: "method", desc: "`set_role` (default: `SET ROLE` after the gateway logs in; its login role must be a member of each role), `set_session_authorization` (the login role must be a superuser) or `login` (the gateway logs in as the role, with its client certificate mapped to the roles by `pg_ident.conf`; each session then shows under its own role in `pg_stat_activity`)."},
			{name: "identities", kind: aStringMap, desc: "Roles by identity name."},
			{name: "groups", kind: aStringMap, desc: "Roles by group, for callers no identity entry maps (the first of the caller's groups, in sorted order, that is mapped)."},
			{name: "default", desc: "The role of callers nothing else maps; unset, they are refused at connect."},
		}}},
	},
	{
		kind: "ssh_host", typeSuffix: "ssh_host",
		desc: "An OpenSSH server reached through the gateway. Callers select it by using its name as the SSH user name.",
		attrs: []attrSpec{
			{name: "description", desc: "What it is, for people."},
			{name: "labels", kind: aStringMap, desc: labelsDesc},
			{name: "address", required: true, desc: "`host:port` of the upstream server."},
			{name: "user", required: true, desc: "The upstream login."},
			{name: "host_key", required: true, desc: "The upstream host key, in `authorized_keys` format; the gateway refuses any other."},
			{name: "private_key", desc: "The upstream login key." + refDesc},
			{name: "password", desc: "The upstream password." + refDesc},
			{name: "idle_timeout", desc: "End a session its caller has not used for this long (`30m`; `0`: never; default `1h`)."},
		},
	},
	{
		kind: "kubernetes_cluster", typeSuffix: "kubernetes_cluster",
		desc: "A Kubernetes API server reached through the gateway.",
		attrs: []attrSpec{
			{name: "description", desc: "What it is, for people."},
			{name: "labels", kind: aStringMap, desc: labelsDesc},
			{name: "server", desc: "The API server URL; optional when `kubeconfig` names one."},
			{name: "kubeconfig", desc: "A kubeconfig file." + refDesc},
			{name: "token", desc: "A bearer token." + refDesc},
			{name: "ca_file", desc: "A CA bundle on the gateway host."},
			{name: "impersonate", kind: aBool, desc: "Impersonate the caller's identity and groups upstream."},
			{name: "idle_timeout", desc: "End a session its caller has not used for this long (`30m`; `0`: never; default `1h`)."},
		},
	},
	{
		kind: "policy", typeSuffix: "policy",
		desc: "Rules for a set of callers on a set of resources of one kind. Deny by default; a matching deny wins, then review, then allow.",
		attrs: []attrSpec{
			{name: "description", desc: "What it is for, for people."},
			{name: "resources", kind: aStrings, required: true, desc: resourceDesc + " All of one kind, so that `request` has one type in every rule."},
			{name: "identities", kind: aStrings, desc: "Identities it covers (by name)."},
			{name: "groups", kind: aStrings, desc: "Groups it covers."},
			{name: "everyone", kind: aBool, desc: "Covers every authenticated caller. Must be said explicitly: an empty `identities` or `groups` never means everyone."},
		},
		blocks: []blockSpec{{name: "rule", list: true, desc: "A rule, in order.", attrs: []attrSpec{
			{name: "name", required: true, desc: "The rule's name, unique in the policy; decisions name rules as `policy/rule`."},
			{name: "effect", required: true, desc: "`allow`, `deny` or `review`."},
			{name: "when", desc: "When the rule applies; empty means always." + celDesc},
			{name: "reason", required: true, desc: "Shown to the caller and recorded."},
			{name: "on", kind: aStrings, desc: "Request kinds it applies to (postgres: `connect`, `query`, `function_call`; ssh_host: `connect`, `exec`, `shell`, `subsystem`, `forward`, `pty`, `env`, `x11`, `agent`, `remote_forward`; kubernetes_cluster: `api`); default all."},
		}, blocks: []blockSpec{{name: "approval", desc: "Who approves a `review` rule's requests. Required on, and only allowed on, review rules.", attrs: []attrSpec{
			{name: "groups", kind: aStrings, required: true, desc: "Approvers' groups."},
			{name: "count", kind: aInt, desc: "Distinct approvals needed, 1 to 10. Default 1."},
			{name: "timeout", desc: "How long approvers have to decide (a Go duration, at most 24h); an undecided request then expires. Default `15m`."},
			{name: "hold", kind: aBool, desc: "Hold the caller's statement in its session while approvers act (the default). `false` fails the statement at once with the approval's id; the same statement retried after approval passes."},
			{name: "wait", desc: "How long a held statement waits, at most `timeout` (the default). When it runs out, the request stays open and a retry after approval passes."},
			{name: "valid_for", desc: "How long an approval may be used once given (a Go duration). Default `15m`."},
			{name: "reusable", kind: aBool, desc: "Let one approval release the same statement any number of times while valid. By default an approval is used once."},
		}, blocks: []blockSpec{{name: "webhook", desc: "Where to post approval events (opened, approved, denied, expired, cancelled) as JSON with a Slack-compatible `text` field. Delivery retries with backoff and never delays a statement.", attrs: []attrSpec{
			{name: "url", required: true, desc: "An http or https URL, or a secret reference to one (`env:SLACK_WEBHOOK_URL`): a Slack webhook's URL is itself a secret."},
			{name: "secret", desc: "When set, each delivery carries `X-Gatehouse-Signature: sha256=<HMAC-SHA256 of the body>` keyed with it." + refDesc},
		}}}}}}},
	},
	{
		kind: "mask", typeSuffix: "mask",
		desc: "Hides values in responses: column values in PostgreSQL results, by the column's origin (aliases do not escape it), " +
			"or fields of Kubernetes objects in API responses (a Secret's `data`). A mask applies to resources of one kind: " +
			"`columns` and `detectors` for `gatehouse_postgres`, `fields` for `gatehouse_kubernetes_cluster`.",
		attrs: []attrSpec{
			{name: "description", desc: "What it protects, for people."},
			{name: "resources", kind: aStrings, required: true, desc: resourceDesc + " All `gatehouse_postgres` or all `gatehouse_kubernetes_cluster`."},
			{name: "columns", kind: aStrings, desc: "PostgreSQL masks: `schema.table.column` (or `table.column`, in `public`)."},
			{name: "detectors", kind: aStrings, desc: "PostgreSQL masks: mask any text value that looks like this kind of data: `email`, `card_number`, `iban`, `phone`, `us_ssn`."},
			{name: "fields", kind: aStrings, desc: "Kubernetes masks (required on them): the object fields to hide, each `RESOURCE[.GROUP]/PATH`: `secrets/data`, " +
				"`secrets/stringData`, `configmaps/data`, `widgets.example.com/spec.password`. `RESOURCE` is the plural lower-case resource name " +
				"as in the API path, `GROUP` its API group (left out for the core group), `PATH` a dotted path of keys from the object's root. " +
				"When the value there is an object (a Secret's `data`), every value in it is masked; when it is a string, the string is."},
			{name: "method", required: true, desc: "`redact`, `partial`, `hash` or `null`."},
			{name: "hash_key", desc: "The HMAC key of the `hash` method." + refDesc},
			{name: "unless", desc: "When true, the mask does not apply (`'pci' in identity.groups`); it sees the `request` of its resources' kind (`request.namespace` on Kubernetes)." + celDesc},
			{name: "allow_in_predicates", kind: aBool, desc: "PostgreSQL masks: let statements filter, join, sort, group and compute on the masked columns. Off by default: each such use answers a question about the values (`WHERE card LIKE '4111%'`), and enough questions reveal them."},
		},
	},
	{
		kind: "test", typeSuffix: "policy_test",
		desc: "A policy test: a caller, a resource and a request, with the decision the policy must reach. `gatehouse_bundle` runs every test it is given and refuses to publish when one fails.",
		attrs: []attrSpec{
			{name: "description", desc: "What it checks, for people."},
			{name: "identity", desc: "The identity calling; its provider and subject are used unless given."},
			{name: "identity_provider", desc: "The identity provider of an ad-hoc caller. `provider` in HCL: the name is Terraform's own here."},
			{name: "subject", desc: "The caller's token subject."},
			{name: "groups", kind: aStrings, desc: "Groups the caller's token carries."},
			{name: "claims", desc: "Extra token claims, as a JSON object: `jsonencode({ env = \"prod\" })`."},
			{name: "resource", required: true, desc: "The resource called."},
			{name: "sql", desc: "A PostgreSQL query. Exactly one of `sql` and `request`."},
			{name: "request", desc: "The request as a JSON object: `jsonencode({ kind = \"connect\" })`."},
			{name: "now", desc: "The evaluation time, RFC 3339. Default: when the test runs."},
			{name: "expect", required: true, desc: "The expected effect: `allow`, `deny` or `review`."},
			{name: "expect_rules", kind: aStrings, desc: "The exact set of rules (`policy/rule`) that must match; `[]` asserts none, unset is not checked."},
			{name: "expect_masks", kind: aStringMap, desc: "The exact masks (column, `detector:NAME` or `kubernetes:RESOURCE[.GROUP]/PATH` to method); `{}` asserts none, unset is not checked."},
		},
	},
}

func kindByType(suffix string) *kindSpec {
	for i := range kinds {
		if kinds[i].typeSuffix == suffix {
			return &kinds[i]
		}
	}
	return nil
}

func kindByName(kind string) *kindSpec {
	for i := range kinds {
		if kinds[i].kind == kind {
			return &kinds[i]
		}
	}
	return nil
}

func attrType(k attrKind) attr.Type {
	switch k {
	case aStrings:
		return types.ListType{ElemType: types.StringType}
	case aStringMap:
		return types.MapType{ElemType: types.StringType}
	case aBool:
		return types.BoolType
	case aInt:
		return types.Int64Type
	}
	return types.StringType
}

func resourceAttribute(a attrSpec) schema.Attribute {
	md := a.desc
	switch a.kind {
	case aStrings:
		return schema.ListAttribute{ElementType: types.StringType, Required: a.required, Optional: !a.required, MarkdownDescription: md}
	case aStringMap:
		return schema.MapAttribute{ElementType: types.StringType, Required: a.required, Optional: !a.required, MarkdownDescription: md}
	case aBool:
		return schema.BoolAttribute{Required: a.required, Optional: !a.required, MarkdownDescription: md}
	case aInt:
		return schema.Int64Attribute{Required: a.required, Optional: !a.required, MarkdownDescription: md}
	}
	return schema.StringAttribute{Required: a.required, Optional: !a.required, MarkdownDescription: md}
}

func resourceBlock(b blockSpec) schema.Block {
	attrs := map[string]schema.Attribute{}
	for _, a := range b.attrs {
		if !b.list {
			// The framework checks required attributes of a single block
			// even when the block is absent; the model's validation says
			// what an approval block that is there must hold.
			a.required = false
		}
		attrs[a.name] = resourceAttribute(a)
	}
	blocks := map[string]schema.Block{}
	for _, nb := range b.blocks {
		blocks[nb.name] = resourceBlock(nb)
	}
	if b.list {
		return schema.ListNestedBlock{MarkdownDescription: b.desc, NestedObject: schema.NestedBlockObject{Attributes: attrs, Blocks: blocks}}
	}
	return schema.SingleNestedBlock{MarkdownDescription: b.desc, Attributes: attrs, Blocks: blocks}
}

// resourceSchema is the schema of an object resource: name (a change
// replaces the object), the kind's attributes and blocks, and the computed
// id and spec.
func (k *kindSpec) resourceSchema() schema.Schema {
	attrs := map[string]schema.Attribute{
		"name": schema.StringAttribute{Required: true, MarkdownDescription: "The object's name, unique among objects of its kind (resources: among all resources). Changing it replaces the object.",
			PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplace()}},
		"id": schema.StringAttribute{Computed: true, MarkdownDescription: "The name.",
			PlanModifiers: []planmodifier.String{stringplanmodifier.UseStateForUnknown()}},
		"spec": schema.StringAttribute{Computed: true, MarkdownDescription: "The object as the bundle holds it (canonical JSON). Give it to `gatehouse_bundle.objects`; modules can output it."},
	}
	for _, a := range k.attrs {
		attrs[a.name] = resourceAttribute(a)
	}
	blocks := map[string]schema.Block{}
	for _, b := range k.blocks {
		blocks[b.name] = resourceBlock(b)
	}
	return schema.Schema{MarkdownDescription: k.desc, Attributes: attrs, Blocks: blocks}
}

// objectType is the tftypes type of an object resource's state.
func (k *kindSpec) objectType() tftypes.Object {
	t := blockType(blockSpec{attrs: k.attrs, blocks: k.blocks})
	t.AttributeTypes["name"] = tftypes.String
	t.AttributeTypes["id"] = tftypes.String
	t.AttributeTypes["spec"] = tftypes.String
	return t
}

func blockType(b blockSpec) tftypes.Object {
	at := map[string]tftypes.Type{}
	for _, a := range b.attrs {
		at[a.name] = attrType(a.kind).TerraformType(nil)
	}
	for _, nb := range b.blocks {
		t := blockType(nb)
		if nb.list {
			at[nb.name] = tftypes.List{ElementType: t}
		} else {
			at[nb.name] = t
		}
	}
	return tftypes.Object{AttributeTypes: at}
}
