package recorder

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// --- helpers ---------------------------------------------------------------

// smallTmpfs mounts a 2 MB tmpfs (as acctest's TestFullDataDirRefusesStatements
// does) and returns a directory in it.
func smallTmpfs(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs (needs root): %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	return dir
}

// fill writes zeros into dir/filler until the file system is full and
// returns a func that frees the space again.
func fill(t *testing.T, dir string) func() {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{64 << 10, 4 << 10, 1} {
		buf := make([]byte, n)
		for {
			if _, err := f.Write(buf); err != nil {
				break
			}
		}
	}
	f.Close()
	return func() { _ = os.Remove(p) }
}

// syncLog wraps r.sync and remembers which files were synced.
type syncLog struct {
	mu    sync.Mutex
	paths []string
}

func (l *syncLog) install(r *Recorder) {
	r.sync = func(f *os.File) error {
		l.mu.Lock()
		l.paths = append(l.paths, f.Name())
		l.mu.Unlock()
		return fdatasync(f)
	}
}

func (l *syncLog) reset() { l.mu.Lock(); l.paths = nil; l.mu.Unlock() }

func (l *syncLog) has(p string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, q := range l.paths {
		if q == p {
			return true
		}
	}
	return false
}

var fixed = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// These tests came from a review of the recorder's crash and full-disk
// behaviour; each pins down one guarantee.

// --- A failed Append leaves a gap that Verify reports ----------------------

