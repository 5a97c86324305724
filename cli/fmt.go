package cli

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclwrite"
	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/hclconfig"
)

func newFmtCmd() *cobra.Command {
	var check bool
	cmd := &cobra.Command{
		Use:   "fmt [--check] DIR",
		Short: "Rewrite policy files in canonical HCL format",
		Long: `Rewrite every *.hcl file in DIR in canonical format (the same rules as terraform fmt: aligned
equals signs, two-space indentation). With --check nothing is written: the files that would
change are listed and the exit status is 1 if there are any, for CI.`,
		Example: `  gatehouse fmt policies/          # rewrite in place
  gatehouse fmt --check policies/  # in CI: list what needs formatting, exit 1 if anything does`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			entries, err := os.ReadDir(args[0])
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			var names []string
			for _, e := range entries {
				// The same files the loader reads: *.hcl, not hidden.
				if !e.IsDir() && strings.HasSuffix(e.Name(), ".hcl") && !strings.HasPrefix(e.Name(), ".") {
					names = append(names, filepath.Join(args[0], e.Name()))
				}
			}
			sort.Strings(names)
			var unformatted []string
			for _, name := range names {
				src, err := os.ReadFile(name)
				if err != nil {
					return failed("%w", err)
				}
				// HCL's parser has no depth limit: check nesting first.
				if d := hclconfig.CheckNesting(src, name); d != nil {
					_ = hclconfig.WriteDiagnostics(cmd.ErrOrStderr(), map[string]*hcl.File{name: {Bytes: src}}, hcl.Diagnostics{d})
					return silentFailure(fmt.Errorf("%s nests too deeply", name))
				}
				// Refuse to format what does not parse: formatting broken
				// input would make the breakage harder to see.
				if _, diags := hclwrite.ParseConfig(src, name, hcl.InitialPos); diags.HasErrors() {
					files := map[string]*hcl.File{name: {Bytes: src}}
					_ = hclconfig.WriteDiagnostics(cmd.ErrOrStderr(), files, diags)
					return silentFailure(fmt.Errorf("%s does not parse", name))
				}
				out := hclwrite.Format(src)
				if bytes.Equal(out, src) {
					continue
				}
				unformatted = append(unformatted, name)
				if check {
					fmt.Fprintln(cmd.OutOrStdout(), name)
					continue
				}
				// Write through a symlink to its target, keeping the link.
				target, err := filepath.EvalSymlinks(name)
				if err != nil {
					return failed("%w", err)
				}
				fi, err := os.Stat(target)
				if err != nil {
					return failed("%w", err)
				}
				if err := bundle.WriteFileAtomic(target, out, fi.Mode().Perm()); err != nil {
					return failed("%w", err)
				}
				fmt.Fprintln(cmd.OutOrStdout(), name)
			}
			if check && len(unformatted) > 0 {
				return failed("%d file(s) need formatting; run: gatehouse fmt %s", len(unformatted), args[0])
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&check, "check", false, "list files that need formatting and exit 1 if any; change nothing")
	return cmd
}
