package recorder

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"
)

// The ledger is one append-only JSONL file for the whole recordings
// directory, a hash chain of its own: every entry carries the SHA-256 of
// the line before it and an index one above the previous one's, which
// carries on across restarts, and is signed with the recorder key. It
// names every recording the gateway starts and seals, with the head of its
// chain (how many events, and the hash of the last), and checkpoints the
// heads of open sessions every checkpoint interval and at Close. So:
//
//   - a recording the ledger names cannot be deleted unnoticed;
//   - a recording cannot lose events below the last head the ledger holds
//     for it, at a line boundary or not, unnoticed (a cut tail used to
//     read as a crash);
//   - a recording the ledger does not name stands out;
//   - with the key off the host (a file the data directory's writers
//     cannot read, or a PKCS#11 token), the ledger itself cannot be
//     rewritten without the signatures failing; with the key in the data
//     directory it can, and only an anchor (anchor.go), a copy of the
//     entries kept off the host, catches that.
//
// An entry is durable (fdatasync, with a group commit like the journal's)
// before the operation it records returns: Start returns only once the
// ledger names the recording, End once it holds the sealed head.

// LedgerName is the ledger's file name in the recordings directory.
const LedgerName = "ledger.jsonl"

// Ledger entry types.
const (
	// LedgerOpen: a recorder opened the directory (a gateway started).
	LedgerOpen = "open"
	// LedgerAdopt: a recording already in the directory when the ledger
	// began (written by a gateway before the ledger existed), with its
	// head as it was found.
	LedgerAdopt = "adopt"
	// LedgerStart: a session's recording began (its first event's head).
	LedgerStart = "start"
	// LedgerCheckpoint: the heads of the open sessions whose recordings
	// grew since the last checkpoint.
	LedgerCheckpoint = "checkpoint"
	// LedgerSeal: a session ended and its recording was sealed.
	LedgerSeal = "seal"
	// LedgerCrashSeal: a recording a crash left open was sealed at the
	// next start; Checkpointed is the last event a checkpoint held.
	LedgerCrashSeal = "crash_seal"
	// LedgerClose: the recorder closed; the heads of sessions still open.
	LedgerClose = "close"
)

// LedgerEntry is one line of the ledger.
type LedgerEntry struct {
	Index uint64    `json:"index"`
	Time  time.Time `json:"time"`
	Type  string    `json:"type"`
	// Prev is the hex SHA-256 of the previous line ("" for the first).
	Prev string `json:"prev"`

	// start, adopt, seal, crash_seal: the recording and its head: the
	// number of events and the hash of the last line.
	Session string `json:"session,omitempty"`
	Events  int    `json:"events,omitempty"`
	Head    string `json:"head,omitempty"`
	// adopt: the recording was sealed when it was adopted.
	Sealed bool `json:"sealed,omitempty"`
	// crash_seal: the last event a checkpoint (or the start) held for it;
	// the events after it were sealed on the recording's word alone.
	Checkpointed int `json:"checkpointed,omitempty"`
	// checkpoint, close: the heads of open sessions.
	Sessions []Head `json:"sessions,omitempty"`
	// open, crash_seal, seal entered late: what happened, for people.
	Reason string `json:"reason,omitempty"`

	// KeyID names the recorder key; Signature (always last in the line)
	// is its ed25519 signature over "gatehouse-ledger-entry\x00" and the
	// line up to the signature (see encodeEntry).
	KeyID     string `json:"key_id"`
	Signature string `json:"signature,omitempty"`
}

// Head is a recording's chain head: how many events it held, and the hex
// SHA-256 of the last one's line.
type Head struct {
	Session string `json:"session"`
	Events  int    `json:"events"`
	Head    string `json:"head"`
}

const (
	ledgerDomain = "gatehouse-ledger-entry\x00"
	sigField     = `,"signature":"`
)

