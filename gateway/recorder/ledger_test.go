package recorder

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// --- helpers ---------------------------------------------------------------

func readEntries(t *testing.T, dir string) []LedgerEntry {
	t.Helper()
	var out []LedgerEntry
	for i, l := range lines(t, filepath.Join(dir, LedgerName)) {
		e, err := parseEntry(bytes.TrimSuffix(l, []byte("\n")))
		if err != nil {
			t.Fatalf("ledger line %d: %v", i+1, err)
		}
		out = append(out, e)
	}
	return out
}

func types(es []LedgerEntry) string {
	var ts []string
	for _, e := range es {
		ts = append(ts, e.Type)
	}
	return strings.Join(ts, " ")
}

func audit(t *testing.T, dir string, kr bundle.Keyring, anchor []byte) *AuditReport {
	t.Helper()
	a, err := Audit(dir, AuditOptions{Keys: kr, Anchor: anchor, AnchorSource: "test anchor"})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func statusOfSession(a *AuditReport, id string) *Report {
	for _, r := range a.Recordings {
		if r.Session == id {
			return r
		}
	}
	return nil
}

func hasProblem(ps []Problem, kind, text string) bool {
	for _, p := range ps {
		if p.Kind == kind && strings.Contains(p.Message, text) {
			return true
		}
	}
	return false
}

func copyTree(t *testing.T, from string) string {
	t.Helper()
	to := t.TempDir()
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return to
}

// openRec opens a recorder with no periodic checkpoints (tests call
// Checkpoint) in dir.
func openRec(t *testing.T, dir string, k crypto.Signer, opts ...Option) *Recorder {
	t.Helper()
	r, err := Open(dir, k, append([]Option{WithCheckpointInterval(0)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// history writes what most tests start from, then closes the recorder:
// "sealed" (3 statements, checkpointed after the second, sealed), "open"
// (2 statements checkpointed, then 2 more; never ended: the close entry
// holds its head) and "short" (sealed).
func history(t *testing.T, dir string, k ed25519.PrivateKey, opts ...Option) {
	t.Helper()
	r := openRec(t, dir, k, opts...)
	a, err := r.Start("sealed", Event{Identity: "billing"})
	if err != nil {
		t.Fatal(err)
	}
	o, err := r.Start("open", Event{Identity: "ops"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if _, err := a.Record(Event{Type: TypeRequest, Text: fmt.Sprintf("SELECT %d", i)}); err != nil {
			t.Fatal(err)
		}
		if _, err := o.Record(Event{Type: TypeRequest, Text: fmt.Sprintf("UPDATE t SET n = %d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Record(Event{Type: TypeRequest, Text: "DELETE FROM orders WHERE id = 7"}); err != nil {
		t.Fatal(err)
	}
	if err := a.End("client closed"); err != nil {
		t.Fatal(err)
	}
	for i := 2; i < 4; i++ {
		if _, err := o.Record(Event{Type: TypeRequest, Text: fmt.Sprintf("UPDATE t SET n = %d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	record(t, r, "short", true)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
}

// forge rewrites a recording's text and the ledger as whoever holds the
// recorder key can: the chain rebuilt, the seal and every ledger entry
// signed again. It is what the red team did.
func forge(t *testing.T, dir, session, from, to string, k ed25519.PrivateKey) {
	t.Helper()
	path := filepath.Join(dir, session+".jsonl")
	ls := lines(t, path)
	heads := map[int]string{} // event -> new hash
	prev := ""
	for i, l := range ls {
		var ev Event
		if err := json.Unmarshal(l, &ev); err != nil {
			t.Fatal(err)
		}
		ev.Text = strings.ReplaceAll(ev.Text, from, to)
		ev.Prev = prev
		if ev.Type == TypeSeal {
			ev.Signature = hex.EncodeToString(ed25519.Sign(k, sealMessage(session, prev)))
		}
		b, _ := json.Marshal(ev)
		ls[i] = append(b, '\n')
		prev = hashLine(b)
		heads[i+1] = prev
	}
	write(t, path, ls)
	es := readEntries(t, dir)
	var out [][]byte
	prev = ""
	for _, e := range es {
		if e.Session == session {
			e.Head = heads[e.Events]
		}
		for i := range e.Sessions {
			if e.Sessions[i].Session == session {
				e.Sessions[i].Head = heads[e.Sessions[i].Events]
			}
		}
		e.Prev = prev
		line, err := encodeEntry(e, func(m []byte) ([]byte, error) { return ed25519.Sign(k, m), nil })
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, line)
		prev = hashLine(line[:len(line)-1])
	}
	write(t, filepath.Join(dir, LedgerName), out)
}

// --- the ledger ------------------------------------------------------------

// TestLedgerRecordsSessions: every start, checkpoint, seal and close is an
// entry, indexed 1, 2, 3... across a restart, chained and signed; the
// session the close left open is sealed as crashed by the next Open, and
// the directory then audits clean.
func TestLedgerRecordsSessions(t *testing.T) {
	dir := t.TempDir()
	k, _ := bundle.GenerateKey()
	kr := bundle.NewKeyring(k.Public().(ed25519.PublicKey))
	history(t, dir, k)
	es := readEntries(t, dir)
	if got := types(es); got != "open start start checkpoint seal start seal close" {
		t.Fatalf("entries: %s", got)
	}
	if cp := es[3].Sessions; len(cp) != 2 || cp[0].Session != "open" || cp[0].Events != 3 || cp[1].Session != "sealed" || cp[1].Events != 3 {
		t.Errorf("checkpoint: %+v", cp)
	}
	if cl := es[7].Sessions; len(cl) != 1 || cl[0].Session != "open" || cl[0].Events != 5 {
		t.Errorf("close: %+v", cl)
	}
	if es[4].Session != "sealed" || es[4].Events != 6 || es[4].Head != hashLine(bytes.TrimSuffix(lines(t, filepath.Join(dir, "sealed.jsonl"))[5], []byte("\n"))) {
		t.Errorf("seal entry %+v does not hold the recording's last line", es[4])
	}
	a := audit(t, dir, kr, nil)
	if v := a.Verdict(); v != VerdictUnsealed || statusOfSession(a, "open").Status != StatusUnsealed || len(a.Ledger.Problems) != 0 {
		t.Fatalf("before the restart: verdict %d, %+v %+v", v, a.Recordings, a.Ledger)
	}

	r := openRec(t, dir, k)
	if len(r.CrashSealed) != 1 || r.CrashSealed[0] != "open" || len(r.Recovered) != 0 {
		t.Fatalf("crash sealed %q, problems %q", r.CrashSealed, r.Recovered)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	es = readEntries(t, dir)
	if got := types(es[8:]); got != "open crash_seal close" {
		t.Fatalf("after the restart: %s", got)
	}
	for i, e := range es {
		if e.Index != uint64(i+1) {
			t.Errorf("entry %d has index %d", i+1, e.Index)
		}
	}
	if cs := es[9]; cs.Session != "open" || cs.Events != 6 || cs.Checkpointed != 5 {
		t.Errorf("crash seal entry %+v", cs)
	}
	a = audit(t, dir, kr, nil)
	rep := statusOfSession(a, "open")
	if v := a.Verdict(); v != VerdictOK || rep.Status != StatusCrashed || a.Ledger.Opens != 2 || a.Ledger.CrashSeals != 1 {
		t.Fatalf("after the restart: verdict %d, %+v, ledger %+v", v, rep, a.Ledger)
	}
	if len(rep.Notes) == 0 || !strings.Contains(rep.Notes[0], "the ledger holds its crash seal (entry 10)") {
		t.Errorf("notes %q", rep.Notes)
	}
}

// TestAuditFindsWhatVerifyCannot: each attack on a copy of one history is
// found, with the problem that names it. Without the ledger, the cut tail
// read as UNSEALED and the deletion went unnoticed.
func TestAuditFindsWhatVerifyCannot(t *testing.T) {
	base := t.TempDir()
	k, _ := bundle.GenerateKey()
	kr := bundle.NewKeyring(k.Public().(ed25519.PublicKey))
	history(t, base, k)
	other := t.TempDir()
	record(t, openRec(t, other, k), "stranger", true)

	tests := map[string]struct {
		attack  func(t *testing.T, dir string)
		session string // "" : the ledger's problem
		status  string
		kind    string
		text    string
	}{
		"a sealed recording deleted": {func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, "sealed.jsonl")) },
			"sealed", StatusMissing, ProblemMissing, "deleted"},
		"a sealed recording cut at a line boundary": {func(t *testing.T, dir string) {
			p := filepath.Join(dir, "sealed.jsonl")
			write(t, p, lines(t, p)[:4])
		}, "sealed", StatusAltered, ProblemCut, "holds it at event 6"},
		"an open recording cut below its checkpoint": {func(t *testing.T, dir string) {
			p := filepath.Join(dir, "open.jsonl")
			write(t, p, lines(t, p)[:2])
		}, "open", StatusAltered, ProblemCut, "stops at event 2"},
		"an event rewritten and the chain rebuilt, without the key": {func(t *testing.T, dir string) {
			p := filepath.Join(dir, "open.jsonl")
			ls := lines(t, p)
			prev := ""
			for i, l := range ls {
				var ev Event
				_ = json.Unmarshal(l, &ev)
				ev.Text = strings.ReplaceAll(ev.Text, "n = 1", "n = 9")
				ev.Prev = prev
				b, _ := json.Marshal(ev)
				ls[i], prev = append(b, '\n'), hashLine(b)
			}
			write(t, p, ls)
		}, "open", StatusAltered, ProblemDiffers, "rewritten"},
		"a recording added": {func(t *testing.T, dir string) {
			b, _ := os.ReadFile(filepath.Join(other, "stranger.jsonl"))
			os.WriteFile(filepath.Join(dir, "stranger.jsonl"), b, 0o600)
		}, "stranger", StatusUnlisted, ProblemUnlisted, "does not name"},
		"a ledger entry removed": {func(t *testing.T, dir string) {
			p := filepath.Join(dir, LedgerName)
			ls := lines(t, p)
			write(t, p, append(ls[:4:4], ls[5:]...))
		}, "", "", ProblemLedger, "entries 5 to 5 are missing"},
		"a ledger entry edited": {func(t *testing.T, dir string) {
			p := filepath.Join(dir, LedgerName)
			ls := lines(t, p)
			ls[5] = bytes.Replace(ls[5], []byte(`"session":"short"`), []byte(`"session":"shorT"`), 1)
			write(t, p, ls)
		}, "", "", ProblemLedger, "signature does not verify"},
		"the ledger deleted": {func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, LedgerName)) },
			"", "", ProblemLedger, "it was deleted"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := copyTree(t, base)
			tc.attack(t, dir)
			a := audit(t, dir, kr, nil)
			if a.Verdict() != VerdictAltered {
				t.Errorf("verdict %d, want altered", a.Verdict())
			}
			if tc.session == "" {
				if a.Ledger == nil || !hasProblem(a.Ledger.Problems, tc.kind, tc.text) {
					t.Fatalf("ledger report %+v, want %s %q", a.Ledger, tc.kind, tc.text)
				}
				return
			}
			rep := statusOfSession(a, tc.session)
			if rep == nil || rep.Status != tc.status || !hasProblem(rep.Problems, tc.kind, tc.text) {
				t.Fatalf("%s: %+v, want %s with %s %q", tc.session, rep, tc.status, tc.kind, tc.text)
			}
		})
	}
}

// TestStolenKeyRewriteNeedsTheAnchor: whoever holds the recorder key can
// rewrite a recording and the ledger so that both verify: Audit alone
// cannot tell (that is the limit of a key in the data directory). The
// file anchor, written as the entries were, catches it.
func TestStolenKeyRewriteNeedsTheAnchor(t *testing.T) {
	dir := t.TempDir()
	anchorPath := filepath.Join(t.TempDir(), "anchor.jsonl")
	k, _ := bundle.GenerateKey()
	kr := bundle.NewKeyring(k.Public().(ed25519.PublicKey))
	history(t, dir, k, WithAnchor(NewFileAnchor(anchorPath)))
	anchor, err := ReadAnchor(t.Context(), anchorPath, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	ledger, _ := os.ReadFile(filepath.Join(dir, LedgerName))
	if !bytes.Equal(anchor, ledger) {
		t.Fatalf("the anchor does not hold the ledger:\n%s\n---\n%s", anchor, ledger)
	}
	if a := audit(t, dir, kr, anchor); a.Anchor.Anchored != uint64(len(readEntries(t, dir))) || len(a.Anchor.Problems) != 0 {
		t.Fatalf("intact: %+v", a.Anchor)
	}

	forge(t, dir, "sealed", "DELETE FROM orders WHERE id = 7", "SELECT 7", k)
	if a := audit(t, dir, kr, nil); a.Verdict() != VerdictUnsealed {
		t.Fatalf("the forgery was expected to pass without an anchor (the documented limit); verdict %d: %+v", a.Verdict(), a.Recordings)
	}
	a := audit(t, dir, kr, anchor)
	if a.Verdict() != VerdictAltered || !hasProblem(a.Anchor.Problems, ProblemAnchor, "entry 5 differs from the anchor's copy") {
		t.Fatalf("with the anchor: verdict %d, %+v", a.Verdict(), a.Anchor)
	}

	// Replacing the ledger with a new one (deleted while the gateway was
	// down: the next start adopts what is there) is caught the same way.
	os.Remove(filepath.Join(dir, LedgerName))
	openRec(t, dir, k).Close()
	a = audit(t, dir, kr, anchor)
	if !hasProblem(a.Anchor.Problems, ProblemAnchor, "entry 1 differs") || a.Ledger.Adopted != 3 {
		t.Fatalf("a replaced ledger: %+v %+v", a.Anchor, a.Ledger)
	}
	// Without the anchor, the recordings it adopted say that they were
	// written under another ledger.
	a = audit(t, dir, kr, nil)
	if rep := statusOfSession(a, "short"); a.Verdict() != VerdictAltered || !hasProblem(rep.Problems, ProblemLedger, "written under an earlier ledger") {
		t.Fatalf("a replaced ledger, no anchor: %+v", rep)
	}
}

// TestHTTPAnchor: entries are POSTed as JSON lines; while the anchor
// fails they wait, and Close sends them all; a restart sends only what is
// new; a ledger rolled back is caught.
func TestHTTPAnchor(t *testing.T) {
	srv := newAnchorServer(t)
	srv.fail.Store(true)
	dir := t.TempDir()
	k, _ := bundle.GenerateKey()
	kr := bundle.NewKeyring(k.Public().(ed25519.PublicKey))
	r := openRec(t, dir, k, WithAnchor(NewHTTPAnchor(srv.url, nil, "s3cret")))
	record(t, r, "one", true)
	// The anchor is down: counted, and how far behind it is, for metrics.
	for deadline := time.Now().Add(5 * time.Second); r.Stats.AnchorFailures.Load() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no anchor failure counted")
		}
	}
	if behind, ok := r.AnchorBehind(); !ok || behind == 0 {
		t.Errorf("AnchorBehind = %d, %v while the anchor is down", behind, ok)
	}
	srv.fail.Store(false)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if behind, _ := r.AnchorBehind(); behind != 0 {
		t.Errorf("AnchorBehind = %d after the flush at Close", behind)
	}
	ledger, _ := os.ReadFile(filepath.Join(dir, LedgerName))
	if got := srv.body(); !bytes.Equal(got, ledger) {
		t.Fatalf("anchor after Close:\n%s\nledger:\n%s", got, ledger)
	}
	if srv.auth.Load() != "Bearer s3cret" {
		t.Errorf("Authorization %q", srv.auth.Load())
	}
	r = openRec(t, dir, k, WithAnchor(NewHTTPAnchor(srv.url, nil, "s3cret")))
	record(t, r, "two", true)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	ledger, _ = os.ReadFile(filepath.Join(dir, LedgerName))
	if got := srv.body(); !bytes.Equal(got, ledger) {
		t.Fatalf("after a restart, the anchor holds:\n%s\nledger:\n%s", got, ledger)
	}
	anchor, err := ReadAnchor(t.Context(), srv.url, nil, "s3cret")
	if err != nil || !bytes.Equal(anchor, ledger) {
		t.Fatalf("ReadAnchor: %v", err)
	}
	// Roll the ledger back to before the second session, and delete it.
	p := filepath.Join(dir, LedgerName)
	ls := lines(t, p)
	write(t, p, ls[:len(ls)-4])
	os.Remove(filepath.Join(dir, "two.jsonl"))
	a := audit(t, dir, kr, anchor)
	if a.Verdict() != VerdictAltered || !hasProblem(a.Anchor.Problems, ProblemAnchor, "the ledger was cut") {
		t.Fatalf("a rolled back ledger: %+v", a.Anchor)
	}
	if a := audit(t, dir, kr, nil); a.Verdict() != VerdictOK {
		t.Errorf("without the anchor, the rollback and deletion together are expected to pass (documented); verdict %d", a.Verdict())
	}
}

// TestCrashLeftovers: what Open does with each kind of recording a crash
// (or an attacker) can leave.
func TestCrashLeftovers(t *testing.T) {
	k, _ := bundle.GenerateKey()
	kr := bundle.NewKeyring(k.Public().(ed25519.PublicKey))

	t.Run("a start the ledger never named is sealed", func(t *testing.T) {
		dir := t.TempDir()
		r := openRec(t, dir, k)
		if _, err := r.Start("starting", Event{}); err != nil {
			t.Fatal(err)
		}
		crash(r)
		// The crash came between the start event and the ledger's entry.
		p := filepath.Join(dir, LedgerName)
		ls := lines(t, p)
		write(t, p, ls[:len(ls)-1])
		if a := audit(t, dir, kr, nil); statusOfSession(a, "starting").Status != StatusUnsealed || a.Verdict() != VerdictUnsealed {
			t.Fatalf("before the restart: %+v", a.Recordings)
		}
		r2 := openRec(t, dir, k)
		if len(r2.CrashSealed) != 1 {
			t.Fatalf("not sealed: %q", r2.Recovered)
		}
		r2.Close()
		a := audit(t, dir, kr, nil)
		if rep := statusOfSession(a, "starting"); a.Verdict() != VerdictOK || rep.Status != StatusCrashed || rep.Events != 2 {
			t.Fatalf("after: %+v", rep)
		}
	})
	t.Run("an unnamed recording of more than its start is not sealed", func(t *testing.T) {
		dir := t.TempDir()
		openRec(t, dir, k).Close()
		src := t.TempDir()
		record(t, openRec(t, src, k), "planted", false)
		b, _ := os.ReadFile(filepath.Join(src, "planted.jsonl"))
		os.WriteFile(filepath.Join(dir, "planted.jsonl"), b, 0o600)
		r := openRec(t, dir, k)
		if len(r.CrashSealed) != 0 || len(r.Recovered) != 1 || !strings.Contains(r.Recovered[0], "not in the ledger") {
			t.Fatalf("sealed %q, problems %q", r.CrashSealed, r.Recovered)
		}
		r.Close()
		if a := audit(t, dir, kr, nil); statusOfSession(a, "planted").Status != StatusUnlisted {
			t.Fatalf("%+v", statusOfSession(a, "planted"))
		}
	})
	t.Run("a seal the ledger never received is entered", func(t *testing.T) {
		dir := t.TempDir()
		r := openRec(t, dir, k)
		record(t, r, "ended", true)
		crash(r)
		p := filepath.Join(dir, LedgerName)
		ls := lines(t, p)
		write(t, p, ls[:len(ls)-1]) // the seal entry
		r2 := openRec(t, dir, k)
		r2.Close()
		es := readEntries(t, dir)
		if got := types(es); got != "open start open seal close" || !strings.Contains(es[3].Reason, "next start") {
			t.Fatalf("entries %s", got)
		}
		if a := audit(t, dir, kr, nil); a.Verdict() != VerdictOK || a.Ledger.Unclean != 1 {
			t.Fatalf("%+v %+v", a.Recordings, a.Ledger)
		}
	})
	t.Run("a torn last line is cut, then sealed", func(t *testing.T) {
		dir := t.TempDir()
		r := openRec(t, dir, k)
		p := record(t, r, "torn", false)
		crash(r)
		before, _ := os.ReadFile(p)
		f, _ := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
		f.WriteString(`{"seq":5,"time":"2026-`)
		f.Close()
		openRec(t, dir, k).Close()
		crashSealedAfter(t, p, before, kr)
	})
	t.Run("a recording cut below its checkpoint is not sealed", func(t *testing.T) {
		dir := t.TempDir()
		r := openRec(t, dir, k)
		p := record(t, r, "cut", false)
		if err := r.Checkpoint(); err != nil {
			t.Fatal(err)
		}
		crash(r)
		write(t, p, lines(t, p)[:2])
		// The journal would put the events back: the attacker empties it.
		write(t, filepath.Join(dir, JournalName), nil)
		r2 := openRec(t, dir, k)
		if len(r2.CrashSealed) != 0 || len(r2.Recovered) != 1 || !strings.Contains(r2.Recovered[0], "below the ledger's last head") {
			t.Fatalf("sealed %q, problems %q", r2.CrashSealed, r2.Recovered)
		}
		r2.Close()
		if rep := statusOfSession(audit(t, dir, kr, nil), "cut"); rep.Status != StatusAltered || !hasProblem(rep.Problems, ProblemCut, "stops at event 2") {
			t.Fatalf("%+v", rep)
		}
	})
	t.Run("an empty recording of a start that never wrote is removed", func(t *testing.T) {
		dir := t.TempDir()
		openRec(t, dir, k).Close()
		p := filepath.Join(dir, "empty.jsonl")
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		r := openRec(t, dir, k)
		if len(r.Recovered) != 0 {
			t.Fatalf("problems %q", r.Recovered)
		}
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("the empty recording is still there: %v", err)
		}
	})
	t.Run("a deleted recording is reported at start", func(t *testing.T) {
		dir := t.TempDir()
		r := openRec(t, dir, k)
		p := record(t, r, "gone", false)
		crash(r)
		os.Remove(p)
		write(t, filepath.Join(dir, JournalName), nil)
		r2 := openRec(t, dir, k)
		if len(r2.Recovered) != 1 || !strings.Contains(r2.Recovered[0], "missing") {
			t.Fatalf("problems %q", r2.Recovered)
		}
	})
}

// TestBrokenLedgerStopsOpen: a ledger broken before its tail is not what a
// crash leaves, and the recorder will not build on it; a torn last entry
// is, and is cut (a copy kept).
func TestBrokenLedgerStopsOpen(t *testing.T) {
	k, _ := bundle.GenerateKey()
	dir := t.TempDir()
	history(t, dir, k)
	p := filepath.Join(dir, LedgerName)
	orig := lines(t, p)

	edited := append([][]byte{}, orig...)
	edited[2] = bytes.Replace(edited[2], []byte(`"events":1`), []byte(`"events":2`), 1)
	write(t, p, edited)
	if r, err := Open(dir, k); err == nil {
		r.Close()
		t.Fatal("opened on an edited ledger")
	} else if !strings.Contains(err.Error(), "broken after entry 3") {
		t.Fatalf("error %v", err)
	}

	torn := append(append([][]byte{}, orig...), []byte(`{"index":9,"time":"20`))
	write(t, p, torn)
	r := openRec(t, dir, k)
	r.Close()
	cut, _ := filepath.Glob(p + ".cut-*")
	if len(cut) != 1 {
		t.Fatalf("no copy of the torn tail: %v", cut)
	}
	if es := readEntries(t, dir); es[8].Type != LedgerOpen || es[8].Index != 9 {
		t.Fatalf("after the cut: %+v", es[8])
	}
}

// TestAdoptFormat1Recordings: a directory of recordings from before the
// ledger (the format 1 fixtures, signed by another key) is adopted when a
// ledger begins there, and audits clean with both keys.
func TestAdoptFormat1Recordings(t *testing.T) {
	dir := copyTree(t, "testdata/format1")
	k, _ := bundle.GenerateKey()
	openRec(t, dir, k).Close()
	es := readEntries(t, dir)
	if got := types(es); got != "open adopt adopt adopt close" || !es[1].Sealed {
		t.Fatalf("entries %s %+v", got, es)
	}
	kr, err := bundle.LoadKeyring("testdata/format1/recorder.pub")
	if err != nil {
		t.Fatal(err)
	}
	kr[bundle.KeyID(k.Public().(ed25519.PublicKey))] = k.Public().(ed25519.PublicKey)
	a := audit(t, dir, kr, nil)
	if a.Verdict() != VerdictOK || a.Ledger.Adopted != 3 || len(a.Recordings) != 3 {
		t.Fatalf("%+v %+v", a.Recordings, a.Ledger)
	}
	if !strings.Contains(a.Recordings[0].Notes[0], "adopted") {
		t.Errorf("notes %q", a.Recordings[0].Notes)
	}
	// Without a ledger, format 1 recordings are not a problem; format 3
	// ones are (TestAuditFindsWhatVerifyCannot).
	os.Remove(filepath.Join(dir, LedgerName))
	if a := audit(t, dir, kr, nil); a.Verdict() != VerdictOK || len(a.Notes) != 1 {
		t.Fatalf("without a ledger: %d %q", a.Verdict(), a.Notes)
	}
}

// TestPeriodicCheckpoints: with an interval, the recorder checkpoints the
// open sessions on its own, and only when a head moved.
func TestPeriodicCheckpoints(t *testing.T) {
	dir := t.TempDir()
	k, _ := bundle.GenerateKey()
	r, err := Open(dir, k, WithCheckpointInterval(5*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	s, err := r.Start("s", Event{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor := func(events int) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			for _, e := range readEntries(t, dir) {
				if e.Type == LedgerCheckpoint && e.Sessions[0].Events == events {
					return
				}
			}
		}
		t.Fatalf("no checkpoint at event %d: %s", events, types(readEntries(t, dir)))
	}
	for i := 2; i <= 4; i++ {
		if _, err := s.Record(Event{Type: TypeRequest, Text: "SELECT 1"}); err != nil {
			t.Fatal(err)
		}
		waitFor(i)
	}
	// A checkpoint is written only when the head moved: no two hold the
	// same head.
	last := 0
	for _, e := range readEntries(t, dir) {
		if e.Type == LedgerCheckpoint {
			if e.Sessions[0].Events <= last {
				t.Errorf("a checkpoint repeats head %d: %s", e.Sessions[0].Events, types(readEntries(t, dir)))
			}
			last = e.Sessions[0].Events
		}
	}
}

// failingSigner signs with k until fail is set.
type failingSigner struct {
	k    ed25519.PrivateKey
	fail atomic.Bool
}

func (f *failingSigner) Public() crypto.PublicKey { return f.k.Public() }
func (f *failingSigner) Sign(r io.Reader, m []byte, o crypto.SignerOpts) ([]byte, error) {
	if f.fail.Load() {
		return nil, errors.New("the token is unplugged")
	}
	return f.k.Sign(r, m, o)
}

// TestStartRefusedWhenTheLedgerCannotBeWritten: a session whose start the
// ledger cannot name is refused (nothing is forwarded in it), and its
// start-only recording is sealed at the next Open.
func TestStartRefusedWhenTheLedgerCannotBeWritten(t *testing.T) {
	dir := t.TempDir()
	k, _ := bundle.GenerateKey()
	kr := bundle.NewKeyring(k.Public().(ed25519.PublicKey))
	fs := &failingSigner{k: k}
	r := openRec(t, dir, fs)
	fs.fail.Store(true)
	if _, err := r.Start("refused", Event{}); err == nil || !strings.Contains(err.Error(), "unplugged") {
		t.Fatalf("Start: %v", err)
	}
	fs.fail.Store(false)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r2 := openRec(t, dir, k)
	if len(r2.CrashSealed) != 1 {
		t.Fatalf("%q %q", r2.CrashSealed, r2.Recovered)
	}
	r2.Close()
	if a := audit(t, dir, kr, nil); a.Verdict() != VerdictOK {
		t.Fatalf("%+v", a.Recordings)
	}
}

// TestSessionNamedLedgerIsRefused: no session can write over the ledger.
func TestSessionNamedLedgerIsRefused(t *testing.T) {
	r, _ := newRec(t)
	if _, err := r.Start("ledger", Event{}); err == nil {
		t.Fatal("a session named ledger was started")
	}
}
