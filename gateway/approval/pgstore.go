package approval

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/gatehouse-dev/gatehouse/internal/clock"
)

// PGStore keeps requests in a PostgreSQL database that several gateway
// replicas share, so that a request held on one replica is released by a
// vote through another, and an approval is spent once whichever replica
// the retry reaches.
//
// The database is the only truth: no replica caches a request. Every
// change reads the request under its row lock (SELECT ... FOR UPDATE),
// decides with the same functions as the file store (CastVote, Usable,
// Covers) and writes it back in the same transaction, so two replicas
// never both spend a single-use approval, both settle a request, or both
// count one approver. Opens of one requester take turns under a
// transaction-scoped advisory lock, so that a retry on another replica
// joins the pending request and MaxPendingPerRequester holds across
// replicas.
//
// A transaction that settles a request also sends NOTIFY on the channel
// NotifyChannel with the request's id, delivered when it commits; every
// store listens on one connection of its own and wakes its waiters. A
// notification can be lost (the listener's connection drops and is made
// again), so every poll interval a store also looks up the requests it
// waits on, and expires requests past their expiry that no replica has.
//
// Webhooks (WithNotify) are told by the replica whose transaction made the
// change: each event once, not once per replica.
//
// Each replica decides expiry and validity by its own clock, as a single
// gateway does: keep the replicas' clocks in sync (NTP).
type PGStore struct {
	options
	pool     *pgxpool.Pool
	listenTo *pgx.ConnConfig

	// ctx is the background work's (the listener, the poller, expiries);
	// Close cancels it and waits for bg.
	ctx    context.Context
	cancel context.CancelFunc
	bg     sync.WaitGroup

	mu sync.Mutex
	// waiters are the Settled channels of requests this store waits on;
	// timers, the expiries it has armed (requests it opened, loaded at
	// start, or waits on).
	waiters map[string]chan struct{}
	timers  map[string]clock.Timer
	closed  bool
}

var _ Store = (*PGStore)(nil)

// NotifyChannel is the PostgreSQL notification channel of settlements; the
// payload is the request id.
const NotifyChannel = "gatehouse_approvals"

// ListenerApplicationName is the application_name of each store's listener
// connection, as pg_stat_activity shows it.
const ListenerApplicationName = "gatehouse approvals listener"

// requesterLock is the first key of the pg_advisory_xact_lock(int, int)
// that Open takes per requester ("gh"). The two-key and one-key (the
// migration lock's) advisory lock spaces do not overlap.
const requesterLock int32 = 0x6768

// opTimeout bounds the store's own background statements (expiries, polls).
const opTimeout = 30 * time.Second

// OpenPostgres connects to the database dsn names, brings its schema up to
// date (several replicas may start at once: migrations take an advisory
// lock), drops settled requests older than Retention, arms the expiry of
// every pending request (expiring those whose time ran out while no
// gateway ran), and starts listening for settlements. It returns once the
// store listens, so a settlement committed after it returns reaches it.
func OpenPostgres(ctx context.Context, dsn string, opts ...Option) (*PGStore, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx's message may quote the DSN, and the DSN may hold a password.
		return nil, errors.New("approvals: the state database's DSN cannot be parsed (a postgres:// URL or key=value settings)")
	}
	if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		cfg.ConnConfig.RuntimeParams["application_name"] = "gatehouse"
	}
	listenTo := cfg.ConnConfig.Copy()
	listenTo.RuntimeParams["application_name"] = ListenerApplicationName
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("approvals: %w", err)
	}
	s := &PGStore{options: newOptions(opts), pool: pool, listenTo: listenTo,
		waiters: map[string]chan struct{}{}, timers: map[string]clock.Timer{}}
	if err := s.start(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return s, nil
}

func (s *PGStore) start(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("approvals: the state database: %w", err)
	}
	if _, err := migrate(ctx, s.pool); err != nil {
		return err
	}
	if _, err := s.pool.Exec(ctx, "DELETE FROM gatehouse_approvals WHERE state <> 'pending' AND settled_at < $1",
		s.clock.Now().Add(-Retention)); err != nil {
		return fmt.Errorf("approvals: dropping settled requests past retention: %w", err)
	}
	pending, err := s.query(ctx, s.pool, "SELECT id, request, mac FROM gatehouse_approvals WHERE state = 'pending'")
	if err != nil {
		return err
	}
	conn, err := s.connectListener(ctx)
	if err != nil {
		return err
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	// An overdue request's timer fires at once, and its expiry waits for
	// the store to be set up (it takes mu).
	s.mu.Lock()
	for i := range pending {
		s.arm(pending[i].ID, pending[i].ExpiresAt)
	}
	s.mu.Unlock()
	s.bg.Add(2)
	go s.listen(conn)
	go s.poll()
	return nil
}