// encodeEntry writes an entry as its line (with the newline), signed. The
// signature covers the line's exact bytes up to the signature field, so
// that verifying needs no canonical re-encoding: whatever a verifier
// parses is what was signed.
func encodeEntry(e LedgerEntry, sign func([]byte) ([]byte, error)) ([]byte, error) {
	e.Signature = ""
	body, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("recorder: encode ledger entry: %w", err)
	}
	body = body[:len(body)-1] // the closing brace
	sig, err := sign(append([]byte(ledgerDomain), body...))
	if err != nil {
		return nil, err
	}
	line := append(body, sigField...)
	line = append(line, hex.EncodeToString(sig)...)
	return append(line, "\"}\n"...), nil
}

// signedPart splits a ledger line (without its newline) into what was
// signed and the signature, or says why it is not a signed entry.
func signedPart(line []byte) (msg, sig []byte, err error) {
	i := bytes.LastIndex(line, []byte(sigField))
	if i < 0 || !bytes.HasSuffix(line, []byte(`"}`)) {
		return nil, nil, errors.New("the entry has no signature")
	}
	sig, err = hex.DecodeString(string(line[i+len(sigField) : len(line)-2]))
	if err != nil {
		return nil, nil, errors.New("the entry's signature is not hex")
	}
	return append([]byte(ledgerDomain), line[:i]...), sig, nil
}

// parseEntry reads one ledger line (without its newline), refusing fields
// the gateway does not write.
func parseEntry(line []byte) (LedgerEntry, error) {
	var e LedgerEntry
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		return e, fmt.Errorf("not a ledger entry: %w", err)
	}
	if dec.More() {
		return e, errors.New("not a ledger entry: more than one JSON value on the line")
	}
	return e, nil
}

// ledger is the writing side, owned by a Recorder.
type ledger struct {
	r    *Recorder
	path string
	f    *os.File

	// mu orders entries: index, prev and the file's size move together.
	mu     sync.Mutex
	index  uint64
	prev   string
	size   int64
	closed bool

	// cmu guards the group commit: every entry up to synced is durable,
	// and the file's first durable bytes.
	cmu     sync.Mutex
	cond    *sync.Cond
	synced  uint64
	durable int64
	syncing bool
	err     error

	// notify tells the anchor's exporter that entries became durable.
	notify func()
}

// append signs and writes an entry, and returns once it is durable. A
// failed write is cut back, so the ledger never holds half an entry; a
// failed fdatasync poisons the recorder, as the journal's does.
func (l *ledger) append(e LedgerEntry) (LedgerEntry, error) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return e, errors.New("recorder: the ledger is closed")
	}
	if err := l.r.j.poisoned(); err != nil {
		l.mu.Unlock()
		return e, err
	}
	e.Index, e.Prev, e.KeyID = l.index+1, l.prev, l.r.keyID
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	line, err := encodeEntry(e, l.r.sign)
	if err != nil {
		l.mu.Unlock()
		return e, err
	}
	if _, err := l.f.Write(line); err != nil {
		if terr := l.f.Truncate(l.size); terr != nil {
			l.mu.Unlock()
			return e, l.r.j.fail(fmt.Errorf("cut back %s after a failed write: %w", l.path, terr))
		}
		l.mu.Unlock()
		return e, fmt.Errorf("recorder: write %s: %w", l.path, err)
	}
	l.index, l.prev, l.size = e.Index, hashLine(line[:len(line)-1]), l.size+int64(len(line))
	l.mu.Unlock()
	if err := l.commit(e.Index); err != nil {
		return e, err
	}
	if l.notify != nil {
		l.notify()
	}
	return e, nil
}

// commit returns once entry idx is durable: it syncs the file for every
// entry written so far unless a sync is under way, in which case it waits
// for that one.
func (l *ledger) commit(idx uint64) error {
	l.cmu.Lock()
	defer l.cmu.Unlock()
	for l.synced < idx {
		if l.err != nil {
			return l.err
		}
		if l.syncing {
			l.cond.Wait()
			continue
		}
		l.syncing = true
		l.cmu.Unlock()
		l.mu.Lock()
		target, size := l.index, l.size
		l.mu.Unlock()
		err := l.r.sync(l.f)
		l.cmu.Lock()
		l.syncing = false
		if err != nil {
			l.err = l.r.j.fail(fmt.Errorf("sync %s: %w", l.path, err))
		} else if target > l.synced {
			l.synced, l.durable = target, size
		}
		l.cond.Broadcast()
	}
	return nil
}

