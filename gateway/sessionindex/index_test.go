package sessionindex_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/gateway/approval"
	"github.com/gatehouse-dev/gatehouse/gateway/sessionindex"
	"github.com/gatehouse-dev/gatehouse/internal/pgmigrate"
	"github.com/gatehouse-dev/gatehouse/internal/pgtest"
)

// The PostgreSQL tests share one server, started by the first that needs
// it; each test gets a database of its own, owned by a role that is not a
// superuser, as a gateway's state database would be.
var pg = &pgtest.Shared{Role: stateRole, Password: statePassword}

var ctx = context.Background()

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

// fresh opens an index on a new database.
func fresh(t *testing.T) *sessionindex.Index {
	_, dsn := stateDB(t)
	return open(t, dsn)
}

func open(t *testing.T, dsn string) *sessionindex.Index {
	t.Helper()
	ix, err := sessionindex.Open(ctx, dsn)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(ix.Close)
	return ix
}

func put(t *testing.T, ix *sessionindex.Index, rows ...sessionindex.Entry) {
	t.Helper()
	if err := ix.Put(ctx, rows); err != nil {
		t.Fatalf("Put: %v", err)
	}
}

func get(t *testing.T, ix *sessionindex.Index, id string) sessionindex.Entry {
	t.Helper()
	e, err := ix.Get(ctx, id)
	if err != nil {
		t.Fatalf("Get %s: %v", id, err)
	}
	return e
}

// t0 has nanoseconds below a microsecond (under 500, so that rounding and
// truncation agree): what is stored is microseconds.
var t0 = time.Date(2026, 3, 4, 10, 11, 12, 123456321, time.UTC)

// sameEntry compares every field, times at microsecond precision.
func sameEntry(t *testing.T, got, want sessionindex.Entry) {
	t.Helper()
	us := func(e sessionindex.Entry) (sessionindex.Entry, string) {
		e.Started, e.Updated = e.Started.Truncate(time.Microsecond).UTC(), e.Updated.Truncate(time.Microsecond).UTC()
		ended := "nil"
		if e.Ended != nil {
			ended = e.Ended.Truncate(time.Microsecond).UTC().String()
		}
		e.Ended = nil
		return e, ended
	}
	g, ge := us(got)
	w, we := us(want)
	if g != w || ge != we {
		t.Errorf("row\n got %+v ended %s\nwant %+v ended %s", g, ge, w, we)
	}
}

func uploaded(id, loc string, started time.Time) sessionindex.Entry {
	ended := started.Add(90*time.Second + 7*time.Microsecond)
	return sessionindex.Entry{Session: id, Location: loc, Identity: "billing-service", Subject: "sub-" + id,
		Issuer: "https://idp.example", Resource: "orders", Protocol: "postgres", ClientAddr: "10.0.0.7:51234",
		Started: started, Ended: &ended, Status: "ok", Events: 7, Object: loc + id + ".jsonl", Size: 4242,
		SHA256: strings.Repeat("ab", 32), Updated: started.Add(2 * time.Minute)}
}

func opened(id, loc string, started time.Time) sessionindex.Entry {
	return sessionindex.Entry{Session: id, Location: loc, Identity: "alice@example.com", Subject: "alice",
		Issuer: "https://idp.example", Resource: "hr", Protocol: "ssh", ClientAddr: "[::1]:2222",
		Started: started, Status: sessionindex.StatusOpen, Events: 1, Updated: started}
}