// Close stops the listener, the poller and the expiry timers, and closes
// the connections. Requests stay in the database, and other replicas go on
// serving them.
func (s *PGStore) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for id, t := range s.timers {
		t.Stop()
		delete(s.timers, id)
	}
	s.mu.Unlock()
	s.cancel()
	s.bg.Wait()
	s.pool.Close()
	return nil
}

// Open implements Store.
func (s *PGStore) Open(ctx context.Context, in Request) (Request, bool, error) {
	var out Request
	created := false
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1::int, hashtext($2))",
			requesterLock, in.Requester.Issuer+"\n"+in.Requester.Subject); err != nil {
			return err
		}
		mine, err := s.query(ctx, tx, "SELECT id, request, mac FROM gatehouse_approvals WHERE subject = $1 AND issuer = $2 AND state = 'pending'",
			in.Requester.Subject, in.Requester.Issuer)
		if err != nil {
			return err
		}
		now := s.clock.Now()
		pending := 0
		for i := range mine {
			x := &mine[i]
			if !now.Before(x.ExpiresAt) {
				continue
			}
			if x.Binds(in.Hash, in.Requester, in.Resource) {
				out = x.Clone()
				return nil
			}
			pending++
		}
		r, err := Prepare(in, now)
		if err != nil {
			return err
		}
		if pending >= MaxPendingPerRequester {
			return TooMany(r.Requester, pending)
		}
		b, err := encode(&r)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO gatehouse_approvals
			(id, state, issuer, subject, resource, hash, created_at, expires_at, request, mac)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
			r.ID, string(r.State), r.Requester.Issuer, r.Requester.Subject, r.Resource, r.Hash, r.CreatedAt, r.ExpiresAt, b, s.mac(r.ID, b)); err != nil {
			return err
		}
		out, created = r, true
		return nil
	})
	if err != nil {
		return Request{}, false, wrap(err)
	}
	if created {
		s.mu.Lock()
		s.arm(out.ID, out.ExpiresAt)
		s.mu.Unlock()
		s.log.Info("approval requested", "approval", out.ID, "requester", out.Requester.String(), "resource", out.Resource,
			"rules", out.Rules(), "groups", out.Groups(), "expires_at", out.ExpiresAt.UTC().Format(time.RFC3339))
		s.tell(EventRequested, &out)
	}
	return out, created, nil
}

// Redeem implements Store. It locks every approved request of the binding
// that may still be valid, in one order (so that two Redeems do not
// deadlock), and spends the oldest that is usable and covers needs.
func (s *PGStore) Redeem(ctx context.Context, hash string, requester Principal, resource string, needs []Need) (Request, bool, error) {
	var out Request
	ok := false
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// valid_until is in microseconds: >= keeps every request the exact
		// test below may pass.
		rs, err := s.query(ctx, tx, `SELECT id, request, mac FROM gatehouse_approvals
			WHERE hash = $1 AND subject = $2 AND resource = $3 AND issuer = $4 AND state = 'approved' AND valid_until >= $5
			ORDER BY settled_at, id FOR UPDATE`,
			hash, requester.Subject, resource, requester.Issuer, s.clock.Now())
		if err != nil {
			return err
		}
		now := s.clock.Now()
		var best *Request
		for i := range rs {
			x := &rs[i]
			if x.Binds(hash, requester, resource) && x.Usable(now) && x.Covers(needs) {
				if best == nil || x.SettledAt.Before(best.SettledAt) {
					best = x
				}
			}
		}
		if best == nil {
			return nil
		}
		next := best.Clone()
		next.Uses++
		if err := s.write(ctx, tx, &next); err != nil {
			return err
		}
		out, ok = next, true
		return nil
	})
	if err != nil {
		return Request{}, false, wrap(err)
	}
	return out, ok, nil
}

// Use implements Store.
func (s *PGStore) Use(ctx context.Context, id string) (Request, error) {
	var out Request
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		r, err := s.lock(ctx, tx, id)
		if err != nil {
			return err
		}
		if !r.Usable(s.clock.Now()) {
			out = r
			return NotUsable(&r)
		}
		next := r.Clone()
		next.Uses++
		if err := s.write(ctx, tx, &next); err != nil {
			return err
		}
		out = next
		return nil
	})
	switch {
	case errors.Is(err, ErrNotUsable):
		return out, err
	case err != nil:
		return Request{}, wrap(err)
	}
	return out, nil
}

