// Command s3build builds the SeaweedFS binary internal/s3test runs (weed,
// at the version acctest/s3tools pins) into .cache/bin/ at the repository
// root, and prints its path. Run it once from anywhere in the repository:
//
//	go run ./internal/s3test/s3build
//
// It takes about 4 minutes on a cold Go cache; a binary already built is
// kept. Tests build it on first use too, but then `go test` shows no
// progress until it is done.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/gatehouse-dev/gatehouse/internal/gotool"
	"github.com/gatehouse-dev/gatehouse/internal/s3test"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root, err := gotool.FindRootFromWD()
	if err == nil {
		var bin string
		if bin, err = s3test.Build(ctx, root, os.Stderr); err == nil {
			fmt.Println(bin)
			return
		}
	}
	fmt.Fprintln(os.Stderr, "s3build:", err)
	os.Exit(1)
}
