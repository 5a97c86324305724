// Package sessionindex keeps the session index in the state database: one
// row per recorded session (who, which resource, when, where its recording
// is, whether it is sealed), written by every replica that uploads its
// recordings to a bucket. `gatehouse sessions list --state` reads it
// instead of downloading the bucket.
//
// The index is a catalogue, not evidence. A row says where a recording is
// and what the replica's verification said of it when it was uploaded;
// `gatehouse audit verify` on the bucket is what proves the recording. The
// gateway writes rows after the fact (a session's start once its
// recording has begun, its end once the recording has been uploaded and
// read back), from a queue that is retried: an unreachable state database
// holds no session up, and every uploaded recording gets its row (start
// rows past a bounded queue are dropped, and counted).
package sessionindex

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/gatehouse-dev/gatehouse/internal/pgmigrate"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

var schema = pgmigrate.Schema{Component: "sessions", FS: migrationFiles, Dir: "migrations"}

// SchemaVersion is the newest schema version of the index this build
// knows.
func SchemaVersion() int { return schema.Latest() }

// StatusOpen is the status of a session whose recording has not been
// uploaded yet: open, or ended and waiting for its upload, or left by a
// crash until the replica starts again and seals it. The other statuses
// are the recorder's (recorder.StatusOK, StatusCrashed, ...).
const StatusOpen = "open"

// Entry is one session's row.
type Entry struct {
	Session    string     `json:"session"`
	Location   string     `json:"location"` // the replica's bucket URL, s3://BUCKET/PREFIX/
	Identity   string     `json:"identity"`
	Subject    string     `json:"subject"`
	Issuer     string     `json:"issuer"`
	Resource   string     `json:"resource"`
	Protocol   string     `json:"protocol"`
	ClientAddr string     `json:"client_addr"`
	Started    time.Time  `json:"started"`
	Ended      *time.Time `json:"ended,omitempty"`
	Status     string     `json:"status"`
	Events     int        `json:"events"`
	// Object is the recording's URL in the bucket, once uploaded, with its
	// size and hex SHA-256.
	Object  string    `json:"object,omitempty"`
	Size    int64     `json:"size,omitempty"`
	SHA256  string    `json:"sha256,omitempty"`
	Updated time.Time `json:"updated"`
}

// Index is the session index in one PostgreSQL database.
type Index struct {
	pool *pgxpool.Pool
}

// Open connects to the database dsn names and brings the index's schema up
// to date (under the shared migration lock, so replicas may start at
// once).
func Open(ctx context.Context, dsn string) (*Index, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("session index: %w", pgmigrate.ErrBadDSN)
	}
	if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		cfg.ConnConfig.RuntimeParams["application_name"] = "gatehouse"
	}
	cfg.MaxConns = 4
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("session index: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("session index: the state database: %w", err)
	}
	if _, err := schema.Apply(ctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	return &Index{pool: pool}, nil
}

// OpenReader connects to the database dsn names to read the index, in
// read-only transactions, without migrating anything: an auditor's role
// may have SELECT alone, and a newer CLI must not change the schema the
// gateways use. It fails when no gateway has created the index yet, or
// when its schema is not this build's.
func OpenReader(ctx context.Context, dsn string) (*Index, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("session index: %w", pgmigrate.ErrBadDSN)
	}
	if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		cfg.ConnConfig.RuntimeParams["application_name"] = "gatehouse-cli"
	}
	cfg.ConnConfig.RuntimeParams["default_transaction_read_only"] = "on"
	cfg.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("session index: %w", err)
	}
	err = pool.AcquireFunc(ctx, func(c *pgxpool.Conn) error {
		st, err := schema.Check(ctx, c.Conn())
		switch {
		case err != nil:
			return err
		case st.Version == 0:
			return errors.New("this state database has no session index yet: a gateway creates it when it starts with a state block and a recorder.bucket block")
		case st.Version < st.Latest:
			return fmt.Errorf("the session index is at schema version %d, and this gatehouse reads %d: upgrade the gateways first (they migrate it at start)", st.Version, st.Latest)
		}
		return nil
	})
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("session index: %w", err)
	}
	return &Index{pool: pool}, nil
}

// Close closes the connections.
func (ix *Index) Close() { ix.pool.Close() }

// Check reads the index's schema version in the database dsn names,
// changing nothing (gatehouse gateway --check).
func Check(ctx context.Context, dsn string) (pgmigrate.Status, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return pgmigrate.Status{Latest: SchemaVersion()}, pgmigrate.ErrBadDSN
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return pgmigrate.Status{Latest: SchemaVersion()}, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return schema.Check(ctx, conn)
}

