package approval_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/gateway/approval"
	"github.com/gatehouse-dev/gatehouse/gateway/approval/approvaltest"
	"github.com/gatehouse-dev/gatehouse/internal/clock"
	"github.com/gatehouse-dev/gatehouse/internal/pgtest"
)

// The PostgreSQL tests share one server, started by the first that needs
// it; each test gets a database of its own, owned by a role that is not a
// superuser, as a gateway's state database would be.
var pg = &pgtest.Shared{Role: stateRole, Password: statePassword}

const stateRole, statePassword = "gatehouse", "state-pw'1"

func TestMain(m *testing.M) {
	code := m.Run()
	if err := pg.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "pgcluster:", err)
	}
	os.Exit(code)
}

func pgServer(t *testing.T) *pgtest.Server { return pg.Server(t) }

// stateDB makes an empty database and returns its name and DSN.
func stateDB(t *testing.T) (string, string) { return pg.NewDatabase(t) }

// openPG opens a store on dsn and closes it when the test ends.
func openPG(t *testing.T, dsn string, opts ...approval.Option) *approval.PGStore {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := approval.OpenPostgres(ctx, dsn, opts...)
	if err != nil {
		t.Fatalf("OpenPostgres: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestPGStoreConformance holds the PostgreSQL store to what every store
// must do. The poll is slowed to an hour, so that what the suite sees is
// done by timers and notifications, not hidden by the fallback. The rows
// are authenticated with a row key, as a production setup's are.
func TestPGStoreConformance(t *testing.T) {
	key := approval.WithRowKey([]byte("conformance-row-key-0123456789ab"))
	start := time.Now()
	var dsns sync.Map // store -> DSN, for Reopen
	approvaltest.Run(t, approvaltest.Harness{
		New: func(t *testing.T, c clock.Clock) approval.Store {
			_, dsn := stateDB(t)
			s := openPG(t, dsn, approval.WithClock(c), approval.WithPollInterval(time.Hour), key)
			dsns.Store(approval.Store(s), dsn)
			return s
		},
		Reopen: func(t *testing.T, old approval.Store, c clock.Clock) approval.Store {
			dsn, ok := dsns.Load(old)
			if !ok {
				t.Fatal("Reopen of a store the harness did not make")
			}
			s := openPG(t, dsn.(string), approval.WithClock(c), approval.WithPollInterval(time.Hour), key)
			dsns.Store(approval.Store(s), dsn)
			return s
		},
	})
	t.Logf("the suite took %s", time.Since(start).Round(time.Millisecond))
}

// TestPGStoreMigrationsRaceSafely: replicas starting at once on an empty
// database apply each migration once, and all of them serve.
func TestPGStoreMigrationsRaceSafely(t *testing.T) {
	if approval.SchemaVersion() < 1 {
		t.Fatalf("SchemaVersion %d: the embedded migrations are missing or misnumbered", approval.SchemaVersion())
	}
	db, dsn := stateDB(t)
	const n = 8
	stores := make([]*approval.PGStore, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			stores[i], errs[i] = approval.OpenPostgres(context.Background(), dsn, approval.WithPollInterval(time.Hour))
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: %v", i, err)
		}
		t.Cleanup(func() { stores[i].Close() })
	}
	conn := pgServer(t).Conn(t, db)
	var rows, version int
	if err := conn.QueryRow(ctx, "SELECT count(*), max(version) FROM gatehouse_schema_migrations WHERE component = 'approvals'").Scan(&rows, &version); err != nil {
		t.Fatal(err)
	}
	if rows != approval.SchemaVersion() || version != approval.SchemaVersion() {
		t.Errorf("%d migration rows up to version %d, want each of %d applied once", rows, version, approval.SchemaVersion())
	}
	c := newClock()
	r := mustOpen(t, stores[0], approvaltest.Request(c.Now()))
	for i, s := range stores {
		if got, err := s.Get(ctx, r.ID); err != nil || got.ID != r.ID {
			t.Errorf("replica %d: Get = %v", i, err)
		}
	}
	// A restart finds the schema current and changes nothing.
	again := openPG(t, dsn)
	if got, err := again.Get(ctx, r.ID); err != nil || got.Hash != r.Hash {
		t.Errorf("after a restart: %+v, %v", got, err)
	}
	status, err := approval.CheckPostgres(ctx, dsn)
	if err != nil || status.Version != approval.SchemaVersion() || status.Latest != approval.SchemaVersion() {
		t.Errorf("CheckPostgres = %+v, %v", status, err)
	}
}

// TestPGStoreRefusesANewerSchema: a gateway older than the schema does not
// guess at what changed.
func TestPGStoreRefusesANewerSchema(t *testing.T) {
	db, dsn := stateDB(t)
	openPG(t, dsn).Close()
	pgServer(t).Exec(t, db, "INSERT INTO gatehouse_schema_migrations (component, version, name) VALUES ('approvals', 9999, '9999_future')")
	if s, err := approval.OpenPostgres(ctx, dsn); !errors.Is(err, approval.ErrSchemaNewer) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("OpenPostgres on a newer schema: %v, want ErrSchemaNewer", err)
	}
	if _, err := approval.CheckPostgres(ctx, dsn); !errors.Is(err, approval.ErrSchemaNewer) {
		t.Errorf("CheckPostgres on a newer schema: %v, want ErrSchemaNewer", err)
	}
}

// TestCheckPostgresChangesNothing: --check on an empty database reports
// version 0 and leaves it empty.
func TestCheckPostgresChangesNothing(t *testing.T) {
	db, dsn := stateDB(t)
	status, err := approval.CheckPostgres(ctx, dsn)
	if err != nil || status.Version != 0 || status.Latest != approval.SchemaVersion() {
		t.Fatalf("CheckPostgres = %+v, %v", status, err)
	}
	var tables int
	if err := pgServer(t).Conn(t, db).QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").Scan(&tables); err != nil || tables != 0 {
		t.Errorf("%d tables after a check (%v), want none", tables, err)
	}
}

