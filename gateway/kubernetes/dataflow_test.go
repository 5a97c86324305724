package kubernetes

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gatehouse-dev/gatehouse/internal/kubetest"
)

const secretReaderPolicy = `
policy "all" {
  resources  = ["prod"]
  identities = ["dev"]
  rule "read" {
    effect = "allow"
    when   = "request.resource == 'secrets' && request.verb in ['get', 'list', 'watch']"
    reason = "read"
  }
}
`

// TestWatchCutWhenANewBundleMasks: a watch opened before a bundle masks
// what it carries must not go on delivering the values unmasked. The
// request is still allowed, but what its answer may show has changed:
// the stream is cut, and the caller's next watch is masked.
func TestWatchCutWhenANewBundleMasks(t *testing.T) {
	const hidden = "hunter2-after-the-mask"
	c := kubetest.Start(t)
	g := startClusterGateway(t, c, secretReaderPolicy)
	req, _ := http.NewRequest("GET", g.gw.URL+"/k8s/prod/api/v1/namespaces/default/secrets?watch=1", nil)
	req.Header.Set("Authorization", "Bearer "+g.iss.Token(t, "dev", "gatehouse"))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("the watch: %d", resp.StatusCode)
	}
	g.apply(secretReaderPolicy + maskedSecrets)
	time.Sleep(2500 * time.Millisecond) // more than RecheckEvery
	_, err = c.AdminClient().CoreV1().Secrets("default").Create(context.Background(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "late"},
		Data:       map[string][]byte{"password": []byte(hidden)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := watchUntil(resp.Body, `"late"`)
	select {
	case s := <-got:
		if strings.Contains(s, `"late"`) {
			t.Errorf("a watch opened before the mask went on after it: %.300s", s)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("the watch is still open after a bundle that masks what it carries")
	}

	// A new revision that masks the same way leaves a watch open, masked.
	resp2, err := http.DefaultClient.Do(req.Clone(context.Background()))
	if err != nil {
		t.Fatal(err)
	}
	defer resp2.Body.Close()
	br := bufio.NewReader(resp2.Body)
	if l, err := br.ReadString('\n'); err != nil || !strings.Contains(l, `"late"`) || strings.Contains(l, hidden) {
		t.Fatalf("the watch under the mask: %v %.300s", err, l)
	}
	g.apply(secretReaderPolicy + maskedSecrets)
	time.Sleep(2500 * time.Millisecond)
	_, err = c.AdminClient().CoreV1().Secrets("default").Create(context.Background(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "later"},
		Data:       map[string][]byte{"password": []byte(hidden)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if l, err := br.ReadString('\n'); err != nil || !strings.Contains(l, `"later"`) || strings.Contains(l, hidden) {
		t.Errorf("the watch after a revision that masks the same way: %v %.300s", err, l)
	}
}

const maskedSecrets = `
mask "secret-values" {
  resources = ["prod"]
  fields    = ["secrets/data"]
  method    = "redact"
}
`

const podEnvPolicy = `
policy "all" {
  resources  = ["prod"]
  identities = ["dev"]
  rule "read" {
    effect = "allow"
    when   = "request.resource == 'pods' && request.verb in ['get', 'list', 'watch']"
    reason = "read"
  }
}
mask "env-values" {
  resources = ["prod"]
  fields    = ["pods/spec.containers.env.value"]
  method    = "redact"
}
`

// TestMaskThroughLists: a field's path may cross lists (a Pod's
// containers, a container's env): the mask applies to every element. A
// mask that silently matched nothing would show every value it names.
func TestMaskThroughLists(t *testing.T) {
	const hidden = "s3cr3t-in-the-env"
	c := kubetest.Start(t)
	ctx := context.Background()
	_, err := c.AdminClient().CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "app"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{
			{Name: "a", Image: "busybox", Env: []corev1.EnvVar{{Name: "PLAIN", Value: "x"}, {Name: "TOKEN", Value: hidden}}},
			{Name: "b", Image: "busybox", Env: []corev1.EnvVar{{Name: "TOKEN2", Value: hidden}}},
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	g := startClusterGateway(t, c, podEnvPolicy)
	for _, path := range []string{"/api/v1/namespaces/default/pods/app", "/api/v1/namespaces/default/pods", "/api/v1/namespaces/default/pods?watch=1&timeoutSeconds=1"} {
		code, body := g.do("GET", path, "", nil)
		if code != 200 || strings.Contains(body, hidden) || !strings.Contains(body, `"TOKEN2"`) {
			t.Errorf("%s: %d %.400s", path, code, body)
		}
	}
}

// TestEventMaskHoldsInBothGroups: an Event is one object served under two
// groups, the core group and events.k8s.io, where message is named note.
// A mask on events/message must hold whichever group the caller asks.
func TestEventMaskHoldsInBothGroups(t *testing.T) {
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
	for _, path := range []string{
		"/api/v1/namespaces/default/events/ev1",
		"/apis/events.k8s.io/v1/namespaces/default/events/ev1",
		"/apis/events.k8s.io/v1/namespaces/default/events",
		"/apis/events.k8s.io/v1/namespaces/default/events?watch=1&timeoutSeconds=1",
	} {
		code, body := g.do("GET", path, "", nil)
		if code != 200 || strings.Contains(body, hidden) || !strings.Contains(body, "ev1") {
			t.Errorf("%s: %d %.300s", path, code, body)
		}
	}
}

// TestAuditIDNotTakenFromTheCaller: the API server takes a request's
// Audit-ID header as the ID of its audit event, as written. A caller's
// must not reach it: the cluster's audit log would carry an ID the caller
// chose (another request's, to blur which was which).
func TestAuditIDNotTakenFromTheCaller(t *testing.T) {
	c := kubetest.Start(t)
	g := startClusterGateway(t, c, secretReaderPolicy)
	req, _ := http.NewRequest("GET", g.gw.URL+"/k8s/prod/api/v1/namespaces/default/secrets", nil)
	req.Header.Set("Authorization", "Bearer "+g.iss.Token(t, "dev", "gatehouse"))
	req.Header.Set("Audit-ID", "forged-audit-id")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Audit-Id") == "" || resp.Header.Get("Audit-Id") == "forged-audit-id" {
		t.Errorf("%d, the cluster's audit ID %q", resp.StatusCode, resp.Header.Get("Audit-Id"))
	}
}

// TestManagedFieldsDoNotShowMaskedValues: an object's managedFields name
// the fields each manager set, and a list keyed by a value names it: a
// Pod's status.podIPs is keyed by ip, so its managedFields hold
// k:{"ip":"10.0.0.1"}. Where the field is masked, so is that.
func TestManagedFieldsDoNotShowMaskedValues(t *testing.T) {
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
	for _, path := range []string{"/api/v1/namespaces/demo/pods/web-0", "/api/v1/namespaces/demo/pods", "/api/v1/namespaces/demo/pods?watch=1&timeoutSeconds=1"} {
		code, body := g.do("GET", path, "", nil)
		if code != 200 || strings.Contains(body, ip) || !strings.Contains(body, "managedFields") {
			i := strings.Index(body, ip)
			t.Errorf("%s: %d %.200s", path, code, body[max(0, i-150):])
		}
	}
}

// TestTableOnlyWhereItsCellsShowNoMaskedField: a Secret's table has a
// Type column (and a ConfigMap's and a Secret's an Age column, from
// metadata.creationTimestamp). A table is asked for only when the masks
// cover values no column shows (data, stringData, binaryData); with a
// mask on type, the caller gets the objects, masked.
func TestTableOnlyWhereItsCellsShowNoMaskedField(t *testing.T) {
	const hidden = "example.com/hidden-type"
	c := kubetest.Start(t)
	_, err := c.AdminClient().CoreV1().Secrets("default").Create(context.Background(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "typed"},
		Type:       hidden,
		Data:       map[string][]byte{"k": []byte("v")},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	g := startClusterGateway(t, c, secretReaderPolicy+`
mask "secret-types" {
  resources = ["prod"]
  fields    = ["secrets/type"]
  method    = "redact"
}
`)
	code, body := g.do("GET", "/api/v1/namespaces/default/secrets", "", map[string]string{"Accept": tableAccept})
	if code != 200 || strings.Contains(body, hidden) || !strings.Contains(body, "typed") {
		t.Errorf("%d %.400s", code, body)
	}
}

// TestReservedNamesNotImpersonatedWhateverTheSpacing: net/http trims the
// spaces and tabs around a header's value when it writes HTTP/1.1 (as it
// does an exec's upgrade), so a group claim " system:masters" would reach
// the API server as system:masters, a cluster administrator. A name is
// judged as the API server will read it.
func TestReservedNamesNotImpersonatedWhateverTheSpacing(t *testing.T) {
	c, _ := kubetest.StartWithPod(t, "demo", "web-0")
	const policy = `
policy "all" {
  resources  = ["prod"]
  identities = ["dev"]
  rule "exec" {
    effect = "allow"
    when   = "request.resource == 'pods' && request.subresource == 'exec'"
    reason = "exec; the cluster's RBAC decides too"
  }
}
`
	g := startClusterGateway(t, c, policy)
	g.header = strings.Replace(clusterHeader, `ca_file = %q`, "ca_file = %q\n  impersonate = true", 1)
	g.apply(policy)
	q := url.Values{"command": {"echo", "ran-as-an-administrator"}, "container": {"app"}, "stdout": {"true"}}
	for _, group := range []string{" system:masters", "\tsystem:masters", "  system:masters  "} {
		claims := g.iss.Claims("dev", "gatehouse")
		claims["groups"] = []string{group}
		got := wsExecToken(t, g, g.iss.Sign(t, claims), "/api/v1/namespaces/demo/pods/web-0/exec?"+q.Encode(), "")
		if strings.Contains(got, "ran-as-an-administrator") || !strings.Contains(got, "403") {
			t.Errorf("a token claiming the group %q: %.300s", group, got)
		}
	}
	// A subject that is blank as a header reads would send an empty
	// Impersonate-User, which is no impersonation: the request would run
	// as the gateway's own identity (here the cluster's administrator).
	g.apply(policy + `
identity "anyone" {
  provider = "corp"
  match    = "identity.subject != 'dev'"
}
policy "anyone" {
  resources  = ["prod"]
  identities = ["anyone"]
  rule "exec" {
    effect = "allow"
    when   = "request.resource == 'pods' && request.subresource == 'exec'"
    reason = "exec; the cluster's RBAC decides too"
  }
}
`)
	for _, sub := range []string{" ", "\t"} {
		got := wsExecToken(t, g, g.iss.Sign(t, g.iss.Claims(sub, "gatehouse")), "/api/v1/namespaces/demo/pods/web-0/exec?"+q.Encode(), "")
		if strings.Contains(got, "ran-as-an-administrator") || !strings.Contains(got, "403") {
			t.Errorf("a token whose subject is %q: %.300s", sub, got)
		}
	}
}

// TestWritesThroughLists: a write is refused when it sets a masked field
// inside a list (a container's env value), and passes when its list
// elements leave the field alone (a container's image).
func TestWritesThroughLists(t *testing.T) {
	c := kubetest.Start(t)
	ctx := context.Background()
	_, err := c.AdminClient().CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "app"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{
			{Name: "a", Image: "busybox", Env: []corev1.EnvVar{{Name: "TOKEN", Value: "s3cr3t"}}},
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	g := startClusterGateway(t, c, strings.Replace(podEnvPolicy, "['get', 'list', 'watch']", "['get', 'list', 'watch', 'patch']", 1))
	const path = "/api/v1/namespaces/default/pods/app?dryRun=All"
	ct := map[string]string{"Content-Type": "application/strategic-merge-patch+json"}
	code, body := g.do("PATCH", path, `{"spec":{"containers":[{"name":"a","env":[{"name":"TOKEN","value":"guess"}]}]}}`, ct)
	if code != http.StatusForbidden || !strings.Contains(body, "masks hide") {
		t.Errorf("a patch of the env value: %d %.300s", code, body)
	}
	code, body = g.do("PATCH", path, `{"spec":{"containers":[{"name":"a","image":"busybox:2"}]}}`, ct)
	if code != 200 || strings.Contains(body, "s3cr3t") {
		t.Errorf("a patch of the image: %d %.300s", code, body)
	}
}

// TestWatchMaskedFromTheSwap: a watch must not deliver, after a bundle
// that masks what it carries is in force, an event the new masks hide,
// however long the re-check takes to come round. Here the re-check is an
// hour away: the event after the swap is masked, or the watch ends.
func TestWatchMaskedFromTheSwap(t *testing.T) {
	const hidden = "hunter2-in-the-window"
	c := kubetest.Start(t)
	g := startClusterGatewayWith(t, c, secretReaderPolicy, Config{TLS: &tls.Config{}, RecheckEvery: time.Hour})
	for _, first := range []string{"", maskedSecretsHash} {
		if first != "" {
			g.apply(secretReaderPolicy + first)
		}
		req, _ := http.NewRequest("GET", g.gw.URL+"/k8s/prod/api/v1/namespaces/default/secrets?watch=1&resourceVersion=0", nil)
		req.Header.Set("Authorization", "Bearer "+g.iss.Token(t, "dev", "gatehouse"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 {
			t.Fatalf("the watch: %d", resp.StatusCode)
		}
		g.apply(secretReaderPolicy + maskedSecrets)
		name := "window" + strconv.Itoa(len(first))
		_, err = c.AdminClient().CoreV1().Secrets("default").Create(context.Background(), &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Data:       map[string][]byte{"password": []byte(hidden)},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		got := watchUntil(resp.Body, `"`+name+`"`)
		select {
		case s := <-got:
			if strings.Contains(s, base64.StdEncoding.EncodeToString([]byte(hidden))) {
				t.Errorf("a watch opened under masks %q showed a value the bundle in force masks: %.400s", first, s)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("the watch opened under masks %q neither ended nor delivered the event", first)
		}
		resp.Body.Close()
	}
}

// maskedSecretsHash masks the same field as maskedSecrets, another way.
const maskedSecretsHash = `
mask "secret-values" {
  resources = ["prod"]
  fields    = ["secrets/data"]
  method    = "null"
}
`

// TestPatchDirectivesReachMaskedFields: a strategic merge patch names a
// list's elements in directives beside the list ($deleteFromPrimitiveList/
// finalizers, $setElementOrder/finalizers): deleting a guessed value
// changes the object (a new resourceVersion) only when the hidden list
// holds it. Such a patch sets the masked field as surely as one that
// names it, and is refused.
func TestPatchDirectivesReachMaskedFields(t *testing.T) {
	const hidden = "example.com/s3cr3t-finalizer"
	c := kubetest.Start(t)
	ctx := context.Background()
	_, err := c.AdminClient().CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "cm", Finalizers: []string{hidden, "example.com/other"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = c.AdminClient().CoreV1().ConfigMaps("default").Patch(context.Background(), "cm", "application/merge-patch+json",
			[]byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
	})
	g := startClusterGateway(t, c, `
policy "all" {
  resources  = ["prod"]
  identities = ["dev"]
  rule "rw" {
    effect = "allow"
    when   = "request.resource == 'configmaps' && request.verb in ['get', 'patch']"
    reason = "read and patch"
  }
}
mask "finalizers" {
  resources = ["prod"]
  fields    = ["configmaps/metadata.finalizers"]
  method    = "redact"
}
`)
	ct := map[string]string{"Content-Type": "application/strategic-merge-patch+json"}
	for _, body := range []string{
		`{"metadata":{"$deleteFromPrimitiveList/finalizers":["` + hidden + `"]}}`,
		`{"metadata":{"$setElementOrder/finalizers":["` + hidden + `","example.com/other"]}}`,
	} {
		before, err := c.AdminClient().CoreV1().ConfigMaps("default").Get(ctx, "cm", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		code, resp := g.do("PATCH", "/api/v1/namespaces/default/configmaps/cm", body, ct)
		after, _ := c.AdminClient().CoreV1().ConfigMaps("default").Get(ctx, "cm", metav1.GetOptions{})
		if code != http.StatusForbidden || !strings.Contains(resp, "masks hide") {
			t.Errorf("%s: %d %.300s (resourceVersion %s, then %s)", body, code, resp, before.ResourceVersion, after.ResourceVersion)
		}
	}
}

// watchUntil reads a watch's lines until one holds marker or the stream
// ends, and then sends everything it read.
func watchUntil(body io.Reader, marker string) <-chan string {
	got := make(chan string, 1)
	go func() {
		var all strings.Builder
		br := bufio.NewReader(body)
		for {
			l, err := br.ReadString('\n')
			all.WriteString(l)
			if err != nil || strings.Contains(l, marker) {
				got <- all.String()
				return
			}
		}
	}()
	return got
}
