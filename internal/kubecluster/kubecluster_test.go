package kubecluster_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/internal/kubecluster"
	"github.com/gatehouse-dev/gatehouse/internal/kubetest"
)

func TestAvailableNamesTheBuildCommand(t *testing.T) {
	root := t.TempDir()
	tools := filepath.Join(root, filepath.FromSlash(kubecluster.ToolsDir))
	if err := os.MkdirAll(tools, 0o755); err != nil {
		t.Fatal(err)
	}
	gomod := "module x\n\nrequire (\n\tgo.etcd.io/etcd/server/v3 v3.7.0\n\tk8s.io/kubernetes v1.37.2\n\tsigs.k8s.io/kwok v0.8.0 // indirect\n)\n"
	if err := os.WriteFile(filepath.Join(tools, "go.mod"), []byte(gomod), 0o644); err != nil {
		t.Fatal(err)
	}
	paths, ok, msg := kubecluster.Available(root)
	if ok || !strings.Contains(msg, kubecluster.BuildCommand) || !strings.Contains(msg, "kube-apiserver-v1.37.2") {
		t.Errorf("Available = %v, %q; want false and a message naming the binary and %q", ok, msg, kubecluster.BuildCommand)
	}
	if want := filepath.Join(root, ".cache", "bin", "kwok-v0.8.0"); paths.Kwok != want {
		t.Errorf("Kwok = %q, want %q", paths.Kwok, want)
	}
	if err := os.Remove(filepath.Join(tools, "go.mod")); err != nil {
		t.Fatal(err)
	}
	if _, ok, msg := kubecluster.Available(root); ok || !strings.Contains(msg, "go.mod") {
		t.Errorf("without go.mod: Available = %v, %q", ok, msg)
	}
}

func TestStartFailureReportsTheLog(t *testing.T) {
	paths := kubetest.Binaries(t)
	_, err := kubecluster.Start(context.Background(), t.TempDir(), paths, kubecluster.WithAPIServerArgs("--no-such-flag"))
	if err == nil || !strings.Contains(err.Error(), "kube-apiserver exited during start-up") || !strings.Contains(err.Error(), "unknown flag: --no-such-flag") {
		t.Fatalf("Start with a bad flag: %v", err)
	}
}

func TestStartRejectsABadToken(t *testing.T) {
	_, err := kubecluster.Start(context.Background(), t.TempDir(), kubetest.Binaries(t), kubecluster.WithToken("a,b", "t"))
	if err == nil || !strings.Contains(err.Error(), "without commas") {
		t.Fatalf("Start with a comma in the user: %v", err)
	}
}
