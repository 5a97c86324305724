package bundle

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

var (
	nameRE       = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$`)
	labelKeyRE   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9_./-]{0,61}[A-Za-z0-9])?$`)
	sqlIdentRE   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]*$`)
	tlsModes     = []string{"disable", "require", "verify-ca", "verify-full"}
	effects      = []string{string(EffectAllow), string(EffectDeny), string(EffectReview)}
	maskMethods  = []string{MaskRedact, MaskPartial, MaskHash, MaskNull}
	jwtAlgs      = []string{"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA"}
	sshKeyPrefix = []string{"ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"}
)

// MaxApprovalTimeout bounds how long a review may hold a request.
const MaxApprovalTimeout = 24 * time.Hour

// DefaultApprovalTimeout is used when a review rule names no timeout.
const DefaultApprovalTimeout = 15 * time.Minute

// DefaultApprovalValidity is how long an approval may be used when a review
// rule names no valid_for.
const DefaultApprovalValidity = 15 * time.Minute

// Validate checks everything about a model that does not need CEL: names,
// references between objects, secret references, and enumerations. CEL is
// type-checked by celpolicy. The returned problems are in model order.
func (m *Model) Validate() Problems {
	v := &validator{m: m}
	v.run()
	return v.ps
}

type validator struct {
	m  *Model
	ps Problems

	providers  map[string]bool
	identities map[string]bool
	resources  map[string]string // name -> kind
	rules      map[string]bool   // "policy/rule"
}

func (v *validator) add(code string, ref Ref, format string, args ...any) {
	v.ps = append(v.ps, Problem{Code: code, Ref: ref, Message: fmt.Sprintf(format, args...)})
}

func (v *validator) run() {
	m := v.m
	v.providers = map[string]bool{}
	v.identities = map[string]bool{}
	v.resources = map[string]string{}
	v.rules = map[string]bool{}

	for _, p := range m.IdentityProviders {
		v.declare(At("identity_provider", p.Name), v.providers)
	}
	for _, i := range m.Identities {
		v.declare(At("identity", i.Name), v.identities)
	}
	seenRes := map[string]bool{}
	for _, r := range m.Resources() {
		if seenRes[r.Name] {
			v.add(CodeDuplicateName, At(r.Kind, r.Name), "resource names must be unique across postgres, ssh_host and kubernetes_cluster, because callers select a resource by name alone; %q is used more than once", r.Name)
			continue
		}
		seenRes[r.Name] = true
		v.checkName(At(r.Kind, r.Name))
		v.resources[r.Name] = r.Kind
	}
	for _, p := range m.Policies {
		for _, r := range p.Rules {
			v.rules[p.Name+"/"+r.Name] = true
		}
	}
	v.unique("policy", names(m.Policies, func(p Policy) string { return p.Name }))
	v.unique("mask", names(m.Masks, func(p Mask) string { return p.Name }))
	v.unique("test", names(m.Tests, func(p Test) string { return p.Name }))
	for _, t := range m.Tests {
		v.checkTestName(t.Name)
	}

	issuers := map[string]string{}
	for _, p := range m.IdentityProviders {
		v.identityProvider(p)
		if first, dup := issuers[p.Issuer]; dup && p.Issuer != "" && first != p.Name {
			v.add(CodeDuplicateName, At("identity_provider", p.Name).Attribute("issuer"), "issuer %q is already the issuer of identity_provider %q; a token must map to exactly one provider", p.Issuer, first)
		}
		issuers[p.Issuer] = p.Name
	}
	for _, i := range m.Identities {
		v.identity(i)
	}
	for _, r := range m.Postgres {
		v.postgres(r)
	}
	for _, r := range m.SSHHosts {
		v.sshHost(r)
	}
	for _, r := range m.KubernetesClusters {
		v.kubernetes(r)
	}
	for _, p := range m.Policies {
		v.policy(p)
	}
	for _, mk := range m.Masks {
		v.mask(mk)
	}
	for _, t := range m.Tests {
		v.test(t)
	}
}

func names[T any](xs []T, name func(T) string) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = name(x)
	}
	return out
}

func (v *validator) declare(ref Ref, set map[string]bool) {
	if set[ref.Name] {
		v.add(CodeDuplicateName, ref, "%s %q is defined more than once", ref.Kind, ref.Name)
		return
	}
	set[ref.Name] = true
	v.checkName(ref)
}

func (v *validator) unique(kind string, ns []string) {
	seen := map[string]bool{}
	for _, n := range ns {
		if seen[n] {
			v.add(CodeDuplicateName, At(kind, n), "%s %q is defined more than once", kind, n)
			continue
		}
		seen[n] = true
		if kind != "test" {
			v.checkName(At(kind, n))
		}
	}
}

// checkTestName allows test names to be sentences: they are never referred
// to, only reported. Characters that change how a report reads (controls,
// bidirectional overrides, invisible format characters, line separators)
// are refused.
func (v *validator) checkTestName(n string) {
	ok := strings.TrimSpace(n) != "" && utf8.ValidString(n) && utf8.RuneCountInString(n) <= 200
	for _, r := range n {
		if !unicode.IsPrint(r) && r != ' ' {
			ok = false
		}
	}
	if !ok {
		v.add(CodeInvalidName, At("test", n), "test name %q must be 1 to 200 printable characters", n)
	}
}

func (v *validator) checkName(ref Ref) {
	if !nameRE.MatchString(ref.Name) {
		v.add(CodeInvalidName, ref, "name %q is not valid: use 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit", ref.Name)
	}
}

func (v *validator) required(ref Ref, attr, value string) bool {
	if strings.TrimSpace(value) == "" {
		v.add(CodeMissingAttribute, ref.Attribute(attr), "%s is required", attr)
		return false
	}
	return true
}

func (v *validator) oneOf(ref Ref, value string, allowed []string) {
	if !slices.Contains(allowed, value) {
		v.add(CodeInvalidValue, ref, "%q is not one of %s", value, quoteList(allowed))
	}
}

func quoteList(xs []string) string {
	q := make([]string, len(xs))
	for i, x := range xs {
		q[i] = strconv.Quote(x)
	}
	return strings.Join(q, ", ")
}

func (v *validator) secret(ref Ref, value string) {
	if value == "" {
		return
	}
	if _, err := ParseSecretRef(value); err != nil {
		code := CodeInvalidSecretRef
		if err == ErrInlineSecret {
			code = CodeInlineSecret
		}
		v.add(code, ref, "%s must be a secret reference, not a secret value: %v. %s", ref.Attr, err, SecretRefHelp)
	}
}

func (v *validator) labels(ref Ref, labels map[string]string) {
	for _, k := range sortedMapKeys(labels) {
		if !labelKeyRE.MatchString(k) {
			v.add(CodeInvalidValue, ref.Attribute("labels"), "label key %q is not valid: use letters, digits, '-', '_', '.' or '/'", k)
		}
	}
}

func (v *validator) address(ref Ref, addr string) {
	if !v.required(ref, "address", addr) {
		return
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		v.add(CodeInvalidValue, ref.Attribute("address"), "address %q must be host:port", addr)
		return
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		v.add(CodeInvalidValue, ref.Attribute("address"), "address %q has no valid port (1-65535)", addr)
	}
}

// noCredentialsInURL refuses user:password@ in a URL: it would be a secret
// written into the bundle.
func (v *validator) noCredentialsInURL(ref Ref, raw string) {
	if hasCredentials(raw) {
		v.add(CodeInlineSecret, ref, "%s must not carry credentials (user:password@); give them as a secret reference instead. %s", ref.Attr, SecretRefHelp)
	}
}

func hasCredentials(raw string) bool {
	u, err := url.Parse(raw)
	return raw != "" && err == nil && u.User != nil
}

// isLoopbackURL reports whether u points at this machine. Plain http issuers
// are allowed only there, for development and tests.
func isLoopbackURL(u *url.URL) bool {
	h := u.Hostname()
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

func (v *validator) identityProvider(p IdentityProvider) {
	ref := At("identity_provider", p.Name)
	if hasCredentials(p.Issuer) || hasCredentials(p.JWKSURL) {
		// Report only that, without the URL: it holds a secret.
		v.noCredentialsInURL(ref.Attribute("issuer"), p.Issuer)
		v.noCredentialsInURL(ref.Attribute("jwks_url"), p.JWKSURL)
		return
	}
	if v.required(ref, "issuer", p.Issuer) {
		u, err := url.Parse(p.Issuer)
		switch {
		case err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http"):
			v.add(CodeInvalidValue, ref.Attribute("issuer"), "issuer %q must be an https URL", p.Issuer)
		case u.Scheme == "http" && !isLoopbackURL(u):
			v.add(CodeInvalidValue, ref.Attribute("issuer"), "issuer %q must use https; plain http is only accepted for loopback development issuers", p.Issuer)
		}
	}
	if len(p.Audiences) == 0 {
		v.add(CodeMissingAttribute, ref.Attribute("audiences"), "audiences is required: list the aud values accepted, so that a token minted for another service cannot be replayed here")
	}
	for i, a := range p.Audiences {
		if strings.TrimSpace(a) == "" {
			v.add(CodeInvalidValue, ref.Attribute("audiences").Elem(i), "audience must not be empty")
		}
	}
	if p.JWKSURL != "" {
		if u, err := url.Parse(p.JWKSURL); err != nil || u.Host == "" || (u.Scheme != "https" && !(u.Scheme == "http" && isLoopbackURL(u))) {
			v.add(CodeInvalidValue, ref.Attribute("jwks_url"), "jwks_url %q must be an https URL", p.JWKSURL)
		}
	}
	if p.JWKS != "" {
		var set struct {
			Keys []json.RawMessage `json:"keys"`
		}
		if err := json.Unmarshal([]byte(p.JWKS), &set); err != nil || len(set.Keys) == 0 {
			v.add(CodeInvalidValue, ref.Attribute("jwks"), "jwks must be a JSON Web Key Set: an object with a non-empty \"keys\" list")
		}
		if p.JWKSURL != "" {
			v.add(CodeConflict, ref.Attribute("jwks"), "set jwks or jwks_url, not both")
		}
	}
	for i, a := range p.Algorithms {
		if !slices.Contains(jwtAlgs, a) {
			v.add(CodeInvalidValue, ref.Attribute("algorithms").Elem(i), "algorithm %q is not accepted; use asymmetric algorithms only: %s", a, quoteList(jwtAlgs))
		}
	}
}

func (v *validator) identity(i Identity) {
	ref := At("identity", i.Name)
	if v.required(ref, "provider", i.Provider) && !v.providers[i.Provider] {
		v.add(CodeUnknownReference, ref.Attribute("provider"), "identity_provider %q is not defined", i.Provider)
	}
	switch {
	case i.Subject == "" && i.Match == "":
		v.add(CodeMissingAttribute, ref, "set subject (the token's exact sub) or match (a CEL predicate over the token)")
	case i.Subject != "" && i.Match != "":
		v.add(CodeConflict, ref.Attribute("match"), "set subject or match, not both")
	}
	v.groups(ref.Attribute("groups"), i.Groups)
}

func (v *validator) groups(ref Ref, groups []string) {
	for i, g := range groups {
		if strings.TrimSpace(g) == "" {
			v.add(CodeInvalidValue, ref.Elem(i), "group name must not be empty")
		}
	}
}

// idleTimeout checks a resource's idle_timeout.
func (v *validator) idleTimeout(ref Ref, s string) {
	if s == "" {
		return
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 || (d > 0 && d < time.Second) || d > 30*24*time.Hour {
		v.add(CodeInvalidValue, ref.Attribute("idle_timeout"), "idle_timeout %q must be a duration between 1s and 720h (\"30m\"), or \"0\" for none", s)
	}
}

func (v *validator) postgres(r Postgres) {
	ref := At(KindPostgres, r.Name)
	v.idleTimeout(ref, r.IdleTimeout)
	v.address(ref, r.Address)
	v.required(ref, "database", r.Database)
	v.required(ref, "username", r.Username)
	v.secret(ref.Attribute("password"), r.Password)
	v.labels(ref, r.Labels)
	if r.TLS != nil && r.TLS.Mode != "" {
		v.oneOf(ref.Attribute("tls.mode"), r.TLS.Mode, tlsModes)
	}
	if r.TLS != nil {
		v.secret(ref.Attribute("tls.key"), r.TLS.Key)
		if (r.TLS.CertFile == "") != (r.TLS.Key == "") {
			v.add(CodeMissingAttribute, ref.Attribute("tls.cert_file"), "tls.cert_file and tls.key go together: a client certificate and a secret reference to its private key")
		}
		if r.TLS.CertFile != "" && (r.TLS.Mode == "" || r.TLS.Mode == "disable") {
			v.add(CodeInvalidValue, ref.Attribute("tls.mode"), "a client certificate needs TLS: set tls.mode to require, verify-ca or verify-full")
		}
	}
	if u := r.UpstreamRoles; u != nil {
		if u.Method != "" {
			v.oneOf(ref.Attribute("upstream_roles.method"), u.Method, []string{RoleSetRole, RoleSetSessionAuthorization, RoleLogin})
		}
		if len(u.Identities) == 0 && len(u.Groups) == 0 && u.Default == "" {
			v.add(CodeMissingAttribute, ref.Attribute("upstream_roles"), "upstream_roles maps no caller to a role: set identities, groups or default")
		}
		for _, id := range slices.Sorted(maps.Keys(u.Identities)) {
			if !v.identities[id] {
				v.add(CodeUnknownReference, ref.Attribute("upstream_roles.identities"), "upstream_roles.identities names identity %q, which is not defined", id)
			}
		}
		for _, m := range []map[string]string{u.Identities, u.Groups} {
			for k, role := range m {
				if strings.TrimSpace(role) == "" {
					v.add(CodeInvalidValue, ref.Attribute("upstream_roles"), "upstream_roles maps %q to an empty role name", k)
				}
			}
		}
	}
}

func (v *validator) sshHost(r SSHHost) {
	ref := At(KindSSHHost, r.Name)
	v.idleTimeout(ref, r.IdleTimeout)
	v.address(ref, r.Address)
	v.required(ref, "user", r.User)
	if v.required(ref, "host_key", r.HostKey) {
		fields := strings.Fields(r.HostKey)
		ok := len(fields) >= 2 && slices.Contains(sshKeyPrefix, fields[0])
		if ok {
			_, err := base64.StdEncoding.DecodeString(fields[1])
			ok = err == nil
		}
		if !ok {
			v.add(CodeInvalidValue, ref.Attribute("host_key"), "host_key must be a public key in authorized_keys form (\"ssh-ed25519 AAAA...\"), as printed by ssh-keyscan")
		}
	}
	if r.PrivateKey == "" && r.Password == "" {
		v.add(CodeMissingAttribute, ref, "set private_key or password (as a secret reference) so the gateway can log in upstream")
	}
	v.secret(ref.Attribute("private_key"), r.PrivateKey)
	v.secret(ref.Attribute("password"), r.Password)
	v.labels(ref, r.Labels)
}

func (v *validator) kubernetes(r KubernetesCluster) {
	ref := At(KindKubernetes, r.Name)
	v.idleTimeout(ref, r.IdleTimeout)
	if r.Server == "" && r.Kubeconfig == "" {
		v.add(CodeMissingAttribute, ref, "set server (with token) or kubeconfig")
	}
	if r.Server != "" {
		if u, err := url.Parse(r.Server); err != nil || u.Scheme != "https" || u.Host == "" {
			v.add(CodeInvalidValue, ref.Attribute("server"), "server must be an https URL")
		}
		v.noCredentialsInURL(ref.Attribute("server"), r.Server)
	}
	if r.Kubeconfig != "" && r.Token != "" {
		v.add(CodeConflict, ref.Attribute("token"), "set kubeconfig or token, not both")
	}
	v.secret(ref.Attribute("kubeconfig"), r.Kubeconfig)
	v.secret(ref.Attribute("token"), r.Token)
	v.labels(ref, r.Labels)
}

func (v *validator) policy(p Policy) {
	ref := At("policy", p.Name)
	if len(p.Resources) == 0 {
		v.add(CodeMissingAttribute, ref.Attribute("resources"), "resources is required: name the resources this policy covers")
	}
	kind := ""
	for i, name := range p.Resources {
		k, ok := v.resources[name]
		if !ok {
			v.add(CodeUnknownReference, ref.Attribute("resources").Elem(i), "resource %q is not defined (no postgres, ssh_host or kubernetes_cluster of that name)", name)
			continue
		}
		if kind == "" {
			kind = k
		} else if k != kind {
			v.add(CodeMixedKinds, ref.Attribute("resources").Elem(i), "resource %q is a %s but this policy already covers %s resources; a policy covers one kind of resource so that its rules see one request type; split it into one policy per kind", name, k, kind)
		}
	}
	for i, id := range p.Identities {
		if !v.identities[id] {
			v.add(CodeUnknownReference, ref.Attribute("identities").Elem(i), "identity %q is not defined", id)
		}
	}
	v.groups(ref.Attribute("groups"), p.Groups)
	switch {
	case !p.Everyone && len(p.Identities) == 0 && len(p.Groups) == 0:
		v.add(CodeMissingAttribute, ref, "name the callers this policy covers (identities, groups), or set everyone = true; an empty list is never read as everyone, so that a list that comes out empty cannot open a policy to all callers")
	case p.Everyone && (len(p.Identities) > 0 || len(p.Groups) > 0):
		v.add(CodeConflict, ref.Attribute("everyone"), "everyone = true covers every caller; remove identities and groups, or everyone")
	}
	if len(p.Rules) == 0 {
		v.add(CodeMissingAttribute, ref, "a policy needs at least one rule")
	}
	seen := map[string]bool{}
	for _, r := range p.Rules {
		rref := ref.InRule(r.Name)
		if seen[r.Name] {
			v.add(CodeDuplicateName, rref, "rule %q is defined more than once in policy %q", r.Name, p.Name)
		}
		seen[r.Name] = true
		if !nameRE.MatchString(r.Name) {
			v.add(CodeInvalidName, rref, "rule name %q is not valid: use letters, digits, '-', '_' or '.'", r.Name)
		}
		v.oneOf(rref.Attribute("effect"), string(r.Effect), effects)
		v.required(rref, "reason", r.Reason)
		if kind != "" {
			for i, on := range r.On {
				if !slices.Contains(RequestKinds[kind], on) {
					v.add(CodeInvalidValue, rref.Attribute("on").Elem(i), "%q is not a request kind of %s resources; use one of %s", on, kind, quoteList(RequestKinds[kind]))
				}
			}
		}
		switch {
		case r.Effect == EffectReview && r.Approval == nil:
			v.add(CodeMissingAttribute, rref.Attribute("approval"), "a review rule needs an approval block naming the approver groups")
		case r.Effect != EffectReview && r.Approval != nil:
			v.add(CodeConflict, rref.Attribute("approval"), "approval is only allowed on review rules")
		case r.Approval != nil:
			v.approval(rref, *r.Approval)
		}
	}
}

func (v *validator) approval(ref Ref, a Approval) {
	if len(a.Groups) == 0 {
		v.add(CodeMissingAttribute, ref.Attribute("approval.groups"), "approval.groups is required: name the groups whose members may approve")
	}
	v.groups(ref.Attribute("approval.groups"), a.Groups)
	if a.Count < 0 || a.Count > 10 {
		v.add(CodeInvalidValue, ref.Attribute("approval.count"), "approval.count must be between 1 and 10, got %d", a.Count)
	}
	timeout, ok := v.duration(ref, "timeout", a.Timeout, DefaultApprovalTimeout)
	if wait, wok := v.duration(ref, "wait", a.Wait, timeout); ok && wok && wait > timeout {
		v.add(CodeInvalidValue, ref.Attribute("approval.wait"), "approval.wait %q is longer than approval.timeout (%s): a statement cannot wait for a request that has expired", a.Wait, timeout)
	}
	v.duration(ref, "valid_for", a.ValidFor, DefaultApprovalValidity)
	if w := a.Webhook; w != nil {
		if IsSecretRef(w.URL) {
			// A Slack webhook's URL is itself the secret.
			v.secret(ref.Attribute("approval.webhook.url"), w.URL)
		} else if u, err := url.Parse(w.URL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			v.add(CodeInvalidValue, ref.Attribute("approval.webhook.url"), "approval.webhook.url %q must be an http or https URL, or a secret reference to one (env:NAME, file:/path)", w.URL)
		} else if u.User != nil {
			v.add(CodeInlineSecret, ref.Attribute("approval.webhook.url"), "approval.webhook.url carries credentials; put the secret in approval.webhook.secret as a reference (env:NAME or file:/path)")
		}
		if w.Secret != "" {
			v.secret(ref.Attribute("approval.webhook.secret"), w.Secret)
		}
	}
}

// duration checks an approval duration attribute (empty means def) and
// returns its value, and whether it is valid.
func (v *validator) duration(ref Ref, attr, s string, def time.Duration) (time.Duration, bool) {
	if s == "" {
		return def, true
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < time.Second || d > MaxApprovalTimeout {
		v.add(CodeInvalidValue, ref.Attribute("approval."+attr), "approval.%s %q must be a duration between 1s and 24h, such as \"15m\"", attr, s)
		return 0, false
	}
	return d, true
}

func (v *validator) test(t Test) {
	ref := At("test", t.Name)
	if v.required(ref, "resource", t.Resource) {
		if _, ok := v.resources[t.Resource]; !ok {
			v.add(CodeUnknownReference, ref.Attribute("resource"), "resource %q is not defined", t.Resource)
		}
	}
	switch {
	case t.Identity != "" && !v.identities[t.Identity]:
		v.add(CodeUnknownReference, ref.Attribute("identity"), "identity %q is not defined", t.Identity)
	case t.Identity == "" && t.Provider == "":
		v.add(CodeMissingAttribute, ref, "set identity (a defined identity) or provider and subject (an ad-hoc caller)")
	}
	if t.Provider != "" && !v.providers[t.Provider] {
		v.add(CodeUnknownReference, ref.Attribute("provider"), "identity_provider %q is not defined", t.Provider)
	}
	if t.Identity == "" && t.Provider != "" && t.Subject == "" {
		v.add(CodeMissingAttribute, ref.Attribute("subject"), "subject is required for an ad-hoc caller")
	}
	v.groups(ref.Attribute("groups"), t.Groups)
	if t.Claims != "" && !isJSONObject(t.Claims) {
		v.add(CodeInvalidValue, ref.Attribute("claims"), "claims must be a JSON object")
	}
	switch {
	case t.SQL == "" && t.Request == "":
		v.add(CodeMissingAttribute, ref, "set sql (a PostgreSQL query) or request (the request fields)")
	case t.SQL != "" && t.Request != "":
		v.add(CodeConflict, ref.Attribute("request"), "set sql or request, not both")
	case t.SQL != "" && v.resources[t.Resource] != "" && v.resources[t.Resource] != KindPostgres:
		v.add(CodeInvalidValue, ref.Attribute("sql"), "sql is only for postgres resources; %q is a %s, use request", t.Resource, v.resources[t.Resource])
	case t.Request != "" && !isJSONObject(t.Request):
		v.add(CodeInvalidValue, ref.Attribute("request"), "request must be a JSON object")
	}
	if t.Now != "" {
		if _, err := time.Parse(time.RFC3339, t.Now); err != nil {
			v.add(CodeInvalidValue, ref.Attribute("now"), "now %q must be an RFC 3339 time such as 2026-01-02T15:04:05Z", t.Now)
		}
	}
	v.oneOf(ref.Attribute("expect"), string(t.Expect), effects)
	for i, r := range t.ExpectRules {
		if !v.rules[r] {
			v.add(CodeUnknownReference, ref.Attribute("expect_rules").Elem(i), "rule %q is not defined; name rules as \"policy/rule\"", r)
		}
	}
	spelled := map[string]string{} // normalised target -> first spelling
	for _, target := range sortedMapKeys(t.ExpectMasks) {
		method := t.ExpectMasks[target]
		norm := target
		if c, err := CanonicalColumn(target); err == nil {
			norm = c
		}
		if first, dup := spelled[norm]; dup {
			v.add(CodeDuplicateName, ref.Attribute("expect_masks"), "%q and %q name the same column; keep one", first, target)
		}
		spelled[norm] = target
		if d, ok := strings.CutPrefix(target, "detector:"); ok {
			if !slices.Contains(MaskDetectors, d) {
				v.add(CodeInvalidValue, ref.Attribute("expect_masks"), "%q names no detector; use one of %s", d, quoteList(MaskDetectors))
			}
		} else if f, ok := strings.CutPrefix(target, KubernetesTargetPrefix); ok {
			if _, err := ParseKubernetesField(f); err != nil {
				v.add(CodeInvalidValue, ref.Attribute("expect_masks"), "%q: %v", target, err)
			}
		} else if _, _, _, err := ParseColumn(target); err != nil {
			if _, kerr := ParseKubernetesField(target); kerr == nil {
				v.add(CodeInvalidValue, ref.Attribute("expect_masks"), "%q is not a column; write a Kubernetes object field as %s%s", target, KubernetesTargetPrefix, target)
			} else {
				v.add(CodeInvalidValue, ref.Attribute("expect_masks"), "%v", err)
			}
		}
		if !slices.Contains(maskMethods, method) {
			v.add(CodeInvalidValue, ref.Attribute("expect_masks"), "method %q for %q is not one of %s", method, target, quoteList(maskMethods))
		}
	}
}

func isJSONObject(s string) bool {
	var m map[string]any
	return json.Unmarshal([]byte(s), &m) == nil && m != nil
}
