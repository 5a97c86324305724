// Package bundle holds Gatehouse's policy model, its canonical encoding, and the
// signed envelope that carries it from a pull request to the gateway.
//
// The model is the single contract between the front ends (plain HCL in
// hclconfig, Terraform in provider) and the runtime (celpolicy, gateway). Both
// front ends must produce byte-identical payloads for the same policy, so every
// list here is either sorted by name (top-level objects) or kept in declaration
// order where order is part of the source (rules inside a policy), and every
// optional field is omitted when empty rather than written as a zero value.
//
// This package is a leaf: it imports nothing else from Gatehouse.
package bundle

import (
	"slices"
	"time"
)

// SchemaVersion is the payload schema this build writes and the only one it
// accepts. A gateway refuses a bundle with any other value rather than guessing
// at fields it does not understand.
const SchemaVersion = 1

// Payload is the signed content of a bundle.
type Payload struct {
	// SchemaVersion is always SchemaVersion for bundles this build writes.
	SchemaVersion int `json:"schema_version"`
	// Revision orders bundles: a gateway only ever moves to a higher revision,
	// which is what makes rollback of a signed-but-superseded bundle impossible.
	Revision uint64 `json:"revision"`
	// CreatedAt is RFC 3339 UTC, seconds precision. It honours SOURCE_DATE_EPOCH
	// so that builds are reproducible.
	CreatedAt string `json:"created_at"`
	// Compiler names the gatehouse build that compiled the payload.
	Compiler string `json:"compiler"`
	// Model is the policy itself.
	Model Model `json:"model"`
}

// Model is every policy object of a bundle. Top-level lists are sorted by name.
type Model struct {
	IdentityProviders  []IdentityProvider  `json:"identity_providers,omitempty"`
	Identities         []Identity          `json:"identities,omitempty"`
	Postgres           []Postgres          `json:"postgres,omitempty"`
	SSHHosts           []SSHHost           `json:"ssh_hosts,omitempty"`
	KubernetesClusters []KubernetesCluster `json:"kubernetes_clusters,omitempty"`
	Policies           []Policy            `json:"policies,omitempty"`
	Masks              []Mask              `json:"masks,omitempty"`
	Tests              []Test              `json:"tests,omitempty"`
}

// IdentityProvider is a trusted OIDC issuer.
type IdentityProvider struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// Issuer is the exact `iss` value; discovery is done against it.
	Issuer string `json:"issuer"`
	// Audiences lists the accepted `aud` values. At least one is required:
	// a token minted for another service must not open a session here.
	Audiences []string `json:"audiences"`
	// GroupsClaim names the claim that carries group names. Default "groups".
	GroupsClaim string `json:"groups_claim,omitempty"`
	// GroupsPrefix is put before every group this provider's tokens carry
	// ("github:" makes a token's "dba" the group "github:dba"), so that when
	// several issuers are trusted, one cannot grant another's groups.
	GroupsPrefix string `json:"groups_prefix,omitempty"`
	// JWKSURL overrides the jwks_uri from discovery.
	JWKSURL string `json:"jwks_url,omitempty"`
	// JWKS is a static JSON Web Key Set. When set, discovery is not used.
	JWKS string `json:"jwks,omitempty"`
	// Algorithms pins the accepted signature algorithms. Empty means the
	// gateway default (RS256, ES256).
	Algorithms []string `json:"algorithms,omitempty"`
}

// Identity is a named service principal.
type Identity struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// Provider names the IdentityProvider that vouches for it.
	Provider string `json:"provider"`
	// Subject matches the token's `sub` exactly. Exactly one of Subject and
	// Match is set.
	Subject string `json:"subject,omitempty"`
	// Match is a CEL predicate over the verified token (`identity`).
	Match string `json:"match,omitempty"`
	// Groups are added to the groups the token carries.
	Groups []string `json:"groups,omitempty"`
}

// Resource kinds. They are also the HCL block names.
const (
	KindPostgres   = "postgres"
	KindSSHHost    = "ssh_host"
	KindKubernetes = "kubernetes_cluster"
)

