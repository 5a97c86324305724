package bundle

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// Lookups into realisticModel by name, so that table entries read as what
// they change.
func idp(m *Model, name string) *IdentityProvider {
	for i := range m.IdentityProviders {
		if m.IdentityProviders[i].Name == name {
			return &m.IdentityProviders[i]
		}
	}
	panic("no identity_provider " + name)
}

func identity(m *Model, name string) *Identity {
	for i := range m.Identities {
		if m.Identities[i].Name == name {
			return &m.Identities[i]
		}
	}
	panic("no identity " + name)
}

func pg(m *Model, name string) *Postgres {
	for i := range m.Postgres {
		if m.Postgres[i].Name == name {
			return &m.Postgres[i]
		}
	}
	panic("no postgres " + name)
}

func policy(m *Model, name string) *Policy {
	for i := range m.Policies {
		if m.Policies[i].Name == name {
			return &m.Policies[i]
		}
	}
	panic("no policy " + name)
}

func rule(m *Model, pol, name string) *Rule {
	p := policy(m, pol)
	for i := range p.Rules {
		if p.Rules[i].Name == name {
			return &p.Rules[i]
		}
	}
	panic("no rule " + pol + "/" + name)
}

func mask(m *Model, name string) *Mask {
	for i := range m.Masks {
		if m.Masks[i].Name == name {
			return &m.Masks[i]
		}
	}
	panic("no mask " + name)
}

func test(m *Model, name string) *Test {
	for i := range m.Tests {
		if m.Tests[i].Name == name {
			return &m.Tests[i]
		}
	}
	panic("no test " + name)
}

// problem is what a table entry expects: the stable code and where.
type problem struct {
	Code string
	Ref  string
}

func (p problem) String() string { return p.Code + " at " + p.Ref }

func summarize(ps Problems) []problem {
	out := []problem{}
	for _, p := range ps {
		out = append(out, problem{p.Code, p.Ref.String()})
	}
	return out
}

func TestValidateRealisticModelIsValid(t *testing.T) {
	m := realisticModel()
	if ps := m.Validate(); len(ps) != 0 {
		t.Fatalf("realistic model: %v", ps)
	}
	if err := m.Validate().Err(); err != nil {
		t.Fatalf("Err() of no problems = %v", err)
	}
	// Normalising does not make a valid model invalid.
	m.Normalize()
	if ps := m.Validate(); len(ps) != 0 {
		t.Fatalf("normalised realistic model: %v", ps)
	}
	empty := Model{}
	if ps := empty.Validate(); len(ps) != 0 {
		t.Fatalf("empty model: %v", ps)
	}
}

