package kubernetes

import (
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/celpolicy"
)

// splitURL splits a test URL (path and query, as the API server sees it
// after the /k8s/CLUSTER prefix) into the path and the parsed query.
func splitURL(t *testing.T, raw string) (string, url.Values) {
	t.Helper()
	p, q, _ := strings.Cut(raw, "?")
	query, err := url.ParseQuery(q)
	if err != nil {
		t.Fatalf("%s: bad test query: %v", raw, err)
	}
	return p, query
}

// TestAttributes is modelled on k8s.io/apiserver's TestGetAPIRequestInfo:
// each URL is read the way the API server reads it.
func TestAttributes(t *testing.T) {
	type want struct {
		resource   bool
		apiVersion string
		req        celpolicy.KubernetesRequest
	}
	api := func(verb, group, version, ns, resource, name, sub string) want {
		return want{resource: true, apiVersion: version, req: celpolicy.KubernetesRequest{
			Kind: "api", Verb: verb, APIGroup: group, Resource: resource, Namespace: ns, Name: name, Subresource: sub}}
	}
	nonResource := func(verb, path string) want {
		return want{req: celpolicy.KubernetesRequest{Kind: "api", Verb: verb, Path: path}}
	}
	with := func(w want, f func(*celpolicy.KubernetesRequest)) want { f(&w.req); return w }

	tests := []struct {
		method, url string
		want        want
	}{
		// get, list, namespaced and cluster-wide
		{"GET", "/api/v1/namespaces/other/pods", api("list", "", "v1", "other", "pods", "", "")},
		{"GET", "/api/v1/namespaces/other/pods/foo", api("get", "", "v1", "other", "pods", "foo", "")},
		{"HEAD", "/api/v1/namespaces/other/pods/foo", api("get", "", "v1", "other", "pods", "foo", "")},
		{"GET", "/api/v1/pods", api("list", "", "v1", "", "pods", "", "")},
		{"HEAD", "/api/v1/pods", api("list", "", "v1", "", "pods", "", "")},
		{"GET", "/api/v1/namespaces/other/pods/", api("list", "", "v1", "other", "pods", "", "")},
		// namespaces themselves, and cluster-scoped resources
		{"GET", "/api/v1/namespaces", api("list", "", "v1", "", "namespaces", "", "")},
		{"GET", "/api/v1/namespaces/other", api("get", "", "v1", "other", "namespaces", "other", "")},
		{"GET", "/api/v1/nodes/node-1", api("get", "", "v1", "", "nodes", "node-1", "")},
		{"PUT", "/api/v1/namespaces/other/finalize", api("update", "", "v1", "other", "namespaces", "other", "finalize")},
		{"PUT", "/api/v1/namespaces/other/status", api("update", "", "v1", "other", "namespaces", "other", "status")},
		// watch: by query and by the /watch/ prefix
		{"GET", "/api/v1/pods?watch=true", api("watch", "", "v1", "", "pods", "", "")},
		{"GET", "/api/v1/namespaces/other/pods?watch=1", api("watch", "", "v1", "other", "pods", "", "")},
		{"GET", "/api/v1/pods?watch=false", api("list", "", "v1", "", "pods", "", "")},
		{"GET", "/api/v1/namespaces/other/pods?watch=0", api("list", "", "v1", "other", "pods", "", "")},
		{"GET", "/api/v1/watch/pods", api("watch", "", "v1", "", "pods", "", "")},
		{"GET", "/api/v1/watch/namespaces/other/pods", api("watch", "", "v1", "other", "pods", "", "")},
		{"GET", "/api/v1/watch/namespaces/other/secrets/db", api("watch", "", "v1", "other", "secrets", "db", "")},
		{"GET", "/api/v1/namespaces/default/secrets?resourceVersion=0&watch=true&allowWatchBookmarks=true",
			api("watch", "", "v1", "default", "secrets", "", "")},
		// writes
		{"POST", "/api/v1/namespaces/other/secrets", api("create", "", "v1", "other", "secrets", "", "")},
		{"PUT", "/api/v1/namespaces/other/secrets/db", api("update", "", "v1", "other", "secrets", "db", "")},
		{"PATCH", "/api/v1/namespaces/other/secrets/db", api("patch", "", "v1", "other", "secrets", "db", "")},
		{"DELETE", "/api/v1/namespaces/other/secrets/db", api("delete", "", "v1", "other", "secrets", "db", "")},
		{"DELETE", "/api/v1/namespaces/other/secrets", api("deletecollection", "", "v1", "other", "secrets", "", "")},
		{"DELETE", "/api/v1/nodes", api("deletecollection", "", "v1", "", "nodes", "", "")},
		{"DELETE", "/apis/extensions/v1/namespaces/other/pods", api("deletecollection", "extensions", "v1", "other", "pods", "", "")},
		// API groups and versions
		{"GET", "/apis/apps/v1/namespaces/x/deployments/y", api("get", "apps", "v1", "x", "deployments", "y", "")},
		{"PATCH", "/apis/apps/v1/namespaces/x/deployments/y/scale", api("patch", "apps", "v1", "x", "deployments", "y", "scale")},
		{"GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles", api("list", "rbac.authorization.k8s.io", "v1", "", "clusterroles", "", "")},
		{"POST", "/apis/extensions/v1beta3/namespaces/other/pods", api("create", "extensions", "v1beta3", "other", "pods", "", "")},
		{"GET", "/apis/batch/v1/job/foo/scale", api("get", "batch", "v1", "", "job", "foo", "scale")},
		// subresources
		{"GET", "/api/v1/namespaces/other/pods/foo/status", api("get", "", "v1", "other", "pods", "foo", "status")},
		{"GET", "/api/v1/namespaces/other/pods/foo/proxy/subpath", api("get", "", "v1", "other", "pods", "foo", "proxy")},
		{"GET", "/api/v1/namespaces/default/pods/web/log?container=app&follow=true",
			with(api("get", "", "v1", "default", "pods", "web", "log"), func(r *celpolicy.KubernetesRequest) { r.Container = "app" })},
		{"GET", "/api/v1/namespaces/default/pods/web/log", api("get", "", "v1", "default", "pods", "web", "log")},
		// exec: kubectl's WebSocket executor sends a GET, the SPDY one a
		// POST; the API server authorizes both as create, and so does the
		// gateway (a GET must not step around a rule on create).
		{"GET", "/api/v1/namespaces/default/pods/web/exec?command=sh&command=-c&command=echo+hi&container=app&stdin=true&stdout=true&tty=true",
			with(api("create", "", "v1", "default", "pods", "web", "exec"), func(r *celpolicy.KubernetesRequest) {
				r.Command, r.Container = []string{"sh", "-c", "echo hi"}, "app"
			})},
		{"POST", "/api/v1/namespaces/default/pods/web/exec?command=ls&command=%2F&stdout=true",
			with(api("create", "", "v1", "default", "pods", "web", "exec"), func(r *celpolicy.KubernetesRequest) { r.Command = []string{"ls", "/"} })},
		{"GET", "/api/v1/namespaces/default/pods/web/attach?container=sidecar&stdin=true",
			with(api("create", "", "v1", "default", "pods", "web", "attach"), func(r *celpolicy.KubernetesRequest) { r.Container = "sidecar" })},
		{"GET", "/api/v1/namespaces/default/pods/web/portforward?ports=8080", api("create", "", "v1", "default", "pods", "web", "portforward")},
		{"HEAD", "/api/v1/namespaces/default/pods/web/exec?command=id", with(api("create", "", "v1", "default", "pods", "web", "exec"), func(r *celpolicy.KubernetesRequest) { r.Command = []string{"id"} })},
		{"POST", "/api/v1/namespaces/default/pods/web/attach", api("create", "", "v1", "default", "pods", "web", "attach")},
		// a followed log is no stream: it stays a get
		{"GET", "/api/v1/namespaces/default/pods/web/log?follow=true", api("get", "", "v1", "default", "pods", "web", "log")},
		// a command on a subresource other than exec is not a command
		{"GET", "/api/v1/namespaces/default/pods/web/log?command=rm&container=app",
			with(api("get", "", "v1", "default", "pods", "web", "log"), func(r *celpolicy.KubernetesRequest) { r.Container = "app" })},
		{"GET", "/api/v1/namespaces/default/services/web/exec?command=rm&container=app", api("get", "", "v1", "default", "services", "web", "exec")},
		// the proxy verb takes no subresource
		{"GET", "/api/v1/proxy/namespaces/other/pods/foo", api("proxy", "", "v1", "other", "pods", "foo", "")},
		{"GET", "/api/v1/proxy/namespaces/other/pods/foo/subpath/not/a/subresource", api("proxy", "", "v1", "other", "pods", "foo", "")},
		// a field selector on metadata.name makes a list a named request
		{"GET", "/api/v1/namespaces/default/secrets?fieldSelector=metadata.name%3Ddb", api("list", "", "v1", "default", "secrets", "db", "")},
		{"GET", "/api/v1/namespaces/default/secrets?fieldSelector=metadata.name%3Ddb&watch=true", api("watch", "", "v1", "default", "secrets", "db", "")},
		{"GET", "/api/v1/namespaces/default/secrets?fieldSelector=metadata.name%21%3Ddb", api("list", "", "v1", "default", "secrets", "", "")},
		{"GET", "/api/v1/namespaces/default/secrets?fieldSelector=type%3DOpaque", api("list", "", "v1", "default", "secrets", "", "")},
		{"GET", "/api/v1/namespaces/default/secrets?fieldSelector=metadata.name%3D..", api("list", "", "v1", "default", "secrets", "", "")},
		// non-resource paths: the verb is the method, the path is kept
		{"GET", "/version", nonResource("get", "/version")},
		{"GET", "/apis", nonResource("get", "/apis")},
		{"GET", "/api", nonResource("get", "/api")},
		{"GET", "/api/v1", nonResource("get", "/api/v1")},
		{"GET", "/apis/apps/v1", nonResource("get", "/apis/apps/v1")},
		{"GET", "/apis/apps/v1/", nonResource("get", "/apis/apps/v1/")},
		{"GET", "/openapi/v3", nonResource("get", "/openapi/v3")},
		{"GET", "/healthz", nonResource("get", "/healthz")},
		{"GET", "/badprefix/version/resource", nonResource("get", "/badprefix/version/resource")},
		{"GET", "/", nonResource("get", "/")},
		{"HEAD", "/version", nonResource("head", "/version")},
		{"POST", "/version", nonResource("post", "/version")},
		{"OPTIONS", "/version", nonResource("options", "/version")},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.url, func(t *testing.T) {
			p, q := splitURL(t, tc.url)
			a, err := attributes(tc.method, p, q, http.Header{})
			if err != nil {
				t.Fatalf("error: %v", err)
			}
			if a.Resource != tc.want.resource {
				t.Errorf("Resource = %v, want %v", a.Resource, tc.want.resource)
			}
			if a.APIVersion != tc.want.apiVersion {
				t.Errorf("APIVersion = %q, want %q", a.APIVersion, tc.want.apiVersion)
			}
			if a.Upgrade != "" {
				t.Errorf("Upgrade = %q, want none", a.Upgrade)
			}
			if a.Request == nil {
				t.Fatal("no Request")
			}
			if !reflect.DeepEqual(*a.Request, tc.want.req) {
				t.Errorf("Request =\n  %+v\nwant\n  %+v", *a.Request, tc.want.req)
			}
		})
	}
}

