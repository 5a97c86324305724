package sqlfacts

import (
	"slices"
	"strings"
	"sync"

	pg "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// analyzer collects statements in the order they are found: each statement
// as sent, followed by the statements found inside it.
type analyzer struct {
	// version is the parse tree version, needed to deparse nested nodes.
	version int32
	out     []Statement
	depth   int
	err     error
}

// scope is the CTE names visible at a point of a query, innermost first.
// An unqualified table name that matches one is a reference to the CTE, not
// to a table.
type scope struct {
	names  []string
	parent *scope
}

func (s *scope) has(name string) bool {
	for ; s != nil; s = s.parent {
		if slices.Contains(s.names, name) {
			return true
		}
	}
	return false
}

// writeFields lists, per parse node, the fields that hold the relation the
// statement writes (inserts into, alters, drops, locks, ...). Every other
// relation a statement mentions is read.
var writeFields = map[string][]string{
	"InsertStmt":         {"relation"},
	"UpdateStmt":         {"relation"},
	"DeleteStmt":         {"relation"},
	"MergeStmt":          {"relation"},
	"TruncateStmt":       {"relations"},
	"IntoClause":         {"rel"},
	"CreateStmt":         {"relation", "inh_relations"}, // a child's rows are read through its parent
	"AlterTableStmt":     {"relation"},
	"IndexStmt":          {"relation"},
	"RenameStmt":         {"relation"},
	"LockStmt":           {"relations"},
	"VacuumRelation":     {"relation"},
	"CreateTrigStmt":     {"relation"},
	"RuleStmt":           {"relation"},
	"CreatePolicyStmt":   {"table"},
	"AlterPolicyStmt":    {"table"},
	"GrantStmt":          {"objects"},
	"ClusterStmt":        {"relation"},
	"RefreshMatViewStmt": {"relation"},
	"AlterObjectSchemaStmt": {
		"relation",
	},
	"AlterOwnerStmt": {"relation"},
	"ViewStmt":       {"view"},
	"ReindexStmt":    {"relation"},
	"CreateSeqStmt":  {"sequence"},
	"AlterSeqStmt":   {"sequence"},
	// ALTER TABLE ... ATTACH/DETACH PARTITION changes the partition too.
	"PartitionCmd": {"name"},
}

// wrapperFields hold a statement that runs as part of the one around it (or,
// for PREPARE, DECLARE and CREATE RULE, later, when invoked). Each is
// reported as an entry of its own, whatever its kind.
var wrapperFields = map[string]string{
	"ExplainStmt":       "query",
	"CreateTableAsStmt": "query",
	"PrepareStmt":       "query",
	"DeclareCursorStmt": "query",
	"CopyStmt":          "query",
	"RuleStmt":          "actions",
	"CreateSchemaStmt":  "schema_elts",
}

// skipFields hold names that look like relations but are not tables.
var skipFields = map[string]string{
	"CompositeTypeStmt": "typevar",
}

// emit records the statement rooted at n and then walks it, which may emit
// statements nested inside it.
func (a *analyzer) emit(n *pg.Node, via, text, fingerprint string, sc *scope) {
	if n == nil || n.Node == nil {
		return
	}
	a.emitMessage(nodeMessage(n), via, text, fingerprint, sc, "")
}

func nodeMessage(n *pg.Node) protoreflect.Message {
	// Node is a oneof wrapper; its single populated field is the real node.
	m := n.ProtoReflect()
	fd := m.WhichOneof(nodeOneof)
	if fd == nil || fd.Kind() != protoreflect.MessageKind {
		return nil
	}
	return m.Get(fd).Message()
}

var nodeOneof = (&pg.Node{}).ProtoReflect().Descriptor().Oneofs().Get(0)

// messageFields caches, per node type, its message-typed fields in
// declaration order. The walk must not use Message.Range: protobuf
// randomises that order per binary on purpose, and facts (the order of
// tables, of nested statements) must not depend on which binary runs.
var messageFields sync.Map // protoreflect.FullName -> []protoreflect.FieldDescriptor

func fieldsOf(d protoreflect.MessageDescriptor) []protoreflect.FieldDescriptor {
	if v, ok := messageFields.Load(d.FullName()); ok {
		return v.([]protoreflect.FieldDescriptor)
	}
	var out []protoreflect.FieldDescriptor
	fds := d.Fields()
	for i := 0; i < fds.Len(); i++ {
		fd := fds.Get(i)
		if (fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind) && !fd.IsMap() {
			out = append(out, fd)
		}
	}
	messageFields.Store(d.FullName(), out)
	return out
}

// eachChild calls fn for every set message-typed field of m, in
// declaration order, with each list element in turn.
func eachChild(m protoreflect.Message, fn func(fd protoreflect.FieldDescriptor, child protoreflect.Message) bool) {
	for _, fd := range fieldsOf(m.Descriptor()) {
		if !m.Has(fd) {
			continue
		}
		v := m.Get(fd)
		if fd.IsList() {
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				if !fn(fd, l.Get(i).Message()) {
					return
				}
			}
			continue
		}
		if !fn(fd, v.Message()) {
			return
		}
	}
}

