package kubecluster

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gatehouse-dev/gatehouse/internal/gotool"
)

// DefaultNode is the kwok node CreatePod puts pods on; CreatePod creates
// it when missing.
const DefaultNode = "kwok-node-0"

// PodLogLines are what `kubectl logs` prints for every kwok pod.
var PodLogLines = []string{
	"gatehouse kwok pod: container started",
	"gatehouse kwok pod: ready",
}

// kwokStages make nodes Ready and pods Running: kwok's "fast" stages.
//
//go:embed kwok-stages.yaml
var kwokStages string

// nobody is the user kwok runs exec'd commands as when it runs as root.
const nobody = 65534

// StartKwok runs kwok against the API server as AdminUser. kwok takes over
// every node (--manage-all-nodes): nodes become Ready and pods bound to
// them Running, without any container. It serves the kubelet API on
// 127.0.0.1 with a certificate from the cluster CA, so that the API server
// (which checks it) reaches it for exec and logs:
//
//   - `kubectl exec` runs the command on this host, in /, as nobody when
//     kwok runs as root (as the current user otherwise): keep it harmless,
//     such as echo or cat /etc/hostname.
//   - `kubectl logs` prints PodLogLines for every container.
//
// Start with WithKwok calls it; call it at most once.
func (c *Cluster) StartKwok(ctx context.Context) error {
	if c.kwokAddr != "" {
		return fmt.Errorf("kubecluster: kwok is already running on %s", c.kwokAddr)
	}
	if !gotool.IsExecutable(c.paths.Kwok) {
		return fmt.Errorf("kubecluster: kwok binary %q is missing; build it with `%s`", c.paths.Kwok, BuildCommand)
	}
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	dir := filepath.Join(c.Dir, "kwok")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("kubecluster: %w", err)
	}
	kubeconfig, err := c.KubeconfigFor(c.AdminToken)
	if err != nil {
		return err
	}
	logsFile := filepath.Join(dir, "container.log")
	if err := writeCRILog(logsFile, PodLogLines); err != nil {
		return fmt.Errorf("kubecluster: kwok pod log: %w", err)
	}
	conf := filepath.Join(dir, "kwok.yaml")
	if err := os.WriteFile(conf, []byte(kwokStages+"---\n"+kwokExecAndLogs(logsFile)), 0o600); err != nil {
		return fmt.Errorf("kubecluster: %w", err)
	}
	for attempt := 1; ; attempt++ {
		ports, err := freePorts(1)
		if err != nil {
			return err
		}
		port := strconv.Itoa(ports[0])
		p, err := c.run("kwok", c.paths.Kwok,
			"--config="+conf,
			"--kubeconfig="+kubeconfig,
			"--manage-all-nodes=true",
			"--node-ip=127.0.0.1",
			"--node-port="+port,
			"--server-address=127.0.0.1:"+port,
			"--tls-cert-file="+c.pki.serverCert,
			"--tls-private-key-file="+c.pki.serverKey,
		)
		if err != nil {
			return err
		}
		hc := c.httpClient()
		err = p.waitReady(ctx, func(ctx context.Context) bool {
			_, status, err := get(ctx, hc, "https://127.0.0.1:"+port+"/healthz", "")
			return err == nil && status == http.StatusOK
		})
		if err == nil {
			c.kwokAddr = "127.0.0.1:" + port
			return nil
		}
		if attempt < startAttempts && errors.Is(err, errPortTaken) {
			continue
		}
		return err
	}
}

// kwokExecAndLogs is the ClusterExec and ClusterLogs configuration for
// every pod and container.
func kwokExecAndLogs(logsFile string) string {
	security := ""
	if os.Geteuid() == 0 {
		if _, err := user.LookupId(strconv.Itoa(nobody)); err == nil {
			security = fmt.Sprintf("\n      securityContext:\n        runAsUser: %d\n        runAsGroup: %d", nobody, nobody)
		}
	}
	return fmt.Sprintf(`apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterExec
metadata:
  name: gatehouse-exec
spec:
  execs:
  - local:
      workDir: /
      envs:
      - name: HOME
        value: /
      - name: PATH
        value: /usr/local/bin:/usr/bin:/bin%s
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterLogs
metadata:
  name: gatehouse-logs
spec:
  logs:
  - logsFile: %q
`, security, logsFile)
}

