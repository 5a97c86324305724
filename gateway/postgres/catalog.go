package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

// catalogs answers questions about an upstream's catalog that the gateway
// needs to decide and mask: which table column a result column comes from,
// and which function an OID names. It uses a connection of the gateway's
// own per resource, never a caller's, and caches answers per bundle
// revision.
type catalogs struct {
	srv *Server
	mu  sync.Mutex
	by  map[string]*catalog
}

type catalog struct {
	mu       sync.Mutex
	conn     *pgconn.PgConn
	revision uint64
	columns  map[uint32]map[uint16]string // relation oid -> attnum -> schema.table.column (canonical)
	funcs    map[uint32]fastPathFunc
	// Lineage's lookups, by search path and name; entries expire after
	// catalogTTL so that changes made outside the gateway are seen.
	relations map[string]cached[*sqlfacts.RelationInfo]
	functions map[string]cached[*sqlfacts.FunctionInfo]
	operators map[string]cached[bool] // name -> defined outside pg_catalog
	reach     map[string]cached[[]celpolicy.Table]
	views     map[string]cached[readThroughs]
	// generation counts invalidations, for the sessions' lineage and
	// decision caches; read without the lock.
	generation atomic.Uint64
}

type cached[T any] struct {
	v  T
	at time.Time
}

// fastPathFunc is what a fast-path call's OID names.
type fastPathFunc struct {
	schema, name, volatility string
}

// catalogTTL bounds how long a relation's or function's definition is
// trusted before it is read again. Changes made through the gateway are
// seen at once (invalidate); changes made directly on the database, within
// this time.
const catalogTTL = 30 * time.Second

func newCatalogs(s *Server) *catalogs { return &catalogs{srv: s, by: map[string]*catalog{}} }

func (c *catalogs) get(resource string) (*catalog, *bundle.Postgres, error) {
	active := c.srv.core.Bundles().Current()
	res := findPostgres(&active.Payload.Model, resource)
	if res == nil {
		return nil, nil, fmt.Errorf("resource %q is not in bundle revision %d", resource, active.Revision)
	}
	c.mu.Lock()
	cat, ok := c.by[resource]
	if !ok {
		cat = &catalog{}
		c.by[resource] = cat
	}
	c.mu.Unlock()
	cat.mu.Lock()
	if cat.revision != active.Revision {
		cat.reset()
		cat.revision = active.Revision
	}
	return cat, res, nil // returned locked
}

func (cat *catalog) reset() {
	cat.columns, cat.funcs = map[uint32]map[uint16]string{}, map[uint32]fastPathFunc{}
	cat.relations, cat.functions = map[string]cached[*sqlfacts.RelationInfo]{}, map[string]cached[*sqlfacts.FunctionInfo]{}
	cat.operators = map[string]cached[bool]{}
	cat.reach = map[string]cached[[]celpolicy.Table]{}
	cat.views = map[string]cached[readThroughs]{}
	cat.generation.Add(1)
}

// invalidate forgets what the catalog said about a resource: a statement
// through the gateway changed its definitions.
func (c *catalogs) invalidate(resource string) {
	cat, _, err := c.get(resource)
	if err != nil {
		return
	}
	cat.reset()
	cat.mu.Unlock()
}

// generation says when a resource's cached definitions last changed. A new
// bundle revision resets them too, and so does time: entries expire after
// catalogTTL, so the generation moves on at least that often.
func (c *catalogs) generation(resource string) uint64 {
	c.mu.Lock()
	cat, ok := c.by[resource]
	c.mu.Unlock()
	tick := uint64(time.Now().Unix() / int64(catalogTTL/time.Second))
	if !ok {
		return tick
	}
	return cat.generation.Load()<<32 ^ tick
}

func (c *catalogs) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cat := range c.by {
		cat.mu.Lock()
		if cat.conn != nil {
			cat.conn.Close(context.Background())
		}
		cat.mu.Unlock()
	}
}