func TestOpenPostgresErrorsHideTheDSN(t *testing.T) {
	for name, dsn := range map[string]string{
		"unparsable": "postgres://gatehouse:hunter2@127.0.0.1:notaport/state",
		"refused":    "postgres://gatehouse:hunter2@127.0.0.1:1/state?sslmode=disable&connect_timeout=2",
	} {
		s, err := approval.OpenPostgres(ctx, dsn)
		if err == nil {
			s.Close()
			t.Errorf("%s: OpenPostgres succeeded", name)
			continue
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: the error shows the password: %v", name, err)
		}
		if _, err := approval.CheckPostgres(ctx, dsn); err == nil || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: CheckPostgres: %v", name, err)
		}
	}
}

// replicas opens n stores on one new database, sharing clock c.
func replicas(t *testing.T, n int, c clock.Clock, opts ...approval.Option) []*approval.PGStore {
	t.Helper()
	_, dsn := stateDB(t)
	out := make([]*approval.PGStore, n)
	for i := range out {
		out[i] = openPG(t, dsn, append([]approval.Option{approval.WithClock(c)}, opts...)...)
	}
	return out
}

// warm opens n connections in each store's pool: a test of a race has its
// goroutines meet in the database, not queue for a connection.
func warm(t *testing.T, n int, stores ...*approval.PGStore) {
	t.Helper()
	var wg sync.WaitGroup
	for _, s := range stores {
		for range n {
			wg.Go(func() {
				if _, err := s.Counts(ctx); err != nil {
					t.Errorf("Counts: %v", err)
				}
			})
		}
	}
	wg.Wait()
}

