package approval

import (
	"context"
	"embed"
	"errors"

	"github.com/jackc/pgx/v5"

	"github.com/gatehouse-dev/gatehouse/internal/pgmigrate"
)

// The schema of the PostgreSQL store is the SQL files in migrations/, applied
// in the order of the number that starts their names (0001_approvals.sql is
// version 1), as the component "approvals" of gatehouse_schema_migrations.
// A file, once released, is never edited: a change is a new file.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

var schema = pgmigrate.Schema{Component: "approvals", FS: migrationFiles, Dir: "migrations"}

// ErrSchemaNewer is returned when the database's schema is newer than this
// build knows: a newer gateway migrated it. An older one does not guess at
// what changed; it refuses to start.
var ErrSchemaNewer = pgmigrate.ErrNewer

// SchemaVersion is the newest schema version of the PostgreSQL store this
// build knows.
func SchemaVersion() int { return schema.Latest() }

func migrate(ctx context.Context, db interface {
	Begin(context.Context) (pgx.Tx, error)
}) (int, error) {
	return schema.Apply(ctx, db)
}

// PostgresStatus is what CheckPostgres found.
type PostgresStatus = pgmigrate.Status

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
	return schema.Check(ctx, conn)
}
