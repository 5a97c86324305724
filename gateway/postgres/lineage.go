package postgres

import (
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

// sessionCatalog is the database's catalog as one caller's session sees
// it: names resolve through the session's search path, and relations,
// prepared statements and cursors the session created through the gateway
// are known before (or without) the shared catalog seeing them. It is what
// masks are planned with (sqlfacts.Guard).
type sessionCatalog struct {
	srv        *Server
	resource   string
	searchPath []string

	mu    sync.Mutex
	named map[string]string // kind \x00 name -> SQL
	// stamps orders definitions and forgetNamed (request side); forgot
	// is when each name was last taken by a Parse or Bind. Past
	// maxForgot names, forgot is emptied and forgotAll raised to now: a
	// definition sent before that is not applied (fail closed: EXECUTE
	// or FETCH of its name is refused while masks apply).
	stamps    uint64
	forgot    map[string]uint64
	forgotAll uint64
	// overflowed are the kinds of which a named statement or portal was
	// in forgot when it was emptied (tookName): the unnamed ones, which
	// SQL cannot name, do not count.
	overflowed map[string]bool
	created    map[string]*sqlfacts.RelationInfo
	// proposed are the tables the session has sent a CREATE for,
	// answered or not (createdHere).
	proposed map[string]bool
	// viewReads are the relations the session's own views read, by the
	// views' names ("schema\x00name", and "\x00name" for a name the
	// session's unqualified references reach), so that a read through a
	// temporary view the shared catalog cannot see is still judged with
	// them (withReadsThroughViews); and what the session's renames and
	// INHERIT or ATTACH PARTITION made a name reach (carriedBy). Entries
	// are never dropped: a name reused for another relation only lists
	// more tables.
	viewReads map[string][]celpolicy.Table
	// viewCalls are the functions, not built in, the session's own views
	// call, by the same keys as viewReads.
	viewCalls map[string][]celpolicy.Call
	// lineage caches a statement's lineage, valid while neither the
	// shared catalog nor this session's definitions change.
	lineage    map[string][]sqlfacts.Lineage
	generation uint64 // the shared catalog's, when lineage was filled
	// schemaAliases are the schemas the session renamed: new name to
	// old names (a read through the new name is judged with the old's).
	schemaAliases map[string][]string
	schemaRenames int // the pairs in schemaAliases
	// ddlInTx: DDL succeeded since the last end of a transaction.
	ddlInTx  bool
	local    uint64 // bumped by this session's own definitions
	cachedAt uint64
}

// maxForgot bounds how many names a session's catalog remembers taking:
// a client that names each statement anew must not grow it without end.
const maxForgot = 1024

// maxLineageCache bounds the per-session lineage cache.
const maxLineageCache = 256

func newSessionCatalog(srv *Server, resource string, searchPath []string) *sessionCatalog {
	if len(searchPath) == 0 {
		searchPath = []string{"pg_catalog", "public"}
	}
	return &sessionCatalog{srv: srv, resource: resource, searchPath: searchPath,
		named: map[string]string{}, forgot: map[string]uint64{}, created: map[string]*sqlfacts.RelationInfo{},
		proposed: map[string]bool{}, lineage: map[string][]sqlfacts.Lineage{}, viewReads: map[string][]celpolicy.Table{},
		viewCalls: map[string][]celpolicy.Call{}}
}

// Relation implements sqlfacts.Catalog.
func (c *sessionCatalog) Relation(schema, name string) (*sqlfacts.RelationInfo, error) {
	c.mu.Lock()
	mine := c.created[schema+"\x00"+name]
	if mine == nil && schema == "" {
		mine = c.created["pg_temp\x00"+name]
	}
	c.mu.Unlock()
	schemas := []string{schema}
	if schema == "" {
		schemas = c.searchPath
	}
	if schema == "pg_temp" {
		if mine == nil {
			return nil, nil
		}
		return mine, nil
	}
	shared, err := c.srv.catalog.relation(c.resource, schemas, name)
	if err != nil {
		return nil, err
	}
	switch {
	case mine == nil:
		return shared, nil
	case shared == nil:
		return mine, nil
	case shared.Schema == mine.Schema && shared.Name == mine.Name:
		// The catalog's answer, once it has one, is the fuller: what
		// has been made to inherit from the table since it was created.
		return shared, nil
	}
	// Which one the statement reads depends on whether this session's
	// relation still exists: no lineage can be sure.
	return nil, fmt.Errorf("%s is both a relation this session created (%s.%s) and %s.%s in the database", name, mine.Schema, mine.Name, shared.Schema, shared.Name)
}

// Function implements sqlfacts.Catalog.
func (c *sessionCatalog) Function(schema, name string) (*sqlfacts.FunctionInfo, error) {
	schemas := []string{schema}
	if schema == "" {
		schemas = c.searchPath
	}
	return c.srv.catalog.function(c.resource, schemas, name)
}

// createdHere reports whether the session created a relation of that name
// through the gateway (a temporary table, or one its open transaction
// made), which the shared catalog may not show.
func (c *sessionCatalog) createdHere(schema, name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.created[schema+"\x00"+name] != nil || c.created["\x00"+name] != nil || c.created["pg_temp\x00"+name] != nil ||
		c.proposed[schema+"\x00"+name] || c.proposed["\x00"+name]
}

// UserOperator implements sqlfacts.OperatorCatalog.
func (c *sessionCatalog) UserOperator(name string) (bool, error) {
	return c.srv.catalog.userOperator(c.resource, name)
}

// endTransaction reports whether DDL succeeded since the last end of a
// transaction (a ReadyForQuery outside one), and forgets it: until then
// the shared catalog's connection could not see it, and may have cached
// what it saw instead.
func (c *sessionCatalog) endTransaction() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	was := c.ddlInTx
	c.ddlInTx = false
	return was
}