// durableEnd is the last durable entry and the file size it ends at.
func (l *ledger) durableEnd() (uint64, int64) {
	l.cmu.Lock()
	defer l.cmu.Unlock()
	return l.synced, l.durable
}

func (l *ledger) close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	return l.f.Close()
}

// ledgerScan is what Open reads from the ledger on disk.
type ledgerScan struct {
	entries int
	last    uint64
	prev    string
	size    int64 // bytes of the intact prefix
	// closed: the last entry is a close (the previous run ended cleanly).
	closed bool
	// known is every session the ledger names; open those started (or
	// adopted unsealed) and not sealed since, with the highest head it
	// holds for each.
	known map[string]bool
	open  map[string]Head
	// offsetAfter is where the entry after index `after` begins (for the
	// anchor's exporter), found when that entry is in the ledger.
	after       uint64
	offsetAfter int64
	foundAfter  bool
	// bad says why the ledger stops being intact at offset size (""
	// when it does not); tail is what follows.
	bad  string
	tail []byte
}

// scanLedger reads the ledger's intact prefix: entries that parse, run 1,
// 2, 3..., and each carry the hash of the one before. Signatures are not
// checked here (audit verify does, with the keys an auditor trusts).
func scanLedger(f *os.File, after uint64) (*ledgerScan, error) {
	sc := &ledgerScan{known: map[string]bool{}, open: map[string]Head{}, after: after}
	if after == 0 {
		sc.foundAfter = true
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	br := bufio.NewReaderSize(f, 64<<10)
	for {
		raw, err := readLine(br)
		if err == io.EOF {
			return sc, nil
		}
		if err != nil {
			sc.bad = err.Error()
			break
		}
		if !bytes.HasSuffix(raw, []byte("\n")) {
			sc.bad = "the last entry is incomplete"
			sc.tail = raw
			break
		}
		line := raw[:len(raw)-1]
		e, perr := parseEntry(line)
		switch {
		case perr != nil:
			sc.bad = fmt.Sprintf("entry %d: %v", sc.entries+1, perr)
		case e.Index != sc.last+1:
			sc.bad = fmt.Sprintf("entry %d has index %d", sc.entries+1, e.Index)
		case e.Prev != sc.prev:
			sc.bad = fmt.Sprintf("entry %d does not carry the hash of the entry before it", e.Index)
		}
		if sc.bad != "" {
			sc.tail = raw
			break
		}
		sc.entries++
		sc.last, sc.prev = e.Index, hashLine(line)
		sc.size += int64(len(raw))
		if e.Index == after {
			sc.offsetAfter, sc.foundAfter = sc.size, true
		}
		sc.apply(e)
	}
	rest, err := io.ReadAll(br)
	if err != nil {
		return nil, err
	}
	sc.tail = append(sc.tail, rest...)
	return sc, nil
}

func (sc *ledgerScan) apply(e LedgerEntry) {
	sc.closed = e.Type == LedgerClose
	switch e.Type {
	case LedgerStart:
		sc.known[e.Session] = true
		sc.open[e.Session] = Head{e.Session, e.Events, e.Head}
	case LedgerAdopt:
		sc.known[e.Session] = true
		if !e.Sealed {
			sc.open[e.Session] = Head{e.Session, e.Events, e.Head}
		}
	case LedgerSeal, LedgerCrashSeal:
		sc.known[e.Session] = true
		delete(sc.open, e.Session)
	case LedgerCheckpoint, LedgerClose:
		for _, h := range e.Sessions {
			if cur, ok := sc.open[h.Session]; ok && h.Events >= cur.Events {
				sc.open[h.Session] = h
			}
		}
	}
}

// tornTail reports whether what follows a ledger's intact prefix is what a
// crash leaves: one incomplete last line, or bytes a power loss zeroed
// (the unsynced tail, never acknowledged). Whole entries that parse but do
// not chain are not: someone edited the ledger.
func tornTail(tail []byte) bool {
	return !bytes.Contains(tail, []byte("\n")) || bytes.IndexByte(tail, 0) >= 0
}

// openLedger opens (or begins) the ledger, puts right what a crash left
// (a torn tail; recordings never sealed) and records that the recorder
// opened. It runs in Open, after the journal's recovery, with the
// directory locked.
func (r *Recorder) openLedger() error {
	path := filepath.Join(r.dir, LedgerName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("recorder: ledger: %w", err)
	}
	l := &ledger{r: r, path: path, f: f}
	l.cond = sync.NewCond(&l.cmu)
	var cursor exportCursor
	if r.anchor != nil {
		cursor = readCursor(r.dir, r.anchor)
	}
	sc, err := scanLedger(f, cursor.Index)
	if err != nil {
		f.Close()
		return fmt.Errorf("recorder: ledger: %w", err)
	}
	if sc.bad != "" {
		if !tornTail(sc.tail) {
			f.Close()
			return fmt.Errorf("recorder: the ledger %s is broken after entry %d (%s), and not as a crash leaves it: run `gatehouse audit verify`; to start anyway, move the recordings directory's contents aside together (audit verify DIR still checks them against their ledger) and start with an empty one", path, sc.last, sc.bad)
		}
		if err := l.cutTail(sc); err != nil {
			f.Close()
			return err
		}
	}
	l.index, l.prev, l.size = sc.last, sc.prev, sc.size
	l.synced, l.durable = sc.last, sc.size
	r.l = l
	if r.anchor != nil {
		if !sc.foundAfter {
			r.log.Error("the ledger ends before what the anchor was sent: it was cut, rolled back or replaced since; sending it again from its first entry (audit verify --anchor shows what differs)",
				"ledger", path, "last_entry", sc.last, "anchored", cursor.Index, "anchor", r.anchor.String())
			cursor = exportCursor{Anchor: r.anchor.String()}
			sc.offsetAfter = 0
		}
		r.exp = newExporter(r, cursor, sc.offsetAfter)
		l.notify = r.exp.kick
	}

	if err := r.opened(sc); err != nil {
		l.close()
		return err
	}
	if err := r.sealOrphans(sc); err != nil {
		l.close()
		return err
	}
	return nil
}

// opened writes the open entry: the gateway started, on a new ledger
// (which adopts the recordings already there) or after a run that did
// not close it.
func (r *Recorder) opened(sc *ledgerScan) error {
	open := LedgerEntry{Type: LedgerOpen}
	var adopt []LedgerEntry
	switch {
	case sc.entries == 0:
		var err error
		if adopt, err = r.adoptable(); err != nil {
			return err
		}
		open.Reason = fmt.Sprintf("a new ledger; %d recording(s) already in the directory adopted as they are", len(adopt))
	case !sc.closed:
		open.Reason = "the previous run did not close the ledger (a crash, a kill or a power loss)"
	}
	if _, err := r.l.append(open); err != nil {
		return err
	}
	for _, e := range adopt {
		if _, err := r.l.append(e); err != nil {
			return err
		}
		sc.known[e.Session] = true
		if !e.Sealed {
			sc.open[e.Session] = Head{e.Session, e.Events, e.Head}
		}
	}
	return nil
}

// cutTail removes what a crash left after the ledger's intact prefix,
// keeping a copy beside it for whoever investigates.
func (l *ledger) cutTail(sc *ledgerScan) error {
	keep := fmt.Sprintf("%s.cut-%d", l.path, time.Now().UnixNano())
	if err := os.WriteFile(keep, sc.tail, 0o600); err != nil {
		return fmt.Errorf("recorder: keep the ledger's torn tail: %w", err)
	}
	if err := l.f.Truncate(sc.size); err != nil {
		return fmt.Errorf("recorder: cut the ledger's torn tail: %w", err)
	}
	if err := l.r.sync(l.f); err != nil {
		return fmt.Errorf("recorder: sync %s: %w", l.path, err)
	}
	l.r.log.Warn("cut the ledger's torn tail, left by a crash (a copy is kept)", "ledger", l.path, "after_entry", sc.last, "bytes", len(sc.tail), "copy", keep, "why", sc.bad)
	return syncDir(l.r.dir)
}

// adoptable lists the recordings already in the directory when a ledger
// begins (an upgrade from a gateway without one), as adopt entries with
// their heads as they are.
func (r *Recorder) adoptable() ([]LedgerEntry, error) {
	names, err := recordingNames(r.dir)
	if err != nil {
		return nil, fmt.Errorf("recorder: %w", err)
	}
	var out []LedgerEntry
	for _, name := range names {
		f, err := os.Open(filepath.Join(r.dir, name+".jsonl"))
		if err != nil {
			return nil, fmt.Errorf("recorder: adopt %s: %w", name, err)
		}
		c, err := chainedPrefix(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("recorder: adopt %s: %w", name, err)
		}
		if c.seq == 0 {
			continue // nothing intact to vouch for; audit verify reports it
		}
		out = append(out, LedgerEntry{Type: LedgerAdopt, Session: name, Events: c.seq, Head: c.prev, Sealed: c.sealed})
	}
	return out, nil
}

// recordingNames lists the session ids of the recordings in dir, sorted.
func recordingNames(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if e.Type().IsRegular() && isSessionFile(e.Name()) {
			out = append(out, e.Name()[:len(e.Name())-len(".jsonl")])
		}
	}
	sort.Strings(out)
	return out, nil
}

