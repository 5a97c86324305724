package sqlfacts

import (
	"cmp"
	"maps"
	"slices"

	pg "github.com/pganalyze/pg_query_go/v6"
)

// fromItem resolves one FROM item into a range. Items marked LATERAL see
// the items before them (f); others see only enclosing query levels.
func (w *lw) fromItem(n *pg.Node, f *frame) *lrange {
	if n == nil {
		return nil
	}
	outer := f.parent
	switch x := n.Node.(type) {
	case *pg.Node_RangeVar:
		return w.rangeVar(x.RangeVar, f.ctes)
	case *pg.Node_RangeSubselect:
		scope := &frame{parent: outer, ctes: f.ctes}
		if x.RangeSubselect.Lateral {
			scope = f
		}
		outs := w.query(x.RangeSubselect.Subquery, scope, f.ctes)
		alias, cols := aliasOf(x.RangeSubselect.Alias)
		if alias == "" {
			alias = "subquery"
		}
		return outputRange(alias, outs, cols)
	case *pg.Node_RangeFunction:
		// Function arguments may refer to earlier FROM items only when
		// LATERAL, but PostgreSQL treats functions in FROM as lateral
		// implicitly.
		return w.rangeFunction(x.RangeFunction, f)
	case *pg.Node_JoinExpr:
		return w.join(x.JoinExpr, f)
	case *pg.Node_RangeTableSample:
		w.clause(&pg.Node{Node: &pg.Node_List{List: &pg.List{Items: x.RangeTableSample.Args}}}, f, "sample")
		// REPEATABLE's seed is computed too: its errors answer questions.
		w.clause(x.RangeTableSample.Repeatable, f, "sample")
		return w.fromItem(x.RangeTableSample.Relation, f)
	case *pg.Node_RangeTableFunc:
		// XMLTABLE: its columns are computed from the document.
		srcs := derive(w.expr(x.RangeTableFunc.Docexpr, f, ""))
		w.use(srcs, "expression")
		srcs = mergeSources(srcs, derive(w.expr(x.RangeTableFunc.Rowexpr, f, "")))
		// Namespace URIs and each column's PATH decide what is found.
		for _, ns := range x.RangeTableFunc.Namespaces {
			w.clause(ns, f, "expression")
		}
		alias, colnames := aliasOf(x.RangeTableFunc.Alias)
		r := &lrange{alias: cmp.Or(alias, "xmltable")}
		for _, c := range x.RangeTableFunc.Columns {
			col := c.GetRangeTableFuncCol()
			if col == nil {
				continue
			}
			colSrcs := srcs
			if col.Colexpr != nil {
				path := w.expr(col.Colexpr, f, "")
				w.use(path, "expression")
				colSrcs = mergeSources(slices.Clone(colSrcs), derive(path))
			}
			if col.Coldefexpr != nil {
				// DEFAULT is the column's value where the path finds
				// nothing, converted to the column's type.
				def := w.expr(col.Coldefexpr, f, "")
				if !preservingCast(col.TypeName) {
					w.use(def, "expression")
					def = derive(def)
				}
				colSrcs = mergeSources(slices.Clone(colSrcs), def)
			}
			r.cols = append(r.cols, lcol{name: col.Colname, srcs: colSrcs})
		}
		for i, c := range colnames {
			if s := c.GetString_(); s != nil && i < len(r.cols) {
				r.cols[i].name = s.Sval
			}
		}
		return r
	case *pg.Node_JsonTable:
		var srcs []Source
		if x.JsonTable.ContextItem != nil {
			srcs = derive(w.expr(x.JsonTable.ContextItem.RawExpr, f, ""))
			w.use(srcs, "expression")
		}
		alias, _ := aliasOf(x.JsonTable.Alias)
		r := &lrange{alias: alias, open: true, base: "json_table"}
		for _, c := range x.JsonTable.Columns {
			if col := c.GetJsonTableColumn(); col != nil {
				r.cols = append(r.cols, lcol{name: col.Name, srcs: srcs})
			}
		}
		r.open = false
		return r
	}
	w.problem("a FROM item of an unknown kind")
	return &lrange{open: true, base: "unknown"}
}

