package bundle

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseKubernetesField(t *testing.T) {
	good := map[string]KubernetesField{
		"secrets/data":                           {Resource: "secrets", Path: []string{"data"}},
		"secrets/stringData":                     {Resource: "secrets", Path: []string{"stringData"}},
		"configmaps/data":                        {Resource: "configmaps", Path: []string{"data"}},
		"widgets.example.com/spec.password":      {Resource: "widgets", Group: "example.com", Path: []string{"spec", "password"}},
		"deployments.apps/spec.template.spec":    {Resource: "deployments", Group: "apps", Path: []string{"spec", "template", "spec"}},
		"secrets/metadata.annotations":           {Resource: "secrets", Path: []string{"metadata", "annotations"}},
		"x-widgets.a-b.example.com/spec.db_pass": {Resource: "x-widgets", Group: "a-b.example.com", Path: []string{"spec", "db_pass"}},
	}
	for s, want := range good {
		got, err := ParseKubernetesField(s)
		if err != nil {
			t.Errorf("ParseKubernetesField(%q): %v", s, err)
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("ParseKubernetesField(%q) = %#v, want %#v", s, got, want)
		}
		// The canonical spelling is the one accepted, and reads back the same.
		if got.String() != s {
			t.Errorf("ParseKubernetesField(%q).String() = %q", s, got.String())
		}
		again, err := ParseKubernetesField(got.String())
		if err != nil || !reflect.DeepEqual(again, got) {
			t.Errorf("round trip of %q: %#v, %v", s, again, err)
		}
	}

	bad := map[string]string{
		"":                                  "empty field: want RESOURCE[.GROUP]/PATH such as secrets/data",
		"secrets":                           `field "secrets" names no path: want RESOURCE[.GROUP]/PATH such as secrets/data`,
		"/data":                             `field "/data" names no resource`,
		"secrets/":                          `field "secrets/" names no path after the resource`,
		"Secrets/data":                      `resource "Secrets" must be lower case, the plural name of the API path ("secrets")`,
		"secret_values/data":                `"secret_values" is not a resource name`,
		"-secrets/data":                     `"-secrets" is not a resource name`,
		"secrets./data":                     `empty API group after "secrets."; leave out the group for the core group (secrets/data)`,
		"secrets.core/data":                 `the core API group has no name; write secrets/data`,
		"widgets.Example.com/spec.password": `API group "Example.com" must be lower case`,
		"widgets.example..com/spec":         `API group "example..com" is not a DNS name ("")`,
		"secrets/data/password":             `the path "data/password" contains '/'; separate its keys with '.' (data.password)`,
		"secrets/data..password":            `an empty path segment (key 2 of "data..password")`,
		"secrets/.data":                     `an empty path segment (key 1 of ".data")`,
		"secrets/data.":                     `an empty path segment (key 2 of "data.")`,
		"secrets/data.tls crt":              `path segment "tls crt" may only hold letters, digits, '-' and '_'`,
		"secrets/data.*":                    `path segment "*" may only hold`,
		"secrets/kind":                      `kind identifies the object`,
		"secrets/apiVersion":                `apiVersion identifies the object`,
		"secrets/metadata":                  `metadata identifies the object`,
		"secrets/metadata.name":             `metadata.name identifies the object`,
		"secrets/kind.x":                    `kind is a string with no keys under it`,
		" secrets/data":                     `" secrets" is not a resource name`,
	}
	for s, want := range bad {
		_, err := ParseKubernetesField(s)
		if err == nil {
			t.Errorf("ParseKubernetesField(%q) accepted", s)
			continue
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("ParseKubernetesField(%q) = %q, want it to contain %q", s, err, want)
		}
	}
}

func TestKubernetesFieldString(t *testing.T) {
	for f, want := range map[*KubernetesField]string{
		{Resource: "secrets", Path: []string{"data"}}:                                   "secrets/data",
		{Resource: "widgets", Group: "example.com", Path: []string{"spec", "password"}}: "widgets.example.com/spec.password",
	} {
		if got := f.String(); got != want {
			t.Errorf("%#v.String() = %q, want %q", *f, got, want)
		}
	}
}

// FuzzParseKubernetesField: a field that parses spells itself canonically,
// and the canonical spelling parses back to the same field.
func FuzzParseKubernetesField(f *testing.F) {
	for _, s := range []string{"secrets/data", "widgets.example.com/spec.password", "secrets", "a.b/c.d", "Secrets/x..y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		kf, err := ParseKubernetesField(s)
		if err != nil {
			if err.Error() == "" {
				t.Fatalf("empty error for %q", s)
			}
			return
		}
		if kf.String() != s {
			t.Fatalf("%q parses to %#v, spelled %q", s, kf, kf.String())
		}
		again, err := ParseKubernetesField(kf.String())
		if err != nil || !reflect.DeepEqual(again, kf) {
			t.Fatalf("%q: canonical %q reads back as %#v, %v", s, kf.String(), again, err)
		}
	})
}