// TestAttributesUnknownMethod: a method that is no Kubernetes verb on a
// resource leaves the verb empty and says why.
func TestAttributesUnknownMethod(t *testing.T) {
	for _, m := range []string{"OPTIONS", "TRACE", "CONNECT", "PROPFIND", "get", ""} {
		a, err := attributes(m, "/api/v1/namespaces/default/secrets/db", nil, http.Header{})
		if err != nil {
			t.Fatalf("%q: %v", m, err)
		}
		if !a.Resource || a.Request.Resource != "secrets" || a.Request.Name != "db" {
			t.Errorf("%q: %+v", m, a.Request)
		}
		if a.Request.Verb != "" {
			t.Errorf("%q: verb %q, want none", m, a.Request.Verb)
		}
		if !strings.Contains(a.Request.Problem, "is not a Kubernetes verb") {
			t.Errorf("%q: Problem = %q", m, a.Request.Problem)
		}
	}
	// A known method has no problem.
	a, err := attributes("GET", "/api/v1/namespaces/default/secrets/db", nil, http.Header{})
	if err != nil || a.Request.Problem != "" {
		t.Fatalf("GET: %v %q", err, a.Request.Problem)
	}
}

// TestAttributesNonCanonical: a path the API server would read otherwise
// than it is written is refused.
func TestAttributesNonCanonical(t *testing.T) {
	for _, p := range []string{
		"/api/v1/namespaces/a/../kube-system/secrets",
		"/api/v1/namespaces/a/secrets/..",
		"/api/v1/namespaces/a/secrets/.",
		"/api/v1/./namespaces/a/secrets",
		"/api/v1//namespaces/a/secrets",
		"/api/v1/namespaces/a/secrets//",
		"/api/v1/namespaces/a/secrets/db/..",
		"/api/v1/namespaces/default/pods/web/proxy/../../../secrets",
		"//",
		"/./",
		"/.",
		"/..",
		"//api/v1/secrets",
		"/../api/v1/secrets",
		"",
	} {
		if a, err := attributes("GET", p, nil, http.Header{}); err == nil {
			t.Errorf("%q: accepted as %+v", p, a.Request)
		} else if !strings.Contains(err.Error(), "canonical") {
			t.Errorf("%q: error %v, want a canonical-form error", p, err)
		}
	}
}

