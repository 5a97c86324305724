package kubernetes

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/gateway/bundlestore"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/gateway/secrets"
	"github.com/gatehouse-dev/gatehouse/gateway/session"
	"github.com/gatehouse-dev/gatehouse/hclconfig"
	"github.com/gatehouse-dev/gatehouse/internal/kubecluster"
	"github.com/gatehouse-dev/gatehouse/internal/kubetest"
	"github.com/gatehouse-dev/gatehouse/internal/oidctest"
)

// clusterGateway is the gateway in front of a real kube-apiserver, with
// its bundle store, so a test can publish new revisions (apply).
type clusterGateway struct {
	// header is the bundle's providers, identities and cluster, with
	// the issuer, the server and its CA to fill in (clusterHeader).
	header string
	t      *testing.T
	c      *kubecluster.Cluster
	iss    *oidctest.Issuer
	key    ed25519.PrivateKey
	store  *bundlestore.Store
	gw     *httptest.Server
	rev    uint64
	rec    *recorder.Recorder
	dir    string
}

const clusterHeader = `
identity_provider "corp" {
  issuer    = %q
  audiences = ["gatehouse"]
}
identity "dev" {
  provider = "corp"
  subject  = "dev"
}
kubernetes_cluster "prod" {
  server  = %q
  token   = "env:K8S_TOKEN"
  ca_file = %q
}
`

func startClusterGateway(t *testing.T, c *kubecluster.Cluster, policy string) *clusterGateway {
	t.Helper()
	return startClusterGatewayWith(t, c, policy, Config{TLS: &tls.Config{}})
}

// startClusterGatewayWith is startClusterGateway with the proxy's config.
func startClusterGatewayWith(t *testing.T, c *kubecluster.Cluster, policy string, cfg Config) *clusterGateway {
	t.Helper()
	t.Setenv("K8S_TOKEN", c.AdminToken)
	a := &clusterGateway{t: t, c: c, iss: oidctest.Start(t)}
	key, _ := bundle.GenerateKey()
	a.key = key
	a.store = bundlestore.New(bundle.NewKeyring(key.Public().(ed25519.PublicKey)), "")
	a.apply(policy)
	recKey, _ := bundle.GenerateKey()
	a.dir = t.TempDir()
	rec, err := recorder.Open(a.dir, recKey)
	if err != nil {
		t.Fatal(err)
	}
	a.rec = rec
	t.Cleanup(func() { rec.Close() })
	core := session.New(a.store, session.WithRecorder(rec), session.WithLogger(slog.New(slog.DiscardHandler)))
	s, err := New(cfg, core, WithSecrets(secrets.Resolver{}), WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	a.gw = httptest.NewServer(s)
	t.Cleanup(a.gw.Close)
	return a
}

func (a *clusterGateway) apply(policy string) {
	a.t.Helper()
	a.rev++
	header := a.header
	if header == "" {
		header = clusterHeader
	}
	src := fmt.Sprintf(header, a.iss.URL, a.c.URL, a.c.CAFile) + policy
	res, diags := hclconfig.LoadFiles(map[string][]byte{"p.hcl": []byte(src)})
	if diags.HasErrors() {
		a.t.Fatal(diags)
	}
	p, err := bundle.NewPayload(*res.Model, bundle.BuildOptions{Revision: a.rev, CreatedAt: time.Unix(1764000000+int64(a.rev), 0), Compiler: "test"})
	if err != nil {
		a.t.Fatal(err)
	}
	raw, _ := bundle.EncodePayload(p)
	data, _ := bundle.Sign(raw, a.key)
	if _, err := a.store.Apply(data, "test"); err != nil {
		a.t.Fatal(err)
	}
}

func (a *clusterGateway) do(method, path, body string, hdr map[string]string) (int, string) {
	a.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, a.gw.URL+"/k8s/prod"+path, rd)
	req.Header.Set("Authorization", "Bearer "+a.iss.Token(a.t, "dev", "gatehouse"))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

const eventPolicy = `
policy "all" {
  resources  = ["prod"]
  identities = ["dev"]
  rule "read" {
    effect = "allow"
    when   = "request.verb in ['get', 'list', 'watch']"
    reason = "read"
  }
}
mask "event-messages" {
  resources = ["prod"]
  fields    = ["events/message"]
  method    = "redact"
}
`

// TestTableOnlyAsTheGatewayAsks: where masks apply, the caller's Accept
// is never forwarded as written. A table's cells are not masked (only its
// rows' objects), so the gateway asks for tables of Secrets and ConfigMaps
// only; an Accept part that Go's parser reads as one quoted parameter
// and the API server's parser splits into as=Table;g=…;v=v1 must not get
// a table of events, whose message column shows the masked field.
func TestTableOnlyAsTheGatewayAsks(t *testing.T) {
	const hidden = "the password is s3cr3t-value"
	c := kubetest.Start(t)
	_, err := c.AdminClient().CoreV1().Events("default").Create(context.Background(), &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Name: "ev1"},
		InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: "default", Name: "x"},
		Reason:         "Test", Message: hidden, Type: "Normal",
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	g := startClusterGateway(t, c, eventPolicy)
	for _, accept := range []string{
		"",
		"application/json;as=Table;v=v1;g=meta.k8s.io",
		`application/json;x="a;as=Table;g=meta.k8s.io;v=v1;y=b"`,
		`application/json; x="a;as=Table;g=meta.k8s.io;v=v1"`,
	} {
		for _, path := range []string{"/api/v1/namespaces/default/events", "/api/v1/namespaces/default/events?watch=true&timeoutSeconds=1"} {
			code, body := g.do("GET", path, "", map[string]string{"Accept": accept})
			if code != 200 || strings.Contains(body, hidden) || strings.Contains(body, `"kind":"Table"`) {
				t.Errorf("Accept %q, %s: %d %.300s", accept, path, code, body)
			}
		}
	}
}

