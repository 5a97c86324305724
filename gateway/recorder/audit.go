package recorder

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// Audit checks recordings against their ledger, and the ledger against an
// anchor's copy. Verify says whether one recording is intact; Audit says
// whether the directory still holds everything the gateway recorded:
//
//   - every recording the ledger names is there (else: missing);
//   - each holds at least the highest head the ledger holds for it, and
//     its events hash to every head the ledger holds (else: cut, differs);
//   - every recording is named by the ledger (else: unlisted);
//   - the ledger's entries run 1, 2, 3..., each carries the hash of the one
//     before, and each is signed by a trusted key (else: ledger);
//   - every entry the anchor holds is in the ledger, byte for byte, and the
//     ledger does not end before the anchor (else: anchor).
//
// The order of reads lets a live directory be audited: the anchor first
// (it is behind the ledger), then the ledger (behind the recordings, as
// Start and checkpoints write the ledger after the events they name),
// then the recordings; a recording the ledger did not name is checked
// against a second read of the ledger, taken after it.

// Statuses of a recording in an audit.
const (
	StatusOK         = "ok"
	StatusCrashed    = "crashed"    // verified; sealed at the next start after a crash
	StatusUnsealed   = "unsealed"   // verified up to its last event; no seal
	StatusIncomplete = "incomplete" // the gateway recorded a gap
	StatusAltered    = "altered"
	StatusMissing    = "missing"
	StatusUnlisted   = "unlisted"
)

// Verdict sums an audit up.
type Verdict int

const (
	// VerdictOK: every recording verified or crash-sealed, and the ledger
	// (and the anchor) agree with them.
	VerdictOK Verdict = iota
	// VerdictUnsealed: nothing shows tampering, but a recording has no
	// seal (its session is open, or the gateway has not started since a
	// crash) or holds a gap the gateway recorded.
	VerdictUnsealed
	// VerdictAltered: a recording was altered, cut, deleted or added, or
	// the ledger was, or it differs from its anchor.
	VerdictAltered
)

// LedgerReport is what checking a ledger found.
type LedgerReport struct {
	Path    string `json:"path"`
	Entries int    `json:"entries"`
	// Began is the first entry's time; Opens counts gateway starts,
	// Unclean those after a run that did not close the ledger (a crash),
	// Adopted the recordings it took over when it began, CrashSeals the
	// recordings sealed after a crash.
	Began      time.Time `json:"began,omitzero"`
	Opens      int       `json:"opens"`
	Unclean    int       `json:"unclean"`
	Adopted    int       `json:"adopted"`
	CrashSeals int       `json:"crash_seals"`
	Problems   []Problem `json:"problems"`
	Notes      []string  `json:"notes,omitempty"`
}

// AnchorReport is what comparing the ledger with its anchor found.
type AnchorReport struct {
	Source  string `json:"source"`
	Entries int    `json:"entries"`
	// Anchored is the highest entry the anchor holds that the ledger
	// matches; Local the ledger's last entry.
	Anchored uint64    `json:"anchored"`
	Local    uint64    `json:"local"`
	Problems []Problem `json:"problems"`
	Notes    []string  `json:"notes,omitempty"`
}

// AuditReport is the result of Audit or AuditFiles.
type AuditReport struct {
	Recordings []*Report       `json:"recordings"`
	Ledger     *LedgerReport   `json:"ledger"`
	Anchor     *AnchorReport   `json:"anchor,omitempty"`
	Notes      []string        `json:"notes,omitempty"`
	ledgers    []*LedgerReport // AuditFiles: one per ledger read
}

// AuditOptions configure an audit.
type AuditOptions struct {
	// Keys are the trusted recorder keys (seals and ledger entries).
	Keys bundle.Keyring
	// Ledger is the ledger to check against (default: ledger.jsonl in the
	// recordings' directory).
	Ledger string
	// Anchor is an anchor's copy of the ledger (ReadAnchor), read before
	// the audit starts, and AnchorSource where it came from; nil: none.
	Anchor       []byte
	AnchorSource string
}

// Verdict sums the audit up.
func (a *AuditReport) Verdict() Verdict {
	v := VerdictOK
	for _, r := range a.Recordings {
		switch r.Status {
		case StatusAltered, StatusMissing, StatusUnlisted:
			return VerdictAltered
		case StatusUnsealed, StatusIncomplete:
			v = VerdictUnsealed
		}
	}
	for _, l := range a.allLedgers() {
		if len(l.Problems) > 0 {
			return VerdictAltered
		}
	}
	if a.Anchor != nil && len(a.Anchor.Problems) > 0 {
		return VerdictAltered
	}
	return v
}

