package approval

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// The schema of the PostgreSQL store is the SQL files in migrations/, applied
// in the order of the number that starts their names (0001_approvals.sql is
// version 1). A file, once released, is never edited: a change is a new file.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

// migrationComponent names this package's rows in gatehouse_schema_migrations,
// which other parts of the shared state may use for their own schemas.
const migrationComponent = "approvals"

// migrationLock is the pg_advisory_xact_lock key every replica takes before
// it reads or changes the schema, so that replicas starting at once apply
// each migration once: the second waits, then finds it applied. ("gh-migr")
const migrationLock int64 = 0x67682d6d696772

// ErrSchemaNewer is returned when the database's schema is newer than this
// build knows: a newer gateway migrated it. An older one does not guess at
// what changed; it refuses to start.
var ErrSchemaNewer = errors.New("the state database's schema is newer than this gateway knows")

type migration struct {
	version int
	name    string
	sql     string
}

// migrations returns the embedded migrations in order. Their versions are
// 1, 2, ... without a gap (a test holds them to it).
func migrations() ([]migration, error) {
	ents, err := fs.Glob(migrationFiles, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, path := range ents {
		name := strings.TrimSuffix(strings.TrimPrefix(path, "migrations/"), ".sql")
		num, _, _ := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if err != nil || v < 1 {
			return nil, fmt.Errorf("migration %s: the name must start with its version, such as 0002_", path)
		}
		b, err := migrationFiles.ReadFile(path)
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, name: name, sql: string(b)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	for i, m := range out {
		if m.version != i+1 {
			return nil, fmt.Errorf("migration %s: version %d, want %d (versions run 1, 2, ... without a gap)", m.name, m.version, i+1)
		}
	}
	return out, nil
}

// SchemaVersion is the newest schema version of the PostgreSQL store this
// build knows.
func SchemaVersion() int {
	ms, err := migrations()
	if err != nil {
		return 0
	}
	return len(ms)
}

// createMigrations makes the table of applied migrations.
const createMigrations = `CREATE TABLE IF NOT EXISTS gatehouse_schema_migrations (
	component  text NOT NULL,
	version    int NOT NULL,
	name       text NOT NULL,
	applied_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (component, version)
)`

// migrate brings the schema up to this build's version in one transaction
// under the migration lock, and returns the version it is at. A migration
// that fails rolls back with everything before it in this call, so a
// schema is at one version or the next, never between.
func migrate(ctx context.Context, db interface {
	Begin(context.Context) (pgx.Tx, error)
}) (int, error) {
	ms, err := migrations()
	if err != nil {
		return 0, err
	}
	version := 0
	err = pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLock); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, createMigrations); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM gatehouse_schema_migrations WHERE component = $1",
			migrationComponent).Scan(&version); err != nil {
			return err
		}
		if version > len(ms) {
			return fmt.Errorf("%w: it is at version %d, this build knows %d; run the newer gateway", ErrSchemaNewer, version, len(ms))
		}
		for _, m := range ms[version:] {
			if _, err := tx.Exec(ctx, m.sql); err != nil {
				return fmt.Errorf("migration %s: %w", m.name, err)
			}
			if _, err := tx.Exec(ctx, "INSERT INTO gatehouse_schema_migrations (component, version, name) VALUES ($1, $2, $3)",
				migrationComponent, m.version, m.name); err != nil {
				return err
			}
			version = m.version
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("approvals: schema migration: %w", err)
	}
	return version, nil
}

// currentSchema reads the schema version of a database without changing
// anything: 0 for a database no gateway has migrated yet.
func currentSchema(ctx context.Context, conn *pgx.Conn) (int, error) {
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass('gatehouse_schema_migrations') IS NOT NULL").Scan(&exists); err != nil {
		return 0, err
	}
	if !exists {
		return 0, nil
	}
	var v int
	err := conn.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM gatehouse_schema_migrations WHERE component = $1", migrationComponent).Scan(&v)
	return v, err
}

// PostgresStatus is what CheckPostgres found.
type PostgresStatus struct {
	// Version is the database's schema version (0: no gateway has
	// migrated it yet); Latest is this build's.
	Version, Latest int
}

// CheckPostgres connects to the state database dsn names and reads its
// schema version without changing anything (gatehouse gateway --check).
// It fails with ErrSchemaNewer when a newer gateway has migrated it.
func CheckPostgres(ctx context.Context, dsn string) (PostgresStatus, error) {
	st := PostgresStatus{Latest: SchemaVersion()}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return st, errors.New("the state database's DSN cannot be parsed (a postgres:// URL or key=value settings)")
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return st, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if st.Version, err = currentSchema(ctx, conn); err != nil {
		return st, err
	}
	if st.Version > st.Latest {
		return st, fmt.Errorf("%w: it is at version %d, this build knows %d", ErrSchemaNewer, st.Version, st.Latest)
	}
	return st, nil
}
