// Command kubebuild builds the binaries internal/kubecluster runs
// (kube-apiserver, etcd and kwok, at the versions acctest/kubetools pins)
// into .cache/bin/ at the repository root, and prints their paths. Run it
// once from anywhere in the repository:
//
//	go run ./internal/kubecluster/kubebuild
//
// It takes about 10 minutes and 3 GB of memory on a cold Go cache; binaries
// already built are kept. Tests (internal/kubetest) build them on first use
// too, but then `go test` shows no progress until they are done.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/gatehouse-dev/gatehouse/internal/gotool"
	"github.com/gatehouse-dev/gatehouse/internal/kubecluster"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "kubebuild:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	wd, err := os.Getwd()
	if err != nil {
		return err
	}
	root, err := gotool.FindRoot(wd)
	if err != nil {
		return err
	}
	paths, err := kubecluster.Binaries(ctx, root, os.Stderr)
	if err != nil {
		return err
	}
	fmt.Println(paths.KubeAPIServer)
	fmt.Println(paths.Etcd)
	fmt.Println(paths.Kwok)
	return nil
}