// connect opens the gateway's own catalog connection when it has none.
func (cat *catalog) connect(c *catalogs, res *bundle.Postgres) error {
	if cat.conn != nil && !cat.conn.IsClosed() {
		return nil
	}
	cfg, err := c.srv.upstreamConfig(res, "")
	if err != nil {
		return err
	}
	cfg.RuntimeParams["application_name"] = "gatehouse:catalog"
	ctx, cancel := context.WithTimeout(context.Background(), c.srv.cfg.UpstreamTimeout)
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	cancel()
	if err != nil {
		return err
	}
	cat.conn = conn
	return nil
}

func (cat *catalog) exec(c *catalogs, res *bundle.Postgres, sql string) ([][][]byte, error) {
	for attempt := 0; attempt < 2; attempt++ {
		if err := cat.connect(c, res); err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		res, err := cat.conn.Exec(ctx, sql).ReadAll()
		cancel()
		if err != nil {
			cat.conn.Close(context.Background())
			cat.conn = nil
			continue
		}
		if len(res) != 1 || res[0].Err != nil {
			return nil, fmt.Errorf("catalog query failed")
		}
		return res[0].Rows, nil
	}
	return nil, fmt.Errorf("catalog connection to %q failed", res.Name)
}

// query runs one of the gateway's own parameterised catalog queries.
func (cat *catalog) query(c *catalogs, res *bundle.Postgres, sql string, params ...string) ([][][]byte, error) {
	args := make([][]byte, len(params))
	for i, p := range params {
		args[i] = []byte(p)
	}
	for attempt := 0; attempt < 2; attempt++ {
		if err := cat.connect(c, res); err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		r := cat.conn.ExecParams(ctx, sql, args, nil, nil, nil).Read()
		cancel()
		if r.Err != nil {
			var pgErr *pgconn.PgError
			if errors.As(r.Err, &pgErr) {
				return nil, fmt.Errorf("catalog query failed: %s", pgErr.Message)
			}
			cat.conn.Close(context.Background())
			cat.conn = nil
			continue
		}
		return r.Rows, nil
	}
	return nil, fmt.Errorf("catalog connection to %q failed", res.Name)
}

// columnNames resolves (relation oid, attribute number) pairs to canonical
// schema.table.column names. Pairs it cannot resolve are absent.
func (c *catalogs) columnNames(resource string, rels []uint32) (map[uint32]map[uint16]string, error) {
	cat, res, err := c.get(resource)
	if err != nil {
		return nil, err
	}
	defer cat.mu.Unlock()
	var missing []string
	for _, r := range rels {
		if _, ok := cat.columns[r]; !ok && r != 0 {
			missing = append(missing, strconv.FormatUint(uint64(r), 10))
		}
	}
	if len(missing) > 0 {
		// OIDs are numbers the gateway formats itself: no caller text
		// reaches this query.
		rows, err := cat.exec(c, res, `SELECT a.attrelid, a.attnum, n.nspname, c.relname, a.attname
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE a.attrelid IN (`+strings.Join(missing, ",")+`) AND a.attnum > 0 AND NOT a.attisdropped`)
		if err != nil {
			return nil, err
		}
		for _, m := range missing {
			oid, _ := strconv.ParseUint(m, 10, 32)
			cat.columns[uint32(oid)] = map[uint16]string{}
		}
		for _, row := range rows {
			oid, _ := strconv.ParseUint(string(row[0]), 10, 32)
			num, _ := strconv.ParseUint(string(row[1]), 10, 16)
			cat.columns[uint32(oid)][uint16(num)] = bundle.QuoteIdent(string(row[2])) + "." + bundle.QuoteIdent(string(row[3])) + "." + bundle.QuoteIdent(string(row[4]))
		}
	}
	out := make(map[uint32]map[uint16]string, len(rels))
	for _, r := range rels {
		out[r] = cat.columns[r]
	}
	return out, nil
}