const secretWriterPolicy = `
policy "all" {
  resources  = ["prod"]
  identities = ["dev"]
  rule "rw" {
    effect = "allow"
    when   = "request.resource == 'secrets' && request.verb in ['get', 'list', 'patch', 'update']"
    reason = "label secrets, never read them"
  }
}
mask "secret-values" {
  resources = ["prod"]
  fields    = ["secrets/data"]
  method    = "redact"
}
`

// TestWritesToMaskedFieldsRefused: a caller who may patch a Secret whose
// values are masked cannot check guesses of them. A write that sets a
// masked field answers whether the value sent equals the hidden one (a
// server-side apply conflicts or not; a merge patch that changes nothing
// claims no managed fields), dry run or not, so every such write is
// refused, whatever its patch type; one that leaves them alone passes.
func TestWritesToMaskedFieldsRefused(t *testing.T) {
	c := kubetest.Start(t)
	ctx := context.Background()
	_, err := c.AdminClient().CoreV1().Secrets("default").Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "db"},
		Data:       map[string][]byte{"password": []byte("hunter2")},
	}, metav1.CreateOptions{FieldManager: "owner"})
	if err != nil {
		t.Fatal(err)
	}
	g := startClusterGateway(t, c, secretWriterPolicy)
	const path = "/api/v1/namespaces/default/secrets/db"
	guess := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	full := func(data string) string {
		return `{"apiVersion":"v1","kind":"Secret","metadata":{"name":"db","namespace":"default"},` + data + `}`
	}
	for _, w := range []struct{ name, method, query, ct, body string }{
		{"apply", "PATCH", "?dryRun=All&fieldManager=guesser", "application/apply-patch+yaml", full(`"data":{"password":"` + guess("hunter2") + `"}`)},
		{"apply-yaml", "PATCH", "?fieldManager=guesser", "application/apply-patch+yaml", "apiVersion: v1\nkind: Secret\nmetadata: {name: db, namespace: default}\ndata:\n  password: " + guess("hunter2") + "\n"},
		{"merge", "PATCH", "?dryRun=All&fieldManager=guesser", "application/merge-patch+json", `{"data":{"password":"` + guess("hunter2") + `"}}`},
		{"strategic", "PATCH", "?dryRun=All", "application/strategic-merge-patch+json", `{"data":{"password":"` + guess("hunter2") + `"}}`},
		{"stringData", "PATCH", "?dryRun=All", "application/merge-patch+json", `{"stringData":{"password":"hunter2"}}`},
		{"null", "PATCH", "?dryRun=All", "application/merge-patch+json", `{"data":null}`},
		{"last-applied", "PATCH", "?dryRun=All", "application/merge-patch+json", `{"metadata":{"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{\"data\":{\"password\":\"` + guess("hunter2") + `\"}}"}}}`},
		{"repeated key", "PATCH", "?dryRun=All", "application/merge-patch+json", `{"metadata":{},"data":{},"data":{"password":"` + guess("hunter2") + `"}}`},
		{"update", "PUT", "?dryRun=All", "application/json", full(`"data":{"password":"` + guess("hunter2") + `"}`)},
		{"protobuf", "PUT", "?dryRun=All", "application/vnd.kubernetes.protobuf", "k8s\x00"},
	} {
		code, body := g.do(w.method, path+w.query, w.body, map[string]string{"Content-Type": w.ct})
		if code != http.StatusForbidden || !strings.Contains(body, "masks hide") {
			t.Errorf("%s: %d %.300s", w.name, code, body)
		}
	}
	// A write that leaves the values alone passes.
	code, body := g.do("PATCH", path, `{"metadata":{"labels":{"rotated":"yes"}}}`, map[string]string{"Content-Type": "application/merge-patch+json"})
	if code != 200 || strings.Contains(body, guess("hunter2")) {
		t.Errorf("a label patch: %d %.300s", code, body)
	}
	s, err := c.AdminClient().CoreV1().Secrets("default").Get(ctx, "db", metav1.GetOptions{})
	if err != nil || string(s.Data["password"]) != "hunter2" || s.Labels["rotated"] != "yes" {
		t.Fatalf("the secret: %v %v", s, err)
	}
}

