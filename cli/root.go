// Package cli wires Gatehouse's packages into cobra commands. It holds no
// policy logic of its own: loading, compiling, deciding and signing all live
// in hclconfig, celpolicy and bundle.
package cli

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // the command ran and the answer is "no": tests failed, verification failed
	exitUsage   = 2 // the command could not run as asked
	// exitUnsealed is audit verify's "nothing altered, but not everything
	// is sealed": a session still open, or a gap the gateway recorded.
	exitUnsealed = 3
)

// exitError carries an exit code through cobra. Its message has already been
// printed when silent is set.
type exitError struct {
	code   int
	err    error
	silent bool
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// failed reports that the command ran and found a problem it has explained.
func failed(format string, args ...any) error {
	return &exitError{code: exitFailure, err: fmt.Errorf(format, args...)}
}

// silentFailure exits 1 without printing more: the output already says why.
func silentFailure(err error) error { return &exitError{code: exitFailure, err: err, silent: true} }

// Execute runs the CLI with args and returns the process exit code.
func Execute(args []string) int {
	return run(args, os.Stdout, os.Stderr)
}

func run(args []string, stdout, stderr io.Writer) int {
	root := newRoot(stdout, stderr)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if !ee.silent {
			fmt.Fprintf(stderr, "gatehouse: %v\n", ee.err)
		}
		return ee.code
	}
	fmt.Fprintf(stderr, "gatehouse: %v\n", err)
	fmt.Fprintf(stderr, "Run 'gatehouse --help' for usage.\n")
	return exitUsage
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "gatehouse",
		Short: "Zero-trust access gateway for machine-to-machine traffic, managed as code",
		Long: `Gatehouse puts verified identity, least privilege and continuous enforcement in the data path
between services and their databases, hosts and clusters.

Policy is code: write identities, resources, CEL rules, masks and tests in HCL (or Terraform),
check them in CI, and compile them into a signed bundle that the gateway hot-reloads.

A typical loop:
  gatehouse fmt policies/                      # canonical formatting
  gatehouse check policies/                    # run the policy tests
  gatehouse eval policies/ --identity billing-service --resource orders --sql 'DELETE FROM orders'
  gatehouse keygen --out keys/                 # once: a signing key pair
  gatehouse bundle build policies/ --key keys/gatehouse.key --out policy.bundle
  gatehouse bundle verify policy.bundle --trust keys/gatehouse.pub
  gatehouse bundle diff old.bundle policy.bundle

Exit status: 0 success, 1 a check failed (tests, verification, policy errors), 2 usage error;
audit verify exits 3 when nothing was altered but a recording is unsealed.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.Version = versionLine()
	root.SetVersionTemplate("gatehouse {{.Version}}\n")
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(
		newKeygenCmd(),
		newBundleCmd(),
		newCheckCmd(),
		newEvalCmd(),
		newFmtCmd(),
		newVersionCmd(),
		newGatewayCmd(),
		newSessionsCmd(),
		newReplayCmd(),
		newAuditCmd(),
		newApprovalsCmd(),
		newDevCmd(),
		newProviderCmd(),
		newExportCmd(),
		newSSHAskpassCmd(),
		newImpactCmd(),
		newTrafficCmd(),
		newPlanCheckCmd(),
		newKubeconfigCmd(),
		newKubeCredentialCmd(),
	)
	return root
}

// jsonFormat adds the CLI's one output flag, --format text|json, to a
// command that used to spell it --json (kept, hidden, as an alias). The
// function it returns says whether JSON was asked for, or why the flag is
// wrong.
func jsonFormat(f *pflag.FlagSet) func() (bool, error) {
	var format string
	var legacy bool
	f.StringVar(&format, "format", "text", "output format: text or json")
	f.BoolVar(&legacy, "json", false, "same as --format json")
	_ = f.MarkHidden("json")
	return func() (bool, error) {
		switch {
		case legacy || format == "json":
			return true, nil
		case format == "text":
			return false, nil
		}
		return false, &exitError{code: exitUsage, err: fmt.Errorf("--format must be text or json, not %q", format)}
	}
}
