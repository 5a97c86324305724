package devenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Session is one scripted psql session: one identity, one resource, one
// psql process, its statements in order.
type Session struct {
	Title    string
	Identity string
	Resource string
	Steps    []Step
}

// Step is one statement and what must come of it.
type Step struct {
	// Says what the step shows, printed above it.
	Says string
	SQL  string
	// Denied is a substring of the error the gateway must answer with;
	// empty means the statement must succeed.
	Denied string
	// Want are substrings the output must contain (masked values, a
	// command tag); Never are substrings it must not (the raw values).
	Want, Never []string
}

// QuickstartScript is the demo on the embedded quickstart.
var QuickstartScript = []Session{
	{
		Title:    "billing-service on orders: what its policy allows, what the guardrails stop",
		Identity: "billing-service",
		Resource: "orders",
		Steps: []Step{
			{
				Says:  "An allowed SELECT. Emails come back partly masked and card numbers redacted, by column origin.",
				SQL:   "SELECT id, name, email, card_number FROM customers ORDER BY id;",
				Want:  []string{"j***@example.com", "[REDACTED]", "Jane Doe"},
				Never: []string{"jane.doe@example.com", "4111 1111"},
			},
			{
				Says:  "An alias does not escape the mask: it follows the column, not the name.",
				SQL:   "SELECT c.card_number AS not_a_card FROM customers c WHERE c.id = 2;",
				Want:  []string{"[REDACTED]"},
				Never: []string{"5500 0000"},
			},
			{
				Says:   "A DROP, even behind a comment, is denied by the guardrails before it reaches PostgreSQL.",
				SQL:    "/* tidy up */ DROP TABLE customers;",
				Denied: "guardrails/no-drop-or-truncate",
			},
			{
				Says:   "A DELETE without a WHERE clause is denied.",
				SQL:    "DELETE FROM billing.invoices;",
				Denied: "guardrails/no-unfiltered-writes",
			},
			{
				Says: "The same DELETE with a WHERE clause is billing's to make.",
				SQL:  "DELETE FROM billing.invoices WHERE order_id = 3;",
				Want: []string{"DELETE 1"},
			},
			{
				Says:   "Billing may write invoices, but not copy card numbers into one to read them back: refused before it runs.",
				SQL:    "INSERT INTO billing.invoices (order_id, amount, memo) SELECT 1, 0, card_number FROM customers WHERE id = 1 RETURNING memo;",
				Denied: "would be written to billing.invoices.memo",
				Never:  []string{"4111 1111"},
			},
		},
	},
	{
		Title:    "analytics-job on orders: read-only",
		Identity: "analytics-job",
		Resource: "orders",
		Steps: []Step{
			{
				Says:  "Reads are allowed; the same masks apply.",
				SQL:   "SELECT o.id, o.total, c.email FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.total > 100 ORDER BY o.id;",
				Want:  []string{"r***@example.org", "980.00"},
				Never: []string{"ravi@example.org"},
			},
			{
				Says:   "A write is denied by default: no rule allows it.",
				SQL:    "UPDATE orders SET total = 0 WHERE id = 1;",
				Denied: "no rule allows",
			},
			{
				Says: "The session goes on after a denial. SELECT 1, count(*) and now() carry no masked value and pass.",
				SQL:  "SELECT 1 AS one, (SELECT count(*) FROM orders) AS orders, now() > '2020-01-01' AS recent;",
				Want: []string{"1 |      4 | t"},
			},
			{
				Says: "psql's \\dt works: its catalog queries call only functions PostgreSQL declares free of side effects.",
				SQL:  "\\dt",
				Want: []string{"customers", "orders", "payments"},
			},
			{
				Says: "So does \\d customers.",
				SQL:  "\\d customers",
				Want: []string{"card_number", "customers_pkey"},
			},
			{
				Says:   "A filter on a masked column would answer yes or no about its value, a digit at a time: refused.",
				SQL:    "SELECT count(*) FROM customers WHERE card_number LIKE '4111%';",
				Denied: "may not be used in a WHERE condition",
			},
			{
				Says:  "Planner statistics sample every column's values; for a caller with masks they are redacted.",
				SQL:   "SELECT attname, histogram_bounds FROM pg_stats WHERE tablename = 'customers' AND attname IN ('email', 'card_number') ORDER BY 1;",
				Want:  []string{"[REDACTED]"},
				Never: []string{"4111 1111", "jane.doe@", "ravi@"},
			},
			{
				Says:   "A function with side effects is not a read: PostgreSQL declares pg_terminate_backend VOLATILE.",
				SQL:    "SELECT pg_terminate_backend(pg_backend_pid());",
				Denied: "no rule allows",
			},
			{
				Says: "The session runs as the database role analytics (upstream_roles), which it cannot change...",
				SQL:  "SELECT current_user;",
				Want: []string{"analytics"},
			},
			{
				Says:   "...and the database's grants apply on top of the policy: analytics may not read payments there.",
				SQL:    "SELECT count(*) FROM payments;",
				Denied: "permission denied for table payments",
			},
		},
	},
}

