package provider

import (
	"fmt"
	"sort"
	"strings"
	"sync"
)

// registry is what one provider configuration has planned in this run:
// the gatehouse_* objects and, for each gatehouse_bundle, the objects it
// lists. Terraform starts a provider process per provider configuration
// per walk (validate, plan, apply) and configures it once, so a registry
// made in Configure sees every plan call of its own resources in one run,
// in the order Terraform makes them, and nothing else.
//
// It finds objects that no bundle lists ("a policy left out of objects is
// silently never published"). Terraform plans concurrently, and an object
// left out of every bundle has no dependency edge to one, so either can
// plan first. Whichever of the two plans second reports it: the bundle,
// about registered objects it does not list, or the object, when a bundle
// has already planned without it. Each check runs under the lock with its
// registration, so one of the two always sees the other. With one bundle
// per provider configuration this is exact: an object the bundle lists is
// one it depends on, so it planned before the bundle and is found listed;
// an object it does not list is reported once, by the bundle or on the
// object. A bundle lists an object by key and spec, so of two objects of
// one kind and name (a map keeps the last of two equal keys) the one left
// out is reported. With several bundles in one provider configuration, an
// object that only a bundle planned later lists can be reported by a
// bundle planned earlier: warn_unlisted_objects = false on a bundle turns
// its reports off, and one provider configuration (alias) per bundle keeps
// them exact.
type registry struct {
	mu      sync.Mutex
	objects []*plannedObject
	bundles []*plannedListing
}

// plannedObject is a planned gatehouse_* object; spec is "" while unknown.
type plannedObject struct {
	key, kind, name, spec string
	reported              bool
}

// plannedListing is what a planned bundle lists: its objects' keys, with
// their specs ("" while unknown).
type plannedListing struct {
	specs map[string]string
	// all: the bundle's objects are unknown at plan, so it may list
	// anything; nothing is reported while such a bundle is registered.
	all  bool
	warn bool
}

func newRegistry() *registry { return &registry{} }

// listed reports whether a registered bundle lists o, or may: its key,
// with its spec. Two objects of one kind and name (a map literal keeps
// only the last of two equal keys) are told apart by their specs.
func (r *registry) listed(o *plannedObject) bool {
	for _, b := range r.bundles {
		if b.all {
			return true
		}
		if spec, ok := b.specs[o.key]; ok && (spec == "" || o.spec == "" || spec == o.spec) {
			return true
		}
	}
	return false
}

// object registers a planned object. It returns true when the object is
// to report itself as in no bundle: a bundle that reports has planned,
// and no planned bundle lists it.
func (r *registry) object(kind, name, spec string) bool {
	if r == nil {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	key := objectKey(kind, name)
	var o *plannedObject
	for _, x := range r.objects {
		if x.key == key && x.spec == spec {
			o = x // the same object again
		}
	}
	if o == nil {
		o = &plannedObject{key: key, kind: kind, name: name, spec: spec}
		r.objects = append(r.objects, o)
	}
	if o.reported || r.listed(o) {
		return false
	}
	for _, b := range r.bundles {
		if b.warn {
			o.reported = true
			return true
		}
	}
	return false
}

// bundle registers a planned bundle's listing and returns the objects
// planned so far that no planned bundle lists, when this bundle reports
// them.
func (r *registry) bundle(l *plannedListing) []*plannedObject {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.bundles = append(r.bundles, l)
	if !l.warn {
		return nil
	}
	var out []*plannedObject
	for _, o := range r.objects {
		if o.reported || r.listed(o) {
			continue
		}
		o.reported = true
		out = append(out, o)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].key < out[j].key })
	return out
}

// shadowed reports whether a planned bundle lists another object under
// o's key.
func (r *registry) shadowed(o *plannedObject) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, b := range r.bundles {
		if _, ok := b.specs[o.key]; ok {
			return true
		}
	}
	return false
}

// unlisted words a warning about objects in no bundle.
func (r *registry) unlisted(objs []*plannedObject) (summary, detail string) {
	var what, add, shadowed []string
	for _, o := range objs {
		if r.shadowed(o) {
			shadowed = append(shadowed, fmt.Sprintf("Two gatehouse_%s objects are named %q, and objects[%q] holds only one of them", typeSuffixOf(o.kind), o.name, o.key))
			continue
		}
		what = append(what, fmt.Sprintf("gatehouse_%s %q", typeSuffixOf(o.kind), o.name))
		add = append(add, fmt.Sprintf("    %q = gatehouse_%s.<resource name>.spec", o.key, typeSuffixOf(o.kind)))
	}
	var parts []string
	if len(what) > 0 {
		verb, it := "is", "it"
		if len(what) > 1 {
			verb, it = "are", "them"
		}
		parts = append(parts, fmt.Sprintf("%s %s planned in this configuration, but no gatehouse_bundle lists %s, so no gateway will ever load %s. "+
			"Add %s to a bundle's objects:\n\n%s", strings.Join(what, ", "), verb, it, it, it, strings.Join(add, "\n")))
	}
	if len(shadowed) > 0 {
		parts = append(parts, strings.Join(shadowed, "; ")+" (a map keeps the last of two equal keys): the other is never published. "+
			"Objects of one kind need distinct names; rename one of them.")
	}
	parts = append(parts, "Objects meant to stay out of every bundle: set warn_unlisted_objects = false on the bundles of this provider "+
		"configuration. Only objects and bundles of the same provider configuration are compared; with several bundles in one provider "+
		"configuration, an object that only a bundle planned later lists can be reported too (see gatehouse_bundle's documentation).")
	summary = fmt.Sprintf("%d objects are in no bundle", len(objs))
	if len(objs) == 1 {
		summary = fmt.Sprintf("gatehouse_%s %q is in no bundle", typeSuffixOf(objs[0].kind), objs[0].name)
		if len(shadowed) == 1 {
			summary = fmt.Sprintf("Two gatehouse_%s objects are named %q", typeSuffixOf(objs[0].kind), objs[0].name)
		}
	}
	return summary, strings.Join(parts, "\n\n")
}

func typeSuffixOf(kind string) string {
	if k := kindByName(kind); k != nil {
		return k.typeSuffix
	}
	return kind
}
