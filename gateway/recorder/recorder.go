// Package recorder keeps a tamper-evident log of every session: one
// append-only JSONL file per session in which each event carries the
// SHA-256 of the line before it, and the last event, the seal, carries an
// ed25519 signature by the gateway's recorder key over the chain's head.
// A ledger (ledger.go) chains every session's start, checkpoints and seal
// across the whole recordings directory, so that a recording deleted, or
// cut below what the ledger holds, is found; its entries can be anchored
// outside the host (anchor.go).
//
// An event is durable before Record returns, and the proxy forwards a
// statement only after its event is recorded: when the recorder cannot
// write, the statement is refused. Trusted systems refuse to act when they
// cannot record, and so does the gateway. Concurrent sessions share their
// fdatasyncs through a journal and a group commit (journal.go).
//
// Editing, deleting, reordering or truncating lines is detected by Verify,
// which needs only the recorder's public key; Audit checks a directory
// against its ledger and an anchor.
package recorder

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// Recorder writes recordings into a directory.
type Recorder struct {
	dir   string
	key   crypto.Signer
	pub   ed25519.PublicKey
	keyID string
	log   *slog.Logger
	// sync is the durability step (fdatasync; tests simulate a failing
	// disk with WithSync).
	sync func(*os.File) error
	// checkpointBytes is the journal size past which it is emptied.
	checkpointBytes int64
	// interval is how often the ledger checkpoints open sessions.
	interval time.Duration
	anchor   Anchor
	// onSeal is told of every recording End closed (WithOnSeal).
	onSeal func(session string)
	// onStart is told of every recording Start began (WithOnStart).
	onStart func(session string, start Event)

	// Recovered lists what Open could not repair from a journal left by a
	// crash, and the recordings it could not seal (the gateway logs it;
	// Audit reports those recordings).
	Recovered []string
	// CrashSealed lists the recordings Open sealed for sessions that a
	// crash left open.
	CrashSealed []string
	// Stats count what the recorder did, for metrics.
	Stats Stats

	j   *journal
	l   *ledger
	exp *exporter // nil without an anchor
	// cpMu makes checkpoints one at a time; stopBG stops the checkpoint
	// and export goroutines and waits for them.
	cpMu   sync.Mutex
	stopBG func()

	closeOnce sync.Once
	closeErr  error
}

// Option configures a Recorder.
type Option func(*Recorder)

// WithSync replaces fdatasync as the durability step: tests simulate a
// disk that fails, or one that is slow.
func WithSync(fn func(*os.File) error) Option { return func(r *Recorder) { r.sync = fn } }

// WithCheckpointBytes sets the journal size past which it is emptied
// (default 16 MiB).
func WithCheckpointBytes(n int64) Option { return func(r *Recorder) { r.checkpointBytes = n } }

// DefaultCheckpointInterval is how often the ledger records the head of
// every open session unless WithCheckpointInterval says otherwise.
const DefaultCheckpointInterval = 30 * time.Second

// WithCheckpointInterval sets how often the ledger records the head of
// every open session whose recording grew (default 30s; 0: only at
// Close). Events after a session's last checkpoint are the ones a cut of
// its tail can take unnoticed while the gateway is down.
func WithCheckpointInterval(d time.Duration) Option { return func(r *Recorder) { r.interval = d } }

// WithAnchor exports every ledger entry, once durable, to an anchor off
// the host (anchor.go). Export is asynchronous: an anchor that cannot be
// reached holds nothing up, is retried, and is logged.
func WithAnchor(a Anchor) Option { return func(r *Recorder) { r.anchor = a } }

// WithLogger sets where the recorder reports what it repaired, sealed
// after a crash, or could not anchor (default: nowhere).
func WithLogger(l *slog.Logger) Option { return func(r *Recorder) { r.log = l } }

// Open prepares a recorder writing into dir (created 0700), which it locks
// for its lifetime. key signs seals and ledger entries; it must have an
// ed25519 public key (an ed25519.PrivateKey, or a key in a PKCS#11 token),
// and when it is an io.Closer, Close closes it.
//
// What a crash left is put right first, in this order: the journal is
// replayed into the recordings, the ledger's unsynced tail is cut, and
// every recording whose session never ended is sealed as crashed, with a
// ledger entry that says so. A ledger whose chain is broken before its
// tail stops Open: that is not what a crash leaves.
func Open(dir string, key crypto.Signer, opts ...Option) (*Recorder, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("recorder: %w", err)
	}
	pub, ok := key.Public().(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("recorder: the signing key is %T; recordings are sealed with ed25519 keys", key.Public())
	}
	r := &Recorder{dir: dir, key: key, pub: pub, keyID: bundle.KeyID(pub), sync: fdatasync, checkpointBytes: 16 << 20,
		interval: DefaultCheckpointInterval, log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(r)
	}
	j, err := openJournal(r)
	if err != nil {
		return nil, err
	}
	r.j = j
	if err := r.openLedger(); err != nil {
		_ = j.close()
		j.lock.Close()
		return nil, err
	}
	r.startBackground()
	return r, nil
}

