package sqlfacts

import (
	"fmt"
	"slices"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"
)

// Lineage is what a statement does with column values: where each result
// column's values come from, which columns it tests, sorts or groups by,
// and which it copies somewhere else. Masks are decided from it before the
// statement reaches the database.
type Lineage struct {
	// Outputs are the result columns, in order.
	Outputs []Output `json:"outputs,omitempty"`
	// Uses are columns whose values decide something other than a result
	// value: a filter, a join, an order, a group, a computation.
	Uses []Use `json:"uses,omitempty"`
	// Flows are values written somewhere the caller may read them back: a
	// table column, a new table or view, a volatile function's argument.
	Flows []Flow `json:"flows,omitempty"`
	// Relations read, including through views (schema.name).
	Relations []string `json:"relations,omitempty"`
	// Alters names relations whose definition the statement changes
	// (ALTER TABLE, CREATE INDEX, CREATE TRIGGER, RULE or POLICY,
	// partitions, CLUSTER): a route for moving or exposing column values.
	Alters []string `json:"alters,omitempty"`
	// Opaque says why some values' origins cannot be known: a function
	// that is not built in, or one that runs SQL given as text.
	Opaque []string `json:"opaque,omitempty"`
	// Problems are names that could not be resolved.
	Problems []string `json:"problems,omitempty"`
	// Failures are lookups the catalog could not answer (the database
	// unreachable): nothing about the statement can be trusted.
	Failures []string `json:"failures,omitempty"`
	// Creates lists relations the statement creates, with their columns'
	// sources, so that a session can resolve them before the database's
	// catalog can see them (temporary ones never appear there).
	Creates []Created `json:"creates,omitempty"`
	// Defines is set by PREPARE and DECLARE: the statement is kept under
	// a name, and EXECUTE or FETCH of that name returns its rows.
	Defines *Named `json:"defines,omitempty"`
	// Runs is set by EXECUTE and FETCH: the rows are those of the named
	// statement, whose outputs are already filled in when the session
	// knew the name.
	Runs *Named `json:"runs,omitempty"`
}

// Output is one result column, or for a * over a relation whose columns are
// not known, several (Columns 0).
type Output struct {
	Name    string   `json:"name"`
	Sources []Source `json:"sources,omitempty"`
	Columns int      `json:"columns"`
}

// Source is a column whose values reach an output, unchanged or computed
// (Derived).
type Source struct {
	Column  string `json:"column"`
	Derived bool   `json:"derived,omitempty"`
}

// Use is a column whose values decide something: Clause is where, join,
// group, having, order, window, distinct, set (UNION, INTERSECT or
// EXCEPT without ALL), case, filter, limit, expression (a computation), or
// index, returning, merge and the like.
type Use struct {
	Column string `json:"column"`
	Clause string `json:"clause"`
}

// Flow is data written somewhere: Into is schema.table.column, a new
// relation's column, or "function NAME" for a volatile function's argument.
type Flow struct {
	Into    string   `json:"into"`
	Sources []Source `json:"sources"`
}

// Created is a relation a statement creates.
type Created struct {
	Schema string `json:"schema"`
	Name   string `json:"name"`
	Kind   string `json:"kind"`
	Temp   bool   `json:"temp,omitempty"`
	// Columns and their sources.
	Columns []Output `json:"columns"`
}

// Named is a prepared statement or cursor.
type Named struct {
	Kind  string `json:"kind"` // "prepared statement" or "cursor"
	Name  string `json:"name"`
	Query string `json:"query,omitempty"`
}

// Session resolves what a session defined earlier: prepared statements and
// cursors by name (their SQL text), and relations it created. Nil means no
// session (eval).
type Session interface {
	Named(kind, name string) (query string, ok bool)
}

// maxViewDepth bounds how deeply views are expanded inside one another.
const maxViewDepth = 16

