package recorder

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// MaxLineBytes bounds one recorded event.
const MaxLineBytes = 16 << 20

// Problem is one way a recording (or a ledger, or an anchor) differs from
// what the gateway wrote.
type Problem struct {
	// Line is the 1-based line (event index, or ledger entry) where it
	// shows.
	Line int `json:"line"`
	// Kind is one of the Problem kinds below.
	Kind    string `json:"kind"`
	Message string `json:"message"`
}

// Problem kinds. All but ProblemIncomplete are evidence of tampering (or
// of damage no crash causes).
const (
	ProblemEdited     = "edited"
	ProblemDeleted    = "deleted"
	ProblemReordered  = "reordered"
	ProblemTruncated  = "truncated" // a torn last line
	ProblemMalformed  = "malformed"
	ProblemBadSeal    = "bad_seal"
	ProblemIncomplete = "incomplete" // the gateway recorded a gap
	// ProblemCut: the recording stops below a head the ledger holds.
	ProblemCut = "cut"
	// ProblemDiffers: an event does not hash to the head the ledger holds.
	ProblemDiffers = "differs"
	// ProblemMissing: the ledger names a recording that is not there.
	ProblemMissing = "missing"
	// ProblemUnlisted: a recording the ledger does not name.
	ProblemUnlisted = "unlisted"
	// ProblemLedger: the ledger itself is broken (a gap, a broken link, a
	// bad signature, an entry that does not parse) or missing.
	ProblemLedger = "ledger"
	// ProblemAnchor: the ledger differs from its anchor's copy, or ends
	// before it.
	ProblemAnchor = "anchor"
)

// Report is the result of verifying one recording.
type Report struct {
	Path    string `json:"path"`
	Session string `json:"session"`
	// Format is the start event's format (0 for format 1).
	Format int  `json:"format"`
	Events int  `json:"events"`
	Sealed bool `json:"sealed"`
	// Crashed: the seal was made at the gateway's next start for a
	// session a crash left open (SealCrashed).
	Crashed  bool      `json:"crashed,omitempty"`
	Problems []Problem `json:"problems"`
	// Verified is the number of leading events whose chain holds.
	Verified int `json:"verified"`
	// Status sums it up (Status* constants); Audit sets it.
	Status string `json:"status,omitempty"`
	// Notes say what the ledger says of the recording, for people.
	Notes []string `json:"notes,omitempty"`
}

// OK reports whether the recording is intact and sealed (a crashed seal
// included).
func (r *Report) OK() bool { return len(r.Problems) == 0 && r.Sealed }

// Pin is a head the ledger holds for a recording: event Events hashes to
// Head. Entry is the ledger entry that holds it, What its type.
type Pin struct {
	Events int
	Head   string
	Entry  uint64
	What   string
}

// Verify checks one recording: every line parses, sequence numbers run
// 1, 2, 3..., every event's prev is the hash of the line before it, and the
// last event is a seal whose signature verifies with a trusted key. A
// recording that ends without a seal (the gateway stopped mid-session) is
// reported as unsealed, with the events up to the last intact one verified.
// A crashed seal (SealCrashed) verifies, and is reported as one.
func Verify(path string, trusted bundle.Keyring) (*Report, error) {
	return VerifyPinned(path, trusted, nil)
}

