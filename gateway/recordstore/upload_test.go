package recordstore_test

import (
	"context"
	"crypto/ed25519"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/gateway/recordstore"
	"github.com/gatehouse-dev/gatehouse/internal/s3test"
)

func storeOf(t *testing.T, s *s3test.Server, prefix string) *recordstore.Store {
	t.Helper()
	st, err := recordstore.Open("s3://"+s.Bucket()+"/"+prefix, recordstore.Options{
		Endpoint: s.Endpoint(), AccessKey: s.AccessKey(), SecretKey: s.SecretKey()})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// gatewayLike opens a recorder on dir with an uploader behind it, as the
// gateway wires them, and runs the uploader until the test ends.
func gatewayLike(t *testing.T, dir string, key ed25519.PrivateKey, st *recordstore.Store) (*recorder.Recorder, *recordstore.Uploader) {
	t.Helper()
	var up *recordstore.Uploader
	rec, err := recorder.Open(dir, key, recorder.WithOnSeal(func(id string) { up.Sealed(id) }))
	if err != nil {
		t.Fatal(err)
	}
	up, err = recordstore.NewUploader(st, dir, rec.PublicKey(), rec.LedgerSnapshot, recordstore.WithBackoff(20*time.Millisecond, 300*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); up.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; _ = rec.Close() })
	return rec, up
}

func session(t *testing.T, rec *recorder.Recorder, id string, end bool) {
	t.Helper()
	s, err := rec.Start(id, recorder.Event{Identity: "billing-service", Resource: "orders"})
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"SELECT 1", "DELETE FROM orders WHERE id = 7"} {
		if _, err := s.Record(recorder.Event{Type: recorder.TypeStatement, SQL: q, Effect: "allow"}); err != nil {
			t.Fatal(err)
		}
	}
	if end {
		if err := s.End("client closed"); err != nil {
			t.Fatal(err)
		}
	}
}

