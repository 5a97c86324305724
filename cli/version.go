package cli

import (
	"fmt"
	"os"
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
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(cmd.OutOrStdout(), "gatehouse %s (%s, %s/%s)\n", Version(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		},
	}
}

// ServeProvider serves the Terraform provider over the plugin protocol. The
// provider is not part of this build yet; Terraform shows this message.
func ServeProvider() int {
	fmt.Fprintln(os.Stderr, "gatehouse: this build does not include the Terraform provider yet; build a gatehouse that does, or use `gatehouse bundle build` with HCL policies")
	return exitFailure
}