// VerifyPinned is Verify, and checks the recording against the heads a
// ledger holds for it: an event that does not hash to its pinned head is
// a problem (differs), and so is a recording that stops below the highest
// pin (cut: its tail was removed, at a line boundary or not).
func VerifyPinned(path string, trusted bundle.Keyring, pins []Pin) (*Report, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rep := &Report{Path: path, Session: strings.TrimSuffix(filepath.Base(path), ".jsonl"), Problems: []Problem{}}
	br := bufio.NewReaderSize(f, 64<<10)
	var raws [][]byte
	for {
		raw, err := readLine(br)
		if err == io.EOF {
			break
		}
		if err != nil {
			rep.Problems = append(rep.Problems, Problem{len(raws) + 1, "malformed", err.Error()})
			break
		}
		raws = append(raws, raw)
	}
	byEvents := map[int][]Pin{}
	var top Pin
	for _, p := range pins {
		byEvents[p.Events] = append(byEvents[p.Events], p)
		if p.Events > top.Events {
			top = p
		}
	}
	// Where each sequence number appears, to tell a move from a removal.
	seen := map[int]bool{}
	for _, raw := range raws {
		var head struct {
			Seq int `json:"seq"`
		}
		if json.Unmarshal(bytes.TrimSuffix(raw, []byte("\n")), &head) == nil {
			seen[head.Seq] = true
		}
	}
	prevHash := ""
	broken := false
	for i, raw := range raws {
		line := i + 1
		rep.Events = line
		if !bytes.HasSuffix(raw, []byte("\n")) {
			rep.Problems = append(rep.Problems, Problem{line, "truncated", "the last line is incomplete: a write was cut short (the gateway stopped while recording)"})
			rep.Events = line - 1
			break
		}
		raw = bytes.TrimSuffix(raw, []byte("\n"))
		var ev Event
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&ev); err != nil {
			rep.Problems = append(rep.Problems, Problem{line, "edited", fmt.Sprintf("not an event the gateway writes: %v", err)})
			broken = true
			prevHash = hashLine(raw)
			continue
		}
		if rep.Sealed {
			rep.Problems = append(rep.Problems, Problem{line, "edited", "an event follows the seal"})
			broken = true
		}
		switch {
		case ev.Seq > line && seen[line]:
			rep.Problems = append(rep.Problems, Problem{line, "reordered", fmt.Sprintf("event %d is at position %d, and event %d comes later: events were moved", ev.Seq, line, line)})
			broken = true
		case ev.Seq > line:
			rep.Problems = append(rep.Problems, Problem{line, "deleted", fmt.Sprintf("event %d follows event %d: %d event(s) before it are missing", ev.Seq, line-1, ev.Seq-line)})
			broken = true
		case ev.Seq < line:
			rep.Problems = append(rep.Problems, Problem{line, "reordered", fmt.Sprintf("event %d is at position %d: events were moved or duplicated", ev.Seq, line)})
			broken = true
		}
		if ev.Prev != prevHash {
			kind := "edited"
			if line > 1 {
				rep.Problems = append(rep.Problems, Problem{line - 1, kind, fmt.Sprintf("event %d does not hash to what event %d records: it was changed, or events around it were removed or moved", line-1, line)})
			} else {
				rep.Problems = append(rep.Problems, Problem{line, kind, "the first event has a previous hash: the recording's beginning was removed"})
			}
			broken = true
		}
		if line == 1 && (ev.Type != TypeStart || ev.Session != rep.Session) {
			rep.Problems = append(rep.Problems, Problem{line, "edited", "the recording does not begin with this session's start event"})
			broken = true
		}
		if line == 1 {
			rep.Format = ev.Format
		}
		if ev.Type == TypeGap {
			rep.Problems = append(rep.Problems, Problem{line, "incomplete", fmt.Sprintf("the gateway could not write %d event(s) here (%s): results or masks of earlier statements are missing", ev.Lost, ev.Reason)})
		}
		if ev.Type == TypeSeal {
			checkSeal(rep, line, &ev, trusted)
		}
		if !broken {
			rep.Verified = line
		}
		prevHash = hashLine(raw)
		for _, p := range byEvents[line] {
			if p.Head != prevHash {
				rep.Problems = append(rep.Problems, Problem{line, ProblemDiffers, fmt.Sprintf("event %d does not hash to the head the ledger's %s entry %d holds for it: the recording was rewritten", line, p.What, p.Entry)})
				break
			}
		}
	}
	if top.Events > rep.Events {
		rep.Problems = append(rep.Problems, Problem{rep.Events + 1, ProblemCut, fmt.Sprintf("the recording stops at event %d, and the ledger's %s entry %d holds it at event %d: events were cut from its tail", rep.Events, top.What, top.Entry, top.Events)})
	}
	return rep, nil
}

