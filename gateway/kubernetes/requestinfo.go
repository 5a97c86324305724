package kubernetes

import (
	"fmt"
	"net/http"
	"net/url"
	"path"
	"strings"

	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apiserver/pkg/endpoints/request"

	"github.com/gatehouse-dev/gatehouse/celpolicy"
)

// infoFactory is the API server's own request-info logic, configured as
// kube-apiserver configures it: /api is the core group, /apis the others.
var infoFactory = &request.RequestInfoFactory{
	APIPrefixes:          sets.NewString("api", "apis"),
	GrouplessAPIPrefixes: sets.NewString("api"),
}

// Attributes are what the API server will make of a request, and what
// the policy decides on.
type Attributes struct {
	Request *celpolicy.KubernetesRequest
	// Resource: the request is for an API resource (not /version, /apis).
	Resource   bool
	APIVersion string
	// Upgrade is the protocol an exec, attach or port-forward asks for
	// (websocket, spdy), or "".
	Upgrade string
}

// attributes parses a request's method, path (the part after the cluster
// prefix) and query as the API server will. A path the API server would
// read differently from how it is written (dot segments, empty segments)
// is refused: the request decided must be the request forwarded.
func attributes(method, rest string, query url.Values, header http.Header) (Attributes, error) {
	if rest != "/" && (path.Clean(rest) != strings.TrimSuffix(rest, "/") || strings.Contains(rest, "//")) {
		return Attributes{}, fmt.Errorf("the path %q is not in canonical form (no empty, . or .. segments)", rest)
	}
	u := &url.URL{Path: rest, RawQuery: query.Encode()}
	info, err := infoFactory.NewRequestInfo(&http.Request{Method: method, URL: u})
	if err != nil {
		return Attributes{}, fmt.Errorf("the path %q names no API resource: %v", rest, err)
	}
	a := Attributes{Resource: info.IsResourceRequest, APIVersion: info.APIVersion, Upgrade: upgradeOf(header)}
	a.Request = &celpolicy.KubernetesRequest{
		Kind: "api", Verb: info.Verb, APIGroup: info.APIGroup, Resource: info.Resource,
		Subresource: info.Subresource, Namespace: info.Namespace, Name: info.Name,
	}
	if streaming(a.Request) && info.Verb == "get" {
		// An exec, attach or port-forward over WebSocket is a GET; over
		// SPDY a POST. Both do the same, and the API server authorizes
		// both as create (AuthorizePodWebsocketUpgradeCreatePermission):
		// a rule on create must not be stepped around with a GET.
		a.Request.Verb = "create"
	}
	if info.Resource == "pods" {
		switch info.Subresource {
		case "exec":
			a.Request.Command = query["command"]
			fallthrough
		case "attach", "log":
			a.Request.Container = query.Get("container")
		}
	}
	if !info.IsResourceRequest {
		// A non-resource URL (/version, /apis, /openapi/v3): the verb is
		// the HTTP method, and only reading ones are forwarded.
		a.Request.Path = rest
	}
	if a.Request.Verb == "" {
		a.Request.Problem = fmt.Sprintf("the HTTP method %s is not a Kubernetes verb", method)
	}
	return a, nil
}

// upgradeOf names the protocol an upgrade request asks for.
func upgradeOf(h http.Header) string {
	if !headerHasToken(h, "Connection", "upgrade") {
		return ""
	}
	up := strings.ToLower(h.Get("Upgrade"))
	switch {
	case up == "websocket":
		return "websocket"
	case strings.HasPrefix(up, "spdy/"):
		return "spdy"
	case up == "":
		return ""
	}
	return up
}

// headerHasToken reports whether a comma-separated header holds token.
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// streaming subresources run a stream over an upgraded connection.
func streaming(r *celpolicy.KubernetesRequest) bool {
	switch r.Subresource {
	case "exec", "attach", "portforward":
		return r.Resource == "pods"
	}
	return false
}
