package devenv

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gatehouse-dev/gatehouse/gateway"
	"github.com/gatehouse-dev/gatehouse/internal/kubecluster"
)

// DefaultKubeListen is where the gateway serves the Kubernetes API when
// the port is free; otherwise a random loopback port is used.
const DefaultKubeListen = "127.0.0.1:8443"

// kubeIdleTimeout is the clusters' idle_timeout in the environment: a
// Kubernetes session is one token on one cluster, and the demo's end waits
// for every session to be sealed.
const kubeIdleTimeout = "3s"

// setUpClusters starts one real kube-apiserver (with etcd, and kwok for
// pods) for the policy's kubernetes_cluster resources, when its binaries
// are built: every cluster resource points at it, with a token only the
// gateway reads. Without the binaries the clusters are skipped, with how
// to build them (the build is long, so it is never started here).
func (e *Env) setUpClusters(ctx context.Context, root string, step func(string, ...any)) error {
	if len(e.Model.KubernetesClusters) == 0 {
		return nil
	}
	paths, ok, msg := kubecluster.Available(root)
	if !ok {
		for _, r := range e.Model.KubernetesClusters {
			e.Skipped = append(e.Skipped, fmt.Sprintf("kubernetes_cluster %q (%s)", r.Name, msg))
		}
		return nil
	}
	start := time.Now()
	dir := filepath.Join(e.Dir, "kube")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	c, err := kubecluster.Start(ctx, dir, paths, kubecluster.WithKwok())
	if err != nil {
		return fmt.Errorf("dev: Kubernetes: %w", err)
	}
	e.Kube = c
	tokenFile := filepath.Join(e.Dir, "secrets", "kube-token")
	if err := os.MkdirAll(filepath.Dir(tokenFile), 0o700); err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	if err := os.WriteFile(tokenFile, []byte(c.AdminToken), 0o600); err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	for i := range e.Model.KubernetesClusters {
		r := &e.Model.KubernetesClusters[i]
		r.Server, r.CAFile, r.Token, r.Kubeconfig = c.URL, c.CAFile, "file:"+tokenFile, ""
		r.IdleTimeout = kubeIdleTimeout
		e.KubeClusters = append(e.KubeClusters, r.Name)
	}
	if err := seedCluster(ctx, c); err != nil {
		return err
	}
	step("kubernetes_cluster %s: a throwaway kube-apiserver and etcd on %s, kwok for pods, reached with a token only the gateway reads (%s)",
		strings.Join(e.KubeClusters, ", "), c.URL, time.Since(start).Round(time.Millisecond))
	return nil
}

// demoSecret is the Secret the demo reads through the gateway.
const demoSecret = "s3cr3t-db-password"

// seedCluster makes what the demo shows: namespace web, a Running pod
// web-0, and a Secret with a value the masks hide.
func seedCluster(ctx context.Context, c *kubecluster.Cluster) error {
	if _, err := c.CreatePod(ctx, "web", "web-0"); err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	_, err := c.AdminClient().CoreV1().Secrets("web").Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "db-credentials"},
		Data:       map[string][]byte{"password": []byte(demoSecret)},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("dev: Kubernetes: %w", err)
	}
	return nil
}

// Kubeconfig writes a kubeconfig for cluster through the gateway, with
// gatehouse kubeconfig (self is this binary), whose token command reads
// tokenFile; it returns the file's path.
func (e *Env) Kubeconfig(self, cluster, name, tokenFile string) (string, error) {
	path := filepath.Join(e.Dir, "kube", name+".kubeconfig")
	certFile, _ := gateway.KubernetesTLSPaths(e.DataDir)
	cmd := exec.Command(self, "kubeconfig", "--resource", cluster, "--gateway", "https://"+e.Gateway.Addr("kubernetes"),
		"--ca", certFile, "--token-command", "cat "+tokenFile, "--out", path)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("dev: gatehouse kubeconfig: %w\n%s", err, out)
	}
	return path, nil
}

// KubeStep is one kubectl command of the demo and what must come of it.
type KubeStep struct {
	Says string
	// Caller is an identity of the policy, or "subject:SUBJECT" with
	// Groups for a caller no identity names.
	Caller string
	Groups []string
	Args   []string
	// Denied is a substring kubectl must print for a refusal; empty means
	// the command must succeed, printing every Want and no Never.
	Denied      string
	Want, Never []string
}

