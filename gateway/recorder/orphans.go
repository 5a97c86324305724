package recorder

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// A session a crash left open leaves a recording without a seal. Open
// seals it, as crashed, so that afterwards an unsealed recording means an
// open session or tampering, never a crash. The crashed seal signs the
// last intact event's hash with a message of its own, its Ref is that
// event's index, and a crash_seal ledger entry records the new head and
// the last event a checkpoint held: the events after that one rest on the
// recording's word alone (whoever could write the data directory while
// the gateway was down could have cut or extended them).
//
// Open seals only what a crash can leave. It does not seal, and reports
// (Recovered, the log, and later audit verify):
//
//   - a recording whose chain breaks before its last line (a torn last
//     line is cut: its event was never acknowledged);
//   - a recording that stops below, or differs at, the last head the
//     ledger holds for it;
//   - a recording the ledger does not name that holds more than its start
//     event (Start returns only once the ledger names the recording, so
//     a crash can leave an unnamed recording of its start alone, in which
//     nothing was forwarded, and nothing else).
//
// A recording that was sealed but whose seal the ledger never received
// (a crash between the two) gets its ledger entry now, once its seal
// verifies with the recorder key.

// sealOrphans seals the recordings of sessions a crash left open. Only a
// failure to write (the ledger, a seal) stops Open.
func (r *Recorder) sealOrphans(sc *ledgerScan) error {
	names, err := recordingNames(r.dir)
	if err != nil {
		return fmt.Errorf("recorder: %w", err)
	}
	onDisk := map[string]bool{}
	for _, id := range names {
		onDisk[id] = true
		head, open := sc.open[id]
		if sc.known[id] && !open {
			continue // sealed, as far as the ledger knows
		}
		if err := r.sealOrphan(id, sc.known[id], head); err != nil {
			return err
		}
	}
	var missing []string
	for id := range sc.open {
		if !onDisk[id] {
			missing = append(missing, id)
		}
	}
	sort.Strings(missing)
	for _, id := range missing {
		r.problem(fmt.Sprintf("recording %s is missing: the ledger names it (its last head holds %d event(s)), and it is not in %s", id, sc.open[id].Events, r.dir))
	}
	return nil
}

// problem notes what Open could not put right (the gateway logs
// Recovered).
func (r *Recorder) problem(msg string) {
	r.Recovered = append(r.Recovered, msg)
}

// sealOrphan puts right one recording the ledger does not hold as sealed:
// it enters a seal the ledger never received, or seals the recording as
// crashed when it is what a crash leaves, or reports it.
func (r *Recorder) sealOrphan(id string, known bool, cp Head) error {
	path := filepath.Join(r.dir, id+".jsonl")
	f, err := os.OpenFile(path, os.O_RDWR|syscall.O_NOFOLLOW, 0)
	if err != nil {
		r.problem(fmt.Sprintf("%s: %v", path, err))
		return nil
	}
	defer f.Close()
	c, hashAt, err := chainedPrefixAt(f, cp.Events)
	if err != nil {
		r.problem(fmt.Sprintf("%s: %v", path, err))
		return nil
	}
	if c.sealed {
		return r.enterLateSeal(path, id, known, c)
	}
	ok, err := r.crashLeftover(f, path, id, known, cp, c, hashAt)
	if !ok || err != nil {
		return err
	}
	return r.crashSeal(f, path, id, known, cp, c)
}

// enterLateSeal writes the ledger entry of a seal the recording holds and
// the ledger never received (a crash between the two), once the seal
// verifies with this recorder's key.
func (r *Recorder) enterLateSeal(path, id string, known bool, c chain) error {
	if !known {
		r.problem(fmt.Sprintf("%s is sealed but the ledger does not name it", path))
		return nil
	}
	rep, err := Verify(path, bundle.NewKeyring(r.pub))
	if err != nil || !rep.OK() || rep.Events != c.seq {
		r.problem(fmt.Sprintf("%s ends with a seal the ledger never received, and it does not verify with this recorder's key", path))
		return nil
	}
	typ := LedgerSeal
	if rep.Crashed {
		typ = LedgerCrashSeal
	}
	_, err = r.l.append(LedgerEntry{Type: typ, Session: id, Events: c.seq, Head: c.prev,
		Reason: "sealed before the gateway stopped; the ledger entry is written at the next start"})
	return err
}

