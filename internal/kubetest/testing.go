// Package kubetest starts a real Kubernetes API server for tests
// (internal/kubecluster runs it: etcd, kube-apiserver and optionally kwok on
// random ports of 127.0.0.1):
//
//	c := kubetest.Start(t, kubecluster.WithToken("alice", "alice-token", "developers"))
//	kubeconfig := kubetest.Kubeconfig(t, c, c.AdminToken)
//	// c.URL, c.CAFile, c.CAPEM, c.AdminToken, c.AdminClient()
//
// For `kubectl exec` and `kubectl logs`, a test needs kwok and a Running pod:
//
//	c, pod := kubetest.StartWithPod(t, "demo", "web-0")
//
// or, step by step, kubetest.Start(t, kubecluster.WithKwok()) and then
// c.CreatePod(ctx, "demo", "web-0"), which creates the namespace and the
// kwok node when missing. More pods: c.CreatePod again; more nodes:
// c.CreateNode.
//
// The binaries are built on first use into .cache/bin/ at the repository
// root (about 10 minutes on a cold Go cache, once; progress goes to
// stderr); `go run ./internal/kubecluster/kubebuild` builds them ahead of
// time. Later runs start a cluster in about 3 seconds. The test fails, with
// the reason, when a binary cannot be built or the cluster does not start.
// The cluster stops when the test ends.
package kubetest

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/gatehouse-dev/gatehouse/internal/gotool"
	"github.com/gatehouse-dev/gatehouse/internal/kubecluster"
)

var (
	binariesMu sync.Mutex
	binaries   *kubecluster.Paths
)

// Binaries returns the paths of kube-apiserver, etcd and kwok, building the
// missing ones first (kubecluster.Binaries). It fails the test if they
// cannot be built.
func Binaries(tb testing.TB) kubecluster.Paths {
	tb.Helper()
	binariesMu.Lock()
	defer binariesMu.Unlock()
	if binaries != nil {
		return *binaries
	}
	wd, err := os.Getwd()
	if err != nil {
		tb.Fatalf("kubetest: %v", err)
	}
	root, err := gotool.FindRoot(wd)
	if err != nil {
		tb.Fatalf("kubetest: %v", err)
	}
	start := time.Now()
	paths, err := kubecluster.Binaries(context.Background(), root, prefixWriter{os.Stderr, "kubetest: "})
	if err != nil {
		tb.Fatalf("kubetest: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		tb.Logf("kubetest: built the Kubernetes binaries in %s", d.Round(time.Second))
	}
	binaries = &paths
	return paths
}

// Start builds the binaries if needed, starts a cluster in a temp dir and
// registers its shutdown with tb.Cleanup. On failure the cleanup logs the
// tail of each process's log.
func Start(tb testing.TB, opts ...kubecluster.Option) *kubecluster.Cluster {
	tb.Helper()
	paths := Binaries(tb)
	dir := tb.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := kubecluster.Start(ctx, dir, paths, opts...)
	if err != nil {
		tb.Fatalf("kubetest: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("kubetest: cluster logs (%s):\n%s", dir, c.Logs())
		}
		if err := c.Close(); err != nil {
			tb.Errorf("kubetest: %v", err)
		}
	})
	return c
}

// StartWithPod starts a cluster with kwok (Start with
// kubecluster.WithKwok added to opts) and creates namespace ns and a pod
// name in it on kubecluster.DefaultNode, Running and Ready, so that `kubectl
// exec` (running harmless commands on this host) and `kubectl logs` (which
// print kubecluster.PodLogLines) work against it.
func StartWithPod(tb testing.TB, ns, name string, opts ...kubecluster.Option) (*kubecluster.Cluster, *corev1.Pod) {
	tb.Helper()
	c := Start(tb, append(opts, kubecluster.WithKwok())...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pod, err := c.CreatePod(ctx, ns, name)
	if err != nil {
		tb.Fatalf("kubetest: %v\n%s", err, c.Logs())
	}
	return c, pod
}

// Kubeconfig writes a kubeconfig for token (c.KubeconfigFor) and returns
// its path.
func Kubeconfig(tb testing.TB, c *kubecluster.Cluster, token string) string {
	tb.Helper()
	path, err := c.KubeconfigFor(token)
	if err != nil {
		tb.Fatalf("kubetest: %v", err)
	}
	return path
}

// prefixWriter writes each progress line to w with a prefix.
type prefixWriter struct {
	w      io.Writer
	prefix string
}

func (p prefixWriter) Write(b []byte) (int, error) {
	lines := strings.SplitAfter(string(b), "\n")
	var out strings.Builder
	for _, l := range lines {
		if l != "" {
			out.WriteString(p.prefix + l)
		}
	}
	if _, err := fmt.Fprint(p.w, out.String()); err != nil {
		return 0, err
	}
	return len(b), nil
}