func TestPutGetListRoundTrip(t *testing.T) {
	ix := fresh(t)
	a, b := uploaded("s-a", "s3://b/gw/", t0), opened("s-b", "s3://b/gw/", t0.Add(time.Minute))
	put(t, ix, b, a)
	sameEntry(t, get(t, ix, "s-a"), a)
	sameEntry(t, get(t, ix, "s-b"), b)
	all, err := ix.List(ctx, sessionindex.Filter{})
	if err != nil || len(all) != 2 {
		t.Fatalf("List = %d rows, %v", len(all), err)
	}
	sameEntry(t, all[0], a) // oldest first
	sameEntry(t, all[1], b)

	// A row without Updated gets the time it was written.
	c := opened("s-c", "s3://b/gw/", t0)
	c.Updated = time.Time{}
	before := time.Now()
	put(t, ix, c)
	if got := get(t, ix, "s-c").Updated; got.Before(before.Add(-time.Second)) || got.After(time.Now().Add(time.Second)) {
		t.Errorf("updated %v, want about now", got)
	}
	if _, err := ix.Get(ctx, "nope"); !errors.Is(err, sessionindex.ErrNotIndexed) {
		t.Errorf("Get of an unknown session: %v, want ErrNotIndexed", err)
	}
	// A row without a location is refused, and the batch with it.
	if err := ix.Put(ctx, []sessionindex.Entry{opened("s-d", "s3://b/gw/", t0), opened("s-e", "", t0)}); err == nil {
		t.Error("Put of a row without a location succeeded")
	} else if _, err := ix.Get(ctx, "s-d"); !errors.Is(err, sessionindex.ErrNotIndexed) {
		t.Errorf("a refused batch was written in part: %v", err)
	}
}

func TestOpenRowNeverTakesBackAnUploadedOne(t *testing.T) {
	ix := fresh(t)
	const loc = "s3://b/gw/"
	// The start written late, after the upload: the upload's row stays.
	up := uploaded("late-start", loc, t0)
	put(t, ix, up)
	put(t, ix, opened("late-start", loc, t0))
	sameEntry(t, get(t, ix, "late-start"), up)
	// The upload replaces the start, in separate Puts and in one batch.
	put(t, ix, opened("in-order", loc, t0))
	up2 := uploaded("in-order", loc, t0)
	put(t, ix, up2)
	sameEntry(t, get(t, ix, "in-order"), up2)
	up3, up4 := uploaded("batch-1", loc, t0), uploaded("batch-2", loc, t0)
	up4.Status = "crashed"
	put(t, ix, opened("batch-1", loc, t0), up3, up4, opened("batch-2", loc, t0))
	sameEntry(t, get(t, ix, "batch-1"), up3)
	sameEntry(t, get(t, ix, "batch-2"), up4)
}

// TestRowsStayWithTheirLocation: a replica's write never moves another
// replica's row (a session id reused, or a misconfigured replica).
func TestRowsStayWithTheirLocation(t *testing.T) {
	ix := fresh(t)
	mine := uploaded("s1", "s3://b/replica-1/", t0)
	put(t, ix, mine)
	other := uploaded("s1", "s3://b/replica-2/", t0)
	other.Status = "altered"
	put(t, ix, other)
	sameEntry(t, get(t, ix, "s1"), mine)
}

// TestOpenReader: the CLI reads without migrating, in read-only
// transactions, and says so when no gateway has made the index yet.
func TestOpenReader(t *testing.T) {
	db, dsn := stateDB(t)
	if _, err := sessionindex.OpenReader(ctx, dsn); err == nil || !strings.Contains(err.Error(), "no session index yet") {
		t.Fatalf("OpenReader on an empty database: %v", err)
	}
	var made bool
	if err := pgServer(t).Conn(t, db).QueryRow(ctx, "SELECT to_regclass('gatehouse_sessions') IS NOT NULL").Scan(&made); err != nil || made {
		t.Fatalf("OpenReader made the index (%v)", err)
	}
	put(t, open(t, dsn), uploaded("s1", "s3://b/gw/", t0))
	r, err := sessionindex.OpenReader(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if rows, err := r.List(ctx, sessionindex.Filter{}); err != nil || len(rows) != 1 {
		t.Fatalf("List through the reader: %v %v", rows, err)
	}
	if err := r.Put(ctx, []sessionindex.Entry{uploaded("s2", "s3://b/gw/", t0)}); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Fatalf("a write through the reader: %v, want a read-only transaction's refusal", err)
	}
}

