package celpolicy

import (
	"encoding/json"
	"fmt"
	"reflect"
)

// DecodeRecorded reads a request as the gateway recorded it (the JSON of
// the kind's request type, facts included), so that it can be decided
// again under another policy exactly as the gateway saw it: nothing is
// parsed again, and facts the gateway resolved through the database (a
// function's volatility, a view's columns) stay as they were.
func DecodeRecorded(resourceKind string, raw []byte) (Request, error) {
	k, ok := kindOf(resourceKind)
	if !ok {
		return nil, fmt.Errorf("unknown resource kind %q", resourceKind)
	}
	v := reflect.New(k.goType)
	if err := json.Unmarshal(raw, v.Interface()); err != nil {
		return nil, fmt.Errorf("%s request: %w", resourceKind, err)
	}
	req, ok := v.Interface().(Request)
	if !ok {
		return nil, fmt.Errorf("%s requests cannot be decided", resourceKind)
	}
	return req, nil
}