func aliasOf(a *pg.Alias) (string, []*pg.Node) {
	if a == nil {
		return "", nil
	}
	return a.Aliasname, a.Colnames
}

// rangeVar resolves a relation name: a CTE, or a relation of the catalog.
func (w *lw) rangeVar(rv *pg.RangeVar, ctes *cteScope) *lrange {
	alias, colnames := aliasOf(rv.Alias)
	if rv.Schemaname == "" {
		if c := ctes.find(rv.Relname); c != nil {
			r := *c
			if alias != "" {
				r.alias = alias
			}
			if len(colnames) > 0 {
				renamed := outputRange(r.alias, r.expand(), colnames)
				renamed.open, renamed.base = r.open, r.base
				return renamed
			}
			return &r
		}
	}
	r := w.base(rv.Schemaname, rv.Relname)
	if alias != "" {
		r.alias = alias
	}
	for i, c := range colnames {
		if s := c.GetString_(); s != nil && i < len(r.cols) {
			r.cols[i].name = s.Sval
		}
	}
	return r
}

// base resolves a relation through the catalog; a view's columns take the
// sources of its definition.
func (w *lw) base(schema, name string) *lrange {
	info := w.relation(schema, name)
	if info == nil {
		w.problem("relation %s is not known to the gateway's view of the catalog", displayName(schema, name))
		if schema == "" {
			schema = "public"
		}
		return &lrange{alias: name, schema: schema, name: name, open: true, base: QualifiedName(schema, name)}
	}
	q := QualifiedName(info.Schema, info.Name)
	if !slices.Contains(w.out.Relations, q) {
		w.out.Relations = append(w.out.Relations, q)
	}
	r := &lrange{alias: info.Name, schema: info.Schema, name: info.Name, open: info.Open, base: q}
	if info.View != "" {
		if outs, ok := w.viewOutputs(info); ok {
			for i, col := range info.Columns {
				var srcs []Source
				if i < len(outs) {
					srcs = outs[i].Sources
				}
				r.cols = append(r.cols, lcol{name: col, srcs: srcs})
			}
			return r
		}
	}
	for _, col := range info.Columns {
		srcs := []Source{{Column: q + "." + quote(col)}}
		for _, d := range slices.Concat(info.Descendants, info.Ancestors) {
			// Inherited columns keep their parent's name (a child's own
			// columns have no ancestor's of that name: harmless). ONLY
			// is not told apart: more sources only mask or refuse more.
			srcs = append(srcs, Source{Column: d + "." + quote(col)})
		}
		r.cols = append(r.cols, lcol{name: col, srcs: srcs})
	}
	return r
}

// viewOutputs resolves a view's definition. What the view's own query
// filters or joins on is the view owner's, fixed, and not counted as the
// caller's use; where its values come from is.
func (w *lw) viewOutputs(info *RelationInfo) ([]Output, bool) {
	if w.view >= maxViewDepth {
		w.problem("views nest more than %d deep at %s.%s", maxViewDepth, info.Schema, info.Name)
		return nil, false
	}
	tree, err := pg.Parse(info.View)
	if err != nil || len(tree.Stmts) != 1 {
		w.problem("the definition of view %s.%s could not be analyzed", info.Schema, info.Name)
		return nil, false
	}
	w.view++
	defer func() { w.view-- }()
	return w.query(tree.Stmts[0].Stmt, nil, nil), true
}