func TestValidate(t *testing.T) {
	long := strings.Repeat("a", 64)
	tests := map[string]struct {
		mutate func(m *Model)
		want   []problem
		// wantMsg, when set, must appear in the first problem's message.
		wantMsg string
	}{
		// Names.
		"two providers with one issuer": {
			mutate: func(m *Model) { idp(m, "corp-okta").Issuer = idp(m, "dev-local").Issuer },
			want:   []problem{{CodeDuplicateName, `identity_provider "dev-local" issuer`}},
		},
		"credentials in a jwks_url": {
			mutate: func(m *Model) { idp(m, "corp-okta").JWKSURL = "https://admin:S3cret@corp.okta.com/keys" },
			want:   []problem{{CodeInlineSecret, `identity_provider "corp-okta" jwks_url`}},
		},
		"a policy without callers": {
			mutate: func(m *Model) { p := policy(m, "ssh-ops"); p.Identities, p.Groups, p.Everyone = nil, nil, false },
			want:   []problem{{CodeMissingAttribute, `policy "ssh-ops"`}},
		},
		"everyone with a group": {
			mutate: func(m *Model) { p := policy(m, "ssh-ops"); p.Everyone = true; p.Groups = []string{"ops"} },
			want:   []problem{{CodeConflict, `policy "ssh-ops" everyone`}},
		},
		"duplicate identity_provider": {
			mutate: func(m *Model) { m.IdentityProviders = append(m.IdentityProviders, *idp(m, "corp-okta")) },
			want:   []problem{{CodeDuplicateName, `identity_provider "corp-okta"`}},
		},
		"duplicate identity": {
			mutate: func(m *Model) { m.Identities = append(m.Identities, *identity(m, "etl")) },
			want:   []problem{{CodeDuplicateName, `identity "etl"`}},
		},
		"duplicate postgres": {
			mutate: func(m *Model) { m.Postgres = append(m.Postgres, *pg(m, "orders-db")) },
			want:   []problem{{CodeDuplicateName, `postgres "orders-db"`}},
		},
		"postgres and ssh_host share a name": {
			mutate: func(m *Model) {
				h := m.SSHHosts[0]
				h.Name = "analytics"
				m.SSHHosts = append(m.SSHHosts, h)
			},
			want:    []problem{{CodeDuplicateName, `ssh_host "analytics"`}},
			wantMsg: `resource names must be unique across postgres, ssh_host and kubernetes_cluster, because callers select a resource by name alone; "analytics" is used more than once`,
		},
		"ssh_host and kubernetes_cluster share a name": {
			mutate: func(m *Model) {
				c := m.KubernetesClusters[0]
				c.Name = "bastion"
				m.KubernetesClusters = append(m.KubernetesClusters, c)
			},
			want: []problem{{CodeDuplicateName, `kubernetes_cluster "bastion"`}},
		},
		"duplicate policy": {
			mutate: func(m *Model) { m.Policies = append(m.Policies, *policy(m, "ssh-ops")) },
			want:   []problem{{CodeDuplicateName, `policy "ssh-ops"`}},
		},
		"duplicate mask": {
			mutate: func(m *Model) { m.Masks = append(m.Masks, *mask(m, "emails")) },
			want:   []problem{{CodeDuplicateName, `mask "emails"`}},
		},
		"duplicate test": {
			mutate: func(m *Model) { m.Tests = append(m.Tests, *test(m, "deploy")) },
			want:   []problem{{CodeDuplicateName, `test "deploy"`}},
		},
		"duplicate rule in a policy": {
			mutate: func(m *Model) {
				p := policy(m, "ssh-ops")
				p.Rules = append(p.Rules, p.Rules[0])
			},
			want:    []problem{{CodeDuplicateName, `policy "ssh-ops" rule "shell"`}},
			wantMsg: `rule "shell" is defined more than once in policy "ssh-ops"`,
		},
		"same rule name in two policies is fine": {
			mutate: func(m *Model) { rule(m, "k8s-deploy", "deploy").Name = "read" },
		},
		"invalid identity_provider name": {
			mutate: func(m *Model) {
				p := *idp(m, "corp-okta")
				p.Name = "-okta"
				p.Issuer = "https://other.okta.com/"
				m.IdentityProviders = append(m.IdentityProviders, p)
			},
			want:    []problem{{CodeInvalidName, `identity_provider "-okta"`}},
			wantMsg: `name "-okta" is not valid: use 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit`,
		},
		"empty postgres name": {
			mutate: func(m *Model) {
				p := *pg(m, "analytics")
				p.Name = ""
				m.Postgres = append(m.Postgres, p)
			},
			want: []problem{{CodeInvalidName, `postgres ""`}},
		},
		"postgres name with a space": {
			mutate: func(m *Model) {
				p := *pg(m, "analytics")
				p.Name = "my db"
				m.Postgres = append(m.Postgres, p)
			},
			want: []problem{{CodeInvalidName, `postgres "my db"`}},
		},
		"64-character policy name": {
			mutate: func(m *Model) {
				p := *policy(m, "ssh-ops")
				p.Name = long
				m.Policies = append(m.Policies, p)
			},
			want: []problem{{CodeInvalidName, `policy "` + long + `"`}},
		},
		"63-character name with dots and underscores is fine": {
			mutate: func(m *Model) {
				p := *policy(m, "ssh-ops")
				p.Name = "a._-" + long[:58] + "z"
				m.Policies = append(m.Policies, p)
			},
		},
		"mask name ending in a dash": {
			mutate: func(m *Model) {
				k := *mask(m, "emails")
				k.Name = "emails-"
				m.Masks = append(m.Masks, k)
			},
			want: []problem{{CodeInvalidName, `mask "emails-"`}},
		},
		"test name that is a sentence is fine": {
			mutate: func(m *Model) {
				test(m, "deploy").Name = "CI may patch prod/deployments, but not delete them (see #42)"
			},
		},
		"test name with a newline": {
			mutate:  func(m *Model) { test(m, "deploy").Name = "deploy\nprod" },
			want:    []problem{{CodeInvalidName, `test "deploy\nprod"`}},
			wantMsg: "must be 1 to 200 printable characters",
		},
		"blank test name": {
			mutate: func(m *Model) { test(m, "deploy").Name = "  " },
			want:   []problem{{CodeInvalidName, `test "  "`}},
		},
		"201-character test name": {
			mutate: func(m *Model) { test(m, "deploy").Name = strings.Repeat("t", 201) },
			want:   []problem{{CodeInvalidName, `test "` + strings.Repeat("t", 201) + `"`}},
		},
		"duplicate test name that is a sentence": {
			mutate: func(m *Model) {
				x := *test(m, "deploy")
				test(m, "deploy").Name = "CI deploys"
				x.Name = "CI deploys"
				m.Tests = append(m.Tests, x)
			},
			want: []problem{{CodeDuplicateName, `test "CI deploys"`}},
		},
		"rule name with a space": {
			mutate: func(m *Model) { rule(m, "orders-access", "no-ddl").Name = "no ddl" },
			want:   []problem{{CodeInvalidName, `policy "orders-access" rule "no ddl"`}},
		},

		// References.
		"identity names an unknown identity_provider": {
			mutate:  func(m *Model) { identity(m, "etl").Provider = "okta" },
			want:    []problem{{CodeUnknownReference, `identity "etl" provider`}},
			wantMsg: `identity_provider "okta" is not defined`,
		},
		"identity without provider": {
			mutate: func(m *Model) { identity(m, "etl").Provider = "" },
			want:   []problem{{CodeMissingAttribute, `identity "etl" provider`}},
		},
		"policy names an unknown resource": {
			mutate:  func(m *Model) { p := policy(m, "k8s-deploy"); p.Resources = append(p.Resources, "staging-cluster") },
			want:    []problem{{CodeUnknownReference, `policy "k8s-deploy" resources[1]`}},
			wantMsg: `resource "staging-cluster" is not defined (no postgres, ssh_host or kubernetes_cluster of that name)`,
		},
		"policy names an unknown identity": {
			mutate:  func(m *Model) { p := policy(m, "k8s-deploy"); p.Identities = append(p.Identities, "ghost") },
			want:    []problem{{CodeUnknownReference, `policy "k8s-deploy" identities[1]`}},
			wantMsg: `identity "ghost" is not defined`,
		},
		"policy names an identity_provider as an identity": {
			mutate: func(m *Model) { policy(m, "k8s-deploy").Identities = []string{"ci-github"} },
			want:   []problem{{CodeUnknownReference, `policy "k8s-deploy" identities[0]`}},
		},
		"policy without resources": {
			mutate: func(m *Model) { policy(m, "k8s-deploy").Resources = nil },
			want:   []problem{{CodeMissingAttribute, `policy "k8s-deploy" resources`}},
		},
		"policy without rules": {
			mutate: func(m *Model) { policy(m, "k8s-deploy").Rules = nil },
			want:   []problem{{CodeMissingAttribute, `policy "k8s-deploy"`}},
		},
		"mask names an unknown resource": {
			mutate:  func(m *Model) { k := mask(m, "emails"); k.Resources = append(k.Resources, "billing-db") },
			want:    []problem{{CodeUnknownReference, `mask "emails" resources[2]`}},
			wantMsg: `resource "billing-db" is not defined`,
		},
		"mask on an ssh_host": {
			mutate:  func(m *Model) { k := mask(m, "card-numbers"); k.Resources = append(k.Resources, "bastion") },
			want:    []problem{{CodeInvalidValue, `mask "card-numbers" resources[1]`}},
			wantMsg: `resource "bastion" is a ssh_host; masks apply to postgres and kubernetes_cluster resources`,
		},
		"test names an unknown resource": {
			mutate:  func(m *Model) { test(m, "deploy").Resource = "staging-cluster" },
			want:    []problem{{CodeUnknownReference, `test "deploy" resource`}},
			wantMsg: `resource "staging-cluster" is not defined`,
		},
		"test without resource": {
			mutate: func(m *Model) { test(m, "deploy").Resource = "" },
			want:   []problem{{CodeMissingAttribute, `test "deploy" resource`}},
		},
		"test names an unknown identity": {
			mutate:  func(m *Model) { test(m, "deploy").Identity = "ghost" },
			want:    []problem{{CodeUnknownReference, `test "deploy" identity`}},
			wantMsg: `identity "ghost" is not defined`,
		},
		"test names an unknown provider": {
			mutate: func(m *Model) { test(m, "adhoc-forward").Provider = "github" },
			want:   []problem{{CodeUnknownReference, `test "adhoc-forward" provider`}},
		},
		"ad-hoc test caller without subject": {
			mutate: func(m *Model) { test(m, "adhoc-forward").Subject = "" },
			want:   []problem{{CodeMissingAttribute, `test "adhoc-forward" subject`}},
		},
		"test without any caller": {
			mutate: func(m *Model) { test(m, "deploy").Identity = "" },
			want:   []problem{{CodeMissingAttribute, `test "deploy"`}},
		},
		"test expects unknown rules": {
			mutate: func(m *Model) {
				test(m, "etl-reads-orders").ExpectRules = []string{"orders-access/read", "orders-access/write", "read", "ssh-ops/forward"}
			},
			want: []problem{
				{CodeUnknownReference, `test "etl-reads-orders" expect_rules[1]`},
				{CodeUnknownReference, `test "etl-reads-orders" expect_rules[2]`},
			},
			wantMsg: `rule "orders-access/write" is not defined; name rules as "policy/rule"`,
		},

		// Secrets.
		"inline postgres password": {
			mutate: func(m *Model) { pg(m, "orders-db").Password = "hunter2" },
			want:   []problem{{CodeInlineSecret, `postgres "orders-db" password`}},
		},
		"inline ssh private_key": {
			mutate: func(m *Model) { m.SSHHosts[0].PrivateKey = "hunter2" },
			want:   []problem{{CodeInlineSecret, `ssh_host "bastion" private_key`}},
		},
		"inline ssh password": {
			mutate: func(m *Model) { m.SSHHosts[0].Password = "hunter2" },
			want:   []problem{{CodeInlineSecret, `ssh_host "bastion" password`}},
		},
		"inline kubernetes token": {
			mutate: func(m *Model) { m.KubernetesClusters[0].Token = "hunter2" },
			want:   []problem{{CodeInlineSecret, `kubernetes_cluster "prod-cluster" token`}},
		},
		"inline kubeconfig": {
			mutate: func(m *Model) {
				m.KubernetesClusters[0].Token = ""
				m.KubernetesClusters[0].Kubeconfig = "apiVersion: v1 # hunter2"
			},
			want: []problem{{CodeInlineSecret, `kubernetes_cluster "prod-cluster" kubeconfig`}},
		},
		"inline mask hash_key": {
			mutate: func(m *Model) { mask(m, "emails").HashKey = "hunter2" },
			want:   []problem{{CodeInlineSecret, `mask "emails" hash_key`}},
		},
		"inline secret containing a colon": {
			mutate: func(m *Model) { pg(m, "orders-db").Password = "hunter2:x" },
			want:   []problem{{CodeInlineSecret, `postgres "orders-db" password`}},
		},
		"inline secret that looks like a URL": {
			mutate: func(m *Model) { pg(m, "orders-db").Password = "postgres://app:hunter2@db/orders" },
			want:   []problem{{CodeInlineSecret, `postgres "orders-db" password`}},
		},
		"env: without a name": {
			mutate: func(m *Model) { pg(m, "orders-db").Password = "env:" },
			want:   []problem{{CodeInvalidSecretRef, `postgres "orders-db" password`}},
		},
		"env: with a bad name": {
			mutate:  func(m *Model) { pg(m, "orders-db").Password = "env:hunter2-PW" },
			want:    []problem{{CodeInvalidSecretRef, `postgres "orders-db" password`}},
			wantMsg: "env: must be followed by an environment variable name",
		},
		"env: name starting with a digit": {
			mutate: func(m *Model) { pg(m, "orders-db").Password = "env:2hunter" },
			want:   []problem{{CodeInvalidSecretRef, `postgres "orders-db" password`}},
		},
		"file: relative path": {
			mutate:  func(m *Model) { m.SSHHosts[0].PrivateKey = "file:keys/hunter2" },
			want:    []problem{{CodeInvalidSecretRef, `ssh_host "bastion" private_key`}},
			wantMsg: "file: must be followed by an absolute, clean path",
		},
		"file: unclean path": {
			mutate: func(m *Model) { m.SSHHosts[0].PrivateKey = "file:/etc/gatehouse/../hunter2" },
			want:   []problem{{CodeInvalidSecretRef, `ssh_host "bastion" private_key`}},
		},
		"file: trailing slash": {
			mutate: func(m *Model) { m.SSHHosts[0].PrivateKey = "file:/etc/hunter2/" },
			want:   []problem{{CodeInvalidSecretRef, `ssh_host "bastion" private_key`}},
		},
		"file: empty": {
			mutate: func(m *Model) { m.SSHHosts[0].PrivateKey = "file:" },
			want:   []problem{{CodeInvalidSecretRef, `ssh_host "bastion" private_key`}},
		},
		"k8s: without a key": {
			mutate:  func(m *Model) { mask(m, "emails").HashKey = "k8s:gatehouse/hunter2" },
			want:    []problem{{CodeInvalidSecretRef, `mask "emails" hash_key`}},
			wantMsg: "k8s: must be followed by namespace/secret#key",
		},
		"k8s: without a namespace": {
			mutate: func(m *Model) { mask(m, "emails").HashKey = "k8s:hunter2#key" },
			want:   []problem{{CodeInvalidSecretRef, `mask "emails" hash_key`}},
		},
		"k8s: upper-case namespace": {
			mutate: func(m *Model) { mask(m, "emails").HashKey = "k8s:Hunter2/secret#key" },
			want:   []problem{{CodeInvalidSecretRef, `mask "emails" hash_key`}},
		},
		"k8s: nested secret path": {
			mutate: func(m *Model) { mask(m, "emails").HashKey = "k8s:ns/hunter2/x#key" },
			want:   []problem{{CodeInvalidSecretRef, `mask "emails" hash_key`}},
		},
		"k8s: empty key": {
			mutate: func(m *Model) { mask(m, "emails").HashKey = "k8s:ns/hunter2#" },
			want:   []problem{{CodeInvalidSecretRef, `mask "emails" hash_key`}},
		},
		"upper-case scheme is not a reference": {
			mutate: func(m *Model) { pg(m, "orders-db").Password = "ENV:HUNTER2" },
			want:   []problem{{CodeInlineSecret, `postgres "orders-db" password`}},
		},

		// Resources.
		"bad postgres address": {
			mutate: func(m *Model) { pg(m, "orders-db").Address = "orders.internal" },
			want:   []problem{{CodeInvalidValue, `postgres "orders-db" address`}},
		},
		"postgres port out of range": {
			mutate: func(m *Model) { pg(m, "orders-db").Address = "orders.internal:65536" },
			want:   []problem{{CodeInvalidValue, `postgres "orders-db" address`}},
		},
		"bad tls mode": {
			mutate: func(m *Model) { pg(m, "orders-db").TLS.Mode = "prefer" },
			want:   []problem{{CodeInvalidValue, `postgres "orders-db" tls.mode`}},
		},
		"bad ssh host_key": {
			mutate: func(m *Model) { m.SSHHosts[0].HostKey = "ssh-dss AAAAB3NzaC1kc3M=" },
			want:   []problem{{CodeInvalidValue, `ssh_host "bastion" host_key`}},
		},
		"ssh_host without credentials": {
			mutate: func(m *Model) { m.SSHHosts[0].PrivateKey = "" },
			want:   []problem{{CodeMissingAttribute, `ssh_host "bastion"`}},
		},
		"kubernetes server over http": {
			mutate: func(m *Model) { m.KubernetesClusters[0].Server = "http://k8s.internal:6443" },
			want:   []problem{{CodeInvalidValue, `kubernetes_cluster "prod-cluster" server`}},
		},
		"kubeconfig and token": {
			mutate: func(m *Model) { m.KubernetesClusters[0].Kubeconfig = "file:/etc/k8s/config" },
			want:   []problem{{CodeConflict, `kubernetes_cluster "prod-cluster" token`}},
		},
		"bad label key": {
			mutate: func(m *Model) { pg(m, "orders-db").Labels["-bad"] = "x" },
			want:   []problem{{CodeInvalidValue, `postgres "orders-db" labels`}},
		},

		// Policies and rules.
		"policy mixes postgres and ssh_host": {
			mutate: func(m *Model) { p := policy(m, "orders-access"); p.Resources = append(p.Resources, "bastion") },
			want:   []problem{{CodeMixedKinds, `policy "orders-access" resources[2]`}},
			wantMsg: `resource "bastion" is a ssh_host but this policy already covers postgres resources; ` +
				`a policy covers one kind of resource so that its rules see one request type; split it into one policy per kind`,
		},
		"policy mixes kubernetes and postgres": {
			mutate: func(m *Model) { policy(m, "k8s-deploy").Resources = []string{"prod-cluster", "analytics", "orders-db"} },
			want: []problem{
				{CodeMixedKinds, `policy "k8s-deploy" resources[1]`},
				{CodeMixedKinds, `policy "k8s-deploy" resources[2]`},
			},
		},
		"review rule without approval": {
			mutate:  func(m *Model) { rule(m, "ssh-ops", "forward").Approval = nil },
			want:    []problem{{CodeMissingAttribute, `policy "ssh-ops" rule "forward" approval`}},
			wantMsg: "a review rule needs an approval block naming the approver groups",
		},
		"approval on an allow rule": {
			mutate:  func(m *Model) { rule(m, "ssh-ops", "shell").Approval = &Approval{Groups: []string{"sre"}} },
			want:    []problem{{CodeConflict, `policy "ssh-ops" rule "shell" approval`}},
			wantMsg: "approval is only allowed on review rules",
		},
		"approval on a deny rule": {
			mutate: func(m *Model) { rule(m, "orders-access", "no-ddl").Approval = &Approval{Groups: []string{"dba"}} },
			want:   []problem{{CodeConflict, `policy "orders-access" rule "no-ddl" approval`}},
		},
		"approval without groups": {
			mutate: func(m *Model) { rule(m, "ssh-ops", "forward").Approval.Groups = nil },
			want:   []problem{{CodeMissingAttribute, `policy "ssh-ops" rule "forward" approval.groups`}},
		},
		"approval with an empty group": {
			mutate: func(m *Model) { rule(m, "ssh-ops", "forward").Approval.Groups = []string{"security", " "} },
			want:   []problem{{CodeInvalidValue, `policy "ssh-ops" rule "forward" approval.groups[1]`}},
		},
		"approval count too high": {
			mutate: func(m *Model) { rule(m, "ssh-ops", "forward").Approval.Count = 11 },
			want:   []problem{{CodeInvalidValue, `policy "ssh-ops" rule "forward" approval.count`}},
		},
		"approval count negative": {
			mutate: func(m *Model) { rule(m, "ssh-ops", "forward").Approval.Count = -1 },
			want:   []problem{{CodeInvalidValue, `policy "ssh-ops" rule "forward" approval.count`}},
		},
		"approval timeout too long": {
			mutate: func(m *Model) { rule(m, "ssh-ops", "forward").Approval.Timeout = "25h" },
			want:   []problem{{CodeInvalidValue, `policy "ssh-ops" rule "forward" approval.timeout`}},
		},
		"approval timeout zero": {
			mutate: func(m *Model) { rule(m, "ssh-ops", "forward").Approval.Timeout = "0s" },
			want:   []problem{{CodeInvalidValue, `policy "ssh-ops" rule "forward" approval.timeout`}},
		},
		"approval timeout not a duration": {
			mutate: func(m *Model) { rule(m, "ssh-ops", "forward").Approval.Timeout = "15" },
			want:   []problem{{CodeInvalidValue, `policy "ssh-ops" rule "forward" approval.timeout`}},
		},
		"approval wait longer than its timeout": {
			mutate:  func(m *Model) { a := rule(m, "ssh-ops", "forward").Approval; a.Timeout, a.Wait = "10m", "20m" },
			want:    []problem{{CodeInvalidValue, `policy "ssh-ops" rule "forward" approval.wait`}},
			wantMsg: `approval.wait "20m" is longer than approval.timeout (10m0s)`,
		},
		"approval wait longer than the default timeout": {
			mutate: func(m *Model) { rule(m, "ssh-ops", "forward").Approval.Wait = "1h" },
			want:   []problem{{CodeInvalidValue, `policy "ssh-ops" rule "forward" approval.wait`}},
		},
		"approval valid_for not a duration": {
			mutate: func(m *Model) { rule(m, "ssh-ops", "forward").Approval.ValidFor = "forever" },
			want:   []problem{{CodeInvalidValue, `policy "ssh-ops" rule "forward" approval.valid_for`}},
		},
		"approval webhook with a bad URL": {
			mutate: func(m *Model) {
				rule(m, "ssh-ops", "forward").Approval.Webhook = &Webhook{URL: "ftp://hooks.example.com/x"}
			},
			want: []problem{{CodeInvalidValue, `policy "ssh-ops" rule "forward" approval.webhook.url`}},
		},
		"approval webhook URL with credentials": {
			mutate: func(m *Model) {
				rule(m, "ssh-ops", "forward").Approval.Webhook = &Webhook{URL: "https://bot:hunter2@hooks.example.com/x"}
			},
			want: []problem{{CodeInlineSecret, `policy "ssh-ops" rule "forward" approval.webhook.url`}},
		},
		"approval webhook with an inline secret": {
			mutate: func(m *Model) {
				rule(m, "ssh-ops", "forward").Approval.Webhook = &Webhook{URL: "https://hooks.example.com/x", Secret: "s3cr3t-value"}
			},
			want: []problem{{CodeInlineSecret, `policy "ssh-ops" rule "forward" approval.webhook.secret`}},
		},
		"approval webhook URL by reference, secret by reference": {
			mutate: func(m *Model) {
				rule(m, "ssh-ops", "forward").Approval.Webhook = &Webhook{URL: "env:SLACK_WEBHOOK_URL", Secret: "file:/etc/gatehouse/hook-secret"}
			},
		},
		"approval webhook URL reference that is malformed": {
			mutate: func(m *Model) { rule(m, "ssh-ops", "forward").Approval.Webhook = &Webhook{URL: "env:not a name"} },
			want:   []problem{{CodeInvalidSecretRef, `policy "ssh-ops" rule "forward" approval.webhook.url`}},
		},
		"approval timeout of exactly 24h is fine": {
			mutate: func(m *Model) { rule(m, "ssh-ops", "forward").Approval.Timeout = "24h" },
		},
		"on names a postgres request kind in an ssh_host policy": {
			mutate:  func(m *Model) { rule(m, "ssh-ops", "shell").On = []string{"shell", "query"} },
			want:    []problem{{CodeInvalidValue, `policy "ssh-ops" rule "shell" on[1]`}},
			wantMsg: `"query" is not a request kind of ssh_host resources; use one of "connect", "exec", "shell", "subsystem", "forward"`,
		},
		"on names an unknown request kind": {
			mutate: func(m *Model) { rule(m, "k8s-deploy", "deploy").On = []string{"kubectl"} },
			want:   []problem{{CodeInvalidValue, `policy "k8s-deploy" rule "deploy" on[0]`}},
		},
		"on is case sensitive": {
			mutate: func(m *Model) { rule(m, "orders-access", "no-ddl").On = []string{"Query"} },
			want:   []problem{{CodeInvalidValue, `policy "orders-access" rule "no-ddl" on[0]`}},
		},
		"bad effect": {
			mutate: func(m *Model) { rule(m, "k8s-deploy", "deploy").Effect = "permit" },
			want:   []problem{{CodeInvalidValue, `policy "k8s-deploy" rule "deploy" effect`}},
		},
		"rule without reason": {
			mutate: func(m *Model) { rule(m, "k8s-deploy", "deploy").Reason = "  " },
			want:   []problem{{CodeMissingAttribute, `policy "k8s-deploy" rule "deploy" reason`}},
		},

		// Masks.
		"mask column with four parts": {
			mutate: func(m *Model) {
				k := mask(m, "card-numbers")
				k.Columns = append(k.Columns, "db.billing.invoices.card_number")
			},
			want:    []problem{{CodeInvalidValue, `mask "card-numbers" columns[2]`}},
			wantMsg: `column "db.billing.invoices.card_number" must be schema.table.column or table.column`,
		},
		"mask column with one part": {
			mutate: func(m *Model) { mask(m, "card-numbers").Columns = []string{"card_number"} },
			want:   []problem{{CodeInvalidValue, `mask "card-numbers" columns[0]`}},
		},
		"mask column that is not an identifier": {
			mutate:  func(m *Model) { mask(m, "card-numbers").Columns = []string{"orders.card-number"} },
			want:    []problem{{CodeInvalidValue, `mask "card-numbers" columns[0]`}},
			wantMsg: `column "orders.card-number": "card-number" is not a plain SQL identifier`,
		},
		"mask column with an empty part": {
			mutate: func(m *Model) { mask(m, "card-numbers").Columns = []string{"public..card_number"} },
			want:   []problem{{CodeInvalidValue, `mask "card-numbers" columns[0]`}},
		},
		"unknown mask detector": {
			mutate:  func(m *Model) { k := mask(m, "card-numbers"); k.Detectors = append(k.Detectors, "ssn") },
			want:    []problem{{CodeInvalidValue, `mask "card-numbers" detectors[2]`}},
			wantMsg: `"ssn" is not a detector; use one of "card_number", "email", "iban", "phone", "us_ssn"`,
		},
		"unknown mask method": {
			mutate: func(m *Model) { mask(m, "card-numbers").Method = "scramble" },
			want:   []problem{{CodeInvalidValue, `mask "card-numbers" method`}},
		},
		"mask without method": {
			mutate: func(m *Model) { mask(m, "card-numbers").Method = "" },
			want:   []problem{{CodeInvalidValue, `mask "card-numbers" method`}},
		},
		"hash without hash_key": {
			mutate:  func(m *Model) { mask(m, "emails").HashKey = "" },
			want:    []problem{{CodeMissingAttribute, `mask "emails" hash_key`}},
			wantMsg: "the hash method needs hash_key",
		},
		"hash_key without hash": {
			mutate: func(m *Model) { mask(m, "card-numbers").HashKey = "env:MASK_HASH_KEY" },
			want:   []problem{{CodeConflict, `mask "card-numbers" hash_key`}},
		},
		"mask that hides nothing": {
			mutate: func(m *Model) { k := mask(m, "card-numbers"); k.Columns = nil; k.Detectors = nil },
			want:   []problem{{CodeMissingAttribute, `mask "card-numbers"`}},
		},

		// Kubernetes masks.
		"kubernetes mask on a postgres resource too": {
			mutate: func(m *Model) { k := mask(m, "secret-values"); k.Resources = append(k.Resources, "orders-db") },
			want: []problem{
				{CodeMixedKinds, `mask "secret-values" resources[1]`},
				// The mask is a kubernetes_cluster mask (its first
				// resource), so nothing else is reported.
			},
			wantMsg: `resource "orders-db" is a postgres but this mask already applies to kubernetes_cluster resources`,
		},
		"postgres mask on a kubernetes_cluster too": {
			mutate:  func(m *Model) { k := mask(m, "card-numbers"); k.Resources = append(k.Resources, "prod-cluster") },
			want:    []problem{{CodeMixedKinds, `mask "card-numbers" resources[1]`}},
			wantMsg: `resource "prod-cluster" is a kubernetes_cluster but this mask already applies to postgres resources`,
		},
		"kubernetes mask on an ssh_host": {
			mutate:  func(m *Model) { mask(m, "secret-values").Resources = []string{"bastion"} },
			want:    []problem{{CodeInvalidValue, `mask "secret-values" resources[0]`}},
			wantMsg: `resource "bastion" is a ssh_host; masks apply to postgres and kubernetes_cluster resources`,
		},
		"fields on a postgres mask": {
			mutate:  func(m *Model) { mask(m, "card-numbers").Fields = []string{"secrets/data"} },
			want:    []problem{{CodeConflict, `mask "card-numbers" fields`}},
			wantMsg: `fields names Kubernetes object fields, for masks of kubernetes_cluster resources; this mask applies to postgres resources`,
		},
		"a postgres mask with only fields": {
			mutate: func(m *Model) {
				k := mask(m, "card-numbers")
				k.Columns, k.Detectors, k.Fields = nil, nil, []string{"secrets/data"}
			},
			want: []problem{{CodeConflict, `mask "card-numbers" fields`}, {CodeMissingAttribute, `mask "card-numbers"`}},
		},
		"kubernetes mask without fields": {
			mutate:  func(m *Model) { mask(m, "secret-values").Fields = nil },
			want:    []problem{{CodeMissingAttribute, `mask "secret-values" fields`}},
			wantMsg: "fields is required: name the Kubernetes object fields this mask hides, such as secrets/data",
		},
		"columns on a kubernetes mask": {
			mutate:  func(m *Model) { mask(m, "secret-values").Columns = []string{"orders.card_number"} },
			want:    []problem{{CodeConflict, `mask "secret-values" columns`}},
			wantMsg: "columns is for masks of postgres resources; this mask applies to kubernetes_cluster resources",
		},
		"detectors on a kubernetes mask": {
			mutate: func(m *Model) { mask(m, "secret-values").Detectors = []string{"email"} },
			want:   []problem{{CodeConflict, `mask "secret-values" detectors`}},
		},
		"allow_in_predicates on a kubernetes mask": {
			mutate: func(m *Model) { mask(m, "secret-values").AllowInPredicates = true },
			want:   []problem{{CodeConflict, `mask "secret-values" allow_in_predicates`}},
		},
		"kubernetes mask field without a path": {
			mutate:  func(m *Model) { mask(m, "secret-values").Fields = []string{"secrets/data", "secrets"} },
			want:    []problem{{CodeInvalidValue, `mask "secret-values" fields[1]`}},
			wantMsg: `field "secrets" names no path: want RESOURCE[.GROUP]/PATH such as secrets/data`,
		},
		"kubernetes mask field with an upper-case resource": {
			mutate:  func(m *Model) { mask(m, "secret-values").Fields = []string{"Secrets/data"} },
			want:    []problem{{CodeInvalidValue, `mask "secret-values" fields[0]`}},
			wantMsg: `resource "Secrets" must be lower case`,
		},
		"kubernetes mask field with an empty path segment": {
			mutate:  func(m *Model) { mask(m, "secret-values").Fields = []string{"widgets.example.com/spec..password"} },
			want:    []problem{{CodeInvalidValue, `mask "secret-values" fields[0]`}},
			wantMsg: `an empty path segment`,
		},
		"kubernetes mask field listed twice": {
			mutate: func(m *Model) {
				mask(m, "secret-values").Fields = []string{"secrets/data", "configmaps/data", "secrets/data"}
			},
			want:    []problem{{CodeDuplicateName, `mask "secret-values" fields[2]`}},
			wantMsg: `field "secrets/data" is already listed (fields[0])`,
		},
		"kubernetes mask hash without hash_key": {
			mutate:  func(m *Model) { mask(m, "secret-values").Method = MaskHash },
			want:    []problem{{CodeMissingAttribute, `mask "secret-values" hash_key`}},
			wantMsg: "the hash method needs hash_key",
		},
		"kubernetes mask with an unknown method": {
			mutate: func(m *Model) { mask(m, "secret-values").Method = "blur" },
			want:   []problem{{CodeInvalidValue, `mask "secret-values" method`}},
		},
		"mask of undefined resources with fields and columns": {
			mutate: func(m *Model) {
				k := mask(m, "secret-values")
				k.Resources = []string{"staging-cluster"}
				k.Columns = []string{"orders.card_number"}
			},
			want: []problem{{CodeUnknownReference, `mask "secret-values" resources[0]`}, {CodeConflict, `mask "secret-values" fields`}},
		},
		"mask of undefined resources that hides nothing": {
			mutate: func(m *Model) {
				k := mask(m, "secret-values")
				k.Resources = []string{"staging-cluster"}
				k.Fields = nil
			},
			want: []problem{{CodeUnknownReference, `mask "secret-values" resources[0]`}, {CodeMissingAttribute, `mask "secret-values"`}},
		},
		"mask of undefined resources with a bad field": {
			mutate: func(m *Model) {
				k := mask(m, "secret-values")
				k.Resources = []string{"staging-cluster"}
				k.Fields = []string{"secrets/"}
			},
			want: []problem{{CodeUnknownReference, `mask "secret-values" resources[0]`}, {CodeInvalidValue, `mask "secret-values" fields[0]`}},
		},

		// Identity providers.
		"http issuer that is not loopback": {
			mutate:  func(m *Model) { idp(m, "corp-okta").Issuer = "http://corp.okta.com/oauth2/default" },
			want:    []problem{{CodeInvalidValue, `identity_provider "corp-okta" issuer`}},
			wantMsg: "must use https; plain http is only accepted for loopback development issuers",
		},
		"http issuer on a private address": {
			mutate: func(m *Model) { idp(m, "corp-okta").Issuer = "http://10.0.0.1:4444/" },
			want:   []problem{{CodeInvalidValue, `identity_provider "corp-okta" issuer`}},
		},
		"http issuer on 0.0.0.0": {
			mutate: func(m *Model) { idp(m, "corp-okta").Issuer = "http://0.0.0.0:4444/" },
			want:   []problem{{CodeInvalidValue, `identity_provider "corp-okta" issuer`}},
		},
		"http issuer on a name that starts with localhost": {
			mutate: func(m *Model) { idp(m, "corp-okta").Issuer = "http://localhost.evil.example/" },
			want:   []problem{{CodeInvalidValue, `identity_provider "corp-okta" issuer`}},
		},
		"http issuer on a name that embeds 127.0.0.1": {
			mutate: func(m *Model) { idp(m, "corp-okta").Issuer = "http://127.0.0.1.nip.io/" },
			want:   []problem{{CodeInvalidValue, `identity_provider "corp-okta" issuer`}},
		},
		"http issuer with loopback userinfo": {
			mutate: func(m *Model) { idp(m, "corp-okta").Issuer = "http://127.0.0.1@evil.example/" },
			want:   []problem{{CodeInlineSecret, `identity_provider "corp-okta" issuer`}},
		},
		"http://127.0.0.1:4445/ issuer is accepted": {
			mutate: func(m *Model) { idp(m, "corp-okta").Issuer = "http://127.0.0.1:4445/" },
		},
		"http://localhost:8080 issuer is accepted": {
			mutate: func(m *Model) { idp(m, "corp-okta").Issuer = "http://localhost:8080" },
		},
		"http://[::1]:4444/ issuer is accepted": {
			mutate: func(m *Model) { idp(m, "corp-okta").Issuer = "http://[::1]:4444/" },
		},
		"issuer without a scheme": {
			mutate:  func(m *Model) { idp(m, "corp-okta").Issuer = "corp.okta.com" },
			want:    []problem{{CodeInvalidValue, `identity_provider "corp-okta" issuer`}},
			wantMsg: "must be an https URL",
		},
		"ftp issuer": {
			mutate: func(m *Model) { idp(m, "corp-okta").Issuer = "ftp://corp.okta.com/" },
			want:   []problem{{CodeInvalidValue, `identity_provider "corp-okta" issuer`}},
		},
		"missing issuer": {
			mutate: func(m *Model) { idp(m, "corp-okta").Issuer = "" },
			want:   []problem{{CodeMissingAttribute, `identity_provider "corp-okta" issuer`}},
		},
		"http jwks_url that is not loopback": {
			mutate: func(m *Model) { idp(m, "ci-github").JWKSURL = "http://token.actions.githubusercontent.com/jwks" },
			want:   []problem{{CodeInvalidValue, `identity_provider "ci-github" jwks_url`}},
		},
		"alg none": {
			mutate:  func(m *Model) { p := idp(m, "corp-okta"); p.Algorithms = append(p.Algorithms, "none") },
			want:    []problem{{CodeInvalidValue, `identity_provider "corp-okta" algorithms[2]`}},
			wantMsg: `algorithm "none" is not accepted; use asymmetric algorithms only`,
		},
		"alg HS256": {
			mutate:  func(m *Model) { idp(m, "corp-okta").Algorithms = []string{"HS256"} },
			want:    []problem{{CodeInvalidValue, `identity_provider "corp-okta" algorithms[0]`}},
			wantMsg: `algorithm "HS256" is not accepted`,
		},
		"alg in lower case": {
			mutate: func(m *Model) { idp(m, "corp-okta").Algorithms = []string{"rs256"} },
			want:   []problem{{CodeInvalidValue, `identity_provider "corp-okta" algorithms[0]`}},
		},
		"no audiences": {
			mutate: func(m *Model) { idp(m, "corp-okta").Audiences = nil },
			want:   []problem{{CodeMissingAttribute, `identity_provider "corp-okta" audiences`}},
		},
		"empty audience": {
			mutate: func(m *Model) { idp(m, "ci-github").Audiences = []string{"x", ""} },
			want:   []problem{{CodeInvalidValue, `identity_provider "ci-github" audiences[1]`}},
		},
		"jwks and jwks_url": {
			mutate: func(m *Model) { idp(m, "dev-local").JWKSURL = "http://127.0.0.1:4444/jwks" },
			want:   []problem{{CodeConflict, `identity_provider "dev-local" jwks`}},
		},
		"jwks without keys": {
			mutate: func(m *Model) { idp(m, "dev-local").JWKS = `{"keys":[]}` },
			want:   []problem{{CodeInvalidValue, `identity_provider "dev-local" jwks`}},
		},
		"identity with subject and match": {
			mutate: func(m *Model) { identity(m, "etl").Subject = "etl-nightly" },
			want:   []problem{{CodeConflict, `identity "etl" match`}},
		},
		"identity with neither subject nor match": {
			mutate: func(m *Model) { identity(m, "etl").Match = "" },
			want:   []problem{{CodeMissingAttribute, `identity "etl"`}},
		},

		// Tests.
		"test with both sql and request": {
			mutate:  func(m *Model) { test(m, "etl-reads-orders").Request = `{"kind":"query"}` },
			want:    []problem{{CodeConflict, `test "etl-reads-orders" request`}},
			wantMsg: "set sql or request, not both",
		},
		"test with neither sql nor request": {
			mutate: func(m *Model) { test(m, "etl-reads-orders").SQL = "" },
			want:   []problem{{CodeMissingAttribute, `test "etl-reads-orders"`}},
		},
		"sql on an ssh_host resource": {
			mutate:  func(m *Model) { t := test(m, "adhoc-forward"); t.Request = ""; t.SQL = "SELECT 1" },
			want:    []problem{{CodeInvalidValue, `test "adhoc-forward" sql`}},
			wantMsg: `sql is only for postgres resources; "bastion" is a ssh_host, use request`,
		},
		"sql on a kubernetes resource": {
			mutate: func(m *Model) { t := test(m, "deploy"); t.Request = ""; t.SQL = "SELECT 1" },
			want:   []problem{{CodeInvalidValue, `test "deploy" sql`}},
		},
		"request that is not a JSON object": {
			mutate: func(m *Model) { test(m, "deploy").Request = `["api"]` },
			want:   []problem{{CodeInvalidValue, `test "deploy" request`}},
		},
		"request with trailing data": {
			mutate: func(m *Model) { test(m, "deploy").Request = `{"kind":"api"} {}` },
			want:   []problem{{CodeInvalidValue, `test "deploy" request`}},
		},
		"claims that are not a JSON object": {
			mutate: func(m *Model) { test(m, "etl-reads-orders").Claims = `null` },
			want:   []problem{{CodeInvalidValue, `test "etl-reads-orders" claims`}},
		},
		"now that is not RFC 3339": {
			mutate: func(m *Model) { test(m, "etl-reads-orders").Now = "2026-01-02 15:04:05" },
			want:   []problem{{CodeInvalidValue, `test "etl-reads-orders" now`}},
		},
		"bad expected effect": {
			mutate: func(m *Model) { test(m, "deploy").Expect = "allowed" },
			want:   []problem{{CodeInvalidValue, `test "deploy" expect`}},
		},
		"expect_masks with a bad column": {
			mutate: func(m *Model) {
				test(m, "etl-reads-orders").ExpectMasks = map[string]string{"card_number": MaskPartial}
			},
			want: []problem{{CodeInvalidValue, `test "etl-reads-orders" expect_masks`}},
		},
		"expect_masks with a bad detector": {
			mutate: func(m *Model) {
				test(m, "etl-reads-orders").ExpectMasks = map[string]string{"detector:ssn": MaskPartial}
			},
			want: []problem{{CodeInvalidValue, `test "etl-reads-orders" expect_masks`}},
		},
		"expect_masks with a kubernetes field": {
			mutate: func(m *Model) {
				test(m, "deploy").ExpectMasks = map[string]string{"kubernetes:secrets/data": MaskRedact, "kubernetes:widgets.example.com/spec.password": MaskRedact}
			},
			want: []problem{},
		},
		"expect_masks with a bad kubernetes field": {
			mutate: func(m *Model) {
				test(m, "deploy").ExpectMasks = map[string]string{"kubernetes:secrets": MaskRedact}
			},
			want:    []problem{{CodeInvalidValue, `test "deploy" expect_masks`}},
			wantMsg: `"kubernetes:secrets": field "secrets" names no path`,
		},
		"expect_masks with a kubernetes field without its prefix": {
			mutate: func(m *Model) {
				test(m, "deploy").ExpectMasks = map[string]string{"secrets/data": MaskRedact}
			},
			want:    []problem{{CodeInvalidValue, `test "deploy" expect_masks`}},
			wantMsg: `"secrets/data" is not a column; write a Kubernetes object field as kubernetes:secrets/data`,
		},
		"expect_masks with a bad method": {
			mutate: func(m *Model) {
				test(m, "etl-reads-orders").ExpectMasks = map[string]string{"orders.card_number": "blur"}
			},
			want: []problem{{CodeInvalidValue, `test "etl-reads-orders" expect_masks`}},
		},

		// Several problems come out in model order.
		"problems in model order": {
			mutate: func(m *Model) {
				test(m, "deploy").Expect = "maybe"
				mask(m, "card-numbers").Method = "blur"
				rule(m, "ssh-ops", "shell").Effect = "maybe"
				m.KubernetesClusters[0].Server = "ftp://x"
				m.SSHHosts[0].User = ""
				pg(m, "analytics").Database = ""
				identity(m, "deploy-bot").Provider = "nope"
				idp(m, "dev-local").Audiences = nil
			},
			want: []problem{
				{CodeMissingAttribute, `identity_provider "dev-local" audiences`},
				{CodeUnknownReference, `identity "deploy-bot" provider`},
				{CodeMissingAttribute, `postgres "analytics" database`},
				{CodeMissingAttribute, `ssh_host "bastion" user`},
				{CodeInvalidValue, `kubernetes_cluster "prod-cluster" server`},
				{CodeInvalidValue, `policy "ssh-ops" rule "shell" effect`},
				{CodeInvalidValue, `mask "card-numbers" method`},
				{CodeInvalidValue, `test "deploy" expect`},
			},
		},
	}

	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			m := realisticModel()
			tc.mutate(&m)
			ps := m.Validate()
			got := summarize(ps)
			want := tc.want
			if want == nil {
				want = []problem{}
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("problems:\n got: %v\nwant: %v\nfull: %v", got, want, ps)
			}
			for _, p := range ps {
				if p.Message == "" {
					t.Errorf("%v has no message", p)
				}
				// Messages never repeat a secret (every secret in this
				// table contains hunter2).
				if strings.Contains(p.Message, "hunter2") || strings.Contains(p.Error(), "hunter2") {
					t.Errorf("problem message leaks the secret: %q", p.Message)
				}
			}
			if tc.wantMsg != "" && !strings.Contains(ps[0].Message, tc.wantMsg) {
				t.Errorf("message %q does not contain %q", ps[0].Message, tc.wantMsg)
			}
			if len(ps) > 0 && ps.Err() == nil {
				t.Errorf("Err() = nil with %d problems", len(ps))
			}
		})
	}
}

