package acctest

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gatehouse-dev/gatehouse/gateway/approval"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/internal/hydratest"
	"github.com/gatehouse-dev/gatehouse/internal/kubecluster"
	"github.com/gatehouse-dev/gatehouse/internal/kubetest"
)

// The Kubernetes gateway end to end: the gatehouse binary serving the
// Kubernetes API only, a real kube-apiserver and etcd (with kwok's pods,
// so that exec really runs), ORY Hydra's tokens, and the real kubectl.

func kubePolicy(issuer string, c *kubecluster.Cluster) string {
	return fmt.Sprintf(`
identity_provider "hydra" {
  issuer    = %[1]q
  audiences = ["gatehouse"]
}

identity "reader" {
  provider = "hydra"
  subject  = "reader"
  groups   = ["readers"]
}

identity "operator" {
  provider = "hydra"
  subject  = "operator"
  groups   = ["operators"]
}

identity "approver" {
  provider = "hydra"
  subject  = "approver"
  groups   = ["sre"]
}

kubernetes_cluster "test" {
  server  = %[2]q
  token   = "env:KUBE_GATEWAY_TOKEN"
  ca_file = %[3]q
}

kubernetes_cluster "test-rbac" {
  server      = %[2]q
  token       = "env:KUBE_GATEWAY_TOKEN"
  ca_file     = %[3]q
  impersonate = true
}

policy "everyone" {
  resources = ["test", "test-rbac"]
  everyone  = true

  rule "discovery" {
    effect = "allow"
    when   = "(request.path in ['/api', '/apis', '/version'] || request.path.startsWith('/api/') || request.path.startsWith('/apis/') || request.path.startsWith('/openapi/')) || request.resource == 'selfsubjectreviews'"
    reason = "API discovery, and asking who one is"
  }
}

policy "readers" {
  resources  = ["test", "test-rbac"]
  identities = ["reader"]

  rule "read" {
    effect = "allow"
    when   = "request.verb in ['get', 'list', 'watch'] && request.subresource == ''"
    reason = "readers may read"
  }

  rule "no-writes" {
    effect = "deny"
    when   = "request.verb in ['create', 'update', 'patch', 'delete', 'deletecollection'] && request.resource != 'selfsubjectreviews'"
    reason = "readers never change the cluster"
  }

  rule "no-exec" {
    effect = "deny"
    when   = "request.subresource in ['exec', 'attach', 'portforward']"
    reason = "readers do not run commands in pods"
  }
}

policy "operators" {
  resources  = ["test", "test-rbac"]
  identities = ["operator"]

  rule "all" {
    effect = "allow"
    reason = "operators run the cluster"
  }

  rule "prod-deletes" {
    effect = "review"
    when   = "request.verb == 'delete' && request.namespace == 'prod'"
    reason = "deleting in prod needs a second pair of eyes"
    approval {
      groups  = ["sre"]
      timeout = "2m"
    }
  }
}

mask "secret-values" {
  resources = ["test", "test-rbac"]
  fields    = ["secrets/data", "secrets/stringData"]
  method    = "redact"
  unless    = "'operators' in identity.groups"
}
`, issuer, c.URL, c.CAFile)
}

type kubeStack struct {
	dir, dataDir, adminAddr, kubeAddr string
	hydra                             *hydratest.Hydra
	cluster                           *kubecluster.Cluster
	policies, bundleFile, keyFile     string
	logs                              *lockedBuffer
}