// rangeFunction is a function in FROM (or ROWS FROM several): its columns
// are computed from its arguments.
func (w *lw) rangeFunction(rf *pg.RangeFunction, f *frame) *lrange {
	alias, colnames := aliasOf(rf.Alias)
	r := &lrange{alias: alias}
	for _, item := range rf.Functions {
		list := item.GetList()
		if list == nil || len(list.Items) == 0 {
			continue
		}
		call := list.Items[0]
		srcs, info := w.call(call, f, "")
		fc := call.GetFuncCall()
		fname := "?column?"
		if fc != nil {
			if q := names(fc.Funcname); len(q) > 0 {
				fname = q[len(q)-1]
			}
		}
		if r.alias == "" {
			r.alias = fname
		}
		var cols []string
		if len(list.Items) > 1 {
			if defs := list.Items[1].GetList(); defs != nil {
				for _, d := range defs.Items {
					if cd := d.GetColumnDef(); cd != nil {
						cols = append(cols, cd.Colname)
					}
				}
			}
		}
		for _, cd := range rf.Coldeflist {
			if c := cd.GetColumnDef(); c != nil {
				cols = append(cols, c.Colname)
			}
		}
		if len(cols) == 0 && info != nil && len(info.Out) > 0 {
			cols = info.Out
		}
		if len(cols) == 0 {
			cols = []string{fname}
			if info == nil || !info.Builtin {
				// Not a built-in: its columns are not known here.
				r.open, r.base = true, QualifiedName(cmp.Or(info.schemaOr(), "public"), fname)
			}
		}
		for _, c := range cols {
			colSrcs := srcs
			if p := protectedOutput(info, c); p != "" {
				colSrcs = mergeSources(slices.Clone(srcs), []Source{{Column: p}})
			}
			r.cols = append(r.cols, lcol{name: c, srcs: colSrcs})
		}
	}
	// More names than the columns known here (unnest of several arrays):
	// each extra column may hold any argument's values.
	extra := len(colnames) - len(r.cols)
	if rf.Ordinality {
		extra--
	}
	if extra > 0 {
		var all []Source
		for _, c := range r.cols {
			all = mergeSources(all, c.srcs)
		}
		for range extra {
			r.cols = append(r.cols, lcol{srcs: all})
		}
	}
	if rf.Ordinality {
		r.cols = append(r.cols, lcol{name: "ordinality"})
	}
	for i, c := range colnames {
		if s := c.GetString_(); s != nil && i < len(r.cols) {
			r.cols[i].name = s.Sval
		}
	}
	return r
}

// join resolves a JOIN: its condition is a use of every column it tests.
func (w *lw) join(j *pg.JoinExpr, f *frame) *lrange {
	left := w.fromItem(j.Larg, f)
	// The right side of a join may refer to the left only when LATERAL;
	// a frame holding the left lets LATERAL items see it.
	lf := &frame{items: append(slices.Clone(f.items), left), parent: f.parent, ctes: f.ctes}
	right := w.fromItem(j.Rarg, lf)
	r := &lrange{children: []*lrange{left, right}}
	usingNames := names(j.UsingClause)
	if j.IsNatural {
		for _, n := range left.names() {
			if slices.Contains(right.names(), n) {
				usingNames = append(usingNames, n)
			}
		}
		if left.open || right.open {
			// Without a database the common columns are not all known:
			// a known (masked) column of either side may be one.
			for _, side := range []*lrange{left, right} {
				for _, c := range side.cols {
					if !slices.Contains(usingNames, c.name) {
						w.use(c.srcs, "join")
					}
				}
			}
		}
	}
	for _, n := range usingNames {
		ls, _, _ := left.lookup(n)
		rs, _, _ := right.lookup(n)
		merged := mergeSources(slices.Clone(ls), rs)
		w.use(merged, "join")
		r.using = append(r.using, lcol{name: n, srcs: merged})
	}
	// The condition sees both sides, and enclosing levels.
	jf := &frame{items: append(slices.Clone(f.items), r), parent: f.parent, ctes: f.ctes}
	w.clause(j.Quals, jf, "join")
	if j.Alias != nil {
		r.alias = j.Alias.Aliasname
		r.hides = true
		if len(j.Alias.Colnames) > 0 {
			renamed := outputRange(r.alias, r.expand(), j.Alias.Colnames)
			return renamed
		}
	}
	return r
}

// target resolves the relation a statement writes.
func (w *lw) target(rv *pg.RangeVar) *lrange {
	if rv == nil {
		return &lrange{}
	}
	r := w.base(rv.Schemaname, rv.Relname)
	if rv.Alias != nil {
		r.alias = rv.Alias.Aliasname
	}
	return r
}

