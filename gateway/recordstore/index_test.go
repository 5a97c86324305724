package recordstore_test

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/gateway/recordstore"
	"github.com/gatehouse-dev/gatehouse/gateway/sessionindex"
	"github.com/gatehouse-dev/gatehouse/internal/pgtest"
	"github.com/gatehouse-dev/gatehouse/internal/s3test"
)

// sessionIndex starts a PostgreSQL server for the test and opens a session
// index in a database of its own, owned by a role that is not a superuser.
func sessionIndex(t *testing.T) *sessionindex.Index {
	t.Helper()
	srv := pgtest.Start(t)
	srv.CreateRole(t, "gatehouse", "state-pw")
	srv.CreateDatabase(t, "state", "gatehouse")
	ix, err := sessionindex.Open(context.Background(), srv.ConnString("gatehouse", "state-pw", "state"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ix.Close)
	return ix
}

// flakyIndex is an Indexer that fails while down is set, as an unreachable
// state database does, and notes the rows it wrote, in order.
type flakyIndex struct {
	ix   recordstore.Indexer
	down atomic.Bool

	mu      sync.Mutex
	written []string // session:status
}

var errDown = errors.New("the state database is unreachable")

func (f *flakyIndex) Put(ctx context.Context, rows []sessionindex.Entry) error {
	if f.down.Load() {
		return errDown
	}
	if err := f.ix.Put(ctx, rows); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range rows {
		f.written = append(f.written, r.Session+":"+r.Status)
	}
	return nil
}

func (f *flakyIndex) List(ctx context.Context, fl sessionindex.Filter) ([]sessionindex.Entry, error) {
	if f.down.Load() {
		return nil, errDown
	}
	return f.ix.List(ctx, fl)
}

func (f *flakyIndex) rows() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.written, " ")
}