// TestPGStoreUseExactlyOnceAcrossReplicas: retries of one held request on
// two replicas, using and redeeming a single-use approval at once, release
// it exactly once.
func TestPGStoreUseExactlyOnceAcrossReplicas(t *testing.T) {
	c := newClock()
	rs := replicas(t, 2, c, approval.WithPollInterval(time.Hour))
	in := approvaltest.Request(c.Now())
	r := mustOpen(t, rs[0], in)
	mustVote(t, rs[1], r.ID, bob, true, "")
	const n = 32
	var wins atomic.Int32
	var wg sync.WaitGroup
	warm(t, n/2, rs...)
	ready := make(chan struct{})
	for i := range n {
		s := rs[i%2]
		wg.Go(func() {
			<-ready
			if i%4 < 2 {
				_, err := s.Use(ctx, r.ID)
				if err != nil && !errors.Is(err, approval.ErrNotUsable) {
					t.Errorf("Use: %v", err)
				}
				if err == nil {
					wins.Add(1)
				}
				return
			}
			_, ok, err := s.Redeem(ctx, in.Hash, alice, in.Resource, in.Needs)
			if err != nil {
				t.Errorf("Redeem: %v", err)
			}
			if ok {
				wins.Add(1)
			}
		})
	}
	close(ready)
	wg.Wait()
	if wins.Load() != 1 {
		t.Errorf("%d uses of a single-use approval succeeded across two replicas, want exactly 1", wins.Load())
	}
	for i, s := range rs {
		if got := get(s, r.ID); got.Uses != 1 {
			t.Errorf("replica %d: uses %d, want 1", i, got.Uses)
		}
	}
	// A reusable approval counts every use, from either replica.
	re := approvaltest.Request(c.Now())
	re.Hash, re.Reusable = "hash-reusable", true
	rr := mustOpen(t, rs[1], re)
	mustVote(t, rs[0], rr.ID, carol, true, "")
	for i := range n {
		wg.Go(func() {
			if _, err := rs[i%2].Use(ctx, rr.ID); err != nil {
				t.Errorf("Use of a reusable approval: %v", err)
			}
		})
	}
	wg.Wait()
	if got := get(rs[0], rr.ID); got.Uses != n {
		t.Errorf("reusable uses %d, want %d", got.Uses, n)
	}
}

// TestPGStoreOpenAcrossReplicas: a request retried on several replicas at
// once opens one approval request, and the per-requester cap counts the
// requests of every replica.
func TestPGStoreOpenAcrossReplicas(t *testing.T) {
	c := newClock()
	rs := replicas(t, 3, c, approval.WithPollInterval(time.Hour))
	const n = 12
	ids := make([]string, n)
	var created atomic.Int32
	var wg sync.WaitGroup
	// Each pool has its connections open and every Open starts at once, so
	// that they overlap in the database.
	warm(t, n, rs...)
	ready := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-ready
			r, ok, err := rs[i%3].Open(ctx, approvaltest.Request(c.Now()))
			if err != nil {
				t.Errorf("Open: %v", err)
			}
			if ok {
				created.Add(1)
			}
			ids[i] = r.ID
		})
	}
	close(ready)
	wg.Wait()
	if created.Load() != 1 {
		t.Errorf("%d requests created for one binding, want 1", created.Load())
	}
	for _, id := range ids {
		if id != ids[0] {
			t.Fatalf("Open returned %s and %s for one binding", ids[0], id)
		}
	}
	for i := 1; i < approval.MaxPendingPerRequester; i++ {
		in := approvaltest.Request(c.Now())
		in.Hash = fmt.Sprint("cap-", i)
		mustOpen(t, rs[i%3], in)
	}
	for i, s := range rs {
		in := approvaltest.Request(c.Now())
		in.Hash = "one-too-many"
		if _, _, err := s.Open(ctx, in); !errors.Is(err, approval.ErrTooMany) {
			t.Errorf("replica %d: open beyond the cap: %v, want ErrTooMany", i, err)
		}
	}
}

