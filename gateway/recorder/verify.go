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

// Problem is one way a recording differs from what the gateway wrote.
type Problem struct {
	// Line is the 1-based line (event index) where it shows.
	Line    int    `json:"line"`
	Kind    string `json:"kind"` // edited, deleted, reordered, truncated, malformed, bad_seal, incomplete
	Message string `json:"message"`
}

// Report is the result of verifying one recording.
type Report struct {
	Path     string    `json:"path"`
	Session  string    `json:"session"`
	Events   int       `json:"events"`
	Sealed   bool      `json:"sealed"`
	Problems []Problem `json:"problems"`
	// Verified is the number of leading events whose chain holds.
	Verified int `json:"verified"`
}

// OK reports whether the recording is intact and sealed.
func (r *Report) OK() bool { return len(r.Problems) == 0 && r.Sealed }

// Verify checks one recording: every line parses, sequence numbers run
// 1, 2, 3..., every event's prev is the hash of the line before it, and the
// last event is a seal whose signature verifies with a trusted key. A
// recording that ends without a seal (the gateway stopped mid-session) is
// reported as unsealed, with the events up to the last intact one verified.
func Verify(path string, trusted bundle.Keyring) (*Report, error) {
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
		if ev.Type == TypeGap {
			rep.Problems = append(rep.Problems, Problem{line, "incomplete", fmt.Sprintf("the gateway could not write %d event(s) here (%s): results or masks of earlier statements are missing", ev.Lost, ev.Reason)})
		}
		if ev.Type == TypeSeal {
			msg := sealMessage(rep.Session, ev.Prev)
			sig, err := hex.DecodeString(ev.Signature)
			pub, ok := trusted[ev.KeyID]
			switch {
			case !ok:
				rep.Problems = append(rep.Problems, Problem{line, "bad_seal", fmt.Sprintf("sealed by key %q, which is not trusted", ev.KeyID)})
			case err != nil || !ed25519.Verify(pub, msg, sig):
				rep.Problems = append(rep.Problems, Problem{line, "bad_seal", "the seal's signature does not verify: the recording was changed after it was sealed"})
			default:
				rep.Sealed = true
			}
		}
		if !broken {
			rep.Verified = line
		}
		prevHash = hashLine(raw)
	}
	return rep, nil
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
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".jsonl") {
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
			Sealed: evs[len(evs)-1].Type == TypeSeal,
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
	br := bufio.NewReaderSize(f, 64<<10)
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
