// Package gotool holds what the helpers that build the tests' real
// counterparts from Go modules share (Hydra, kube-apiserver, etcd, kwok,
// SeaweedFS): finding the repository root, reading the version a nested
// tools module pins, and a file lock so that parallel test binaries build
// a binary once into .cache/bin.
package gotool

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// RootModule is the repository's own module.
const RootModule = "github.com/gatehouse-dev/gatehouse"

// FindRoot walks up from dir to the repository root: the directory whose
// go.mod declares RootModule. Nested modules (acctest/tools,
// acctest/kubetools, acctest/s3tools) are passed over.
func FindRoot(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("find repository root: %w", err)
	}
	for d := abs; ; {
		if mod, err := modulePath(filepath.Join(d, "go.mod")); err == nil && mod == RootModule {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", fmt.Errorf("no go.mod for module %s in %s or above", RootModule, abs)
		}
		d = parent
	}
}

// FindRootFromWD is FindRoot from the working directory (a test runs in
// its package's directory).
func FindRootFromWD() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find repository root: %w", err)
	}
	return FindRoot(wd)
}

// modulePath returns the module path a go.mod declares.
func modulePath(gomod string) (string, error) {
	f, err := os.Open(gomod)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module"); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`), nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", fmt.Errorf("%s: no module line", gomod)
}

// RequiredVersion returns the version of module that gomod requires, from
// a line "module version" inside or outside a require block.
func RequiredVersion(gomod, module string) (string, error) {
	data, err := os.ReadFile(gomod)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", gomod, err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "require "))
		if len(f) >= 2 && f[0] == module && strings.HasPrefix(f[1], "v") {
			return f[1], nil
		}
	}
	return "", fmt.Errorf("%s does not require %s", gomod, module)
}

// Lock takes an exclusive flock on path, calling waiting once and blocking
// while another process holds it. The wait gives up when ctx ends.
// Closing the file (unlock) releases the lock.
func Lock(ctx context.Context, path string, waiting func()) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	for announced := false; ; {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if !announced {
			waiting()
			announced = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for %s: %w", path, context.Cause(ctx))
		case <-time.After(time.Second):
		}
	}
	return func() { f.Close() }, nil
}

// IsExecutable reports whether path is a regular file someone may run.
func IsExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}
