package cli

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/gateway/approval"
)

// approvalsClient talks to a gateway's admin API.
type approvalsClient struct {
	addr, tokenFile, caFile string
	output                  string
}

func (c *approvalsClient) flags(cmd *cobra.Command) {
	def := os.Getenv("GATEHOUSE_ADDR")
	if def == "" {
		def = "http://127.0.0.1:9090"
	}
	cmd.PersistentFlags().StringVar(&c.addr, "addr", def, "the gateway's admin listener: a URL or host:port ($GATEHOUSE_ADDR when set)")
	cmd.PersistentFlags().StringVar(&c.tokenFile, "token-file", "", "a file holding your OIDC token (default: the token in $GATEHOUSE_TOKEN)")
	cmd.PersistentFlags().StringVar(&c.caFile, "cacert", "", "PEM CA certificate(s) to verify an https admin listener with (default: the system's)")
	// --format is the CLI's output flag; -o/--output, its older spelling
	// here, stays as a hidden alias (both set the same value).
	cmd.PersistentFlags().StringVarP(&c.output, "output", "o", "text", "same as --format")
	_ = cmd.PersistentFlags().MarkHidden("output")
	cmd.PersistentFlags().StringVar(&c.output, "format", "text", "output format: text or json")
}

func (c *approvalsClient) token() (string, error) {
	if c.tokenFile != "" {
		b, err := os.ReadFile(c.tokenFile)
		if err != nil {
			return "", &exitError{code: exitUsage, err: fmt.Errorf("--token-file: %w", err)}
		}
		return strings.TrimSpace(string(b)), nil
	}
	if t := strings.TrimSpace(os.Getenv("GATEHOUSE_TOKEN")); t != "" {
		return t, nil
	}
	return "", &exitError{code: exitUsage, err: errors.New("no token: set GATEHOUSE_TOKEN to your OIDC token, or pass --token-file")}
}

func (c *approvalsClient) base() (string, error) {
	a := strings.TrimRight(c.addr, "/")
	if !strings.Contains(a, "://") {
		a = "http://" + a
	}
	u, err := url.Parse(a)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", &exitError{code: exitUsage, err: fmt.Errorf("--addr %q is not an http(s) URL or host:port", c.addr)}
	}
	return a, nil
}

// do calls the admin API and decodes a 2xx answer into out. Other answers
// become errors that say what the gateway said.
func (c *approvalsClient) do(method, path string, body, out any) error {
	base, err := c.base()
	if err != nil {
		return err
	}
	tok, err := c.token()
	if err != nil {
		return err
	}
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, base+path, rd)
	if err != nil {
		return &exitError{code: exitUsage, err: err}
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	client := &http.Client{Timeout: 30 * time.Second}
	if c.caFile != "" {
		pem, err := os.ReadFile(c.caFile)
		if err != nil {
			return &exitError{code: exitUsage, err: fmt.Errorf("--cacert: %w", err)}
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return &exitError{code: exitUsage, err: fmt.Errorf("--cacert %s holds no PEM certificate", c.caFile)}
		}
		client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	}
	resp, err := client.Do(req)
	if err != nil {
		return &exitError{code: exitUsage, err: fmt.Errorf("cannot reach the gateway's admin API at %s: %w", base, err)}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var e approval.ErrorBody
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(data))
		}
		return failed("%s (HTTP %d)", e.Error, resp.StatusCode)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("the gateway's answer is not what this CLI expects: %w", err)
		}
	}
	return nil
}

func (c *approvalsClient) print(w io.Writer, v any, text func()) error {
	switch c.output {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "text":
		text()
		return nil
	}
	return &exitError{code: exitUsage, err: fmt.Errorf("--format must be text or json, not %q", c.output)}
}

