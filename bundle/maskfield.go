package bundle

import (
	"fmt"
	"regexp"
	"strings"
)

// KubernetesField is a Kubernetes object field a mask hides, as written in
// a mask's fields: RESOURCE[.GROUP]/PATH.
type KubernetesField struct {
	// Resource is the plural lower-case resource name, as in the API path
	// ("secrets", "configmaps", "widgets").
	Resource string
	// Group is the API group ("example.com"), empty for the core group.
	Group string
	// Path is the keys from the object's root to the masked value
	// (["data"], ["spec", "password"]).
	Path []string
}

// kubeFieldHelp ends every ParseKubernetesField error.
const kubeFieldHelp = "want RESOURCE[.GROUP]/PATH such as secrets/data, configmaps/data or widgets.example.com/spec.password"

var (
	// kubeNameRE is a DNS label: a resource name, or one label of a group.
	kubeNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	// kubeKeyRE is one key of a field path: a JSON field name as the
	// Kubernetes API spells them.
	kubeKeyRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
)

// unmaskablePaths identify an object; a client cannot use an object (or a
// list of them) without them, so no mask may hide them.
var unmaskablePaths = []string{"apiVersion", "kind", "metadata", "metadata.name", "metadata.namespace", "metadata.uid", "metadata.resourceVersion"}

// ParseKubernetesField reads a mask field, RESOURCE[.GROUP]/PATH:
// secrets/data, secrets/stringData, configmaps/data,
// widgets.example.com/spec.password. RESOURCE is the plural lower-case
// resource name as in the API path; GROUP is the API group, left out for
// the core group; PATH is a dotted path of object keys from the object's
// root. The canonical spelling (String) is the one accepted here: nothing
// is folded or defaulted.
func ParseKubernetesField(s string) (KubernetesField, error) {
	if strings.TrimSpace(s) == "" {
		return KubernetesField{}, fmt.Errorf("empty field: %s", kubeFieldHelp)
	}
	rg, path, ok := strings.Cut(s, "/")
	if !ok {
		return KubernetesField{}, fmt.Errorf("field %q names no path: %s", s, kubeFieldHelp)
	}
	if rg == "" {
		return KubernetesField{}, fmt.Errorf("field %q names no resource: %s", s, kubeFieldHelp)
	}
	resource, group, dotted := strings.Cut(rg, ".")
	var f KubernetesField
	switch {
	case resource != strings.ToLower(resource):
		return f, fmt.Errorf("field %q: resource %q must be lower case, the plural name of the API path (%q); %s", s, resource, strings.ToLower(resource), kubeFieldHelp)
	case !kubeNameRE.MatchString(resource) || len(resource) > 63:
		return f, fmt.Errorf("field %q: %q is not a resource name (lower-case letters, digits and '-', as in the API path); %s", s, resource, kubeFieldHelp)
	}
	if dotted {
		switch {
		case group == "":
			return f, fmt.Errorf("field %q: empty API group after %q; leave out the group for the core group (%s/%s)", s, resource+".", resource, path)
		case group != strings.ToLower(group):
			return f, fmt.Errorf("field %q: API group %q must be lower case", s, group)
		case group == "core":
			return f, fmt.Errorf("field %q: the core API group has no name; write %s/%s", s, resource, path)
		case len(group) > 253:
			return f, fmt.Errorf("field %q: API group %q is longer than 253 characters", s, group)
		}
		for label := range strings.SplitSeq(group, ".") {
			if !kubeNameRE.MatchString(label) || len(label) > 63 {
				return f, fmt.Errorf("field %q: API group %q is not a DNS name (%q); %s", s, group, label, kubeFieldHelp)
			}
		}
	}
	if path == "" {
		return f, fmt.Errorf("field %q names no path after the resource: %s", s, kubeFieldHelp)
	}
	if strings.Contains(path, "/") {
		return f, fmt.Errorf("field %q: the path %q contains '/'; separate its keys with '.' (%s)", s, path, strings.ReplaceAll(path, "/", "."))
	}
	keys := strings.Split(path, ".")
	for i, k := range keys {
		switch {
		case k == "":
			return f, fmt.Errorf("field %q: an empty path segment (key %d of %q); separate keys with single dots, such as spec.password", s, i+1, path)
		case !kubeKeyRE.MatchString(k):
			return f, fmt.Errorf("field %q: path segment %q may only hold letters, digits, '-' and '_'", s, k)
		}
	}
	for _, p := range unmaskablePaths {
		if path == p {
			return f, fmt.Errorf("field %q: %s identifies the object, and clients cannot use an object without it; it cannot be masked", s, p)
		}
	}
	if keys[0] == "apiVersion" || keys[0] == "kind" {
		return f, fmt.Errorf("field %q: %s is a string with no keys under it", s, keys[0])
	}
	return KubernetesField{Resource: resource, Group: group, Path: keys}, nil
}

// String is the canonical spelling, RESOURCE[.GROUP]/PATH.
func (f KubernetesField) String() string {
	rg := f.Resource
	if f.Group != "" {
		rg += "." + f.Group
	}
	return rg + "/" + strings.Join(f.Path, ".")
}

// KubernetesTargetPrefix marks a Kubernetes field in a test's expect_masks
// and in a decision's mask targets: kubernetes:secrets/data.
const KubernetesTargetPrefix = "kubernetes:"