// writeCRILog writes lines in the CRI log format kwok reads
// ("<RFC 3339 time> stdout F <line>").
func writeCRILog(path string, lines []string) error {
	var b strings.Builder
	now := time.Now().UTC()
	for i, l := range lines {
		fmt.Fprintf(&b, "%s stdout F %s\n", now.Add(time.Duration(i)*time.Millisecond).Format(time.RFC3339Nano), l)
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// CreateNamespace creates namespace name unless it exists.
func (c *Cluster) CreateNamespace(ctx context.Context, name string) error {
	_, err := c.admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("kubecluster: create namespace %s: %w", name, err)
	}
	return nil
}

// CreateNode creates a node for kwok unless it exists, and waits until it
// is Ready. It needs kwok (WithKwok or StartKwok).
func (c *Cluster) CreateNode(ctx context.Context, name string) (*corev1.Node, error) {
	if c.kwokAddr == "" {
		return nil, fmt.Errorf("kubecluster: node %s would never become Ready: start kwok first (WithKwok or StartKwok)", name)
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: name,
			Labels: map[string]string{
				"type":                   "kwok",
				"kubernetes.io/hostname": name,
				"kubernetes.io/os":       "linux",
				"kubernetes.io/arch":     "amd64",
			},
			Annotations: map[string]string{"kwok.x-k8s.io/node": "fake"},
		},
	}
	_, err := c.admin.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("kubecluster: create node %s: %w", name, err)
	}
	var last *corev1.Node
	err = poll(ctx, func() (bool, error) {
		n, err := c.admin.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		last = n
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return nil, fmt.Errorf("kubecluster: node %s not Ready (conditions %v): %w", name, nodeConditions(last), err)
	}
	return last, nil
}

// CreatePod creates namespace ns when missing, DefaultNode when missing,
// and a pod on it with one container named "app", and waits until kwok
// reports the pod Running and Ready. It needs kwok (WithKwok or StartKwok).
func (c *Cluster) CreatePod(ctx context.Context, ns, name string) (*corev1.Pod, error) {
	if _, err := c.CreateNode(ctx, DefaultNode); err != nil {
		return nil, err
	}
	if err := c.CreateNamespace(ctx, ns); err != nil {
		return nil, err
	}
	automount := false
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			NodeName:                     DefaultNode, // there is no scheduler
			AutomountServiceAccountToken: &automount,
			Containers: []corev1.Container{{
				Name:  "app",
				Image: "registry.invalid/gatehouse/kwok-pod:1", // never pulled
			}},
		},
	}
	if _, err := c.admin.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("kubecluster: create pod %s/%s: %w", ns, name, err)
	}
	var last *corev1.Pod
	err := poll(ctx, func() (bool, error) {
		p, err := c.admin.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		last = p
		if p.Status.Phase != corev1.PodRunning {
			return false, nil
		}
		for _, cond := range p.Status.Conditions {
			if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		phase := corev1.PodPhase("unknown")
		if last != nil {
			phase = last.Status.Phase
		}
		return nil, fmt.Errorf("kubecluster: pod %s/%s not Running (phase %s): %w", ns, name, phase, err)
	}
	return last, nil
}

// poll calls check every 50 ms until it reports true or an error, or for
// 30 s at most.
func poll(ctx context.Context, check func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, err := check()
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-tick.C:
		}
	}
}

func nodeConditions(n *corev1.Node) []string {
	if n == nil {
		return nil
	}
	var out []string
	for _, c := range n.Status.Conditions {
		out = append(out, string(c.Type)+"="+string(c.Status))
	}
	return out
}