func (a *analyzer) emitMessage(m protoreflect.Message, via, text, fingerprint string, sc *scope, defSchema string) {
	if m == nil {
		return
	}
	st := Statement{Via: via, Text: text, Fingerprint: fingerprint}
	describe(&st, m.Interface())
	idx := len(a.out)
	a.out = append(a.out, Statement{}) // reserve the slot: nested ones follow it
	w := &walker{a: a, root: m.Interface(), via: st.Command, defSchema: defSchema, tables: map[[2]string]int{}, funcs: map[string]bool{}}
	if e, ok := m.Interface().(*pg.ExplainStmt); ok && explainAnalyze(e) {
		w.via = "EXPLAIN ANALYZE"
	}
	w.walk(m, Read, sc)
	if fb, ok := m.Interface().(*pg.CreateFunctionStmt); ok {
		a.functionBody(fb, st.Command, st.Language, fingerprint)
	}
	st.Locking = lockNames[w.locking]
	st.SetOperation = w.setOp
	if st.Setting == "" {
		st.Setting = w.setting
	}
	st.Tables = w.tableList
	if st.Tables == nil {
		st.Tables = []Table{}
	}
	st.Functions = make([]string, 0, len(w.funcs))
	for f := range w.funcs {
		st.Functions = append(st.Functions, f)
	}
	slices.Sort(st.Functions)
	st.Calls = w.calls
	if st.Calls == nil {
		st.Calls = []Call{}
	}
	st.VolatileFunctions = VolatileFunctions(st.Calls)
	st.ColumnUses = []ColumnUse{}
	a.out[idx] = st
}

// call records a function call with what PostgreSQL 15's own catalog says
// of it; the gateway resolves the others through the database
// (ResolveCalls).
func (w *walker) call(funcname []*pg.Node) {
	q := names(funcname)
	if len(q) == 0 {
		return
	}
	c := Call{Name: q[len(q)-1], Volatility: Unknown}
	if len(q) >= 2 {
		c.Schema = q[len(q)-2]
	}
	if c.Schema == "" || c.Schema == "pg_catalog" {
		if f, ok := BuiltinFunction(c.Name); ok {
			c.Schema, c.Volatility, c.Builtin = "pg_catalog", f.Volatility, true
		}
	}
	if !slices.Contains(w.calls, c) {
		w.calls = append(w.calls, c)
	}
}

// VolatileFunctions names the calls that may have side effects: volatile,
// or of unknown volatility.
func VolatileFunctions(calls []Call) []string {
	out := []string{}
	for _, c := range calls {
		if c.Volatility != Immutable && c.Volatility != Stable && !slices.Contains(out, c.Name) {
			out = append(out, c.Name)
		}
	}
	return out
}

