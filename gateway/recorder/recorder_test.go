package recorder

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

func newRec(t *testing.T) (*Recorder, bundle.Keyring) {
	t.Helper()
	k, err := bundle.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	r, err := Open(t.TempDir(), k)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r, bundle.NewKeyring(k.Public().(ed25519.PublicKey))
}

func record(t *testing.T, r *Recorder, id string, seal bool) string {
	t.Helper()
	s, err := r.Start(id, Event{Identity: "billing-service", Resource: "orders", BundleRevision: 3})
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"SELECT 1", "SELECT email FROM customers", "DROP TABLE customers"} {
		if _, err := s.Record(Event{Type: TypeStatement, SQL: q, Effect: "allow"}); err != nil {
			t.Fatal(err)
		}
	}
	if seal {
		if err := s.End("client closed"); err != nil {
			t.Fatal(err)
		}
	}
	return s.Path
}

func lines(t *testing.T, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.SplitAfter(b, []byte("\n"))[:bytes.Count(b, []byte("\n"))]
}

func write(t *testing.T, path string, ls [][]byte) {
	t.Helper()
	if err := os.WriteFile(path, bytes.Join(ls, nil), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestVerify(t *testing.T) {
	r, kr := newRec(t)
	path := record(t, r, "s1", true)
	rep, err := Verify(path, kr)
	if err != nil || !rep.OK() || rep.Events != 6 || rep.Verified != 6 {
		t.Fatalf("intact recording: %+v %v", rep, err)
	}
	orig := lines(t, path)
	tests := map[string]struct {
		edit func([][]byte) [][]byte
		kind string
		line int
	}{
		"edited statement": {func(ls [][]byte) [][]byte {
			ls[2] = bytes.Replace(ls[2], []byte("SELECT email"), []byte("SELECT name "), 1)
			return ls
		}, "edited", 3},
		"deleted event": {func(ls [][]byte) [][]byte { return append(ls[:3:3], ls[4:]...) }, "deleted", 4},
		"reordered events": {func(ls [][]byte) [][]byte {
			ls[2], ls[3] = ls[3], ls[2]
			return ls
		}, "reordered", 3},
		"truncated file": {func(ls [][]byte) [][]byte { return ls[:4] }, "", 0},
		"edited seal": {func(ls [][]byte) [][]byte {
			ls[5] = bytes.Replace(ls[5], []byte(`"signature":"`), []byte(`"signature":"00`), 1)
			return ls
		}, "bad_seal", 6},
		"partial last line": {func(ls [][]byte) [][]byte {
			ls[3] = ls[3][:len(ls[3])/2]
			return ls[:4]
		}, "truncated", 4},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cp := make([][]byte, len(orig))
			for i := range orig {
				cp[i] = append([]byte(nil), orig[i]...)
			}
			write(t, path, tc.edit(cp))
			rep, err := Verify(path, kr)
			if err != nil {
				t.Fatal(err)
			}
			if rep.OK() {
				t.Fatal("a changed recording verified")
			}
			if tc.kind == "" {
				if rep.Sealed || len(rep.Problems) != 0 || rep.Verified != 4 {
					t.Errorf("truncated at an event boundary: %+v", rep)
				}
				return
			}
			found := false
			for _, p := range rep.Problems {
				if p.Kind == tc.kind && p.Line == tc.line {
					found = true
				}
			}
			if !found {
				t.Errorf("problems %+v, want %s at line %d", rep.Problems, tc.kind, tc.line)
			}
		})
	}
}

func TestUnsealedAndForeignKey(t *testing.T) {
	r, kr := newRec(t)
	rep, err := Verify(record(t, r, "open", false), kr)
	if err != nil || rep.Sealed || len(rep.Problems) != 0 || rep.Verified != 4 {
		t.Fatalf("unsealed: %+v %v", rep, err)
	}
	_, other := newRec(t)
	rep, err = Verify(record(t, r, "sealed", true), other)
	if err != nil || rep.OK() || rep.Problems[0].Kind != "bad_seal" || !strings.Contains(rep.Problems[0].Message, "not trusted") {
		t.Fatalf("foreign key: %+v %v", rep, err)
	}
}

func TestFailClosedOnWriteError(t *testing.T) {
	r, _ := newRec(t)
	s, err := r.Start("s", Event{})
	if err != nil {
		t.Fatal(err)
	}
	r.sync = func(*os.File) error { return errors.New("no space left on device") }
	if _, err := s.Record(Event{Type: TypeStatement, SQL: "SELECT 1"}); err == nil || !strings.Contains(err.Error(), "no space") {
		t.Fatalf("a failed sync must be an error: %v", err)
	}
}

func TestList(t *testing.T) {
	r, _ := newRec(t)
	record(t, r, "a", true)
	record(t, r, "b", false)
	ss, err := List(r.Dir())
	if err != nil || len(ss) != 2 || !ss[0].Sealed || ss[1].Sealed || ss[0].Identity != "billing-service" {
		t.Fatalf("List: %+v %v", ss, err)
	}
}