// columnOf names a target column for a flow.
func columnOf(r *lrange, col string) string {
	if r.base != "" {
		return r.base + "." + quote(col)
	}
	return quote(col)
}

// written records values flowing into target columns, and returns the
// target as RETURNING sees it: each column's sources are its own and what
// was written into it.
func (w *lw) written(r *lrange, assigned map[string][]Source) *lrange {
	out := *r
	out.cols = slices.Clone(r.cols)
	// By name, so that flows (and the refusal that names the
	// first masked one) come out the same every time.
	info := w.checkedWrites(r)
	for _, col := range slices.Sorted(maps.Keys(assigned)) {
		srcs := assigned[col]
		w.flow(columnOf(r, col), srcs)
		w.checkedWrite(r, info, col)
		found := false
		for i := range out.cols {
			if out.cols[i].name == col {
				out.cols[i].srcs = mergeSources(slices.Clone(out.cols[i].srcs), srcs)
				found = true
			}
		}
		if !found && r.open {
			out.cols = append(out.cols, lcol{name: col, srcs: mergeSources([]Source{{Column: columnOf(r, col)}}, srcs)})
		}
	}
	return &out
}

// checkedWrites is what the catalog says of a written table's unique
// indexes and foreign keys, or nil.
func (w *lw) checkedWrites(r *lrange) *RelationInfo {
	if r.name == "" {
		return nil
	}
	return w.relation(r.schema, r.name)
}

// checkedWrite records a written column that a unique index, an exclusion
// constraint or a foreign key checks as a use of the column (or of the one
// it references): whether the write fails, or which row an ON CONFLICT
// finds, answers whether the value written is there, as WHERE col = value
// would.
func (w *lw) checkedWrite(r *lrange, info *RelationInfo, col string) {
	if info == nil {
		return
	}
	if slices.Contains(info.Unique, col) || slices.Contains(info.Unique, "*") {
		srcs := []Source{{Column: columnOf(r, col)}}
		for _, a := range info.Ancestors {
			srcs = append(srcs, Source{Column: a + "." + quote(col)})
		}
		w.use(srcs, "unique")
	}
	for _, ref := range info.References[col] {
		w.use([]Source{{Column: ref}}, "reference")
	}
}

func (w *lw) insert(s *pg.InsertStmt, parent *frame, ctes *cteScope) []Output {
	ctes = w.with(s.WithClause, parent, ctes)
	t := w.target(s.Relation)
	var cols []string
	var partly []bool // assigned through a subscript or field
	for _, c := range s.Cols {
		if rt := c.GetResTarget(); rt != nil {
			cols = append(cols, rt.Name)
			partly = append(partly, len(rt.Indirection) > 0)
			w.targetIndirection(rt.Indirection, &frame{parent: parent, ctes: ctes})
		}
	}
	if len(cols) == 0 {
		cols = t.names()
	}
	var values []Output
	if s.SelectStmt != nil {
		values = w.query(s.SelectStmt, &frame{parent: parent, ctes: ctes}, ctes)
	}
	assigned := map[string][]Source{}
	for i, v := range values {
		if i < len(cols) {
			srcs := v.Sources
			if i < len(partly) && partly[i] {
				srcs = derive(srcs)
			}
			assigned[cols[i]] = mergeSources(assigned[cols[i]], srcs)
		} else if len(v.Sources) > 0 {
			// A column beyond the ones known: somewhere in the table.
			w.flow(columnOf(t, "?"), v.Sources)
		}
	}
	f := &frame{parent: parent, ctes: ctes}
	if oc := s.OnConflictClause; oc != nil {
		excluded := &lrange{alias: "excluded"}
		for _, c := range t.cols {
			excluded.cols = append(excluded.cols, lcol{name: c.name, srcs: assigned[c.name]})
		}
		f.items = []*lrange{t, excluded}
		if oc.Infer != nil {
			for _, e := range oc.Infer.IndexElems {
				if ie := e.GetIndexElem(); ie != nil && ie.Expr != nil {
					w.clause(ie.Expr, f, "conflict")
				}
			}
			w.clause(oc.Infer.WhereClause, f, "conflict")
		}
		for col, srcs := range w.assignments(oc.TargetList, f) {
			assigned[col] = mergeSources(assigned[col], srcs)
		}
		w.clause(oc.WhereClause, f, "where")
	}
	rf := &frame{items: []*lrange{w.written(t, assigned)}, parent: parent, ctes: ctes}
	return w.returning(s.ReturningList, rf)
}