// LineageOf resolves the lineage of each statement in sql, in order, with
// the given catalog. A statement that does not parse is an error.
func LineageOf(sql string, cat Catalog, sess Session) ([]Lineage, error) {
	if len(sql) > MaxSQLBytes {
		return nil, ErrTooLarge
	}
	if strings.IndexByte(sql, 0) >= 0 {
		return nil, &ParseError{Message: "SQL text contains a NUL byte"}
	}
	if len(sql) > depthCheckBytes {
		depth, err := estimateNesting(sql)
		if err != nil {
			return nil, parseError(err)
		}
		if depth > MaxNesting {
			return nil, &ParseError{Message: fmt.Sprintf("expressions nest more than %d levels deep", MaxNesting)}
		}
	}
	tree, err := pg.Parse(sql)
	if err != nil {
		return nil, parseError(err)
	}
	out := make([]Lineage, 0, len(tree.Stmts))
	for _, raw := range tree.Stmts {
		w := &lw{cat: cat, sess: sess, version: tree.Version, rels: map[string]*RelationInfo{}}
		w.statement(raw.Stmt)
		out = append(out, w.out)
	}
	return out, nil
}

// lw walks one statement.
type lw struct {
	cat     Catalog
	sess    Session
	version int32
	out     Lineage
	// view > 0 while walking a view's definition: its filters and joins
	// are the view owner's, fixed, and are not the caller's uses.
	view int
	// depth counts nested query levels, against runaway recursion.
	depth int
	// steps counts the work done: recursive CTEs inside recursive CTEs
	// are walked again and again, and a statement built to make that
	// explode is refused instead.
	steps int
	rels  map[string]*RelationInfo
	// byConstant: a constant stands where PostgreSQL reads a position,
	// and pg_query's normalize replaces it with a placeholder
	// (DISTINCT ON (2), ROLLUP (2), GROUP BY (1, 2)), so texts of one
	// normalized shape may use different columns, and the statement's
	// facts must not be cached by shape. Positions in ORDER BY and GROUP
	// BY proper are kept by normalize (TestNormalizeKeepsPositions).
	byConstant bool
}

// maxSteps bounds the expressions and queries walked for one statement.
const maxSteps = 1 << 18

// tooMuch counts a step and reports whether the budget is spent.
func (w *lw) tooMuch() bool {
	w.steps++
	if w.steps == maxSteps {
		w.problem("the statement is too complex to follow its values (more than %d steps)", maxSteps)
	}
	return w.steps >= maxSteps
}

func (w *lw) problem(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if !slices.Contains(w.out.Problems, msg) {
		w.out.Problems = append(w.out.Problems, msg)
	}
}

func (w *lw) failure(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	w.problem("%s", msg)
	if !slices.Contains(w.out.Failures, msg) {
		w.out.Failures = append(w.out.Failures, msg)
	}
}

func (w *lw) opaque(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if !slices.Contains(w.out.Opaque, msg) {
		w.out.Opaque = append(w.out.Opaque, msg)
	}
}

// use records columns whose values decide something.
func (w *lw) use(srcs []Source, clause string) {
	if w.view > 0 {
		return
	}
	for _, s := range srcs {
		u := Use{Column: s.Column, Clause: clause}
		if !slices.Contains(w.out.Uses, u) {
			w.out.Uses = append(w.out.Uses, u)
		}
	}
}

func (w *lw) flow(into string, srcs []Source) {
	if len(srcs) == 0 || w.view > 0 {
		return
	}
	w.out.Flows = append(w.out.Flows, Flow{Into: into, Sources: srcs})
}

func (w *lw) alters(schema, name string) {
	if name == "" {
		return
	}
	r := w.relation(schema, name)
	if schema == "" {
		if r != nil {
			schema, name = r.Schema, r.Name
		} else {
			schema = "public"
		}
	}
	altered := []string{QualifiedName(schema, name)}
	if r != nil {
		// A partition's or child's inherited columns are its ancestors':
		// changing it (a generated column over one) changes what they
		// hold.
		altered = append(altered, r.Ancestors...)
	}
	for _, q := range altered {
		if !slices.Contains(w.out.Alters, q) {
			w.out.Alters = append(w.out.Alters, q)
		}
	}
}

