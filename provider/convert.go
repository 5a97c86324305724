package provider

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"sort"
	"strings"

	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-go/tftypes"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// Objects travel between Terraform and the model as JSON: a resource's
// attributes have the names of the model's JSON fields, so a Terraform value
// becomes the model object by way of encoding/json, strictly (an unknown
// field is an error), and back the same way.

// errUnknown means a value is not known yet (plan time, before apply of
// something it depends on).
var errUnknown = errors.New("value not known until apply")

// plain converts a Terraform value into JSON-ready Go values. Null
// attributes are left out; skip names top-level attributes to leave out.
func plain(v tftypes.Value, skip map[string]bool) (any, error) {
	if !v.IsKnown() {
		return nil, errUnknown
	}
	if v.IsNull() {
		return nil, nil
	}
	t := v.Type()
	switch {
	case t.Is(tftypes.String):
		var s string
		err := v.As(&s)
		return s, err
	case t.Is(tftypes.Bool):
		var b bool
		err := v.As(&b)
		return b, err
	case t.Is(tftypes.Number):
		var n big.Float
		if err := v.As(&n); err != nil {
			return nil, err
		}
		i, acc := n.Int64()
		if acc != big.Exact {
			return nil, fmt.Errorf("%s is not a whole number", n.String())
		}
		return i, nil
	case t.Is(tftypes.List{}), t.Is(tftypes.Set{}), t.Is(tftypes.Tuple{}):
		var elems []tftypes.Value
		if err := v.As(&elems); err != nil {
			return nil, err
		}
		out := make([]any, 0, len(elems))
		for _, e := range elems {
			p, err := plain(e, nil)
			if err != nil {
				return nil, err
			}
			out = append(out, p)
		}
		return out, nil
	case t.Is(tftypes.Map{}), t.Is(tftypes.Object{}):
		var fields map[string]tftypes.Value
		if err := v.As(&fields); err != nil {
			return nil, err
		}
		out := map[string]any{}
		for name, fv := range fields {
			if skip[name] {
				continue
			}
			p, err := plain(fv, nil)
			if err != nil {
				return nil, err
			}
			if p != nil {
				out[name] = p
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("unsupported type %s", t)
}

// value converts JSON-decoded Go values into a Terraform value of type t;
// absent object attributes are null.
func value(t tftypes.Type, v any) (tftypes.Value, error) {
	if v == nil {
		return tftypes.NewValue(t, nil), nil
	}
	switch {
	case t.Is(tftypes.String):
		s, ok := v.(string)
		if !ok {
			return tftypes.Value{}, fmt.Errorf("want a string, got %T", v)
		}
		return tftypes.NewValue(t, s), nil
	case t.Is(tftypes.Bool):
		b, ok := v.(bool)
		if !ok {
			return tftypes.Value{}, fmt.Errorf("want a bool, got %T", v)
		}
		return tftypes.NewValue(t, b), nil
	case t.Is(tftypes.Number):
		n, ok := v.(json.Number)
		if !ok {
			return tftypes.Value{}, fmt.Errorf("want a number, got %T", v)
		}
		f, _, err := big.ParseFloat(string(n), 10, 512, big.ToNearestEven)
		if err != nil {
			return tftypes.Value{}, err
		}
		return tftypes.NewValue(t, f), nil
	case t.Is(tftypes.List{}), t.Is(tftypes.Set{}):
		xs, ok := v.([]any)
		if !ok {
			return tftypes.Value{}, fmt.Errorf("want a list, got %T", v)
		}
		var et tftypes.Type
		if l, isList := t.(tftypes.List); isList {
			et = l.ElementType
		} else {
			et = t.(tftypes.Set).ElementType
		}
		elems := make([]tftypes.Value, 0, len(xs))
		for _, x := range xs {
			e, err := value(et, x)
			if err != nil {
				return tftypes.Value{}, err
			}
			elems = append(elems, e)
		}
		return tftypes.NewValue(t, elems), nil
	case t.Is(tftypes.Map{}):
		m, ok := v.(map[string]any)
		if !ok {
			return tftypes.Value{}, fmt.Errorf("want a map, got %T", v)
		}
		et := t.(tftypes.Map).ElementType
		out := map[string]tftypes.Value{}
		for k, x := range m {
			e, err := value(et, x)
			if err != nil {
				return tftypes.Value{}, err
			}
			out[k] = e
		}
		return tftypes.NewValue(t, out), nil
	case t.Is(tftypes.Object{}):
		m, ok := v.(map[string]any)
		if !ok {
			return tftypes.Value{}, fmt.Errorf("want an object, got %T", v)
		}
		ot := t.(tftypes.Object)
		out := map[string]tftypes.Value{}
		for name, at := range ot.AttributeTypes {
			e, err := value(at, m[name])
			if err != nil {
				return tftypes.Value{}, fmt.Errorf("%s: %w", name, err)
			}
			out[name] = e
		}
		for name := range m {
			if _, ok := ot.AttributeTypes[name]; !ok {
				return tftypes.Value{}, fmt.Errorf("the bundle has attribute %q, which this provider does not know (a newer gatehouse built it?)", name)
			}
		}
		return tftypes.NewValue(t, out), nil
	}
	return tftypes.Value{}, fmt.Errorf("unsupported type %s", t)
}

// decodeStrict decodes JSON into the model type, refusing unknown fields.
func decodeStrict(data []byte, into any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	return dec.Decode(into)
}

// newObject returns a pointer to a fresh model object of a kind.
func newObject(kind string) any {
	switch kind {
	case "identity_provider":
		return &bundle.IdentityProvider{}
	case "identity":
		return &bundle.Identity{}
	case bundle.KindPostgres:
		return &bundle.Postgres{}
	case bundle.KindSSHHost:
		return &bundle.SSHHost{}
	case bundle.KindKubernetes:
		return &bundle.KubernetesCluster{}
	case "policy":
		return &bundle.Policy{}
	case "mask":
		return &bundle.Mask{}
	case "test":
		return &bundle.Test{}
	}
	return nil
}

// add appends a model object of a kind to m.
func add(m *bundle.Model, obj any) {
	switch o := obj.(type) {
	case *bundle.IdentityProvider:
		m.IdentityProviders = append(m.IdentityProviders, *o)
	case *bundle.Identity:
		m.Identities = append(m.Identities, *o)
	case *bundle.Postgres:
		m.Postgres = append(m.Postgres, *o)
	case *bundle.SSHHost:
		m.SSHHosts = append(m.SSHHosts, *o)
	case *bundle.KubernetesCluster:
		m.KubernetesClusters = append(m.KubernetesClusters, *o)
	case *bundle.Policy:
		m.Policies = append(m.Policies, *o)
	case *bundle.Mask:
		m.Masks = append(m.Masks, *o)
	case *bundle.Test:
		m.Tests = append(m.Tests, *o)
	}
}

// each calls fn for every object of m, with its kind.
func each(m *bundle.Model, fn func(kind string, obj any)) {
	for i := range m.IdentityProviders {
		fn("identity_provider", &m.IdentityProviders[i])
	}
	for i := range m.Identities {
		fn("identity", &m.Identities[i])
	}
	for i := range m.Postgres {
		fn(bundle.KindPostgres, &m.Postgres[i])
	}
	for i := range m.SSHHosts {
		fn(bundle.KindSSHHost, &m.SSHHosts[i])
	}
	for i := range m.KubernetesClusters {
		fn(bundle.KindKubernetes, &m.KubernetesClusters[i])
	}
	for i := range m.Policies {
		fn("policy", &m.Policies[i])
	}
	for i := range m.Masks {
		fn("mask", &m.Masks[i])
	}
	for i := range m.Tests {
		fn("test", &m.Tests[i])
	}
}

// jsonNames maps Terraform names to the model's JSON fields where they
// differ: one `rule` block per rule, in the field `rules`; and
// `identity_provider` for `provider`, which Terraform reserves.
var jsonNames = map[string]string{"rule": "rules", "identity_provider": "provider"}

// objectFromValue turns an object resource's value into its model object.
func objectFromValue(k *kindSpec, v tftypes.Value) (any, error) {
	p, err := plain(v, map[string]bool{"id": true, "spec": true})
	if err != nil {
		return nil, err
	}
	if m, ok := p.(map[string]any); ok {
		for tf, js := range jsonNames {
			if x, ok := m[tf]; ok {
				delete(m, tf)
				m[js] = x
			}
		}
	}
	data, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	obj := newObject(k.kind)
	if err := decodeStrict(data, obj); err != nil {
		return nil, fmt.Errorf("%s: %w", k.kind, err)
	}
	return obj, nil
}

// valueFromObject is the reverse, for import: the state of an object
// resource holding obj.
func valueFromObject(k *kindSpec, obj any) (tftypes.Value, error) {
	data, err := json.Marshal(obj)
	if err != nil {
		return tftypes.Value{}, err
	}
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		return tftypes.Value{}, err
	}
	dropEmpty(m)
	for tf, js := range jsonNames {
		if x, ok := m[js]; ok {
			delete(m, js)
			m[tf] = x
		}
	}
	spec, err := specOf(k.kind, obj)
	if err != nil {
		return tftypes.Value{}, err
	}
	m["id"], m["spec"] = m["name"], spec
	return value(k.objectType(), m)
}

// dropEmpty removes empty strings, false and empty lists/maps from what the
// model encoded with omitempty semantics missing (zero-valued fields without
// omitempty), so that they come back as null, as an unset attribute would.
// expect_rules and expect_masks keep their emptiness: [] asserts "none".
func dropEmpty(m map[string]any) {
	for k, v := range m {
		switch x := v.(type) {
		case nil:
			delete(m, k)
		case string:
			if x == "" {
				delete(m, k)
			}
		case bool:
			// hold defaults to true: false is a value, not an absence.
			if !x && k != "hold" {
				delete(m, k)
			}
		case []any:
			if len(x) == 0 && k != "expect_rules" {
				delete(m, k)
			}
			for _, e := range x {
				if em, ok := e.(map[string]any); ok {
					dropEmpty(em)
				}
			}
		case map[string]any:
			if len(x) == 0 && k != "expect_masks" {
				delete(m, k)
			}
			if k != "expect_masks" && k != "labels" {
				dropEmpty(x)
			}
		case json.Number:
			if x == "0" {
				delete(m, k)
			}
		}
	}
}

// specOf is the canonical JSON of one object as a bundle holds it:
// {"KIND": {...}}, normalised the way the bundle normalises it.
func specOf(kind string, obj any) (string, error) {
	var m bundle.Model
	add(&m, obj)
	m.Normalize()
	var norm any
	each(&m, func(_ string, o any) { norm = o })
	data, err := json.Marshal(map[string]any{kind: norm})
	if err != nil {
		return "", err
	}
	return string(data), nil
}

// objectKey is an object's key in gatehouse_bundle.objects: KIND/NAME,
// the kind as the spec names it ("policy", "postgres", "test").
func objectKey(kind, name string) string { return kind + "/" + name }

// parseSpec decodes one spec into its kind and model object.
func parseSpec(s string) (string, any, error) {
	var wrapper map[string]json.RawMessage
	if err := json.Unmarshal([]byte(s), &wrapper); err != nil || len(wrapper) != 1 {
		return "", nil, fmt.Errorf("not an object's spec (use the spec attribute of a gatehouse_* resource): %.80q", s)
	}
	for kind, raw := range wrapper {
		obj := newObject(kind)
		if obj == nil {
			return "", nil, fmt.Errorf("unknown kind %q", kind)
		}
		if err := decodeStrict(raw, obj); err != nil {
			return "", nil, fmt.Errorf("%s: %v", kind, err)
		}
		return kind, obj, nil
	}
	panic("unreachable")
}

// specKey is the key a spec has in gatehouse_bundle.objects.
func specKey(s string) (string, error) {
	kind, obj, err := parseSpec(s)
	if err != nil {
		return "", err
	}
	return objectKey(kind, objectName(obj)), nil
}

// modelFromSpecs assembles a model from specs. Problems name the element.
func modelFromSpecs(specs []string) (*bundle.Model, error) {
	m := &bundle.Model{}
	var errs []error
	for i, s := range specs {
		_, obj, err := parseSpec(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("objects element %d: %v", i, err))
			continue
		}
		add(m, obj)
	}
	return m, errors.Join(errs...)
}

// keyedSpecs lists objects (gatehouse_bundle.objects) as keys and specs,
// in key order.
func keyedSpecs(objects map[string]string) (keys, specs []string) {
	for k := range objects {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		specs = append(specs, objects[k])
	}
	return keys, specs
}

// specMap keys specs as gatehouse_bundle.objects does.
func specMap(specs []string) (map[string]string, error) {
	out := map[string]string{}
	for _, s := range specs {
		k, err := specKey(s)
		if err != nil {
			return nil, err
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("two objects are %s", k)
		}
		out[k] = s
	}
	return out, nil
}

// specsOf lists a model's objects as specs, sorted.
func specsOf(m *bundle.Model) ([]string, error) {
	var out []string
	var err error
	each(m, func(kind string, obj any) {
		s, e := specOf(kind, obj)
		if e != nil {
			err = e
		}
		out = append(out, s)
	})
	sort.Strings(out)
	return out, err
}

// problemPath maps a model problem's Ref to an attribute path inside an
// object resource of its kind (policy rule attributes go through the rule's
// index in obj).
func problemPath(obj any, ref bundle.Ref) path.Path {
	p := path.Empty()
	for tf, js := range jsonNames {
		if ref.Attr == js {
			ref.Attr = tf
		}
	}
	if ref.Rule != "" {
		if pol, ok := obj.(*bundle.Policy); ok {
			for i, r := range pol.Rules {
				if r.Name == ref.Rule {
					p = path.Root("rule").AtListIndex(i)
					break
				}
			}
		}
	}
	if ref.Attr == "" {
		if p.Equal(path.Empty()) {
			return path.Root("name")
		}
		return p
	}
	for _, part := range strings.Split(ref.Attr, ".") {
		if p.Equal(path.Empty()) {
			p = path.Root(part)
		} else {
			p = p.AtName(part)
		}
	}
	if ref.Index >= 0 && !strings.Contains(ref.Attr, "expect_masks") && ref.Attr != "labels" {
		p = p.AtListIndex(ref.Index)
	}
	return p
}

// ModelFromSpecs assembles a model from the spec attributes of gatehouse_*
// resources, as gatehouse_bundle does with its objects: gatehouse
// plan-check rebuilds the planned policy from a saved plan with it.
func ModelFromSpecs(specs []string) (*bundle.Model, error) { return modelFromSpecs(specs) }
