package postgres

import (
	"fmt"

	pg "github.com/pganalyze/pg_query_go/v6"

	"github.com/gatehouse-dev/gatehouse/celpolicy"
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
	for i, st := range req.Statements {
		var add []celpolicy.Table
		for _, t := range st.Tables {
			if t.Via != "" || (t.Access != "read" && st.Command != "REFRESH MATERIALIZED VIEW") {
				continue
			}
			got, err := s.readThrough(t)
			if err != nil {
				return req, fmt.Sprintf("the relations a read of %s reaches through views could not be read from the catalog (%v)", t.Name, err)
			}
			for _, b := range got {
				if !hasTable(st.Tables, b) && !hasTable(add, b) {
					add = append(add, b)
				}
			}
		}
		if len(add) == 0 {
			continue
		}
		if out == nil {
			cp := *req
			cp.Statements = append([]celpolicy.Statement(nil), req.Statements...)
			cp.Shape = "" // what it reads is the catalog's now, not the shape's
			out = &cp
		}
		out.Statements[i].Tables = append(append([]celpolicy.Table(nil), st.Tables...), add...)
	}
	if out == nil {
		return req, ""
	}
	return out, ""
}

// readThrough is what a read of t reaches through views: the session's own
// (temporary) views' recorded reads, and the shared catalog's.
func (s *session) readThrough(t celpolicy.Table) ([]celpolicy.Table, error) {
	return s.readThroughDepth(t, 0)
}

// maxDynamicDepth bounds how many views deep readThrough follows the SQL
// views give built-ins (a view over query_to_xml of a view over …).
const maxDynamicDepth = 8

func (s *session) readThroughDepth(t celpolicy.Table, depth int) ([]celpolicy.Table, error) {
	out := s.cat.viewReadsOf(t.Schema, t.Name)
	if t.Schema == "pg_temp" {
		return out, nil
	}
	schemas := []string{t.Schema}
	if t.Schema == "" || t.Schema == "public" {
		schemas = s.cat.searchPath
	}
	got, dynamic, err := s.srv.catalog.readThrough(s.cat.resource, schemas, t.Name)
	if err != nil {
		return nil, err
	}
	out = append(out, got...)
	// What a view reads through a built-in's SQL is named there, not in
	// its dependencies: those names are read through in turn.
	for _, d := range dynamic {
		if depth >= maxDynamicDepth {
			return nil, fmt.Errorf("views run SQL through built-ins (query_to_xml, …) nested more than %d deep", maxDynamicDepth)
		}
		out = append(out, d)
		more, err := s.readThroughDepth(celpolicy.Table{Schema: d.Schema, Name: d.Name, Access: "read"}, depth+1)
		if err != nil {
			return nil, err
		}
		for _, m := range more {
			m.Via = d.Via
			out = append(out, m)
		}
	}
	return out, nil
}

// viewReadsOf lists what the session's own views of that name read: the
// qualified name's, and for a name written unqualified (or in pg_temp),
// the unqualified one's, since a temporary view comes first on the
// search path.
func (c *sessionCatalog) viewReadsOf(schema, name string) []celpolicy.Table {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.viewReads[schema+"\x00"+name]
	if schema == "" || schema == "public" || schema == "pg_temp" {
		out = append(append([]celpolicy.Table(nil), out...), c.viewReads["\x00"+name]...)
	}
	return out
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

// renamedRelation reads ALTER TABLE|VIEW|MATERIALIZED VIEW … RENAME TO:
// the relation's schema as written ("" when unqualified), old and new
// names.
func renamedRelation(text string) (schema, from, to string, ok bool) {
	tree, err := pg.Parse(text)
	if err != nil || len(tree.Stmts) != 1 {
		return "", "", "", false
	}
	rs := tree.Stmts[0].Stmt.GetRenameStmt()
	if rs == nil || rs.Relation == nil {
		return "", "", "", false
	}
	switch rs.RenameType {
	case pg.ObjectType_OBJECT_TABLE, pg.ObjectType_OBJECT_VIEW, pg.ObjectType_OBJECT_MATVIEW:
		return rs.Relation.Schemaname, rs.Relation.Relname, rs.Newname, true
	}
	return "", "", "", false
}
