// Package celpolicy compiles a bundle's CEL into programs and decides
// requests with them.
//
// Its public face is small: Compile a payload into a Policy, then Decide
// inputs, ResolveIdentity tokens, and RunTests. Callers never touch cel-go.
//
// Every variable a rule can see is declared with a Go struct type (through
// cel-go's native types), so a misspelled field such as identity.grups is a
// compile error at plan time rather than a silent false at run time.
package celpolicy

import (
	"fmt"
	"reflect"
	"time"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/cost"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/ext"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// Identity is the caller, as verified from its token and mapped by the
// bundle's identities. CEL: `identity`.
type Identity struct {
	// Name is the bundle identity the caller resolved to, or "" for a
	// verified caller that matches no named identity.
	Name    string `cel:"name" json:"name"`
	Issuer  string `cel:"issuer" json:"issuer"`
	Subject string `cel:"subject" json:"subject"`
	// Groups are the token's groups plus the identity's extra groups.
	Groups []string `cel:"groups" json:"groups"`
	// Claims are the token's claims.
	Claims map[string]any `cel:"claims" json:"claims,omitempty"`
}

// Resource is the target of a request. CEL: `resource`.
type Resource struct {
	Name   string            `cel:"name" json:"name"`
	Kind   string            `cel:"kind" json:"kind"`
	Labels map[string]string `cel:"labels" json:"labels,omitempty"`
}

// Session describes the caller's session. CEL: `session`.
type Session struct {
	ID        string    `cel:"id" json:"id,omitempty"`
	StartedAt time.Time `cel:"started_at" json:"started_at"`
	Counters  Counters  `cel:"counters" json:"counters"`
}

// Counters are running totals of a session.
type Counters struct {
	// Requests decided so far in the session (statements, commands, calls).
	Requests int64 `cel:"requests" json:"requests"`
	// Denied requests so far in the session.
	Denied int64 `cel:"denied" json:"denied"`
}

// Request is the kind-specific request: *PostgresRequest, *SSHRequest or
// *KubernetesRequest. CEL: `request`, typed by the policy's resource kind.
// The kinds table (kinds.go) lists, per resource kind, its Go type, its
// size bounds and its JSON parser.
type Request interface {
	ResourceKind() string
	RequestKind() string
	// Invalid is why the request could not be understood (SQL that does
	// not parse, a portal the gateway never saw bound), or "". Decide
	// denies an invalid request without evaluating rules.
	Invalid() string
	// Describe renders the request in one line for reports and logs.
	Describe() string
}

// PostgresRequest is a PostgreSQL request.
type PostgresRequest struct {
	// Kind is "connect", "query" or "function_call".
	Kind string `cel:"kind" json:"kind"`
	// Statements are the facts of the query (see package sqlfacts). A
	// fast-path function call appears as one statement with command
	// "FUNCTION CALL" and the function's name.
	Statements []Statement `cel:"statements" json:"statements"`
	// Problem is why the request could not be understood (see Invalid).
	Problem string `cel:"-" json:"invalid,omitempty"`
	// Masking is how the results will be masked, decided with the
	// request's decision (by the PostgreSQL guard) before the request
	// reaches the database. Nil when no mask applies.
	Masking *MaskPlan `cel:"-" json:"masking,omitempty"`
	// Shape, when set, names the request's facts: every request with
	// this shape has the same facts (sqlfacts caches them by it), so a
	// decision may be reused for it (CacheKey).
	Shape string `cel:"-" json:"-"`
}

// CacheKey is the key a decision of this request may be reused under, or
// "" when it may not.
func (r *PostgresRequest) CacheKey() string {
	if r.Shape == "" || r.Problem != "" {
		return ""
	}
	return r.Kind + "\x00" + r.Shape
}

// SSHRequest is an SSH request.
type SSHRequest struct {
	// Kind is "connect", "exec", "shell", "subsystem", "forward" (a local
	// forward, direct-tcpip), "pty", "env", "x11", "agent" or
	// "remote_forward" (tcpip-forward).
	Kind string `cel:"kind" json:"kind"`
	// Command is an exec's command line, exactly as sent.
	Command string `cel:"command" json:"command,omitempty"`
	// Argv are the command's words, parsed with a POSIX shell parser, when
	// the command is one simple command of literal words (Simple); empty
	// otherwise. A rule that reads argv should also require simple: a
	// command with pipes, lists, redirections, substitutions or variables
	// has no argv that says what it does.
	Argv   []string `cel:"argv" json:"argv,omitempty"`
	Simple bool     `cel:"simple" json:"simple,omitempty"`
	// Subsystem is a subsystem's name ("sftp").
	Subsystem string `cel:"subsystem" json:"subsystem,omitempty"`
	// ForwardHost and ForwardPort are where a forward connects (forward)
	// or the address a remote forward binds (remote_forward).
	ForwardHost string `cel:"forward_host" json:"forward_host,omitempty"`
	ForwardPort int64  `cel:"forward_port" json:"forward_port,omitempty"`
	// Env is an env request's variable name (its value is neither decided
	// on nor recorded: it may be a secret).
	Env string `cel:"env" json:"env,omitempty"`
	// Term is a pty request's terminal type; Cols and Rows its size (for
	// replay, not for rules).
	Term string `cel:"term" json:"term,omitempty"`
	Cols int    `cel:"-" json:"cols,omitempty"`
	Rows int    `cel:"-" json:"rows,omitempty"`
	// Problem is why the request could not be understood (see Invalid).
	Problem string `cel:"-" json:"invalid,omitempty"`
}

// KubernetesRequest is a Kubernetes API request.
type KubernetesRequest struct {
	// Kind is "api".
	Kind string `cel:"kind" json:"kind"`
	// Verb is the API server's: get, list, watch, create, update, patch,
	// delete, deletecollection, or proxy; for a non-resource request the
	// HTTP method in lower case.
	Verb        string `cel:"verb" json:"verb"`
	APIGroup    string `cel:"api_group" json:"api_group,omitempty"`
	Resource    string `cel:"resource" json:"resource,omitempty"`
	Subresource string `cel:"subresource" json:"subresource,omitempty"`
	Namespace   string `cel:"namespace" json:"namespace,omitempty"`
	Name        string `cel:"name" json:"name,omitempty"`
	// Command is an exec's command, one word per element, and Container
	// the container an exec, attach or log request names (pods/exec,
	// pods/attach, pods/log).
	Command   []string `cel:"command" json:"command,omitempty"`
	Container string   `cel:"container" json:"container,omitempty"`
	// Path is a non-resource request's URL path (/version, /apis/apps,
	// /openapi/v3); empty for API resources.
	Path string `cel:"path" json:"path,omitempty"`
	// Problem is why the request could not be understood (see Invalid).
	Problem string `cel:"-" json:"invalid,omitempty"`
}

func (*PostgresRequest) ResourceKind() string   { return bundle.KindPostgres }
func (*SSHRequest) ResourceKind() string        { return bundle.KindSSHHost }
func (*KubernetesRequest) ResourceKind() string { return bundle.KindKubernetes }

func (r *PostgresRequest) RequestKind() string   { return r.Kind }
func (r *SSHRequest) RequestKind() string        { return r.Kind }
func (r *KubernetesRequest) RequestKind() string { return r.Kind }

func (r *PostgresRequest) Invalid() string   { return r.Problem }
func (r *SSHRequest) Invalid() string        { return r.Problem }
func (r *KubernetesRequest) Invalid() string { return r.Problem }

// Cost limits. The static limit refuses, at compile time, expressions whose
// worst case is unreasonable for the declared input sizes (nested
// comprehensions over statements and tables, say). The runtime limit stops
// an evaluation that goes past it; the request is then denied.
const (
	StaticCostLimit  = 1_000_000
	RuntimeCostLimit = 1_000_000
)

// Input sizes assumed by the static cost estimate, for the variables every
// kind has (each kind's request bounds are in the kinds table). The gateway
// enforces the runtime limit whatever the real sizes are.
func commonBound(path string) (uint64, bool) {
	switch path {
	case "identity.groups":
		return 256, true
	case "identity.claims", "resource.labels":
		return 64, true
	}
	return 0, false
}

const maxStringSize = 64 << 10

type estimator struct{}

func (estimator) EstimateSize(n cost.AstNode) *cost.SizeEstimate {
	path := n.Path()
	if len(path) == 0 {
		return nil
	}
	key := path[0]
	for _, p := range path[1:] {
		key += "." + p
	}
	if b, ok := commonBound(key); ok {
		return &cost.SizeEstimate{Min: 0, Max: b}
	}
	for i := range kinds {
		if b, ok := kinds[i].sizeBounds[key]; ok {
			return &cost.SizeEstimate{Min: 0, Max: b}
		}
	}
	if t := n.Type(); t != nil && (t.Kind() == types.StringKind || t.Kind() == types.BytesKind) {
		return &cost.SizeEstimate{Min: 0, Max: maxStringSize}
	}
	return nil
}

func (estimator) EstimateCallCost(function, overloadID string, target *cost.AstNode, args []cost.AstNode) *cost.CallEstimate {
	return nil
}

// celTypeName is the CEL name native types get: package.Type.
func celTypeName(t reflect.Type) string {
	return fmt.Sprintf("%s.%s", pkgName(t), t.Name())
}

func pkgName(t reflect.Type) string {
	p := t.PkgPath()
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '/' {
			return p[i+1:]
		}
	}
	return p
}

