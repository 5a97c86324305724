package kubernetes

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/fields"
	"sigs.k8s.io/yaml"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// writes checks the body of an update or a patch on a resource whose
// fields masks hide from the caller, and returns why it is refused ("" if
// it is not). A write that sets a masked field is refused, whatever its
// patch type and dry run or not: the answer tells whether the value sent
// equals the hidden one (a server-side apply conflicts or not, a merge
// patch that changes nothing claims no managed fields, an update's
// resourceVersion moves or not), so each write would be one guess
// checked. Writes that leave masked fields alone pass. A body the gateway
// cannot read (protobuf, CBOR, YAML with repeated keys) is refused: it
// cannot tell what it sets.
func (m *masker) writes(r *http.Request) string {
	body, err := readBody(r)
	if err != nil {
		return err.Error()
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return ""
	}
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch mt {
	case "application/json", "application/merge-patch+json", "application/strategic-merge-patch+json":
	case "application/yaml", "application/apply-patch+yaml":
		if body, err = yaml.YAMLToJSONStrict(body); err != nil {
			return fmt.Sprintf("the %s body of a write to a resource whose fields masks hide from you does not read as one YAML object (%v); the gateway must read it to check that it sets no masked field", mt, err)
		}
	default:
		return fmt.Sprintf("a write with a %q body is refused on a resource whose fields masks hide from you: the gateway reads only JSON and YAML, and must check that the write sets no masked field", mt)
	}
	if err := noRepeatedKeys(body); err != nil {
		return fmt.Sprintf("the body of a write to a resource whose fields masks hide from you is not JSON the gateway can check: %v", err)
	}
	var obj map[string]any
	if err := json.Unmarshal(body, &obj); err != nil {
		return fmt.Sprintf("the body of a write to a resource whose fields masks hide from you is not a JSON object: %v", err)
	}
	// The last-applied annotation holds the whole object as kubectl
	// applied it, masked values too (masked in answers, object): a write
	// of it compares as a write of them does.
	if reaches(obj, []string{"metadata", "annotations", lastApplied}) {
		return fmt.Sprintf("a write that sets the %s annotation is refused: it holds the values masks hide from you, and the answer would tell whether the value sent equals the hidden one; use server-side apply without the masked fields, or a patch that leaves them out", lastApplied)
	}
	for _, f := range m.fields {
		if reaches(obj, f.path) {
			return fmt.Sprintf("a write that sets %s is refused: masks hide that field from you, and the answer (a conflict or not, the managed fields, the resource version) would tell whether the value sent equals the hidden one; leave the field out of the body", strings.TrimPrefix(f.target, bundle.KubernetesTargetPrefix))
		}
	}
	return ""
}

// reaches reports whether a write's body reaches path: the field itself, or
// a parent it replaces with something that is not an object (null, a
// string). A path crosses lists as masks do: a list reaches it when one
// of its elements does, and an element that is not an object counts.
//
// A strategic merge patch also names a list's elements in directives
// beside it: $deleteFromPrimitiveList/finalizers deletes the values it
// lists, and $setElementOrder/finalizers orders them, so whether the
// object changes tells whether the hidden list holds a guessed value.
// Such a directive reaches the list as the list itself does.
func reaches(obj map[string]any, path []string) bool {
	for _, k := range []string{path[0], "$deleteFromPrimitiveList/" + path[0], "$setElementOrder/" + path[0]} {
		v, ok := obj[k]
		if !ok {
			continue
		}
		if len(path) == 1 || reachesIn(v, path[1:]) {
			return true
		}
	}
	return false
}

// reachesIn reports whether v (an object, a list's elements) reaches path.
func reachesIn(v any, path []string) bool {
	switch x := v.(type) {
	case map[string]any:
		return reaches(x, path)
	case []any:
		for _, e := range x {
			if reachesIn(e, path) {
				return true
			}
		}
		return false
	}
	return true
}

// noRepeatedKeys refuses JSON with a key repeated in one object: readers
// differ on which of the two counts, and the check must read what the
// API server reads.
func noRepeatedKeys(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var walk func() error
	walk = func() error {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		switch t {
		case json.Delim('{'):
			seen := map[string]bool{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return err
				}
				k, _ := kt.(string)
				if seen[k] {
					return fmt.Errorf("the key %q appears twice in one object", k)
				}
				seen[k] = true
				if err := walk(); err != nil {
					return err
				}
			}
			_, err = dec.Token()
			return err
		case json.Delim('['):
			for dec.More() {
				if err := walk(); err != nil {
					return err
				}
			}
			_, err = dec.Token()
			return err
		}
		return nil
	}
	if err := walk(); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("more than one JSON value")
	}
	return nil
}

// selects checks the selectors of a request on a resource whose fields
// masks hide from the caller, and returns why it is refused ("" if it is
// not). A field selector on a masked field (a Pod's status.podIP, a
// custom resource's selectable field) answers whether the hidden value
// equals a guess, object by object; so does a label selector where the
// labels are masked. A selector the gateway cannot read is refused.
func (m *masker) selects(q url.Values) string {
	for _, v := range q["fieldSelector"] {
		sel, err := fields.ParseSelector(v)
		if err != nil {
			return fmt.Sprintf("the field selector %q does not parse (%v); where masks apply the gateway must read it", v, err)
		}
		for _, r := range sel.Requirements() {
			path := strings.Split(r.Field, ".")
			for _, f := range m.fields {
				if prefixOf(path, f.path) || prefixOf(f.path, path) {
					return fmt.Sprintf("a field selector on %s is refused: masks hide that field from you, and which objects match would tell its value", r.Field)
				}
			}
		}
	}
	if len(q["labelSelector"]) > 0 {
		for _, f := range m.fields {
			if prefixOf(f.path, []string{"metadata", "labels"}) || prefixOf([]string{"metadata", "labels"}, f.path) {
				return fmt.Sprintf("a label selector is refused: masks hide %s from you, and which objects match would tell the labels' values", strings.TrimPrefix(f.target, bundle.KubernetesTargetPrefix))
			}
		}
	}
	return ""
}

// prefixOf reports whether p is a prefix of (or equal to) path.
func prefixOf(p, path []string) bool {
	return len(p) <= len(path) && slices.Equal(p, path[:len(p)])
}
