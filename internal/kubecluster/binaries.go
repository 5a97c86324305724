package kubecluster

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/gatehouse-dev/gatehouse/internal/gotool"
)

const (
	// ToolsDir is the nested module that pins kube-apiserver, etcd and
	// kwok, relative to the repository root.
	ToolsDir = "acctest/kubetools"
	// CacheDir is where the binaries are built, relative to the
	// repository root (the directory hydratest builds Hydra into).
	CacheDir = ".cache/bin"
	// BuildCommand builds the binaries from the repository root, once.
	BuildCommand = "make kube-binaries"

	buildLimit       = 30 * time.Minute
	progressInterval = 30 * time.Second
)

// Paths are the binaries a Cluster runs.
type Paths struct {
	KubeAPIServer string
	Etcd          string
	Kwok          string
}

// tool is one binary built from the nested module.
type tool struct {
	name     string // binary name, before the version suffix
	module   string // the module whose version the binary carries
	pkg      string // the main package
	estimate string // the cold build time on 2 cores, for the progress line
	ldflags  func(version string) (string, error)
}

// tools are built in this order: the quick ones first, so a test that only
// waits for the slow one sees progress early.
var tools = []tool{
	{
		name: "etcd", module: "go.etcd.io/etcd/server/v3", pkg: "go.etcd.io/etcd/server/v3",
		estimate: "about 40 seconds",
	},
	{
		name: "kwok", module: "sigs.k8s.io/kwok", pkg: "sigs.k8s.io/kwok/cmd/kwok",
		estimate: "about 2 minutes",
		ldflags: func(v string) (string, error) {
			return "-X sigs.k8s.io/kwok/pkg/consts.Version=" + v, nil
		},
	},
	{
		name: "kube-apiserver", module: "k8s.io/kubernetes", pkg: "k8s.io/kubernetes/cmd/kube-apiserver",
		estimate: "about 7 minutes",
		ldflags: func(v string) (string, error) {
			// Without these the server reports v0.0.0, which clients
			// such as kubectl warn about and feature gates key off.
			parts := strings.SplitN(strings.TrimPrefix(v, "v"), ".", 3)
			if len(parts) < 2 {
				return "", fmt.Errorf("unexpected Kubernetes version %q", v)
			}
			return "-X k8s.io/component-base/version.gitVersion=" + v +
				" -X k8s.io/component-base/version.gitMajor=" + parts[0] +
				" -X k8s.io/component-base/version.gitMinor=" + parts[1] +
				" -X k8s.io/component-base/version.gitTreeState=clean", nil
		},
	},
}

// binaryPath returns where t is cached under root and the version it is
// built at, the one acctest/kubetools/go.mod requires.
func (t tool) binaryPath(root string) (path, version string, err error) {
	gomod := filepath.Join(root, filepath.FromSlash(ToolsDir), "go.mod")
	version, err = gotool.RequiredVersion(gomod, t.module)
	if err != nil {
		return "", "", err
	}
	return filepath.Join(root, filepath.FromSlash(CacheDir), t.name+"-"+version), version, nil
}

func (p *Paths) set(name, path string) {
	switch name {
	case "etcd":
		p.Etcd = path
	case "kwok":
		p.Kwok = path
	case "kube-apiserver":
		p.KubeAPIServer = path
	}
}

// Available reports the cached binaries under root without building
// anything. When one is missing, ok is false and msg says which and how to
// build them.
func Available(root string) (paths Paths, ok bool, msg string) {
	var missing []string
	for _, t := range tools {
		bin, _, err := t.binaryPath(root)
		if err != nil {
			return Paths{}, false, err.Error()
		}
		if !gotool.IsExecutable(bin) {
			missing = append(missing, bin)
		}
		paths.set(t.name, bin)
	}
	if len(missing) > 0 {
		return paths, false, fmt.Sprintf("the Kubernetes binaries are not built yet (missing %s); "+
			"build them once with `%s` in %s (about 10 minutes and 3 GB of memory on a cold Go cache)",
			strings.Join(missing, ", "), BuildCommand, root)
	}
	return paths, true, ""
}