// Vote implements Store.
func (s *PGStore) Vote(ctx context.Context, id string, who Principal, approve bool, comment string) (Request, error) {
	var prev, next Request
	var refused error
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		r, err := s.lock(ctx, tx, id)
		if err != nil {
			return err
		}
		prev = r
		next, refused = CastVote(r.Clone(), who, approve, comment, s.clock.Now())
		if refused != nil {
			return refused
		}
		return s.commit(ctx, tx, &prev, &next)
	})
	switch {
	case refused != nil:
		return next, refused
	case errors.Is(err, ErrNotFound):
		return Request{}, err
	case err != nil:
		// Nothing changed: the vote is not counted.
		return prev, wrap(err)
	}
	s.log.Info("approval vote", "approval", id, "approver", who.String(), "decision", next.Votes[len(next.Votes)-1].Decision, "comment", comment, "state", next.State)
	s.settledHere(&prev, &next)
	return next.Clone(), nil
}

// Cancel implements Store.
func (s *PGStore) Cancel(ctx context.Context, id, why string) error {
	var prev, next Request
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		r, err := s.lock(ctx, tx, id)
		if err != nil {
			return err
		}
		prev, next = r, r
		if r.Settled() {
			return nil
		}
		next = r.Clone()
		Settle(&next, Cancelled, why, s.clock.Now())
		return s.commit(ctx, tx, &prev, &next)
	})
	if err != nil {
		return wrap(err)
	}
	s.settledHere(&prev, &next)
	return nil
}

// Get implements Store.
func (s *PGStore) Get(ctx context.Context, id string) (Request, error) {
	rs, err := s.query(ctx, s.pool, "SELECT id, request, mac FROM gatehouse_approvals WHERE id = $1", id)
	switch {
	case err != nil:
		return Request{}, wrap(err)
	case len(rs) == 0:
		return Request{}, ErrNotFound
	}
	return rs[0], nil
}

// List implements Store. keep runs in the gateway, over every request the
// database keeps (Retention bounds them).
func (s *PGStore) List(ctx context.Context, keep func(*Request) bool) ([]Request, error) {
	rs, err := s.query(ctx, s.pool, "SELECT id, request, mac FROM gatehouse_approvals")
	if err != nil {
		return nil, wrap(err)
	}
	var out []Request
	for i := range rs {
		if keep == nil || keep(&rs[i]) {
			out = append(out, rs[i])
		}
	}
	SortNewestFirst(out)
	return out, nil
}

// Counts implements Store.
func (s *PGStore) Counts(ctx context.Context) (map[State]int, error) {
	rows, err := s.pool.Query(ctx, "SELECT state, count(*) FROM gatehouse_approvals GROUP BY state")
	if err != nil {
		return nil, wrap(err)
	}
	out := map[State]int{Pending: 0, Approved: 0, Denied: 0, Expired: 0, Cancelled: 0}
	var st string
	var n int
	if _, err := pgx.ForEachRow(rows, []any{&st, &n}, func() error { out[State(st)] = n; return nil }); err != nil {
		return nil, wrap(err)
	}
	return out, nil
}

// Settled implements Store. The waiter is in place before the database is
// read: a settlement committed before the read is what the read sees, and
// one committed after it is announced to the listener, which finds the
// waiter (or, if the announcement is lost, the next poll does).
func (s *PGStore) Settled(ctx context.Context, id string) (<-chan struct{}, error) {
	s.mu.Lock()
	c, ok := s.waiters[id]
	if !ok {
		c = make(chan struct{})
		s.waiters[id] = c
	}
	s.mu.Unlock()
	r, err := s.Get(ctx, id)
	switch {
	case errors.Is(err, ErrNotFound):
		s.wake(id)
	case err != nil:
		// The waiter stays: the poll closes it once the request settles.
		return nil, err
	case r.Settled():
		s.wake(id)
	default:
		// A request opened on another replica expires here too, on time.
		s.mu.Lock()
		s.arm(id, r.ExpiresAt)
		s.mu.Unlock()
	}
	return c, nil
}

// lock reads request id under its row lock, for the rest of tx.
func (s *PGStore) lock(ctx context.Context, tx pgx.Tx, id string) (Request, error) {
	rs, err := s.query(ctx, tx, "SELECT id, request, mac FROM gatehouse_approvals WHERE id = $1 FOR UPDATE", id)
	switch {
	case err != nil:
		return Request{}, err
	case len(rs) == 0:
		return Request{}, ErrNotFound
	}
	return rs[0], nil
}

// commit writes next in tx and, when next settles prev, announces it on
// NotifyChannel: PostgreSQL delivers the notification once tx commits, and
// never when it rolls back.
func (s *PGStore) commit(ctx context.Context, tx pgx.Tx, prev, next *Request) error {
	if err := s.write(ctx, tx, next); err != nil {
		return err
	}
	if next.Settled() && !prev.Settled() {
		if _, err := tx.Exec(ctx, "SELECT pg_notify($1, $2)", NotifyChannel, next.ID); err != nil {
			return err
		}
	}
	return nil
}