func TestValidateInlineSecretMessage(t *testing.T) {
	m := realisticModel()
	pg(&m, "orders-db").Password = "hunter2"
	ps := m.Validate()
	if len(ps) != 1 {
		t.Fatalf("got %v", ps)
	}
	p := ps[0]
	if p.Code != CodeInlineSecret {
		t.Errorf("code %q, want %q", p.Code, CodeInlineSecret)
	}
	wantRef := Ref{Kind: KindPostgres, Name: "orders-db", Attr: "password", Index: -1}
	if p.Ref != wantRef {
		t.Errorf("ref %#v, want %#v", p.Ref, wantRef)
	}
	for _, s := range []string{"password must be a secret reference, not a secret value", `"env:NAME"`, `"file:/absolute/path"`, `"k8s:namespace/secret#key"`} {
		if !strings.Contains(p.Message, s) {
			t.Errorf("message %q does not mention %s", p.Message, s)
		}
	}
	for _, s := range []string{p.Message, p.Error(), ps.Error(), fmt.Sprint(ps), fmt.Sprintf("%+v", ps)} {
		if strings.Contains(s, "hunter2") {
			t.Errorf("the secret leaks into %q", s)
		}
	}
}

// TestValidateRefs pins the Ref fields (not just their string form) that
// front ends map back to source positions.
func TestValidateRefs(t *testing.T) {
	tests := map[string]struct {
		mutate func(m *Model)
		want   Ref
	}{
		"object": {
			mutate: func(m *Model) { m.Postgres = append(m.Postgres, *pg(m, "analytics")) },
			want:   Ref{Kind: "postgres", Name: "analytics", Index: -1},
		},
		"attribute": {
			mutate: func(m *Model) { mask(m, "emails").HashKey = "" },
			want:   Ref{Kind: "mask", Name: "emails", Attr: "hash_key", Index: -1},
		},
		"list element": {
			mutate: func(m *Model) { policy(m, "k8s-deploy").Resources = []string{"prod-cluster", "nope"} },
			want:   Ref{Kind: "policy", Name: "k8s-deploy", Attr: "resources", Index: 1},
		},
		"rule": {
			mutate: func(m *Model) { rule(m, "ssh-ops", "shell").Name = "she ll" },
			want:   Ref{Kind: "policy", Name: "ssh-ops", Rule: "she ll", Index: -1},
		},
		"rule attribute element": {
			mutate: func(m *Model) { rule(m, "ssh-ops", "shell").On = []string{"exec", "api"} },
			want:   Ref{Kind: "policy", Name: "ssh-ops", Rule: "shell", Attr: "on", Index: 1},
		},
		"mask field element": {
			mutate: func(m *Model) { mask(m, "secret-values").Fields = []string{"secrets/data", "secrets/data."} },
			want:   Ref{Kind: "mask", Name: "secret-values", Attr: "fields", Index: 1},
		},
		"rule nested attribute": {
			mutate: func(m *Model) { rule(m, "ssh-ops", "forward").Approval.Timeout = "1y" },
			want:   Ref{Kind: "policy", Name: "ssh-ops", Rule: "forward", Attr: "approval.timeout", Index: -1},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			m := realisticModel()
			tc.mutate(&m)
			ps := m.Validate()
			if len(ps) != 1 {
				t.Fatalf("got %v", ps)
			}
			if ps[0].Ref != tc.want {
				t.Errorf("ref %#v, want %#v", ps[0].Ref, tc.want)
			}
		})
	}
}