// TLS configures how the gateway connects to an upstream.
type TLS struct {
	// Mode is one of disable, require, verify-ca, verify-full.
	Mode string `json:"mode,omitempty"`
	// CAFile is a path on the gateway host. Not a secret.
	CAFile string `json:"ca_file,omitempty"`
	// ServerName overrides the name verified in the certificate.
	ServerName string `json:"server_name,omitempty"`
	// CertFile is the gateway's client certificate (PEM, a path on the
	// gateway host), for databases that authenticate it by certificate.
	CertFile string `json:"cert_file,omitempty"`
	// Key is a secret reference to the client certificate's private key.
	Key string `json:"key,omitempty"`
}

// Postgres is a PostgreSQL database reached through the gateway. Callers
// select it by using its Name as the database name.
type Postgres struct {
	Name        string            `json:"name"`
	Description string            `json:"description,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	// Address is host:port of the upstream server.
	Address string `json:"address"`
	// Database is the upstream database name.
	Database string `json:"database"`
	// Username is the upstream role the gateway logs in as.
	Username string `json:"username"`
	// Password is a secret reference (env:, file:, k8s:), never a value.
	Password string `json:"password,omitempty"`
	TLS      *TLS   `json:"tls,omitempty"`
	// DenyUnresolvedColumns is deprecated and has no effect: masks follow
	// each result column's lineage, decided before a statement runs, so a
	// computed column is masked (or the statement refused) without it.
	// Kept so that older configurations still load.
	DenyUnresolvedColumns bool `json:"deny_unresolved_columns,omitempty"`
	// IdleTimeout ends a session its caller has not used for this long
	// ("30m"; "0" never; default 1h).
	IdleTimeout string `json:"idle_timeout,omitempty"`
	// Admins is a CEL predicate over the caller (identity) that holds for
	// the resource's administrators. Other sessions' SQL (in
	// pg_stat_activity, pg_stat_statements) is hidden from everyone else.
	// Empty: nobody is an administrator.
	Admins string `json:"admins,omitempty"`
	// UpstreamRoles, when set, runs each caller's session as a database
	// role mapped from its identity, so that database grants apply on top
	// of policy.
	UpstreamRoles *UpstreamRoles `json:"upstream_roles,omitempty"`
}

// UpstreamRolesOrNil is the resource's role mapping; nil for a nil
// resource or none configured.
func (p *Postgres) UpstreamRolesOrNil() *UpstreamRoles {
	if p == nil {
		return nil
	}
	return p.UpstreamRoles
}

// UpstreamRoles maps callers to database roles.
type UpstreamRoles struct {
	// Method is how the session takes the role: "set_role" (SET ROLE after
	// the gateway logs in; the login role must be a member of each role),
	// "set_session_authorization" (the login role must be a superuser),
	// or "login" (the gateway logs in as the role itself, with its own
	// credential: a client certificate the database maps to the roles,
	// pg_ident.conf). Default set_role.
	Method string `json:"method,omitempty"`
	// Identities maps identity names to roles.
	Identities map[string]string `json:"identities,omitempty"`
	// Groups maps group names to roles, for callers that no identity
	// entry maps; when several of a caller's groups are mapped, the
	// first in sorted order of group name wins.
	Groups map[string]string `json:"groups,omitempty"`
	// Default is the role of callers nothing else maps. Empty: such
	// callers are refused at connect.
	Default string `json:"default,omitempty"`
}

// The upstream role methods.
const (
	RoleSetRole                 = "set_role"
	RoleSetSessionAuthorization = "set_session_authorization"
	RoleLogin                   = "login"
)

// Role returns the role a caller runs as, and false when none is mapped.
func (u *UpstreamRoles) Role(identity string, groups []string) (string, bool) {
	if r, ok := u.Identities[identity]; ok && identity != "" {
		return r, true
	}
	sorted := slices.Clone(groups)
	slices.Sort(sorted)
	for _, g := range sorted {
		if r, ok := u.Groups[g]; ok {
			return r, true
		}
	}
	if u.Default != "" {
		return u.Default, true
	}
	return "", false
}

// MethodOrDefault is Method, or set_role when empty.
func (u *UpstreamRoles) MethodOrDefault() string {
	if u.Method == "" {
		return RoleSetRole
	}
	return u.Method
}

// SSHHost is an OpenSSH server reached through the gateway. Callers select
// it by using its Name as the SSH user name.
type SSHHost struct {
	Name        string            `json:"name"`
	Description string            `json:"description,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Address     string            `json:"address"`
	// User is the upstream login.
	User string `json:"user"`
	// HostKey pins the upstream host key, in authorized_keys format.
	HostKey string `json:"host_key"`
	// PrivateKey is a secret reference to the upstream login key.
	PrivateKey string `json:"private_key,omitempty"`
	// Password is a secret reference to the upstream password.
	Password string `json:"password,omitempty"`
	// IdleTimeout: see Postgres.IdleTimeout.
	IdleTimeout string `json:"idle_timeout,omitempty"`
}