// settledHere follows a committed change that settled a request on this
// replica: it wakes this replica's waiters (the others hear of it through
// NOTIFY) and tells the webhooks, once.
func (s *PGStore) settledHere(prev, next *Request) {
	if !next.Settled() || prev.Settled() {
		return
	}
	s.wake(next.ID)
	s.log.Info("approval settled", "approval", next.ID, "state", next.State, "outcome", next.Outcome)
	s.tell(SettleEvent(next.State), next)
}

// wake closes the waiters of a settled (or unknown) request and disarms
// its expiry.
func (s *PGStore) wake(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.waiters[id]; ok {
		close(c)
		delete(s.waiters, id)
	}
	if t, ok := s.timers[id]; ok {
		t.Stop()
		delete(s.timers, id)
	}
}

// arm arms the expiry of a pending request unless it is armed. Called with
// mu held.
func (s *PGStore) arm(id string, at time.Time) {
	if _, ok := s.timers[id]; ok || s.closed {
		return
	}
	s.timers[id] = s.clock.AfterFunc(max(at.Sub(s.clock.Now()), 0), func() { s.expire(id) })
}

// expire settles request id as expired if it is pending and its time has
// come. Several replicas may try at once: the row lock lets the first do
// it, and the others find it settled.
func (s *PGStore) expire(id string) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.bg.Add(1)
	s.mu.Unlock()
	defer s.bg.Done()
	ctx, cancel := context.WithTimeout(s.ctx, opTimeout)
	defer cancel()
	var prev, next Request
	early := false
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		r, err := s.lock(ctx, tx, id)
		if err != nil {
			return err
		}
		prev, next = r, r
		now := s.clock.Now()
		switch {
		case r.Settled():
			return nil
		case now.Before(r.ExpiresAt):
			early = true
			return nil
		}
		next = r.Clone()
		Settle(&next, Expired, ExpiryOutcome(&r), now)
		return s.commit(ctx, tx, &prev, &next)
	})
	switch {
	case errors.Is(err, ErrNotFound):
		s.wake(id)
	case err != nil:
		if s.ctx.Err() == nil {
			// It stays pending, and a request past its expiry releases
			// nothing; the next poll tries again.
			s.log.Error("could not record an approval request's expiry", "approval", id, "err", err)
		}
	case early:
		s.mu.Lock()
		if t, ok := s.timers[id]; ok {
			t.Stop()
			delete(s.timers, id)
		}
		s.arm(id, prev.ExpiresAt)
		s.mu.Unlock()
	case prev.Settled():
		s.wake(id)
	default:
		s.settledHere(&prev, &next)
	}
}

// query runs a statement that selects the request column.
func (s *PGStore) query(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, sql string, args ...any) ([]Request, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	var out []Request
	var id, b string
	var mac *string
	_, err = pgx.ForEachRow(rows, []any{&id, &b, &mac}, func() error {
		if !s.authentic(id, b, mac) {
			// Written or changed by someone without the key, not by a
			// gateway: it is not read, so it can release nothing and
			// settle nothing. Say so loudly: it is tampering.
			s.log.Error("an approval request in the state database fails its MAC and is ignored: it was written or changed outside the gateway",
				"approval", id)
			return nil
		}
		var r Request
		if err := json.Unmarshal([]byte(b), &r); err != nil {
			// A request that cannot be read can release nothing: the
			// operation fails rather than guess.
			return fmt.Errorf("a stored request cannot be read: %w", err)
		}
		if r.ID != id {
			return fmt.Errorf("the stored request in row %q names another id, %q", id, r.ID)
		}
		out = append(out, r)
		return nil
	})
	return out, err
}

// write stores r, whose row tx has locked.
func (s *PGStore) write(ctx context.Context, tx pgx.Tx, r *Request) error {
	b, err := encode(r)
	if err != nil {
		return err
	}
	tag, err := tx.Exec(ctx, "UPDATE gatehouse_approvals SET state = $2, settled_at = $3, valid_until = $4, request = $5, mac = $6 WHERE id = $1",
		r.ID, string(r.State), nullTime(r.SettledAt), nullTime(r.ValidUntil), b, s.mac(r.ID, b))
	if err != nil {
		return err
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("request %s: %d rows updated, want 1", r.ID, tag.RowsAffected())
	}
	return nil
}

// encode is r as the request column keeps it: the file store's JSON.
func encode(r *Request) (string, error) {
	r.Format = FormatVersion
	b, err := json.Marshal(r)
	return string(b), err
}

func nullTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t
}

// wrap prefixes a database error; the store's own errors pass as they are.
func wrap(err error) error {
	for _, e := range []error{ErrNotFound, ErrSettled, ErrSelfApproval, ErrNotApprover, ErrAlreadyVoted, ErrNotUsable, ErrTooMany, ErrIncomplete} {
		if errors.Is(err, e) {
			return err
		}
	}
	return fmt.Errorf("approvals: %w", err)
}