// TestValidateDeterministic: Validate's output feeds CI annotations and
// golden files, so the same model must always give the same problems in the
// same order.
func TestValidateDeterministicLabels(t *testing.T) {
	m := realisticModel()
	pg(&m, "orders-db").Labels = map[string]string{"-a": "", "-b": "", "-c": "", "-d": "", "-e": ""}
	first := m.Validate().Error()
	for i := 0; i < 50; i++ {
		if got := m.Validate().Error(); got != first {
			t.Fatalf("regression: Validate reports the problems of a map attribute (labels) in random order "+
				"(validator.labels ranges over the map), so the same model gives different output run to run:\n%s\n---\n%s", first, got)
		}
	}
}

func TestValidateDeterministicExpectMasks(t *testing.T) {
	m := realisticModel()
	test(&m, "etl-reads-orders").ExpectMasks = map[string]string{"a": "x", "b": "x", "c": "x", "d": "x"}
	first := m.Validate().Error()
	for i := 0; i < 50; i++ {
		if got := m.Validate().Error(); got != first {
			t.Fatalf("regression: Validate reports expect_masks problems in random order (validator.test ranges over the map):\n%s\n---\n%s", first, got)
		}
	}
}

// TestValidateTestNamesPrintable: test names may be sentences, and the
// problem says they "must be 1 to 200 printable characters".
func TestValidateTestNamesPrintable(t *testing.T) {
	t.Run("200 characters of non-ASCII text are accepted", func(t *testing.T) {
		m := realisticModel()
		name := strings.Repeat("é", 200) // 200 characters, 400 bytes
		test(&m, "deploy").Name = name
		if ps := m.Validate(); len(ps) != 0 {
			t.Fatalf("regression: checkTestName counts bytes, not characters (len(n) <= 200), so a %d-character, %d-byte "+
				"name is refused with a message promising 1 to 200 characters: %.120s", len([]rune(name)), len(name), ps.Error())
		}
	})
	for name, bad := range map[string]string{
		"right-to-left override": "allow \u202e wolley",
		"zero-width space":       "deploy\u200b",
		"line separator":         "deploy\u2028prod",
	} {
		t.Run(name+" is refused", func(t *testing.T) {
			m := realisticModel()
			test(&m, "deploy").Name = bad
			ps := m.Validate()
			if len(ps) == 0 {
				t.Fatalf("regression: test name %q, which is not printable (unicode.IsPrint is false), is accepted: "+
					"checkTestName only refuses unicode.IsControl (Cc) runes, so format (Cf) and separator (Zl/Zp) "+
					"characters such as bidi overrides reach test reports", bad)
			}
			if got := summarize(ps); len(got) != 1 || got[0].Code != CodeInvalidName {
				t.Errorf("got %v", got)
			}
		})
	}
}