func (a *AuditReport) allLedgers() []*LedgerReport {
	if len(a.ledgers) > 0 {
		return a.ledgers
	}
	if a.Ledger != nil {
		return []*LedgerReport{a.Ledger}
	}
	return nil
}

// Audit checks every recording in dir against the ledger (and the anchor).
func Audit(dir string, o AuditOptions) (*AuditReport, error) {
	ledgerPath := o.Ledger
	if ledgerPath == "" {
		ledgerPath = filepath.Join(dir, LedgerName)
	}
	view, err := readLedger(ledgerPath, o.Keys)
	if err != nil {
		return nil, err
	}
	names, err := recordingNames(dir)
	if err != nil {
		return nil, err
	}
	a := &AuditReport{Recordings: []*Report{}}
	onDisk := map[string]bool{}
	var unnamed []*Report
	for _, id := range names {
		onDisk[id] = true
		rep, err := checkRecording(filepath.Join(dir, id+".jsonl"), o.Keys, view)
		if err != nil {
			return nil, err
		}
		if view != nil && view.sessions[id] == nil {
			unnamed = append(unnamed, rep)
		}
		a.Recordings = append(a.Recordings, rep)
	}
	if view != nil {
		a.Ledger = view.report
		if len(unnamed) > 0 {
			if err := recheckUnnamed(ledgerPath, o.Keys, unnamed); err != nil {
				return nil, err
			}
		}
		for _, id := range view.order {
			if !onDisk[id] {
				ls := view.sessions[id]
				a.Recordings = append(a.Recordings, &Report{Path: filepath.Join(dir, id+".jsonl"), Session: id,
					Problems: []Problem{{0, ProblemMissing, fmt.Sprintf("the ledger names this recording (entry %d, %s) and it is not in %s: it was deleted or moved", ls.first, ls.firstWhat, dir)}}})
			}
		}
	} else {
		a.noLedger(ledgerPath)
	}
	if o.Anchor != nil {
		a.Anchor = compareAnchor(view, o.Anchor, o.AnchorSource, o.Keys)
	}
	for _, r := range a.Recordings {
		r.Status = statusOf(r)
	}
	return a, nil
}

// AuditFiles checks the given recordings, each against the ledger beside
// it (or o.Ledger). It does not look for missing or unlisted recordings
// in their directories: Audit does.
func AuditFiles(paths []string, o AuditOptions) (*AuditReport, error) {
	a := &AuditReport{Recordings: []*Report{}}
	views := map[string]*ledgerView{}
	for _, p := range paths {
		ledgerPath := o.Ledger
		if ledgerPath == "" {
			ledgerPath = filepath.Join(filepath.Dir(p), LedgerName)
		}
		view, seen := views[ledgerPath]
		if !seen {
			var err error
			if view, err = readLedger(ledgerPath, o.Keys); err != nil {
				return nil, err
			}
			views[ledgerPath] = view
			if view != nil {
				a.ledgers = append(a.ledgers, view.report)
			}
		}
		rep, err := checkRecording(p, o.Keys, view)
		if err != nil {
			return nil, err
		}
		if view == nil && rep.Format >= 3 {
			rep.Notes = append(rep.Notes, fmt.Sprintf("no ledger at %s: only the recording itself is checked (a cut tail at a line boundary reads as unsealed)", ledgerPath))
		} else if view != nil && view.sessions[rep.Session] == nil {
			if err := recheckUnnamed(ledgerPath, o.Keys, []*Report{rep}); err != nil {
				return nil, err
			}
		}
		a.Recordings = append(a.Recordings, rep)
	}
	if len(a.ledgers) == 1 {
		a.Ledger = a.ledgers[0]
	}
	if o.Anchor != nil {
		if len(views) != 1 {
			return nil, errors.New("an anchor is compared with one ledger: give recordings of one directory (or --ledger)")
		}
		for _, v := range views {
			a.Anchor = compareAnchor(v, o.Anchor, o.AnchorSource, o.Keys)
		}
	}
	for _, r := range a.Recordings {
		r.Status = statusOf(r)
	}
	return a, nil
}

