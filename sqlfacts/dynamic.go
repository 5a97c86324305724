package sqlfacts

import (
	"fmt"

	pg "github.com/pganalyze/pg_query_go/v6"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// Built-in functions that run SQL or read tables named by their arguments
// (dynamicSQL) read what no table in the statement names:
// query_to_xml('SELECT * FROM payments', …) reads payments, and a rule
// that denies payments by name must see it. So the SQL such a call runs is
// analysed as a statement of its own (Via the function's name), a table
// it reads is listed as one a SELECT reads, and a cursor it reads as a
// FETCH of it. When that cannot be known (an argument that is not a
// constant; a schema's or the database's every table) the request is
// refused: no rule could judge what it reads.

// OpaqueError is a statement whose reach cannot be known from its text:
// it is denied, whatever the policy says.
type OpaqueError struct{ Message string }

func (e *OpaqueError) Error() string { return e.Message }

// dynamicArg says which argument of a dynamicSQL function names what it
// runs, and as what: "query" (SQL text), "table" (a regclass), "cursor"
// (a cursor's name), or "all" (every table of a schema or the database).
func dynamicArg(name string, nargs int) (kind string, arg int) {
	switch name {
	case "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema", "ts_stat":
		return "query", 0
	case "ts_rewrite":
		if nargs == 2 {
			return "query", 1 // ts_rewrite(query, select); the three-argument form runs none
		}
		return "", 0
	case "table_to_xml", "table_to_xmlschema", "table_to_xml_and_xmlschema":
		return "table", 0
	case "cursor_to_xml", "cursor_to_xmlschema":
		return "cursor", 0
	case "schema_to_xml", "schema_to_xmlschema", "schema_to_xml_and_xmlschema",
		"database_to_xml", "database_to_xmlschema", "database_to_xml_and_xmlschema":
		return "all", 0
	}
	return "", 0
}

// DynamicFunctions are the names of the built-ins (in pg_catalog) that
// run SQL or read tables named by their arguments (dynamicArg).
func DynamicFunctions() []string {
	return []string{
		"query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema", "ts_stat", "ts_rewrite",
		"table_to_xml", "table_to_xmlschema", "table_to_xml_and_xmlschema", "cursor_to_xml", "cursor_to_xmlschema",
		"schema_to_xml", "schema_to_xmlschema", "schema_to_xml_and_xmlschema",
		"database_to_xml", "database_to_xmlschema", "database_to_xml_and_xmlschema",
	}
}

// dynamicCall adds what a call of a dynamicSQL built-in reads to the
// analysis: nested statements for the SQL it runs, or the table it reads
// to the calling statement.
func (w *walker) dynamicCall(name string, args []*pg.Node, sc *scope) {
	kind, i := dynamicArg(name, len(args))
	if kind == "" || w.a.err != nil {
		return
	}
	if kind == "all" {
		w.a.err = &OpaqueError{Message: fmt.Sprintf("%s reads every table of a schema or of the database, which no rule about tables can judge; read each table with SELECT", name)}
		return
	}
	text, ok := constantText(args, i)
	if !ok {
		w.a.err = &OpaqueError{Message: fmt.Sprintf("%s runs SQL (or reads a table or cursor) named by an argument that is not a constant, so what it reads cannot be known", name)}
		return
	}
	switch kind {
	case "table":
		w.dynamicTable(name, text, sc)
	case "cursor":
		w.dynamicSQL(name, "FETCH ALL "+bundle.QuoteIdent(text))
	default:
		w.dynamicSQL(name, text)
	}
}

// constantText is args[i] when it is a string constant, cast or not
// ('payments'::regclass).
func constantText(args []*pg.Node, i int) (string, bool) {
	if i >= len(args) {
		return "", false
	}
	n := args[i]
	if tc := n.GetTypeCast(); tc != nil {
		n = tc.Arg
	}
	c := n.GetAConst()
	if c == nil || c.GetSval() == nil {
		return "", false
	}
	return c.GetSval().Sval, true
}

// dynamicSQL analyses the SQL a call runs and adds its statements, via
// the function.
func (w *walker) dynamicSQL(name, text string) {
	if w.a.depth >= maxBodyDepth {
		w.a.err = &OpaqueError{Message: "SQL run by functions is nested too deeply to analyze"}
		return
	}
	nested, _, err := analyze(text, name, w.a.depth+1)
	if err != nil {
		w.a.err = &OpaqueError{Message: fmt.Sprintf("the SQL %s runs could not be analysed (%v)", name, err)}
		return
	}
	w.a.out = append(w.a.out, nested...)
}

// dynamicTable adds the table a call reads, named as regclass input reads
// it (a qualified, possibly quoted, name), to the calling statement.
func (w *walker) dynamicTable(name, text string, sc *scope) {
	tree, err := pg.Parse("SELECT FROM " + text)
	var rv *pg.RangeVar
	if err == nil && len(tree.Stmts) == 1 {
		if sel := tree.Stmts[0].Stmt.GetSelectStmt(); sel != nil && len(sel.FromClause) == 1 && sel.WhereClause == nil {
			rv = sel.FromClause[0].GetRangeVar()
		}
	}
	if rv == nil || rv.Alias != nil || rv.Catalogname != "" {
		w.a.err = &OpaqueError{Message: fmt.Sprintf("%s reads a table named %q, which is not a table name the gateway can read", name, text)}
		return
	}
	w.relation(rv.Schemaname, rv.Relname, "", Read, &scope{})
}
