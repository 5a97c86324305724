package approval_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/gateway/approval"
	"github.com/gatehouse-dev/gatehouse/gateway/approval/approvaltest"
	"github.com/gatehouse-dev/gatehouse/internal/clock"
)

const issuer = "https://idp.example.com"

// Principals of the tests: alice asks, the dba group approves, erin is in
// the security group, and mallory is in no group that matters.
var (
	alice   = approval.Principal{Name: "alice", Issuer: issuer, Subject: "sub-alice", Groups: []string{"dev", "dba"}}
	bob     = approval.Principal{Name: "bob", Issuer: issuer, Subject: "sub-bob", Groups: []string{"dba"}}
	carol   = approval.Principal{Name: "carol", Issuer: issuer, Subject: "sub-carol", Groups: []string{"dba"}}
	erin    = approval.Principal{Name: "erin", Issuer: issuer, Subject: "sub-erin", Groups: []string{"security"}}
	mallory = approval.Principal{Name: "mallory", Issuer: issuer, Subject: "sub-mallory", Groups: []string{"dev"}}
)

// request is approvaltest's request: alice's, needing one dba.
func request(now time.Time) approval.Request { return approvaltest.Request(now) }

func requestIDs(rs []approval.Request) []string {
	ids := make([]string, len(rs))
	for i, r := range rs {
		ids[i] = r.ID
	}
	return ids
}

// get reads a request, or the zero request when there is none.
func get(s approval.Store, id string) approval.Request {
	r, _ := s.Get(ctx, id)
	return r
}

var ctx = context.Background()

// TestFileStoreConformance holds the file store to what every store must do.
func TestFileStoreConformance(t *testing.T) {
	approvaltest.Run(t, approvaltest.Harness{
		New: func(t *testing.T, c clock.Clock) approval.Store {
			return openStore(t, t.TempDir(), approval.WithClock(c))
		},
		Reopen: func(t *testing.T, s approval.Store, c clock.Clock) approval.Store {
			return openStore(t, s.(*approval.FileStore).Dir(), approval.WithClock(c))
		},
	})
}

func newClock() *clock.Fake { return clock.NewFake(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)) }

// openStore opens a store in dir and closes it when the test ends.
func openStore(t *testing.T, dir string, opts ...approval.Option) *approval.FileStore {
	t.Helper()
	s, err := approval.Open(dir, opts...)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func mustOpen(t *testing.T, s approval.Store, r approval.Request) approval.Request {
	t.Helper()
	got, created, err := s.Open(ctx, r)
	if err != nil || !created {
		t.Fatalf("Open request: %s, %v, %v", got.ID, created, err)
	}
	return got
}

func mustVote(t *testing.T, s approval.Store, id string, who approval.Principal, approve bool, comment string) approval.Request {
	t.Helper()
	got, err := s.Vote(ctx, id, who, approve, comment)
	if err != nil {
		t.Fatalf("Vote(%s, %s, %v): %v", id, who, approve, err)
	}
	return got
}

// waitClosed waits for c to close, failing the test after d.
func waitClosed(t *testing.T, c <-chan struct{}, d time.Duration, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(d):
		t.Fatalf("%s: not closed after %s", what, d)
	}
}