// epoch changes whenever the session's view of the catalog may have: the
// shared catalog's generation, and the session's own definitions.
func (c *sessionCatalog) epoch() uint64 {
	gen := c.srv.catalog.generation(c.resource)
	c.mu.Lock()
	defer c.mu.Unlock()
	return gen*1000003 + c.local
}

// forgetNamed drops what SQL PREPARE or DECLARE defined under a name that
// a protocol Parse ("S:name") or Bind ("P:name") is about to define: the
// upstream has one namespace for both, so SQL EXECUTE or FETCH of the name
// would run the protocol's statement, which was never analysed as theirs.
// Without an entry, EXECUTE and FETCH of the name are refused while masks
// apply.
func (c *sessionCatalog) forgetNamed(key string) {
	kind := "prepared statement"
	if key[0] == 'P' {
		kind = "cursor"
	}
	c.forget(kind + "\x00" + key[2:])
}

func (c *sessionCatalog) forget(k string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stamps++
	if _, ok := c.forgot[k]; !ok && len(c.forgot) >= maxForgot {
		for taken := range c.forgot {
			if kind, name, _ := strings.Cut(taken, "\x00"); name != "" {
				if c.overflowed == nil {
					c.overflowed = map[string]bool{}
				}
				c.overflowed[kind] = true
			}
		}
		clear(c.forgot)
		c.forgotAll = c.stamps
	}
	c.forgot[k] = c.stamps // a PREPARE or DECLARE sent before this is not applied
	if _, ok := c.named[k]; ok {
		delete(c.named, k)
		c.local++
	}
}

// tookName reports whether a protocol Parse or Bind ever gave the name to
// a statement or portal in this session (or too many names were taken to
// tell, some of that kind among them: then every name of the kind
// counts). Only a named one of the kind counts for that: a driver that
// names each statement anew, and binds the unnamed portal, must not find
// the cursors its functions return (FETCH ALL IN "<unnamed portal 1>")
// refused once it has named enough statements.
func (c *sessionCatalog) tookName(kind, name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.forgot[kind+"\x00"+name]
	return ok || c.overflowed[kind]
}

// forgetRedefined drops, before a request is decided, the definitions its
// own PREPARE or DECLARE statements will replace: until the new one is
// answered (apply), EXECUTE or FETCH of the name, in this request or one
// pipelined behind it, must not be judged by the old one. Without an
// entry they are refused while masks apply. A definition whose name cannot
// be read drops every one of its kind.
func (c *sessionCatalog) forgetRedefined(req *celpolicy.PostgresRequest) {
	for _, st := range req.Statements {
		if st.Via != "" || st.Command != "PREPARE" && st.Command != "DECLARE CURSOR" {
			continue
		}
		kind := "prepared statement"
		if st.Command == "DECLARE CURSOR" {
			kind = "cursor"
		}
		named := false
		if lins, err := c.lineageOf(st.Text); err == nil {
			for _, l := range lins {
				if l.Defines != nil {
					c.forget(l.Defines.Kind + "\x00" + l.Defines.Name)
					named = true
				}
			}
		}
		if !named {
			c.mu.Lock()
			for k := range c.named {
				if strings.HasPrefix(k, kind+"\x00") {
					delete(c.named, k)
				}
			}
			c.local++
			c.mu.Unlock()
		}
	}
}

// definedKey is a definition's key in sessionCatalog.named, or "".
func definedKey(n *sqlfacts.Named) string {
	if n == nil || n.Query == "" {
		return ""
	}
	return n.Kind + "\x00" + n.Name
}

