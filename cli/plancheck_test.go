package cli

import (
	"strings"
	"testing"
)

func TestPlannedBundles(t *testing.T) {
	known := `{"format_version":"1.2","planned_values":{"root_module":{"child_modules":[{"resources":[
		{"address":"module.p.gatehouse_bundle.b","type":"gatehouse_bundle","values":{"objects":["{\"identity\":{}}"]}}]}]}},
		"resource_changes":[{"address":"module.p.gatehouse_bundle.b","type":"gatehouse_bundle","change":{"actions":["update"],"after_unknown":{"objects":[false]}}}],
		"prior_state":{"values":{"root_module":{"child_modules":[{"resources":[{"address":"module.p.gatehouse_bundle.b","type":"gatehouse_bundle","values":{"objects":["old"]}}]}]}}}}`
	bs, err := plannedBundles([]byte(known))
	if err != nil || len(bs) != 1 || bs[0].unknown || len(bs[0].objects) != 1 || len(bs[0].prior) != 1 || bs[0].address != "module.p.gatehouse_bundle.b" {
		t.Fatalf("known: %+v %v", bs, err)
	}
	// Schema version 1: objects keyed by KIND/NAME; the prior state may be
	// version 0 (a set) until the state is upgraded.
	keyed := `{"format_version":"1.2","planned_values":{"root_module":{"resources":[
		{"address":"gatehouse_bundle.b","type":"gatehouse_bundle","values":{"objects":{"policy/p":"{\"policy\":{}}","identity/i":"{\"identity\":{}}"}}}]}},
		"resource_changes":[{"address":"gatehouse_bundle.b","type":"gatehouse_bundle","change":{"actions":["update"],"after_unknown":{"objects":{}}}}],
		"prior_state":{"values":{"root_module":{"resources":[{"address":"gatehouse_bundle.b","type":"gatehouse_bundle","values":{"objects":["old"]}}]}}}}`
	bs, err = plannedBundles([]byte(keyed))
	if err != nil || len(bs) != 1 || bs[0].unknown || strings.Join(bs[0].objects, " ") != `{"identity":{}} {"policy":{}}` || len(bs[0].prior) != 1 {
		t.Fatalf("keyed: %+v %v", bs, err)
	}
	unknownEntry := strings.Replace(keyed, `"after_unknown":{"objects":{}}`, `"after_unknown":{"objects":{"policy/p":true}}`, 1)
	if bs, err = plannedBundles([]byte(unknownEntry)); err != nil || !bs[0].unknown {
		t.Fatalf("keyed, an entry unknown: %+v %v", bs, err)
	}
	// An object computed at apply: unknown, never guessed.
	unknown := `{"format_version":"1.2","planned_values":{"root_module":{"resources":[
		{"address":"gatehouse_bundle.b","type":"gatehouse_bundle","values":{}}]}},
		"resource_changes":[{"address":"gatehouse_bundle.b","type":"gatehouse_bundle","change":{"actions":["create"],"after_unknown":{"objects":[false,true]}}}]}`
	bs, err = plannedBundles([]byte(unknown))
	if err != nil || len(bs) != 1 || !bs[0].unknown {
		t.Fatalf("unknown: %+v %v", bs, err)
	}
	for in, want := range map[string]string{
		"not json":                 "not JSON from 'terraform show -json'",
		`{"values":{}}`:            "no format_version",
		`{"format_version":"1.0"}`: "no planned_values",
	} {
		if _, err := plannedBundles([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", in, err, want)
		}
	}
}

// FuzzPlannedBundles: a plan's JSON is outside input; reading it never
// panics.
func FuzzPlannedBundles(f *testing.F) {
	f.Add(`{"format_version":"1.2","planned_values":{"root_module":{"resources":[{"address":"gatehouse_bundle.b","type":"gatehouse_bundle","values":{"objects":["x"]}}]}},"resource_changes":[{"address":"gatehouse_bundle.b","type":"gatehouse_bundle","change":{"actions":["update"],"after_unknown":{}}}]}`)
	f.Fuzz(func(t *testing.T, data string) {
		_, _ = plannedBundles([]byte(data))
	})
}