// StepResult is what a step produced.
type StepResult struct {
	Step
	Output string
	// Problem is empty when the step went as the script says.
	Problem string
}

// marker ends each step's output: psql echoes it after the statement, so
// the combined output splits into one piece per step.
const marker = "--gatehouse-dev-step-end--"

// RunScript runs the sessions with the real psql through the gateway,
// printing each statement and its output to w, and returns what every step
// did. It fails when psql cannot run; a step that went differently from the
// script is reported in its StepResult.
func (e *Env) RunScript(ctx context.Context, sessions []Session, w io.Writer, color bool) ([]StepResult, error) {
	paint := func(code, s string) string { return Paint(color, code, s) }
	psql, err := exec.LookPath("psql")
	if err != nil {
		return nil, fmt.Errorf("dev: psql is needed for the scripted session: %w (apt package postgresql-client-15)", err)
	}
	var results []StepResult
	for i, s := range sessions {
		tok, err := e.Token(s.Identity)
		if err != nil {
			return nil, err
		}
		c, _ := e.Caller(s.Identity)
		fmt.Fprintf(w, "\n%s\n", paint("1", fmt.Sprintf("%d. %s", i+1, s.Title)))
		fmt.Fprintf(w, "   $ PGPASSWORD=$(cat %s) psql \"%s\"\n", c.TokenFile, e.ConnString(s.Resource, s.Identity))
		var script strings.Builder
		for _, st := range s.Steps {
			fmt.Fprintf(&script, "%s\n\\echo %s\n", st.SQL, marker)
		}
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		cmd := exec.CommandContext(ctx, psql, "-X", "-P", "pager=off", e.ConnString(s.Resource, s.Identity))
		cmd.Env = append(os.Environ(), "PGPASSWORD="+tok, "PGCONNECT_TIMEOUT=10", "PGAPPNAME=gatehouse-dev")
		cmd.Stdin = strings.NewReader(script.String())
		// One pipe for both: psql flushes before each message, so results
		// and errors stay in statement order.
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err = cmd.Run()
		cancel()
		if err != nil {
			return nil, fmt.Errorf("dev: psql as %s: %w\n%s", s.Identity, err, out.String())
		}
		pieces := strings.Split(out.String(), marker+"\n")
		for j, st := range s.Steps {
			r := StepResult{Step: st}
			if j < len(pieces) {
				r.Output = pieces[j]
			}
			r.Problem = check(st, r.Output)
			results = append(results, r)
			fmt.Fprintf(w, "\n   %s\n   %s=> %s\n", paint("2", "# "+st.Says), s.Identity, st.SQL)
			for _, line := range strings.Split(strings.TrimRight(r.Output, "\n"), "\n") {
				fmt.Fprintf(w, "   %s\n", line)
			}
			if r.Problem != "" {
				fmt.Fprintf(w, "   %s\n", paint("31", "!! not what the demo expects: "+r.Problem))
			}
		}
	}
	return results, nil
}

