package kubernetes

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/celpolicy"
)

func TestRequestHash(t *testing.T) {
	base := requestHash("PATCH", "/api/v1/namespaces/default/secrets/db", "fieldManager=kubectl", "application/merge-patch+json", []byte(`{"data":{}}`))
	if !regexp.MustCompile(`^sha256:[0-9a-f]{64}$`).MatchString(base) {
		t.Fatalf("hash %q", base)
	}
	// Stable: the same request hashes the same.
	for range 3 {
		if h := requestHash("PATCH", "/api/v1/namespaces/default/secrets/db", "fieldManager=kubectl", "application/merge-patch+json", []byte(`{"data":{}}`)); h != base {
			t.Fatalf("unstable: %s then %s", base, h)
		}
	}
	// Any difference in any part changes it, including a part moving
	// across a boundary (each is length-prefixed).
	others := map[string][5]string{
		"method":         {"PUT", "/api/v1/namespaces/default/secrets/db", "fieldManager=kubectl", "application/merge-patch+json", `{"data":{}}`},
		"path":           {"PATCH", "/api/v1/namespaces/default/secrets/db2", "fieldManager=kubectl", "application/merge-patch+json", `{"data":{}}`},
		"namespace":      {"PATCH", "/api/v1/namespaces/kube-system/secrets/db", "fieldManager=kubectl", "application/merge-patch+json", `{"data":{}}`},
		"query":          {"PATCH", "/api/v1/namespaces/default/secrets/db", "fieldManager=other", "application/merge-patch+json", `{"data":{}}`},
		"no query":       {"PATCH", "/api/v1/namespaces/default/secrets/db", "", "application/merge-patch+json", `{"data":{}}`},
		"body":           {"PATCH", "/api/v1/namespaces/default/secrets/db", "fieldManager=kubectl", "application/merge-patch+json", `{"data":{"a":"b"}}`},
		"no body":        {"PATCH", "/api/v1/namespaces/default/secrets/db", "fieldManager=kubectl", "application/merge-patch+json", ``},
		"body in query":  {"PATCH", "/api/v1/namespaces/default/secrets/db", `fieldManager=kubectl{"data":{}}`, "application/merge-patch+json", ``},
		"query in path":  {"PATCH", "/api/v1/namespaces/default/secrets/dbfieldManager=kubectl", "", "application/merge-patch+json", `{"data":{}}`},
		"content type":   {"PATCH", "/api/v1/namespaces/default/secrets/db", "fieldManager=kubectl", "application/strategic-merge-patch+json", `{"data":{}}`},
		"path in method": {"PATCH/api/v1/namespaces/default/secrets/db", "", "fieldManager=kubectl", "application/merge-patch+json", `{"data":{}}`},
	}
	seen := map[string]string{base: "base"}
	for name, o := range others {
		h := requestHash(o[0], o[1], o[2], o[3], []byte(o[4]))
		if prev, ok := seen[h]; ok {
			t.Errorf("%s hashes as %s", name, prev)
		}
		seen[h] = name
	}
	// A nil body and an empty one are the same request.
	if requestHash("GET", "/version", "", "", nil) != requestHash("GET", "/version", "", "", []byte{}) {
		t.Error("nil and empty bodies differ")
	}
}

func TestShownBody(t *testing.T) {
	digest := func(b []byte) string {
		s := sha256.Sum256(b)
		return "sha256:" + hex.EncodeToString(s[:])
	}
	secret := []byte(`{"apiVersion":"v1","kind":"Secret","metadata":{"name":"db"},"stringData":{"password":"s3cr3t-value"}}`)
	got := shownBody(&celpolicy.KubernetesRequest{Resource: "secrets", Verb: "create"}, secret, false)
	if strings.Contains(got, "s3cr3t") || strings.Contains(got, "stringData") {
		t.Errorf("a Secret body is shown: %s", got)
	}
	if !strings.Contains(got, fmt.Sprintf("%d bytes", len(secret))) || !strings.Contains(got, digest(secret)) {
		t.Errorf("a Secret body is not described: %s", got)
	}

	short := []byte(`{"spec":{"replicas":3}}`)
	if got := shownBody(&celpolicy.KubernetesRequest{APIGroup: "apps", Resource: "deployments"}, short, false); got != string(short) {
		t.Errorf("short body shown as %q", got)
	}
	// secrets of another API group are not core Secrets.
	if got := shownBody(&celpolicy.KubernetesRequest{APIGroup: "example.com", Resource: "secrets"}, short, false); got != string(short) {
		t.Errorf("short body shown as %q", got)
	}

	// A body of a resource whose fields the caller's masks hide is not
	// shown either: approvers would read what the masks hide.
	cm := []byte(`{"kind":"ConfigMap","data":{"api-key":"k3y-value"}}`)
	got = shownBody(&celpolicy.KubernetesRequest{Resource: "configmaps"}, cm, true)
	if strings.Contains(got, "k3y-value") || !strings.Contains(got, digest(cm)) {
		t.Errorf("a masked resource's body is shown: %s", got)
	}
	d := celpolicy.Decision{Masks: []celpolicy.MaskAction{{Target: celpolicy.MaskTarget{Field: "configmaps/data"}, Method: "redact"}}}
	if !masksResource(d, &celpolicy.KubernetesRequest{Resource: "configmaps"}) || masksResource(d, &celpolicy.KubernetesRequest{Resource: "secrets"}) ||
		masksResource(d, &celpolicy.KubernetesRequest{APIGroup: "apps", Resource: "configmaps"}) {
		t.Error("masksResource does not match the field's resource and group")
	}

	exact := []byte(strings.Repeat("a", maxShownBody))
	if got := shownBody(&celpolicy.KubernetesRequest{Resource: "configmaps"}, exact, false); got != string(exact) {
		t.Errorf("a body of exactly maxShownBody bytes was cut to %d bytes", len(got))
	}

	long := []byte(strings.Repeat("0123456789", 500)) // 5000 bytes
	got = shownBody(&celpolicy.KubernetesRequest{Resource: "configmaps"}, long, false)
	want := string(long[:maxShownBody]) + fmt.Sprintf("... (%d bytes in all; %s)", len(long), digest(long))
	if got != want {
		t.Errorf("long body shown as %q...%q", got[:20], got[len(got)-90:])
	}
}