// TestAttributesNoResource: a path the API server itself cannot read is
// refused.
func TestAttributesNoResource(t *testing.T) {
	for _, p := range []string{"/api/v1/watch", "/apis/apps/v1/watch", "/api/v1/proxy"} {
		if a, err := attributes("GET", p, nil, http.Header{}); err == nil {
			t.Errorf("%q: accepted as %+v", p, a.Request)
		}
	}
}

func TestAttributesUpgrade(t *testing.T) {
	h := http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}, "Sec-Websocket-Protocol": {"v5.channel.k8s.io"}}
	a, err := attributes("GET", "/api/v1/namespaces/default/pods/web/exec", url.Values{"command": {"sh"}}, h)
	if err != nil {
		t.Fatal(err)
	}
	if a.Upgrade != "websocket" || a.Request.Subresource != "exec" || !streaming(a.Request) {
		t.Errorf("got %q %+v", a.Upgrade, a.Request)
	}
}

func TestUpgradeOf(t *testing.T) {
	tests := []struct {
		name string
		h    http.Header
		want string
	}{
		{"none", http.Header{}, ""},
		{"websocket", http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}}, "websocket"},
		{"websocket any case", http.Header{"Connection": {"keep-alive, UPGRADE"}, "Upgrade": {"WebSocket"}}, "websocket"},
		{"connection in a second value", http.Header{"Connection": {"keep-alive", "upgrade"}, "Upgrade": {"websocket"}}, "websocket"},
		{"spdy", http.Header{"Connection": {"Upgrade"}, "Upgrade": {"SPDY/3.1"}}, "spdy"},
		{"spdy lower case", http.Header{"Connection": {"upgrade"}, "Upgrade": {"spdy/3.1"}}, "spdy"},
		{"upgrade without connection", http.Header{"Upgrade": {"websocket"}}, ""},
		{"connection keep-alive only", http.Header{"Connection": {"keep-alive"}, "Upgrade": {"websocket"}}, ""},
		{"connection without upgrade header", http.Header{"Connection": {"Upgrade"}}, ""},
		{"connection token is not a substring", http.Header{"Connection": {"upgraded"}, "Upgrade": {"websocket"}}, ""},
		{"other protocol", http.Header{"Connection": {"Upgrade"}, "Upgrade": {"h2c"}}, "h2c"},
	}
	for _, tc := range tests {
		if got := upgradeOf(tc.h); got != tc.want {
			t.Errorf("%s: upgradeOf = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestStreaming(t *testing.T) {
	tests := []struct {
		resource, sub string
		want          bool
	}{
		{"pods", "exec", true},
		{"pods", "attach", true},
		{"pods", "portforward", true},
		{"pods", "log", false},
		{"pods", "", false},
		{"services", "exec", false},
		{"secrets", "", false},
	}
	for _, tc := range tests {
		if got := streaming(&celpolicy.KubernetesRequest{Resource: tc.resource, Subresource: tc.sub}); got != tc.want {
			t.Errorf("streaming(%s/%s) = %v, want %v", tc.resource, tc.sub, got, tc.want)
		}
	}
}