func startKubeStack(t *testing.T) *kubeStack {
	t.Helper()
	if _, err := exec.LookPath("kubectl"); err != nil {
		t.Fatalf("kubectl is required (/usr/bin/kubectl): %v", err)
	}
	s := &kubeStack{dir: t.TempDir(), logs: &lockedBuffer{}}
	s.cluster = kubetest.Start(t, kubecluster.WithKwok())
	s.hydra = hydratest.Start(t)
	for _, id := range []string{"reader", "operator", "approver"} {
		s.hydra.CreateClient(t, id, id+"-secret", []string{"gatehouse"})
	}
	s.policies = filepath.Join(s.dir, "policies")
	if err := os.MkdirAll(s.policies, 0o755); err != nil {
		t.Fatal(err)
	}
	gh(t, "keygen", "--out", filepath.Join(s.dir, "keys"))
	s.keyFile = filepath.Join(s.dir, "keys", "gatehouse.key")
	s.bundleFile = filepath.Join(s.dir, "policy.bundle")
	s.publish(t, kubePolicy(s.hydra.Issuer(), s.cluster))
	s.dataDir = filepath.Join(s.dir, "data")
	s.adminAddr, s.kubeAddr = freePort(t), freePort(t)
	cfg := fmt.Sprintf(`data_dir = %q

kubernetes {
  listen = %q
}

bundle {
  file          = %q
  trusted_keys  = [%q]
  poll_interval = "1s"
}

admin {
  listen = %q
}

log {
  level = "debug"
}
`, s.dataDir, s.kubeAddr, s.bundleFile, filepath.Join(s.dir, "keys", "gatehouse.pub"), s.adminAddr)
	cfgFile := filepath.Join(s.dir, "gateway.hcl")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	gw := exec.Command(gatehouseBin, "gateway", "--config", cfgFile)
	gw.Env = append(os.Environ(), "KUBE_GATEWAY_TOKEN="+s.cluster.AdminToken)
	check := exec.Command(gatehouseBin, "gateway", "--config", cfgFile, "--check")
	check.Env = gw.Env
	if out, err := check.CombinedOutput(); err != nil || !strings.Contains(string(out), `kubernetes_cluster "test": token (env:KUBE_GATEWAY_TOKEN)`) {
		t.Fatalf("gateway --check: %v\n%s", err, out)
	}
	gw.Stdout, gw.Stderr = s.logs, s.logs
	if err := gw.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- gw.Wait() }()
	t.Cleanup(func() {
		_ = gw.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = gw.Process.Kill()
			t.Error("gateway did not stop on SIGTERM")
		}
		if t.Failed() {
			t.Logf("gateway log:\n%s", s.logs.String())
		}
	})
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get("http://" + s.adminAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway not ready: %v\n%s", err, s.logs.String())
		}
	}
	return s
}