// functionBody parses the body of a LANGUAGE sql function given as a string,
// so that what the function would run is visible. Bodies in other languages
// are opaque and reported only through the CREATE FUNCTION statement itself.
func (a *analyzer) functionBody(fn *pg.CreateFunctionStmt, command, language, fingerprint string) {
	if language != "sql" || fn.SqlBody != nil {
		return // BEGIN ATOMIC bodies are already part of the tree
	}
	body, ok := defElemStrings(fn.Options, "as")
	if !ok || len(body) == 0 {
		return
	}
	if a.depth >= maxBodyDepth {
		a.err = &ParseError{Message: "SQL function bodies are nested too deeply to analyze"}
		return
	}
	nested, _, err := analyze(body[0], command, a.depth+1)
	if err != nil {
		a.err = &ParseError{Message: "the body of the SQL function does not parse: " + err.Error()}
		return
	}
	for _, s := range nested {
		s.Fingerprint = fingerprint
		if s.Via == "" {
			s.Via = command
		}
		a.out = append(a.out, s)
	}
}

type walker struct {
	a         *analyzer
	root      any
	via       string
	tables    map[[2]string]int // schema,name -> index in tableList
	tableList []Table
	funcs     map[string]bool
	calls     []Call
	// quiet > 0 while walking a nested statement that was already emitted.
	quiet int
	// wrapped is set while walking straight into a wrapper field, whose
	// statement is emitted whatever its kind.
	wrapped bool
	// defSchema is the schema of unqualified names (CREATE SCHEMA
	// elements); empty means public.
	defSchema string
	// locking is the strongest row lock seen.
	locking pg.LockClauseStrength
	// setting is the setting a set_config call changes.
	setting string
	setOp   bool
}

var lockRank = map[pg.LockClauseStrength]int{
	pg.LockClauseStrength_LCS_FORKEYSHARE: 1, pg.LockClauseStrength_LCS_FORSHARE: 2,
	pg.LockClauseStrength_LCS_FORNOKEYUPDATE: 3, pg.LockClauseStrength_LCS_FORUPDATE: 4,
}

var lockNames = map[pg.LockClauseStrength]string{
	pg.LockClauseStrength_LCS_FORKEYSHARE: "FOR KEY SHARE", pg.LockClauseStrength_LCS_FORSHARE: "FOR SHARE",
	pg.LockClauseStrength_LCS_FORNOKEYUPDATE: "FOR NO KEY UPDATE", pg.LockClauseStrength_LCS_FORUPDATE: "FOR UPDATE",
}

// deparse renders a nested statement as SQL, for display and recording.
func (a *analyzer) deparse(x any) string {
	var n *pg.Node
	switch s := x.(type) {
	case *pg.InsertStmt:
		n = &pg.Node{Node: &pg.Node_InsertStmt{InsertStmt: s}}
	case *pg.UpdateStmt:
		n = &pg.Node{Node: &pg.Node_UpdateStmt{UpdateStmt: s}}
	case *pg.DeleteStmt:
		n = &pg.Node{Node: &pg.Node_DeleteStmt{DeleteStmt: s}}
	case *pg.MergeStmt:
		n = &pg.Node{Node: &pg.Node_MergeStmt{MergeStmt: s}}
	default:
		return ""
	}
	out, err := pg.Deparse(&pg.ParseResult{Version: a.version, Stmts: []*pg.RawStmt{{Stmt: n}}})
	if err != nil {
		return ""
	}
	return out
}

func (w *walker) table(schema, name, access string, sc *scope) {
	w.relation(schema, name, "", access, sc)
}