func check(st Step, out string) string {
	failed := strings.Contains(out, "ERROR:")
	switch {
	case st.Denied != "" && !failed:
		return "the statement was not denied"
	case st.Denied != "" && !strings.Contains(out, st.Denied):
		return fmt.Sprintf("the error does not name %q", st.Denied)
	case st.Denied == "" && failed:
		return "the statement failed"
	}
	for _, s := range st.Want {
		if !strings.Contains(out, s) {
			return fmt.Sprintf("the output lacks %q", s)
		}
	}
	for _, s := range st.Never {
		if strings.Contains(out, s) {
			return fmt.Sprintf("the output shows %q, which must be masked", s)
		}
	}
	return ""
}

// Failed returns an error listing the steps that did not go as scripted.
func Failed(results []StepResult) error {
	var errs []error
	for _, r := range results {
		if r.Problem != "" {
			errs = append(errs, fmt.Errorf("%q: %s", r.SQL, r.Problem))
		}
	}
	return errors.Join(errs...)
}

// Check is a query run directly on the database, around the gateway, to
// show what did and did not reach it.
type Check struct {
	Resource string
	SQL      string
	Want     int64
	Says     string
}

// QuickstartChecks follow QuickstartScript.
var QuickstartChecks = []Check{
	{Resource: "orders", SQL: "SELECT count(*) FROM customers", Want: 3,
		Says: "customers still has its 3 rows: the DROP never reached PostgreSQL"},
	{Resource: "orders", SQL: "SELECT count(*) FROM billing.invoices", Want: 2,
		Says: "billing.invoices has 2 of its 3 rows: the unfiltered DELETE never ran, the filtered one did"},
	{Resource: "orders", SQL: "SELECT count(*) FROM billing.invoices WHERE memo IS NOT NULL", Want: 0,
		Says: "no invoice memo holds a card number: the copy was refused before it ran"},
	{Resource: "orders", SQL: "SELECT count(*) FROM orders WHERE total = 0", Want: 0,
		Says: "no order total was zeroed: analytics' UPDATE never ran"},
	{Resource: "orders", SQL: "SELECT count(*) FROM payments WHERE order_id = 2", Want: 1,
		Says: "the payment for order 2 was written once a DBA approved it"},
}

// RunChecks runs the checks as the database superuser, straight to
// PostgreSQL, and reports each; it returns an error naming the checks whose
// count differs.
func (e *Env) RunChecks(ctx context.Context, checks []Check, w io.Writer) error {
	var errs []error
	for _, c := range checks {
		db := c.Resource
		for _, r := range e.Model.Postgres {
			if r.Name == c.Resource {
				db = r.Database
			}
		}
		conn, err := e.PG.Connect(db)
		if err != nil {
			return fmt.Errorf("dev: %w", err)
		}
		var n int64
		err = conn.QueryRow(ctx, c.SQL).Scan(&n)
		_ = conn.Close(ctx)
		if err != nil {
			return fmt.Errorf("dev: %s: %w", c.SQL, err)
		}
		mark := "ok"
		if n != c.Want {
			mark = fmt.Sprintf("UNEXPECTED (%d, the demo expects %d)", n, c.Want)
			errs = append(errs, fmt.Errorf("%s = %d, want %d", c.SQL, n, c.Want))
		}
		fmt.Fprintf(w, "   %-45s -> %d  %s: %s\n", c.SQL, n, mark, c.Says)
	}
	return errors.Join(errs...)
}

// Paint wraps s in the ANSI SGR code (1 bold, 2 dim, 31 red, ...) when color
// is set.
func Paint(color bool, code, s string) string {
	if !color {
		return s
	}
	return "\033[" + code + "m" + s + "\033[0m"
}