// TestPGStoreSettlementReachesEveryReplica: a request held on one replica
// is released by a vote through another, by NOTIFY (the poll is an hour
// away).
func TestPGStoreSettlementReachesEveryReplica(t *testing.T) {
	c := newClock()
	rs := replicas(t, 3, c, approval.WithPollInterval(time.Hour))
	for name, settle := range map[string]func(s approval.Store, id string){
		"approve": func(s approval.Store, id string) { mustVote(t, s, id, bob, true, "") },
		"deny":    func(s approval.Store, id string) { mustVote(t, s, id, bob, false, "no") },
		"cancel": func(s approval.Store, id string) {
			if err := s.Cancel(ctx, id, "gone"); err != nil {
				t.Fatal(err)
			}
		},
	} {
		in := approvaltest.Request(c.Now())
		in.Hash = "hash-" + name
		r := mustOpen(t, rs[0], in)
		var waits []<-chan struct{}
		for _, s := range rs {
			w, err := s.Settled(ctx, r.ID)
			if err != nil {
				t.Fatal(err)
			}
			waits = append(waits, w)
		}
		start := time.Now()
		settle(rs[1], r.ID)
		for i, w := range waits {
			waitClosed(t, w, 5*time.Second, fmt.Sprintf("%s: replica %d's waiter", name, i))
		}
		t.Logf("%s: every replica's waiter woke within %s", name, time.Since(start).Round(time.Microsecond))
	}
}

// TestPGStoreListenerReconnects: when the listener's connection breaks,
// the store connects again, catches up, and hears notifications again.
func TestPGStoreListenerReconnects(t *testing.T) {
	c := newClock()
	db, dsn := stateDB(t)
	a := openPG(t, dsn, approval.WithClock(c), approval.WithPollInterval(time.Hour))
	b := openPG(t, dsn, approval.WithClock(c), approval.WithPollInterval(time.Hour))
	admin := pgServer(t).Conn(t, db)
	listeners := func() []int {
		rows, err := admin.Query(ctx, "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2 ORDER BY pid", db, approval.ListenerApplicationName)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var pids []int
		for rows.Next() {
			var pid int
			if err := rows.Scan(&pid); err != nil {
				t.Fatal(err)
			}
			pids = append(pids, pid)
		}
		return pids
	}
	before := listeners()
	if len(before) != 2 {
		t.Fatalf("listener connections %v, want one per store", before)
	}
	// Every listener is cut; a vote lands while they may be reconnecting.
	r := mustOpen(t, a, approvaltest.Request(c.Now()))
	w, err := a.Settled(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2", db, approval.ListenerApplicationName); err != nil {
		t.Fatal(err)
	}
	mustVote(t, b, r.ID, bob, true, "")
	waitClosed(t, w, 10*time.Second, "a waiter whose listener was cut")
	deadline := time.Now().Add(10 * time.Second)
	for {
		after := listeners()
		if len(after) == 2 && after[0] != before[0] && after[1] != before[1] && after[0] != before[1] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("listeners %v after cutting %v: not reconnected", after, before)
		}
		time.Sleep(20 * time.Millisecond) // polling pg_stat_activity, as pgtest.Conns says to
	}
	// Reconnected, the listener hears the next settlement.
	in := approvaltest.Request(c.Now())
	in.Hash = "hash-2"
	r2 := mustOpen(t, a, in)
	w2, err := a.Settled(ctx, r2.ID)
	if err != nil {
		t.Fatal(err)
	}
	mustVote(t, b, r2.ID, carol, false, "no")
	waitClosed(t, w2, 5*time.Second, "a waiter after the listener reconnected")
}