func (w *walker) relation(schema, name, persistence, access string, sc *scope) {
	if name == "" {
		return
	}
	if schema == "" {
		// PostgreSQL never resolves a write target to a CTE: in
		// "WITH users AS (...) DELETE FROM users" the real table is
		// deleted from.
		if access != Write && sc.has(name) {
			return // a CTE, not a table
		}
		switch {
		case persistence == "t":
			schema = "pg_temp"
		case pgCatalogRelations[name]:
			schema = "pg_catalog"
		case w.defSchema != "":
			schema = w.defSchema
		default:
			schema = "public"
		}
	}
	key := [2]string{schema, name}
	if i, ok := w.tables[key]; ok {
		if access == Write {
			w.tableList[i].Access = Write
		}
		return
	}
	w.tables[key] = len(w.tableList)
	w.tableList = append(w.tableList, Table{Schema: schema, Name: name, Access: access})
}

func (w *walker) walk(m protoreflect.Message, access string, sc *scope) {
	wrapped := w.wrapped
	w.wrapped = false
	if wrapped && m.Interface() != w.root && w.quiet == 0 && isStatement(m) && !isDML(m) && !isPlainSelect(m) {
		// A statement inside EXPLAIN, PREPARE, CREATE TABLE AS, COPY (...),
		// DECLARE, CREATE RULE or CREATE SCHEMA is reported as its own
		// entry; data-modifying ones are handled below, wherever they are.
		// A plain SELECT only reads, and its tables and functions are
		// already the enclosing statement's, so it needs no entry.
		w.a.emitMessage(m, w.via, "", "", sc, w.defSchema)
		w.quiet++
		defer func() { w.quiet-- }()
	}
	switch x := m.Interface().(type) {
	case *pg.RangeVar:
		w.relation(x.Schemaname, x.Relname, x.Relpersistence, access, sc)
		return
	case *pg.FuncCall:
		if len(x.Funcname) > 0 {
			if s := x.Funcname[len(x.Funcname)-1].GetString_(); s != nil {
				w.funcs[s.Sval] = true
				w.call(x.Funcname)
				if qn := names(x.Funcname); len(qn) == 1 || qn[len(qn)-2] == "pg_catalog" {
					w.dynamicCall(s.Sval, x.Args, sc)
				}
				if s.Sval == "set_config" && w.setting == "" {
					// set_config('name', value, is_local) changes a
					// setting like SET does; a name that is not a
					// constant could be any setting.
					w.setting = "*"
					if len(x.Args) > 0 {
						if c := x.Args[0].GetAConst(); c != nil && c.GetSval() != nil {
							w.setting = strings.ToLower(c.GetSval().Sval)
						}
					}
				}
			}
		}
	case *pg.DropStmt:
		w.dropTargets(x)
	case *pg.CommentStmt:
		w.commentTarget(x)
	case *pg.SelectStmt:
		if x.Op != pg.SetOperation_SETOP_NONE && x.Op != pg.SetOperation_SET_OPERATION_UNDEFINED {
			w.setOp = true
		}
	case *pg.LockingClause:
		if lockRank[x.Strength] > lockRank[w.locking] {
			w.locking = x.Strength
		}
	case *pg.CreateSchemaStmt:
		saved := w.defSchema
		w.defSchema = x.Schemaname
		defer func() { w.defSchema = saved }()
	case *pg.InsertStmt, *pg.UpdateStmt, *pg.DeleteStmt, *pg.MergeStmt:
		if m.Interface() != w.root && w.quiet == 0 {
			// A statement that modifies data inside another (a CTE, EXPLAIN
			// ANALYZE, PREPARE, a rule or function body) runs too: report it
			// as an entry of its own. Its tables are also counted for the
			// enclosing statement, by walking it quietly: the entry just
			// emitted has already reported whatever is nested inside it.
			text := w.a.deparse(m.Interface())
			fp := ""
			if text != "" {
				fp, _ = pg.Fingerprint(text)
			}
			w.a.emitMessage(m, w.via, text, fp, sc, w.defSchema)
			w.quiet++
			defer func() { w.quiet-- }()
		}
	case *pg.CopyStmt:
		if x.Relation != nil {
			acc := Read
			if x.IsFrom {
				acc = Write
			}
			w.table(x.Relation.Schemaname, x.Relation.Relname, acc, sc)
		}
	}

	name := string(m.Descriptor().Name())
	writes := writeFields[name]
	wrapper := wrapperFields[name]
	skip := skipFields[name]

	// A WITH clause makes its CTE names visible to the statement it belongs
	// to. Within the WITH itself, a CTE sees the ones before it, or all of
	// them when the WITH is RECURSIVE. Getting this right matters: in
	// "WITH payments AS (SELECT * FROM payments) ...", the inner name is the
	// real table and must be reported.
	var with *pg.WithClause
	if fd := m.Descriptor().Fields().ByName("with_clause"); fd != nil && m.Has(fd) {
		with, _ = m.Get(fd).Message().Interface().(*pg.WithClause)
	}
	inner := sc
	if with != nil {
		names := make([]string, 0, len(with.Ctes))
		for _, c := range with.Ctes {
			if cte := c.GetCommonTableExpr(); cte != nil {
				names = append(names, cte.Ctename)
			}
		}
		saved := w.via
		w.via = "WITH"
		for i, c := range with.Ctes {
			cte := c.GetCommonTableExpr()
			if cte == nil || cte.Ctequery == nil {
				continue
			}
			visible := names[:i]
			if with.Recursive {
				visible = names
			}
			w.walk(cte.Ctequery.ProtoReflect(), Read, &scope{names: visible, parent: sc})
		}
		w.via = saved
		inner = &scope{names: names, parent: sc}
	}

	eachChild(m, func(fd protoreflect.FieldDescriptor, child protoreflect.Message) bool {
		fname := string(fd.Name())
		if with != nil && fname == "with_clause" {
			return true
		}
		if _, isCopy := m.Interface().(*pg.CopyStmt); isCopy && fname == "relation" {
			return true // handled above, by direction
		}
		if fname == skip {
			return true
		}
		acc := access
		if slices.Contains(writes, fname) {
			acc = Write
		}
		w.walkChild(child, acc, inner, fname == wrapper)
		return true
	})
}