// relation asks the catalog, once per statement and name.
func (w *lw) relation(schema, name string) *RelationInfo {
	key := schema + "\x00" + name
	if r, ok := w.rels[key]; ok {
		return r
	}
	r, err := w.cat.Relation(schema, name)
	if err != nil {
		w.failure("relation %s could not be looked up: %v", displayName(schema, name), err)
		r = nil
	}
	w.rels[key] = r
	return r
}

func displayName(schema, name string) string {
	if schema == "" {
		return name
	}
	return schema + "." + name
}

// statement walks one top-level (or wrapped) statement.
func (w *lw) statement(n *pg.Node) {
	if n == nil {
		return
	}
	switch x := n.Node.(type) {
	case *pg.Node_SelectStmt:
		w.out.Outputs = w.selectInto(x.SelectStmt, nil, nil)
	case *pg.Node_InsertStmt:
		w.out.Outputs = w.insert(x.InsertStmt, nil, nil)
	case *pg.Node_UpdateStmt:
		w.out.Outputs = w.update(x.UpdateStmt, nil, nil)
	case *pg.Node_DeleteStmt:
		w.out.Outputs = w.delete(x.DeleteStmt, nil, nil)
	case *pg.Node_MergeStmt:
		w.out.Outputs = w.merge(x.MergeStmt, nil, nil)
	case *pg.Node_CreateTableAsStmt:
		w.createTableAs(x.CreateTableAsStmt)
	case *pg.Node_ViewStmt:
		w.createView(x.ViewStmt)
	case *pg.Node_ExplainStmt:
		w.nested(x.ExplainStmt.Query)
		w.out.Outputs = []Output{{Name: "QUERY PLAN", Columns: 1}}
	case *pg.Node_PrepareStmt:
		w.nested(x.PrepareStmt.Query)
		w.out.Defines = &Named{Kind: "prepared statement", Name: x.PrepareStmt.Name, Query: w.deparse(x.PrepareStmt.Query)}
	case *pg.Node_DeclareCursorStmt:
		w.nested(x.DeclareCursorStmt.Query)
		w.out.Defines = &Named{Kind: "cursor", Name: x.DeclareCursorStmt.Portalname, Query: w.deparse(x.DeclareCursorStmt.Query)}
	case *pg.Node_ExecuteStmt:
		for _, p := range x.ExecuteStmt.Params {
			w.use(w.expr(p, nil, "execute"), "execute")
		}
		w.runs("prepared statement", x.ExecuteStmt.Name)
	case *pg.Node_FetchStmt:
		if !x.FetchStmt.Ismove {
			w.runs("cursor", x.FetchStmt.Portalname)
		}
	case *pg.Node_CopyStmt:
		w.copy(x.CopyStmt)
	case *pg.Node_CreateStmt:
		w.create(x.CreateStmt)
	default:
		w.ddl(n)
	}
}

// nested walks a statement inside another (EXPLAIN, PREPARE, DECLARE):
// its uses and flows count, its outputs are not this statement's.
func (w *lw) nested(n *pg.Node) {
	saved := w.out.Outputs
	w.statement(n)
	w.out.Outputs = saved
}

func (w *lw) runs(kind, name string) {
	w.out.Runs = &Named{Kind: kind, Name: name}
	if w.sess == nil {
		w.problem("%s %q was defined earlier in the session, which is not known here", kind, name)
		return
	}
	q, ok := w.sess.Named(kind, name)
	if !ok {
		w.problem("%s %q was not defined through the gateway in this session", kind, name)
		return
	}
	w.out.Runs.Query = q
	if w.depth > maxViewDepth {
		w.problem("%s %q is nested too deeply", kind, name)
		return
	}
	tree, err := pg.Parse(q)
	if err != nil || len(tree.Stmts) != 1 {
		w.problem("%s %q could not be analyzed again", kind, name)
		return
	}
	// Its uses and flows were judged when it was defined.
	w.view++
	w.depth++
	saved := w.out.Defines
	w.statement(tree.Stmts[0].Stmt)
	w.out.Defines = saved
	w.depth--
	w.view--
}