// TestPGStorePollFallback: a settlement whose notification never came (an
// UPDATE without NOTIFY stands in for a lost one) still wakes the waiter,
// within the poll interval; and a request whose replica went away before
// its expiry is expired by the poll of another.
func TestPGStorePollFallback(t *testing.T) {
	c := newClock()
	db, dsn := stateDB(t)
	const poll = 50 * time.Millisecond
	var told sync.Map
	tell := func(event string, r approval.Request) {
		n, _ := told.LoadOrStore(event+" "+r.ID, new(atomic.Int32))
		n.(*atomic.Int32).Add(1)
	}
	a := openPG(t, dsn, approval.WithClock(c), approval.WithPollInterval(poll))
	r := mustOpen(t, a, approvaltest.Request(c.Now()))
	w, err := a.Settled(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	denied := get(a, r.ID)
	approval.Settle(&denied, approval.Denied, "denied by a replica whose NOTIFY was lost", c.Now())
	b, err := json.Marshal(denied)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	pgServer(t).Exec(t, db, "UPDATE gatehouse_approvals SET state = 'denied', settled_at = $2, request = $3 WHERE id = $1", r.ID, c.Now(), string(b))
	waitClosed(t, w, 5*time.Second, "a waiter whose notification was lost")
	t.Logf("woken by the poll after %s (interval %s)", time.Since(start).Round(time.Millisecond), poll)

	// Replica a opens a request and goes away before it expires; b, which
	// never heard of it, expires it on time by its poll, and tells the
	// webhooks once.
	in := approvaltest.Request(c.Now())
	in.Hash, in.ExpiresAt = "hash-2", c.Now().Add(time.Minute)
	r2 := mustOpen(t, a, in)
	b2 := openPG(t, dsn, approval.WithClock(c), approval.WithPollInterval(poll), approval.WithNotify(tell))
	a.Close()
	// b armed r2's expiry when it opened; this test is about the poll, so
	// the request it must find is one opened after b started.
	in.Hash = "hash-3"
	a2 := openPG(t, dsn, approval.WithClock(c), approval.WithPollInterval(time.Hour))
	r3 := mustOpen(t, a2, in)
	a2.Close()
	c.Advance(time.Minute)
	deadline := time.Now().Add(5 * time.Second)
	for _, id := range []string{r2.ID, r3.ID} {
		for get(b2, id).State != approval.Expired {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %s after its expiry, want expired by the other replica", id, get(b2, id).State)
			}
			time.Sleep(poll / 5) // waiting for the poll under test
		}
	}
	b2.Close()
	for _, id := range []string{r2.ID, r3.ID} {
		if n, _ := told.Load(approval.EventExpired + " " + id); n == nil || n.(*atomic.Int32).Load() != 1 {
			t.Errorf("%s: the expiry was told %v times, want once", id, n)
		}
	}
}

// TestPGStoreTellsEachEventOnce: every replica has the webhooks; each event
// is told by the replica that caused it, once.
func TestPGStoreTellsEachEventOnce(t *testing.T) {
	c := newClock()
	_, dsn := stateDB(t)
	var mu sync.Mutex
	var events []string
	tellAs := func(replica string) func(string, approval.Request) {
		return func(event string, r approval.Request) {
			mu.Lock()
			defer mu.Unlock()
			events = append(events, replica+" "+event+" "+r.Hash)
		}
	}
	a := openPG(t, dsn, approval.WithClock(c), approval.WithPollInterval(time.Hour), approval.WithNotify(tellAs("a")))
	b := openPG(t, dsn, approval.WithClock(c), approval.WithPollInterval(time.Hour), approval.WithNotify(tellAs("b")))

	approved := mustOpen(t, a, approvaltest.Request(c.Now()))
	mustVote(t, b, approved.ID, bob, true, "")
	in := approvaltest.Request(c.Now())
	in.Hash, in.ExpiresAt = "hash-expires", c.Now().Add(time.Minute)
	expires := mustOpen(t, b, in)
	// Both replicas arm its expiry (b opened it, a waits on it); both fire.
	wa, err := a.Settled(ctx, expires.ID)
	if err != nil {
		t.Fatal(err)
	}
	wb, err := b.Settled(ctx, expires.ID)
	if err != nil {
		t.Fatal(err)
	}
	c.Advance(time.Minute)
	waitClosed(t, wa, 5*time.Second, "a's waiter at the expiry")
	waitClosed(t, wb, 5*time.Second, "b's waiter at the expiry")
	// Close waits for expiries in flight: the count is final.
	a.Close()
	b.Close()
	mu.Lock()
	defer mu.Unlock()
	count := map[string]int{}
	for _, e := range events {
		_, rest, _ := strings.Cut(e, " ")
		count[rest]++
	}
	want := map[string]int{
		"approval.requested hash-1": 1, "approval.approved hash-1": 1,
		"approval.requested hash-expires": 1, "approval.expired hash-expires": 1,
	}
	for k, n := range want {
		if count[k] != n {
			t.Errorf("%q told %d times, want %d (events %q)", k, count[k], n, events)
		}
	}
	if len(events) != 4 {
		t.Errorf("events %q, want 4", events)
	}
	for _, e := range []string{"a approval.requested hash-1", "b approval.approved hash-1", "b approval.requested hash-expires"} {
		found := false
		for _, got := range events {
			found = found || got == e
		}
		if !found {
			t.Errorf("missing %q: the replica that made the change tells it (events %q)", e, events)
		}
	}
}

