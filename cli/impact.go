package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/impact"
)

func newImpactCmd() *cobra.Command {
	var (
		traffic       []string
		format        string
		failOn        string
		trust         []string
		showConstants bool
		examples      int
		since         string
		out           string
	)
	cmd := &cobra.Command{
		Use:   "impact OLD NEW --traffic SOURCE [--format text|json|markdown] [--fail-on widen|narrow|any|none]",
		Short: "Replay recorded traffic under two policies and report the decisions that would change",
		Long: `Decide every recorded request under OLD and under NEW (each a policy directory, a bundle file,
or 'terraform show -json' of a saved plan: the policy its gatehouse_bundle would publish) and report the requests whose decision would change: allow to deny, deny to allow, to or from
review, and masks added or removed.

Changes are grouped by identity, resource, the outcome before and after, and the rule that decides
under NEW, with the number of requests, the number of distinct requests and a few examples.

--traffic takes a gateway's data directory (or its recordings directory, or recording files; give
it several times to read several gateways) or an exported traffic file ('gatehouse traffic
export'). Each distinct (caller, resource, request) is decided once and counted.

The caller is resolved again under each policy from its token's issuer, subject and groups, as
the gateway would: a change to identities, providers or groups shows. Recordings made before the
token's groups were recorded are replayed with the groups the gateway resolved then, and the
report says how many requests that covers. Rules that read 'now' see the time of the last such
request; session counters are zero.

SQL examples are normalised (constants become $1, $2, ...): literals can be personal data, and a
CI log is no place for them. --show-constants shows them as sent, for local use.

Exit status: 1 when --fail-on matches (widen: access widened or masks exchanged; narrow:
access narrowed or masks exchanged; any: any change; none, the default: never), 2 when the
command could not run, 0 otherwise.`,
		Example: `  gatehouse impact examples/quickstart /tmp/quickstart-narrowed --traffic /var/lib/gatehouse
  gatehouse impact main.bundle pr.bundle --traffic traffic.jsonl --format markdown --fail-on widen`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch format {
			case "text", "json", "markdown":
			default:
				return &exitError{code: exitUsage, err: fmt.Errorf("--format must be text, json or markdown, not %q", format)}
			}
			switch failOn {
			case "widen", "narrow", "any", "none":
			default:
				return &exitError{code: exitUsage, err: fmt.Errorf("--fail-on must be widen, narrow, any or none, not %q", failOn)}
			}
			if len(traffic) == 0 {
				return &exitError{code: exitUsage, err: fmt.Errorf("--traffic is required: a gateway's data directory, recordings, or an exported traffic file")}
			}
			from, err := sinceTime(since, time.Now())
			if err != nil {
				return err
			}
			opts := impact.Options{KeepConstants: showConstants, Since: from}
			oldPolicy, err := loadPolicyArg(args[0], trust, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			newPolicy, err := loadPolicyArg(args[1], trust, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			start := time.Now()
			t, err := readTraffic(traffic, opts, cmd.ErrOrStderr())
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			rep := impact.Compare(oldPolicy, newPolicy, t, impact.CompareOptions{Examples: examples})
			rep.Old, rep.New, rep.Traffic = args[0], args[1], strings.Join(traffic, ", ")
			fmt.Fprintf(cmd.ErrOrStderr(), "replayed %d requests (%d distinct) in %s\n", t.Requests, len(t.Records), time.Since(start).Round(time.Millisecond))
			w := cmd.OutOrStdout()
			if out != "" {
				f, err := os.Create(out)
				if err != nil {
					return &exitError{code: exitUsage, err: err}
				}
				defer f.Close()
				w = f
			}
			switch format {
			case "json":
				err = rep.WriteJSON(w)
			case "markdown":
				err = rep.WriteMarkdown(w)
			default:
				err = rep.WriteText(w)
			}
			if err != nil {
				return err
			}
			if rep.Fail(impact.FailOn(failOn)) {
				return silentFailure(fmt.Errorf("--fail-on %s: the change %s access", failOn, verb(rep)))
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&traffic, "traffic", nil, "recorded traffic: a data directory, recordings, or an exported traffic file (repeatable)")
	cmd.Flags().StringVar(&format, "format", "text", "output format: text, json or markdown (for a pull-request comment)")
	cmd.Flags().StringVar(&failOn, "fail-on", "none", "exit 1 when the change does this: widen, narrow, any or none")
	cmd.Flags().StringArrayVar(&trust, "trust", nil, "public key to verify bundle signatures with (repeatable)")
	cmd.Flags().BoolVar(&showConstants, "show-constants", false, "show SQL as sent, constants included (local use only: they can be personal data)")
	cmd.Flags().IntVar(&examples, "examples", 3, "examples per change")
	cmd.Flags().StringVar(&since, "since", "", "only requests made since: 14d, 36h, 90m before now, or an RFC 3339 time (recordings only)")
	cmd.Flags().StringVarP(&out, "out", "o", "", "write the report to this file instead of stdout")
	return cmd
}

// loadPolicyArg compiles impact's OLD or NEW: a policy directory, a
// bundle, or the JSON of a saved Terraform plan with one gatehouse_bundle.
func loadPolicyArg(path string, trust []string, stderr io.Writer) (*celpolicy.Policy, error) {
	if data, err := os.ReadFile(path); err == nil && isPlanJSON(data) {
		bundles, err := plannedBundles(data)
		if err != nil {
			return nil, &exitError{code: exitUsage, err: fmt.Errorf("%s: %w", path, err)}
		}
		if len(bundles) != 1 {
			return nil, &exitError{code: exitUsage, err: fmt.Errorf("%s plans %d gatehouse_bundle resources; impact takes a plan of exactly one (plan-check handles several)", path, len(bundles))}
		}
		if bundles[0].unknown {
			return nil, failed("%s: the planned objects of %s are unknown until apply", path, bundles[0].address)
		}
		p, err := compileSpecs(bundles[0].objects)
		if err != nil {
			return nil, failed("%s: the planned policy does not compile: %w", path, err)
		}
		return p, nil
	}
	src, err := loadSource(path, trust, stderr)
	if err != nil {
		return nil, err
	}
	return src.policy, nil
}

// isPlanJSON reports whether data looks like 'terraform show -json' output.
func isPlanJSON(data []byte) bool {
	var probe struct {
		FormatVersion string          `json:"format_version"`
		Planned       json.RawMessage `json:"planned_values"`
	}
	return len(data) > 0 && data[0] == '{' && json.Unmarshal(data, &probe) == nil && probe.FormatVersion != "" && len(probe.Planned) > 0
}

func verb(r *impact.Report) string {
	switch {
	case r.Widened > 0 && r.Narrowed > 0:
		return "widens and narrows"
	case r.Widened > 0:
		return "widens"
	case r.Narrowed > 0:
		return "narrows"
	}
	return "changes the masks of"
}

// readTraffic reads exported traffic files and recordings.
func readTraffic(sources []string, o impact.Options, progress io.Writer) (*impact.Traffic, error) {
	var files, recs []string
	for _, s := range sources {
		if fi, err := os.Stat(s); err == nil && !fi.IsDir() && impact.IsTrafficFile(s) {
			files = append(files, s)
		} else {
			recs = append(recs, s)
		}
	}
	var all []*impact.Traffic
	if len(files) > 0 {
		t, err := impact.ReadFile(files...)
		if err != nil {
			return nil, err
		}
		all = append(all, t)
	}
	if len(recs) > 0 {
		n := 0
		o.Progress = func(path string, requests int64) {
			if n++; n%500 == 0 {
				fmt.Fprintf(progress, "  read %d recordings\n", n)
			}
		}
		t, err := impact.Read(recs, o)
		if err != nil {
			return nil, err
		}
		all = append(all, t)
	}
	return impact.Merge(all...), nil
}

func newTrafficCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "traffic",
		Short: "Export recorded traffic for 'gatehouse impact' in CI",
	}
	cmd.AddCommand(newTrafficExportCmd())
	return cmd
}

func newTrafficExportCmd() *cobra.Command {
	var (
		since string
		keep  bool
		out   string
	)
	cmd := &cobra.Command{
		Use:   "export DATA_DIR... [--since 14d] [--keep-constants] [-o traffic.jsonl]",
		Short: "Write what 'gatehouse impact' needs from recordings, and nothing else",
		Long: `Read a gateway's recordings (a data directory, its recordings directory or recording files;
several gateways' at once) and write one JSON line per distinct (caller, resource, request) with
a count: the caller's issuer, subject, resolved groups and token groups, the resource and its
kind, the request as the gateway decided it (for PostgreSQL, the statements' facts: tables,
commands, functions, columns used), its recorded decision, the count, and when the first and
last were made.

It holds no result rows, no masked values and no tokens. SQL texts are normalised (constants
become $1, $2, ...) unless --keep-constants is given. What it does reveal: who called what, how
often, and the shape of their SQL (table and column names, commands), SSH command lines and
Kubernetes API paths as sent (rules read them, so they are kept). Treat it as internal.

A CI job can run 'gatehouse impact OLD NEW --traffic traffic.jsonl' on it without access to the
raw recordings. docs/guides/proving-a-policy-change.md shows how to publish it.`,
		Example: `  gatehouse traffic export /var/lib/gatehouse --since 14d -o traffic.jsonl
  gatehouse traffic export gw1/data gw2/data > traffic.jsonl`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			from, err := sinceTime(since, time.Now())
			if err != nil {
				return err
			}
			o := impact.Options{KeepConstants: keep, Since: from}
			t, err := readTraffic(args, o, cmd.ErrOrStderr())
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			w := cmd.OutOrStdout()
			if out != "" {
				f, err := os.Create(out)
				if err != nil {
					return &exitError{code: exitUsage, err: err}
				}
				defer f.Close()
				w = f
			}
			if err := t.Write(w); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "exported %d requests as %d records from %d sessions\n", t.Requests, len(t.Records), t.Sessions)
			for why, n := range t.Skipped {
				fmt.Fprintf(cmd.ErrOrStderr(), "note: %d %s were not exported\n", n, why)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&since, "since", "", "only requests made since: 14d, 36h, 90m before now, or an RFC 3339 time")
	cmd.Flags().BoolVar(&keep, "keep-constants", false, "keep SQL texts as sent (they can hold personal data)")
	cmd.Flags().StringVarP(&out, "out", "o", "", "write to this file instead of stdout")
	return cmd
}
