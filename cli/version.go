package cli

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// version and commit are set at build time: -ldflags "-X
// github.com/gatehouse-dev/gatehouse/cli.version=1.2.3 -X ...cli.commit=abc1234".
// The version is semantic (make builds VERSION-dev between releases).
var version, commit = "", ""

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
			fmt.Fprintf(cmd.OutOrStdout(), "gatehouse %s\n", versionLine())
			return nil
		},
	}
}

// versionLine is the version with its commit, Go version and platform.
func versionLine() string {
	c := commit
	if c == "" {
		c = "unknown"
	}
	return fmt.Sprintf("%s (commit %s, %s, %s/%s)", Version(), c, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