func waitFor(t *testing.T, what string, limit time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func drained(up *recordstore.Uploader, uploads int64) func() bool {
	return func() bool {
		n, _ := up.Backlog()
		return n == 0 && up.Stats.Uploads.Load() >= uploads && up.Stats.LedgerUploads.Load() > 0
	}
}

// auditBucket downloads the bucket into a directory and audits it as
// audit verify does.
func auditBucket(t *testing.T, st *recordstore.Store, pub ed25519.PublicKey) *recorder.AuditReport {
	t.Helper()
	dir := t.TempDir()
	if _, err := st.Download(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	rep, err := recorder.Audit(dir, recorder.AuditOptions{Keys: bundle.NewKeyring(pub)})
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func newKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	k, err := bundle.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSealedRecordingIsUploadedAndVerifiesFromTheBucket(t *testing.T) {
	s := s3test.Start(t)
	st := storeOf(t, s, "gw1/recordings")
	key := newKey(t)
	rec, up := gatewayLike(t, t.TempDir(), key, st)

	session(t, rec, "s1", true)
	session(t, rec, "s2", true)
	waitFor(t, "two uploads and the ledger", 30*time.Second, drained(up, 2))

	o, err := st.Stat(context.Background(), "s1.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	if o.Meta[recordstore.MetaStatus] != recorder.StatusOK || len(o.Meta[recordstore.MetaSHA256]) != 64 {
		t.Fatalf("metadata %v", o.Meta)
	}
	local, _ := os.ReadFile(filepath.Join(rec.Dir(), "s1.jsonl"))
	remote, err := st.Get(context.Background(), "s1.jsonl")
	if err != nil || string(local) != string(remote) {
		t.Fatalf("the bucket's copy differs from the local recording (err %v)", err)
	}
	if _, err := os.Stat(filepath.Join(rec.Dir(), "s1.jsonl")); err != nil {
		t.Fatalf("the local recording must be kept: %v", err)
	}
	rep := auditBucket(t, st, key.Public().(ed25519.PublicKey))
	if v := rep.Verdict(); v != recorder.VerdictOK || len(rep.Recordings) != 2 {
		t.Fatalf("audit of the bucket: verdict %v, %d recordings, ledger %+v", v, len(rep.Recordings), rep.Ledger)
	}

	// A signed request with the wrong secret is refused: the server
	// checks signatures.
	bad, err := recordstore.Open("s3://"+s.Bucket()+"/x", recordstore.Options{Endpoint: s.Endpoint(), AccessKey: s.AccessKey(), SecretKey: "wrong"})
	if err != nil {
		t.Fatal(err)
	}
	if err := bad.Put(context.Background(), "y.jsonl", []byte("{}\n"), nil); err == nil {
		t.Fatal("a request signed with the wrong secret was accepted")
	}
}

func TestUploadsAreRetriedWhileTheStoreIsDown(t *testing.T) {
	s := s3test.Start(t)
	st := storeOf(t, s, "rec")
	key := newKey(t)
	rec, up := gatewayLike(t, t.TempDir(), key, st)
	session(t, rec, "before", true)
	waitFor(t, "the first upload", 30*time.Second, drained(up, 1))

	s.Stop(t)
	failures := up.Stats.Failures.Load()
	session(t, rec, "during-1", true)
	session(t, rec, "during-2", true)
	waitFor(t, "failed attempts", 30*time.Second, func() bool { return up.Stats.Failures.Load() >= failures+2 })
	if n, oldest := up.Backlog(); n != 2 || oldest <= 0 {
		t.Fatalf("backlog %d, oldest %s; want 2 waiting", n, oldest)
	}
	for _, id := range []string{"during-1", "during-2"} {
		if _, err := os.Stat(filepath.Join(rec.Dir(), id+".jsonl")); err != nil {
			t.Fatalf("local recording lost while the store is down: %v", err)
		}
	}

	s.Restart(t)
	waitFor(t, "the backlog to drain", 60*time.Second, drained(up, 3))
	rep := auditBucket(t, st, key.Public().(ed25519.PublicKey))
	if v := rep.Verdict(); v != recorder.VerdictOK || len(rep.Recordings) != 3 {
		t.Fatalf("audit of the bucket after the outage: verdict %v, %d recordings", v, len(rep.Recordings))
	}
}

// crashImage copies a live recorder's directory, as a crash (a power loss)
// would leave it: what is durable is there.
func crashImage(t *testing.T, from string) string {
	t.Helper()
	to := t.TempDir()
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return to
}

func TestLeftoversAreUploadedAtStartMarkedAsAuditJudgesThem(t *testing.T) {
	s := s3test.Start(t)
	key := newKey(t)
	pub := key.Public().(ed25519.PublicKey)

	// A gateway crashes with session "open" mid-way; "done" ended and
	// was sealed, but the crash came before its upload.
	first, err := recorder.Open(t.TempDir(), key)
	if err != nil {
		t.Fatal(err)
	}
	session(t, first, "done", true)
	session(t, first, "open", false)
	image := crashImage(t, first.Dir())
	_ = first.Close()

	// Unsealed, as the crash left it: uploaded as it is, marked unsealed
	// (a start that could not seal it uploads it so).
	st := storeOf(t, s, "unsealed")
	up, err := recordstore.NewUploader(st, crashImage(t, image), pub, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := up.Pass(context.Background()); err != nil {
		t.Fatal(err)
	}
	o, err := st.Stat(context.Background(), "open.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	if got := o.Meta[recordstore.MetaStatus]; got != recorder.StatusUnsealed {
		t.Fatalf("leftover marked %q, want %q", got, recorder.StatusUnsealed)
	}

	// The gateway's next start crash-seals it, then uploads both: the
	// bucket lacks them.
	st2 := storeOf(t, s, "next-start")
	rec, up2 := gatewayLike(t, image, key, st2)
	if len(rec.CrashSealed) != 1 {
		t.Fatalf("crash-sealed %v", rec.CrashSealed)
	}
	waitFor(t, "the leftovers' upload", 30*time.Second, drained(up2, 2))
	o, err = st2.Stat(context.Background(), "open.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	if got := o.Meta[recordstore.MetaStatus]; got != recorder.StatusCrashed {
		t.Fatalf("crash-sealed leftover marked %q, want %q", got, recorder.StatusCrashed)
	}
	rep := auditBucket(t, st2, pub)
	states := map[string]string{}
	for _, r := range rep.Recordings {
		states[r.Session] = r.Status
	}
	if rep.Verdict() != recorder.VerdictOK || states["done"] != recorder.StatusOK || states["open"] != recorder.StatusCrashed {
		t.Fatalf("audit of the bucket: %v %v", rep.Verdict(), states)
	}

	// A start that finds everything in the bucket uploads nothing again.
	up3, err := recordstore.NewUploader(st2, image, pub, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := up3.Pass(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := up3.Stats.Uploads.Load(); n != 0 {
		t.Fatalf("%d recordings uploaded again", n)
	}
}

func TestParseURLAndEndpoint(t *testing.T) {
	for in, want := range map[string]recordstore.Location{
		"s3://b":               {Bucket: "b"},
		"s3://b/":              {Bucket: "b"},
		"s3://b/p/q":           {Bucket: "b", Prefix: "p/q/"},
		"s3://b/p/recordings/": {Bucket: "b", Prefix: "p/recordings/"},
	} {
		got, err := recordstore.ParseURL(in)
		if err != nil || got != want {
			t.Errorf("ParseURL(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"b/p", "s3://", "https://b/p", "s3:///p"} {
		if _, err := recordstore.ParseURL(bad); err == nil {
			t.Errorf("ParseURL(%q) accepted", bad)
		}
	}
	for _, ok := range []string{"", "https://s3.example.com", "http://127.0.0.1:9000", "http://[::1]:9000", "http://localhost:9000"} {
		if _, _, err := recordstore.CheckEndpoint(ok); err != nil {
			t.Errorf("CheckEndpoint(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"http://s3.example.com", "ftp://x", "https://x/path", "s3.example.com"} {
		if _, _, err := recordstore.CheckEndpoint(bad); err == nil || (strings.HasPrefix(bad, "http://") && !strings.Contains(err.Error(), "loopback")) {
			t.Errorf("CheckEndpoint(%q) = %v", bad, err)
		}
	}
}
