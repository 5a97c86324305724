package sqlfacts

import (
	"fmt"
	"slices"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

func quote(name string) string { return bundle.QuoteIdent(name) }

// dynamicSQL are built-in functions that run SQL (or read a table) named
// by their arguments, out of sight of the parse tree.
var dynamicSQL = map[string]bool{
	"query_to_xml": true, "query_to_xmlschema": true, "query_to_xml_and_xmlschema": true,
	"table_to_xml": true, "table_to_xmlschema": true, "table_to_xml_and_xmlschema": true,
	"cursor_to_xml": true, "cursor_to_xmlschema": true,
	"schema_to_xml": true, "schema_to_xmlschema": true, "schema_to_xml_and_xmlschema": true,
	"database_to_xml": true, "database_to_xmlschema": true, "database_to_xml_and_xmlschema": true,
	"ts_stat": true,
	// ts_rewrite(query, select): the second argument is a SELECT it runs
	// (ts_rewrite(query, target, substitute) runs none).
	"ts_rewrite": true,
}

// RunsSQL reports whether a built-in function runs SQL (or reads a table)
// named by its arguments.
func RunsSQL(name string) bool { return dynamicSQL[name] }

// ProtectedFunctions are functions whose results hold other sessions' SQL:
// their outputs get a source of their own (schema.function.column), which
// the gateway's built-in protections mask for callers who are not
// administrators of the resource. "*" matches the function in any schema
// (pg_stat_statements lives wherever its extension was installed).
var ProtectedFunctions = map[string][]string{
	"pg_catalog.pg_stat_get_activity":         {"query"},
	"pg_catalog.pg_stat_get_backend_activity": {"result"},
	"*.pg_stat_statements":                    {"query"},
}

// protectedOutput is the extra source of a protected function's column,
// or "".
func protectedOutput(info *FunctionInfo, col string) string {
	if info == nil {
		return ""
	}
	for _, key := range []string{info.Schema + "." + info.Name, "*." + info.Name} {
		if cols, ok := ProtectedFunctions[key]; ok && slices.Contains(cols, col) {
			return QualifiedName(info.Schema, info.Name) + "." + quote(col)
		}
	}
	return ""
}

// expr returns where an expression's value comes from. clause is the
// clause it decides ("" when it is a value: an output or a written
// value); a computation over columns records them as used, in clause or
// as "expression".
func (w *lw) expr(n *pg.Node, f *frame, clause string) []Source {
	if n == nil || n.Node == nil || w.tooMuch() {
		return nil
	}
	if f == nil {
		f = &frame{}
	}
	computed := func(srcs []Source) []Source {
		c := clause
		if c == "" {
			c = "expression"
		}
		w.use(srcs, c)
		return derive(srcs)
	}
	switch x := n.Node.(type) {
	case *pg.Node_ColumnRef:
		return w.columnRef(x.ColumnRef, f)
	case *pg.Node_AConst, *pg.Node_ParamRef, *pg.Node_SqlvalueFunction, *pg.Node_SetToDefault, *pg.Node_CurrentOfExpr, *pg.Node_GroupingFunc:
		return nil
	case *pg.Node_TypeCast:
		srcs := w.expr(x.TypeCast.Arg, f, clause)
		if preservingCast(x.TypeCast.TypeName) {
			return srcs
		}
		return computed(srcs)
	case *pg.Node_CollateClause:
		return w.expr(x.CollateClause.Arg, f, clause)
	case *pg.Node_CoalesceExpr:
		return w.exprs(x.CoalesceExpr.Args, f, clause)
	case *pg.Node_MinMaxExpr:
		// GREATEST and LEAST return one of their arguments, itself
		// masked; but which one they return compares them, and with a
		// guess among the arguments it answers a question about the
		// value. Every argument is used; the result keeps its sources.
		srcs := w.exprs(x.MinMaxExpr.Args, f, clause)
		c := clause
		if c == "" {
			c = "expression"
		}
		w.use(srcs, c)
		return srcs
	case *pg.Node_CaseExpr:
		return w.caseExpr(x.CaseExpr, f, clause)
	case *pg.Node_NullTest:
		// Whether a value is NULL is not hidden by masks (a masked NULL
		// stays NULL), and testing it raises no error.
		w.expr(x.NullTest.Arg, f, "null test")
		return nil
	case *pg.Node_FuncCall:
		srcs, info := w.call(n, f, clause)
		if info != nil {
			// A protected function's whole result holds what it protects.
			for _, col := range protectedColumns(info) {
				srcs = mergeSources(srcs, []Source{{Column: col, Derived: true}})
			}
		}
		return srcs
	case *pg.Node_SubLink:
		return w.subLink(x.SubLink, f, clause)
	case *pg.Node_AIndirection:
		return w.indirection(x.AIndirection, f, clause)
	case *pg.Node_List:
		return w.exprs(x.List.Items, f, clause)
	case *pg.Node_ResTarget:
		return w.expr(x.ResTarget.Val, f, clause)
	case *pg.Node_SortBy:
		return w.expr(x.SortBy.Node, f, clause)
	}
	// Everything else (operators, AND/OR/NOT, LIKE, IN, BETWEEN, IS
	// DISTINCT FROM, row and array constructors, XML and JSON functions)
	// computes a new value from its operands.
	if a, ok := n.Node.(*pg.Node_AExpr); ok {
		if why := operatorCode(w.cat, a.AExpr.Name); why != "" {
			w.opaque("%s", why)
		}
	}
	return computed(w.children(n, f, clause))
}

// operatorCode says why an operator may run code that is not built in
// ("" when it cannot): one qualified with a schema other than pg_catalog,
// or one whose name is also defined outside pg_catalog, since which of
// same-named operators runs depends on the operand types, which the
// gateway does not know.
func operatorCode(cat Catalog, list []*pg.Node) string {
	q := names(list)
	if len(q) == 0 {
		return ""
	}
	name := q[len(q)-1]
	if len(q) >= 2 {
		if q[len(q)-2] != "pg_catalog" {
			return fmt.Sprintf("operator %s is not built in: the gateway cannot know what it reads", displayName(q[len(q)-2], name))
		}
		return ""
	}
	oc, ok := cat.(OperatorCatalog)
	if !ok {
		return ""
	}
	user, err := oc.UserOperator(name)
	if err != nil {
		return fmt.Sprintf("operator %s could not be looked up (%v)", name, err)
	}
	if user {
		return fmt.Sprintf("operator %s is also defined outside pg_catalog: which one runs depends on the operand types, and one that is not built in runs code the gateway cannot see", name)
	}
	return ""
}

func (w *lw) exprs(list []*pg.Node, f *frame, clause string) []Source {
	var srcs []Source
	for _, a := range list {
		srcs = mergeSources(srcs, w.expr(a, f, clause))
	}
	return srcs
}

// children walks every expression below a node of a kind not handled
// above.
func (w *lw) children(n *pg.Node, f *frame, clause string) []Source {
	var srcs []Source
	m := nodeMessage(n)
	if m == nil {
		return nil
	}
	eachChild(m, func(_ protoreflect.FieldDescriptor, child protoreflect.Message) bool {
		switch c := child.Interface().(type) {
		case *pg.Node:
			srcs = mergeSources(srcs, w.expr(c, f, clause))
		case *pg.TypeName:
		case *pg.SelectStmt:
			for _, o := range w.selectStmt(c, f, f.ctes) {
				srcs = mergeSources(srcs, o.Sources)
			}
		default:
			// A wrapper message (a JSON clause, a window frame): look
			// inside it for expressions.
			eachChild(child, func(_ protoreflect.FieldDescriptor, g protoreflect.Message) bool {
				if gn, ok := g.Interface().(*pg.Node); ok {
					srcs = mergeSources(srcs, w.expr(gn, f, clause))
				}
				return true
			})
		}
		return true
	})
	return srcs
}

// preservingCast: a cast to text or unbounded varchar carries the value
// unchanged (as text), so the mask still applies as to the column. Any
// other cast computes a new value (or truncates it: varchar(4)).
func preservingCast(t *pg.TypeName) bool {
	if t == nil || len(t.Typmods) > 0 || len(t.ArrayBounds) > 0 {
		return false
	}
	q := names(t.Names)
	if len(q) == 0 {
		return false
	}
	if len(q) == 2 && q[0] != "pg_catalog" {
		return false
	}
	switch q[len(q)-1] {
	case "text", "varchar":
		return true
	}
	return false
}

func (w *lw) caseExpr(c *pg.CaseExpr, f *frame, clause string) []Source {
	cond := clause
	if cond == "" {
		cond = "case"
	}
	// CASE x WHEN ... compares x; each WHEN tests.
	w.use(w.expr(c.Arg, f, cond), cond)
	var srcs []Source
	for _, a := range c.Args {
		cw := a.GetCaseWhen()
		if cw == nil {
			continue
		}
		w.use(w.expr(cw.Expr, f, cond), cond)
		srcs = mergeSources(srcs, w.expr(cw.Result, f, clause))
	}
	return mergeSources(srcs, w.expr(c.Defresult, f, clause))
}

func (w *lw) subLink(s *pg.SubLink, f *frame, clause string) []Source {
	outs := w.query(s.Subselect, f, f.ctes)
	var srcs []Source
	for _, o := range outs {
		srcs = mergeSources(srcs, o.Sources)
	}
	switch s.SubLinkType {
	case pg.SubLinkType_EXISTS_SUBLINK:
		return nil
	case pg.SubLinkType_EXPR_SUBLINK:
		return srcs
	}
	// IN, ANY, ALL and row comparisons compare the test expression with
	// the subquery's values; ARRAY(...) builds a new value.
	c := clause
	if c == "" {
		c = "expression"
	}
	srcs = mergeSources(srcs, w.expr(s.Testexpr, f, clause))
	w.use(srcs, c)
	return derive(srcs)
}

// indirection: (row).field selects a column; a subscript computes.
func (w *lw) indirection(ind *pg.A_Indirection, f *frame, clause string) []Source {
	if len(ind.Indirection) == 1 {
		if field := ind.Indirection[0].GetString_(); field != nil {
			if cr := ind.Arg.GetColumnRef(); cr != nil {
				q := names(cr.Fields)
				if len(q) == len(cr.Fields) && len(q) >= 1 {
					alias := q[len(q)-1]
					schema := ""
					if len(q) >= 2 {
						schema = q[len(q)-2]
					}
					if _, isCol, exact := f.columnExact(alias); !isCol || !exact || len(q) > 1 {
						if r := f.rangeFor(schema, alias); r != nil {
							srcs, _, _ := r.lookup(field.Sval)
							return srcs
						}
					}
				}
			}
			// A field of a composite value: its sources, unchanged.
			return w.expr(ind.Arg, f, clause)
		}
	}
	srcs := w.expr(ind.Arg, f, clause)
	for _, i := range ind.Indirection {
		if ai := i.GetAIndices(); ai != nil {
			w.use(w.expr(ai.Lidx, f, clause), "expression")
			w.use(w.expr(ai.Uidx, f, clause), "expression")
		}
	}
	c := clause
	if c == "" {
		c = "expression"
	}
	w.use(srcs, c)
	return derive(srcs)
}

// systemColumns are the columns every table has that catalogs do not
// list; they hold no values of other columns.
var systemColumns = map[string]bool{"ctid": true, "xmin": true, "xmax": true, "cmin": true, "cmax": true, "tableoid": true}

// columnRef resolves a column reference: a column, or a whole row. A name
// that resolves to nothing is a problem: its values' origins are unknown.
func (w *lw) columnRef(cr *pg.ColumnRef, f *frame) []Source {
	q := names(cr.Fields)
	if len(q) != len(cr.Fields) {
		// t.* inside an expression: the whole row.
		if len(q) == 0 {
			var srcs []Source
			for _, it := range f.items {
				srcs = mergeSources(srcs, it.whole())
			}
			return srcs
		}
		schema := ""
		if len(q) >= 2 {
			schema = q[len(q)-2]
		}
		if r := f.rangeFor(schema, q[len(q)-1]); r != nil {
			return r.whole()
		}
		return nil
	}
	switch len(q) {
	case 0:
		return nil
	case 1:
		srcs, ok, exact := f.columnExact(q[0])
		if ok && exact {
			return srcs
		}
		if r := f.rangeFor("", q[0]); r != nil {
			// A relation's name alone is its whole row (unless it is a
			// column, which without a database cannot be ruled out).
			return mergeSources(r.whole(), srcs)
		}
		if !ok && !systemColumns[q[0]] {
			w.problem("column %s is not a column of any relation in scope", quote(q[0]))
		}
		return srcs
	}
	col := q[len(q)-1]
	rel := q[len(q)-2]
	schema := ""
	if len(q) >= 3 {
		schema = q[len(q)-3]
	}
	if r := f.rangeFor(schema, rel); r != nil {
		srcs, ok, _ := r.lookup(col)
		if ok {
			return srcs
		}
		if !systemColumns[col] {
			w.problem("column %s is not a column of %s", quote(col), quote(rel))
		}
		return nil
	}
	// rel.field where rel is a composite column: (row).field.
	if srcs, ok := f.column(rel); ok {
		return srcs
	}
	w.problem("column %s names no relation or column in scope", strings.Join(q, "."))
	return nil
}

// call resolves a function call: its value's sources, and what the catalog
// knows of the function.
func (w *lw) call(n *pg.Node, f *frame, clause string) ([]Source, *FunctionInfo) {
	if f == nil {
		f = &frame{}
	}
	fc := n.GetFuncCall()
	if fc == nil {
		// ROWS FROM items and the like can be other expressions.
		return w.expr(n, f, clause), nil
	}
	q := names(fc.Funcname)
	if len(q) == 0 {
		return nil, nil
	}
	name := q[len(q)-1]
	schema := ""
	if len(q) >= 2 {
		schema = q[len(q)-2]
	}
	info, err := w.cat.Function(schema, name)
	if err != nil {
		w.failure("function %s could not be looked up: %v", displayName(schema, name), err)
	}
	c := clause
	if c == "" {
		c = "expression"
	}
	// What decides the rows an aggregate or window sees.
	w.clause(fc.AggFilter, f, "filter")
	for _, o := range fc.AggOrder {
		w.clause(o, f, "order")
	}
	if fc.Over != nil {
		w.window(fc.Over, f)
	}
	var args []Source
	for _, a := range fc.Args {
		args = mergeSources(args, w.expr(a, f, clause))
	}
	switch {
	case info == nil:
		w.opaque("function %s is not known to the gateway", displayName(schema, name))
	case len(protectedColumns(info)) > 0:
		// pg_stat_statements (an extension's): what it returns is known,
		// and protected.
	case !info.Builtin:
		w.opaque("function %s.%s is not built in: the gateway cannot know what it reads", info.Schema, name)
	case dynamicSQL[name] && !(name == "ts_rewrite" && len(fc.Args) == 3):
		w.opaque("function %s runs SQL (or reads a table) named in its arguments", name)
	}
	if info != nil && info.Volatility != Immutable && info.Volatility != Stable {
		// A function with side effects can store its arguments where
		// they can be read back (a setting, a sequence, a large object,
		// a notification).
		w.flow("function "+displayName(info.Schema, name), args)
	}
	var srcs []Source
	switch {
	case info != nil && info.Builtin && name == "count":
		if fc.AggDistinct {
			w.use(args, "distinct")
		}
		// A count carries no value of its argument.
	case info != nil && info.Builtin && (name == "min" || name == "max") && len(fc.Args) == 1:
		// The result is one of the values, itself masked; but which one
		// compares the rows' values, as ORDER BY does, and with a guess
		// among them answers a question about the value.
		srcs = args
		if fc.AggDistinct {
			w.use(args, "distinct")
		}
		w.use(args, c)
	default:
		if fc.AggDistinct {
			w.use(args, "distinct")
		}
		w.use(args, c)
		srcs = derive(args)
	}
	return srcs, info
}

// protectedColumns lists a protected function's output sources.
func protectedColumns(info *FunctionInfo) []string {
	var out []string
	for _, key := range []string{info.Schema + "." + info.Name, "*." + info.Name} {
		for _, col := range ProtectedFunctions[key] {
			out = append(out, QualifiedName(info.Schema, info.Name)+"."+quote(col))
		}
	}
	return out
}

// matchTarget reports whether a mask target names a column; a target
// may use "*" for the schema.
func matchTarget(target, column string) bool {
	if target == column {
		return true
	}
	if rest, ok := strings.CutPrefix(target, "*."); ok {
		_, after, found := strings.Cut(column, ".")
		return found && after == rest
	}
	return false
}
