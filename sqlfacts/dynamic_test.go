package sqlfacts_test

import (
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

// TestDynamicSQLReadsAreFacts: a built-in that runs SQL or reads a table
// named by its arguments reads what no table of the statement names. What
// it reads is a fact (the SQL it runs as a statement of its own, via the
// function; the table it reads as the caller's; a cursor as a FETCH), so
// a rule that denies a table by name sees it; what cannot be known from
// the text is refused.
func TestDynamicSQLReadsAreFacts(t *testing.T) {
	reads := func(sql string) []string {
		t.Helper()
		req := sqlfacts.Query(sql)
		if req.Problem != "" {
			t.Fatalf("%s: %s", sql, req.Problem)
		}
		var out []string
		for _, st := range req.Statements {
			for _, tb := range st.Tables {
				out = append(out, st.Via+":"+st.Command+":"+tb.Schema+"."+tb.Name+":"+tb.Access)
			}
			if st.Command == "FETCH" {
				out = append(out, st.Via+":"+st.Text)
			}
		}
		return out
	}
	for _, c := range []struct {
		sql  string
		want string
	}{
		{"SELECT query_to_xml('SELECT * FROM payments', true, false, '')", "query_to_xml:SELECT:public.payments:read"},
		{"SELECT pg_catalog.query_to_xmlschema('SELECT 1 FROM billing.invoices', true, false, '')", "query_to_xmlschema:SELECT:billing.invoices:read"},
		{"SELECT * FROM ts_stat('SELECT to_tsvector(note) FROM payments')", "ts_stat:SELECT:public.payments:read"},
		{"SELECT ts_rewrite('a'::tsquery, 'SELECT t, s FROM payments')", "ts_rewrite:SELECT:public.payments:read"},
		{"SELECT table_to_xml('payments', true, false, '')", ":SELECT:public.payments:read"},
		{"SELECT table_to_xml('billing.invoices'::regclass, true, false, '')", ":SELECT:billing.invoices:read"},
		{`SELECT table_to_xml('"Odd Name"', true, false, '')`, ":SELECT:public.Odd Name:read"},
		{"SELECT cursor_to_xml('c', 10, true, false, '')", `cursor_to_xml:FETCH ALL c`},
	} {
		if got := reads(c.sql); !strings.Contains(strings.Join(got, " "), c.want) {
			t.Errorf("%s: reads %q, want %q", c.sql, got, c.want)
		}
	}
	// A function of the same name outside pg_catalog is a user function,
	// judged as such.
	if got := reads("SELECT app.query_to_xml('x')"); len(got) != 0 {
		t.Errorf("a user function taken for the built-in: %q", got)
	}
	// The three-argument ts_rewrite runs no SQL.
	if got := reads("SELECT ts_rewrite('a'::tsquery, 'a'::tsquery, 'c'::tsquery)"); len(got) != 0 {
		t.Errorf("ts_rewrite(query, target, substitute): %q", got)
	}
	for _, c := range []struct{ sql, why string }{
		{"SELECT pg_catalog.ts_rewrite(to_tsquery('a'), $1)", "not a constant"},
		{"SELECT query_to_xml(current_setting('app.q'), true, false, '')", "not a constant"},
		{"SELECT table_to_xml(16390::regclass, true, false, '')", "not a constant"},
		{"SELECT table_to_xml('payments p', true, false, '')", "not a table name"},
		{"SELECT schema_to_xml('public', true, false, '')", "every table"},
		{"SELECT database_to_xml(true, false, '')", "every table"},
		{"SELECT query_to_xml('SELEC 1', true, false, '')", "could not be analysed"},
	} {
		req := sqlfacts.Query(c.sql)
		if !strings.HasPrefix(req.Problem, sqlfacts.Refused) || !strings.Contains(req.Problem, c.why) {
			t.Errorf("%s: problem %q, want a refusal saying %q", c.sql, req.Problem, c.why)
		}
	}
}

// TestDynamicFunctionsAreTheDynamicArgs: the gateway looks for views that
// call DynamicFunctions; each must be one the analysis knows, refusing a
// call whose argument is not a constant.
func TestDynamicFunctionsAreTheDynamicArgs(t *testing.T) {
	for _, name := range sqlfacts.DynamicFunctions() {
		req := sqlfacts.Query("SELECT pg_catalog." + name + "(current_setting('a'), current_setting('b'))")
		if !strings.HasPrefix(req.Problem, sqlfacts.Refused) {
			t.Errorf("%s is listed, but a call of it with arguments that are not constants is not refused: %q", name, req.Problem)
		}
	}
}