// walkChild walks a child node. A Node is only a wrapper around the real
// node; it is unwrapped here so that a wrapper field's statement is seen as
// the statement it is.
func (w *walker) walkChild(m protoreflect.Message, access string, sc *scope, wrapped bool) {
	if n, ok := m.Interface().(*pg.Node); ok {
		if inner := nodeMessage(n); inner != nil {
			m = inner
		}
	}
	w.wrapped = wrapped
	w.walk(m, access, sc)
}

func isStatement(m protoreflect.Message) bool {
	return strings.HasSuffix(string(m.Descriptor().Name()), "Stmt")
}

func isPlainSelect(m protoreflect.Message) bool {
	s, ok := m.Interface().(*pg.SelectStmt)
	return ok && s.IntoClause == nil
}

func isDML(m protoreflect.Message) bool {
	switch m.Interface().(type) {
	case *pg.InsertStmt, *pg.UpdateStmt, *pg.DeleteStmt, *pg.MergeStmt:
		return true
	}
	return false
}

// nameListTable turns a qualified name list into a table, keeping the last
// `drop` parts off the end (a trigger's own name, a column).
func (w *walker) nameListTable(n *pg.Node, drop int) {
	l := n.GetList()
	if l == nil {
		return
	}
	var parts []string
	for _, it := range l.Items {
		if s := it.GetString_(); s != nil {
			parts = append(parts, s.Sval)
		}
	}
	if len(parts) <= drop {
		return
	}
	parts = parts[:len(parts)-drop]
	switch len(parts) {
	case 1:
		w.table("", parts[0], Write, nil)
	case 2:
		w.table(parts[0], parts[1], Write, nil)
	default: // catalog.schema.name
		w.table(parts[len(parts)-2], parts[len(parts)-1], Write, nil)
	}
}

