package kubernetes

import (
	"encoding/json"
	"strings"
)

// managed masks what an object's managedFields say about its masked
// fields. They name each field a manager set, and a list keyed by a value
// names the value: a Pod's status.podIPs is keyed by ip, so a manager's
// fields hold k:{"ip":"10.0.0.1"}, and a set holds its values (v:"…"). A
// masked field's entry is emptied (who owns it stays, what it holds goes),
// and a list element keyed by a masked field is removed.
func (m *masker) managed(md map[string]any) {
	entries, ok := md["managedFields"].([]any)
	if !ok {
		return
	}
	for _, e := range entries {
		entry, ok := e.(map[string]any)
		if !ok {
			continue
		}
		set, ok := entry["fieldsV1"].(map[string]any)
		if !ok {
			continue
		}
		for _, f := range m.fields {
			if hideManaged(set, f.path) {
				m.note(f)
			}
		}
	}
}

// hideManaged hides path in a managedFields field set (FieldsV1: "f:name"
// for a field, "k:{…}", "v:…" and "i:N" for list elements). A path
// crosses lists as masks do: each element is searched for the rest of it.
func hideManaged(set map[string]any, path []string) bool {
	found := false
	for k, v := range set {
		if !strings.HasPrefix(k, "k:") && !strings.HasPrefix(k, "i:") {
			continue
		}
		if strings.HasPrefix(k, "k:") && keyNames(k[2:], path[0]) {
			delete(set, k) // the element's key is the masked value
			found = true
			continue
		}
		if sub, ok := v.(map[string]any); ok && hideManaged(sub, path) {
			found = true
		}
	}
	child, ok := set["f:"+path[0]].(map[string]any)
	if !ok {
		return found
	}
	if len(path) == 1 {
		set["f:"+path[0]] = map[string]any{}
		return true
	}
	return hideManaged(child, path[1:]) || found
}

// keyNames reports whether a keyed list element's key (the JSON object
// after "k:") has field among its keys. A key that does not read as one
// counts as naming it: hidden rather than shown.
func keyNames(key, field string) bool {
	var obj map[string]any
	if json.Unmarshal([]byte(key), &obj) != nil {
		return true
	}
	_, ok := obj[field]
	return ok
}
