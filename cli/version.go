package cli

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// version is set at build time: -ldflags "-X github.com/gatehouse-dev/gatehouse/cli.version=v1.2.3".
var version = ""

// Version returns this build's version: the linker-set version, the module
// version when installed with go install, or "dev".
func Version() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// compilerID names the compiler in bundle payloads.
func compilerID() string { return "gatehouse " + Version() }

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "Print the version",
		Long:    "Print the version of this gatehouse, the Go version it was built with, and the platform.\nBundles record the version that compiled them (bundle inspect shows it).",
		Example: "  gatehouse version",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(cmd.OutOrStdout(), "gatehouse %s (%s, %s/%s)\n", Version(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		},
	}
}