func (w *lw) deparse(n *pg.Node) string {
	if n == nil {
		return ""
	}
	out, err := pg.Deparse(&pg.ParseResult{Version: w.version, Stmts: []*pg.RawStmt{{Stmt: n}}})
	if err != nil {
		return ""
	}
	return out
}

// with binds a WITH clause's names. A recursive CTE is resolved until its
// columns' sources stop growing.
func (w *lw) with(wc *pg.WithClause, parent *frame, ctes *cteScope) *cteScope {
	if wc == nil {
		return ctes
	}
	sc := &cteScope{names: map[string]*lrange{}, parent: ctes}
	for _, c := range wc.Ctes {
		cte := c.GetCommonTableExpr()
		if cte == nil {
			continue
		}
		var outs []Output
		if wc.Recursive {
			// The first pass sees the columns of the non-recursive term,
			// so that the recursive term's names resolve.
			seed := &lrange{alias: cte.Ctename}
			if sel := cte.Ctequery.GetSelectStmt(); sel != nil && sel.Op == pg.SetOperation_SETOP_UNION && sel.Larg != nil {
				seed = outputRange(cte.Ctename, w.selectStmt(sel.Larg, parent, sc), cte.Aliascolnames)
			}
			sc.names[cte.Ctename] = seed
			for i := 0; i < 4; i++ {
				next := w.query(cte.Ctequery, parent, sc)
				done := sameOutputs(outs, next)
				outs = next
				sc.names[cte.Ctename] = outputRange(cte.Ctename, outs, cte.Aliascolnames)
				if done {
					break
				}
			}
		} else {
			outs = w.query(cte.Ctequery, parent, sc)
		}
		sc.names[cte.Ctename] = outputRange(cte.Ctename, outs, cte.Aliascolnames)
		w.searchCycle(cte, sc.names[cte.Ctename], parent)
	}
	return sc
}

// searchCycle walks a recursive CTE's SEARCH and CYCLE clauses. SEARCH
// orders rows by its columns (as ORDER BY does, through the sequence
// column it adds), and CYCLE compares its columns with those of the rows
// on each row's path (as DISTINCT does): with a guess among the rows,
// either answers a question about a value. The columns they add (the
// sequence, the cycle mark and the path) are computed from theirs.
func (w *lw) searchCycle(cte *pg.CommonTableExpr, r *lrange, parent *frame) {
	cols := func(list []*pg.Node, clause string) []Source {
		var srcs []Source
		for _, name := range names(list) {
			s, ok, _ := r.lookup(name)
			if !ok {
				w.problem("column %s of the %s clause is not a column of %s", quote(name), clause, quote(cte.Ctename))
				continue
			}
			srcs = mergeSources(srcs, s)
		}
		return srcs
	}
	if sc := cte.SearchClause; sc != nil {
		srcs := cols(sc.SearchColList, "SEARCH")
		w.use(srcs, "order")
		r.cols = append(r.cols, lcol{name: sc.SearchSeqColumn, srcs: derive(srcs)})
	}
	if cc := cte.CycleClause; cc != nil {
		srcs := cols(cc.CycleColList, "CYCLE")
		w.use(srcs, "distinct")
		mark := mergeSources(derive(srcs), derive(w.expr(cc.CycleMarkValue, parent, "")))
		mark = mergeSources(mark, derive(w.expr(cc.CycleMarkDefault, parent, "")))
		r.cols = append(r.cols,
			lcol{name: cc.CycleMarkColumn, srcs: mark},
			lcol{name: cc.CyclePathColumn, srcs: derive(srcs)})
	}
}