// Append writes without an fdatasync of its own; the next Record or End
// syncs, covering it, and the chain holds across both kinds.
func TestAppendIsMadeDurableByTheNextRecord(t *testing.T) {
	r, kr := newRec(t)
	syncs := 0
	r.sync = func(f *os.File) error { syncs++; return fdatasync(f) }
	s, err := r.Start("s", Event{})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := s.Record(Event{Type: TypeStatement, SQL: "SELECT email FROM customers"})
	if err != nil {
		t.Fatal(err)
	}
	before := syncs
	if _, err := s.Append(Event{Type: TypeMasked, Ref: ref, Columns: []string{"public.customers.email=partial"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(Event{Type: "result", Ref: ref, Rows: 3}); err != nil {
		t.Fatal(err)
	}
	if syncs != before {
		t.Errorf("Append synced (%d fdatasyncs)", syncs-before)
	}
	if _, err := s.Record(Event{Type: TypeStatement, SQL: "SELECT 1"}); err != nil || syncs != before+1 {
		t.Fatalf("Record: %v, %d fdatasyncs", err, syncs-before)
	}
	if err := s.End("done"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(Event{Type: "result"}); !errors.Is(err, ErrSealed) {
		t.Errorf("Append after the seal: %v", err)
	}
	rep, err := Verify(s.Path, kr)
	if err != nil || !rep.OK() || rep.Events != 7 {
		t.Fatalf("%+v %v", rep, err)
	}
}

// TestRecordAsync: the event is written at once and made durable while
// the caller goes on; wait says when it is, and says so again; a failed
// fdatasync reaches wait, and poisons the recorder as Record's does.
func TestRecordAsync(t *testing.T) {
	r, _ := newRec(t)
	var syncs atomic.Int64
	var fail atomic.Bool
	release := make(chan struct{})
	r.sync = func(f *os.File) error {
		<-release
		syncs.Add(1)
		if fail.Load() {
			return errors.New("no space left on device")
		}
		return fdatasync(f)
	}
	close(release) // Start syncs
	s, err := r.Start("s", Event{})
	if err != nil {
		t.Fatal(err)
	}
	release = make(chan struct{})
	ref, wait, err := s.RecordAsync(Event{Type: TypeStatement, SQL: "SELECT 1"})
	if err != nil || ref == 0 {
		t.Fatalf("RecordAsync: %d %v", ref, err)
	}
	// Written before it is durable: the caller may forward now.
	if !bytes.Contains(bytes.Join(lines(t, s.Path), nil), []byte("SELECT 1")) {
		t.Error("the event is not written when RecordAsync returns")
	}
	done := make(chan error, 1)
	go func() { done <- wait() }()
	select {
	case err := <-done:
		t.Fatalf("wait returned before the fdatasync: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := wait(); err != nil {
		t.Fatalf("wait again: %v", err)
	}
	fail.Store(true)
	_, wait, err = s.RecordAsync(Event{Type: TypeStatement, SQL: "SELECT 2"})
	if err != nil {
		t.Fatal(err)
	}
	if err := wait(); !errors.Is(err, ErrPoisoned) {
		t.Fatalf("wait after a failed fdatasync: %v, want ErrPoisoned", err)
	}
	if _, _, err := s.RecordAsync(Event{Type: TypeStatement, SQL: "SELECT 3"}); err == nil {
		if _, err := s.Record(Event{Type: TypeStatement, SQL: "SELECT 4"}); err == nil {
			t.Fatal("the recorder goes on after a failed fdatasync")
		}
	}
}

// TestBarrierWaitsForForwardedEventsOnly: Barrier covers every event whose
// statement RecordAsync let through, any session's, even before its own
// wait; it does not sync for events appended about what already happened
// (a statement's result), which the next group commit takes along.
func TestBarrierWaitsForForwardedEventsOnly(t *testing.T) {
	r, _ := newRec(t)
	var syncs atomic.Int64
	r.sync = func(f *os.File) error { syncs.Add(1); return fdatasync(f) }
	a, err := r.Start("a", Event{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := r.Start("b", Event{})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Barrier(); err != nil {
		t.Fatal(err)
	}
	// A's statement goes out before its event is durable; B's barrier
	// must cover it.
	_, _, err = a.RecordAsync(Event{Type: TypeStatement, SQL: "INSERT INTO t VALUES (1)"})
	if err != nil {
		t.Fatal(err)
	}
	r.j.mu.Lock()
	want := r.j.written // A's statement's ticket
	r.j.mu.Unlock()
	if err := b.Barrier(); err != nil {
		t.Fatal(err)
	}
	r.j.cmu.Lock()
	synced := r.j.synced
	r.j.cmu.Unlock()
	if synced < want {
		t.Fatalf("Barrier returned with ticket %d durable; the forwarded statement's event is ticket %d", synced, want)
	}
	// A's result: appended, and no reason for another fdatasync.
	before := syncs.Load()
	if _, err := a.Append(Event{Type: TypeResult, Ref: 1, Rows: 1}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := a.Barrier(); err != nil {
			t.Fatal(err)
		}
	}
	if n := syncs.Load() - before; n != 0 {
		t.Errorf("%d fdatasync(s) for barriers after an appended result: the result's event was not forwarded", n)
	}
	// The next durable event takes the result along.
	if _, err := a.Record(Event{Type: TypeStatement, SQL: "SELECT 2"}); err != nil {
		t.Fatal(err)
	}
	r.j.mu.Lock()
	written := r.j.written
	r.j.mu.Unlock()
	r.j.cmu.Lock()
	synced = r.j.synced
	r.j.cmu.Unlock()
	if synced != written {
		t.Errorf("after Record, %d of %d tickets durable", synced, written)
	}
}