// assignments resolves SET col = expr lists, including (a, b) = (SELECT ...).
func (w *lw) assignments(list []*pg.Node, f *frame) map[string][]Source {
	out := map[string][]Source{}
	multi := map[*pg.Node][]Output{}
	for _, t := range list {
		rt := t.GetResTarget()
		if rt == nil {
			continue
		}
		var srcs []Source
		if ma := rt.Val.GetMultiAssignRef(); ma != nil {
			outs, ok := multi[ma.Source]
			if !ok {
				if sl := ma.Source.GetSubLink(); sl != nil {
					outs = w.query(sl.Subselect, f, f.ctes)
				} else if row := ma.Source.GetRowExpr(); row != nil {
					for _, a := range row.Args {
						outs = append(outs, Output{Sources: w.expr(a, f, ""), Columns: 1})
					}
				}
				multi[ma.Source] = outs
			}
			if i := int(ma.Colno) - 1; i >= 0 && i < len(outs) {
				srcs = outs[i].Sources
			}
		} else {
			srcs = w.expr(rt.Val, f, "")
		}
		if len(rt.Indirection) > 0 {
			// Assigning to a field or element computes a new value.
			srcs = derive(srcs)
			w.targetIndirection(rt.Indirection, f)
		}
		out[rt.Name] = mergeSources(out[rt.Name], srcs)
	}
	return out
}

// targetIndirection walks the subscripts of a written column (SET
// arr[i:j] = ..., INSERT INTO t (arr[i])): they are computed, and what
// they compute is kept in the array's bounds.
func (w *lw) targetIndirection(list []*pg.Node, f *frame) {
	for _, i := range list {
		if ai := i.GetAIndices(); ai != nil {
			w.clause(ai.Lidx, f, "expression")
			w.clause(ai.Uidx, f, "expression")
		}
	}
}

func (w *lw) returning(list []*pg.Node, f *frame) []Output {
	if len(list) == 0 {
		return nil
	}
	return w.targets(list, f)
}

func (w *lw) update(s *pg.UpdateStmt, parent *frame, ctes *cteScope) []Output {
	ctes = w.with(s.WithClause, parent, ctes)
	t := w.target(s.Relation)
	f := &frame{items: []*lrange{t}, parent: parent, ctes: ctes}
	for _, item := range s.FromClause {
		if r := w.fromItem(item, f); r != nil {
			f.items = append(f.items, r)
		}
	}
	assigned := w.assignments(s.TargetList, f)
	w.clause(s.WhereClause, f, "where")
	rf := &frame{items: append([]*lrange{w.written(t, assigned)}, f.items[1:]...), parent: parent, ctes: ctes}
	return w.returning(s.ReturningList, rf)
}

func (w *lw) delete(s *pg.DeleteStmt, parent *frame, ctes *cteScope) []Output {
	ctes = w.with(s.WithClause, parent, ctes)
	t := w.target(s.Relation)
	f := &frame{items: []*lrange{t}, parent: parent, ctes: ctes}
	for _, item := range s.UsingClause {
		if r := w.fromItem(item, f); r != nil {
			f.items = append(f.items, r)
		}
	}
	w.clause(s.WhereClause, f, "where")
	return w.returning(s.ReturningList, f)
}

