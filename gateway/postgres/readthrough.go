package postgres

import (
	"fmt"
	"slices"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"

	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

// A read through a view reads the view's tables: a rule that denies
// payments by name must also see SELECT * FROM v when v is a view (or a
// materialized view, whose REFRESH reads them again) over payments, made
// by the caller while it was still allowed, or by anyone. So before a
// request is decided, each relation a statement reads is looked up, and
// the relations its definition reads, through views, transitively, are
// added to the statement as read, with via naming the view. So are an
// inherited or partitioned table's descendants, whose rows a read of it
// returns: ALTER TABLE payments INHERIT mine, made while allowed, would
// otherwise read payments through mine. (ONLY is not told apart: its
// descendants are listed too.)
//
// The shared catalog cannot see a session's temporary views: for those,
// the session keeps what its CREATE VIEW read (viewReads), under the
// view's names, renames included.

// withReached is the request with every table its statements reach
// without naming them: written (withReachedWrites) and read through
// views (withReadsThroughViews). why is set when the catalog could not
// say: the request is then refused.
func (s *session) withReached(req *celpolicy.PostgresRequest) (*celpolicy.PostgresRequest, string) {
	req, why := s.withReachedWrites(req)
	if why != "" {
		return req, why
	}
	return s.withReadsThroughViews(req)
}

// withReadsThroughViews adds, to each statement, the relations it reads
// through the views it reads or refreshes (the request is copied when
// anything is added).
func (s *session) withReadsThroughViews(req *celpolicy.PostgresRequest) (_ *celpolicy.PostgresRequest, why string) {
	if s.cat == nil || req == nil {
		return req, ""
	}
	var out *celpolicy.PostgresRequest
	// moved are what earlier statements of the request make a name reach
	// (carriedBy), by the name's key: the catalog does not show it until
	// they have run, and their transaction has committed.
	var moved map[string][]celpolicy.Table
	schemaRenamed := false // by an earlier statement of the request
	renames := 0           // schema renames in the request so far
	for i, st := range req.Statements {
		var add []celpolicy.Table
		var calls []celpolicy.Call // what views call
		for _, t := range st.Tables {
			if t.Via != "" || (t.Access != "read" && st.Command != "REFRESH MATERIALIZED VIEW") {
				continue
			}
			got, more, err := s.readThrough(t)
			if err != nil {
				return req, fmt.Sprintf("the relations a read of %s reaches through views could not be read from the catalog (%v)", t.Name, err)
			}
			for _, c := range more {
				if !slices.Contains(st.Calls, c) && !slices.Contains(calls, c) {
					calls = append(calls, c)
				}
			}
			got = append(got, moved[t.Schema+"\x00"+t.Name]...)
			if s.cat.unqualifiedReaches(t.Schema) {
				got = append(got, moved["\x00"+t.Name]...)
			}
			for _, b := range got {
				if !hasTable(st.Tables, b) && !hasTable(add, b) {
					add = append(add, b)
				}
			}
		}
		if schemaRenamed && len(st.Tables) > 0 {
			return req, "a statement follows ALTER SCHEMA … RENAME TO in the same query; what it reads through the renamed schema cannot be known until the rename has run: send the rename in a query of its own"
		}
		if _, _, ok := renamedSchema(st); ok {
			renames++
			if s.cat.schemaRenamesFull(renames) {
				return req, fmt.Sprintf("the session has renamed %d schemas, as many as the gateway follows: reconnect to rename more", maxSchemaAliases)
			}
			schemaRenamed = true
		}
		if c, ok := carriedBy(st); ok {
			keys, reads, err := s.carriedReads(c, moved)
			if err != nil {
				return req, fmt.Sprintf("the relations a read of %s reaches through views could not be read from the catalog (%v)", c.from, err)
			}
			if len(reads) > 0 {
				if moved == nil {
					moved = map[string][]celpolicy.Table{}
				}
				for _, k := range keys {
					moved[k] = append(moved[k], reads...)
				}
			}
		}
		if len(add) == 0 && len(calls) == 0 {
			continue
		}
		if out == nil {
			cp := *req
			cp.Statements = append([]celpolicy.Statement(nil), req.Statements...)
			cp.Shape = "" // what it reads is the catalog's now, not the shape's
			out = &cp
		}
		out.Statements[i].Tables = append(append([]celpolicy.Table(nil), st.Tables...), add...)
		if len(calls) > 0 {
			// A function a view calls runs as surely as one called by
			// name: rules about calls, functions and volatility see it.
			ost := &out.Statements[i]
			ost.Calls = append(slices.Clone(st.Calls), calls...)
			ost.Functions = slices.Clone(st.Functions)
			for _, c := range calls {
				if !slices.Contains(ost.Functions, c.Name) {
					ost.Functions = append(ost.Functions, c.Name)
				}
			}
			ost.VolatileFunctions = sqlfacts.VolatileFunctions(ost.Calls)
		}
	}
	if out == nil {
		return req, ""
	}
	return out, ""
}

// readThrough is what a read of t reaches through views: the session's own
// (temporary) views' recorded reads, and the shared catalog's; calls are
// the functions, not built in, the catalog's views call.
func (s *session) readThrough(t celpolicy.Table) (_ []celpolicy.Table, calls []celpolicy.Call, _ error) {
	return s.readThroughDepth(t, 0)
}

// maxDynamicDepth bounds how many views deep readThrough follows the SQL
// views give built-ins (a view over query_to_xml of a view over …).
const maxDynamicDepth = 8

func (s *session) readThroughDepth(t celpolicy.Table, depth int) (_ []celpolicy.Table, calls []celpolicy.Call, _ error) {
	out, calls := s.cat.viewReadsOf(t.Schema, t.Name)
	if t.Schema == "pg_temp" {
		return out, calls, nil
	}
	schemas := []string{t.Schema}
	if t.Schema == "" || t.Schema == "public" {
		schemas = s.cat.searchPath
	}
	got, err := s.srv.catalog.readThrough(s.cat.resource, schemas, t.Name)
	if err != nil {
		return nil, nil, err
	}
	// A schema the session renamed is known to the catalog by its old
	// name until the transaction commits: the old name's relation is read
	// through too.
	for _, old := range s.cat.schemaAliasesOf(schemas) {
		reads, oldCalls := s.cat.viewReadsOf(old, t.Name)
		out = append(out, reads...)
		calls = append(calls, oldCalls...)
		more, err := s.srv.catalog.readThrough(s.cat.resource, []string{old}, t.Name)
		if err != nil {
			return nil, nil, err
		}
		got = got.with(more)
	}
	out = append(out, got.reached...)
	calls = append(calls, got.calls...)
	// What a view reads through a built-in's SQL is named there, not in
	// its dependencies: those names are read through in turn.
	for _, d := range got.dynamic {
		if depth >= maxDynamicDepth {
			return nil, nil, fmt.Errorf("views run SQL through built-ins (query_to_xml, …) nested more than %d deep", maxDynamicDepth)
		}
		out = append(out, d)
		more, moreCalls, err := s.readThroughDepth(celpolicy.Table{Schema: d.Schema, Name: d.Name, Access: "read"}, depth+1)
		if err != nil {
			return nil, nil, err
		}
		for _, m := range more {
			m.Via = d.Via
			out = append(out, m)
		}
		calls = append(calls, moreCalls...)
	}
	return out, calls, nil
}

// with is r and more together, in new memory: r's lists are the shared
// catalog's cached answer, which other sessions read at the same time, and
// appending to them in place would write past their ends, into memory the
// next append by another session writes too.
func (r readThroughs) with(more readThroughs) readThroughs {
	r.reached = append(slices.Clip(r.reached), more.reached...)
	r.dynamic = append(slices.Clip(r.dynamic), more.dynamic...)
	r.calls = append(slices.Clip(r.calls), more.calls...)
	return r
}

// viewReadsOf lists what the session's own views of that name read, and
// the functions (not built in) they call: the qualified name's, and for a
// name written unqualified (or in pg_temp, or in a schema on the search
// path), the unqualified one's, since a temporary view comes first on the
// search path and an unqualified name was recorded for any schema on it.
func (c *sessionCatalog) viewReadsOf(schema, name string) ([]celpolicy.Table, []celpolicy.Call) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// Copies: the caller appends to them.
	out := slices.Clone(c.viewReads[schema+"\x00"+name])
	calls := slices.Clone(c.viewCalls[schema+"\x00"+name])
	if c.unqualifiedReaches(schema) {
		out = append(out, c.viewReads["\x00"+name]...)
		calls = append(calls, c.viewCalls["\x00"+name]...)
	}
	return out, calls
}

