// Package pgmigrate applies the versioned schemas of the gateway's shared
// state database. Each part of the state (approvals, the session index)
// is a component with its own numbered SQL files and its own rows in
// gatehouse_schema_migrations, so one can change without the others.
//
// Every component migrates under one advisory lock, in one transaction:
// replicas starting at once apply each migration once (the second waits,
// then finds it applied), and a schema is at one version or the next,
// never between. A file, once released, is never edited: a change is a
// new file.
package pgmigrate

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Lock is the pg_advisory_xact_lock key every replica takes before it
// reads or changes a schema. ("gh-migr")
const Lock int64 = 0x67682d6d696772

// ErrNewer is returned when the database's schema of a component is newer
// than this build knows: a newer gateway migrated it. An older one does
// not guess at what changed; it refuses to start.
var ErrNewer = errors.New("the state database's schema is newer than this gateway knows")

// Schema is one component's migrations: the files DIR/NNNN_name.sql of
// FS, applied in the order of their numbers (0001_x.sql is version 1).
type Schema struct {
	Component string
	FS        fs.FS
	Dir       string
}

// Migration is one file of a schema.
type Migration struct {
	Version int
	Name    string
	SQL     string
}

// Migrations returns the schema's migrations in order. Their versions are
// 1, 2, ... without a gap.
func (s Schema) Migrations() ([]Migration, error) {
	ents, err := fs.Glob(s.FS, s.Dir+"/*.sql")
	if err != nil {
		return nil, err
	}
	var out []Migration
	for _, path := range ents {
		name := strings.TrimSuffix(strings.TrimPrefix(path, s.Dir+"/"), ".sql")
		num, _, _ := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if err != nil || v < 1 {
			return nil, fmt.Errorf("migration %s: the name must start with its version, such as 0002_", path)
		}
		b, err := fs.ReadFile(s.FS, path)
		if err != nil {
			return nil, err
		}
		out = append(out, Migration{Version: v, Name: name, SQL: string(b)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	for i, m := range out {
		if m.Version != i+1 {
			return nil, fmt.Errorf("migration %s: version %d, want %d (versions run 1, 2, ... without a gap)", m.Name, m.Version, i+1)
		}
	}
	return out, nil
}

// Latest is the newest version this build knows (0 when the files are
// missing or misnumbered, which a test of each component rules out).
func (s Schema) Latest() int {
	ms, err := s.Migrations()
	if err != nil {
		return 0
	}
	return len(ms)
}

// createTable makes the table of applied migrations.
const createTable = `CREATE TABLE IF NOT EXISTS gatehouse_schema_migrations (
	component  text NOT NULL,
	version    int NOT NULL,
	name       text NOT NULL,
	applied_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (component, version)
)`

// Apply brings the component's schema up to this build's version in one
// transaction under the lock, and returns the version it is at. A
// migration that fails rolls back with everything before it in this call.
func (s Schema) Apply(ctx context.Context, db interface {
	Begin(context.Context) (pgx.Tx, error)
}) (int, error) {
	ms, err := s.Migrations()
	if err != nil {
		return 0, err
	}
	version := 0
	err = pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", Lock); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, createTable); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM gatehouse_schema_migrations WHERE component = $1",
			s.Component).Scan(&version); err != nil {
			return err
		}
		if version > len(ms) {
			return fmt.Errorf("%w: %s is at version %d, this build knows %d; run the newer gateway", ErrNewer, s.Component, version, len(ms))
		}
		for _, m := range ms[version:] {
			if _, err := tx.Exec(ctx, m.SQL); err != nil {
				return fmt.Errorf("migration %s: %w", m.Name, err)
			}
			if _, err := tx.Exec(ctx, "INSERT INTO gatehouse_schema_migrations (component, version, name) VALUES ($1, $2, $3)",
				s.Component, m.Version, m.Name); err != nil {
				return err
			}
			version = m.Version
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("%s: schema migration: %w", s.Component, err)
	}
	return version, nil
}

// Current reads the component's schema version without changing anything:
// 0 for a database no gateway has migrated yet.
func (s Schema) Current(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (int, error) {
	var exists bool
	if err := q.QueryRow(ctx, "SELECT to_regclass('gatehouse_schema_migrations') IS NOT NULL").Scan(&exists); err != nil {
		return 0, err
	}
	if !exists {
		return 0, nil
	}
	var v int
	err := q.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM gatehouse_schema_migrations WHERE component = $1", s.Component).Scan(&v)
	return v, err
}

// Status is what Check found.
type Status struct {
	// Version is the database's schema version of the component (0: no
	// gateway has migrated it yet); Latest is this build's.
	Version, Latest int
}

// Check reads the component's schema version on conn and fails with
// ErrNewer when a newer gateway has migrated it.
func (s Schema) Check(ctx context.Context, conn *pgx.Conn) (Status, error) {
	st := Status{Latest: s.Latest()}
	var err error
	if st.Version, err = s.Current(ctx, conn); err != nil {
		return st, err
	}
	if st.Version > st.Latest {
		return st, fmt.Errorf("%w: %s is at version %d, this build knows %d", ErrNewer, s.Component, st.Version, st.Latest)
	}
	return st, nil
}

// ErrBadDSN is the error for a DSN pgx cannot parse. pgx's own message may
// quote the DSN, and the DSN may hold a password, so it is not shown.
var ErrBadDSN = errors.New("the state database's DSN cannot be parsed (a postgres:// URL or key=value settings)")