// indexedGateway opens a recorder on dir with an uploader behind it that
// keeps the index, wired as the gateway wires them. Nothing runs the
// uploader: the test calls Pass.
func indexedGateway(t *testing.T, dir string, key ed25519.PrivateKey, st *recordstore.Store, ix recordstore.Indexer) (*recorder.Recorder, *recordstore.Uploader) {
	t.Helper()
	var up *recordstore.Uploader
	rec, err := recorder.Open(dir, key,
		recorder.WithOnStart(func(id string, start recorder.Event) { up.Started(id, start) }),
		recorder.WithOnSeal(func(id string) { up.Sealed(id) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rec.Close() })
	up, err = recordstore.NewUploader(st, dir, rec.PublicKey(), rec.LedgerSnapshot, recordstore.WithIndex(ix))
	if err != nil {
		t.Fatal(err)
	}
	return rec, up
}

func pass(t *testing.T, up *recordstore.Uploader) {
	t.Helper()
	if err := up.Pass(context.Background()); err != nil {
		t.Fatalf("Pass: %v", err)
	}
}

func failingPass(t *testing.T, up *recordstore.Uploader) {
	t.Helper()
	if err := up.Pass(context.Background()); !errors.Is(err, errDown) {
		t.Fatalf("Pass with the index down: %v, want the index's error", err)
	}
}

func row(t *testing.T, ix *sessionindex.Index, id string) sessionindex.Entry {
	t.Helper()
	e, err := ix.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// checkUploaded holds a session's row to its recording: in the bucket at
// the URL the row names, with the local file's size, digest, events and
// times.
func checkUploaded(t *testing.T, ix *sessionindex.Index, st *recordstore.Store, dir, id string) {
	t.Helper()
	r := row(t, ix, id)
	path := filepath.Join(dir, id+".jsonl")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	evs, err := recorder.ReadEvents(path)
	if err != nil || len(evs) < 2 {
		t.Fatalf("%s: %d events, %v", id, len(evs), err)
	}
	sum := sha256.Sum256(data)
	loc := st.Location().String()
	if r.Status != recorder.StatusOK || r.Location != loc || r.Object != loc+id+".jsonl" || r.Size != int64(len(data)) ||
		r.SHA256 != hex.EncodeToString(sum[:]) || r.Events != len(evs) {
		t.Errorf("%s: row %+v; want status ok, object %s%s.jsonl, size %d, sha256 %x, %d events", id, r, loc, id, len(data), sum, len(evs))
	}
	same := func(a, b time.Time) bool { return a.Truncate(time.Microsecond).Equal(b.Truncate(time.Microsecond)) }
	if r.Ended == nil || !same(*r.Ended, evs[len(evs)-1].Time) || !same(r.Started, evs[0].Time) {
		t.Errorf("%s: started %v ended %v; want %v and %v", id, r.Started, r.Ended, evs[0].Time, evs[len(evs)-1].Time)
	}
	o, err := st.Stat(context.Background(), id+".jsonl")
	if err != nil || o.Size != int64(len(data)) || o.Meta[recordstore.MetaSHA256] != r.SHA256 {
		t.Errorf("%s: the bucket's object %+v (%v) is not what the row says", id, o, err)
	}
}

func TestIndexFollowsASessionFromStartToUpload(t *testing.T) {
	s := s3test.Start(t)
	st := storeOf(t, s, "gw1/recordings")
	ix := sessionIndex(t)
	rec, up := indexedGateway(t, t.TempDir(), newKey(t), st, ix)

	sess, err := rec.Start("s1", recorder.Event{Identity: "alice@example.com", Subject: "alice", Issuer: "https://idp.example",
		Resource: "hr-db", Protocol: "ssh", ClientAddr: "10.1.2.3:4567"})
	if err != nil {
		t.Fatal(err)
	}
	pass(t, up)
	r := row(t, ix, "s1")
	want := sessionindex.Entry{Session: "s1", Location: "s3://" + s.Bucket() + "/gw1/recordings/", Identity: "alice@example.com",
		Subject: "alice", Issuer: "https://idp.example", Resource: "hr-db", Protocol: "ssh", ClientAddr: "10.1.2.3:4567",
		Status: sessionindex.StatusOpen, Events: 1}
	got := r
	got.Started, got.Updated = time.Time{}, time.Time{}
	if got != want || r.Started.IsZero() || r.Updated.IsZero() {
		t.Fatalf("after the start: row %+v, want %+v", r, want)
	}
	if n, _ := up.Backlog(); n != 0 {
		t.Fatalf("backlog %d before the end", n)
	}

	for _, q := range []string{"id", "cat /etc/hostname"} {
		if _, err := sess.Record(recorder.Event{Type: recorder.TypeStatement, Text: q, Effect: "allow"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := sess.End("client closed"); err != nil {
		t.Fatal(err)
	}
	pass(t, up)
	checkUploaded(t, ix, st, rec.Dir(), "s1")
	if got := row(t, ix, "s1"); !got.Started.Truncate(time.Microsecond).Equal(r.Started) || got.Identity != "alice@example.com" || got.Protocol != "ssh" {
		t.Errorf("the uploaded row's start %v (was %v), identity %q, protocol %q", got.Started, r.Started, got.Identity, got.Protocol)
	}
	if n, p := up.Stats.IndexRows.Load(), up.Stats.IndexPending.Load(); n != 2 || p != 0 {
		t.Errorf("stats: %d rows written, %d pending; want 2, 0", n, p)
	}
}

func TestIndexOutageHoldsRowsNotUploads(t *testing.T) {
	s := s3test.Start(t)
	st := storeOf(t, s, "gw1")
	ix := sessionIndex(t)
	fl := &flakyIndex{ix: ix}
	rec, up := indexedGateway(t, t.TempDir(), newKey(t), st, fl)
	ctx := context.Background()

	fl.down.Store(true)
	session(t, rec, "a", true)
	b, err := rec.Start("b", recorder.Event{Identity: "bob", Resource: "orders"})
	if err != nil {
		t.Fatal(err)
	}
	failingPass(t, up)
	if _, err := st.Stat(ctx, "a.jsonl"); err != nil {
		t.Fatalf("the upload waited for the index: %v", err)
	}
	failingPass(t, up) // retried: nothing is lost or written twice
	session(t, rec, "c", true)
	failingPass(t, up)
	if _, err := st.Stat(ctx, "c.jsonl"); err != nil {
		t.Fatalf("the upload waited for the index: %v", err)
	}
	if n, p := up.Stats.Uploads.Load(), up.Stats.IndexPending.Load(); n != 2 || p != 5 {
		t.Fatalf("%d uploads, %d rows pending; want 2 and 5", n, p)
	}
	if rows, err := ix.List(ctx, sessionindex.Filter{}); err != nil || len(rows) != 0 {
		t.Fatalf("index during the outage: %d rows, %v", len(rows), err)
	}

	fl.down.Store(false)
	pass(t, up)
	// In the order they were queued: each session's start before its
	// upload, so the upload's row is the one that stays.
	if got, want := fl.rows(), "a:open b:open a:ok c:open c:ok"; got != want {
		t.Errorf("rows written %q, want %q", got, want)
	}
	checkUploaded(t, ix, st, rec.Dir(), "a")
	checkUploaded(t, ix, st, rec.Dir(), "c")
	if r := row(t, ix, "b"); r.Status != sessionindex.StatusOpen || r.Identity != "bob" || r.Object != "" {
		t.Errorf("b: %+v, want open", r)
	}
	if err := b.End("done"); err != nil {
		t.Fatal(err)
	}
	pass(t, up)
	checkUploaded(t, ix, st, rec.Dir(), "b")
	if p := up.Stats.IndexPending.Load(); p != 0 {
		t.Errorf("%d rows pending", p)
	}
}

// TestCrashBeforeTheRowIsReindexedAtTheNextStart: a recording uploaded by
// a process that died before its row reached the index (the row queued in
// memory is lost) is indexed by the next start, whether the index had its
// start row or nothing of it, without a second upload; an index still
// down at that start holds no upload up.
func TestCrashBeforeTheRowIsReindexedAtTheNextStart(t *testing.T) {
	s := s3test.Start(t)
	ix := sessionIndex(t)
	key := newKey(t)
	for _, c := range []struct {
		name                    string
		startRow, downAtRestart bool
	}{{"no row", false, false}, {"start row", true, false}, {"index down at the restart", false, true}} {
		t.Run(c.name, func(t *testing.T) {
			id := strings.ReplaceAll(c.name, " ", "-")
			dir := t.TempDir()
			st := storeOf(t, s, id)
			fl := &flakyIndex{ix: ix}
			first, up := indexedGateway(t, dir, key, st, fl)
			fl.down.Store(!c.startRow)
			sess, err := first.Start(id, recorder.Event{Identity: "carol", Resource: "orders"})
			if err != nil {
				t.Fatal(err)
			}
			if c.startRow {
				pass(t, up)
				if r := row(t, ix, id); r.Status != sessionindex.StatusOpen {
					t.Fatalf("row %+v, want open", r)
				}
				fl.down.Store(true)
			}
			if err := sess.End("done"); err != nil {
				t.Fatal(err)
			}
			failingPass(t, up)
			if _, err := st.Stat(context.Background(), id+".jsonl"); err != nil {
				t.Fatalf("not uploaded: %v", err)
			}
			// The process dies: its queue with it.
			_ = first.Close()

			fl2 := &flakyIndex{ix: ix}
			rec, up2 := indexedGateway(t, dir, key, st, fl2)
			if c.downAtRestart {
				fl2.down.Store(true)
				session(t, rec, "after-"+id, true)
				failingPass(t, up2)
				if _, err := st.Stat(context.Background(), "after-"+id+".jsonl"); err != nil {
					t.Fatalf("the index down at the start held the uploads up: %v", err)
				}
				fl2.down.Store(false)
			}
			pass(t, up2)
			// The bucket's copy has the recording's SHA-256: indexed,
			// not uploaded again (only the new session is uploaded).
			if n, want := up2.Stats.Uploads.Load(), int64(map[bool]int{false: 0, true: 1}[c.downAtRestart]); n != want {
				t.Errorf("%d recordings uploaded, want %d", n, want)
			}
			checkUploaded(t, ix, st, rec.Dir(), id)
			if c.downAtRestart {
				checkUploaded(t, ix, st, rec.Dir(), "after-"+id)
			}
			_ = rec.Close()

			// Indexed, it is not uploaded at the next start again.
			_, up3 := indexedGateway(t, dir, key, st, ix)
			pass(t, up3)
			if n := up3.Stats.Uploads.Load(); n != 0 {
				t.Errorf("%d recordings uploaded again by a start that finds them indexed", n)
			}
		})
	}
}
