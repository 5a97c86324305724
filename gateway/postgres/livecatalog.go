package postgres

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

// Catalog is a database's catalog for planning masks outside the gateway
// (`gatehouse eval --database`): the same queries the gateway asks, on a
// connection of the caller's own, resolved with its search path. It
// implements sqlfacts.Catalog.
type Catalog struct {
	mu         sync.Mutex
	conn       *pgconn.PgConn
	searchPath []string
	relations  map[string]*sqlfacts.RelationInfo
	functions  map[string]*sqlfacts.FunctionInfo
}

// OpenCatalog connects with a libpq connection string or URL.
func OpenCatalog(ctx context.Context, connString string) (*Catalog, error) {
	conn, err := pgconn.Connect(ctx, connString)
	if err != nil {
		return nil, fmt.Errorf("connect to the database for its catalog: %w", err)
	}
	path, err := readSearchPath(ctx, conn)
	if err != nil {
		conn.Close(ctx)
		return nil, fmt.Errorf("read the search path: %w", err)
	}
	c := &Catalog{conn: conn, searchPath: path, relations: map[string]*sqlfacts.RelationInfo{}, functions: map[string]*sqlfacts.FunctionInfo{}}
	return c, nil
}

// Close closes the connection.
func (c *Catalog) Close() error { return c.conn.Close(context.Background()) }

func (c *Catalog) query(sql string, params ...string) ([][][]byte, error) {
	args := make([][]byte, len(params))
	for i, p := range params {
		args[i] = []byte(p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r := c.conn.ExecParams(ctx, sql, args, nil, nil, nil).Read()
	return r.Rows, r.Err
}

func (c *Catalog) schemas(schema string) []string {
	if schema == "" {
		return c.searchPath
	}
	return []string{schema}
}

// Relation implements sqlfacts.Catalog.
func (c *Catalog) Relation(schema, name string) (*sqlfacts.RelationInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	key := schema + "\x00" + name
	if r, ok := c.relations[key]; ok {
		return r, nil
	}
	rows, err := c.query(relationSQL, name, textArray(c.schemas(schema)))
	if err != nil {
		return nil, err
	}
	r, err := relationOf(rows)
	if err != nil {
		return nil, err
	}
	c.relations[key] = r
	return r, nil
}

// Function implements sqlfacts.Catalog.
func (c *Catalog) Function(schema, name string) (*sqlfacts.FunctionInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	key := schema + "\x00" + name
	if f, ok := c.functions[key]; ok {
		return f, nil
	}
	rows, err := c.query(functionSQL, name, textArray(c.schemas(schema)))
	if err != nil {
		return nil, err
	}
	f, err := functionOf(rows, name)
	if err != nil {
		return nil, err
	}
	c.functions[key] = f
	return f, nil
}