const logPolicy = `
policy "all" {
  resources  = ["prod"]
  identities = ["dev"]
  rule "logs" {
    effect = "allow"
    when   = "request.resource == 'pods' && request.subresource == 'log'"
    reason = "logs"
  }
}
`

const denyAllPolicy = `
policy "all" {
  resources  = ["prod"]
  identities = ["dev"]
  rule "nothing" {
    effect = "deny"
    when   = "true"
    reason = "revoked"
  }
}
`

// TestFollowedLogCutByANewBundle: a followed log is cut once a bundle
// denies it, whichever way the caller spells follow (the API server takes
// any value but 0 and false for true).
func TestFollowedLogCutByANewBundle(t *testing.T) {
	c, _ := kubetest.StartWithPod(t, "demo", "web-0")
	for _, follow := range []string{"true", "1"} {
		t.Run("follow="+follow, func(t *testing.T) {
			g := startClusterGateway(t, c, logPolicy)
			req, _ := http.NewRequest("GET", g.gw.URL+"/k8s/prod/api/v1/namespaces/demo/pods/web-0/log?follow="+follow, nil)
			req.Header.Set("Authorization", "Bearer "+g.iss.Token(t, "dev", "gatehouse"))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 {
				b, _ := io.ReadAll(resp.Body)
				t.Fatalf("%d %s", resp.StatusCode, b)
			}
			br := bufio.NewReader(resp.Body)
			if _, err := br.ReadString('\n'); err != nil {
				t.Fatal(err)
			}
			g.apply(denyAllPolicy)
			time.Sleep(2500 * time.Millisecond) // more than RecheckEvery
			marker := "written-after-the-new-bundle-" + follow
			f, err := os.OpenFile(filepath.Join(c.Dir, "kwok", "container.log"), os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(f, "%s stdout F %s\n", time.Now().UTC().Format(time.RFC3339Nano), marker)
			f.Close()
			got := make(chan string, 1)
			go func() {
				var all strings.Builder
				for {
					l, err := br.ReadString('\n')
					all.WriteString(l)
					if err != nil || strings.Contains(l, marker) {
						got <- all.String()
						return
					}
				}
			}()
			select {
			case s := <-got:
				if strings.Contains(s, marker) {
					t.Errorf("a log line written after a bundle that denies the request reached the caller")
				}
			case <-time.After(5 * time.Second):
				t.Errorf("the followed log is still open after a bundle that denies it")
			}
		})
	}
}

const podIPPolicy = `
policy "all" {
  resources  = ["prod"]
  identities = ["dev"]
  rule "read" {
    effect = "allow"
    when   = "request.resource == 'pods' && request.verb in ['get', 'list', 'watch']"
    reason = "read"
  }
}
mask "pod-ips" {
  resources = ["prod"]
  fields    = ["pods/status.podIP", "pods/status.podIPs", "pods/metadata.labels"]
  method    = "redact"
}
`

// TestSelectorsOnMaskedFieldsRefused: a field selector on a masked field
// would answer, object by object, whether the hidden value equals a
// guess; a label selector, where labels are masked, the same. Both are
// refused; a selector on a field no mask covers passes.
func TestSelectorsOnMaskedFieldsRefused(t *testing.T) {
	c, pod := kubetest.StartWithPod(t, "demo", "web-0")
	ctx := context.Background()
	var ip string
	for deadline := time.Now().Add(20 * time.Second); ip == "" && time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		p, err := c.AdminClient().CoreV1().Pods("demo").Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ip = p.Status.PodIP
	}
	if ip == "" {
		t.Fatal("the pod got no IP")
	}
	g := startClusterGateway(t, c, podIPPolicy)
	for _, q := range []string{"fieldSelector=status.podIP%3D" + ip, "fieldSelector=status.podIP!%3D1.2.3.4", "labelSelector=app%3Dweb"} {
		code, body := g.do("GET", "/api/v1/namespaces/demo/pods?"+q, "", nil)
		if code != http.StatusForbidden || !strings.Contains(body, "masks hide") {
			t.Errorf("%s: %d %.300s", q, code, body)
		}
	}
	code, body := g.do("GET", "/api/v1/namespaces/demo/pods?fieldSelector=metadata.name%3Dweb-0", "", nil)
	if code != 200 || !strings.Contains(body, "web-0") || strings.Contains(body, `"`+ip+`"`) {
		t.Errorf("a selector on the name: %d %.300s", code, body)
	}
}

// TestReservedNamesNotImpersonated: with impersonation on, a group claim
// named like one Kubernetes reserves (system:masters) is not passed on:
// the cluster's RBAC sees the caller, not an administrator.
func TestReservedNamesNotImpersonated(t *testing.T) {
	c := kubetest.Start(t)
	const policy = `
policy "all" {
  resources  = ["prod"]
  identities = ["dev"]
  rule "read" {
    effect = "allow"
    when   = "request.verb in ['get', 'list']"
    reason = "read; the cluster's RBAC decides too"
  }
}
`
	g := startClusterGateway(t, c, policy)
	g.header = strings.Replace(clusterHeader, `ca_file = %q`, "ca_file = %q\n  impersonate = true", 1)
	g.apply(policy)
	claims := g.iss.Claims("dev", "gatehouse")
	claims["groups"] = []string{"system:masters"}
	req, _ := http.NewRequest("GET", g.gw.URL+"/k8s/prod/api/v1/namespaces/default/secrets", nil)
	req.Header.Set("Authorization", "Bearer "+g.iss.Sign(t, claims))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(b), `User \"dev\" cannot list`) {
		t.Fatalf("a token claiming system:masters: %d %.300s", resp.StatusCode, b)
	}
}