func list(t *testing.T, s approval.Store) []approval.Request {
	t.Helper()
	l, err := s.List(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestFileStoreWritesOneFilePerRequest(t *testing.T) {
	c := newClock()
	dir := t.TempDir()
	s := openStore(t, dir, approval.WithClock(c))
	in := approvaltest.Request(c.Now())
	r := mustOpen(t, s, in)

	path := filepath.Join(dir, r.ID+".json")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("request file: %v", err)
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Errorf("request file mode %v, want 0600", mode)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatalf("request file is not JSON: %v", err)
	}
	if raw["format"] != float64(approval.FormatVersion) || raw["protocol"] != "postgres" || raw["sql"] != nil {
		t.Errorf("on disk: format %v, protocol %v, sql %v; want format 2 with a subject and no top-level sql", raw["format"], raw["protocol"], raw["sql"])
	}
	var onDisk approval.Request
	if err := json.Unmarshal(b, &onDisk); err != nil || onDisk.ID != r.ID || onDisk.Subject.Text != in.Subject.Text {
		t.Errorf("on disk %+v (%v), want the opened request", onDisk, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("dir holds %d entries, want only the request file (no temporary files left)", len(ents))
	}
}

// TestFormat1FilesLoad: request files written by the release before the
// protocol seam (committed in testdata/format1) load, show their SQL as
// the subject, and keep working: the approved one is used up, the denied
// one stays denied, and a vote rewrites a file in the current format.
func TestFormat1FilesLoad(t *testing.T) {
	dir := t.TempDir()
	ents, err := os.ReadDir("testdata/format1")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("testdata/format1", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The fixtures were written on 2026-12-04; read them a day later.
	c := clock.NewFake(time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC))
	s := openStore(t, dir, approval.WithClock(c))
	all := list(t, s)
	if len(all) != 2 {
		t.Fatalf("loaded %d requests, want the 2 fixtures", len(all))
	}
	var approved, denied approval.Request
	for _, r := range all {
		if r.Format != 1 || r.Protocol != "postgres" || r.Kind == "" || r.Hash == "" {
			t.Errorf("%s: format %d, protocol %q, kind %q, hash %q", r.ID, r.Format, r.Protocol, r.Kind, r.Hash)
		}
		switch r.State {
		case approval.Approved:
			approved = r
		case approval.Denied:
			denied = r
		}
	}
	if approved.Subject.Text != "INSERT INTO payments (order_id, amount) VALUES ($1, $2)" || approved.Subject.Canonical == "" ||
		len(approved.Subject.Params) != 2 || approved.Subject.Params[1] != "$2::numeric = '42.00'" || approved.Uses != 1 || len(approved.Votes) != 1 {
		t.Errorf("the approved fixture: %+v", approved)
	}
	if denied.Subject.Text != "UPDATE orders SET total = 1 WHERE id = 2" || !strings.Contains(denied.Outcome, "fixture denial") {
		t.Errorf("the denied fixture: %+v", denied)
	}
	if _, err := s.Use(ctx, approved.ID); !errors.Is(err, approval.ErrNotUsable) {
		t.Errorf("the used, expired approval: %v, want ErrNotUsable", err)
	}
	if _, err := s.Vote(ctx, denied.ID, bob, true, ""); !errors.Is(err, approval.ErrSettled) {
		t.Errorf("vote on the denied fixture: %v", err)
	}
	// Cancel of a settled request writes nothing; a new request in the same
	// directory is written in the current format beside the old files.
	r := mustOpen(t, s, approvaltest.Request(c.Now()))
	if got, _ := s.Get(ctx, r.ID); got.Format != approval.FormatVersion {
		t.Errorf("new request format %d", got.Format)
	}
}

func TestOpenIgnoresUnreadableFiles(t *testing.T) {
	c := newClock()
	dir := t.TempDir()
	s := openStore(t, dir, approval.WithClock(c))
	good := mustOpen(t, s, approvaltest.Request(c.Now()))
	s.Close()

	// A request file renamed to another id must not be loaded as that id.
	b, err := os.ReadFile(filepath.Join(dir, good.ID+".json"))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{
		"ap-corrupt0000000000.json":  []byte(`{"id": "ap-corrupt0000000000", "state": `),
		"ap-empty000000000000.json":  nil,
		"ap-notjson00000000000.json": []byte("not json at all\n"),
		"ap-renamed0000000000.json":  b,
		".ap-tmp.json":               b, // a temporary file of an interrupted write
		"README.txt":                 b, // not a request file
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	again := openStore(t, dir, approval.WithClock(c))
	if l := list(t, again); len(l) != 1 || l[0].ID != good.ID {
		t.Errorf("List %d requests, want only %s", len(l), good.ID)
	}
	for _, id := range []string{"ap-corrupt0000000000", "ap-renamed0000000000"} {
		if _, err := again.Get(ctx, id); !errors.Is(err, approval.ErrNotFound) {
			t.Errorf("%s was loaded", id)
		}
	}
	// Ignored, not deleted: someone may want to look at them.
	if _, err := os.Stat(filepath.Join(dir, "ap-corrupt0000000000.json")); err != nil {
		t.Errorf("the corrupt file: %v", err)
	}
	if got := mustVote(t, again, good.ID, bob, true, ""); got.State != approval.Approved {
		t.Errorf("the good request next to corrupt ones: %s", got.State)
	}
}

func TestOpenIgnoresAnEntryItCannotRead(t *testing.T) {
	c := newClock()
	dir := t.TempDir()
	s := openStore(t, dir, approval.WithClock(c))
	good := mustOpen(t, s, approvaltest.Request(c.Now()))
	s.Close()
	// Tests may run as root, which reads any file: a directory is an entry
	// that fails to read for everyone.
	if err := os.Mkdir(filepath.Join(dir, "ap-directory00000000.json"), 0o700); err != nil {
		t.Fatal(err)
	}
	again := openStore(t, dir, approval.WithClock(c))
	if l := list(t, again); len(l) != 1 || l[0].ID != good.ID {
		t.Errorf("List %d requests, want only %s", len(l), good.ID)
	}
}

func TestOpenDropsSettledRequestsPastRetention(t *testing.T) {
	c := newClock()
	dir := t.TempDir()
	s := openStore(t, dir, approval.WithClock(c))
	old := mustOpen(t, s, approvaltest.Request(c.Now()))
	mustVote(t, s, old.ID, bob, false, "no")
	c.Advance(approval.Retention / 2)
	recent := approvaltest.Request(c.Now())
	recent.Hash = "hash-2"
	kept := mustOpen(t, s, recent)
	mustVote(t, s, kept.ID, bob, false, "no")
	s.Close()

	c.Advance(approval.Retention/2 + time.Second)
	again := openStore(t, dir, approval.WithClock(c))
	if _, err := again.Get(ctx, old.ID); !errors.Is(err, approval.ErrNotFound) {
		t.Error("a request settled longer than Retention ago was loaded")
	}
	if _, err := os.Stat(filepath.Join(dir, old.ID+".json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("its file: %v, want it removed", err)
	}
	if _, err := again.Get(ctx, kept.ID); err != nil {
		t.Error("a request settled within Retention was dropped")
	}
}

func TestOpenFailsOnAnUnusableDir(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := approval.Open(file); err == nil {
		s.Close()
		t.Error("Open of a regular file succeeded")
	}
}

func TestNewID(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id := approval.NewID()
		if !strings.HasPrefix(id, "ap-") || len(id) != 19 || strings.ContainsAny(id, "=/+ ") {
			t.Fatalf("NewID %q", id)
		}
		if seen[id] {
			t.Fatalf("NewID repeated %q", id)
		}
		seen[id] = true
	}
}

func TestPrincipal(t *testing.T) {
	if got := alice.String(); got != "alice (subject sub-alice)" {
		t.Errorf("String %q", got)
	}
	if got := (approval.Principal{Subject: "svc"}).String(); got != "svc" {
		t.Errorf("String without a name %q", got)
	}
	if got := (approval.Principal{Name: "svc", Subject: "svc"}).String(); got != "svc" {
		t.Errorf("String when name is the subject %q", got)
	}
	other := approval.Principal{Issuer: "https://other.example.com", Subject: alice.Subject}
	if other.Key() == alice.Key() {
		t.Error("the same subject of two issuers has one key")
	}
}