// unqualifiedReaches reports whether a relation named in schema may be
// the one a name written unqualified reached when the session recorded it
// ("\x00name" in viewReads): unqualified, in public or pg_temp, or in a
// schema on the session's search path (newKeys records a name there so).
func (c *sessionCatalog) unqualifiedReaches(schema string) bool {
	return schema == "" || schema == "public" || schema == "pg_temp" || slices.Contains(c.searchPath, schema)
}

// viewDefinition is what a CREATE VIEW or CREATE MATERIALIZED VIEW
// defines, for viewReads: the view and the relations its query reads
// (through views already, since the request was widened before it was
// decided), each marked as read through the view.
func viewDefinition(st celpolicy.Statement) (view celpolicy.Table, reads []celpolicy.Table, ok bool) {
	if st.Command != "CREATE VIEW" && st.Command != "CREATE MATERIALIZED VIEW" {
		return celpolicy.Table{}, nil, false
	}
	for _, t := range st.Tables {
		if t.Access == "write" && !ok {
			view, ok = t, true
		}
	}
	if !ok {
		return celpolicy.Table{}, nil, false
	}
	via := view.Schema + "." + view.Name
	for _, t := range st.Tables {
		if t.Access == "read" {
			if t.Via == "" {
				t.Via = via
			}
			reads = append(reads, t)
		}
	}
	return view, reads, true
}