// fastPathFunction returns what an OID names, for deciding a fast-path
// call.
func (c *catalogs) fastPathFunction(resource string, oid uint32) (fastPathFunc, error) {
	cat, res, err := c.get(resource)
	if err != nil {
		return fastPathFunc{}, err
	}
	defer cat.mu.Unlock()
	if f, ok := cat.funcs[oid]; ok {
		return f, nil
	}
	rows, err := cat.exec(c, res, fmt.Sprintf("SELECT n.nspname, p.proname, p.provolatile FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE p.oid = %d", oid))
	if err != nil {
		return fastPathFunc{}, err
	}
	if len(rows) != 1 {
		return fastPathFunc{}, fmt.Errorf("no function has oid %d", oid)
	}
	f := fastPathFunc{schema: string(rows[0][0]), name: string(rows[0][1]), volatility: sqlfacts.VolatilityName(string(rows[0][2]))}
	cat.funcs[oid] = f
	return f, nil
}

// relationSQL resolves a relation name in a list of schemas, first match
// wins, as the search path does, with its inheritance and partition
// descendants, then its ancestors (each as schemas and names, in the same
// order), the columns a unique index or exclusion constraint checks ("*"
// for one over expressions or with a predicate), and its foreign keys'
// columns with the columns they reference (four lists in one order). Names are
// parameters: no caller text is ever part of the gateway's own SQL.
const relationSQL = `SELECT n.nspname, c.relname, c.relkind::text,
       coalesce(CASE WHEN c.relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(c.oid) END, ''),
       coalesce((SELECT pg_catalog.array_to_string(pg_catalog.array_agg(pg_catalog.quote_ident(a.attname) ORDER BY a.attnum), ',')
                 FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), ''),
       coalesce(d.schemas, ''), coalesce(d.names, ''), coalesce(a.schemas, ''), coalesce(a.names, ''),
       coalesce((SELECT pg_catalog.array_to_string(pg_catalog.array_agg(DISTINCT x.n), ',') FROM (
         SELECT pg_catalog.quote_ident(ia.attname) AS n FROM pg_catalog.pg_index i
         JOIN pg_catalog.pg_attribute ia ON ia.attrelid = i.indrelid AND ia.attnum = ANY (i.indkey::pg_catalog.int2[])
         WHERE i.indrelid = c.oid AND (i.indisunique OR i.indisexclusion)
         UNION
         SELECT pg_catalog.quote_ident('*') FROM pg_catalog.pg_index i
         WHERE i.indrelid = c.oid AND (i.indisunique OR i.indisexclusion) AND (i.indexprs IS NOT NULL OR i.indpred IS NOT NULL)) x), ''),
       coalesce(f.cols, ''), coalesce(f.schemas, ''), coalesce(f.tables, ''), coalesce(f.refcols, '')
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.unnest($2::text[]) WITH ORDINALITY AS s(nsp, ord) ON s.nsp = n.nspname
LEFT JOIN LATERAL (
  WITH RECURSIVE below(oid) AS (
    SELECT i.inhrelid FROM pg_catalog.pg_inherits i WHERE i.inhparent = c.oid
    UNION
    SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN below b ON i.inhparent = b.oid
  )
  SELECT pg_catalog.array_to_string(pg_catalog.array_agg(pg_catalog.quote_ident(dn.nspname) ORDER BY dc.oid), ',') AS schemas,
         pg_catalog.array_to_string(pg_catalog.array_agg(pg_catalog.quote_ident(dc.relname) ORDER BY dc.oid), ',') AS names
  FROM below JOIN pg_catalog.pg_class dc ON dc.oid = below.oid
  JOIN pg_catalog.pg_namespace dn ON dn.oid = dc.relnamespace
) d ON true
LEFT JOIN LATERAL (
  WITH RECURSIVE above(oid) AS (
    SELECT i.inhparent FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid
    UNION
    SELECT i.inhparent FROM pg_catalog.pg_inherits i JOIN above b ON i.inhrelid = b.oid
  )
  SELECT pg_catalog.array_to_string(pg_catalog.array_agg(pg_catalog.quote_ident(an.nspname) ORDER BY ac.oid), ',') AS schemas,
         pg_catalog.array_to_string(pg_catalog.array_agg(pg_catalog.quote_ident(ac.relname) ORDER BY ac.oid), ',') AS names
  FROM above JOIN pg_catalog.pg_class ac ON ac.oid = above.oid
  JOIN pg_catalog.pg_namespace an ON an.oid = ac.relnamespace
) a ON true
LEFT JOIN LATERAL (
  SELECT pg_catalog.array_to_string(pg_catalog.array_agg(pg_catalog.quote_ident(la.attname) ORDER BY k.con, k.i), ',') AS cols,
         pg_catalog.array_to_string(pg_catalog.array_agg(pg_catalog.quote_ident(rn.nspname) ORDER BY k.con, k.i), ',') AS schemas,
         pg_catalog.array_to_string(pg_catalog.array_agg(pg_catalog.quote_ident(rc.relname) ORDER BY k.con, k.i), ',') AS tables,
         pg_catalog.array_to_string(pg_catalog.array_agg(pg_catalog.quote_ident(ra.attname) ORDER BY k.con, k.i), ',') AS refcols
  FROM (SELECT con.oid AS con, con.conrelid, con.confrelid, u.l, u.r, u.i
        FROM pg_catalog.pg_constraint con, ROWS FROM (pg_catalog.unnest(con.conkey), pg_catalog.unnest(con.confkey)) WITH ORDINALITY AS u(l, r, i)
        WHERE con.conrelid = c.oid AND con.contype = 'f') k
  JOIN pg_catalog.pg_attribute la ON la.attrelid = k.conrelid AND la.attnum = k.l
  JOIN pg_catalog.pg_class rc ON rc.oid = k.confrelid
  JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
  JOIN pg_catalog.pg_attribute ra ON ra.attrelid = k.confrelid AND ra.attnum = k.r
) f ON true
WHERE c.relname = $1
ORDER BY s.ord LIMIT 1`

