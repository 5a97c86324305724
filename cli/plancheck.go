package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/impact"
	"github.com/gatehouse-dev/gatehouse/provider"
	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

func newPlanCheckCmd() *cobra.Command {
	var (
		traffic []string
		against string
		junit   string
		failOn  string
		trust   []string
	)
	cmd := &cobra.Command{
		Use:   "plan-check PLAN.json [--traffic SOURCE] [--against BUNDLE] [--junit FILE] [--fail-on widen|narrow|any|none]",
		Short: "Check a saved Terraform plan's policy in CI: tests, access diff and impact on recorded traffic",
		Long: `Read 'terraform show -json' of a saved plan, rebuild the policy each planned gatehouse_bundle would
publish from the planned values of its objects (the spec attributes of the gatehouse_* resources),
and print one markdown report for a pull-request comment:

  tests   the policy's test blocks, run on the planned policy (--junit FILE also writes JUnit XML);
  diff    who gains or loses which effect, against the bundle the state holds (the plan's prior
          state), or --against BUNDLE|DIR;
  impact  with --traffic (recordings or an exported traffic file), the recorded requests whose
          decision would change (see 'gatehouse impact').

Values Terraform only knows after apply are reported as unknown, not guessed.

Exit status: 1 when a test fails or --fail-on matches the impact, 2 when the plan cannot be read,
0 otherwise.`,
		Example: `  terraform plan -out p && terraform show -json p > p.json
  gatehouse plan-check p.json --traffic traffic.jsonl --junit policy-tests.xml > report.md`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch failOn {
			case "widen", "narrow", "any", "none":
			default:
				return &exitError{code: exitUsage, err: fmt.Errorf("--fail-on must be widen, narrow, any or none, not %q", failOn)}
			}
			data, err := os.ReadFile(args[0])
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			bundles, err := plannedBundles(data)
			if err != nil {
				return &exitError{code: exitUsage, err: fmt.Errorf("%s: %w", args[0], err)}
			}
			if len(bundles) == 0 {
				return &exitError{code: exitUsage, err: fmt.Errorf("%s plans no gatehouse_bundle (is it 'terraform show -json' of a saved plan of a configuration that uses the gatehouse provider?)", args[0])}
			}
			var t *impact.Traffic
			if len(traffic) > 0 {
				if t, err = readTraffic(traffic, impact.Options{}, cmd.ErrOrStderr()); err != nil {
					return &exitError{code: exitUsage, err: err}
				}
			}
			var againstPolicy *celpolicy.Policy
			if against != "" {
				src, err := loadSource(against, trust, cmd.ErrOrStderr())
				if err != nil {
					return err
				}
				againstPolicy = src.policy
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "## Gatehouse plan check\n\n`%s`\n", args[0])
			var allResults []celpolicy.TestResult
			failedTests, failedImpact := 0, false
			for _, b := range bundles {
				fmt.Fprintf(w, "\n### `%s` (%s)\n", b.address, strings.Join(b.actions, ", "))
				if b.unknown {
					fmt.Fprintf(w, "\nThe planned objects are **unknown until apply** (they depend on values Terraform computes then): tests, diff and impact cannot run on this plan. Run plan-check again on a plan where they are known.\n")
					continue
				}
				newP, err := compileSpecs(b.objects)
				if err != nil {
					fmt.Fprintf(w, "\nThe planned policy does not compile:\n\n```\n%v\n```\n", err)
					failedTests++
					continue
				}
				// Tests.
				start := time.Now()
				results := newP.RunTests()
				allResults = append(allResults, results...)
				n := countFailed(results)
				failedTests += n
				fmt.Fprintf(w, "\n#### Policy tests\n\n%d passed, %d failed (%s).\n", len(results)-n, n, time.Since(start).Round(time.Millisecond))
				if n > 0 {
					var tb bytes.Buffer
					writeTextResults(&tb, results, false)
					fmt.Fprintf(w, "\n```\n%s```\n", onlyFailures(tb.String()))
				}
				// Diff.
				oldP, oldName := againstPolicy, against
				if oldP == nil && b.prior != nil {
					if oldP, err = compileSpecs(b.prior); err != nil {
						fmt.Fprintf(w, "\nThe policy in the state does not compile (%v): no diff.\n", err)
					}
					oldName = "the state"
				}
				fmt.Fprintf(w, "\n#### Access diff (against %s)\n\n", orWord(oldName, "nothing: a new bundle"))
				if oldP != nil {
					var db bytes.Buffer
					celpolicy.Diff(oldP, newP).WriteText(&db)
					fmt.Fprintf(w, "```\n%s```\n", strings.TrimRight(db.String(), "\n")+"\n")
				} else {
					fmt.Fprintf(w, "No published policy to compare with (give --against BUNDLE).\n")
				}
				// Impact.
				fmt.Fprintf(w, "\n#### Impact on recorded traffic\n\n")
				switch {
				case t == nil:
					fmt.Fprintf(w, "No traffic given (--traffic).\n")
				case oldP == nil:
					fmt.Fprintf(w, "No published policy to compare with.\n")
				default:
					rep := impact.Compare(oldP, newP, t, impact.CompareOptions{})
					rep.Old, rep.New, rep.Traffic = oldName, b.address, strings.Join(traffic, ", ")
					var ib bytes.Buffer
					_ = rep.WriteMarkdown(&ib)
					// Its own heading is one level too high here.
					fmt.Fprint(w, strings.TrimPrefix(ib.String(), "### Impact on recorded traffic\n\n"))
					if rep.Fail(impact.FailOn(failOn)) {
						failedImpact = true
					}
				}
			}
			if junit != "" {
				f, err := os.Create(junit)
				if err != nil {
					return &exitError{code: exitUsage, err: err}
				}
				err = writeJUnit(f, args[0], allResults, 0)
				if cerr := f.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					return err
				}
			}
			switch {
			case failedTests > 0:
				return silentFailure(fmt.Errorf("%d test(s) failed", failedTests))
			case failedImpact:
				return silentFailure(fmt.Errorf("--fail-on %s matched", failOn))
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&traffic, "traffic", nil, "recorded traffic for the impact: a data directory, recordings, or an exported traffic file (repeatable)")
	cmd.Flags().StringVar(&against, "against", "", "compare with this bundle or policy directory instead of the plan's prior state")
	cmd.Flags().StringVar(&junit, "junit", "", "also write the policy tests as JUnit XML to this file")
	cmd.Flags().StringVar(&failOn, "fail-on", "none", "exit 1 when the impact does this: widen, narrow, any or none")
	cmd.Flags().StringArrayVar(&trust, "trust", nil, "public key to verify --against's signature with (repeatable)")
	return cmd
}

