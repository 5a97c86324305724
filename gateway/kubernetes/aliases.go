package kubernetes

import (
	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
)

// fieldIn is where a masked field is found in the objects of a request:
// its own path when the request is for the field's resource, the path it
// has there when the request is for the same objects served under another
// group (an Event is served as events and as events.events.k8s.io, one
// object in storage), and false otherwise. A mask must hold whichever URL
// the caller reads the object through.
func fieldIn(f bundle.KubernetesField, req *celpolicy.KubernetesRequest) ([]string, bool) {
	if f.Resource == req.Resource && f.Group == req.APIGroup {
		return f.Path, true
	}
	for _, a := range aliases {
		for _, side := range [][2]int{{0, 1}, {1, 0}} {
			from, to := a.names[side[0]], a.names[side[1]]
			if f.Resource != from.resource || f.Group != from.group || req.Resource != to.resource || req.APIGroup != to.group {
				continue
			}
			path := append([]string(nil), f.Path...)
			for _, r := range a.renamed {
				if path[0] == r[side[0]] {
					path[0] = r[side[1]]
					break
				}
			}
			return path, true
		}
	}
	return nil, false
}

// alias is one resource the API server serves under two groups from the
// same storage, with the top-level fields renamed between them.
type alias struct {
	names   [2]struct{ resource, group string }
	renamed [][2]string
}

// aliases are the resources served under two groups (Kubernetes 1.37):
// core events and events.k8s.io events, whose fields events.k8s.io/v1
// renamed.
var aliases = []alias{{
	names: [2]struct{ resource, group string }{{"events", ""}, {"events", "events.k8s.io"}},
	renamed: [][2]string{
		{"message", "note"},
		{"involvedObject", "regarding"},
		{"source", "deprecatedSource"},
		{"firstTimestamp", "deprecatedFirstTimestamp"},
		{"lastTimestamp", "deprecatedLastTimestamp"},
		{"count", "deprecatedCount"},
		{"reportingComponent", "reportingController"},
	},
}}