// TestPGStoreForgedRow: someone who can write gatehouse_approvals (the
// gateway's DSN, a DBA, a backup restore) but does not hold the replicas'
// row key inserts an approved request for a statement nobody approved,
// approves a pending one in place, or copies an approved row under
// another request's id. Without a key the store trusts the database, and
// the forged approval releases the statement; with one, a row whose MAC
// does not verify is not read.
func TestPGStoreForgedRow(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	bob := approval.Principal{Name: "bob", Issuer: "https://id.example.com", Subject: "sub-bob", Groups: []string{"dba"}}
	forge := func(t *testing.T, db string, c *clock.Fake, hash string) {
		t.Helper()
		r := approvaltest.Request(c.Now())
		r.Hash = hash
		r, err := approval.Prepare(r, c.Now())
		if err != nil {
			t.Fatal(err)
		}
		r.Votes = []approval.Vote{{Approver: bob, Decision: "approve", Time: c.Now()}}
		r.Needs[0].Approvers = []string{bob.Key()}
		approval.Settle(&r, approval.Approved, "approved by bob", c.Now())
		r.ValidUntil = c.Now().Add(time.Hour)
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		pgServer(t).Exec(t, db, `INSERT INTO gatehouse_approvals
			(id, state, issuer, subject, resource, hash, created_at, expires_at, settled_at, valid_until, request)
			VALUES ($1, 'approved', $2, $3, $4, $5, $6, $7, $6, $8, $9)`,
			r.ID, r.Requester.Issuer, r.Requester.Subject, r.Resource, r.Hash, r.CreatedAt, r.ExpiresAt, r.ValidUntil, string(b))
	}
	redeem := func(s approval.Store, c *clock.Fake, hash string) bool {
		in := approvaltest.Request(c.Now())
		_, ok, err := s.Redeem(ctx, hash, in.Requester, in.Resource, in.Needs)
		if err != nil {
			t.Fatalf("Redeem: %v", err)
		}
		return ok
	}

	t.Run("without a key the database is trusted", func(t *testing.T) {
		c := newClock()
		db, dsn := stateDB(t)
		s := openPG(t, dsn, approval.WithClock(c), approval.WithPollInterval(time.Hour))
		forge(t, db, c, "forged")
		if !redeem(s, c, "forged") {
			t.Fatal("the forged row was not redeemed: this subtest shows what the key protects against")
		}
	})

	t.Run("with a key", func(t *testing.T) {
		c := newClock()
		db, dsn := stateDB(t)
		s := openPG(t, dsn, approval.WithClock(c), approval.WithPollInterval(time.Hour), approval.WithRowKey(key))
		// An inserted approval releases nothing, and is not listed.
		forge(t, db, c, "forged")
		if redeem(s, c, "forged") {
			t.Fatal("a row inserted without the key released a statement")
		}
		if rs, err := s.List(ctx, nil); err != nil || len(rs) != 0 {
			t.Fatalf("List = %d rows, %v; want the forged row left out", len(rs), err)
		}
		// A pending request approved in place.
		in := approvaltest.Request(c.Now())
		in.Hash = "pending"
		r := mustOpen(t, s, in)
		approved := get(s, r.ID)
		approved.Votes = []approval.Vote{{Approver: bob, Decision: "approve", Time: c.Now()}}
		approved.Needs[0].Approvers = []string{bob.Key()}
		approval.Settle(&approved, approval.Approved, "approved by bob", c.Now())
		approved.ValidUntil = c.Now().Add(time.Hour)
		b, _ := json.Marshal(approved)
		pgServer(t).Exec(t, db, "UPDATE gatehouse_approvals SET state = 'approved', settled_at = $2, valid_until = $3, request = $4 WHERE id = $1",
			r.ID, c.Now(), approved.ValidUntil, string(b))
		if redeem(s, c, "pending") {
			t.Fatal("a request approved in the table without the key released a statement")
		}
		if _, err := s.Get(ctx, r.ID); !errors.Is(err, approval.ErrNotFound) {
			t.Errorf("Get of the altered row: %v, want ErrNotFound", err)
		}
		// A real approval, then its row (with its valid MAC) copied over
		// another request's.
		in.Hash = "real"
		real := mustOpen(t, s, in)
		if _, err := s.Vote(ctx, real.ID, bob, true, "ok"); err != nil {
			t.Fatal(err)
		}
		in.Hash = "other"
		other := mustOpen(t, s, in)
		pgServer(t).Exec(t, db, `UPDATE gatehouse_approvals AS o SET state = r.state, hash = r.hash, settled_at = r.settled_at,
			valid_until = r.valid_until, request = r.request, mac = r.mac FROM gatehouse_approvals AS r WHERE o.id = $1 AND r.id = $2`,
			other.ID, real.ID)
		if _, err := s.Get(ctx, other.ID); !errors.Is(err, approval.ErrNotFound) {
			t.Errorf("Get of a row copied under another id: %v, want ErrNotFound", err)
		}
		// What the gateway wrote itself still works: the real approval
		// releases its statement once.
		if !redeem(s, c, "real") {
			t.Fatal("the real approval was not redeemed")
		}
	})
}