func newApprovalsCmd() *cobra.Command {
	c := &approvalsClient{}
	cmd := &cobra.Command{
		Use:   "approvals",
		Short: "List, inspect, approve and deny statements held for approval",
		Long: `A statement whose decision is "review" is held by the gateway (or, with hold = false, refused with
an approval id) until approvers in the rule's approval groups decide. These commands are the
approvers' side. They call the gateway's admin API with your OIDC token, which must come from an
issuer the active bundle trusts; your groups (the token's groups claim, and the groups of the
bundle identity it resolves to) must include one of the rule's approver groups.

Nobody can approve their own request. A rule with count = N needs N distinct approvers; one
deny settles the request. Every vote is kept with the approver, the time and the comment, in the
gateway's approval state, and in the session's recording when the statement is released or refused.`,
		Example: `  export GATEHOUSE_ADDR=http://127.0.0.1:9090 GATEHOUSE_TOKEN=$(cat ~/.gatehouse/token)
  gatehouse approvals list
  gatehouse approvals show ap-3kq9x2mfa7tb4c1d
  gatehouse approvals approve ap-3kq9x2mfa7tb4c1d --comment "month-end correction, ticket FIN-1234"
  gatehouse approvals deny ap-3kq9x2mfa7tb4c1d --comment "use the refunds job instead"`,
	}
	c.flags(cmd)

	var state string
	var all bool
	list := &cobra.Command{
		Use:   "list [--state pending|approved|denied|expired|cancelled] [--all]",
		Short: "List approval requests you may act on (pending ones by default), newest first",
		Example: `  export GATEHOUSE_ADDR=https://gateway.internal:8443 GATEHOUSE_TOKEN=$(cat ~/.gatehouse/token)
  gatehouse approvals list
  gatehouse approvals list --state approved --all --format json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := "?state=" + url.QueryEscape(state)
			if all {
				q = ""
			}
			var out struct {
				Approvals []approval.Request `json:"approvals"`
			}
			if err := c.do(http.MethodGet, "/v1/approvals"+q, nil, &out); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			return c.print(w, out, func() {
				if len(out.Approvals) == 0 {
					fmt.Fprintf(w, "No %s approval requests.\n", map[bool]string{true: "", false: state}[all])
					return
				}
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tSTATE\tREQUESTER\tRESOURCE\tRULES\tAGE\tEXPIRES IN\tSTATEMENT")
				for _, r := range out.Approvals {
					expires := "-"
					if r.State == approval.Pending {
						expires = time.Until(r.ExpiresAt).Round(time.Second).String()
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.State, r.Requester.String(), r.Resource,
						strings.Join(r.Rules(), ","), time.Since(r.CreatedAt).Round(time.Second), expires, oneLine(approval.Printable(r.Subject.Shown()), 60))
				}
				tw.Flush()
			})
		},
	}
	list.Flags().StringVar(&state, "state", "pending", "pending, approved, denied, expired or cancelled")
	list.Flags().BoolVar(&all, "all", false, "every state")

	show := &cobra.Command{
		Use:     "show ID",
		Short:   "Show one approval request: the exact statement, who asked, the rules, and the votes",
		Example: `  gatehouse approvals show ap-v6zc5mdr3i32llbf`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var r approval.Request
			if err := c.do(http.MethodGet, "/v1/approvals/"+url.PathEscape(args[0]), nil, &r); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			return c.print(w, r, func() { writeApproval(w, &r) })
		},
	}

	vote := func(approve bool) *cobra.Command {
		var comment string
		verb, short := "approve", "Approve a request: the held statement runs (once every rule has its count of approvers)"
		if !approve {
			verb, short = "deny", "Deny a request: the statement fails with your comment (a comment is required)"
		}
		v := &cobra.Command{
			Use:     verb + " ID --comment TEXT",
			Short:   short,
			Example: "  gatehouse approvals " + verb + " ap-v6zc5mdr3i32llbf --comment \"checked with the billing team (TICKET-123)\"",
			Args:    cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				if !approve && strings.TrimSpace(comment) == "" {
					return &exitError{code: exitUsage, err: errors.New("deny needs --comment: the caller sees it, and it is recorded")}
				}
				var r approval.Request
				path := "/v1/approvals/" + url.PathEscape(args[0]) + "/" + verb
				if err := c.do(http.MethodPost, path, approval.VoteBody{Comment: comment}, &r); err != nil {
					return err
				}
				w := cmd.OutOrStdout()
				return c.print(w, r, func() {
					switch r.State {
					case approval.Pending:
						have, need := 0, 0
						for _, n := range r.Needs {
							have += min(len(n.Approvers), n.Count)
							need += n.Count
						}
						fmt.Fprintf(w, "Recorded. %s still needs approvals: %d of %d given.\n", r.ID, have, need)
					case approval.Approved:
						fmt.Fprintf(w, "Approved %s: the statement may run (valid until %s).\n", r.ID, r.ValidUntil.UTC().Format(time.RFC3339))
					default:
						fmt.Fprintf(w, "%s is %s: %s\n", r.ID, r.State, approval.Printable(r.Outcome))
					}
				})
			},
		}
		v.Flags().StringVar(&comment, "comment", "", "why; recorded with your vote, and shown to the caller on a deny")
		return v
	}
	cmd.AddCommand(list, show, vote(true), vote(false))
	return cmd
}

// oneLine shortens text to one line of at most n characters (runes, so
// that a multi-byte character is never cut in two).
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

func writeApproval(w io.Writer, r *approval.Request) {
	fmt.Fprintf(w, "Approval %s: %s\n", r.ID, strings.ToUpper(string(r.State)))
	if r.Outcome != "" {
		fmt.Fprintf(w, "  outcome:    %s\n", approval.Printable(r.Outcome))
	}
	fmt.Fprintf(w, "  requester:  %s (issuer %s)\n", r.Requester.String(), r.Requester.Issuer)
	fmt.Fprintf(w, "  resource:   %s\n", r.Resource)
	fmt.Fprintf(w, "  session:    %s\n", r.Session)
	fmt.Fprintf(w, "  opened:     %s, expires %s\n", r.CreatedAt.UTC().Format(time.RFC3339), r.ExpiresAt.UTC().Format(time.RFC3339))
	mode := "held in the session"
	if !r.Hold {
		mode = "fail fast; the caller retries after approval"
	}
	use := "once"
	if r.Reusable {
		use = "any number of times"
	}
	fmt.Fprintf(w, "  mode:       %s; an approval is valid for %s, to be used %s\n", mode, r.ValidFor, use)
	if !r.ValidUntil.IsZero() {
		fmt.Fprintf(w, "  valid until %s, used %d time(s)\n", r.ValidUntil.UTC().Format(time.RFC3339), r.Uses)
	}
	fmt.Fprintf(w, "  hash:       %s\n\n", r.Hash)
	// Text from the requester is shown with control and invisible
	// characters escaped, and as the target reads it (for SQL, as
	// PostgreSQL parses it): a comment or a carriage return cannot make the
	// request look like another.
	indent := func(s string) string {
		return strings.ReplaceAll(strings.TrimSpace(approval.Printable(s)), "\n", "\n    ")
	}
	fmt.Fprintf(w, "  as sent:\n    %s\n", indent(r.Subject.Text))
	if r.Subject.Canonical != "" {
		fmt.Fprintf(w, "  %s (this is what runs):\n    %s\n", canonicalLabel(r.Protocol), indent(r.Subject.Canonical))
	}
	if len(r.Subject.Params) > 0 {
		fmt.Fprintf(w, "  parameters:\n")
		for _, p := range r.Subject.Params {
			fmt.Fprintf(w, "    %s\n", approval.Printable(p))
		}
	}
	fmt.Fprintln(w)
	for _, n := range r.Needs {
		fmt.Fprintf(w, "  rule %s: %s\n    needs %d approval(s) from %s; %d given\n", n.Rule, n.Reason, n.Count, strings.Join(n.Groups, " or "), len(n.Approvers))
	}
	if len(r.Votes) > 0 {
		fmt.Fprintln(w, "\n  votes:")
		for _, v := range r.Votes {
			fmt.Fprintf(w, "    %s  %-7s by %s", v.Time.UTC().Format(time.RFC3339), v.Decision, v.Approver.String())
			if v.Comment != "" {
				fmt.Fprintf(w, ": %s", approval.Printable(v.Comment))
			}
			fmt.Fprintln(w)
		}
	}
}

// canonicalLabel names the canonical form of a protocol's requests.
func canonicalLabel(protocol string) string {
	if protocol == "postgres" {
		return "as PostgreSQL parses it"
	}
	return "as the gateway reads it"
}