// renamedRelation reads ALTER TABLE|VIEW|MATERIALIZED VIEW … RENAME TO
// and … SET SCHEMA: the relation's schema as written ("" when
// unqualified) and name, and its new schema ("" when unchanged) and name.
func renamedRelation(text string) (r renaming, ok bool) {
	tree, err := pg.Parse(text)
	if err != nil || len(tree.Stmts) != 1 {
		return renaming{}, false
	}
	relation := func(t pg.ObjectType) bool {
		return t == pg.ObjectType_OBJECT_TABLE || t == pg.ObjectType_OBJECT_VIEW || t == pg.ObjectType_OBJECT_MATVIEW
	}
	if rs := tree.Stmts[0].Stmt.GetRenameStmt(); rs != nil && rs.Relation != nil && relation(rs.RenameType) {
		return renaming{schema: rs.Relation.Schemaname, from: rs.Relation.Relname, to: rs.Newname}, true
	}
	if as := tree.Stmts[0].Stmt.GetAlterObjectSchemaStmt(); as != nil && as.Relation != nil && relation(as.ObjectType) {
		return renaming{schema: as.Relation.Schemaname, from: as.Relation.Relname, toSchema: as.Newschema, to: as.Relation.Relname}, true
	}
	return renaming{}, false
}

// A statement can make a name reach what the shared catalog does not
// show until its transaction commits (its own connection sees only what
// is committed): ALTER VIEW v RENAME TO w, or SET SCHEMA, makes w read
// what v read; ALTER TABLE payments INHERIT p, or ALTER TABLE p ATTACH
// PARTITION payments, makes a read of p read payments. So what the name
// reaches is asked before the statement runs, and kept by the session
// (viewReads) when it is sent, for later statements (pipelined ones too),
// as for the session's own views; and within one request, for the
// statements behind it (withReadsThroughViews). The session keeps it after a ROLLBACK too:
// a later read of the name is judged with more than it reads, never less.

// carrying is what a statement carries: what a read of from (schema as
// written) reaches, a read of to (in toSchema, "" as written) reaches
// too. self: from itself is read through to (a new child).
type carrying struct {
	renaming
	self bool
}

// carriedBy reads a statement that makes a name reach more: a relation's
// rename or move, or a table made a child of another.
func carriedBy(st celpolicy.Statement) (carrying, bool) {
	if !strings.HasPrefix(st.Command, "ALTER ") {
		return carrying{}, false
	}
	if r, ok := renamedRelation(st.Text); ok {
		return carrying{renaming: r}, true
	}
	tree, err := pg.Parse(st.Text)
	if err != nil || len(tree.Stmts) != 1 {
		return carrying{}, false
	}
	at := tree.Stmts[0].Stmt.GetAlterTableStmt()
	if at == nil || at.Relation == nil {
		return carrying{}, false
	}
	for _, c := range at.Cmds {
		cmd := c.GetAlterTableCmd()
		if cmd == nil {
			continue
		}
		switch cmd.Subtype {
		case pg.AlterTableType_AT_AddInherit:
			if p := cmd.Def.GetRangeVar(); p != nil {
				return carrying{renaming: renaming{schema: at.Relation.Schemaname, from: at.Relation.Relname, toSchema: p.Schemaname, to: p.Relname}, self: true}, true
			}
		case pg.AlterTableType_AT_AttachPartition:
			if pc := cmd.Def.GetPartitionCmd(); pc != nil && pc.Name != nil {
				return carrying{renaming: renaming{schema: pc.Name.Schemaname, from: pc.Name.Relname, toSchema: at.Relation.Schemaname, to: at.Relation.Relname}, self: true}, true
			}
		}
	}
	return carrying{}, false
}

