package recorder

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// Concurrent sessions share fdatasyncs: with a slow disk, many events are
// made durable by one sync, and every recording still verifies.
func TestGroupCommitSharesSyncs(t *testing.T) {
	r, kr := newRec(t)
	var syncs atomic.Int64
	r.sync = func(f *os.File) error {
		syncs.Add(1)
		time.Sleep(2 * time.Millisecond) // a disk that makes batching visible
		return fdatasync(f)
	}
	const sessions, events = 8, 25
	var wg sync.WaitGroup
	paths := make([]string, sessions)
	for i := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := r.Start(fmt.Sprintf("s%d", i), Event{Identity: "svc"})
			if err != nil {
				t.Error(err)
				return
			}
			paths[i] = s.Path
			for k := range events {
				if _, err := s.Record(Event{Type: TypeStatement, SQL: fmt.Sprintf("SELECT %d", k)}); err != nil {
					t.Error(err)
					return
				}
			}
			if err := s.End("done"); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	durable := sessions * (1 + events + 1) // start, statements, seal
	// Each End also syncs its own recording once.
	if got := syncs.Load() - sessions; got >= int64(durable)/2 {
		t.Errorf("%d journal syncs for %d durable events: no sharing", got, durable)
	} else {
		t.Logf("%d journal syncs for %d durable events", got, durable)
	}
	for _, p := range paths {
		if rep, err := Verify(p, kr); err != nil || !rep.OK() || rep.Events != 1+events+2 {
			t.Fatalf("%s: %+v %v", p, rep, err)
		}
	}
}

