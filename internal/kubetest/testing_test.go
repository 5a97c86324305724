package kubetest_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gatehouse-dev/gatehouse/internal/kubecluster"
	"github.com/gatehouse-dev/gatehouse/internal/kubetest"
)

// TestCluster proves the cluster is a real one end to end: kubectl against
// kube-apiserver, exec and logs through it to kwok, RBAC for a static token
// and impersonation by the admin.
func TestCluster(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatalf("kubectl is needed on PATH (Debian: /usr/bin/kubectl): %v", err)
	}
	kubetest.Binaries(t) // not timed below

	start := time.Now()
	c, pod := kubetest.StartWithPod(t, "demo", "web-0",
		kubecluster.WithToken("alice", "alice-token", "developers"))
	t.Logf("cluster, kwok and a Running pod in %s", time.Since(start).Round(time.Millisecond))
	if pod.Spec.NodeName != kubecluster.DefaultNode || pod.Status.PodIP == "" {
		t.Errorf("pod on node %q with IP %q, want node %q and an IP", pod.Spec.NodeName, pod.Status.PodIP, kubecluster.DefaultNode)
	}
	if !strings.HasPrefix(c.URL, "https://127.0.0.1:") {
		t.Errorf("URL = %q", c.URL)
	}

	ctx := context.Background()
	admin := c.AdminClient()
	if _, err := admin.CoreV1().Secrets("demo").Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "db-password"},
		StringData: map[string]string{"password": "s3cret"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// alice may read pods in demo, and nothing else.
	if _, err := admin.RbacV1().Roles("demo").Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RbacV1().RoleBindings("demo").Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "alice-pod-reader"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "pod-reader"},
		Subjects:   []rbacv1.Subject{{Kind: "User", APIGroup: "rbac.authorization.k8s.io", Name: "alice"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	home := t.TempDir() // kubectl's discovery cache
	adminKC := kubetest.Kubeconfig(t, c, c.AdminToken)
	aliceKC := kubetest.Kubeconfig(t, c, "alice-token")
	run := func(kubeconfig string, args ...string) (string, string, error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		// timeout(1) as well: kubectl exec can hang on its streams.
		cmd := exec.CommandContext(ctx, "timeout", append([]string{"20", kubectl, "--kubeconfig", kubeconfig}, args...)...)
		cmd.Env = append(os.Environ(), "HOME="+home)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		return stdout.String(), stderr.String(), err
	}
	must := func(kubeconfig string, args ...string) string {
		t.Helper()
		out, errOut, err := run(kubeconfig, args...)
		if err != nil {
			t.Fatalf("kubectl %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
		}
		return out
	}

	step := time.Now()
	if out := must(adminKC, "get", "pods", "-n", "demo"); !strings.Contains(out, "web-0") || !strings.Contains(out, "Running") {
		t.Errorf("kubectl get pods: want web-0 Running, got:\n%s", out)
	}
	if out := must(adminKC, "exec", "-n", "demo", "web-0", "--", "echo", "hello"); strings.TrimSpace(out) != "hello" {
		t.Errorf("kubectl exec echo hello: got %q", out)
	}
	if out := must(adminKC, "logs", "-n", "demo", "web-0"); !strings.Contains(out, kubecluster.PodLogLines[0]) {
		t.Errorf("kubectl logs: want %q, got:\n%s", kubecluster.PodLogLines[0], out)
	}
	t.Logf("kubectl get, exec and logs in %s", time.Since(step).Round(time.Millisecond))

	// alice's own token: pods yes, secrets no.
	if out := must(aliceKC, "get", "pods", "-n", "demo", "-o", "name"); strings.TrimSpace(out) != "pod/web-0" {
		t.Errorf("alice: kubectl get pods: got %q", out)
	}
	out, errOut, err := run(aliceKC, "get", "secrets", "-n", "demo")
	if err == nil || !strings.Contains(errOut, `User "alice" cannot list resource "secrets"`) {
		t.Errorf("alice: kubectl get secrets: want forbidden by RBAC, got err %v\nstdout: %s\nstderr: %s", err, out, errOut)
	}

	// The admin impersonating alice gets alice's rights; as herself she
	// may not impersonate.
	if out := must(adminKC, "auth", "whoami", "--as", "alice", "--as-group", "developers", "-o", "jsonpath={.status.userInfo.username}"); out != "alice" {
		t.Errorf("kubectl auth whoami --as alice: got %q", out)
	}
	if out := must(adminKC, "get", "pods", "-n", "demo", "--as", "alice", "-o", "name"); strings.TrimSpace(out) != "pod/web-0" {
		t.Errorf("admin as alice: kubectl get pods: got %q", out)
	}
	out, errOut, err = run(adminKC, "get", "secrets", "-n", "demo", "--as", "alice")
	if err == nil || !strings.Contains(errOut, `User "alice" cannot list resource "secrets"`) {
		t.Errorf("admin as alice: kubectl get secrets: want forbidden, got err %v\nstdout: %s\nstderr: %s", err, out, errOut)
	}
	if out := must(adminKC, "get", "secret", "db-password", "-n", "demo", "-o", "jsonpath={.data.password}"); out != "czNjcmV0" {
		t.Errorf("admin: secret data = %q", out)
	}
	out, errOut, err = run(aliceKC, "get", "pods", "-n", "demo", "--as", "bob")
	if err == nil || !strings.Contains(errOut, "cannot impersonate") {
		t.Errorf("alice as bob: want forbidden impersonation, got err %v\nstdout: %s\nstderr: %s", err, out, errOut)
	}
}

// TestStartStop measures a bare cluster (etcd and kube-apiserver) and
// checks Close leaves nothing running.
func TestStartStop(t *testing.T) {
	paths := kubetest.Binaries(t)
	start := time.Now()
	c, err := kubecluster.Start(context.Background(), t.TempDir(), paths)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("etcd and kube-apiserver ready in %s", time.Since(start).Round(time.Millisecond))
	v, err := c.AdminClient().Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(v.GitVersion, "v1.") || v.GitVersion == "v0.0.0" {
		t.Errorf("server version %q", v.GitVersion)
	}
	stop := time.Now()
	if err := c.Close(); err != nil {
		t.Error(err)
	}
	t.Logf("stopped in %s (server %s)", time.Since(stop).Round(time.Millisecond), v.GitVersion)
	if _, err := c.AdminClient().Discovery().ServerVersion(); err == nil {
		t.Error("API server still answers after Close")
	}
}
