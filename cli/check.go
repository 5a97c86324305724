package cli

import (
	"encoding/xml"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/celpolicy"
)

func newCheckCmd() *cobra.Command {
	var format string
	var trust []string
	var verbose bool
	var runRE string
	cmd := &cobra.Command{
		Use:   "check DIR|BUNDLE [--format text|json|junit]",
		Short: "Run the policy tests",
		Long: `Compile the policy (a directory of *.hcl files, or a bundle), run every test block, and print
each result with the decision and the rules that matched. A failure shows the expected and the
actual decision, the matched rules and the reasons. The summary lists the rules that matched in
no test and the masks that applied in none: behaviour nobody has pinned down.

Formats: text (for people), json (for tools), junit (JUnit XML for CI test reports).
Exit status 0 when every test passes, 1 when any fails or the policy does not compile.`,
		Example: `  gatehouse check examples/quickstart
  gatehouse check policies/ --format junit > policy-tests.xml
  gatehouse check examples/quickstart --run 'analytics'      # only the tests whose name matches`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch format {
			case "text", "json", "junit":
			default:
				return fmt.Errorf("--format must be text, json or junit, not %q", format)
			}
			src, err := loadSource(args[0], trust, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			start := time.Now()
			results := src.policy.RunTests()
			if runRE != "" {
				re, err := regexp.Compile(runRE)
				if err != nil {
					return &exitError{code: exitUsage, err: fmt.Errorf("--run: %v", err)}
				}
				kept := results[:0]
				for _, r := range results {
					if re.MatchString(r.Name) {
						kept = append(kept, r)
					}
				}
				if len(kept) == 0 {
					return &exitError{code: exitUsage, err: fmt.Errorf("--run %q matches no test", runRE)}
				}
				results = kept
			}
			elapsed := time.Since(start)
			out := cmd.OutOrStdout()
			switch format {
			case "json":
				if err := writeJSON(out, map[string]any{
					"source": args[0], "passed": len(results) - countFailed(results), "failed": countFailed(results), "tests": results,
					"coverage": src.policy.Coverage(results),
				}); err != nil {
					return err
				}
			case "junit":
				if err := writeJUnit(out, args[0], results, elapsed); err != nil {
					return err
				}
			default:
				writeTextResults(out, results, verbose)
				for _, r := range results {
					if rng, ok := src.blocks["test/"+r.Name]; !r.Passed && ok {
						fmt.Fprintf(out, "%s:%d: test %q failed\n", rng.Filename, rng.Start.Line, r.Name)
					}
				}
				fmt.Fprintf(out, "\n%d passed, %d failed (%s)\n", len(results)-countFailed(results), countFailed(results), elapsed.Round(time.Millisecond))
				if runRE != "" {
					break // coverage of a subset would list rules the other tests cover
				}
				cov := src.policy.Coverage(results)
				fmt.Fprintf(out, "coverage: %d of %d rules and %d of %d masks exercised by a test\n",
					cov.Rules-len(cov.UntestedRules), cov.Rules, cov.Masks-len(cov.UntestedMasks), cov.Masks)
				for _, r := range cov.UntestedRules {
					fmt.Fprintf(out, "  untested rule: %s\n", r)
				}
				for _, m := range cov.UntestedMasks {
					fmt.Fprintf(out, "  untested mask: %s\n", m)
				}
			}
			if len(results) == 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s has no test blocks\n", args[0])
			}
			if n := countFailed(results); n > 0 {
				return silentFailure(fmt.Errorf("%d test(s) failed", n))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&format, "format", "text", "output format: text, json or junit")
	cmd.Flags().StringArrayVar(&trust, "trust", nil, "verify a bundle's signature against this public key")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "show reasons and masks for passing tests too")
	cmd.Flags().StringVar(&runRE, "run", "", "run only the tests whose name matches this regular expression (as opa test --run)")
	return cmd
}

func countFailed(rs []celpolicy.TestResult) int {
	n := 0
	for _, r := range rs {
		if !r.Passed {
			n++
		}
	}
	return n
}

func writeTextResults(w io.Writer, rs []celpolicy.TestResult, verbose bool) {
	width := 20
	for _, r := range rs {
		width = max(width, min(len(r.Name), 64))
	}
	for _, r := range rs {
		status := "PASS"
		if !r.Passed {
			status = "FAIL"
		}
		rules := r.Decision.Rules()
		ruleText := "no rule matched"
		if len(rules) > 0 {
			ruleText = strings.Join(rules, ", ")
		}
		fmt.Fprintf(w, "%s  %-*s  %-6s  %s\n", status, width, r.Name, r.Decision.Effect, ruleText)
		if r.Passed && !verbose {
			continue
		}
		for _, f := range r.Failures {
			fmt.Fprintf(w, "      %s\n", f)
		}
		if r.Request != "" {
			fmt.Fprintf(w, "      request: %s\n", r.Request)
		}
		for _, m := range r.Decision.MatchedRules {
			fmt.Fprintf(w, "      matched: %s (%s): %s\n", m.Rule, m.Effect, m.Reason)
		}
		for _, reason := range r.Decision.Reasons {
			fmt.Fprintf(w, "      reason:  %s\n", reason)
		}
		for _, m := range r.Decision.Masks {
			fmt.Fprintf(w, "      mask:    %s %s (%s)\n", m.Target, m.Method, m.Mask)
		}
	}
}

// JUnit XML, in the form CI systems (GitHub, GitLab, Jenkins) read.
type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Tests    int          `xml:"tests,attr"`
	Failures int          `xml:"failures,attr"`
	Time     string       `xml:"time,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name      string      `xml:"name,attr"`
	Tests     int         `xml:"tests,attr"`
	Failures  int         `xml:"failures,attr"`
	Errors    int         `xml:"errors,attr"`
	Time      string      `xml:"time,attr"`
	Timestamp string      `xml:"timestamp,attr"`
	Cases     []junitCase `xml:"testcase"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	Classname string        `xml:"classname,attr"`
	Time      string        `xml:"time,attr"`
	Failure   *junitFailure `xml:"failure,omitempty"`
	SystemOut string        `xml:"system-out,omitempty"`
}

type junitFailure struct {
	Message string `xml:"message,attr"`
	Type    string `xml:"type,attr"`
	Body    string `xml:",chardata"`
}

func writeJUnit(w io.Writer, source string, rs []celpolicy.TestResult, elapsed time.Duration) error {
	suite := junitSuite{Name: "gatehouse check " + source, Tests: len(rs), Failures: countFailed(rs),
		Time: seconds(elapsed), Timestamp: time.Now().UTC().Format("2006-01-02T15:04:05")}
	for _, r := range rs {
		c := junitCase{Name: r.Name, Classname: "gatehouse.policy", Time: seconds(r.Duration)}
		var detail strings.Builder
		fmt.Fprintf(&detail, "decision: %s\nmatched rules: %s\n", r.Decision.Effect, strings.Join(r.Decision.Rules(), ", "))
		for _, reason := range r.Decision.Reasons {
			fmt.Fprintf(&detail, "reason: %s\n", reason)
		}
		if !r.Passed {
			c.Failure = &junitFailure{Message: strings.Join(r.Failures, "; "), Type: "PolicyTestFailure", Body: detail.String()}
		} else {
			c.SystemOut = detail.String()
		}
		suite.Cases = append(suite.Cases, c)
	}
	doc := junitSuites{Tests: suite.Tests, Failures: suite.Failures, Time: suite.Time, Suites: []junitSuite{suite}}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(doc); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\n")
	return err
}

func seconds(d time.Duration) string { return fmt.Sprintf("%.3f", d.Seconds()) }