func sessions(rows []sessionindex.Entry) string {
	var ids []string
	for _, r := range rows {
		ids = append(ids, r.Session)
	}
	return strings.Join(ids, ",")
}

func TestListFilters(t *testing.T) {
	ix := fresh(t)
	r1, r2 := "s3://b/g/replica-1/", "s3://b/g/replica-2/"
	at := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }
	e1 := uploaded("e1", r1, at(0))
	e2 := opened("e2", r1, at(1))
	e3 := uploaded("e3", r2, at(2))
	e3.Identity, e3.Resource = "alice@example.com", "hr"
	e4 := uploaded("e4", "s3://b/other/", at(3))
	e4.Status = "crashed"
	e5 := opened("e5", r2, at(4))
	put(t, ix, e5, e3, e1, e4, e2)
	for name, c := range map[string]struct {
		f    sessionindex.Filter
		want string
	}{
		"all":                {sessionindex.Filter{}, "e1,e2,e3,e4,e5"},
		"group prefix":       {sessionindex.Filter{Location: "s3://b/g/"}, "e1,e2,e3,e5"},
		"one replica":        {sessionindex.Filter{Location: r1}, "e1,e2"},
		"the other replica":  {sessionindex.Filter{Location: r2}, "e3,e5"},
		"identity":           {sessionindex.Filter{Identity: "alice@example.com"}, "e2,e3,e5"},
		"resource":           {sessionindex.Filter{Resource: "orders"}, "e1,e4"},
		"since (inclusive)":  {sessionindex.Filter{Since: at(2)}, "e3,e4,e5"},
		"status open":        {sessionindex.Filter{Status: sessionindex.StatusOpen}, "e2,e5"},
		"status crashed":     {sessionindex.Filter{Status: "crashed"}, "e4"},
		"limit keeps newest": {sessionindex.Filter{Limit: 2}, "e4,e5"},
		"combined":           {sessionindex.Filter{Location: "s3://b/g/", Identity: "alice@example.com", Status: sessionindex.StatusOpen, Limit: 1}, "e5"},
		"limit above count":  {sessionindex.Filter{Location: r1, Limit: 10}, "e1,e2"},
		"no match":           {sessionindex.Filter{Location: "s3://b/g/replica-3/"}, ""},
	} {
		rows, err := ix.List(ctx, c.f)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if got := sessions(rows); got != c.want {
			t.Errorf("%s: %s, want %s", name, got, c.want)
		}
	}
	// LIKE's wildcards in a location are matched literally.
	for i, loc := range []string{"s3://w/a%/", "s3://w/a_/", "s3://w/ab/", "s3://w/axyz/", `s3://w/a\_/`} {
		put(t, ix, opened(fmt.Sprint("w", i), loc, at(10+i)))
	}
	for filter, want := range map[string]string{
		"s3://w/a%": "w0", "s3://w/a%/": "w0", "s3://w/a_/": "w1", "s3://w/a_": "w1", `s3://w/a\_/`: "w4", "s3://w/a": "w0,w1,w2,w3,w4",
	} {
		if rows, err := ix.List(ctx, sessionindex.Filter{Location: filter}); err != nil || sessions(rows) != want {
			t.Errorf("Location %q: %s (%v), want %s", filter, sessions(rows), err, want)
		}
	}
}

func openApprovals(t *testing.T, dsn string) {
	t.Helper()
	s, err := approval.OpenPostgres(ctx, dsn, approval.WithPollInterval(time.Hour))
	if err != nil {
		t.Fatalf("OpenPostgres: %v", err)
	}
	s.Close()
}