func orWord(s, otherwise string) string {
	if s == "" {
		return otherwise
	}
	return s
}

// onlyFailures keeps the failing tests' lines of writeTextResults.
func onlyFailures(text string) string {
	var out []string
	keep := false
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "FAIL") {
			keep = true
		} else if strings.HasPrefix(line, "PASS") {
			keep = false
		}
		if keep && line != "" {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n") + "\n"
}

func compileSpecs(specs []string) (*celpolicy.Policy, error) {
	m, err := provider.ModelFromSpecs(specs)
	if err != nil {
		return nil, err
	}
	m.Normalize()
	return celpolicy.Compile(m, sqlfacts.Analysis())
}

// plannedBundle is one gatehouse_bundle in a plan.
type plannedBundle struct {
	address string
	actions []string
	objects []string
	unknown bool
	// prior are the objects in the state before the plan (nil when new).
	prior []string
}

// plannedBundles reads the gatehouse_bundle resources of `terraform show
// -json` of a saved plan: planned values, whether they are known, and the
// prior state's.
func plannedBundles(data []byte) ([]plannedBundle, error) {
	var plan struct {
		FormatVersion   string    `json:"format_version"`
		PlannedValues   *tfValues `json:"planned_values"`
		ResourceChanges []struct {
			Address string `json:"address"`
			Type    string `json:"type"`
			Change  struct {
				Actions      []string        `json:"actions"`
				AfterUnknown json.RawMessage `json:"after_unknown"`
			} `json:"change"`
		} `json:"resource_changes"`
		PriorState *struct {
			Values *tfValues `json:"values"`
		} `json:"prior_state"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&plan); err != nil {
		return nil, fmt.Errorf("not JSON from 'terraform show -json': %v", err)
	}
	if plan.FormatVersion == "" {
		return nil, fmt.Errorf("no format_version: not the output of 'terraform show -json PLANFILE'")
	}
	planned := map[string]map[string]json.RawMessage{}
	if plan.PlannedValues != nil {
		plan.PlannedValues.RootModule.collect("gatehouse_bundle", planned)
	} else {
		return nil, fmt.Errorf("no planned_values: 'terraform show -json' of a state, not of a saved plan?")
	}
	prior := map[string]map[string]json.RawMessage{}
	if plan.PriorState != nil && plan.PriorState.Values != nil {
		plan.PriorState.Values.RootModule.collect("gatehouse_bundle", prior)
	}
	var out []plannedBundle
	for _, rc := range plan.ResourceChanges {
		if rc.Type != "gatehouse_bundle" {
			continue
		}
		b := plannedBundle{address: rc.Address, actions: rc.Change.Actions}
		if objectsUnknown(rc.Change.AfterUnknown) {
			b.unknown = true
		} else if v, ok := planned[rc.Address]; ok {
			if b.objects = specsJSON(v["objects"]); b.objects == nil {
				b.unknown = true
			}
		} else if !containsAction(rc.Change.Actions, "delete") {
			b.unknown = true
		}
		if v, ok := prior[rc.Address]; ok {
			b.prior = specsJSON(v["objects"])
		}
		out = append(out, b)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].address < out[j].address })
	return out, nil
}

// specsJSON reads gatehouse_bundle.objects: a map of specs keyed by
// KIND/NAME (schema version 1), or a set of them (version 0, in a state
// not yet upgraded). nil when it is neither.
func specsJSON(raw json.RawMessage) []string {
	var list []string
	if err := json.Unmarshal(raw, &list); err == nil && list != nil {
		return list
	}
	var keyed map[string]string
	if err := json.Unmarshal(raw, &keyed); err != nil || keyed == nil {
		return nil
	}
	keys := make([]string, 0, len(keyed))
	for k := range keyed {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, keyed[k])
	}
	return out
}

func containsAction(actions []string, a string) bool {
	for _, x := range actions {
		if x == a {
			return true
		}
	}
	return false
}

// objectsUnknown reads after_unknown: true for the whole objects set, or
// true for any element.
func objectsUnknown(afterUnknown json.RawMessage) bool {
	var au map[string]json.RawMessage
	if json.Unmarshal(afterUnknown, &au) != nil {
		return false
	}
	v, ok := au["objects"]
	if !ok {
		return false
	}
	return bytes.Contains(v, []byte("true"))
}

type tfValues struct {
	RootModule tfModule `json:"root_module"`
}

type tfModule struct {
	Resources []struct {
		Address string                     `json:"address"`
		Type    string                     `json:"type"`
		Values  map[string]json.RawMessage `json:"values"`
	} `json:"resources"`
	ChildModules []tfModule `json:"child_modules"`
}

func (m *tfModule) collect(typ string, into map[string]map[string]json.RawMessage) {
	for _, r := range m.Resources {
		if r.Type == typ {
			into[r.Address] = r.Values
		}
	}
	for i := range m.ChildModules {
		m.ChildModules[i].collect(typ, into)
	}
}