// functionSQL finds every function of a name in a list of schemas.
const functionSQL = `SELECT n.nspname, p.provolatile::text, p.prokind::text, p.proretset,
       coalesce((SELECT pg_catalog.array_to_string(pg_catalog.array_agg(pg_catalog.quote_ident(u.n) ORDER BY u.i), ',')
                 FROM ROWS FROM (pg_catalog.unnest(p.proargnames), pg_catalog.unnest(p.proargmodes::text[])) WITH ORDINALITY AS u(n, m, i) WHERE u.m IN ('o', 't', 'b')), '')
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN pg_catalog.unnest($2::text[]) WITH ORDINALITY AS s(nsp, ord) ON s.nsp = n.nspname
WHERE p.proname = $1
ORDER BY s.ord, p.oid`

// relation resolves a relation in the given schemas (the session's search
// path, or the one schema of a qualified name).
func (c *catalogs) relation(resource string, schemas []string, name string) (*sqlfacts.RelationInfo, error) {
	cat, res, err := c.get(resource)
	if err != nil {
		return nil, err
	}
	defer cat.mu.Unlock()
	key := strings.Join(schemas, "\x00") + "\x01" + name
	if e, ok := cat.relations[key]; ok && time.Since(e.at) < catalogTTL {
		return e.v, nil
	}
	rows, err := cat.query(c, res, relationSQL, name, textArray(schemas))
	if err != nil {
		return nil, err
	}
	info, err := relationOf(rows)
	if err != nil {
		return nil, err
	}
	cat.relations[key] = cached[*sqlfacts.RelationInfo]{v: info, at: time.Now()}
	return info, nil
}