// migrations returns each component's count of rows and newest version,
// as "approvals=N/V sessions=N/V".
func migrations(t *testing.T, db string) string {
	t.Helper()
	var out string
	err := pgServer(t).Conn(t, db).QueryRow(ctx, `SELECT coalesce(string_agg(format('%s=%s/%s', component, n, v), ' ' ORDER BY component), '')
		FROM (SELECT component, count(*) n, max(version) v FROM gatehouse_schema_migrations GROUP BY component) m`).Scan(&out)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestMigrationsShareTheTableWithApprovals: either component may migrate
// the database first; each has its own rows.
func TestMigrationsShareTheTableWithApprovals(t *testing.T) {
	sv, av := sessionindex.SchemaVersion(), approval.SchemaVersion()
	want := fmt.Sprintf("approvals=%d/%d sessions=%d/%d", av, av, sv, sv)
	for _, sessionsFirst := range []bool{true, false} {
		db, dsn := stateDB(t)
		if sessionsFirst {
			if st, err := sessionindex.Check(ctx, dsn); err != nil || st.Version != 0 || st.Latest != sv {
				t.Fatalf("Check of an empty database = %+v, %v", st, err)
			}
			open(t, dsn).Close()
			if got := migrations(t, db); got != fmt.Sprintf("sessions=%d/%d", sv, sv) || sv < 1 {
				t.Fatalf("after Open: %q", got)
			}
			openApprovals(t, dsn)
		} else {
			openApprovals(t, dsn)
			open(t, dsn).Close()
		}
		if got := migrations(t, db); got != want {
			t.Errorf("sessions first %v: migration rows %q, want %q", sessionsFirst, got, want)
		}
		if st, err := sessionindex.Check(ctx, dsn); err != nil || st.Version != sv || st.Latest != sv {
			t.Errorf("Check = %+v, %v", st, err)
		}
		ix := open(t, dsn)
		put(t, ix, opened("x", "s3://b/", t0))
		get(t, ix, "x")
	}
}

// TestConcurrentOpensMigrateOnce: replicas starting at once on an empty
// database apply the migration once; a newer gateway's version stops them.
func TestConcurrentOpensMigrateOnce(t *testing.T) {
	db, dsn := stateDB(t)
	const n = 6
	errs := make([]error, n)
	ixs := make([]*sessionindex.Index, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { ixs[i], errs[i] = sessionindex.Open(ctx, dsn) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: %v", i, err)
		}
		t.Cleanup(ixs[i].Close)
	}
	if got, v := migrations(t, db), sessionindex.SchemaVersion(); got != fmt.Sprintf("sessions=%d/%d", v, v) {
		t.Errorf("migration rows %s, want each of %d applied once", got, v)
	}
	pgServer(t).Exec(t, db, "INSERT INTO gatehouse_schema_migrations (component, version, name) VALUES ('sessions', 9999, '9999_future')")
	if ix, err := sessionindex.Open(ctx, dsn); !errors.Is(err, pgmigrate.ErrNewer) {
		if ix != nil {
			ix.Close()
		}
		t.Fatalf("Open on a newer schema: %v, want ErrNewer", err)
	}
	if _, err := sessionindex.Check(ctx, dsn); !errors.Is(err, pgmigrate.ErrNewer) {
		t.Errorf("Check on a newer schema: %v, want ErrNewer", err)
	}
	openApprovals(t, dsn) // the other component is not held to the sessions' version
}

func TestErrorsHideThePassword(t *testing.T) {
	for name, dsn := range map[string]string{
		"unparsable": "postgres://gatehouse:hunter2@127.0.0.1:notaport/state",
		"refused":    "postgres://gatehouse:hunter2@127.0.0.1:1/state?sslmode=disable&connect_timeout=2",
	} {
		ix, err := sessionindex.Open(ctx, dsn)
		if err == nil {
			ix.Close()
			t.Errorf("%s: Open succeeded", name)
			continue
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: Open's error shows the password: %v", name, err)
		}
		if name == "unparsable" && !errors.Is(err, pgmigrate.ErrBadDSN) {
			t.Errorf("%s: Open: %v, want ErrBadDSN", name, err)
		}
		if _, err := sessionindex.Check(ctx, dsn); err == nil || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: Check: %v", name, err)
		}
	}
}