// One session's parallel requests (a Kubernetes caller's, an SSH
// connection's channels) share fdatasyncs too: Record waits for the disk
// outside the session's lock.
func TestGroupCommitWithinASession(t *testing.T) {
	r, kr := newRec(t)
	var syncs atomic.Int64
	r.sync = func(f *os.File) error {
		syncs.Add(1)
		time.Sleep(2 * time.Millisecond)
		return fdatasync(f)
	}
	s, err := r.Start("one", Event{Identity: "kubectl"})
	if err != nil {
		t.Fatal(err)
	}
	const workers, events = 8, 25
	before := syncs.Load()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range events {
				if _, err := s.Record(Event{Type: TypeRequest, Text: fmt.Sprintf("GET /api/v1/pods/%d-%d", w, k)}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if got := syncs.Load() - before; got >= workers*events/2 {
		t.Errorf("%d syncs for %d requests of one session: no sharing", got, workers*events)
	} else {
		t.Logf("%d syncs for %d requests of one session", got, workers*events)
	}
	if err := s.End("done"); err != nil {
		t.Fatal(err)
	}
	if rep, err := Verify(s.Path, kr); err != nil || !rep.OK() || rep.Events != 1+workers*events+2 {
		t.Fatalf("%+v %v", rep, err)
	}
}

// A crash that loses a recording's unsynced tail (power loss) is repaired
// from the journal when the recorder is opened again: torn last line cut,
// missing events appended, chain intact (unsealed, as the session never
// ended).
func TestJournalRecoversLostTail(t *testing.T) {
	r, kr := newRec(t)
	s, err := r.Start("crashed", Event{Identity: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	for k := range 5 {
		if _, err := s.Record(Event{Type: TypeStatement, SQL: fmt.Sprintf("SELECT %d", k)}); err != nil {
			t.Fatal(err)
		}
	}
	full, _ := os.ReadFile(s.Path)
	ls := lines(t, s.Path)
	// The disk kept the first two events and half of the third.
	lost := append(append(append([]byte{}, ls[0]...), ls[1]...), ls[2][:len(ls[2])/2]...)
	if err := os.WriteFile(s.Path, lost, 0o600); err != nil {
		t.Fatal(err)
	}
	// And the journal's own last entry was torn too: that event had not
	// been acknowledged, so it is not restored.
	jp := filepath.Join(r.dir, JournalName)
	jd, _ := os.ReadFile(jp)
	jd = bytes.TrimRight(jd, "\x00") // the zeros written ahead
	if err := os.WriteFile(jp, append(jd, []byte("crashed\t{\"seq\":7,")...), 0o600); err != nil {
		t.Fatal(err)
	}

	crash(r)
	r2, err := Open(r.dir, r.key)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r2.Close() })
	got, _ := os.ReadFile(s.Path)
	if !bytes.HasPrefix(got, full) {
		t.Fatalf("recovered recording differs:\n%s\nwant\n%s", got, full)
	}
	// The session never ended: Open sealed it as crashed after its last
	// acknowledged event.
	crashSealedAfter(t, s.Path, full, kr)
	if fi, _ := os.Stat(jp); fi.Size() != 0 {
		t.Errorf("journal not emptied after recovery: %d bytes", fi.Size())
	}
}

// Recovery never splices events onto a recording they do not follow; it
// reports the recording instead of refusing to start.
func TestJournalRecoveryRefusesGaps(t *testing.T) {
	r, _ := newRec(t)
	s, err := r.Start("gap", Event{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Record(Event{Type: TypeStatement, SQL: "SELECT 1"}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.Path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	jp := filepath.Join(r.dir, JournalName)
	jd, _ := os.ReadFile(jp)
	// Drop the journal's first entry: the recording would start at seq 2.
	_, rest, _ := cutLine(jd)
	if err := os.WriteFile(jp, rest, 0o600); err != nil {
		t.Fatal(err)
	}
	crash(r)
	r2, err := Open(r.dir, r.key)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	// The journal's report, then the orphan pass's: nothing intact to seal.
	if len(r2.Recovered) != 2 || !strings.Contains(r2.Recovered[0], "does not continue") || !strings.Contains(r2.Recovered[1], "no intact event") {
		t.Errorf("recovery report: %q", r2.Recovered)
	}
	if data, _ := os.ReadFile(s.Path); len(data) != 0 {
		t.Errorf("a gap was spliced over: %s", data)
	}
}

// crash stops a recorder as a SIGKILL would: nothing is closed cleanly,
// the ledger gets no close entry, and the directory is unlocked.
func crash(r *Recorder) {
	r.stopBG()
	r.closeOnce.Do(func() { r.closeErr = errors.New("crashed") })
	r.l.mu.Lock()
	r.l.closed = true
	r.l.f.Close()
	r.l.mu.Unlock()
	r.j.mu.Lock()
	defer r.j.mu.Unlock()
	r.j.closed = true
	r.j.closeErr = errors.New("crashed")
	r.j.f.Close()
	r.j.lock.Close()
	for s := range r.j.open {
		s.f.Close()
	}
}

// crashSealedAfter checks that a recording is exactly before, then one
// crashed seal naming before's last event, and that it verifies as
// crash-sealed.
func crashSealedAfter(t *testing.T, path string, before []byte, kr bundle.Keyring) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := bytes.Count(before, []byte("\n"))
	rest, ok := bytes.CutPrefix(got, before)
	if !ok || bytes.Count(rest, []byte("\n")) != 1 {
		t.Fatalf("%s is not its events then one seal:\n%s", path, got)
	}
	var seal Event
	if err := json.Unmarshal(rest, &seal); err != nil || seal.Type != TypeSeal || seal.Kind != SealCrashed || seal.Ref != n || seal.Seq != n+1 {
		t.Fatalf("not a crashed seal after event %d: %s (%v)", n, rest, err)
	}
	rep, err := Verify(path, kr)
	if err != nil || !rep.OK() || !rep.Crashed || rep.Events != n+1 {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}

func cutLine(b []byte) ([]byte, []byte, bool) {
	for i, c := range b {
		if c == '\n' {
			return b[:i+1], b[i+1:], true
		}
	}
	return b, nil, false
}

// After a failed fdatasync nothing is called durable again: every later
// event fails, even once the disk answers, until the recorder is reopened.
func TestFailedSyncPoisons(t *testing.T) {
	r, _ := newRec(t)
	s, err := r.Start("p", Event{})
	if err != nil {
		t.Fatal(err)
	}
	r.sync = func(*os.File) error { return errors.New("input/output error") }
	if _, err := s.Record(Event{Type: TypeStatement, SQL: "SELECT 1"}); !errors.Is(err, ErrPoisoned) {
		t.Fatalf("failed sync: %v", err)
	}
	r.sync = fdatasync
	if _, err := s.Record(Event{Type: TypeStatement, SQL: "SELECT 2"}); !errors.Is(err, ErrPoisoned) {
		t.Fatalf("after a failed sync: %v", err)
	}
	if _, err := r.Start("q", Event{}); !errors.Is(err, ErrPoisoned) {
		t.Fatalf("a new session after a failed sync: %v", err)
	}
}

// The journal is emptied at checkpoints, so it stays small however long
// the sessions run; and Close leaves it empty with every recording intact.
func TestJournalCheckpoint(t *testing.T) {
	r, kr := newRec(t)
	r.checkpointBytes = 4 << 10
	s, err := r.Start("long", Event{})
	if err != nil {
		t.Fatal(err)
	}
	jp := filepath.Join(r.dir, JournalName)
	for k := range 300 {
		if _, err := s.Record(Event{Type: TypeStatement, SQL: fmt.Sprintf("SELECT %d FROM generate_series(1, 100)", k)}); err != nil {
			t.Fatal(err)
		}
		if fi, _ := os.Stat(jp); fi.Size() > 2*r.checkpointBytes+zeroChunk {
			t.Fatalf("journal at %d bytes after %d events", fi.Size(), k)
		}
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(jp); fi.Size() != 0 {
		t.Errorf("journal holds %d bytes after Close", fi.Size())
	}
	if _, err := s.Record(Event{Type: TypeStatement}); err == nil {
		t.Error("an event after Close was accepted")
	}
	rep, err := Verify(s.Path, kr)
	if err != nil || len(rep.Problems) != 0 || rep.Events != 301 {
		t.Fatalf("%+v %v", rep, err)
	}
}
