package bundlestore

import (
	"context"
	"embed"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/internal/pgmigrate"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

var schema = pgmigrate.Schema{Component: "bundles", FS: migrationFiles, Dir: "migrations"}

// FloorSchemaVersion is the newest schema version of the floor this build
// knows.
func FloorSchemaVersion() int { return schema.Latest() }

// floorTimeout bounds one check of the floor.
const floorTimeout = 10 * time.Second

// PGFloor is the revision floor in the state database that the replicas
// share (the table gatehouse_bundle_floor).
type PGFloor struct {
	pool *pgxpool.Pool
}

var _ Floor = (*PGFloor)(nil)

// OpenPGFloor connects to the state database dsn names and brings the
// floor's schema up to date (under the shared migration lock, so replicas
// may start at once).
func OpenPGFloor(ctx context.Context, dsn string) (*PGFloor, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("bundle floor: %w", pgmigrate.ErrBadDSN)
	}
	if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		cfg.ConnConfig.RuntimeParams["application_name"] = "gatehouse"
	}
	cfg.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("bundle floor: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("bundle floor: the state database: %w", err)
	}
	if _, err := schema.Apply(ctx, pool); err != nil {
		pool.Close()
		return nil, fmt.Errorf("bundle floor: %w", err)
	}
	return &PGFloor{pool: pool}, nil
}

// Admit implements Floor. The floor is raised and read under the row's
// lock in one transaction, so two replicas activating different bundles at
// once both end with the higher one recorded.
func (f *PGFloor) Admit(ctx context.Context, rev uint64, digest string) error {
	if rev > 1<<63-1 {
		return fmt.Errorf("%w: revision %d is past what the floor can hold", bundle.ErrMalformed, rev)
	}
	ctx, cancel := context.WithTimeout(ctx, floorTimeout)
	defer cancel()
	var floorRev int64
	var floorDigest string
	err := pgx.BeginFunc(ctx, f.pool, func(tx pgx.Tx) error {
		// The row exists after the first activation; the insert makes it
		// (or waits for a concurrent first one), then the row is locked.
		if _, err := tx.Exec(ctx, `INSERT INTO gatehouse_bundle_floor (id, revision, digest, activated_at)
			VALUES (true, $1, $2, now()) ON CONFLICT (id) DO NOTHING`, int64(rev), digest); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, "SELECT revision, digest FROM gatehouse_bundle_floor WHERE id FOR UPDATE").Scan(&floorRev, &floorDigest); err != nil {
			return err
		}
		if uint64(floorRev) >= rev {
			return nil
		}
		_, err := tx.Exec(ctx, "UPDATE gatehouse_bundle_floor SET revision = $1, digest = $2, activated_at = now() WHERE id", int64(rev), digest)
		floorRev, floorDigest = int64(rev), digest
		return err
	})
	if err != nil {
		return fmt.Errorf("%w: the state database: %w", ErrFloorUnavailable, err)
	}
	switch {
	case uint64(floorRev) > rev:
		return fmt.Errorf("%w: bundle revision %d, but a replica sharing the state database has activated revision %d; a gateway only moves forward",
			bundle.ErrRollback, rev, floorRev)
	case floorDigest != digest:
		return fmt.Errorf("%w: bundle revision %d is %s, but a replica sharing the state database has activated another bundle of that revision (%s)",
			bundle.ErrRollback, rev, digest, floorDigest)
	}
	return nil
}

// Close implements Floor.
func (f *PGFloor) Close() { f.pool.Close() }
