package gateway

import (
	"context"
	"fmt"
	"time"

	"github.com/gatehouse-dev/gatehouse/gateway/approval"
	"github.com/gatehouse-dev/gatehouse/gateway/bundlestore"
	"github.com/gatehouse-dev/gatehouse/gateway/secrets"
	"github.com/gatehouse-dev/gatehouse/internal/pgmigrate"
)

// stateTimeout bounds connecting to the state database at start, and its
// schema migration (which waits for a replica migrating at the same time).
const stateTimeout = 30 * time.Second

// openApprovals opens the approval store the config asks for: the state
// block's PostgreSQL database, shared by every replica that names it, or
// files in the data directory, for this gateway alone. A gateway whose
// state database cannot be reached does not start: serving from a store of
// its own would let its replicas disagree about what was approved.
func (g *Gateway) openApprovals(res secrets.Resolver) (approval.Store, error) {
	opts := []approval.Option{approval.WithLogger(g.log), approval.WithNotify(g.notifier.Notify), approval.WithClock(g.clock)}
	ref := g.cfg.State.Postgres
	if ref == "" {
		return approval.Open(ApprovalsDir(g.cfg.DataDir), opts...)
	}
	dsn, err := res.Resolve(ref)
	if err != nil {
		return nil, fmt.Errorf("state.postgres: %w", err)
	}
	if kref := g.cfg.State.Key; kref != "" {
		key, err := res.Resolve(kref)
		if err != nil {
			return nil, fmt.Errorf("state.key: %w", err)
		}
		if len(key) < approval.MinRowKeyBytes {
			return nil, fmt.Errorf("state.key (%s): %d bytes, want at least %d (for example: openssl rand -base64 32)", kref, len(key), approval.MinRowKeyBytes)
		}
		opts = append(opts, approval.WithRowKey([]byte(key)))
	} else {
		g.log.Warn("state.key is not set: approval requests in the state database are not authenticated, and whoever can write it can approve requests",
			"state", ref)
	}
	ctx, cancel := context.WithTimeout(context.Background(), stateTimeout)
	defer cancel()
	s, err := approval.OpenPostgres(ctx, dsn, opts...)
	if err != nil {
		return nil, fmt.Errorf("state.postgres (%s): %w", ref, err)
	}
	g.log.Info("approval requests are kept in the state database", "state", ref, "schema", approval.SchemaVersion(), "authenticated", g.cfg.State.Key != "")
	return s, nil
}

// openFloor opens the bundle revision floor in the state database. Like
// the approvals, a floor that cannot be reached stops the start: a replica
// without it would take any signed bundle its source serves.
func openFloor(ref string, res secrets.Resolver) (*bundlestore.PGFloor, error) {
	dsn, err := res.Resolve(ref)
	if err != nil {
		return nil, fmt.Errorf("state.postgres: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), stateTimeout)
	defer cancel()
	f, err := bundlestore.OpenPGFloor(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("state.postgres (%s): %w", ref, err)
	}
	return f, nil
}

// stateCheck is the preflight check of the state database: the reference
// resolves, the database answers, and its schema is one this build can
// use (older ones are migrated at start). It changes nothing.
func stateCheck(ctx context.Context, ref string, res secrets.Resolver) (string, error) {
	return schemaCheck(ctx, ref, res, approval.CheckPostgres)
}

// schemaCheck resolves ref and reads one component's schema version in the
// database it names, with check, changing nothing.
func schemaCheck(ctx context.Context, ref string, res secrets.Resolver, check func(context.Context, string) (pgmigrate.Status, error)) (string, error) {
	dsn, err := res.Resolve(ref)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := check(ctx, dsn)
	switch {
	case err != nil:
		return "", err
	case st.Version == 0:
		return fmt.Sprintf("reachable; no schema yet: the gateway creates version %d at start", st.Latest), nil
	case st.Version < st.Latest:
		return fmt.Sprintf("schema version %d; the gateway migrates it to %d at start", st.Version, st.Latest), nil
	}
	return fmt.Sprintf("schema version %d, current", st.Version), nil
}