// carriedReads is what c makes its new name reach, asked of the catalog
// (and of pending, what earlier statements of the request carried) before
// it runs, with the keys (viewReads') it is read by.
func (s *session) carriedReads(c carrying, pending map[string][]celpolicy.Table) (keys []string, reads []celpolicy.Table, _ error) {
	from := celpolicy.Table{Schema: c.schema, Name: c.from, Access: "read"}
	got, _, err := s.readThrough(from)
	if err != nil {
		return nil, nil, err
	}
	if c.self {
		via := c.toSchema
		if via == "" {
			via = "public"
		}
		from.Via = via + "." + c.to
		reads = append(reads, from)
		for _, t := range got {
			t.Via = from.Via
			reads = append(reads, t)
		}
	} else {
		reads = got
	}
	reads = append(reads, pending[c.schema+"\x00"+c.from]...)
	if s.cat.unqualifiedReaches(c.schema) {
		reads = append(reads, pending["\x00"+c.from]...)
	}
	if c.self {
		// The parent is named on its own: unqualified, it is found on
		// the search path, whatever the child's schema.
		return renaming{schema: c.toSchema, to: c.to}.newKeys(s.cat.searchPath), reads, nil
	}
	return c.newKeys(s.cat.searchPath), reads, nil
}

// newKeys are the keys (as viewReads') a relation is read by under its
// new name: toSchema's (or, "" for unchanged, the schema as written), and
// the unqualified name when that schema is on the search path.
func (r renaming) newKeys(searchPath []string) []string {
	schema := r.toSchema
	if schema == "" {
		schema = r.schema
	}
	if schema == "" {
		return []string{"\x00" + r.to}
	}
	keys := []string{schema + "\x00" + r.to}
	if schema == "public" || schema == "pg_temp" || slices.Contains(searchPath, schema) {
		keys = append(keys, "\x00"+r.to)
	}
	return keys
}

// renamedSchema reads ALTER SCHEMA … RENAME TO: the old and new names.
func renamedSchema(st celpolicy.Statement) (from, to string, ok bool) {
	if st.Via != "" || !strings.HasPrefix(st.Command, "ALTER ") {
		return "", "", false
	}
	tree, err := pg.Parse(st.Text)
	if err != nil || len(tree.Stmts) != 1 {
		return "", "", false
	}
	rs := tree.Stmts[0].Stmt.GetRenameStmt()
	if rs == nil || rs.RenameType != pg.ObjectType_OBJECT_SCHEMA {
		return "", "", false
	}
	return rs.Subname, rs.Newname, true
}

// maxSchemaAliases bounds the schema renames a session remembers. Past
// it, a further rename is refused (withReadsThroughViews): forgetting one
// instead would judge a read through a schema renamed in the open
// transaction without what the catalog still shows under its old name.
const maxSchemaAliases = 256

// carry keeps what a statement sent makes names reach (carriedBy), under
// their keys, before it has run: a statement pipelined behind it is
// judged before its answer comes. Should it fail, the names only list
// more than they read.
func (c *sessionCatalog) carry(keys []string, reads []celpolicy.Table) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range keys {
		c.addViewReads(k, reads)
	}
	c.local++
}

// carrySchema keeps a schema rename sent (new name to old), before it has
// run, as carry does.
func (c *sessionCatalog) carrySchema(from, to string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.schemaAliases == nil {
		c.schemaAliases = map[string][]string{}
	}
	// Never emptied: renames past the bound are refused before they are
	// sent (schemaRenamesFull).
	if !slices.Contains(c.schemaAliases[to], from) {
		c.schemaAliases[to] = append(c.schemaAliases[to], from)
		c.schemaRenames++
	}
	c.local++
}

// schemaRenamesFull reports whether n more schema renames would pass
// what the session remembers.
func (c *sessionCatalog) schemaRenamesFull(n int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.schemaRenames+n > maxSchemaAliases
}

// schemaAliasesOf lists the names the session's schema renames gave the
// schemas before (transitively), the schemas themselves left out.
func (c *sessionCatalog) schemaAliasesOf(schemas []string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	seen := map[string]bool{}
	for _, s := range schemas {
		seen[s] = true
	}
	work := slices.Clone(schemas)
	for len(work) > 0 && len(out) < maxSchemaAliases {
		s := work[0]
		work = work[1:]
		for _, old := range c.schemaAliases[s] {
			if !seen[old] {
				seen[old] = true
				out = append(out, old)
				work = append(work, old)
			}
		}
	}
	return out
}
