package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/gateway"
	"github.com/gatehouse-dev/gatehouse/hclconfig"
)

func newGatewayCmd() *cobra.Command {
	var configPath string
	var check bool
	cmd := &cobra.Command{
		Use:   "gateway --config gateway.hcl",
		Short: "Run the gateway: the PostgreSQL enforcement point",
		Long: `Run the gateway. It loads the signed bundle named in its config (a file it watches, or an HTTPS URL
it polls with ETags), verifying it against the trusted keys, follows it to new revisions, and serves
PostgreSQL clients: each connects with an OIDC token as its password and a bundle resource's name as
the database; every statement is decided against the active bundle, then forwarded with credentials
only the gateway holds, refused with SQLSTATE 42501, or masked.

A bad bundle never replaces a good one: it is refused, logged, and the last good bundle stays active
(it is also kept in data_dir for restarts). SIGINT or SIGTERM ends the gateway and its sessions.

The configuration file, every field explained:

` + gateway.ConfigReference,
		Example: `  gatehouse gateway --config /etc/gatehouse/gateway.hcl
  gatehouse gateway --config gateway.hcl --check     # check everything it needs, then exit
  psql "host=gw.internal port=6432 dbname=orders user=billing sslmode=require password=$TOKEN"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configPath == "" {
				return errors.New("--config is required (see gatehouse gateway --help for the file's fields)")
			}
			cfg, files, diags := gateway.LoadConfig(configPath)
			if diags.HasErrors() {
				_ = hclconfig.WriteDiagnostics(cmd.ErrOrStderr(), files, diags)
				return failed("%s: %d error(s) in the gateway config", configPath, len(diags.Errs()))
			}
			if check {
				return preflight(cmd.Context(), cmd.OutOrStdout(), configPath, cfg)
			}
			g, err := gateway.New(cfg, gateway.WithLogger(gateway.NewLogger(cfg.Log, cmd.ErrOrStderr())))
			if err != nil {
				return failed("%w", err)
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			if err := g.Run(ctx); err != nil {
				return failed("%w", err)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "", "the gateway configuration file (HCL)")
	cmd.Flags().BoolVar(&check, "check", false, "check the configuration and everything it names (certificates, keys, the bundle, every credential reference, each identity provider), then exit: 0 all ok, 1 something fails")
	return cmd
}

// preflight prints gateway.Preflight's checks, one line each; credential
// values are never shown, only whether their references resolve.
func preflight(ctx context.Context, w io.Writer, configPath string, cfg *gateway.Config) error {
	if ctx == nil {
		ctx = context.Background()
	}
	fmt.Fprintf(w, "ok    config %s\n", configPath)
	failures := 0
	for _, c := range gateway.Preflight(ctx, cfg, gateway.PreflightOptions{}) {
		switch {
		case c.Err != nil:
			failures++
			fmt.Fprintf(w, "FAIL  %s: %v\n", c.What, c.Err)
		case c.Note != "":
			fmt.Fprintf(w, "ok    %s (%s)\n", c.What, c.Note)
		default:
			fmt.Fprintf(w, "ok    %s\n", c.What)
		}
	}
	if failures > 0 {
		return silentFailure(fmt.Errorf("%d check(s) failed", failures))
	}
	fmt.Fprintln(w, "the gateway can start with this configuration")
	return nil
}
