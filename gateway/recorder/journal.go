package recorder

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
)

// The journal is how concurrent sessions share one fdatasync. Every event
// is written twice: to its session's recording (not synced) and to one
// journal file for the whole recorder, as "SESSION\tLINE\n". A group
// commit makes the journal durable: whoever waits first syncs it for
// everyone whose event was written by then, and the others wait for that
// one sync instead of each syncing a file of their own. An event is durable
// once the journal holds it; a recording catches up from the journal when
// the recorder is next opened after a crash (power loss: a killed process
// loses nothing, its writes are in the page cache).
//
// The journal is emptied at a checkpoint, once every open recording has
// been synced, when it grows past JournalCheckpointBytes, and on Close.
// Recordings that ended are synced by End and need no journal.

// JournalName is the journal's file name in the recordings directory.
const JournalName = "recorder.journal"

// JournalCheckpointBytes is the size past which the journal is emptied.
var JournalCheckpointBytes int64 = 16 << 20

// ErrPoisoned wraps every error after an fdatasync failed: after a failed
// sync the kernel may have dropped the unsynced pages, so nothing written
// since the last good sync can be called durable again. The recorder
// refuses all further events (and the gateway every statement) until it is
// restarted, as PostgreSQL does.
var ErrPoisoned = errors.New("recorder: an fdatasync failed earlier; nothing can be recorded durably until the gateway restarts")

type journal struct {
	r    *Recorder
	path string

	// mu orders writes: an event's recording line and journal entry are
	// written together, so the journal's order is the recordings' order.
	mu      sync.Mutex
	f       *os.File
	size    int64
	written uint64 // tickets handed out: one per journal entry
	open    map[*Session]struct{}
	closed  bool

	// cmu guards the group commit.
	cmu     sync.Mutex
	cond    *sync.Cond
	synced  uint64 // every ticket up to here is durable
	syncing bool
	poison  error
}

func openJournal(r *Recorder) (*journal, error) {
	j := &journal{r: r, path: filepath.Join(r.dir, JournalName), open: map[*Session]struct{}{}}
	j.cond = sync.NewCond(&j.cmu)
	if err := j.recover(); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(j.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("recorder: journal: %w", err)
	}
	if err := r.Sync(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("recorder: journal: %w", err)
	}
	j.f = f
	return j, nil
}

// write appends line to s's recording and to the journal, and returns the
// entry's ticket. On a failed write both files are cut back to where they
// were, so neither holds half an event.
func (j *journal) write(s *Session, line []byte) (uint64, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return 0, errors.New("recorder: closed")
	}
	if err := j.poisoned(); err != nil {
		return 0, err
	}
	if _, err := s.f.Write(line); err != nil {
		_ = s.f.Truncate(s.size)
		return 0, fmt.Errorf("recorder: write %s: %w", s.Path, err)
	}
	entry := make([]byte, 0, len(s.id)+1+len(line))
	entry = append(append(append(entry, s.id...), '\t'), line...)
	if _, err := j.f.Write(entry); err != nil {
		_ = j.f.Truncate(j.size)
		_ = s.f.Truncate(s.size)
		return 0, fmt.Errorf("recorder: write %s: %w", j.path, err)
	}
	s.size += int64(len(line))
	j.size += int64(len(entry))
	j.written++
	return j.written, nil
}

func (j *journal) poisoned() error {
	j.cmu.Lock()
	defer j.cmu.Unlock()
	return j.poison
}

// commit returns once ticket is durable: it syncs the journal itself, for
// every entry written so far, unless a sync is under way, in which case it
// waits for that one (and syncs after it if its ticket came too late).
func (j *journal) commit(ticket uint64) error {
	j.cmu.Lock()
	defer j.cmu.Unlock()
	for j.synced < ticket {
		if j.poison != nil {
			return j.poison
		}
		if j.syncing {
			j.cond.Wait()
			continue
		}
		j.syncing = true
		j.cmu.Unlock()
		target, err := j.sync()
		j.cmu.Lock()
		j.syncing = false
		if err != nil {
			j.poison = fmt.Errorf("%w (%v)", ErrPoisoned, err)
		} else if target > j.synced {
			j.synced = target
		}
		j.cond.Broadcast()
	}
	return nil
}

// sync makes every entry written so far durable, and returns the last
// ticket it covers. Past JournalCheckpointBytes it checkpoints instead:
// every open recording is synced and the journal emptied.
func (j *journal) sync() (uint64, error) {
	j.mu.Lock()
	target := j.written
	if j.size < JournalCheckpointBytes {
		j.mu.Unlock()
		// Writers go on appending while the disk works; their entries
		// are the next batch.
		return target, j.r.Sync(j.f)
	}
	defer j.mu.Unlock()
	return target, j.checkpointLocked()
}