// openHeads returns the head of every open session (for the close entry:
// the journal's close has synced them all).
func (r *Recorder) openHeads() []Head {
	heads, _ := r.heads(true)
	return heads
}

// heads returns the head of every open session whose recording grew since
// the ledger last recorded it (all of them when all is set), and the
// journal ticket that makes them all durable.
func (r *Recorder) heads(all bool) ([]Head, uint64) {
	r.j.mu.Lock()
	sessions := make([]*Session, 0, len(r.j.open))
	for s := range r.j.open {
		sessions = append(sessions, s)
	}
	r.j.mu.Unlock()
	var heads []Head
	var ticket uint64
	for _, s := range sessions {
		s.mu.Lock()
		if !s.sealed && s.seq > 0 && (all || s.seq != s.checkpointed) {
			heads = append(heads, Head{Session: s.id, Events: s.seq, Head: s.prev})
			ticket = max(ticket, s.ticket)
		}
		s.mu.Unlock()
	}
	sort.Slice(heads, func(i, j int) bool { return heads[i].Session < heads[j].Session })
	return heads, ticket
}

// Checkpoint records in the ledger the head of every open session whose
// recording grew since its last checkpoint, once those events are
// durable: the ledger never holds a head a power loss could take back.
// It writes nothing when no head moved.
func (r *Recorder) Checkpoint() error {
	r.cpMu.Lock()
	defer r.cpMu.Unlock()
	heads, ticket := r.heads(false)
	if len(heads) == 0 {
		return nil
	}
	if err := r.j.commit(ticket); err != nil {
		return err
	}
	if _, err := r.l.append(LedgerEntry{Type: LedgerCheckpoint, Sessions: heads}); err != nil {
		return err
	}
	r.j.mu.Lock()
	byID := map[string]*Session{}
	for s := range r.j.open {
		byID[s.id] = s
	}
	r.j.mu.Unlock()
	for _, h := range heads {
		if s := byID[h.Session]; s != nil {
			s.mu.Lock()
			s.checkpointed = max(s.checkpointed, h.Events)
			s.mu.Unlock()
		}
	}
	return nil
}