func (w *lw) merge(s *pg.MergeStmt, parent *frame, ctes *cteScope) []Output {
	ctes = w.with(s.WithClause, parent, ctes)
	t := w.target(s.Relation)
	f := &frame{items: []*lrange{t}, parent: parent, ctes: ctes}
	if src := w.fromItem(s.SourceRelation, f); src != nil {
		f.items = append(f.items, src)
	}
	w.clause(s.JoinCondition, f, "join")
	assigned := map[string][]Source{}
	for _, c := range s.MergeWhenClauses {
		mw := c.GetMergeWhenClause()
		if mw == nil {
			continue
		}
		w.clause(mw.Condition, f, "where")
		if len(mw.Values) > 0 {
			cols := []string{}
			for _, tl := range mw.TargetList {
				if rt := tl.GetResTarget(); rt != nil {
					cols = append(cols, rt.Name)
					w.targetIndirection(rt.Indirection, f)
				}
			}
			if len(cols) == 0 {
				cols = t.names()
			}
			for i, v := range mw.Values {
				srcs := w.expr(v, f, "")
				if i < len(cols) {
					assigned[cols[i]] = mergeSources(assigned[cols[i]], srcs)
				} else {
					w.flow(columnOf(t, "?"), srcs)
				}
			}
			continue
		}
		for col, srcs := range w.assignments(mw.TargetList, f) {
			assigned[col] = mergeSources(assigned[col], srcs)
		}
	}
	rf := &frame{items: append([]*lrange{w.written(t, assigned)}, f.items[1:]...), parent: parent, ctes: ctes}
	return w.returning(s.ReturningList, rf)
}

// into records a relation created from a query's outputs.
func (w *lw) into(ic *pg.IntoClause, outs []Output, kind string) {
	rv := ic.Rel
	temp := rv.Relpersistence == "t"
	schema := rv.Schemaname
	switch {
	case temp:
		schema = "pg_temp"
	case schema == "":
		schema = "public"
	}
	base := QualifiedName(schema, rv.Relname)
	c := Created{Schema: schema, Name: rv.Relname, Kind: kind, Temp: temp}
	colnames := names(ic.ColNames)
	for i, o := range outs {
		name := o.Name
		if i < len(colnames) {
			name = colnames[i]
		}
		w.flow(base+"."+quote(name), o.Sources)
		c.Columns = append(c.Columns, Output{Name: name, Sources: o.Sources, Columns: o.Columns})
	}
	w.out.Creates = append(w.out.Creates, c)
}

func (w *lw) createTableAs(s *pg.CreateTableAsStmt) {
	if s.Into == nil || s.Into.Rel == nil {
		return
	}
	outs := w.query(s.Query, nil, nil)
	kind := "table"
	if s.Objtype == pg.ObjectType_OBJECT_MATVIEW {
		kind = "materialized view"
	}
	w.into(s.Into, outs, kind)
}

func (w *lw) createView(s *pg.ViewStmt) {
	if s.View == nil {
		return
	}
	outs := w.query(s.Query, nil, nil)
	w.into(&pg.IntoClause{Rel: s.View, ColNames: s.Aliases}, outs, "view")
}

// copy: COPY ... TO sends rows the gateway cannot mask; COPY ... FROM
// writes the caller's own data.
func (w *lw) copy(s *pg.CopyStmt) {
	if s.Query != nil {
		w.out.Outputs = w.query(s.Query, nil, nil)
		return
	}
	if s.Relation == nil {
		return
	}
	if s.IsFrom {
		// COPY FROM writes its columns as INSERT does.
		t := w.target(s.Relation)
		info := w.checkedWrites(t)
		cols := names(s.Attlist)
		if len(cols) == 0 {
			cols = t.names()
		}
		for _, c := range cols {
			w.checkedWrite(t, info, c)
		}
		return
	}
	r := w.base(s.Relation.Schemaname, s.Relation.Relname)
	cols := names(s.Attlist)
	if len(cols) == 0 {
		w.out.Outputs = r.expand()
		return
	}
	for _, c := range cols {
		srcs, _, _ := r.lookup(c)
		w.out.Outputs = append(w.out.Outputs, Output{Name: c, Sources: srcs, Columns: 1})
	}
}