// Close syncs every open recording, empties the journal, writes the
// ledger's close entry with the head of every session still open, sends
// what the anchor lacks (for a few seconds at most), and unlocks the
// directory. Events recorded after Close fail; a second Close returns
// the first one's result.
func (r *Recorder) Close() error {
	r.closeOnce.Do(func() {
		r.stopBG()
		err := r.j.close()
		if err == nil {
			_, err = r.l.append(LedgerEntry{Type: LedgerClose, Sessions: r.openHeads()})
		}
		r.exp.flush()
		err = errors.Join(err, r.l.close())
		r.j.lock.Close()
		if c, ok := r.key.(io.Closer); ok {
			err = errors.Join(err, c.Close())
		}
		r.closeErr = err
	})
	return r.closeErr
}

// sign signs msg with the recorder key (pure Ed25519).
func (r *Recorder) sign(msg []byte) ([]byte, error) {
	sig, err := r.key.Sign(rand.Reader, msg, crypto.Hash(0))
	if err != nil {
		return nil, fmt.Errorf("recorder: sign: %w", err)
	}
	return sig, nil
}

// PublicKey is the recorder key's public half, which verifies its seals
// and ledger entries.
func (r *Recorder) PublicKey() ed25519.PublicKey { return r.pub }

// Healthy returns the error that keeps the recorder from recording
// anything (a failed fdatasync), or nil.
func (r *Recorder) Healthy() error { return r.j.poisoned() }

// fdatasync makes a file's data (and the size it needs) durable, which is
// all an appended event needs.
func fdatasync(f *os.File) error { return unix.Fdatasync(int(f.Fd())) }

// Fdatasync is the default durability step, for a WithSync that wraps it.
func Fdatasync(f *os.File) error { return fdatasync(f) }

// LoadOrCreateKey reads the recorder's signing key from path, creating it
// (0600, with the public key beside it as path.pub) on first use.
func LoadOrCreateKey(path string) (ed25519.PrivateKey, error) {
	if k, err := bundle.LoadPrivateKey(path); err == nil {
		return k, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	k, err := bundle.GenerateKey()
	if err != nil {
		return nil, err
	}
	priv, err := bundle.MarshalPrivateKey(k)
	if err != nil {
		return nil, err
	}
	pub, err := bundle.MarshalPublicKey(k.Public().(ed25519.PublicKey))
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, priv, 0o600); err != nil {
		return nil, fmt.Errorf("recorder: write key: %w", err)
	}
	if err := os.WriteFile(PublicKeyPath(path), pub, 0o644); err != nil {
		return nil, fmt.Errorf("recorder: write public key: %w", err)
	}
	return k, nil
}

// PublicKeyPath is where LoadOrCreateKey keeps the public key.
func PublicKeyPath(keyPath string) string {
	return strings.TrimSuffix(keyPath, ".key") + ".pub"
}

// Dir is where recordings are written.
func (r *Recorder) Dir() string { return r.dir }

var sessionIDRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,128}$`)

// isSessionFile reports whether a file name in a recordings directory is a
// recording (and not the ledger).
func isSessionFile(name string) bool {
	id, ok := strings.CutSuffix(name, ".jsonl")
	return ok && name != LedgerName && sessionIDRE.MatchString(id)
}

// Session is one session's recording. It is safe for concurrent use.
type Session struct {
	r      *Recorder
	id     string
	mu     sync.Mutex
	f      *os.File
	size   int64 // bytes of whole events written
	seq    int
	prev   string
	sealed bool
	// ticket is the journal entry of the last event written, and
	// checkpointed the event the ledger last recorded as the head.
	ticket       uint64
	checkpointed int
	// lost counts events that could not be written since the last one
	// that was; the next write records a gap event first.
	lost    int
	lostErr string
	Path    string
	// line is the last event's line, whose memory the next one reuses:
	// the journal copies a line, and nothing keeps it after write.
	line []byte
}

// maxKeptLine bounds the line memory an idle session keeps.
const maxKeptLine = 4 << 10

// Start creates a session's recording and writes its first event.
func (r *Recorder) Start(id string, start Event) (*Session, error) {
	if !sessionIDRE.MatchString(id) || id+".jsonl" == LedgerName {
		return nil, fmt.Errorf("recorder: session id %q is not a file name", id)
	}
	path := filepath.Join(r.dir, id+".jsonl")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		r.Stats.Errors.Add(1)
		return nil, fmt.Errorf("recorder: %w", err)
	}
	s := &Session{r: r, id: id, f: f, Path: path}
	if err := r.j.add(s); err != nil {
		r.Stats.Errors.Add(1)
		f.Close()
		return nil, err
	}
	start.Type, start.Session, start.Format = TypeStart, id, FormatVersion
	if start.Time.IsZero() {
		start.Time = time.Now().UTC()
	}
	if _, err := s.Record(start); err != nil {
		r.j.forget(s)
		f.Close()
		return nil, err
	}
	// The start event is durable before the ledger names the recording,
	// so the ledger never names one a crash kept from being written. A
	// crash between the two leaves a recording of its start alone, not in
	// the ledger, in which nothing was forwarded: the next Open seals it.
	if _, err := r.l.append(LedgerEntry{Type: LedgerStart, Session: id, Events: s.seq, Head: s.prev}); err != nil {
		r.Stats.Errors.Add(1)
		s.abandon()
		return nil, err
	}
	// The start entry holds the first head: no checkpoint needs to
	// repeat it.
	s.mu.Lock()
	s.checkpointed = max(s.checkpointed, 1)
	s.mu.Unlock()
	if r.onStart != nil {
		r.onStart(id, start)
	}
	return s, nil
}

// abandon closes a recording whose session was refused after its start
// event was written (the ledger could not name it). It stays as it is,
// its start alone, for the next Open to seal.
func (s *Session) abandon() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sealed = true
	if err := s.r.sync(s.f); err != nil {
		_ = s.r.j.fail(fmt.Errorf("sync %s: %w", s.Path, err))
	}
	s.r.j.forget(s)
	s.f.Close()
}

// ErrSealed is returned for events after the seal.
var ErrSealed = errors.New("recorder: the recording is sealed")

// Record appends an event and makes it durable before returning its
// sequence number. An error means the event is not recorded: the caller
// must not act on what it describes. The time it took is counted in the
// recorder's Stats.
//
// The disk is waited for outside the session's lock: a session's parallel
// requests (a Kubernetes caller's, an SSH connection's channels) write
// their events meanwhile, and one fdatasync makes them all durable.
func (s *Session) Record(ev Event) (int, error) {
	start := time.Now()
	s.mu.Lock()
	if s.sealed {
		s.mu.Unlock()
		return 0, ErrSealed
	}
	seq, err := s.appendLocked(ev, false)
	ticket := s.ticket
	s.mu.Unlock()
	if err == nil {
		err = s.r.j.commit(ticket)
	}
	if err != nil {
		s.r.Stats.Errors.Add(1)
		return 0, err
	}
	s.r.Stats.observe(time.Since(start))
	return seq, nil
}

// RecordAsync appends an event and starts making it durable, without
// waiting: wait returns once it is durable (nil), or why it cannot be.
// It is for the overlapped mode, where a statement is forwarded once its
// event is written and its response is held until wait returns nil; a
// crash in between can lose the event of a statement that ran, whose
// response the caller never got. Record is the default: durable before
// forwarded. An error means the event is not even written.
func (s *Session) RecordAsync(ev Event) (seq int, wait func() error, err error) {
	start := time.Now()
	s.mu.Lock()
	if s.sealed {
		s.mu.Unlock()
		return 0, nil, ErrSealed
	}
	seq, err = s.appendLocked(ev, false)
	ticket := s.ticket
	s.mu.Unlock()
	if err != nil {
		s.r.Stats.Errors.Add(1)
		return 0, nil, err
	}
	s.r.j.mayForward(ticket)
	done := make(chan error, 1)
	go func() {
		err := s.r.j.commit(ticket)
		if err == nil {
			// The write's latency, not the upstream's: observed when the
			// event is durable, not when the caller waits.
			s.r.Stats.observe(time.Since(start))
		} else {
			// Counted here: a caller may never wait (its session ended).
			s.r.Stats.Errors.Add(1)
		}
		done <- err
	}()
	var once sync.Once
	var result error
	return seq, func() error {
		once.Do(func() { result = <-done })
		return result
	}, nil
}

// Barrier returns once the event of every statement that may have been
// forwarded so far, by any session, is durable, or says why it cannot be.
// In the overlapped mode a protocol calls it before anything reaches its
// caller: a response may show the effects of any statement already
// forwarded (another session's committed row, its NOTIFY), and every such
// statement's event was written (RecordAsync) before it was forwarded, so
// none is shown before its event is durable. Events of Record are durable
// before their statements go anywhere, and those of Append (results,
// masks) tell of what already happened: Barrier does not wait for them,
// so a statement's own result does not cost a second fdatasync.
func (s *Session) Barrier() error { return s.r.Barrier() }

// Barrier is Session.Barrier for the whole recorder.
func (r *Recorder) Barrier() error { return r.j.commit(r.j.forwarded.Load()) }

// Append appends an event without waiting for the disk: the next Record or
// End makes it durable along with its own event (one file, appended in
// order, so a crash can only lose a tail). It is for events about what has
// already happened, a statement's result or the masks applied to it, which
// must not hold up the data path with an fdatasync of their own.
func (s *Session) Append(ev Event) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sealed {
		return 0, ErrSealed
	}
	seq, err := s.appendLocked(ev, false)
	if err != nil {
		s.r.Stats.Errors.Add(1)
	}
	return seq, err
}

func (s *Session) appendLocked(ev Event, durable bool) (int, error) {
	if s.lost > 0 {
		// Say what is missing before anything else is written.
		gap := Event{Type: TypeGap, Lost: s.lost, Reason: s.lostErr}
		lost := s.lost
		s.lost = 0
		if _, err := s.write(gap); err != nil {
			s.lost = lost
			return 0, s.failed(ev, err)
		}
	}
	ticket, err := s.write(ev)
	if err != nil {
		return 0, s.failed(ev, err)
	}
	if durable {
		if err := s.r.j.commit(ticket); err != nil {
			return 0, err
		}
	}
	return s.seq, nil
}

// failed notes an event that could not be written. A statement's event
// (Record) refuses its statement, so nothing is missing from the story;
// any other event (a result, the masks applied, the end) is a hole that
// the next write records as a gap.
func (s *Session) failed(ev Event, err error) error {
	if !IsRequest(ev.Type) && ev.Type != TypeStart {
		s.lost++
		if s.lostErr == "" {
			s.lostErr = err.Error()
		}
	}
	return err
}

// write encodes and writes one event, chained to the one before.
func (s *Session) write(ev Event) (uint64, error) {
	ev.Seq = s.seq + 1
	ev.Prev = s.prev
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	line, err := encodeEventTo(s.line, &ev)
	if err != nil {
		return 0, fmt.Errorf("recorder: encode: %w", err)
	}
	line = append(line, '\n')
	if cap(line) <= maxKeptLine {
		s.line = line[:0]
	}
	ticket, err := s.r.j.write(s, line)
	if err != nil {
		return 0, err
	}
	s.seq = ev.Seq
	s.prev = hashLine(line[:len(line)-1])
	s.ticket = ticket
	return ticket, nil
}

func hashLine(line []byte) string {
	sum := sha256.Sum256(line)
	return hex.EncodeToString(sum[:])
}

// sealMessage is what the seal's signature covers: the session's file name
// (so a seal cannot be moved to another recording) and the chain's head.
func sealMessage(session, head string) []byte {
	return []byte("gatehouse-recording-seal\x00" + session + "\x00" + head)
}

// crashSealMessage is what a crashed seal's signature covers: as
// sealMessage, and the kind, so that neither seal passes for the other.
func crashSealMessage(session, head string) []byte {
	return []byte("gatehouse-recording-seal\x00" + session + "\x00" + head + "\x00" + SealCrashed)
}

// End records the session's end and seals the recording, which is then
// synced on its own: a sealed recording needs no journal. Whatever
// happens, the recording is synced before the journal forgets it, so that
// events acknowledged through the journal stay durable. Once the seal is
// durable, the ledger records the sealed head.
func (s *Session) End(reason string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sealed {
		return nil
	}
	_, err := s.appendLocked(Event{Type: TypeEnd, Reason: reason}, false)
	if err == nil {
		var sig []byte
		if sig, err = s.r.sign(sealMessage(s.id, s.prev)); err == nil {
			_, err = s.appendLocked(Event{Type: TypeSeal, KeyID: s.r.keyID, Signature: hex.EncodeToString(sig)}, true)
		}
	}
	if serr := s.r.sync(s.f); serr != nil {
		if ferr := s.r.j.fail(fmt.Errorf("sync %s: %w", s.Path, serr)); err == nil {
			err = ferr
		}
	}
	s.sealed = true
	s.line = nil
	if err == nil {
		_, err = s.r.l.append(LedgerEntry{Type: LedgerSeal, Session: s.id, Events: s.seq, Head: s.prev})
	}
	s.r.j.forget(s)
	if cerr := s.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		s.r.Stats.Errors.Add(1)
	}
	if s.r.onSeal != nil {
		s.r.onSeal(s.id)
	}
	return err
}