func (s *kubeStack) publish(t *testing.T, src string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(s.policies, "policy.hcl"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	tmp := s.bundleFile + ".new"
	gh(t, "bundle", "build", s.policies, "--key", s.keyFile, "--out", tmp, "--revision", fmt.Sprint(time.Now().UnixNano()/1000))
	if err := os.Rename(tmp, s.bundleFile); err != nil {
		t.Fatal(err)
	}
}

// kubeconfig writes, with gatehouse kubeconfig, the kubeconfig of who on
// cluster: kubectl gets who's Hydra token from the exec plugin.
func (s *kubeStack) kubeconfig(t *testing.T, who, cluster string) string {
	t.Helper()
	tokenFile := filepath.Join(s.dir, who+".token")
	if _, err := os.Stat(tokenFile); err != nil {
		if err := os.WriteFile(tokenFile, []byte(s.hydra.Token(t, who, who+"-secret", []string{"gatehouse"})), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(s.dir, who+"-"+cluster+".kubeconfig")
	gh(t, "kubeconfig", "--resource", cluster, "--gateway", "https://"+s.kubeAddr,
		"--ca", filepath.Join(s.dataDir, "kubernetes-tls.crt"), "--token-command", "cat "+tokenFile, "--out", path)
	return path
}

// kubectl runs kubectl as who against cluster through the gateway.
func (s *kubeStack) kubectl(t *testing.T, who, cluster string, args ...string) (string, string, int) {
	t.Helper()
	all := append([]string{"--kubeconfig", s.kubeconfig(t, who, cluster), "--request-timeout=60s"}, args...)
	cmd := exec.Command("kubectl", all...)
	cmd.Env = append(os.Environ(), "HOME="+s.dir)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

func (s *kubeStack) mustKubectl(t *testing.T, who, cluster string, args ...string) string {
	t.Helper()
	out, stderr, code := s.kubectl(t, who, cluster, args...)
	if code != 0 {
		t.Fatalf("kubectl %v as %s: exit %d\n%s%s", args, who, code, out, stderr)
	}
	return out
}

func TestKubernetesGateway(t *testing.T) {
	s := startKubeStack(t)
	ctx := context.Background()
	admin := s.cluster.AdminClient()
	for _, ns := range []string{"apps", "prod"} {
		if err := s.cluster.CreateNamespace(ctx, ns); err != nil {
			t.Fatal(err)
		}
	}
	const secretValue = "hunter2-very-secret"
	if _, err := admin.CoreV1().Secrets("apps").Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "db-password", Annotations: map[string]string{
			// What kubectl apply leaves behind: the whole object, values
			// and all.
			"kubectl.kubernetes.io/last-applied-configuration": fmt.Sprintf(`{"apiVersion":"v1","kind":"Secret","data":{"password":%q},"metadata":{"name":"db-password","namespace":"apps"}}`, base64.StdEncoding.EncodeToString([]byte(secretValue))),
		}},
		Data: map[string][]byte{"password": []byte(secretValue)},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	encoded := base64.StdEncoding.EncodeToString([]byte(secretValue))
	leaks := func(s string) bool { return strings.Contains(s, secretValue) || strings.Contains(s, encoded) }

	t.Run("get, list, create and delete are decided per rule", func(t *testing.T) {
		s.mustKubectl(t, "reader", "test", "get", "namespaces")
		out := s.mustKubectl(t, "reader", "test", "get", "configmaps", "-n", "apps", "-o", "name")
		if !strings.Contains(out, "configmap/kube-root-ca.crt") && out != "" {
			t.Fatalf("list: %q", out)
		}
		_, stderr, code := s.kubectl(t, "reader", "test", "create", "configmap", "nope", "-n", "apps", "--from-literal=a=b")
		if code == 0 || !strings.Contains(stderr, "readers never change the cluster") || !strings.Contains(stderr, "readers/no-writes") {
			t.Fatalf("a reader's create: exit %d, %s", code, stderr)
		}
		s.mustKubectl(t, "operator", "test", "create", "configmap", "made-by-operator", "-n", "apps", "--from-literal=a=b")
		out = s.mustKubectl(t, "reader", "test", "get", "configmap", "made-by-operator", "-n", "apps", "-o", "jsonpath={.data.a}")
		if out != "b" {
			t.Fatalf("get: %q", out)
		}
		_, stderr, code = s.kubectl(t, "reader", "test", "delete", "configmap", "made-by-operator", "-n", "apps")
		if code == 0 || !strings.Contains(stderr, "readers never change the cluster") {
			t.Fatalf("a reader's delete: exit %d, %s", code, stderr)
		}
		s.mustKubectl(t, "operator", "test", "delete", "configmap", "made-by-operator", "-n", "apps")
	})

	t.Run("secrets are masked for the reader and clear for the operator", func(t *testing.T) {
		out := s.mustKubectl(t, "reader", "test", "get", "secret", "db-password", "-n", "apps", "-o", "json")
		if leaks(out) || !strings.Contains(out, base64.StdEncoding.EncodeToString([]byte("[REDACTED]"))) {
			t.Fatalf("get as reader: %s", out)
		}
		out = s.mustKubectl(t, "reader", "test", "get", "secrets", "-n", "apps", "-o", "yaml")
		if leaks(out) || !strings.Contains(out, "db-password") {
			t.Fatalf("list as reader: %s", out)
		}
		out = s.mustKubectl(t, "reader", "test", "get", "secrets", "-A", "--show-labels")
		if leaks(out) || !strings.Contains(out, "db-password") {
			t.Fatalf("table as reader: %s", out)
		}
		out = s.mustKubectl(t, "operator", "test", "get", "secret", "db-password", "-n", "apps", "-o", "jsonpath={.data.password}")
		if out != encoded {
			t.Fatalf("get as operator: %q", out)
		}
	})

	t.Run("a watch on secrets is masked event by event", func(t *testing.T) {
		cmd := exec.Command("kubectl", "--kubeconfig", s.kubeconfig(t, "reader", "test"), "get", "secrets", "-n", "apps",
			"--watch", "--output-watch-events", "-o", "json")
		cmd.Env = append(os.Environ(), "HOME="+s.dir)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
		lines := make(chan string, 1000)
		go func() {
			sc := bufio.NewScanner(stdout)
			sc.Buffer(make([]byte, 1<<20), 1<<20)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		time.Sleep(time.Second)
		const later = "watched-later-value"
		if _, err := admin.CoreV1().Secrets("apps").Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "watched"}, StringData: map[string]string{"token": later},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		var seen strings.Builder
		deadline := time.After(30 * time.Second)
		for !strings.Contains(seen.String(), `"name":"watched"`) && !strings.Contains(seen.String(), `"name": "watched"`) {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("the watch ended: %s\n%s", seen.String(), stderr.String())
				}
				seen.WriteString(l + "\n")
			case <-deadline:
				t.Fatalf("no event for the new secret: %s\n%s", seen.String(), stderr.String())
			}
		}
		// Let the rest of the event arrive.
		time.Sleep(500 * time.Millisecond)
		for len(lines) > 0 {
			seen.WriteString(<-lines + "\n")
		}
		if leaks(seen.String()) || strings.Contains(seen.String(), later) || strings.Contains(seen.String(), base64.StdEncoding.EncodeToString([]byte(later))) {
			t.Fatalf("the watch leaked a value:\n%s", seen.String())
		}
	})

	t.Run("exec is allowed and recorded for the operator, denied for the reader", func(t *testing.T) {
		if _, err := s.cluster.CreatePod(ctx, "apps", "web-0"); err != nil {
			t.Fatal(err)
		}
		out, stderr, code := s.kubectl(t, "operator", "test", "exec", "-n", "apps", "web-0", "--", "echo", "hello-through-gatehouse")
		if code != 0 || !strings.Contains(out, "hello-through-gatehouse") {
			t.Fatalf("operator exec: exit %d %q %s", code, out, stderr)
		}
		_, stderr, code = s.kubectl(t, "reader", "test", "exec", "-n", "apps", "web-0", "--", "echo", "nope")
		if code == 0 || !strings.Contains(stderr, "readers do not run commands in pods") {
			t.Fatalf("reader exec: exit %d %s", code, stderr)
		}
		// The recording has the command, durable before it ran, and its
		// output; replay shows it.
		id := s.waitRecording(t, "operator", "echo")
		// The session is still open (its recording not sealed yet):
		// replay plays what is there and says so.
		replay, _ := exec.Command(gatehouseBin, "replay", filepath.Join(s.dataDir, "recordings", id+".jsonl"),
			"--format", "terminal", "--speed", "1000").CombinedOutput()
		if !strings.Contains(string(replay), "hello-through-gatehouse") {
			t.Fatalf("replay: %s", replay)
		}
		timeline, _ := exec.Command(gatehouseBin, "replay", filepath.Join(s.dataDir, "recordings", id+".jsonl"),
			"--format", "timeline").CombinedOutput()
		if !strings.Contains(string(timeline), "command=echo") {
			t.Fatalf("timeline: %s", timeline)
		}
	})

	t.Run("impersonation: cluster RBAC applies, forged identity headers do not", func(t *testing.T) {
		who := func(cluster string, forged map[string]string) string {
			token := s.hydra.Token(t, "reader", "reader-secret", []string{"gatehouse"})
			body := `{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`
			req, _ := http.NewRequest(http.MethodPost, "https://"+s.kubeAddr+"/k8s/"+cluster+"/apis/authentication.k8s.io/v1/selfsubjectreviews", strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+token)
			req.Header.Set("Content-Type", "application/json")
			for k, v := range forged {
				req.Header.Add(k, v)
			}
			resp, err := s.httpClient(t).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusCreated {
				t.Fatalf("selfsubjectreview on %s: %d %s", cluster, resp.StatusCode, b)
			}
			var r struct {
				Status struct {
					UserInfo struct {
						Username string   `json:"username"`
						Groups   []string `json:"groups"`
					} `json:"userInfo"`
				} `json:"status"`
			}
			if err := json.Unmarshal(b, &r); err != nil {
				t.Fatal(err)
			}
			return r.Status.UserInfo.Username + " " + strings.Join(r.Status.UserInfo.Groups, ",")
		}
		forged := map[string]string{"Impersonate-User": "system:admin", "Impersonate-Group": "system:masters",
			"X-Remote-User": "system:admin", "X-Remote-Group": "system:masters"}
		if got := who("test-rbac", forged); !strings.HasPrefix(got, "reader ") || !strings.Contains(got, "readers") || strings.Contains(got, "system:masters") {
			t.Fatalf("impersonated as %q", got)
		}
		if got := who("test", forged); !strings.HasPrefix(got, kubecluster.AdminUser+" ") {
			t.Fatalf("without impersonation the gateway's own identity is used, not a forged one: %q", got)
		}
		// The policy lets readers list pods; on the impersonating cluster
		// RBAC must too.
		_, stderr, code := s.kubectl(t, "reader", "test-rbac", "get", "pods", "-n", "apps")
		if code == 0 || !strings.Contains(stderr, "forbidden") || !strings.Contains(stderr, `User "reader"`) {
			t.Fatalf("RBAC did not apply: exit %d %s", code, stderr)
		}
		// (Not the view ClusterRole: its rules are aggregated by the
		// controller manager, which this cluster does not run.)
		s.mustKubectl(t, "operator", "test", "create", "role", "pod-reader", "-n", "apps", "--verb=get,list,watch", "--resource=pods")
		s.mustKubectl(t, "operator", "test", "create", "rolebinding", "reader-pods", "-n", "apps", "--role=pod-reader", "--user=reader")
		// The API server's RBAC cache takes a moment to see the binding.
		for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			_, stderr, code := s.kubectl(t, "reader", "test-rbac", "get", "pods", "-n", "apps")
			if code == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("RBAC never allowed the bound reader: %s", stderr)
			}
		}
	})

	t.Run("a delete in prod is held until approved", func(t *testing.T) {
		s.mustKubectl(t, "operator", "test", "create", "configmap", "doomed", "-n", "prod", "--from-literal=a=b")
		type result struct {
			out, stderr string
			code        int
		}
		done := make(chan result, 1)
		go func() {
			out, stderr, code := s.kubectl(t, "operator", "test", "delete", "configmap", "doomed", "-n", "prod")
			done <- result{out, stderr, code}
		}()
		id := s.waitPending(t, "doomed")
		select {
		case r := <-done:
			t.Fatalf("the delete was not held: %+v", r)
		case <-time.After(500 * time.Millisecond):
		}
		if _, err := admin.CoreV1().ConfigMaps("prod").Get(ctx, "doomed", metav1.GetOptions{}); err != nil {
			t.Fatalf("deleted before approval: %v", err)
		}
		s.approvals(t, "approver", "approve", id, "--comment", "ok")
		select {
		case r := <-done:
			if r.code != 0 || !strings.Contains(r.out, "deleted") {
				t.Fatalf("after approval: %+v", r)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the held delete did not finish after approval")
		}
		if _, err := admin.CoreV1().ConfigMaps("prod").Get(ctx, "doomed", metav1.GetOptions{}); err == nil {
			t.Fatal("the approved delete did not happen")
		}
	})

	// Last: it changes the policy.
	t.Run("a running watch is cut when a new bundle no longer allows it", func(t *testing.T) {
		cmd := exec.Command("kubectl", "--kubeconfig", s.kubeconfig(t, "reader", "test"), "get", "configmaps", "-n", "apps", "--watch")
		cmd.Env = append(os.Environ(), "HOME="+s.dir)
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		time.Sleep(2 * time.Second)
		select {
		case err := <-exited:
			t.Fatalf("the watch ended before the bundle changed: %v\n%s", err, out.String())
		default:
		}
		s.publish(t, strings.Replace(kubePolicy(s.hydra.Issuer(), s.cluster), "request.verb in ['get', 'list', 'watch'] &&", "request.verb in ['get', 'list'] &&", 1))
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			t.Fatalf("the watch still runs under a bundle that denies it:\n%s", out.String())
		}
		_, stderr, code := s.kubectl(t, "reader", "test", "get", "configmaps", "-n", "apps", "--watch", "--request-timeout=5s")
		if code == 0 || !strings.Contains(stderr, "deny by default") {
			t.Fatalf("a new watch: exit %d %s", code, stderr)
		}
	})
}