// TestPGStoreSpoofedNotify: any role that can connect to the state
// database can NOTIFY on the approvals channel. A notification naming a
// request that is still pending wakes no waiter: it is only a hint to look
// the request up.
func TestPGStoreSpoofedNotify(t *testing.T) {
	c := newClock()
	db, dsn := stateDB(t)
	s := openPG(t, dsn, approval.WithClock(c), approval.WithPollInterval(time.Hour))
	held := mustOpen(t, s, approvaltest.Request(c.Now()))
	heldW, err := s.Settled(ctx, held.ID)
	if err != nil {
		t.Fatal(err)
	}
	in := approvaltest.Request(c.Now())
	in.Hash = "hash-2"
	other := mustOpen(t, s, in)
	otherW, err := s.Settled(ctx, other.ID)
	if err != nil {
		t.Fatal(err)
	}
	pgServer(t).Exec(t, db, "SELECT pg_notify($1, $2)", approval.NotifyChannel, held.ID)
	// Notifications arrive in order: once the real settlement after the
	// spoofed one is heard, the spoofed one has been handled.
	mustVote(t, openPG(t, dsn, approval.WithClock(c), approval.WithPollInterval(time.Hour)), other.ID, carol, false, "no")
	waitClosed(t, otherW, 5*time.Second, "a waiter on a request settled through another replica")
	select {
	case <-heldW:
		t.Fatalf("a spoofed NOTIFY woke the waiter of pending request %s", held.ID)
	default:
	}
	if got := get(s, held.ID); got.State != approval.Pending {
		t.Fatalf("the request is %s", got.State)
	}
}