// function describes the functions a call may resolve to: every candidate
// of the name in the schemas, the most volatile, built in only when all are.
func (c *catalogs) function(resource string, schemas []string, name string) (*sqlfacts.FunctionInfo, error) {
	cat, res, err := c.get(resource)
	if err != nil {
		return nil, err
	}
	defer cat.mu.Unlock()
	key := strings.Join(schemas, "\x00") + "\x01" + name
	if e, ok := cat.functions[key]; ok && time.Since(e.at) < catalogTTL {
		return e.v, nil
	}
	rows, err := cat.query(c, res, functionSQL, name, textArray(schemas))
	if err != nil {
		return nil, err
	}
	info, err := functionOf(rows, name)
	if err != nil {
		return nil, err
	}
	cat.functions[key] = cached[*sqlfacts.FunctionInfo]{v: info, at: time.Now()}
	return info, nil
}

// userOperatorSQL says whether an operator of a name is defined outside
// pg_catalog, in any schema: which of several same-named operators runs
// depends on the operand types, which the gateway does not know.
//
// An extension's operators (citext's =, PostGIS's &&) are left out: an
// extension is installed by the database's administrator, like the
// built-ins, and refusing them would refuse every = on such a database.
const userOperatorSQL = `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_operator o
 WHERE o.oprname = $1 AND o.oprnamespace <> 'pg_catalog'::pg_catalog.regnamespace
 AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
  WHERE d.classid = 'pg_catalog.pg_operator'::pg_catalog.regclass AND d.objid = o.oid AND d.deptype = 'e'))`

// maxOperators bounds the operator names a resource's catalog keeps
// answers for: a client can write any number of names.
const maxOperators = 1024

// userOperator reports whether an operator name is also defined outside
// pg_catalog (sqlfacts.OperatorCatalog).
func (c *catalogs) userOperator(resource, name string) (bool, error) {
	cat, res, err := c.get(resource)
	if err != nil {
		return false, err
	}
	defer cat.mu.Unlock()
	if e, ok := cat.operators[name]; ok && time.Since(e.at) < catalogTTL {
		return e.v, nil
	}
	rows, err := cat.query(c, res, userOperatorSQL, name)
	if err != nil {
		return false, err
	}
	user := len(rows) == 1 && len(rows[0]) == 1 && string(rows[0][0]) == "t"
	if len(cat.operators) >= maxOperators {
		clear(cat.operators)
	}
	cat.operators[name] = cached[bool]{v: user, at: time.Now()}
	return user, nil
}

// relationOf reads relationSQL's answer: nil when no row.
func relationOf(rows [][][]byte) (*sqlfacts.RelationInfo, error) {
	if len(rows) != 1 {
		return nil, nil
	}
	r := rows[0]
	info := &sqlfacts.RelationInfo{Schema: string(r[0]), Name: string(r[1]), Kind: sqlfacts.RelationKind(string(r[2])), View: strings.TrimSpace(string(r[3]))}
	var err error
	if info.Columns, err = splitIdentList(string(r[4])); err != nil {
		return nil, err
	}
	if info.Descendants, err = qualifiedNames(r[5], r[6]); err != nil {
		return nil, fmt.Errorf("the descendants of %s.%s: %w", info.Schema, info.Name, err)
	}
	if info.Ancestors, err = qualifiedNames(r[7], r[8]); err != nil {
		return nil, fmt.Errorf("the ancestors of %s.%s: %w", info.Schema, info.Name, err)
	}
	if info.Unique, err = splitIdentList(string(r[9])); err != nil {
		return nil, err
	}
	if info.References, err = references(r[10], r[11], r[12], r[13]); err != nil {
		return nil, fmt.Errorf("the foreign keys of %s.%s: %w", info.Schema, info.Name, err)
	}
	return info, nil
}

