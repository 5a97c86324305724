package provider

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/hclconfig"
)

// TestSchemasAgree: the model has one shape in three places (the bundle's
// JSON, the HCL schema, the Terraform schema). This fails when a field
// exists in one and not the others, naming it. The only differences
// allowed are the documented spellings: HCL's `provider` is Terraform's
// `identity_provider` (Terraform reserves `provider`), and the JSON's list
// of rules is the block `rule`.
func TestSchemasAgree(t *testing.T) {
	hcl := hclconfig.Fields()
	tf := terraformFields()
	js := modelFields()
	for _, set := range []map[string][]string{hcl, tf, js} {
		for k := range set {
			slices.Sort(set[k])
		}
	}
	paths := map[string]bool{}
	for _, m := range []map[string][]string{hcl, tf, js} {
		for p := range m {
			paths[p] = true
		}
	}
	for p := range paths {
		h, okH := hcl[p]
		f, okF := tf[p]
		j, okJ := js[p]
		if !okH || !okF || !okJ {
			t.Errorf("block %q: in HCL %v, in Terraform %v, in the model %v", p, okH, okF, okJ)
			continue
		}
		if !slices.Equal(h, f) {
			t.Errorf("block %q: HCL has %v, Terraform has %v", p, h, f)
		}
		if !slices.Equal(h, j) {
			t.Errorf("block %q: HCL has %v, the model's JSON has %v", p, h, j)
		}
	}
}

// terraformFields are the provider's attributes and blocks by path, in the
// HCL spelling.
func terraformFields() map[string][]string {
	out := map[string][]string{}
	spell := func(n string) string {
		if n == "identity_provider" {
			return "provider"
		}
		return n
	}
	var walk func(path string, attrs []attrSpec, blocks []blockSpec)
	walk = func(path string, attrs []attrSpec, blocks []blockSpec) {
		names := []string{}
		for _, a := range attrs {
			names = append(names, spell(a.name))
		}
		for _, b := range blocks {
			names = append(names, b.name)
			walk(path+"."+b.name, b.attrs, b.blocks)
		}
		out[path] = append(out[path], names...)
	}
	for _, k := range kinds {
		out[k.kind] = []string{"name"}
		walk(k.kind, k.attrs, k.blocks)
	}
	return out
}

// modelFields are the model's JSON fields by path, from the struct tags.
func modelFields() map[string][]string {
	out := map[string][]string{}
	blockName := map[string]string{"rules": "rule"}
	var walk func(path string, t reflect.Type)
	walk = func(path string, t reflect.Type) {
		names := []string{}
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "" || name == "-" {
				continue
			}
			if b, ok := blockName[name]; ok {
				name = b
			}
			names = append(names, name)
			ft := f.Type
			for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && ft.PkgPath() == reflect.TypeFor[bundle.Model]().PkgPath() {
				walk(path+"."+name, ft)
			}
		}
		out[path] = names
	}
	mt := reflect.TypeFor[bundle.Model]()
	kindOf := map[string]string{
		"identity_providers": "identity_provider", "identities": "identity", "postgres": "postgres",
		"ssh_hosts": "ssh_host", "kubernetes_clusters": "kubernetes_cluster", "policies": "policy",
		"masks": "mask", "tests": "test",
	}
	for i := range mt.NumField() {
		f := mt.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		kind, ok := kindOf[name]
		if !ok {
			out["model."+name] = nil // an object kind this test does not know: fails until added
			continue
		}
		walk(kind, f.Type.Elem())
	}
	return out
}