// create: CREATE TABLE. A partition or child of a table shares its rows.
func (w *lw) create(s *pg.CreateStmt) {
	if s.Relation == nil {
		return
	}
	for _, p := range s.InhRelations {
		if rv := p.GetRangeVar(); rv != nil {
			w.alters(rv.Schemaname, rv.Relname)
		}
	}
	schema := s.Relation.Schemaname
	temp := s.Relation.Relpersistence == "t"
	switch {
	case temp:
		schema = "pg_temp"
	case schema == "":
		schema = "public"
	}
	c := Created{Schema: schema, Name: s.Relation.Relname, Kind: "table", Temp: temp}
	for _, e := range s.TableElts {
		if cd := e.GetColumnDef(); cd != nil {
			c.Columns = append(c.Columns, Output{Name: cd.Colname, Columns: 1})
		}
	}
	w.out.Creates = append(w.out.Creates, c)
}

// ddl records the statements that change a relation's definition in ways
// that can copy, expose or rename column values.
func (w *lw) ddl(n *pg.Node) {
	switch x := n.Node.(type) {
	case *pg.Node_AlterTableStmt:
		if x.AlterTableStmt.Relation != nil {
			w.alters(x.AlterTableStmt.Relation.Schemaname, x.AlterTableStmt.Relation.Relname)
		}
		// ATTACH PARTITION t puts t's rows under the table altered, where
		// a read of that table returns them by another name; INHERIT p
		// does the same for p. Both change the relation they name.
		for _, c := range x.AlterTableStmt.Cmds {
			cmd := c.GetAlterTableCmd()
			if cmd == nil || cmd.Def == nil {
				continue
			}
			if pc := cmd.Def.GetPartitionCmd(); pc != nil && pc.Name != nil {
				w.alters(pc.Name.Schemaname, pc.Name.Relname)
			}
			if rv := cmd.Def.GetRangeVar(); rv != nil {
				w.alters(rv.Schemaname, rv.Relname)
			}
		}
	case *pg.Node_RenameStmt:
		if x.RenameStmt.Relation != nil {
			w.alters(x.RenameStmt.Relation.Schemaname, x.RenameStmt.Relation.Relname)
		}
	case *pg.Node_AlterObjectSchemaStmt:
		if x.AlterObjectSchemaStmt.Relation != nil {
			w.alters(x.AlterObjectSchemaStmt.Relation.Schemaname, x.AlterObjectSchemaStmt.Relation.Relname)
		}
	case *pg.Node_IndexStmt:
		if x.IndexStmt.Relation != nil {
			w.alters(x.IndexStmt.Relation.Schemaname, x.IndexStmt.Relation.Relname)
		}
	case *pg.Node_CreateTrigStmt:
		if x.CreateTrigStmt.Relation != nil {
			w.alters(x.CreateTrigStmt.Relation.Schemaname, x.CreateTrigStmt.Relation.Relname)
		}
	case *pg.Node_RuleStmt:
		if x.RuleStmt.Relation != nil {
			w.alters(x.RuleStmt.Relation.Schemaname, x.RuleStmt.Relation.Relname)
		}
	case *pg.Node_CreatePolicyStmt:
		if x.CreatePolicyStmt.Table != nil {
			w.alters(x.CreatePolicyStmt.Table.Schemaname, x.CreatePolicyStmt.Table.Relname)
		}
	case *pg.Node_AlterPolicyStmt:
		if x.AlterPolicyStmt.Table != nil {
			w.alters(x.AlterPolicyStmt.Table.Schemaname, x.AlterPolicyStmt.Table.Relname)
		}
	case *pg.Node_ClusterStmt:
		if x.ClusterStmt.Relation != nil {
			w.alters(x.ClusterStmt.Relation.Schemaname, x.ClusterStmt.Relation.Relname)
		}
	case *pg.Node_CallStmt:
		if x.CallStmt.Funccall != nil {
			w.call(&pg.Node{Node: &pg.Node_FuncCall{FuncCall: x.CallStmt.Funccall}}, nil, "")
		}
	case *pg.Node_DoStmt:
		w.opaque("an anonymous code block (DO) runs code the gateway cannot see")
	case *pg.Node_CreateStatsStmt:
		for _, r := range x.CreateStatsStmt.Relations {
			if rv := r.GetRangeVar(); rv != nil {
				w.alters(rv.Schemaname, rv.Relname)
			}
		}
	}
}