// commentTarget reports the relation a COMMENT ON changes.
func (w *walker) commentTarget(c *pg.CommentStmt) {
	if c.Object == nil {
		return
	}
	switch c.Objtype {
	case pg.ObjectType_OBJECT_TABLE, pg.ObjectType_OBJECT_VIEW, pg.ObjectType_OBJECT_MATVIEW,
		pg.ObjectType_OBJECT_FOREIGN_TABLE, pg.ObjectType_OBJECT_INDEX, pg.ObjectType_OBJECT_SEQUENCE:
		w.nameListTable(c.Object, 0)
	case pg.ObjectType_OBJECT_COLUMN:
		w.nameListTable(c.Object, 1)
	}
}

// dropTargets reports the relations a DROP removes or changes. DROP lists
// them as name lists, not as RangeVar nodes. DROP TRIGGER, RULE and POLICY
// name the table they are on before their own name.
func (w *walker) dropTargets(d *pg.DropStmt) {
	drop := 0
	switch d.RemoveType {
	case pg.ObjectType_OBJECT_TABLE, pg.ObjectType_OBJECT_VIEW, pg.ObjectType_OBJECT_MATVIEW,
		pg.ObjectType_OBJECT_FOREIGN_TABLE, pg.ObjectType_OBJECT_INDEX, pg.ObjectType_OBJECT_SEQUENCE:
	case pg.ObjectType_OBJECT_TRIGGER, pg.ObjectType_OBJECT_RULE, pg.ObjectType_OBJECT_POLICY:
		drop = 1
	default:
		return
	}
	for _, o := range d.Objects {
		w.nameListTable(o, drop)
	}
}

func defElemStrings(opts []*pg.Node, name string) ([]string, bool) {
	for _, o := range opts {
		d := o.GetDefElem()
		if d == nil || d.Defname != name || d.Arg == nil {
			continue
		}
		if s := d.Arg.GetString_(); s != nil {
			return []string{s.Sval}, true
		}
		if l := d.Arg.GetList(); l != nil {
			var out []string
			for _, it := range l.Items {
				if s := it.GetString_(); s != nil {
					out = append(out, s.Sval)
				}
			}
			return out, true
		}
	}
	return nil, false
}

// explainAnalyze reports whether EXPLAIN runs its statement. As in
// PostgreSQL, the last ANALYZE option wins.
func explainAnalyze(e *pg.ExplainStmt) bool {
	on := false
	for _, o := range e.Options {
		d := o.GetDefElem()
		if d == nil || d.Defname != "analyze" {
			continue
		}
		switch {
		case d.Arg == nil:
			on = true
		case d.Arg.GetBoolean() != nil:
			on = d.Arg.GetBoolean().Boolval
		case d.Arg.GetString_() != nil:
			// ANALYZE false / off / no / 0 turns it off; anything else is on.
			v := strings.ToLower(d.Arg.GetString_().Sval)
			on = v != "false" && v != "off" && v != "0" && v != "no"
		case d.Arg.GetInteger() != nil:
			on = d.Arg.GetInteger().Ival != 0
		default:
			on = true
		}
	}
	return on
}

// hasColumnRef reports whether an expression refers to any column. It is how
// has_where tells a real filter from WHERE true.
func hasColumnRef(n *pg.Node) bool {
	if n == nil {
		return false
	}
	found := false
	var visit func(m protoreflect.Message)
	visit = func(m protoreflect.Message) {
		if found {
			return
		}
		switch m.Interface().(type) {
		case *pg.ColumnRef, *pg.CurrentOfExpr:
			found = true
			return
		}
		eachChild(m, func(_ protoreflect.FieldDescriptor, child protoreflect.Message) bool {
			visit(child)
			return !found
		})
	}
	visit(n.ProtoReflect())
	return found
}