// crashLeftover reports whether an unsealed recording is what a crash
// leaves, and so may be sealed: it cuts a torn last line (never
// acknowledged), removes an empty file the ledger does not name, and
// reports anything else. An error means a write failed.
func (r *Recorder) crashLeftover(f *os.File, path, id string, known bool, cp Head, c chain, hashAt string) (bool, error) {
	fi, err := f.Stat()
	if err != nil {
		r.problem(fmt.Sprintf("%s: %v", path, err))
		return false, nil
	}
	switch {
	case c.seq == 0 && fi.Size() == 0 && !known:
		// Start created the file and the crash came before its first
		// event: nothing was recorded, acknowledged or served.
		if err := os.Remove(path); err != nil {
			r.problem(fmt.Sprintf("%s: %v", path, err))
			return false, nil
		}
		r.log.Warn("removed an empty recording a crash left before its first event", "recording", id)
		return false, nil
	case c.seq == 0:
		r.problem(fmt.Sprintf("%s has no intact event; not sealed", path))
		return false, nil
	case !known && c.seq != 1:
		r.problem(fmt.Sprintf("%s is not in the ledger and holds %d events (a crash leaves only a start event unnamed); not sealed", path, c.seq))
		return false, nil
	}
	if fi.Size() > c.offset {
		tail := make([]byte, fi.Size()-c.offset)
		if _, err := f.ReadAt(tail, c.offset); err != nil && err != io.EOF {
			r.problem(fmt.Sprintf("%s: %v", path, err))
			return false, nil
		}
		if bytes.Contains(tail, []byte("\n")) {
			r.problem(fmt.Sprintf("%s breaks after event %d, before its last line (not what a crash leaves); not sealed", path, c.seq))
			return false, nil
		}
		if err := f.Truncate(c.offset); err != nil {
			return false, fmt.Errorf("recorder: cut the torn last line of %s: %w", path, err)
		}
	}
	if known && cp.Events > 0 {
		if c.seq < cp.Events {
			r.problem(fmt.Sprintf("%s stops at event %d, below the ledger's last head for it (event %d): its tail was cut; not sealed", path, c.seq, cp.Events))
			return false, nil
		}
		if hashAt != cp.Head {
			r.problem(fmt.Sprintf("%s: event %d differs from the head the ledger holds for it; not sealed", path, cp.Events))
			return false, nil
		}
	}
	return true, nil
}

// crashSeal appends a crashed seal after the recording's last intact
// event, makes it durable, and records it in the ledger.
func (r *Recorder) crashSeal(f *os.File, path, id string, known bool, cp Head, c chain) error {
	reason := "the gateway stopped without ending the session (a crash, a kill or a power loss); sealed at its next start"
	if !known {
		reason = "the gateway stopped while the session was starting, before the ledger named it (nothing was forwarded in it); sealed at its next start"
	}
	sig, err := r.sign(crashSealMessage(id, c.prev))
	if err != nil {
		return err
	}
	ev := Event{Seq: c.seq + 1, Time: time.Now().UTC(), Type: TypeSeal, Prev: c.prev, Kind: SealCrashed, Ref: c.seq,
		Reason: reason, KeyID: r.keyID, Signature: hex.EncodeToString(sig)}
	line, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("recorder: encode: %w", err)
	}
	if _, err := f.WriteAt(append(line, '\n'), c.offset); err != nil {
		return fmt.Errorf("recorder: seal %s: %w", path, err)
	}
	if err := r.sync(f); err != nil {
		return fmt.Errorf("recorder: sync %s: %w", path, err)
	}
	checkpointed := 0
	if known {
		checkpointed = cp.Events
	}
	if _, err := r.l.append(LedgerEntry{Type: LedgerCrashSeal, Session: id, Events: ev.Seq, Head: hashLine(line),
		Checkpointed: checkpointed, Reason: reason}); err != nil {
		return err
	}
	r.CrashSealed = append(r.CrashSealed, id)
	r.log.Warn("sealed a recording a crash left open", "recording", id, "events", c.seq, "checkpointed", checkpointed)
	return nil
}