// envs are the CEL environments: one per resource kind (which fixes the type
// of `request`), and one for identity match predicates, which only see the
// token (`identity`).
type envs struct {
	byKind   map[string]*cel.Env
	identity *cel.Env
}

func baseOptions() []cel.EnvOption {
	return []cel.EnvOption{
		ext.NativeTypes(nativeTypes()...),
		ext.Strings(),
		ext.Sets(),
		ext.Lists(),
		cel.OptionalTypes(),
		cel.Variable("identity", cel.ObjectType(celTypeName(reflect.TypeFor[Identity]()))),
	}
}

func newEnvs() (*envs, error) {
	idEnv, err := cel.NewEnv(baseOptions()...)
	if err != nil {
		return nil, fmt.Errorf("celpolicy: identity environment: %w", err)
	}
	e := &envs{byKind: map[string]*cel.Env{}, identity: idEnv}
	for _, k := range kinds {
		kind, rt := k.resource, k.goType
		opts := append(baseOptions(),
			cel.Variable("resource", cel.ObjectType(celTypeName(reflect.TypeFor[Resource]()))),
			cel.Variable("session", cel.ObjectType(celTypeName(reflect.TypeFor[Session]()))),
			cel.Variable("now", cel.TimestampType),
			cel.Variable("request", cel.ObjectType(celTypeName(rt))),
		)
		env, err := cel.NewEnv(opts...)
		if err != nil {
			return nil, fmt.Errorf("celpolicy: %s environment: %w", kind, err)
		}
		e.byKind[kind] = env
	}
	return e, nil
}
