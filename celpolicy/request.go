package celpolicy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

// Query builds a PostgreSQL query request from SQL text. Text that does not
// parse yields a request that Decide denies, with the parse error as the
// reason.
func Query(sql string) *PostgresRequest {
	stmts, err := sqlfacts.Analyze(sql)
	if err != nil {
		return &PostgresRequest{Kind: "query", Statements: []sqlfacts.Statement{}, Invalid: err.Error() + "; SQL that cannot be parsed is denied"}
	}
	return &PostgresRequest{Kind: "query", Statements: stmts}
}

// Connect builds the request a new session makes before any statement.
func Connect() *PostgresRequest {
	return &PostgresRequest{Kind: "connect", Statements: []sqlfacts.Statement{}}
}

// FunctionCall builds the request for a fast-path function call. It is one
// statement with command "FUNCTION CALL" so that rules written over
// statements (for instance "every statement is a SELECT") do not allow it by
// accident.
func FunctionCall(name string) *PostgresRequest {
	return &PostgresRequest{Kind: "function_call", Statements: []sqlfacts.Statement{{
		Command:   "FUNCTION CALL",
		Tables:    []sqlfacts.Table{},
		Functions: []string{name},
	}}}
}

// ParseRequest reads a request written as a JSON object, as in a test block's
// `request` or `gatehouse eval --request`. The fields are those of the
// resource kind's request type. For postgres, {"sql": "..."} is a query,
// {"kind": "connect"} a connection and {"kind": "function_call",
// "function": "name"} a fast-path call.
func ParseRequest(resourceKind string, data []byte) (Request, error) {
	if t := bytes.TrimSpace(data); len(t) == 0 || t[0] != '{' {
		// null, a list or a bare value would decode to an empty request:
		// refuse it, so that a mistyped test or eval does not quietly
		// decide an empty query (which every all() rule allows).
		return nil, fmt.Errorf("%s request must be a JSON object", resourceKind)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	strict := func(v any) error {
		if err := dec.Decode(v); err != nil {
			return fmt.Errorf("%s request: %w", resourceKind, err)
		}
		if dec.More() {
			return fmt.Errorf("%s request: data after the JSON object", resourceKind)
		}
		return nil
	}
	switch resourceKind {
	case bundle.KindPostgres:
		var r struct {
			Kind     string `json:"kind"`
			SQL      string `json:"sql"`
			Function string `json:"function"`
		}
		if err := strict(&r); err != nil {
			return nil, err
		}
		switch {
		case r.Kind == "connect" && r.SQL == "" && r.Function == "":
			return Connect(), nil
		case r.Kind == "function_call" && r.Function != "" && r.SQL == "":
			return FunctionCall(r.Function), nil
		case (r.Kind == "" || r.Kind == "query") && r.Function == "" && strings.TrimSpace(r.SQL) != "":
			return Query(r.SQL), nil
		}
		return nil, fmt.Errorf(`postgres request: use {"sql": "..."}, {"kind": "connect"} or {"kind": "function_call", "function": "name"}`)
	case bundle.KindSSHHost:
		var r SSHRequest
		if err := strict(&r); err != nil {
			return nil, err
		}
		if r.Kind == "" {
			r.Kind = "exec"
		}
		if r.ForwardPort < 0 || r.ForwardPort > 65535 {
			return nil, fmt.Errorf("ssh_host request: forward_port %d is not a port (0-65535)", r.ForwardPort)
		}
		return &r, nil
	case bundle.KindKubernetes:
		var r KubernetesRequest
		if err := strict(&r); err != nil {
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
	return nil, fmt.Errorf("unknown resource kind %q", resourceKind)
}

// describeRequest renders a request in one line for reports.
func describeRequest(r Request) string {
	switch x := r.(type) {
	case *PostgresRequest:
		if x.Kind != "query" {
			return x.Kind
		}
		if x.Invalid != "" {
			return "query (does not parse)"
		}
		cmds := make([]string, 0, len(x.Statements))
		for _, s := range x.Statements {
			cmds = append(cmds, s.Command)
		}
		return "query: " + strings.Join(cmds, "; ")
	case *SSHRequest:
		switch x.Kind {
		case "exec":
			return "exec: " + x.Command
		case "subsystem":
			return "subsystem: " + x.Subsystem
		case "forward":
			return fmt.Sprintf("forward: %s:%d", x.ForwardHost, x.ForwardPort)
		}
		return x.Kind
	case *KubernetesRequest:
		return fmt.Sprintf("%s %s/%s %s/%s", x.Verb, x.APIGroup, x.Resource, x.Namespace, x.Name)
	}
	return "?"
}
