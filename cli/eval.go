package cli

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/gateway/postgres"
	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

func newEvalCmd() *cobra.Command {
	var (
		t        bundle.Test
		format   string
		trust    []string
		database string
	)
	cmd := &cobra.Command{
		Use:   "eval DIR|BUNDLE --resource NAME (--identity NAME | --provider P --subject S) (--sql SQL | --request JSON)",
		Short: "Decide one request and explain the decision",
		Long: `Decide one request against a policy directory or a bundle, exactly as the gateway would, and
explain it: the effect, the rules that matched, the reasons, the masks, and the facts the rules
saw (for SQL: each statement's command, tables, functions and their volatility, the columns
each clause uses, and how each result column would be masked).

For SQL, names resolve without a database by default: PostgreSQL 15's own catalog is built in,
user tables are taken to have the masked columns the policy names, and views and user functions
are unknown (eval says so). With --database, they resolve through that database's catalog as the
gateway resolves them (connect as a role that sees what callers see; the search path is the
connection's).

The caller is a named identity (--identity), or an ad-hoc token (--provider and --subject), plus
any --group and --claims the token carries. Identity resolution runs as in the gateway, so
--identity fails if the given subject and claims would not resolve to that identity.

The request is --sql for a PostgreSQL query, or --request with a JSON object:
  postgres:            {"sql": "..."}  {"kind": "connect"}  {"kind": "function_call", "function": "lo_export"}
  ssh_host:            {"kind": "exec", "command": "uptime"}  {"kind": "shell"}  {"kind": "forward", "forward_host": "db", "forward_port": 5432}
  kubernetes_cluster:  {"verb": "get", "resource": "secrets", "namespace": "shop", "name": "db"}

Exit status 0 whatever the decision (the decision is the output); 1 if it cannot be made.`,
		Example: `  gatehouse eval examples/quickstart --identity billing-service --resource orders --sql 'DELETE FROM orders'
  gatehouse eval policy.bundle --trust keys/gatehouse.pub --provider corp --subject alice --group dba \
      --resource bastion --request '{"kind":"exec","command":"uptime"}' --format json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if format != "text" && format != "json" {
				return fmt.Errorf("--format must be text or json, not %q", format)
			}
			if t.Resource == "" {
				return errors.New("--resource is required")
			}
			if t.Identity == "" && (t.Provider == "" || t.Subject == "") {
				return errors.New("name the caller: --identity NAME, or --provider P and --subject S")
			}
			if (t.SQL == "") == (t.Request == "") {
				return errors.New("give exactly one of --sql and --request")
			}
			src, err := loadSource(args[0], trust, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if database != "" {
				cat, err := postgres.OpenCatalog(cmd.Context(), database)
				if err != nil {
					return failed("--database: %w", err)
				}
				defer cat.Close()
				if src.policy, err = celpolicy.Compile(src.model, celpolicy.WithRevision(src.revision()), sqlfacts.AnalysisWith(cat)); err != nil {
					return failed("%w", err)
				}
			}
			in, err := src.policy.TestInput(&t)
			if err != nil {
				return failed("%w%s", err, identityHint(src.model, &t))
			}
			d := src.policy.Decide(in)
			if format == "json" {
				return writeJSON(cmd.OutOrStdout(), struct {
					celpolicy.Decision
					Identity celpolicy.Identity `json:"identity"`
					Resource string             `json:"resource"`
					Request  celpolicy.Request  `json:"request"`
				}{d, in.Identity, in.Resource, in.Request})
			}
			writeDecision(cmd.OutOrStdout(), in, d)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&t.Identity, "identity", "", "a named identity of the policy")
	f.StringVar(&t.Provider, "provider", "", "identity provider of an ad-hoc caller")
	f.StringVar(&t.Subject, "subject", "", "token subject (sub)")
	f.StringArrayVar(&t.Groups, "group", nil, "a group the token carries; repeat for several")
	f.StringVar(&t.Claims, "claims", "", `extra token claims as a JSON object, e.g. '{"env":"prod"}'`)
	f.StringVar(&t.Resource, "resource", "", "the resource to call")
	f.StringVar(&t.SQL, "sql", "", "a PostgreSQL query")
	f.StringVar(&t.Request, "request", "", "the request as a JSON object (see above)")
	f.StringVar(&t.Now, "now", "", "evaluation time, RFC 3339 (default: now)")
	f.StringVar(&format, "format", "text", "output format: text or json")
	f.StringArrayVar(&trust, "trust", nil, "verify a bundle's signature against this public key")
	f.StringVar(&database, "database", "", "resolve SQL names through this database's catalog (a libpq URL or key=value string), as the gateway does")
	return cmd
}

func writeDecision(w io.Writer, in *celpolicy.Input, d celpolicy.Decision) {
	id := in.Identity
	who := id.Name
	if who == "" {
		who = "(no named identity)"
	}
	fmt.Fprintf(w, "effect     %s\n", strings.ToUpper(string(d.Effect)))
	fmt.Fprintf(w, "caller     %s  subject=%s  groups=[%s]\n", who, id.Subject, strings.Join(id.Groups, ", "))
	fmt.Fprintf(w, "resource   %s\n", in.Resource)
	if len(d.MatchedRules) == 0 {
		fmt.Fprintf(w, "rules      none matched\n")
	}
	for i, m := range d.MatchedRules {
		label := "rules"
		if i > 0 {
			label = ""
		}
		fmt.Fprintf(w, "%-10s %s (%s): %s\n", label, m.Rule, m.Effect, m.Reason)
	}
	for i, r := range d.Reasons {
		label := "reasons"
		if i > 0 {
			label = ""
		}
		fmt.Fprintf(w, "%-10s %s\n", label, r)
	}
	for i, m := range d.Masks {
		label := "masks"
		if i > 0 {
			label = ""
		}
		fmt.Fprintf(w, "%-10s %s -> %s (mask %s)\n", label, m.Target, m.Method, m.Mask)
	}
	for _, a := range d.Approvals {
		fmt.Fprintf(w, "approval   %d of groups [%s] within %s (rule %s)\n", a.Count, strings.Join(a.Groups, ", "), a.Timeout, a.Rule)
	}
	if pr, ok := in.Request.(*celpolicy.PostgresRequest); ok && len(pr.Statements) > 0 {
		fmt.Fprintf(w, "statements\n")
		for i, s := range pr.Statements {
			via := ""
			if s.Via != "" {
				via = " (via " + s.Via + ")"
			}
			fmt.Fprintf(w, "  %d. %s%s\n", i+1, s.Command, via)
			if len(s.Tables) > 0 {
				ts := make([]string, len(s.Tables))
				for j, t := range s.Tables {
					ts[j] = fmt.Sprintf("%s.%s (%s)", t.Schema, t.Name, t.Access)
				}
				fmt.Fprintf(w, "     tables:    %s\n", strings.Join(ts, ", "))
			}
			if len(s.Calls) > 0 {
				cs := make([]string, len(s.Calls))
				unknown := false
				for j, c := range s.Calls {
					switch {
					case c.Volatility == sqlfacts.Unknown:
						cs[j] = c.Name + " (unknown)"
						unknown = true
					case c.Builtin:
						cs[j] = fmt.Sprintf("%s (%s, built in)", c.Name, c.Volatility)
					default:
						cs[j] = fmt.Sprintf("%s.%s (%s)", c.Schema, c.Name, c.Volatility)
					}
				}
				fmt.Fprintf(w, "     functions: %s\n", strings.Join(cs, ", "))
				if unknown {
					fmt.Fprintf(w, "                unknown: not a PostgreSQL 15 built-in; without a database its volatility is unknown and it counts as volatile\n")
				}
			}
			if len(s.ColumnUses) > 0 {
				us := make([]string, len(s.ColumnUses))
				for j, u := range s.ColumnUses {
					us[j] = u.Column + " (" + u.Clause + ")"
				}
				fmt.Fprintf(w, "     uses:      %s\n", strings.Join(us, ", "))
			}
			if s.Command == "UPDATE" || s.Command == "DELETE" || s.Command == "SELECT" {
				fmt.Fprintf(w, "     has_where: %t\n", s.HasWhere)
			}
		}
		writeMasking(w, pr.Masking)
	}
}

// writeMasking shows how each result column would be masked.
func writeMasking(w io.Writer, p *celpolicy.MaskPlan) {
	if p == nil || !p.Masked() {
		return
	}
	fmt.Fprintf(w, "results\n")
	for i, st := range p.Statements {
		fmt.Fprintf(w, "  %d. %s\n", i+1, oneLine(st.Text, 70))
		for _, o := range st.Outputs {
			name := o.Name
			if o.Columns == 0 {
				name += " (columns not known without a database)"
			}
			if o.Method == "" {
				fmt.Fprintf(w, "     %-24s in clear\n", name)
				continue
			}
			srcs := make([]string, len(o.Sources))
			for j, src := range o.Sources {
				srcs[j] = src.Column
				if src.Derived {
					srcs[j] += " (computed)"
				}
			}
			fmt.Fprintf(w, "     %-24s %s (mask %s: %s)\n", name, o.Method, o.Mask, strings.Join(srcs, ", "))
		}
	}
	for _, n := range p.Notes {
		fmt.Fprintf(w, "  note: %s\n", n)
	}
}

// identityHint explains how to name a caller the identity matches, when
// --identity did not resolve: the identity's subject or match expression,
// and the flags of a policy test that names it.
func identityHint(m *bundle.Model, t *bundle.Test) string {
	if t.Identity == "" {
		return ""
	}
	var id *bundle.Identity
	for i := range m.Identities {
		if m.Identities[i].Name == t.Identity {
			id = &m.Identities[i]
		}
	}
	if id == nil {
		return ""
	}
	var b strings.Builder
	if id.Subject != "" {
		fmt.Fprintf(&b, "\n  identity %q is the subject %q of provider %q: give --subject %s", id.Name, id.Subject, id.Provider, id.Subject)
		return b.String()
	}
	fmt.Fprintf(&b, "\n  identity %q matches tokens of provider %q where:\n      %s", id.Name, id.Provider, strings.Join(strings.Fields(id.Match), " "))
	for _, test := range m.Tests {
		if test.Identity != id.Name || test.Subject == "" {
			continue
		}
		fmt.Fprintf(&b, "\n  for example (from test %q):\n      --identity %s --subject %s", test.Name, id.Name, shellQuote(test.Subject))
		if test.Claims != "" {
			fmt.Fprintf(&b, " --claims %s", shellQuote(strings.Join(strings.Fields(test.Claims), " ")))
		}
		return b.String()
	}
	fmt.Fprintf(&b, "\n  give --subject and --claims that satisfy it")
	return b.String()
}

// shellQuote quotes a word for a shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r == '-' || r == '_' || r == '.' || r == '/' || r == ':' || r == '@' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