func sameOutputs(a, b []Output) bool {
	return slices.EqualFunc(a, b, func(x, y Output) bool {
		return x.Name == y.Name && slices.Equal(x.Sources, y.Sources)
	})
}

// outputRange makes a range from a subquery's outputs, renamed by an
// alias's column list.
func outputRange(alias string, outs []Output, colnames []*pg.Node) *lrange {
	r := &lrange{alias: alias}
	for i, o := range outs {
		name := o.Name
		if i < len(colnames) {
			if s := colnames[i].GetString_(); s != nil {
				name = s.Sval
			}
		}
		if o.Columns == 0 {
			// Unknown width: an open part. Its known columns still
			// resolve by name.
			r.open = true
			r.base = strings.TrimSuffix(o.Name, ".*")
		}
		r.cols = append(r.cols, lcol{name: name, srcs: o.Sources})
	}
	return r
}

// query walks any statement that returns rows (a CTE's or subquery's),
// with parent as the enclosing query level.
func (w *lw) query(n *pg.Node, parent *frame, ctes *cteScope) []Output {
	if n == nil || w.tooMuch() {
		return nil
	}
	w.depth++
	defer func() { w.depth-- }()
	if w.depth > MaxNesting {
		w.problem("queries nest too deeply")
		return nil
	}
	switch x := n.Node.(type) {
	case *pg.Node_SelectStmt:
		return w.selectInto(x.SelectStmt, parent, ctes)
	case *pg.Node_InsertStmt:
		return w.insert(x.InsertStmt, parent, ctes)
	case *pg.Node_UpdateStmt:
		return w.update(x.UpdateStmt, parent, ctes)
	case *pg.Node_DeleteStmt:
		return w.delete(x.DeleteStmt, parent, ctes)
	case *pg.Node_MergeStmt:
		return w.merge(x.MergeStmt, parent, ctes)
	}
	w.problem("a %s cannot be analyzed here", strings.TrimPrefix(fmt.Sprintf("%T", n.Node), "*pg_query.Node_"))
	return nil
}

// selectInto is a SELECT, with SELECT ... INTO's table creation.
func (w *lw) selectInto(s *pg.SelectStmt, parent *frame, ctes *cteScope) []Output {
	outs := w.selectStmt(s, parent, ctes)
	if s.IntoClause != nil && s.IntoClause.Rel != nil {
		w.into(s.IntoClause, outs, "table")
		return nil
	}
	return outs
}

func (w *lw) selectStmt(s *pg.SelectStmt, parent *frame, ctes *cteScope) []Output {
	ctes = w.with(s.WithClause, parent, ctes)
	var outs []Output
	f := &frame{parent: parent, ctes: ctes}
	switch {
	case s.Op != pg.SetOperation_SETOP_NONE && s.Op != pg.SetOperation_SET_OPERATION_UNDEFINED:
		l := w.selectStmt(s.Larg, parent, ctes)
		r := w.selectStmt(s.Rarg, parent, ctes)
		outs = l
		for i := range outs {
			if i < len(r) {
				outs[i].Sources = mergeSources(slices.Clone(outs[i].Sources), r[i].Sources)
			}
		}
		if !(s.Op == pg.SetOperation_SETOP_UNION && s.All) {
			// Removing duplicates, or keeping only rows found (or not
			// found) in both, compares values: row counts answer
			// questions about them.
			for _, o := range outs {
				w.use(o.Sources, "set")
			}
		}
	case len(s.ValuesLists) > 0:
		for _, row := range s.ValuesLists {
			list := row.GetList()
			if list == nil {
				continue
			}
			for i, item := range list.Items {
				srcs := w.expr(item, f, "")
				if i >= len(outs) {
					outs = append(outs, Output{Name: fmt.Sprintf("column%d", i+1), Columns: 1})
				}
				outs[i].Sources = mergeSources(outs[i].Sources, srcs)
			}
		}
	default:
		for _, item := range s.FromClause {
			if r := w.fromItem(item, f); r != nil {
				f.items = append(f.items, r)
			}
		}
		outs = w.targets(s.TargetList, f)
		f.outputs = outs
		w.clause(s.WhereClause, f, "where")
		for _, g := range s.GroupClause {
			w.grouping(g, f, true)
		}
		w.clause(s.HavingClause, f, "having")
		for _, wd := range s.WindowClause {
			w.window(wd.GetWindowDef(), f)
		}
		w.distinct(s.DistinctClause, f)
	}
	f.outputs = outs
	for _, sb := range s.SortClause {
		w.sortItem(sb, f, "order")
	}
	w.clause(s.LimitCount, f, "limit")
	w.clause(s.LimitOffset, f, "limit")
	return outs
}