// Binaries returns the paths of kube-apiserver, etcd and kwok, building the
// missing ones into <root>/.cache/bin/<name>-<version> from the nested
// module acctest/kubetools, which pins their versions. root is the
// repository root (FindRoot finds it).
//
// Builds print progress lines to progress (which may be nil): kube-apiserver
// takes about 7 minutes and 3 GB of memory on a cold Go cache, once. A file
// lock per binary serialises builds across processes (the test binaries
// `go test ./...` runs in parallel), and a binary appears under its final
// name only once complete, so a half-written one is never run. Building needs
// the go command and the Go module proxy, or a module cache that already
// holds acctest/kubetools's modules.
func Binaries(ctx context.Context, root string, progress io.Writer) (Paths, error) {
	if progress == nil {
		progress = io.Discard
	}
	var paths Paths
	for _, t := range tools {
		bin, err := t.build(ctx, root, progress)
		if err != nil {
			return Paths{}, err
		}
		paths.set(t.name, bin)
	}
	return paths, nil
}

func (t tool) build(ctx context.Context, root string, progress io.Writer) (string, error) {
	bin, version, err := t.binaryPath(root)
	if err != nil {
		return "", err
	}
	if gotool.IsExecutable(bin) {
		return bin, nil
	}
	dir := filepath.Dir(bin)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", dir, err)
	}
	unlock, err := gotool.Lock(ctx, bin+".lock", func() {
		fmt.Fprintf(progress, "waiting for another process to finish building %s %s (%s.lock)\n", t.name, version, bin)
	})
	if err != nil {
		return "", err
	}
	defer unlock()
	if gotool.IsExecutable(bin) { // another process built it while we waited
		return bin, nil
	}

	goTool, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("building %s needs the go command on PATH: %w", t.name, err)
	}
	args := []string{"build", "-trimpath"}
	if t.ldflags != nil {
		flags, err := t.ldflags(version)
		if err != nil {
			return "", err
		}
		args = append(args, "-ldflags", flags)
	}
	tmp := fmt.Sprintf("%s.tmp-%d", bin, os.Getpid())
	defer os.Remove(tmp)
	args = append(args, "-o", tmp, t.pkg)

	fmt.Fprintf(progress, "building %s %s into %s (first time only, %s)...\n", t.name, version, bin, t.estimate)
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, buildLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool, args...)
	cmd.Dir = filepath.Join(root, filepath.FromSlash(ToolsDir))
	// Static binaries, as Kubernetes releases them; GOWORK=off so a
	// go.work above the repository cannot pull the nested module into a
	// workspace.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("start go build for %s: %w", t.name, err)
	}
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()
	tick := time.NewTicker(progressInterval)
	defer tick.Stop()
	for finished := false; !finished; {
		select {
		case <-tick.C:
			fmt.Fprintf(progress, "still building %s (%s)\n", t.name, time.Since(start).Round(time.Second))
		case err = <-waitErr:
			finished = true
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", err, context.Cause(ctx))
		}
		tail := out.Bytes()
		if len(tail) > 4<<10 {
			tail = tail[len(tail)-4<<10:]
		}
		return "", fmt.Errorf("building %s %s failed: %w\n"+
			"(cd %s && go %s) needs the Go module proxy, or a module cache that already holds the modules of %s:\n%s",
			t.name, version, err, ToolsDir, strings.Join(quoteArgs(args), " "), ToolsDir, tail)
	}
	if err := os.Rename(tmp, bin); err != nil {
		return "", fmt.Errorf("install %s binary: %w", t.name, err)
	}
	fmt.Fprintf(progress, "built %s %s in %s\n", t.name, version, time.Since(start).Round(time.Second))
	return bin, nil
}

func quoteArgs(args []string) []string {
	q := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " \t") {
			a = "'" + a + "'"
		}
		q[i] = a
	}
	return q
}