// checkSeal verifies a seal event at line: an ordinary seal, or a crashed
// one (its own message, and Ref naming the event before it).
func checkSeal(rep *Report, line int, ev *Event, trusted bundle.Keyring) {
	msg := sealMessage(rep.Session, ev.Prev)
	if ev.Kind == SealCrashed {
		msg = crashSealMessage(rep.Session, ev.Prev)
	}
	sig, err := hex.DecodeString(ev.Signature)
	pub, ok := trusted[ev.KeyID]
	switch {
	case ev.Kind != "" && ev.Kind != SealCrashed:
		rep.Problems = append(rep.Problems, Problem{line, "bad_seal", fmt.Sprintf("a seal of unknown kind %q", ev.Kind)})
	case ev.Kind == SealCrashed && ev.Ref != line-1:
		rep.Problems = append(rep.Problems, Problem{line, "edited", fmt.Sprintf("the crashed seal names event %d as the last, and follows event %d", ev.Ref, line-1)})
	case !ok:
		rep.Problems = append(rep.Problems, Problem{line, "bad_seal", fmt.Sprintf("sealed by key %q, which is not trusted", ev.KeyID)})
	case err != nil || !ed25519.Verify(pub, msg, sig):
		rep.Problems = append(rep.Problems, Problem{line, "bad_seal", "the seal's signature does not verify: the recording was changed after it was sealed"})
	default:
		rep.Sealed = true
		rep.Crashed = ev.Kind == SealCrashed
	}
}

func readLine(br *bufio.Reader) ([]byte, error) {
	var buf []byte
	for {
		chunk, err := br.ReadSlice('\n')
		buf = append(buf, chunk...)
		if len(buf) > MaxLineBytes {
			return nil, fmt.Errorf("a line is over %d bytes", MaxLineBytes)
		}
		switch err {
		case nil:
			return buf, nil
		case bufio.ErrBufferFull:
			continue
		case io.EOF:
			if len(buf) == 0 {
				return nil, io.EOF
			}
			return buf, nil
		default:
			return nil, err
		}
	}
}

// Summary describes a recording for listings.
type Summary struct {
	Session  string    `json:"session"`
	Path     string    `json:"path"`
	Started  time.Time `json:"started"`
	Identity string    `json:"identity"`
	Subject  string    `json:"subject"`
	Resource string    `json:"resource"`
	Events   int       `json:"events"`
	Sealed   bool      `json:"sealed"`
	// Crashed: sealed at the next start after a crash.
	Crashed bool `json:"crashed,omitempty"`
}

// List summarises the recordings in dir, oldest first. It reads each file's
// first event and checks only whether it ends with a seal; use Verify to
// check integrity.
func List(dir string) ([]Summary, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []Summary
	for _, e := range entries {
		if e.IsDir() || !isSessionFile(e.Name()) {
			continue
		}
		path := filepath.Join(dir, e.Name())
		evs, err := ReadEvents(path)
		if err != nil || len(evs) == 0 {
			continue
		}
		st := evs[0]
		out = append(out, Summary{
			Session: strings.TrimSuffix(e.Name(), ".jsonl"), Path: path, Started: st.Time,
			Identity: st.Identity, Subject: st.Subject, Resource: st.Resource, Events: len(evs),
			Sealed: evs[len(evs)-1].Type == TypeSeal, Crashed: evs[len(evs)-1].Type == TypeSeal && evs[len(evs)-1].Kind == SealCrashed,
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Started.Before(out[j].Started) })
	return out, nil
}

// ReadEvents reads a recording's events for display, skipping lines that do
// not parse (Verify reports those).
func ReadEvents(path string) ([]Event, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParseEvents(f)
}

// ParseEvents reads a recording's events from r, as ReadEvents does.
func ParseEvents(r io.Reader) ([]Event, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var out []Event
	for {
		raw, err := readLine(br)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		var ev Event
		if json.Unmarshal(bytes.TrimSuffix(raw, []byte("\n")), &ev) == nil {
			out = append(out, ev)
		}
	}
}