// targets resolves a target list (or RETURNING list).
func (w *lw) targets(list []*pg.Node, f *frame) []Output {
	var outs []Output
	for _, t := range list {
		rt := t.GetResTarget()
		if rt == nil || rt.Val == nil {
			continue
		}
		if stars := w.star(rt.Val, f); stars != nil {
			outs = append(outs, stars...)
			continue
		}
		srcs := w.expr(rt.Val, f, "")
		name := rt.Name
		if name == "" {
			name = outputName(rt.Val)
		}
		outs = append(outs, Output{Name: name, Sources: srcs, Columns: 1})
	}
	return outs
}

// star expands * and t.* in a target list; nil when n is not a star.
func (w *lw) star(n *pg.Node, f *frame) []Output {
	cr := n.GetColumnRef()
	if cr == nil || len(cr.Fields) == 0 || cr.Fields[len(cr.Fields)-1].GetAStar() == nil {
		return nil
	}
	quals := names(cr.Fields[:len(cr.Fields)-1])
	if len(quals) == 0 {
		var outs []Output
		for _, it := range f.items {
			outs = append(outs, it.expand()...)
		}
		if outs == nil {
			outs = []Output{}
		}
		return outs
	}
	schema, alias := "", quals[len(quals)-1]
	if len(quals) >= 2 {
		schema = quals[len(quals)-2]
	}
	if r := f.rangeFor(schema, alias); r != nil {
		return r.expand()
	}
	w.problem("%s.* names no relation of the query", strings.Join(quals, "."))
	return []Output{{Name: strings.Join(quals, ".") + ".*", Columns: 0}}
}

// outputName is the column name PostgreSQL gives an unnamed target.
func outputName(n *pg.Node) string {
	switch x := n.Node.(type) {
	case *pg.Node_ColumnRef:
		if q := names(x.ColumnRef.Fields); len(q) > 0 {
			return q[len(q)-1]
		}
	case *pg.Node_FuncCall:
		if q := names(x.FuncCall.Funcname); len(q) > 0 {
			return q[len(q)-1]
		}
	case *pg.Node_TypeCast:
		if x.TypeCast.Arg != nil {
			if name := outputName(x.TypeCast.Arg); name != "?column?" {
				return name
			}
		}
		if x.TypeCast.TypeName != nil {
			if q := names(x.TypeCast.TypeName.Names); len(q) > 0 {
				return q[len(q)-1]
			}
		}
	case *pg.Node_AIndirection:
		for i := len(x.AIndirection.Indirection) - 1; i >= 0; i-- {
			if s := x.AIndirection.Indirection[i].GetString_(); s != nil {
				return s.Sval
			}
		}
	case *pg.Node_CaseExpr:
		return "case"
	case *pg.Node_CoalesceExpr:
		return "coalesce"
	}
	return "?column?"
}

// names reads a list of String nodes.
func names(list []*pg.Node) []string {
	out := make([]string, 0, len(list))
	for _, n := range list {
		if s := n.GetString_(); s != nil {
			out = append(out, s.Sval)
		}
	}
	return out
}