// Named implements sqlfacts.Session.
func (c *sessionCatalog) Named(kind, name string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	q, ok := c.named[kind+"\x00"+name]
	return q, ok
}

// lineageOf is sqlfacts.LineageOf, cached.
func (c *sessionCatalog) lineageOf(sql string) ([]sqlfacts.Lineage, error) {
	gen := c.srv.catalog.generation(c.resource)
	c.mu.Lock()
	if gen != c.generation || c.local != c.cachedAt || len(c.lineage) >= maxLineageCache {
		c.lineage = map[string][]sqlfacts.Lineage{}
		c.generation, c.cachedAt = gen, c.local
	}
	if l, ok := c.lineage[sql]; ok {
		c.mu.Unlock()
		return l, nil
	}
	c.mu.Unlock()
	l, err := sqlfacts.LineageOf(sql, c, c)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if gen == c.generation {
		c.lineage[sql] = l
	}
	c.mu.Unlock()
	return l, nil
}

// effects is what a statement changes in the session's view of the
// catalog once it has succeeded.
type effects struct {
	defines *sqlfacts.Named
	creates []sqlfacts.Created
	// ddl: the shared catalog's cached definitions are stale.
	ddl bool
	// view and viewReads: a CREATE VIEW's view and what it reads.
	view      celpolicy.Table
	viewReads []celpolicy.Table
	// viewCalls: the functions, not built in, a CREATE VIEW's view calls.
	viewCalls []celpolicy.Call
	// renamed: an ALTER … RENAME TO of a relation (renamedRelation).
	renamed *renaming
	// carry: what the statement makes a name reach (carriedBy); kept by
	// the session when it is sent (sessionCatalog.carry).
	carry *carrying
	// schemaFrom and schemaTo: an ALTER SCHEMA … RENAME TO, kept when it
	// is sent (sessionCatalog.carrySchema).
	schemaFrom, schemaTo string
	// stamp orders the statement, when it was sent, with forgetNamed: a
	// definition sent before a Parse or Bind took its name is not applied
	// when its answer comes after.
	stamp uint64
}

// effectsOf works out a statement's effects from its facts and lineage.
func (c *sessionCatalog) effectsOf(st celpolicy.Statement) *effects {
	e := &effects{}
	switch {
	case strings.HasPrefix(st.Command, "CREATE "), strings.HasPrefix(st.Command, "ALTER "), strings.HasPrefix(st.Command, "DROP "),
		st.Command == "SELECT INTO", st.Command == "COMMENT", st.Command == "GRANT", st.Command == "REVOKE":
		e.ddl = true
	}
	// A name that DEALLOCATE or CLOSE removed stays known here: the
	// database refuses EXECUTE or FETCH of it, and defining it again
	// replaces it.
	if st.Command != "PREPARE" && st.Command != "DECLARE CURSOR" && !e.ddl {
		return nil
	}
	c.mu.Lock()
	c.stamps++
	e.stamp = c.stamps
	c.mu.Unlock()
	if v, reads, ok := viewDefinition(st); ok {
		e.view, e.viewReads = v, reads
		for _, call := range st.Calls {
			if !call.Builtin {
				e.viewCalls = append(e.viewCalls, call)
			}
		}
	}
	if strings.HasPrefix(st.Command, "ALTER ") {
		if r, ok := renamedRelation(st.Text); ok {
			e.renamed = &r
		}
		if c, ok := carriedBy(st); ok {
			e.carry = &c
		}
		if from, to, ok := renamedSchema(st); ok {
			e.schemaFrom, e.schemaTo = from, to
		}
	}
	lins, err := c.lineageOf(st.Text)
	if err != nil {
		return e
	}
	for _, l := range lins {
		if l.Defines != nil {
			e.defines = l.Defines
		}
		e.creates = append(e.creates, l.Creates...)
	}
	if len(e.creates) > 0 {
		// Sent, not yet answered: a write pipelined behind it to the new
		// table is not taken for one to a table the catalog lost.
		c.mu.Lock()
		if len(c.proposed) >= maxProposed {
			clear(c.proposed)
		}
		for _, cr := range e.creates {
			c.proposed[cr.Schema+"\x00"+cr.Name] = true
			c.proposed["\x00"+cr.Name] = true
		}
		c.mu.Unlock()
	}
	return e
}

// maxProposed bounds the names of tables a session has asked to create.
const maxProposed = 1024

