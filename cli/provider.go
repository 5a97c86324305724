package cli

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/hashicorp/terraform-plugin-framework/providerserver"
	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/provider"
)

// ServeProvider serves the Terraform provider over the plugin protocol
// (version 6). Terraform starts it; it is not for people to run.
func ServeProvider() int {
	debug := false
	fs := flag.NewFlagSet("terraform-provider-gatehouse", flag.ContinueOnError)
	fs.BoolVar(&debug, "debug", false, "run with support for debuggers (delve)")
	_ = fs.Parse(os.Args[1:])
	if err := serveProvider(debug); err != nil {
		fmt.Fprintf(os.Stderr, "gatehouse: terraform provider: %v\n", err)
		return exitFailure
	}
	return exitOK
}

func serveProvider(debug bool) error {
	return providerserver.Serve(context.Background(), provider.New(version), providerserver.ServeOpts{
		Address: provider.Address,
		Debug:   debug,
	})
}

func newProviderCmd() *cobra.Command {
	var debug bool
	cmd := &cobra.Command{
		Use:   "provider [--debug]",
		Short: "Serve the Terraform provider (Terraform runs this itself; --debug is for attaching a debugger)",
		Example: `  make install-provider                 # the usual way: Terraform starts the provider itself
  dlv exec bin/gatehouse -- provider --debug   # then export the TF_REATTACH_PROVIDERS it prints`,
		Long: `The gatehouse binary is also the Terraform provider gatehouse-dev/gatehouse: Terraform starts it
when it finds a terraform-provider-gatehouse link to it (make install-provider sets that up with a
dev_overrides CLI config), and it serves the plugin protocol.

With --debug it runs under your control instead: attach a debugger (dlv), and it prints a
TF_REATTACH_PROVIDERS value; export it in the shell where you run terraform.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !debug {
				return fmt.Errorf("terraform starts the provider itself; run with --debug to serve it for a debugger, or see make install-provider")
			}
			return serveProvider(true)
		},
	}
	cmd.Flags().BoolVar(&debug, "debug", false, "serve for a debugger and print TF_REATTACH_PROVIDERS")
	return cmd
}