// references pairs foreign key columns with the columns they reference.
func references(colList, schemaList, tableList, refList []byte) (map[string][]string, error) {
	var lists [4][]string
	for i, l := range [][]byte{colList, schemaList, tableList, refList} {
		var err error
		if lists[i], err = splitIdentList(string(l)); err != nil {
			return nil, err
		}
	}
	n := len(lists[0])
	if len(lists[1]) != n || len(lists[2]) != n || len(lists[3]) != n {
		return nil, fmt.Errorf("lists of %d, %d, %d and %d", n, len(lists[1]), len(lists[2]), len(lists[3]))
	}
	if n == 0 {
		return nil, nil
	}
	out := map[string][]string{}
	for i := range n {
		out[lists[0][i]] = append(out[lists[0][i]], sqlfacts.ColumnName(lists[1][i], lists[2][i], lists[3][i]))
	}
	return out, nil
}

// qualifiedNames pairs a list of schemas with a list of names.
func qualifiedNames(schemaList, nameList []byte) ([]string, error) {
	schemas, err := splitIdentList(string(schemaList))
	if err != nil {
		return nil, err
	}
	names, err := splitIdentList(string(nameList))
	if err != nil {
		return nil, err
	}
	if len(schemas) != len(names) {
		return nil, fmt.Errorf("%d schemas for %d names", len(schemas), len(names))
	}
	var out []string
	for i := range names {
		out = append(out, sqlfacts.QualifiedName(schemas[i], names[i]))
	}
	return out, nil
}

// functionOf reads functionSQL's answer: every candidate of the name, the
// most volatile, built in only when all are; nil when none.
func functionOf(rows [][][]byte, name string) (*sqlfacts.FunctionInfo, error) {
	var info *sqlfacts.FunctionInfo
	rank := map[string]int{sqlfacts.Immutable: 0, sqlfacts.Stable: 1, sqlfacts.Volatile: 2, sqlfacts.Unknown: 3}
	for i, r := range rows {
		vol := sqlfacts.VolatilityName(string(r[1]))
		if i == 0 {
			info = &sqlfacts.FunctionInfo{Schema: string(r[0]), Name: name, Volatility: vol, Builtin: true, Retset: string(r[3]) == "t"}
			var err error
			if info.Out, err = splitIdentList(string(r[4])); err != nil {
				return nil, err
			}
		}
		if rank[vol] > rank[info.Volatility] {
			info.Volatility = vol
		}
		if string(r[0]) != "pg_catalog" && info.Builtin {
			// The first candidate outside pg_catalog is the one to name:
			// a user function that shadows a built-in's name.
			info.Builtin, info.Schema = false, string(r[0])
		}
		info.Aggregate = info.Aggregate || string(r[2]) == "a"
		info.Window = info.Window || string(r[2]) == "w"
	}
	return info, nil
}

// textArray writes a text[] literal.
func textArray(xs []string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, x := range xs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		b.WriteString(strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(x))
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

// splitIdentList reads a comma-separated list of quote_ident names.
func splitIdentList(s string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	var out []string
	for len(s) > 0 {
		var name string
		if s[0] == '"' {
			var b strings.Builder
			i := 1
			for {
				if i >= len(s) {
					return nil, fmt.Errorf("catalog: unterminated quoted name")
				}
				if s[i] == '"' {
					if i+1 < len(s) && s[i+1] == '"' {
						b.WriteByte('"')
						i += 2
						continue
					}
					i++
					break
				}
				b.WriteByte(s[i])
				i++
			}
			name, s = b.String(), s[i:]
		} else {
			j := strings.IndexByte(s, ',')
			if j < 0 {
				j = len(s)
			}
			name, s = s[:j], s[j:]
		}
		out = append(out, name)
		if len(s) > 0 {
			if s[0] != ',' {
				return nil, fmt.Errorf("catalog: malformed name list")
			}
			s = s[1:]
		}
	}
	return out, nil
}