// QuickstartKube is the Kubernetes part of the demo on the embedded
// quickstart.
var QuickstartKube = []KubeStep{
	{Says: "The analytics job reads workloads: cluster-readers allows get, list and watch.",
		Caller: "analytics-job", Args: []string{"get", "pods", "-n", "web"}, Want: []string{"web-0", "Running"}},
	{Says: "It never reads Secrets: denied by rule, and kubectl prints the rule and its reason.",
		Caller: "analytics-job", Args: []string{"get", "secrets", "-n", "web"}, Denied: "cluster-readers/no-secrets"},
	{Says: "An operator (group dba) reads the Secret, and its values come back masked.",
		Caller: "subject:ops-alice", Groups: []string{"dba"}, Args: []string{"get", "secret", "db-credentials", "-n", "web", "-o", "jsonpath={.data.password}"},
		Want: []string{base64.StdEncoding.EncodeToString([]byte("[REDACTED]"))}, Never: []string{demoSecret, base64.StdEncoding.EncodeToString([]byte(demoSecret))}},
	{Says: "The operator runs a command in the pod: allowed, recorded before it runs, its output recorded too.",
		Caller: "subject:ops-alice", Groups: []string{"dba"}, Args: []string{"exec", "-n", "web", "web-0", "--", "echo", "hello from web-0"},
		Want: []string{"hello from web-0"}},
}

// RunKubeScript runs the Kubernetes demo with the real kubectl through the
// gateway. It needs the cluster (setUpClusters) and kubectl.
func (e *Env) RunKubeScript(ctx context.Context, self string, steps []KubeStep, w io.Writer, color bool) error {
	paint := func(code, s string) string { return Paint(color, code, s) }
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		return fmt.Errorf("dev: kubectl is needed for the Kubernetes demo: %w (https://kubernetes.io/docs/tasks/tools/)", err)
	}
	cluster := e.KubeClusters[0]
	var problems []string
	for _, st := range steps {
		tokenFile, err := e.kubeCallerToken(st)
		if err != nil {
			return err
		}
		name := strings.NewReplacer(":", "-").Replace(st.Caller)
		kubeconfig, err := e.Kubeconfig(self, cluster, name, tokenFile)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "\n   %s\n   $ KUBECONFIG=%s kubectl %s\n", paint("2", "# "+st.Says), kubeconfig, strings.Join(quoteArgs(st.Args), " "))
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		cmd := exec.CommandContext(cctx, kubectl, append([]string{"--kubeconfig", kubeconfig}, st.Args...)...)
		cmd.Env = append(os.Environ(), "HOME="+filepath.Join(e.Dir, "kube"))
		out, runErr := cmd.CombinedOutput()
		cancel()
		text := strings.TrimRight(string(out), "\n")
		for _, line := range strings.Split(text, "\n") {
			fmt.Fprintf(w, "   %s\n", line)
		}
		problem := ""
		switch {
		case st.Denied != "" && runErr == nil:
			problem = "the command was not denied"
		case st.Denied != "" && !strings.Contains(text, st.Denied):
			problem = fmt.Sprintf("the refusal does not name %q", st.Denied)
		case st.Denied == "" && runErr != nil:
			problem = "the command failed: " + runErr.Error()
		}
		for _, s := range st.Want {
			if problem == "" && !strings.Contains(text, s) {
				problem = fmt.Sprintf("the output lacks %q", s)
			}
		}
		for _, s := range st.Never {
			if strings.Contains(text, s) {
				problem = fmt.Sprintf("the output shows %q, which must be masked", s)
			}
		}
		if problem != "" {
			fmt.Fprintf(w, "   %s\n", paint("31", "!! not what the demo expects: "+problem))
			problems = append(problems, fmt.Sprintf("kubectl %s: %s", strings.Join(st.Args, " "), problem))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("the Kubernetes demo did not go as scripted:\n%s", strings.Join(problems, "\n"))
	}
	return nil
}

// kubeCallerToken is the token file of a step's caller: an identity's
// minted token, or one minted for an ad-hoc subject and groups.
func (e *Env) kubeCallerToken(st KubeStep) (string, error) {
	subject, adHoc := strings.CutPrefix(st.Caller, "subject:")
	if !adHoc {
		c, ok := e.Caller(st.Caller)
		if !ok {
			return "", fmt.Errorf("dev: the Kubernetes demo's caller %q has no token", st.Caller)
		}
		return c.TokenFile, nil
	}
	if len(e.Model.IdentityProviders) == 0 {
		return "", fmt.Errorf("dev: no identity provider to mint a token for %s", subject)
	}
	p := e.Model.IdentityProviders[0]
	claim := p.GroupsClaim
	if claim == "" {
		claim = "groups"
	}
	file := filepath.Join(e.Dir, "tokens", "kube-"+subject)
	if _, err := os.Stat(file); err == nil {
		return file, nil
	}
	tok, err := e.Issuer.Mint(p.Name, subject, map[string]any{claim: st.Groups}, TokenTTL)
	if err != nil {
		return "", fmt.Errorf("dev: token for %s: %w", subject, err)
	}
	return file, os.WriteFile(file, []byte(tok), 0o600)
}