// noLedger handles a directory without its ledger: recordings written
// under a ledger (format 3) say it was removed; older ones predate it.
func (a *AuditReport) noLedger(path string) {
	for _, r := range a.Recordings {
		if r.Format >= 3 {
			a.Ledger = &LedgerReport{Path: path, Problems: []Problem{{0, ProblemLedger, fmt.Sprintf("there is no ledger at %s, and recordings of format 3 (%s) were written under one: it was deleted or moved", path, r.Session)}}}
			return
		}
	}
	if len(a.Recordings) > 0 {
		a.Notes = append(a.Notes, fmt.Sprintf("no ledger at %s: these recordings predate it, so a deleted recording or a cut tail cannot be found", path))
	}
}

// checkRecording verifies one recording against what the ledger holds.
func checkRecording(path string, keys bundle.Keyring, view *ledgerView) (*Report, error) {
	session := sessionOf(path)
	var ls *ledgerSession
	if view != nil {
		ls = view.sessions[session]
	}
	var pins []Pin
	if ls != nil {
		pins = ls.pins
	}
	rep, err := VerifyPinned(path, keys, pins)
	if err != nil {
		return nil, err
	}
	if ls == nil {
		return rep, nil
	}
	if ls.adopted {
		if rep.Format >= 3 {
			// Format 3 is written under a ledger: a new ledger adopting
			// it means the one it was written under is gone.
			rep.Problems = append(rep.Problems, Problem{0, ProblemLedger, fmt.Sprintf("adopted when this ledger began (entry %d), but written under an earlier ledger (format 3): that ledger was deleted or moved, and with it what it said of this recording", ls.first)})
		} else {
			rep.Notes = append(rep.Notes, fmt.Sprintf("adopted when the ledger began (entry %d): it predates the ledger, and is checked against its head then", ls.first))
		}
	}
	switch {
	case ls.crashSeal != nil && rep.Crashed:
		n := fmt.Sprintf("the ledger holds its crash seal (entry %d)", ls.crashSeal.Entry)
		if last := ls.crashSeal.Events - 1; ls.checkpointed < last {
			n += fmt.Sprintf("; events %d to %d came after the last checkpoint, and rest on the recording alone", ls.checkpointed+1, last)
		}
		rep.Notes = append(rep.Notes, n)
	case rep.Sealed && ls.seal == nil && ls.crashSeal == nil:
		rep.Notes = append(rep.Notes, "the ledger holds no seal for it yet (written as the session ends, or at the gateway's next start)")
	}
	return rep, nil
}

// recheckUnnamed reads the ledger again for recordings the first read did
// not name (sessions that started during the audit), and reports those it
// still does not name. A recording of its start event alone (or empty),
// unsealed, is what a crash (or a refused start) leaves before the ledger
// names it, with nothing forwarded in it: the gateway's next start seals
// (or removes) it.
func recheckUnnamed(path string, keys bundle.Keyring, reps []*Report) error {
	view, err := readLedger(path, keys)
	if err != nil {
		return err
	}
	for _, rep := range reps {
		if view != nil && view.sessions[rep.Session] != nil {
			continue
		}
		if !rep.Sealed && rep.Events <= 1 && len(rep.Problems) == 0 {
			rep.Notes = append(rep.Notes, "not in the ledger yet: its start event alone (or nothing yet), in which nothing was forwarded (a session starting, or one a crash stopped while it started; the gateway's next start seals it)")
			continue
		}
		rep.Problems = append(rep.Problems, Problem{0, ProblemUnlisted, "the ledger does not name this recording: it was added, or copied from elsewhere"})
	}
	return nil
}

func sessionOf(path string) string {
	b := filepath.Base(path)
	return b[:len(b)-len(filepath.Ext(b))]
}

// State is the recording's Status, or, for a report Verify made alone
// (with no ledger), what its problems and seal say.
func (r *Report) State() string {
	if r.Status != "" {
		return r.Status
	}
	return statusOf(r)
}

// statusOf sums a recording's report up.
func statusOf(r *Report) string {
	var missing, unlisted, altered, incomplete bool
	for _, p := range r.Problems {
		switch p.Kind {
		case ProblemMissing:
			missing = true
		case ProblemUnlisted:
			unlisted = true
		case ProblemIncomplete:
			incomplete = true
		default:
			altered = true
		}
	}
	switch {
	case missing:
		return StatusMissing
	case altered:
		return StatusAltered
	case unlisted:
		return StatusUnlisted
	case incomplete:
		return StatusIncomplete
	case !r.Sealed:
		return StatusUnsealed
	case r.Crashed:
		return StatusCrashed
	}
	return StatusOK
}