// httpClient trusts the gateway listener's self-signed certificate.
func (s *kubeStack) httpClient(t *testing.T) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(filepath.Join(s.dataDir, "kubernetes-tls.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("the listener certificate does not parse")
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// approvals runs gatehouse approvals as who.
func (s *kubeStack) approvals(t *testing.T, who string, args ...string) string {
	t.Helper()
	cmd := exec.Command(gatehouseBin, append([]string{"approvals"}, args...)...)
	cmd.Env = append(os.Environ(), "GATEHOUSE_ADDR="+s.adminAddr,
		"GATEHOUSE_TOKEN="+s.hydra.Token(t, who, who+"-secret", []string{"gatehouse"}))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("approvals %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// waitPending waits for a pending approval whose request mentions text.
func (s *kubeStack) waitPending(t *testing.T, text string) string {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		var l struct {
			Approvals []approval.Request `json:"approvals"`
		}
		if err := json.Unmarshal([]byte(s.approvals(t, "approver", "list", "--format", "json")), &l); err != nil {
			t.Fatal(err)
		}
		for _, r := range l.Approvals {
			if strings.Contains(r.Subject.Text, text) {
				return r.ID
			}
		}
	}
	t.Fatalf("no pending approval for %q", text)
	return ""
}

// waitRecording finds the recording of identity's session with a request
// whose text contains text, once the request's outcome is in it.
func (s *kubeStack) waitRecording(t *testing.T, identity, text string) string {
	t.Helper()
	dir := filepath.Join(s.dataDir, "recordings")
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		files, _ := filepath.Glob(filepath.Join(dir, "*.jsonl"))
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			var who string
			found, output := false, false
			for _, line := range strings.Split(string(b), "\n") {
				var ev recorder.Event
				if json.Unmarshal([]byte(line), &ev) != nil {
					continue
				}
				switch ev.Type {
				case recorder.TypeStart:
					who = ev.Identity
				case recorder.TypeRequest:
					found = found || strings.Contains(ev.Text, text)
				case recorder.TypeOutput:
					output = true
				}
			}
			if who == identity && found && output {
				return strings.TrimSuffix(filepath.Base(f), ".jsonl")
			}
		}
	}
	t.Fatalf("no recording of %s with %q and output", identity, text)
	return ""
}
