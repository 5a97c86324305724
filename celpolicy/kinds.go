package celpolicy

import (
	"fmt"
	"reflect"
	"strings"

	"cel.dev/cel-go/ext"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/shellcmd"
)

// kindSpec is everything celpolicy knows about one resource kind's
// requests. A new kind of resource is one more entry here (and its request
// kinds in bundle.RequestKinds).
type kindSpec struct {
	// resource is the bundle resource kind.
	resource string
	// goType is the request's Go type: CEL's `request` for the kind.
	goType reflect.Type
	// sizeBounds are the sizes the static cost estimate assumes for the
	// request's lists.
	sizeBounds map[string]uint64
	// parse reads the JSON object of a test block's `request` or `gatehouse
	// eval --request`; decode decodes it strictly into v; p supplies SQL
	// analysis.
	parse func(p *Policy, decode func(v any) error) (Request, error)
}

// kinds is the table of request kinds. It is never modified.
var kinds = [...]kindSpec{
	{
		resource: bundle.KindPostgres,
		goType:   reflect.TypeFor[PostgresRequest](),
		sizeBounds: map[string]uint64{
			"request.statements":                           64,
			"request.statements.@items.tables":             64,
			"request.statements.@items.functions":          64,
			"request.statements.@items.calls":              64,
			"request.statements.@items.volatile_functions": 64,
			"request.statements.@items.column_uses":        64,
		},
		parse: parsePostgres,
	},
	{
		resource:   bundle.KindSSHHost,
		goType:     reflect.TypeFor[SSHRequest](),
		sizeBounds: map[string]uint64{"request.argv": 256},
		parse:      parseSSH,
	},
	{
		resource:   bundle.KindKubernetes,
		goType:     reflect.TypeFor[KubernetesRequest](),
		sizeBounds: map[string]uint64{"request.command": 256},
		parse:      parseKubernetes,
	},
}

func kindOf(resource string) (*kindSpec, bool) {
	for i := range kinds {
		if kinds[i].resource == resource {
			return &kinds[i], true
		}
	}
	return nil, false
}

// nativeTypes are the Go types CEL sees: the common variables and every
// kind's request.
func nativeTypes() []any {
	out := []any{ext.ParseStructTags(true), reflect.TypeFor[Identity](), reflect.TypeFor[Resource](), reflect.TypeFor[Session]()}
	for _, k := range kinds {
		out = append(out, k.goType)
	}
	return out
}

func parsePostgres(p *Policy, decode func(any) error) (Request, error) {
	var r struct {
		Kind     string `json:"kind"`
		SQL      string `json:"sql"`
		Function string `json:"function"`
	}
	if err := decode(&r); err != nil {
		return nil, err
	}
	switch {
	case r.Kind == "connect" && r.SQL == "" && r.Function == "":
		return Connect(), nil
	case r.Kind == "function_call" && r.Function != "" && r.SQL == "":
		return FunctionCall(r.Function), nil
	case (r.Kind == "" || r.Kind == "query") && r.Function == "" && strings.TrimSpace(r.SQL) != "":
		return p.Query(r.SQL), nil
	}
	return nil, fmt.Errorf(`postgres request: use {"sql": "..."}, {"kind": "connect"} or {"kind": "function_call", "function": "name"}`)
}

func parseSSH(_ *Policy, decode func(any) error) (Request, error) {
	var r SSHRequest
	if err := decode(&r); err != nil {
		return nil, err
	}
	if r.Kind == "" {
		r.Kind = "exec"
	}
	if r.ForwardPort < 0 || r.ForwardPort > 65535 {
		return nil, fmt.Errorf("ssh_host request: forward_port %d is not a port (0-65535)", r.ForwardPort)
	}
	if r.Kind == "exec" && r.Argv == nil && !r.Simple {
		return Exec(r.Command), nil
	}
	return &r, nil
}

// Exec builds an SSH exec request from a command line, with its words
// parsed as the upstream's shell would read them (package shellcmd). A
// command that does not parse is invalid, and denied.
func Exec(command string) *SSHRequest {
	r := &SSHRequest{Kind: "exec", Command: command}
	facts, err := shellcmd.Analyze(command)
	if err != nil {
		r.Problem = err.Error() + "; a command that cannot be parsed is denied"
		return r
	}
	r.Argv, r.Simple = facts.Argv, facts.Simple
	return r
}

func parseKubernetes(_ *Policy, decode func(any) error) (Request, error) {
	var r KubernetesRequest
	if err := decode(&r); err != nil {
		return nil, err
	}
	if r.Kind == "" {
		r.Kind = "api"
	}
	if r.Verb == "" {
		return nil, fmt.Errorf("kubernetes request: verb is required (get, list, create, delete, ...)")
	}
	return &r, nil
}

// Describe renders a PostgreSQL request in one line.
func (r *PostgresRequest) Describe() string {
	if r.Kind != "query" {
		return r.Kind
	}
	if r.Problem != "" {
		return "query (does not parse)"
	}
	cmds := make([]string, 0, len(r.Statements))
	for _, s := range r.Statements {
		cmds = append(cmds, s.Command)
	}
	return "query: " + strings.Join(cmds, "; ")
}

// Describe renders an SSH request in one line.
func (r *SSHRequest) Describe() string {
	switch r.Kind {
	case "exec":
		return "exec: " + r.Command
	case "subsystem":
		return "subsystem: " + r.Subsystem
	case "forward", "remote_forward":
		return fmt.Sprintf("%s: %s:%d", r.Kind, r.ForwardHost, r.ForwardPort)
	case "env":
		return "env: " + r.Env
	case "pty":
		return "pty: " + r.Term
	}
	return r.Kind
}

// Describe renders a Kubernetes request in one line.
func (r *KubernetesRequest) Describe() string {
	if r.Path != "" {
		return r.Verb + " " + r.Path
	}
	res := r.Resource
	if r.Subresource != "" {
		res += "/" + r.Subresource
	}
	return fmt.Sprintf("%s %s/%s %s/%s", r.Verb, r.APIGroup, res, r.Namespace, r.Name)
}

// Connect builds the request a new PostgreSQL session makes before any
// statement.
func Connect() *PostgresRequest {
	return &PostgresRequest{Kind: "connect", Statements: []Statement{}}
}

// FunctionCall builds the request for a fast-path function call. It is one
// statement with command "FUNCTION CALL" so that rules written over
// statements (for instance "every statement is a SELECT") do not allow it by
// accident.
func FunctionCall(name string) *PostgresRequest {
	return &PostgresRequest{Kind: "function_call", Statements: []Statement{{
		Command:   "FUNCTION CALL",
		Tables:    []Table{},
		Functions: []string{name},
	}}}
}

// ConnectRequest is the request a new session of a resource kind makes
// before anything else, what a policy's `connect` rules decide; ok is false
// for a kind whose sessions are not decided as a whole (Kubernetes: every
// API request is decided on its own).
func ConnectRequest(resourceKind string) (req Request, ok bool) {
	switch resourceKind {
	case bundle.KindPostgres:
		return Connect(), true
	case bundle.KindSSHHost:
		return &SSHRequest{Kind: "connect"}, true
	}
	return nil, false
}