// ledgerView is what a ledger holds, read for an audit.
type ledgerView struct {
	report *LedgerReport
	// hashes[i] is the hash of line i+1.
	hashes   []string
	sessions map[string]*ledgerSession
	order    []string // sessions in the order the ledger first names them
}

type ledgerSession struct {
	first     uint64
	firstWhat string
	pins      []Pin
	adopted   bool
	seal      *Pin
	crashSeal *Pin
	// checkpointed: the crash seal's last checkpointed event.
	checkpointed int
}

func (v *ledgerView) session(id string, e *LedgerEntry) *ledgerSession {
	ls := v.sessions[id]
	if ls == nil {
		ls = &ledgerSession{first: e.Index, firstWhat: e.Type}
		v.sessions[id] = ls
		v.order = append(v.order, id)
	}
	return ls
}

// readLedger reads and checks a ledger; nil when there is none.
func readLedger(path string, keys bundle.Keyring) (*ledgerView, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	v := &ledgerView{report: &LedgerReport{Path: path, Problems: []Problem{}}, sessions: map[string]*ledgerSession{}}
	rep := v.report
	br := bufio.NewReaderSize(f, 64<<10)
	var prevIndex uint64
	prevHash, lastType := "", ""
	for n := 1; ; n++ {
		raw, err := readLine(br)
		if err == io.EOF {
			break
		}
		if err != nil {
			rep.Problems = append(rep.Problems, Problem{n, ProblemLedger, fmt.Sprintf("entry %d: %v", n, err)})
			break
		}
		if !bytes.HasSuffix(raw, []byte("\n")) {
			rep.Notes = append(rep.Notes, fmt.Sprintf("the last entry (%d) is incomplete: being written, or torn by a crash (the gateway's next start cuts it)", n))
			break
		}
		line := raw[:len(raw)-1]
		h := hashLine(line)
		v.hashes = append(v.hashes, h)
		rep.Entries = n
		e, err := parseEntry(line)
		if err != nil {
			rep.Problems = append(rep.Problems, Problem{n, ProblemLedger, fmt.Sprintf("entry %d is not what the gateway writes: %v", n, err)})
			prevHash, prevIndex = h, prevIndex+1
			continue
		}
		switch {
		case e.Index > prevIndex+1:
			rep.Problems = append(rep.Problems, Problem{n, ProblemLedger, fmt.Sprintf("entry %d follows entry %d: entries %d to %d are missing", e.Index, prevIndex, prevIndex+1, e.Index-1)})
		case e.Index <= prevIndex:
			rep.Problems = append(rep.Problems, Problem{n, ProblemLedger, fmt.Sprintf("entry %d follows entry %d: entries were moved or duplicated", e.Index, prevIndex)})
		}
		if e.Prev != prevHash {
			rep.Problems = append(rep.Problems, Problem{n, ProblemLedger, fmt.Sprintf("entry %d does not carry the hash of the line before it: an entry before it was changed, removed or inserted", e.Index)})
		}
		if msg, sig, err := signedPart(line); err != nil {
			rep.Problems = append(rep.Problems, Problem{n, ProblemLedger, fmt.Sprintf("entry %d: %v", e.Index, err)})
		} else if pub, ok := keys[e.KeyID]; !ok {
			rep.Problems = append(rep.Problems, Problem{n, ProblemLedger, fmt.Sprintf("entry %d is signed by key %q, which is not trusted", e.Index, e.KeyID)})
		} else if !ed25519.Verify(pub, msg, sig) {
			rep.Problems = append(rep.Problems, Problem{n, ProblemLedger, fmt.Sprintf("entry %d's signature does not verify: it was changed", e.Index)})
		}
		v.apply(&e, lastType)
		prevHash, prevIndex, lastType = h, e.Index, e.Type
	}
	return v, nil
}