// apply records a statement's effects after it succeeded.
func (c *sessionCatalog) apply(e *effects) {
	if e == nil {
		return
	}
	if e.ddl {
		c.srv.catalog.invalidate(c.resource)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ddlInTx = c.ddlInTx || e.ddl
	c.local++
	c.applyViewReads(e)
	if k := definedKey(e.defines); k != "" && c.forgot[k] < e.stamp && c.forgotAll < e.stamp {
		c.named[k] = e.defines.Query
	}
	for _, cr := range e.creates {
		info := &sqlfacts.RelationInfo{Schema: cr.Schema, Name: cr.Name, Kind: cr.Kind}
		for _, col := range cr.Columns {
			info.Columns = append(info.Columns, col.Name)
		}
		c.created[cr.Schema+"\x00"+cr.Name] = info
		if !cr.Temp && !slices.Contains(c.searchPath, cr.Schema) {
			continue
		}
		c.created["\x00"+cr.Name] = info
	}
}

// guard is the session's PostgreSQL guard (core.Admission.Guard): the
// wire's invariants and the mask plan, with this session's catalog.
func (s *session) guard(r celpolicy.Request, d celpolicy.Decision) celpolicy.Decision {
	req, ok := r.(*celpolicy.PostgresRequest)
	if !ok || s.cat == nil {
		return d
	}
	res := findPostgres(&s.srv.core.Bundles().Current().Payload.Model, s.cs.Resource())
	g := sqlfacts.Guard{Resource: res, Catalog: s.cat, Session: s.cat, Lineage: s.cat.lineageOf}
	return g.Apply(req, d)
}

// resolveCalls fills in what the database's catalog says of the functions
// a request calls (sqlfacts.ResolveCalls), with the session's search path.
func (s *session) resolveCalls(req *celpolicy.PostgresRequest) {
	if s.cat != nil {
		sqlfacts.ResolveCalls(req, s.cat)
	}
}

// detectorsOf lists the value-detector masks of a decision.
func detectorsOf(masks []celpolicy.MaskAction) []celpolicy.MaskAction {
	var out []celpolicy.MaskAction
	for _, m := range masks {
		if m.Target.Detector != "" {
			out = append(out, m)
		}
	}
	return out
}

// planOf is a statement's masks in a request's plan, or nil.
func planOf(p *celpolicy.MaskPlan, i int) *celpolicy.StatementMasks {
	if p == nil || i < 0 || i >= len(p.Statements) {
		return nil
	}
	return &p.Statements[i]
}

// renaming is an ALTER TABLE|VIEW … RENAME TO or SET SCHEMA: schema as
// written, toSchema "" unless moved.
type renaming struct{ schema, from, toSchema, to string }

// applyViewReads records what a view the session created reads, and
// carries it to a view's new name. c.mu is held.
func (c *sessionCatalog) applyViewReads(e *effects) {
	if e.viewReads != nil {
		// Added to, not replaced: CREATE OR REPLACE VIEW can be rolled
		// back (to a savepoint), and the view then reads what it did.
		c.addViewReads(e.view.Schema+"\x00"+e.view.Name, e.viewReads)
		if e.view.Schema == "pg_temp" || slices.Contains(c.searchPath, e.view.Schema) {
			// Another schema's view of the same name may be there too:
			// keep both, so that neither is missed.
			c.addViewReads("\x00"+e.view.Name, e.viewReads)
		}
	}
	if e.viewCalls != nil {
		c.addViewCalls(e.view.Schema+"\x00"+e.view.Name, e.viewCalls)
		if e.view.Schema == "pg_temp" || slices.Contains(c.searchPath, e.view.Schema) {
			c.addViewCalls("\x00"+e.view.Name, e.viewCalls)
		}
	}
	if r := e.renamed; r != nil {
		schemas := []string{r.schema, ""}
		if r.schema == "" {
			schemas = []string{"public", "pg_temp", ""}
		}
		var reads []celpolicy.Table
		var calls []celpolicy.Call
		for _, schema := range schemas {
			reads = append(reads, c.viewReads[schema+"\x00"+r.from]...)
			calls = append(calls, c.viewCalls[schema+"\x00"+r.from]...)
		}
		for _, k := range r.newKeys(c.searchPath) {
			c.addViewReads(k, reads)
			c.addViewCalls(k, calls)
		}
	}
}

// addViewCalls adds to a name's recorded calls the ones it lacks.
func (c *sessionCatalog) addViewCalls(key string, calls []celpolicy.Call) {
	for _, f := range calls {
		if !slices.Contains(c.viewCalls[key], f) {
			c.viewCalls[key] = append(c.viewCalls[key], f)
		}
	}
}

// addViewReads adds to a name's recorded reads the ones it lacks.
func (c *sessionCatalog) addViewReads(key string, reads []celpolicy.Table) {
	for _, t := range reads {
		if !slices.Contains(c.viewReads[key], t) {
			c.viewReads[key] = append(c.viewReads[key], t)
		}
	}
}
