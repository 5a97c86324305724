package postgres

import (
	"fmt"
	"strings"
	"time"

	pg "github.com/pganalyze/pg_query_go/v6"

	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

// A write reaches tables the statement does not name: a partitioned or
// inherited table's rows live in its children, a foreign key's ON DELETE
// (or ON UPDATE) CASCADE, SET NULL or SET DEFAULT writes the tables that
// reference it, TRUNCATE … CASCADE empties them, and DROP SCHEMA … CASCADE
// drops every table in the schema. A rule about a table must see those
// writes, so before a request is decided the catalog is asked which tables
// each write reaches, and they are added to its statement as written.

// reachModes are the statements whose writes reach further, with the
// foreign keys that carry them: "delete", "update" or "all" (TRUNCATE,
// which with CASCADE empties every referencing table; without, it fails).
//
// An INSERT follows ON UPDATE actions only when it may update (ON CONFLICT
// DO UPDATE: insertUpdates); COPY FROM, ALTER TABLE (which rewrites or
// renames the children with the parent) and DROP TABLE (which drops
// partitions) follow only the descendants.
var reachModes = map[string]string{
	"INSERT": "", "DELETE": "delete", "UPDATE": "update", "MERGE": "merge", "TRUNCATE": "all",
	"COPY": "", "ALTER TABLE": "", "DROP TABLE": "",
}

// insertUpdates reports whether an INSERT has ON CONFLICT DO UPDATE (or
// cannot be read: fail closed).
func insertUpdates(text string) bool {
	tree, err := pg.Parse(text)
	if err != nil || len(tree.Stmts) != 1 {
		return true
	}
	ins := tree.Stmts[0].Stmt.GetInsertStmt()
	if ins == nil {
		return true // inside another statement (a writable CTE): as if it could
	}
	return ins.OnConflictClause != nil && ins.OnConflictClause.Action == pg.OnConflictAction_ONCONFLICT_UPDATE
}

// dml are the statements that write rows: one whose table the catalog
// does not show is refused (DROP TABLE IF EXISTS of no table is not).
var dml = map[string]bool{"INSERT": true, "DELETE": true, "UPDATE": true, "MERGE": true, "TRUNCATE": true, "COPY": true}

// targetCTE finds the relation named $1 in the schemas $2, the first
// match in their order, as the search path does.
const targetCTE = `target AS (
  SELECT c.oid FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.unnest($2::text[]) WITH ORDINALITY AS s(nsp, ord) ON s.nsp = n.nspname
  WHERE c.relname = $1 ORDER BY s.ord LIMIT 1
)`

// viewEdges are a view's (or materialized view's) edges to the relations
// its definition reads: its _RETURN rule's dependencies.
const viewEdges = `SELECT r.ev_class, d.refobjid FROM pg_catalog.pg_rewrite r
  JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid
   AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid <> r.ev_class
  WHERE r.rulename = '_RETURN'`

// reachedRows lists the target (its row has target true) and what the
// edges reach from it, transitively.
const reachedRows = `, reach(oid) AS (
  SELECT oid FROM target
  UNION
  SELECT e.child FROM edges e JOIN reach r ON e.parent = r.oid
)
SELECT n.nspname, c.relname, reach.oid IN (SELECT oid FROM target) FROM reach
JOIN pg_catalog.pg_class c ON c.oid = reach.oid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
ORDER BY 3 DESC, 1, 2`

// reachSQL lists the table named $1 (found in the schemas $2, in order;
// its row has target true) and the tables a write to it reaches: its
// inheritance and partition descendants, the relations a view reads (an
// updatable view writes its base table), and the tables whose foreign
// keys carry the write ($3: delete, update, merge or all; "" for none),
// transitively.
const reachSQL = `WITH RECURSIVE ` + targetCTE + `, edges(parent, child) AS (
  SELECT inhparent, inhrelid FROM pg_catalog.pg_inherits
  UNION ALL
  ` + viewEdges + `
  UNION ALL
  SELECT confrelid, conrelid FROM pg_catalog.pg_constraint
  WHERE contype = 'f' AND ($3 = 'all'
    OR $3 IN ('delete', 'merge') AND confdeltype IN ('c', 'n', 'd')
    OR $3 IN ('update', 'merge') AND confupdtype IN ('c', 'n', 'd'))
)` + reachedRows

// viewReadSQL lists the relation named $1 (found in the schemas $2; its
// row has target true) and the relations a read of it reads: a view's or
// materialized view's the relations its definition reads, and an
// inherited or partitioned table's descendants (whose rows a SELECT of
// it returns), transitively.
//
// The functions that are not built in a reached view calls are listed too
// (the fourth column is their volatility): a rule that denies calls of
// user functions must see one a view calls. An extension's functions are
// not listed: an administrator installed them with CREATE EXTENSION, as
// for operators (the pg_stat_statements view calls its extension's
// pg_stat_statements(), and reading it is judged as reading the view). A view's definition is listed
// (the fifth column) when it calls one
// of the built-ins $3 (sqlfacts.DynamicFunctions): the SQL such a built-in
// runs is a string to the catalog, so the view's dependencies do not show
// what it reads. (Only then: pg_get_viewdef locks the relations the view
// reads, and would wait behind another session's ALTER TABLE of them.)
const viewReadSQL = `WITH RECURSIVE ` + targetCTE + `, edges(parent, child) AS (
  SELECT inhparent, inhrelid FROM pg_catalog.pg_inherits
  UNION ALL
  ` + viewEdges + `
), reach(oid) AS (
  SELECT oid FROM target
  UNION
  SELECT e.child FROM edges e JOIN reach r ON e.parent = r.oid
)
SELECT n.nspname, c.relname, reach.oid IN (SELECT oid FROM target), NULL,
  CASE WHEN c.relkind IN ('v', 'm') AND EXISTS (
    SELECT FROM pg_catalog.pg_rewrite r, pg_catalog.pg_proc p
    WHERE r.ev_class = c.oid AND p.pronamespace = 'pg_catalog'::pg_catalog.regnamespace
      AND p.proname = ANY ($3::text[])
      AND pg_catalog.strpos(r.ev_action::text, ':funcid ' || p.oid || ' ') > 0)
  THEN pg_catalog.pg_get_viewdef(c.oid) END
FROM reach
JOIN pg_catalog.pg_class c ON c.oid = reach.oid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
UNION ALL
SELECT DISTINCT n.nspname, p.proname, false, p.provolatile::text, NULL
FROM reach
JOIN pg_catalog.pg_rewrite r ON r.ev_class = reach.oid AND r.rulename = '_RETURN'
JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid
 AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
JOIN pg_catalog.pg_proc p ON p.oid = d.refobjid
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname <> 'pg_catalog' AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend e
  WHERE e.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND e.objid = p.oid AND e.deptype = 'e')
ORDER BY 3 DESC, 1, 2`

// schemaTablesSQL lists the relations in the schemas $1.
const schemaTablesSQL = `SELECT n.nspname, c.relname FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY ($1::text[]) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
ORDER BY 1, 2`

// reached returns the tables a write reaches from a table, cached like
// the catalog's other answers. found is false when the catalog has no such
// table (not cached: it may be created any moment).
func (c *catalogs) reached(resource string, schemas []string, name, mode string) (_ []celpolicy.Table, found bool, _ error) {
	cat, res, err := c.get(resource)
	if err != nil {
		return nil, false, err
	}
	defer cat.mu.Unlock()
	key := strings.Join(schemas, "\x00") + "\x01" + name + "\x01" + mode
	if e, ok := cat.reach[key]; ok && time.Since(e.at) < catalogTTL {
		return e.v, true, nil
	}
	rows, err := cat.query(c, res, reachSQL, name, textArray(schemas), mode)
	if err != nil {
		return nil, false, err
	}
	if len(rows) == 0 || string(rows[0][2]) != "t" {
		return nil, false, nil
	}
	out := tablesOf(rows[1:], "write")
	cat.reach[key] = cached[[]celpolicy.Table]{v: out, at: time.Now()}
	return out, true, nil
}

// readThroughKey is readThrough's key in the catalog's reach cache.
func readThroughKey(schemas []string, name string) string {
	return strings.Join(schemas, "\x00") + "\x01" + name + "\x01\x00read"
}

// readThrough returns the relations a read of the relation reaches
// through view definitions and inheritance (none for a plain table, or a
// name the catalog does not have), cached like the catalog's other answers: a view made or
// changed through the gateway resets the cache at once, one made directly
// on the database is seen within catalogTTL.
//
// It also lists the relations named only in the SQL text a reached view
// gives a built-in (query_to_xml('SELECT * FROM payments', …)), and the
// functions that are not built in that reached views call. A view whose
// definition cannot be analysed, or runs SQL that cannot be known, is an
// error: the read is refused.
func (c *catalogs) readThrough(resource string, schemas []string, name string) (_ readThroughs, _ error) {
	cat, res, err := c.get(resource)
	if err != nil {
		return readThroughs{}, err
	}
	defer cat.mu.Unlock()
	key := readThroughKey(schemas, name)
	if e, ok := cat.views[key]; ok && time.Since(e.at) < catalogTTL {
		return e.v, nil
	}
	rows, err := cat.query(c, res, viewReadSQL, name, textArray(schemas), dynamicFunctions)
	if err != nil {
		return readThroughs{}, err
	}
	var out readThroughs
	if len(rows) > 0 && string(rows[0][2]) == "t" {
		via := string(rows[0][0]) + "." + string(rows[0][1])
		for _, r := range rows[1:] {
			if r[3] != nil { // a function a view calls
				out.calls = append(out.calls, celpolicy.Call{Schema: string(r[0]), Name: string(r[1]), Volatility: sqlfacts.VolatilityName(string(r[3]))})
				continue
			}
			out.reached = append(out.reached, celpolicy.Table{Schema: string(r[0]), Name: string(r[1]), Access: "read", Via: via})
		}
		for _, r := range rows {
			if r[4] == nil {
				continue
			}
			got, err := dynamicReads(string(r[0])+"."+string(r[1]), string(r[4]))
			if err != nil {
				return readThroughs{}, err
			}
			for _, t := range got {
				t.Via = via
				if !hasTable(out.reached, t) && !hasTable(out.dynamic, t) {
					out.dynamic = append(out.dynamic, t)
				}
			}
		}
	}
	cat.views[key] = cached[readThroughs]{v: out, at: time.Now()}
	return out, nil
}

// readThroughs is what a read of a relation reaches (catalogs.readThrough).
type readThroughs struct {
	// reached are the relations views and inheritance reach.
	reached []celpolicy.Table
	// dynamic are the relations named only in the SQL a reached view
	// gives a built-in: what a read of them reaches is the caller's to add.
	dynamic []celpolicy.Table
	// calls are the functions, not built in, that reached views call.
	calls []celpolicy.Call
}

// dynamicFunctions is sqlfacts.DynamicFunctions as a parameter.
var dynamicFunctions = textArray(sqlfacts.DynamicFunctions())

// dynamicReads are the relations a view's definition reads through the
// SQL it gives built-ins (sqlfacts' statements via query_to_xml, …), as
// read; an error when the definition cannot be analysed, or what such a
// call runs cannot be known.
func dynamicReads(view, def string) ([]celpolicy.Table, error) {
	stmts, err := sqlfacts.Analyze(def)
	if err != nil {
		return nil, fmt.Errorf("the definition of view %s cannot be judged: %w", view, err)
	}
	var out []celpolicy.Table
	for _, st := range stmts {
		if st.Via == "" {
			continue // the view's own query: its tables are its dependencies
		}
		for _, t := range st.Tables {
			t.Access = "read"
			out = append(out, t)
		}
	}
	return out, nil
}

// schemaTables returns the relations in schemas (not cached: DROP SCHEMA
// is rare).
func (c *catalogs) schemaTables(resource string, schemas []string) ([]celpolicy.Table, error) {
	cat, res, err := c.get(resource)
	if err != nil {
		return nil, err
	}
	defer cat.mu.Unlock()
	rows, err := cat.query(c, res, schemaTablesSQL, textArray(schemas))
	if err != nil {
		return nil, err
	}
	return tablesOf(rows, "write"), nil
}

func tablesOf(rows [][][]byte, access string) []celpolicy.Table {
	out := make([]celpolicy.Table, 0, len(rows))
	for _, r := range rows {
		out = append(out, celpolicy.Table{Schema: string(r[0]), Name: string(r[1]), Access: access})
	}
	return out
}

// withReachedWrites returns the request with, in each statement, the
// tables its writes reach added as written (the request is copied when
// anything is added). why is set when the catalog could not say: the
// request is then refused (fail closed).
func (s *session) withReachedWrites(req *celpolicy.PostgresRequest) (_ *celpolicy.PostgresRequest, why string) {
	if s.cat == nil || req == nil {
		return req, ""
	}
	var out *celpolicy.PostgresRequest
	for i, st := range req.Statements {
		var more []celpolicy.Table
		mode, writes := reachModes[st.Command]
		switch {
		case writes:
			for _, t := range st.Tables {
				if t.Access != "write" || t.Schema == "pg_temp" {
					continue
				}
				schemas := []string{t.Schema}
				if t.Schema == "" || t.Schema == "public" {
					schemas = s.cat.searchPath
				}
				got, found, err := s.srv.catalog.reached(s.cat.resource, schemas, t.Name, mode)
				if err == nil && found && st.Command == "INSERT" {
					// Parsed again only where ON UPDATE actions would
					// reach more.
					if upd, _, uerr := s.srv.catalog.reached(s.cat.resource, schemas, t.Name, "update"); uerr != nil {
						err = uerr
					} else if len(upd) > len(got) && insertUpdates(st.Text) {
						got = upd
					}
				}
				if err != nil {
					return req, fmt.Sprintf("the tables a write to %s reaches could not be read from the catalog (%v)", t.Name, err)
				}
				if !found && dml[st.Command] && !s.cat.createdHere(t.Schema, t.Name) && !createdBefore(req.Statements[:i], t) {
					// Renamed, or made, in a transaction still open: what
					// it is, and what a write to it reaches, the catalog
					// cannot say yet.
					return req, fmt.Sprintf("%s writes %s, which the database's catalog does not show on the session's search path as read at connect (renamed or created in a transaction still open, made by a function, or found through a search_path set since?); the tables the write reaches cannot be known", st.Command, t.Name)
				}
				more = append(more, got...)
			}
		case st.Command == "DROP SCHEMA":
			schemas, err := droppedSchemas(st.Text)
			if err != nil {
				return req, err.Error()
			}
			got, err := s.srv.catalog.schemaTables(s.cat.resource, schemas)
			if err != nil {
				return req, fmt.Sprintf("the tables DROP SCHEMA drops could not be read from the catalog (%v)", err)
			}
			more = got
		}
		var add []celpolicy.Table
		for _, t := range more {
			if !hasTable(st.Tables, t) && !hasTable(add, t) {
				add = append(add, t)
			}
		}
		if len(add) == 0 {
			continue
		}
		if out == nil {
			cp := *req
			cp.Statements = append([]celpolicy.Statement(nil), req.Statements...)
			cp.Shape = "" // what it reaches is the catalog's now, not the shape's
			out = &cp
		}
		out.Statements[i].Tables = append(append([]celpolicy.Table(nil), st.Tables...), add...)
	}
	if out == nil {
		return req, ""
	}
	return out, ""
}

// createdBefore reports whether an earlier statement of the request
// creates the table (CREATE TABLE, CREATE TABLE AS, SELECT INTO).
func createdBefore(stmts []celpolicy.Statement, t celpolicy.Table) bool {
	for _, st := range stmts {
		switch st.Command {
		case "CREATE TABLE", "CREATE TABLE AS", "SELECT INTO", "CREATE VIEW", "CREATE MATERIALIZED VIEW":
			if len(st.Tables) > 0 && st.Tables[0].Name == t.Name {
				return true
			}
		}
	}
	return false
}

func hasTable(ts []celpolicy.Table, t celpolicy.Table) bool {
	for _, x := range ts {
		if x.Name == t.Name && (x.Schema == t.Schema || x.Schema == "" || t.Schema == "") {
			return true
		}
	}
	return false
}

// droppedSchemas reads the schemas a DROP SCHEMA names.
func droppedSchemas(text string) ([]string, error) {
	tree, err := pg.Parse(text)
	if err != nil || len(tree.Stmts) != 1 {
		return nil, fmt.Errorf("DROP SCHEMA could not be read (%v)", err)
	}
	ds := tree.Stmts[0].Stmt.GetDropStmt()
	if ds == nil {
		return nil, fmt.Errorf("DROP SCHEMA could not be read")
	}
	var out []string
	for _, o := range ds.Objects {
		if sv := o.GetString_(); sv != nil {
			out = append(out, sv.Sval)
		}
	}
	return out, nil
}