// checkpointLocked syncs every open recording, then empties the journal.
// j.mu is held, so nothing is written meanwhile.
func (j *journal) checkpointLocked() error {
	for s := range j.open {
		if err := j.r.Sync(s.f); err != nil {
			return fmt.Errorf("sync %s: %w", s.Path, err)
		}
	}
	if err := j.f.Truncate(0); err != nil {
		return fmt.Errorf("truncate %s: %w", j.path, err)
	}
	if err := j.r.Sync(j.f); err != nil {
		return fmt.Errorf("sync %s: %w", j.path, err)
	}
	j.size = 0
	return nil
}

// forget drops a recording that End has synced and closed.
func (j *journal) forget(s *Session) {
	j.mu.Lock()
	delete(j.open, s)
	j.mu.Unlock()
}

func (j *journal) add(s *Session) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return errors.New("recorder: closed")
	}
	j.open[s] = struct{}{}
	return nil
}

// close checkpoints and closes the journal. Sessions still open keep their
// recordings, synced; their further events fail.
func (j *journal) close() error {
	j.cmu.Lock()
	for j.syncing {
		j.cond.Wait()
	}
	j.syncing = true // no group commit may touch the file from here on
	poisoned := j.poison
	j.cmu.Unlock()

	j.mu.Lock()
	var err error
	if !j.closed {
		j.closed = true
		if poisoned == nil {
			err = j.checkpointLocked()
		}
		if cerr := j.f.Close(); err == nil {
			err = cerr
		}
	}
	written := j.written
	j.mu.Unlock()

	j.cmu.Lock()
	j.syncing = false
	if err == nil && poisoned == nil {
		j.synced = written // the checkpoint synced every recording
	}
	j.cond.Broadcast()
	j.cmu.Unlock()
	return err
}

// fail poisons the recorder after a failed fdatasync outside the group
// commit.
func (j *journal) fail(err error) error {
	j.cmu.Lock()
	defer j.cmu.Unlock()
	if j.poison == nil {
		j.poison = fmt.Errorf("%w (%v)", ErrPoisoned, err)
	}
	j.cond.Broadcast()
	return j.poison
}

// recover brings recordings up to date from a journal left by a recorder
// that did not close it: for each session in it, the recording's torn last
// line (if any) is cut, and the journal's entries after the recording's
// last complete event are appended, in order, then synced. An entry that
// does not follow on from the recording (a gap in sequence numbers) is not
// appended: recovery never invents a chain that Verify would then accept.
func (j *journal) recover() error {
	data, err := os.ReadFile(j.path)
	if errors.Is(err, os.ErrNotExist) || (err == nil && len(data) == 0) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("recorder: journal: %w", err)
	}
	var order []string
	entries := map[string][][]byte{}
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break // a torn last entry: its event was never durable
		}
		entry := data[:i+1]
		data = data[i+1:]
		id, line, ok := bytes.Cut(entry, []byte{'\t'})
		if !ok || !sessionIDRE.Match(id) {
			continue
		}
		if _, seen := entries[string(id)]; !seen {
			order = append(order, string(id))
		}
		entries[string(id)] = append(entries[string(id)], line)
	}
	var errs []error
	for _, id := range order {
		if err := j.recoverSession(id, entries[id]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (j *journal) recoverSession(id string, lines [][]byte) error {
	path := filepath.Join(j.r.dir, id+".jsonl")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("recorder: recover %s: %w", path, err)
	}
	defer f.Close()
	lastSeq, good, err := lastComplete(f)
	if err != nil {
		return fmt.Errorf("recorder: recover %s: %w", path, err)
	}
	if err := f.Truncate(good); err != nil {
		return fmt.Errorf("recorder: recover %s: %w", path, err)
	}
	if _, err := f.Seek(good, io.SeekStart); err != nil {
		return err
	}
	for _, line := range lines {
		seq := seqOf(line)
		if seq <= lastSeq {
			continue // the recording has it
		}
		if seq != lastSeq+1 {
			return fmt.Errorf("recorder: recover %s: the journal's next event is %d, the recording ends at %d; not appending", path, seq, lastSeq)
		}
		if _, err := f.Write(line); err != nil {
			return fmt.Errorf("recorder: recover %s: %w", path, err)
		}
		lastSeq = seq
	}
	return j.r.Sync(f)
}

// lastComplete reads a recording and returns the sequence number of its
// last complete line and the offset just after it.
func lastComplete(f *os.File) (seq int, offset int64, err error) {
	br := bufio.NewReaderSize(f, 64<<10)
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 && line[len(line)-1] == '\n' {
			seq = seqOf(line)
			offset += int64(len(line))
		}
		if err == io.EOF {
			return seq, offset, nil
		}
		if err != nil {
			return 0, 0, err
		}
	}
}

func seqOf(line []byte) int {
	var ev struct {
		Seq int `json:"seq"`
	}
	_ = json.Unmarshal(line, &ev)
	return ev.Seq
}