// clause walks an expression whose value decides something (WHERE, HAVING,
// LIMIT, a join condition): every column it depends on is used.
func (w *lw) clause(n *pg.Node, f *frame, clause string) {
	if n == nil {
		return
	}
	w.use(w.expr(n, f, clause), clause)
}

// grouping walks a GROUP BY item: an input column, else an output by name
// or position. top is false inside a grouping set or a row, whose
// positions normalize replaces.
func (w *lw) grouping(n *pg.Node, f *frame, top bool) {
	if gs := n.GetGroupingSet(); gs != nil {
		for _, c := range gs.Content {
			w.grouping(c, f, false)
		}
		return
	}
	// PostgreSQL flattens a row written without ROW, GROUP BY (1, email),
	// into its items, each resolved as a GROUP BY item of its own.
	if r := n.GetRowExpr(); r != nil && r.RowFormat == pg.CoercionForm_COERCE_IMPLICIT_CAST {
		for _, a := range r.Args {
			w.grouping(a, f, false)
		}
		return
	}
	if !top && n.GetAConst() != nil {
		w.byConstant = true // resolved or not (sortItem)
	}
	if o, ok := w.outputRef(n, f, false); ok {
		w.use(o.Sources, "group")
		return
	}
	w.clause(n, f, "group")
}

// sortItem walks an ORDER BY (or DISTINCT ON) item: an output by name or
// position first, as PostgreSQL resolves them, else an expression.
func (w *lw) sortItem(n *pg.Node, f *frame, clause string) {
	item := n
	if sb := n.GetSortBy(); sb != nil {
		item = sb.Node
	}
	if item == nil {
		return
	}
	if clause == "window" {
		// A window's ORDER BY follows SQL:1999: a constant is a
		// constant, and an output's name is not in scope.
		w.clause(item, f, clause)
		return
	}
	if clause != "order" && item.GetAConst() != nil {
		// Whether or not it names an output here: over * the database's
		// catalog may resolve what this walk cannot, and a position the
		// database refuses must not share an entry with one it takes.
		w.byConstant = true
	}
	if o, ok := w.outputRef(item, f, true); ok {
		w.use(o.Sources, clause)
		return
	}
	w.clause(item, f, clause)
}

// outputRef resolves a position (ORDER BY 2) or, for ORDER BY, an output
// name; for GROUP BY an output name only when no input column has it.
func (w *lw) outputRef(n *pg.Node, f *frame, namesFirst bool) (Output, bool) {
	if c := n.GetAConst(); c != nil {
		if iv := c.GetIval(); iv != nil && iv.Ival >= 1 && int(iv.Ival) <= len(f.outputs) {
			return f.outputs[iv.Ival-1], true
		}
		return Output{}, false
	}
	cr := n.GetColumnRef()
	if cr == nil || len(cr.Fields) != 1 {
		return Output{}, false
	}
	s := cr.Fields[0].GetString_()
	if s == nil {
		return Output{}, false
	}
	if !namesFirst {
		if _, ok := f.column(s.Sval); ok {
			return Output{}, false
		}
	}
	return f.output(s.Sval)
}

func (w *lw) window(wd *pg.WindowDef, f *frame) {
	if wd == nil {
		return
	}
	for _, p := range wd.PartitionClause {
		w.clause(p, f, "window")
	}
	for _, o := range wd.OrderClause {
		w.sortItem(o, f, "window")
	}
	w.clause(wd.StartOffset, f, "window")
	w.clause(wd.EndOffset, f, "window")
}

// distinct: DISTINCT compares every output; DISTINCT ON its expressions.
func (w *lw) distinct(list []*pg.Node, f *frame) {
	if len(list) == 0 {
		return
	}
	if len(list) == 1 && (list[0] == nil || list[0].Node == nil) {
		for _, o := range f.outputs {
			w.use(o.Sources, "distinct")
		}
		return
	}
	for _, d := range list {
		w.sortItem(d, f, "distinct")
	}
}
