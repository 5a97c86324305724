package postgres

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/gatehouse-dev/gatehouse/bundle"
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
	funcs    map[uint32]string
}

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
		cat.columns, cat.funcs, cat.revision = map[uint32]map[uint16]string{}, map[uint32]string{}, active.Revision
	}
	return cat, res, nil // returned locked
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

func (cat *catalog) exec(c *catalogs, res *bundle.Postgres, sql string) ([][][]byte, error) {
	for attempt := 0; attempt < 2; attempt++ {
		if cat.conn == nil || cat.conn.IsClosed() {
			cfg, err := c.srv.upstreamConfig(res)
			if err != nil {
				return nil, err
			}
			cfg.RuntimeParams["application_name"] = "gatehouse:catalog"
			ctx, cancel := context.WithTimeout(context.Background(), c.srv.cfg.UpstreamTimeout)
			conn, err := pgconn.ConnectConfig(ctx, cfg)
			cancel()
			if err != nil {
				return nil, err
			}
			cat.conn = conn
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

// functionName returns the name of the function an OID names, for deciding
// a fast-path call.
func (c *catalogs) functionName(resource string, oid uint32) (string, error) {
	cat, res, err := c.get(resource)
	if err != nil {
		return "", err
	}
	defer cat.mu.Unlock()
	if n, ok := cat.funcs[oid]; ok {
		return n, nil
	}
	rows, err := cat.exec(c, res, fmt.Sprintf("SELECT proname FROM pg_catalog.pg_proc WHERE oid = %d", oid))
	if err != nil {
		return "", err
	}
	if len(rows) != 1 {
		return "", fmt.Errorf("no function has oid %d", oid)
	}
	cat.funcs[oid] = string(rows[0][0])
	return cat.funcs[oid], nil
}
