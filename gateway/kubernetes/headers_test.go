package kubernetes

import (
	"net/http"
	"reflect"
	"sort"
	"testing"
)

func TestStripIdentityHeaders(t *testing.T) {
	h := http.Header{}
	// Canonical keys, as net/http's server stores them.
	for _, k := range []string{
		"Authorization", "Cookie", "Proxy-Authorization",
		"Impersonate-User", "Impersonate-Group", "Impersonate-Uid", "Impersonate-Extra-Foo", "Impersonate-Extra-Scopes",
		"X-Remote-User", "X-Remote-Group", "X-Remote-Extra-Foo", "X-Remote-Uid",
		"Audit-Id", // the cluster's audit log takes it as written (TestAuditIDNotTakenFromTheCaller)
	} {
		h.Add(k, "evil")
	}
	h.Add("Impersonate-Group", "system:masters")
	// Keys as a handler could have set them directly in the map, in any case.
	h["impersonate-user"] = []string{"admin"}
	h["IMPERSONATE-GROUP"] = []string{"system:masters"}
	h["x-remote-user"] = []string{"admin"}
	h["X-REMOTE-EXTRA-SCOPES"] = []string{"all"}
	h["authorization"] = []string{"Bearer other"}
	h["cookie"] = []string{"session=1"}
	h["proxy-authorization"] = []string{"Basic eDp5"}
	// Kept.
	keep := http.Header{
		"Accept":            {"application/json"},
		"Content-Type":      {"application/merge-patch+json"},
		"User-Agent":        {"kubectl/v1.33.0"},
		"X-Request-Id":      {"abc"},
		"Impersonation":     {"not a prefix match"},
		"Remote-User":       {"not X-Remote-"},
		"X-Remotely":        {"not X-Remote-"},
		"Content-Length":    {"12"},
		"Kubectl-Command":   {"kubectl get"},
		"X-Forwarded-Proto": {"https"},
	}
	for k, v := range keep {
		h[k] = v
	}
	stripIdentityHeaders(h)
	if !reflect.DeepEqual(h, keep) {
		var got []string
		for k := range h {
			got = append(got, k)
		}
		sort.Strings(got)
		t.Fatalf("after stripping: %v\nwant exactly the kept headers %v", got, keep)
	}
}

func TestStripIdentityHeadersWebSocketToken(t *testing.T) {
	tests := []struct {
		name string
		in   []string
		want []string // nil: no Sec-Websocket-Protocol left
	}{
		{"token and channel", []string{"base64url.bearer.authorization.k8s.io.ZXlKaGJHY2lPaUpTVXpJMU5pSjk, v5.channel.k8s.io"}, []string{"v5.channel.k8s.io"}},
		{"channel first", []string{"v5.channel.k8s.io,base64url.bearer.authorization.k8s.io.dG9rZW4,v4.channel.k8s.io"}, []string{"v5.channel.k8s.io, v4.channel.k8s.io"}},
		{"several header values", []string{"v4.channel.k8s.io", "base64url.bearer.authorization.k8s.io.dG9rZW4", "channel.k8s.io"}, []string{"v4.channel.k8s.io, channel.k8s.io"}},
		{"token in another case", []string{"Base64Url.Bearer.Authorization.K8s.Io.dG9rZW4, v5.channel.k8s.io"}, []string{"v5.channel.k8s.io"}},
		{"token only", []string{"base64url.bearer.authorization.k8s.io.dG9rZW4"}, nil},
		{"empty parts", []string{" , ,v5.channel.k8s.io, "}, []string{"v5.channel.k8s.io"}},
		{"channels only", []string{"v5.channel.k8s.io, v4.channel.k8s.io"}, []string{"v5.channel.k8s.io, v4.channel.k8s.io"}},
	}
	for _, tc := range tests {
		h := http.Header{"Sec-Websocket-Protocol": tc.in, "Upgrade": {"websocket"}}
		stripIdentityHeaders(h)
		if got := h.Values("Sec-Websocket-Protocol"); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: Sec-Websocket-Protocol = %q, want %q", tc.name, got, tc.want)
		}
		if h.Get("Upgrade") != "websocket" {
			t.Errorf("%s: Upgrade removed", tc.name)
		}
	}
	// No subprotocol header: none is added.
	h := http.Header{"Accept": {"*/*"}}
	stripIdentityHeaders(h)
	if _, ok := h["Sec-Websocket-Protocol"]; ok || len(h) != 1 {
		t.Errorf("headers %v", h)
	}
}

func TestBearer(t *testing.T) {
	tests := []struct {
		name string
		h    http.Header
		want string
	}{
		{"bearer", http.Header{"Authorization": {"Bearer eyJhbGciOi.x.y"}}, "eyJhbGciOi.x.y"},
		{"lower case", http.Header{"Authorization": {"bearer tok"}}, "tok"},
		{"upper case", http.Header{"Authorization": {"BEARER tok"}}, "tok"},
		{"surrounding space", http.Header{"Authorization": {"Bearer   tok  "}}, "tok"},
		{"missing", http.Header{}, ""},
		{"empty", http.Header{"Authorization": {""}}, ""},
		{"basic", http.Header{"Authorization": {"Basic dXNlcjpwYXNz"}}, ""},
		{"scheme only", http.Header{"Authorization": {"Bearer"}}, ""},
		{"scheme and space", http.Header{"Authorization": {"Bearer "}}, ""},
		{"scheme and spaces", http.Header{"Authorization": {"Bearer    "}}, ""},
		{"no space", http.Header{"Authorization": {"Bearertok"}}, ""},
		{"other scheme with bearer inside", http.Header{"Authorization": {"Digest bearer tok"}}, ""},
		{"first of two", http.Header{"Authorization": {"Bearer one", "Bearer two"}}, "one"},
	}
	for _, tc := range tests {
		if got := bearer(tc.h); got != tc.want {
			t.Errorf("%s: bearer = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestSplitCluster(t *testing.T) {
	tests := []struct {
		path       string
		name, rest string
		ok         bool
	}{
		{"/k8s/prod/api/v1/namespaces", "prod", "/api/v1/namespaces", true},
		{"/k8s/prod/apis/apps/v1/deployments", "prod", "/apis/apps/v1/deployments", true},
		{"/k8s/prod/", "prod", "/", true},
		{"/k8s/prod", "prod", "/", true},
		{"/k8s/prod//api", "prod", "//api", true},
		{"/k8s/prod/version", "prod", "/version", true},
		{"/k8s/", "", "", false},
		{"/k8s", "", "", false},
		{"/k8s//api/v1", "", "", false},
		{"/api/v1/namespaces", "", "", false},
		{"/", "", "", false},
		{"", "", "", false},
		{"/K8S/prod/api", "", "", false},
		{"k8s/prod/api", "", "", false},
	}
	for _, tc := range tests {
		name, rest, ok := splitCluster(tc.path)
		if name != tc.name || rest != tc.rest || ok != tc.ok {
			t.Errorf("splitCluster(%q) = %q, %q, %v; want %q, %q, %v", tc.path, name, rest, ok, tc.name, tc.rest, tc.ok)
		}
	}
}

func TestHeaderHasToken(t *testing.T) {
	h := http.Header{"Connection": {"keep-alive, Upgrade", "close"}}
	for tok, want := range map[string]bool{"upgrade": true, "UPGRADE": true, "keep-alive": true, "close": true, "up": false, "": false} {
		if got := headerHasToken(h, "Connection", tok); got != want {
			t.Errorf("headerHasToken(%q) = %v, want %v", tok, got, want)
		}
	}
}