// Put writes rows in one transaction, in order. A row whose status is
// StatusOpen is only written when the session has no row yet: it never
// takes back an uploaded one (a start may be written late, after its
// upload, when the database was down). Any other row replaces what the
// session had.
func (ix *Index) Put(ctx context.Context, entries []Entry) error {
	if len(entries) == 0 {
		return nil
	}
	return pgx.BeginFunc(ctx, ix.pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		for _, e := range entries {
			if e.Session == "" || e.Location == "" {
				return fmt.Errorf("session index: a row needs a session and a location (%q, %q)", e.Session, e.Location)
			}
			conflict := "DO NOTHING"
			if e.Status != StatusOpen {
				conflict = `DO UPDATE SET location = excluded.location, identity = excluded.identity, subject = excluded.subject,
					issuer = excluded.issuer, resource = excluded.resource, protocol = excluded.protocol,
					client_addr = excluded.client_addr, started_at = excluded.started_at, ended_at = excluded.ended_at,
					status = excluded.status, events = excluded.events, object = excluded.object, size = excluded.size,
					sha256 = excluded.sha256, updated_at = excluded.updated_at
					WHERE gatehouse_sessions.location = excluded.location`
			}
			b.Queue(`INSERT INTO gatehouse_sessions (session, location, identity, subject, issuer, resource, protocol,
				client_addr, started_at, ended_at, status, events, object, size, sha256, updated_at)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
				ON CONFLICT (session) `+conflict,
				e.Session, e.Location, text(e.Identity), text(e.Subject), text(e.Issuer), text(e.Resource), text(e.Protocol), text(e.ClientAddr),
				e.Started, e.Ended, e.Status, e.Events, nullable(e.Object), nullableInt(e.Size), nullable(e.SHA256),
				cmpTime(e.Updated))
		}
		return tx.SendBatch(ctx, b).Close()
	})
}

// text makes s storable in a PostgreSQL text column, which refuses NUL
// and invalid UTF-8: one such value (a token's subject, say) would else
// fail its batch, and the rows queued after it, on every retry. The
// recording keeps the original; the index is a catalogue.
func text(s string) string {
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func nullableInt(n int64) *int64 {
	if n == 0 {
		return nil
	}
	return &n
}

func cmpTime(t time.Time) time.Time {
	if t.IsZero() {
		return time.Now()
	}
	return t
}

// Filter narrows List. Zero fields match everything.
type Filter struct {
	// Location: sessions whose location starts with it (a bucket URL, or
	// a prefix of several replicas' URLs).
	Location string
	Identity string
	Resource string
	// Since: sessions started at or after it.
	Since time.Time
	// Status: open, ok, crashed, unsealed, ...
	Status string
	// Limit caps the rows (0: no cap); the newest are kept.
	Limit int
	// Sessions: only these sessions (nil: any).
	Sessions []string
}

// selectRows reads Entry's columns, in scan's order.
const selectRows = `SELECT session, location, identity, subject, issuer, resource, protocol, client_addr, started_at,
	ended_at, status, events, coalesce(object, ''), coalesce(size, 0), coalesce(sha256, ''), updated_at
	FROM gatehouse_sessions`

func scan(r pgx.Row) (Entry, error) {
	var e Entry
	err := r.Scan(&e.Session, &e.Location, &e.Identity, &e.Subject, &e.Issuer, &e.Resource, &e.Protocol, &e.ClientAddr,
		&e.Started, &e.Ended, &e.Status, &e.Events, &e.Object, &e.Size, &e.SHA256, &e.Updated)
	return e, err
}

// List returns the sessions the filter matches, oldest first.
func (ix *Index) List(ctx context.Context, f Filter) ([]Entry, error) {
	var where []string
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		where = append(where, fmt.Sprintf(cond, len(args)))
	}
	if f.Location != "" {
		add("starts_with(location, $%d)", f.Location)
	}
	if f.Identity != "" {
		add("identity = $%d", f.Identity)
	}
	if f.Resource != "" {
		add("resource = $%d", f.Resource)
	}
	if !f.Since.IsZero() {
		add("started_at >= $%d", f.Since)
	}
	if f.Status != "" {
		add("status = $%d", f.Status)
	}
	if f.Sessions != nil {
		add("session = ANY($%d)", f.Sessions)
	}
	q := selectRows
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY started_at DESC, session DESC"
	if f.Limit > 0 {
		q += fmt.Sprintf(" LIMIT %d", f.Limit)
	}
	rows, err := ix.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("session index: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Entry, error) { return scan(r) })
	if err != nil {
		return nil, fmt.Errorf("session index: %w", err)
	}
	// Oldest first, as sessions list prints a directory.
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, nil
}

// ErrNotIndexed is returned by Get for a session the index does not hold.
var ErrNotIndexed = errors.New("not in the session index")

// Get returns one session's row.
func (ix *Index) Get(ctx context.Context, session string) (Entry, error) {
	e, err := scan(ix.pool.QueryRow(ctx, selectRows+" WHERE session = $1", session))
	if errors.Is(err, pgx.ErrNoRows) {
		return e, fmt.Errorf("session %s: %w", session, ErrNotIndexed)
	}
	if err != nil {
		return e, fmt.Errorf("session index: %w", err)
	}
	return e, nil
}