// A "masked" (or "result") event whose Append fails with ENOSPC is not
// silently dropped: the next write records a gap event first, and Verify
// reports the recording as incomplete.
func TestFailedAppendLeavesAGap(t *testing.T) {
	dir := smallTmpfs(t)
	k, _ := bundle.GenerateKey()
	kr := bundle.NewKeyring(k.Public().(ed25519.PublicKey))
	r, err := Open(filepath.Join(dir, "rec"), k)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	s, err := r.Start("s1", Event{Identity: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := s.Record(Event{Type: TypeStatement, SQL: "SELECT email, card_number FROM customers"})
	if err != nil {
		t.Fatal(err)
	}
	free := fill(t, dir)
	cols := make([]string, 400)
	for i := range cols {
		cols[i] = fmt.Sprintf("public.customers.col%03d=redact", i)
	}
	if _, err := s.Append(Event{Type: TypeMasked, Ref: ref, Columns: cols}); err == nil {
		t.Fatal("setup: the big Append did not fail on a full disk")
	} else {
		t.Logf("Append failed (as on a full disk): %v", err)
	}
	_, recErr := s.Record(Event{Type: TypeStatement, SQL: "SELECT 1"})
	free()
	if err := s.End("done"); err != nil {
		t.Fatal(err)
	}
	rep, err := Verify(s.Path, kr)
	if err != nil {
		t.Fatal(err)
	}
	if recErr == nil && rep.OK() {
		t.Errorf("the masked event was lost, the next statement was recorded (and would be forwarded), and Verify says the recording is intact and sealed (%d events: start, statement, statement, end, seal)", rep.Events)
	}
}

// --- A failed End still syncs the recording before the journal forgets it -

// Record's events are durable only through the journal. When End fails to
// write (ENOSPC), it must still sync the recording before forgetting the
// session, or the next checkpoint (here Close) would truncate the journal
// over events that exist only in the page cache.
func TestFailedEndStillSyncsTheRecording(t *testing.T) {
	dir := smallTmpfs(t)
	k, _ := bundle.GenerateKey()
	r, err := Open(filepath.Join(dir, "rec"), k)
	if err != nil {
		t.Fatal(err)
	}
	var log syncLog
	log.install(r)
	s, err := r.Start("s2", Event{Identity: "svc", Time: fixed})
	if err != nil {
		t.Fatal(err)
	}
	// Pad so that the journal's last tmpfs page has < 40 bytes free.
	base := r.j.size
	if _, err := s.Record(Event{Type: TypeStatement, SQL: "x", Time: fixed}); err != nil {
		t.Fatal(err)
	}
	d1 := r.j.size - base
	want := int64(4096 - 30)
	n := 1 + ((want-(r.j.size+d1))%4096+4096)%4096
	log.reset()
	if _, err := s.Record(Event{Type: TypeStatement, SQL: strings.Repeat("x", int(n)), Time: fixed}); err != nil {
		t.Fatal(err)
	}
	if r.j.size%4096 != want {
		t.Fatalf("setup: journal at %d (%% 4096 = %d)", r.j.size, r.j.size%4096)
	}
	// That Record was acknowledged: durable through the journal only.
	if log.has(s.Path) {
		t.Fatal("setup: the recording itself was synced")
	}
	free := fill(t, dir)
	endErr := s.End("bye")
	free()
	// The seal's journal entry does not fit. The group commit then falls
	// back to a checkpoint (syncing the recordings), so End may succeed;
	// either way, what follows must hold.
	t.Logf("End: %v", endErr)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(filepath.Join(r.dir, JournalName))
	if fi.Size() == 0 && !log.has(s.Path) {
		t.Errorf("the journal was emptied by Close, but %s was never fdatasync'd after its last acknowledged Record: a power loss now loses acknowledged events", s.Path)
	}
}

// --- Two recorders on one directory -----------------------------------------

// A second gateway on the same data dir (or a second start that then fails
// to listen) must not replay and truncate the live gateway's journal.
func TestSecondRecorderOnADirIsRefused(t *testing.T) {
	k, _ := bundle.GenerateKey()
	dir := t.TempDir()
	a, err := Open(dir, k)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	var log syncLog
	log.install(a)
	s, err := a.Start("live", Event{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Record(Event{Type: TypeStatement, SQL: "SELECT 1"}); err != nil {
		t.Fatal(err)
	}
	jbefore, _ := os.ReadFile(filepath.Join(dir, JournalName))
	b, err := Open(dir, k)
	if err == nil {
		defer b.Close()
		jafter, _ := os.ReadFile(filepath.Join(dir, JournalName))
		t.Errorf("a second Open of a live recordings dir succeeded; the live journal went from %d to %d bytes while %s (synced: %v) depends on it",
			len(jbefore), len(jafter), s.Path, log.has(s.Path))
	}
}

// --- Recovery keeps only the recording's intact chain -----------------------

// After a power loss the unsynced part of a recording can hold a zeroed
// page followed by a page that did reach the disk. Recovery keeps the
// prefix whose chain holds and rewrites the rest from the journal.
func TestRecoveryAfterAZeroedPage(t *testing.T) {
	r, kr := newRec(t)
	s, err := r.Start("z", Event{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if _, err := s.Record(Event{Type: TypeStatement, SQL: fmt.Sprintf("SELECT %d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	full, _ := os.ReadFile(s.Path)
	ls := lines(t, s.Path)
	crashed := bytes.Join([][]byte{ls[0], ls[1], make([]byte, len(ls[2])), ls[3]}, nil)
	if err := os.WriteFile(s.Path, crashed, 0o600); err != nil {
		t.Fatal(err)
	}
	crash(r)
	r2, err := Open(r.dir, r.key)
	if err != nil {
		t.Fatalf("recovery refused: %v", err)
	}
	defer r2.Close()
	got, _ := os.ReadFile(s.Path)
	rep, _ := Verify(s.Path, kr)
	if !bytes.HasPrefix(got, full) {
		t.Errorf("recovered recording differs from what the journal holds; Verify: %+v\n%q", rep, got)
	}
	crashSealedAfter(t, s.Path, full, kr)
}

// --- A hole in the journal's unsynced tail does not block start-up ---------

// Durability is a prefix of the journal (fdatasync covers everything
// before). An entry torn in the middle (its page lost) followed by an entry
// that did reach the disk is the unacknowledged tail: recovery stops there
// and the gateway starts.
func TestTornJournalTailDoesNotBlockOpen(t *testing.T) {
	r, _ := newRec(t)
	s, err := r.Start("h", Event{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if _, err := s.Record(Event{Type: TypeStatement, SQL: fmt.Sprintf("SELECT %d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	ls := lines(t, s.Path)
	write(t, s.Path, ls[:2]) // the recording lost its unsynced tail
	jp := filepath.Join(r.dir, JournalName)
	js := lines(t, jp)
	e := js[3] // seq 4: keep its id and its newline, zero the middle
	copy(e[len("h\t")+5:len(e)-1], make([]byte, len(e)))
	write(t, jp, js)
	crash(r)
	r2, err := Open(r.dir, r.key)
	if err != nil {
		t.Errorf("Open refused after a torn journal tail: %v", err)
		return
	}
	r2.Close()
}

// --- Recovery never appends after a seal ----------------------------------

func TestRecoveryNeverAppendsAfterASeal(t *testing.T) {
	r, _ := newRec(t)
	p := record(t, r, "sealed", true)
	n := len(lines(t, p))
	jp := filepath.Join(r.dir, JournalName)
	jd, _ := os.ReadFile(jp)
	jd = bytes.TrimRight(jd, "\x00") // the zeros written ahead
	jd = append(jd, fmt.Sprintf("sealed\t{\"seq\":%d,\"type\":\"statement\",\"sql\":\"DROP TABLE x\"}\n", n+1)...)
	if err := os.WriteFile(jp, jd, 0o600); err != nil {
		t.Fatal(err)
	}
	crash(r)
	r2, err := Open(r.dir, r.key)
	if err == nil {
		defer r2.Close()
	}
	if m := len(lines(t, p)); m != n {
		t.Errorf("recovery appended %d journal line(s) after the seal of a sealed recording (Open err: %v)", m-n, err)
	}
}

// --- A failed Close poisons; a second Close acknowledges nothing -----------

func TestFailedCloseAcknowledgesNothing(t *testing.T) {
	r, _ := newRec(t)
	s, err := r.Start("c", Event{})
	if err != nil {
		t.Fatal(err)
	}
	ticket, err := r.j.write(s, []byte("{\"seq\":2,\"type\":\"statement\"}\n"))
	if err != nil {
		t.Fatal(err)
	}
	r.sync = func(f *os.File) error {
		if f.Name() == s.Path {
			return syscall.EIO
		}
		return fdatasync(f)
	}
	if err := r.Close(); err == nil {
		t.Fatal("setup: Close did not fail")
	}
	_ = r.Close()
	if err := r.j.commit(ticket); err == nil {
		t.Error("an event whose recording failed to sync (and whose journal entry was never synced) was acknowledged")
	}
}

// --- Stress: sessions, Append, Record, End, checkpoints, Close ---------

// Every Record that returned nil must be in its recording after Close, and
// nothing may deadlock.
func TestRecorderStress(t *testing.T) {
	r, kr := newRec(t)
	r.checkpointBytes = 2 << 10
	const workers = 16
	var wg sync.WaitGroup
	var mu sync.Mutex
	acked := map[string][]string{}
	closeAt := make(chan struct{})
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				id := fmt.Sprintf("w%d-%d", w, n)
				s, err := r.Start(id, Event{})
				if err != nil {
					return // closed
				}
				for i := range 20 {
					sql := fmt.Sprintf("SELECT %d -- %s", i, id)
					if _, err := s.Record(Event{Type: TypeStatement, SQL: sql}); err != nil {
						break
					}
					mu.Lock()
					acked[s.Path] = append(acked[s.Path], sql)
					mu.Unlock()
					_, _ = s.Append(Event{Type: "result", Rows: int64(i)})
				}
				if err := s.End("done"); err == nil {
					if rep, err := Verify(s.Path, kr); err != nil || !rep.OK() {
						t.Errorf("%s: %+v %v", s.Path, rep, err)
					}
				}
			}
		}()
	}
	go func() { time.Sleep(300 * time.Millisecond); close(closeAt) }()
	<-closeAt
	done := make(chan error)
	go func() { done <- r.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close deadlocked")
	}
	wg.Wait()
	for p, sqls := range acked {
		evs, _ := ReadEvents(p)
		have := map[string]bool{}
		for _, e := range evs {
			have[e.SQL] = true
		}
		for _, q := range sqls {
			if !have[q] {
				t.Errorf("%s: acknowledged %q is missing", p, q)
			}
		}
		if rep, err := Verify(p, kr); err != nil || len(rep.Problems) != 0 {
			t.Errorf("%s: %+v %v", p, rep, err)
		}
	}
	t.Logf("%d recordings", len(acked))
}

// --- On a full disk the journal gives back the space of ended sessions -----

// Every ended session is synced and needs no journal: when the last open
// session ends (or the disk is full) the journal is emptied, so a small
// data dir full of journal does not refuse new sessions.
func TestFullDiskJournalIsReclaimed(t *testing.T) {
	dir := smallTmpfs(t)
	k, _ := bundle.GenerateKey()
	r, err := Open(filepath.Join(dir, "rec"), k)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var startErr error
	for n := 0; startErr == nil; n++ {
		var s *Session
		s, startErr = r.Start(fmt.Sprintf("s%d", n), Event{})
		if startErr != nil {
			break
		}
		for i := 0; i < 20; i++ {
			if _, err := s.Record(Event{Type: TypeStatement, SQL: strings.Repeat("x", 500)}); err != nil {
				break
			}
		}
		_ = s.End("done")
	}
	fi, _ := os.Stat(filepath.Join(r.dir, JournalName))
	r.j.mu.Lock()
	open := len(r.j.open)
	r.j.mu.Unlock()
	t.Logf("Start failed with %v; journal %d bytes; %d sessions open", startErr, fi.Size(), open)
	if open == 0 && fi.Size() > 512<<10 {
		t.Errorf("no session is open, the journal holds %d bytes of ended sessions, and new sessions are refused for want of space", fi.Size())
	}
}
