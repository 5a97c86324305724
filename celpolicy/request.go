package celpolicy

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// ParseRequest reads a request written as a JSON object, as in a test block's
// `request` or `gatehouse eval --request`. The fields are those of the
// resource kind's request type. For postgres, {"sql": "..."} is a query,
// {"kind": "connect"} a connection and {"kind": "function_call",
// "function": "name"} a fast-path call.
func (p *Policy) ParseRequest(resourceKind string, data []byte) (Request, error) {
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
	k, ok := kindOf(resourceKind)
	if !ok {
		return nil, fmt.Errorf("unknown resource kind %q", resourceKind)
	}
	return k.parse(p, strict)
}

// describeRequest renders a request in one line for reports.
func describeRequest(r Request) string { return r.Describe() }