// apply adds what one entry says to the view.
func (v *ledgerView) apply(e *LedgerEntry, lastType string) {
	rep := v.report
	if rep.Began.IsZero() {
		rep.Began = e.Time
	}
	pin := func(id string, events int, head string) {
		ls := v.session(id, e)
		ls.pins = append(ls.pins, Pin{Events: events, Head: head, Entry: e.Index, What: e.Type})
	}
	switch e.Type {
	case LedgerOpen:
		rep.Opens++
		if lastType != "" && lastType != LedgerClose {
			rep.Unclean++
		}
	case LedgerAdopt:
		rep.Adopted++
		pin(e.Session, e.Events, e.Head)
		v.sessions[e.Session].adopted = true
	case LedgerStart:
		pin(e.Session, e.Events, e.Head)
	case LedgerCheckpoint, LedgerClose:
		for _, h := range e.Sessions {
			pin(h.Session, h.Events, h.Head)
		}
	case LedgerSeal:
		pin(e.Session, e.Events, e.Head)
		ls := v.sessions[e.Session]
		p := ls.pins[len(ls.pins)-1]
		ls.seal = &p
	case LedgerCrashSeal:
		rep.CrashSeals++
		pin(e.Session, e.Events, e.Head)
		ls := v.sessions[e.Session]
		p := ls.pins[len(ls.pins)-1]
		ls.crashSeal = &p
		ls.checkpointed = e.Checkpointed
	}
}

// compareAnchor checks that every entry the anchor holds is the ledger's
// entry of that index, byte for byte (so the ledger was not rewritten up
// to there, whoever holds the key), and that the ledger does not end
// before the anchor (so it was not cut or replaced).
func compareAnchor(v *ledgerView, anchor []byte, source string, keys bundle.Keyring) *AnchorReport {
	ar := &AnchorReport{Source: source, Problems: []Problem{}}
	if v != nil {
		ar.Local = uint64(len(v.hashes))
	}
	var ahead uint64
	var differs []uint64
	lines := bytes.SplitAfter(anchor, []byte("\n"))
	for n, raw := range lines {
		if len(raw) == 0 {
			continue
		}
		if !bytes.HasSuffix(raw, []byte("\n")) {
			ar.Notes = append(ar.Notes, "the anchor's last line is incomplete (being written)")
			break
		}
		line := raw[:len(raw)-1]
		ar.Entries++
		e, err := parseEntry(line)
		if err != nil || e.Index == 0 {
			ar.Problems = append(ar.Problems, Problem{n + 1, ProblemAnchor, fmt.Sprintf("line %d of the anchor is not a ledger entry", n+1)})
			continue
		}
		msg, sig, err := signedPart(line)
		pub, ok := keys[e.KeyID]
		if err != nil || !ok || !ed25519.Verify(pub, msg, sig) {
			ar.Problems = append(ar.Problems, Problem{n + 1, ProblemAnchor, fmt.Sprintf("the anchor's entry %d is not signed by a trusted key (are these the gateway's keys?)", e.Index)})
			continue
		}
		switch {
		case e.Index > ar.Local:
			ahead = max(ahead, e.Index)
		case v.hashes[e.Index-1] != hashLine(line):
			differs = append(differs, e.Index)
		default:
			ar.Anchored = max(ar.Anchored, e.Index)
		}
	}
	if v == nil && ar.Entries > 0 {
		ar.Problems = append(ar.Problems, Problem{0, ProblemAnchor, fmt.Sprintf("there is no local ledger, and the anchor holds %d entries: the ledger was deleted", ar.Entries)})
		return ar
	}
	if ahead > 0 {
		ar.Problems = append(ar.Problems, Problem{int(ahead), ProblemAnchor, fmt.Sprintf("the anchor holds entry %d, and the local ledger ends at entry %d: the ledger was cut, rolled back or replaced", ahead, ar.Local)})
	}
	sort.Slice(differs, func(i, j int) bool { return differs[i] < differs[j] })
	for i, idx := range differs {
		if i == 10 {
			ar.Problems = append(ar.Problems, Problem{int(idx), ProblemAnchor, fmt.Sprintf("and %d more entries differ from the anchor's copy", len(differs)-10)})
			break
		}
		ar.Problems = append(ar.Problems, Problem{int(idx), ProblemAnchor, fmt.Sprintf("entry %d differs from the anchor's copy: the ledger was rewritten (and re-signed, if its signature verifies)", idx)})
	}
	if ar.Local > ar.Anchored && len(ar.Problems) == 0 {
		ar.Notes = append(ar.Notes, fmt.Sprintf("entries %d to %d are not in the anchor yet (sent as they are written; the gateway logs an anchor it cannot reach)", ar.Anchored+1, ar.Local))
	}
	return ar
}