// KubernetesCluster is a Kubernetes API server reached through the gateway.
type KubernetesCluster struct {
	Name        string            `json:"name"`
	Description string            `json:"description,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	// Server is the API server URL. Optional when Kubeconfig names one.
	Server string `json:"server,omitempty"`
	// Kubeconfig is a secret reference to a kubeconfig file.
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// Token is a secret reference to a bearer token.
	Token string `json:"token,omitempty"`
	// CAFile is a path on the gateway host.
	CAFile string `json:"ca_file,omitempty"`
	// Impersonate makes the gateway impersonate the caller's identity and
	// groups upstream.
	Impersonate bool `json:"impersonate,omitempty"`
	// IdleTimeout: see Postgres.IdleTimeout.
	IdleTimeout string `json:"idle_timeout,omitempty"`
}

// Policy covers a set of resources and subjects with rules.
type Policy struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// Resources names the resources the policy covers. They must all be of
	// one kind, so that `request` has one type in every rule.
	Resources []string `json:"resources"`
	// Identities and Groups select callers.
	Identities []string `json:"identities,omitempty"`
	Groups     []string `json:"groups,omitempty"`
	// Everyone makes the policy cover every authenticated caller. It must
	// be said explicitly: an identities or groups list that comes out empty
	// (a Terraform variable, say) must never widen a policy to everyone.
	Everyone bool `json:"everyone,omitempty"`
	// Rules are kept in declaration order.
	Rules []Rule `json:"rules"`
}

// Effect is what a rule does when its condition holds, and what a
// decision says: allow, deny or review.
type Effect string

// Rule effects.
const (
	EffectAllow  Effect = "allow"
	EffectDeny   Effect = "deny"
	EffectReview Effect = "review"
)

// Rank orders effects by how much they let through: deny 0, review 1,
// allow 2 (an unknown effect ranks with deny).
func (e Effect) Rank() int {
	switch e {
	case EffectReview:
		return 1
	case EffectAllow:
		return 2
	}
	return 0
}

// Valid reports whether e is one of the three effects.
func (e Effect) Valid() bool { return e == EffectAllow || e == EffectDeny || e == EffectReview }

// Rule is one allow, deny or review decision with its condition.
type Rule struct {
	Name   string `json:"name"`
	Effect Effect `json:"effect"`
	// When is a CEL boolean expression. Empty means always.
	When string `json:"when,omitempty"`
	// Reason is shown to the caller and recorded. Required: a decision that
	// cannot be explained is not one.
	Reason string `json:"reason"`
	// On restricts the rule to these request kinds (see RequestKinds). Empty
	// means every request kind of the policy's resources.
	On []string `json:"on,omitempty"`
	// Approval is required for, and only allowed on, review rules.
	Approval *Approval `json:"approval,omitempty"`
}

// Approval says who must approve a held request and how long they have.
type Approval struct {
	Groups []string `json:"groups"`
	// Count is how many distinct approvers are needed. Default 1.
	Count int `json:"count,omitempty"`
	// Timeout is how long approvers have to decide, a Go duration ("15m").
	// Default "15m". An undecided request expires after it.
	Timeout string `json:"timeout,omitempty"`
	// Hold keeps the caller's statement waiting in its session while
	// approvers act (the default). false fails the statement at once with
	// the approval's id; the caller retries it once it is approved.
	Hold *bool `json:"hold,omitempty"`
	// Wait is how long a held statement waits, at most Timeout (the
	// default). When it runs out the request stays open until Timeout,
	// and a retry after approval passes.
	Wait string `json:"wait,omitempty"`
	// ValidFor is how long an approval may be used once it is given.
	// Default "15m".
	ValidFor string `json:"valid_for,omitempty"`
	// Reusable lets one approval release the same request any number of
	// times while it is valid; by default it is used once.
	Reusable bool `json:"reusable,omitempty"`
	// Webhook is told when a request opens and when it is settled.
	Webhook *Webhook `json:"webhook,omitempty"`
}

// Holds reports whether the caller's statement waits for the decision.
func (a *Approval) Holds() bool { return a.Hold == nil || *a.Hold }

// Webhook is an HTTP endpoint that receives approval events as JSON.
type Webhook struct {
	// URL is an http or https URL (a Slack incoming webhook works as is).
	URL string `json:"url"`
	// Secret is a secret reference (env:, file:, k8s:); when set, each
	// delivery carries an HMAC-SHA256 of its body keyed with it.
	Secret string `json:"secret,omitempty"`
}

// Mask methods.
const (
	MaskRedact  = "redact"
	MaskPartial = "partial"
	MaskHash    = "hash"
	MaskNull    = "null"
)

// MaskStrength orders mask methods from least to most hiding (partial 1,
// hash 2, redact 3, null 4; 0 for no method). When two masks cover the same
// target, or a value is masked twice, the stronger one wins.
func MaskStrength(method string) int {
	switch method {
	case MaskPartial:
		return 1
	case MaskHash:
		return 2
	case MaskRedact:
		return 3
	case MaskNull:
		return 4
	}
	return 0
}

// Mask hides values in responses: column values in PostgreSQL results, or
// fields of Kubernetes objects in API responses.
type Mask struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// Resources names the resources the mask applies to: all postgres, or
	// all kubernetes_cluster. Postgres masks set Columns and Detectors;
	// Kubernetes masks set Fields.
	Resources []string `json:"resources"`
	// Columns are schema.table.column names (a two-part table.column is
	// normalised to the public schema), matched against the column origin of
	// a result, not its alias.
	Columns []string `json:"columns,omitempty"`
	// Detectors mask any value that looks like the named kind of data.
	Detectors []string `json:"detectors,omitempty"`
	// Fields are the Kubernetes object fields the mask hides, each
	// RESOURCE[.GROUP]/PATH (ParseKubernetesField): secrets/data,
	// secrets/stringData, configmaps/data, widgets.example.com/spec.password.
	// RESOURCE is the plural lower-case resource name as in the API path;
	// GROUP is empty for the core group; PATH is a dotted path of object
	// keys from the object's root. When the value at PATH is an object (a
	// Secret's data), every value in it is masked; when it is a string,
	// the string is masked.
	Fields []string `json:"fields,omitempty"`
	// Method is redact, partial, hash or null.
	Method string `json:"method"`
	// HashKey is a secret reference to the HMAC key of the hash method.
	HashKey string `json:"hash_key,omitempty"`
	// Unless is a CEL predicate; when it is true the mask does not apply.
	Unless string `json:"unless,omitempty"`
	// AllowInPredicates lets statements filter, join, sort, group and
	// compute on the masked columns. Off by default: each such use
	// answers a question about the values (WHERE card LIKE '4111%' is a
	// yes or no), and enough questions reveal them.
	AllowInPredicates bool `json:"allow_in_predicates,omitempty"`
}

// Test is a policy test: a caller, a resource and a request, with the
// decision the policy must reach.
type Test struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// Identity names a bundle identity; its provider and subject are used
	// unless Subject overrides it, and resolution must land on it.
	Identity string `json:"identity,omitempty"`
	// Provider names the identity provider of an ad-hoc caller.
	Provider string `json:"provider,omitempty"`
	Subject  string `json:"subject,omitempty"`
	// Groups are groups the caller's token carries.
	Groups []string `json:"groups,omitempty"`
	// Claims are extra token claims, as a JSON object.
	Claims   string `json:"claims,omitempty"`
	Resource string `json:"resource"`
	// SQL is a PostgreSQL query request. Exactly one of SQL and Request.
	SQL string `json:"sql,omitempty"`
	// Request is the request as a JSON object (see RequestKinds).
	Request string `json:"request,omitempty"`
	// Now is the evaluation time, RFC 3339. Default: the time of the run.
	Now string `json:"now,omitempty"`
	// Expect is the expected effect.
	Expect Effect `json:"expect"`
	// ExpectRules, when non-nil, is the exact set of rules ("policy/rule")
	// that must match. An empty list asserts that no rule matches. It is
	// always encoded (null when unset) so that unset and empty stay apart.
	ExpectRules []string `json:"expect_rules"`
	// ExpectMasks, when non-nil, is the exact set of masked targets
	// (a column, "detector:NAME", or "kubernetes:RESOURCE[.GROUP]/PATH"
	// for a Kubernetes object field) and their methods. An empty map
	// asserts that nothing is masked.
	ExpectMasks map[string]string `json:"expect_masks"`
}

// RequestKinds lists the request kinds of each resource kind. A rule's `on`
// must name kinds of its policy's resource kind.
var RequestKinds = map[string][]string{
	KindPostgres: {"connect", "query", "function_call"},
	// ssh_host: a session (connect), a command (exec), an interactive
	// shell, a subsystem (sftp), a local forward (direct-tcpip), a
	// terminal (pty), an environment variable (env), X11 forwarding, agent
	// forwarding, and a remote forward (tcpip-forward).
	KindSSHHost:    {"connect", "exec", "shell", "subsystem", "forward", "pty", "env", "x11", "agent", "remote_forward"},
	KindKubernetes: {"api"},
}

// MaskDetectors lists the value detectors masks may name.
var MaskDetectors = []string{"card_number", "email", "iban", "phone", "us_ssn"}

// Resource is the common view of the three resource kinds.
type Resource struct {
	Kind   string
	Name   string
	Labels map[string]string
	// IdleTimeout is the resource's idle_timeout, as written.
	IdleTimeout string
}

// DefaultIdleTimeout ends a session its caller has not used for this long,
// unless the resource's idle_timeout says otherwise.
const DefaultIdleTimeout = time.Hour

// IdleTimeoutOf is a resource's idle timeout: DefaultIdleTimeout when
// unset, 0 (never) for "0".
func IdleTimeoutOf(r Resource) time.Duration {
	if r.IdleTimeout == "" {
		return DefaultIdleTimeout
	}
	d, err := time.ParseDuration(r.IdleTimeout)
	if err != nil || d < 0 {
		return DefaultIdleTimeout // validation refuses such a bundle
	}
	return d
}

// Resources returns every resource of the model, sorted by name.
func (m *Model) Resources() []Resource {
	var out []Resource
	for _, r := range m.Postgres {
		out = append(out, Resource{Kind: KindPostgres, Name: r.Name, Labels: r.Labels, IdleTimeout: r.IdleTimeout})
	}
	for _, r := range m.SSHHosts {
		out = append(out, Resource{Kind: KindSSHHost, Name: r.Name, Labels: r.Labels, IdleTimeout: r.IdleTimeout})
	}
	for _, r := range m.KubernetesClusters {
		out = append(out, Resource{Kind: KindKubernetes, Name: r.Name, Labels: r.Labels, IdleTimeout: r.IdleTimeout})
	}
	sortByName(out, func(r Resource) string { return r.Name })
	return out
}

// Resource finds a resource by name.
func (m *Model) Resource(name string) (Resource, bool) {
	for _, r := range m.Resources() {
		if r.Name == name {
			return r, true
		}
	}
	return Resource{}, false
}
