package recordstore

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/gateway/sessionindex"
)

// Stats count the Uploader's work, for metrics.
type Stats struct {
	// Uploads counts recordings uploaded and confirmed; LedgerUploads the
	// ledger's copies.
	Uploads       atomic.Int64
	LedgerUploads atomic.Int64
	// Failures counts failed attempts (a recording's, the ledger's, or the
	// listing at start); each is retried.
	Failures atomic.Int64
	// LastError is the last failure's message.
	LastError atomic.Pointer[string]
	// IndexRows counts rows written to the session index, IndexPending
	// the rows waiting, IndexDropped the start rows not queued because
	// the queue was full (their sessions are indexed once uploaded).
	IndexRows    atomic.Int64
	IndexPending atomic.Int64
	IndexDropped atomic.Int64
}

// Indexer keeps the session index (sessionindex.Index).
type Indexer interface {
	Put(ctx context.Context, rows []sessionindex.Entry) error
	List(ctx context.Context, f sessionindex.Filter) ([]sessionindex.Entry, error)
}

// maxIndexQueue bounds the rows waiting for the index while it cannot be
// reached. Past it, start rows are dropped (counted); rows of uploaded
// recordings are always kept, so every uploaded session is indexed.
const maxIndexQueue = 50000

// Uploader copies recordings into a Store once their sessions end, and the
// ledger after them. It never deletes or changes a local file.
type Uploader struct {
	store  *Store
	dir    string
	keys   bundle.Keyring
	ledger func() ([]byte, error)
	log    *slog.Logger
	min    time.Duration
	max    time.Duration
	now    func() time.Time

	// Stats count uploads and failures.
	Stats Stats

	mu sync.Mutex
	// pending: recordings to upload, and since when.
	pending map[string]time.Time
	// leftovers: the recordings in the directory when the Uploader was
	// made (before any session of this run), which the first pass compares
	// with the bucket.
	leftovers   []string
	scanned     bool
	ledgerDirty bool
	kick        chan struct{}
	pass        sync.Mutex

	// index, when set, is told of sessions as they start and as their
	// recordings are uploaded; indexQ holds the rows not written yet.
	index  Indexer
	indexQ []sessionindex.Entry
	// unindexed: leftovers the bucket holds already, indexed again
	// unless the index has their uploaded row (checkIndexed).
	unindexed []string
	// indexOnly: pending recordings the bucket may hold already (same
	// size), indexed without a second upload when its SHA-256 matches.
	indexOnly map[string]bool
}

// UploaderOption configures an Uploader.
type UploaderOption func(*Uploader)

// WithBackoff sets the wait after a failed attempt, doubling from min up to
// max (default 1s to 5m).
func WithBackoff(min, max time.Duration) UploaderOption {
	return func(u *Uploader) { u.min, u.max = min, max }
}

// WithIndex makes the Uploader keep a session index: a row when a session
// starts (Started) and another once its recording is uploaded.
func WithIndex(ix Indexer) UploaderOption { return func(u *Uploader) { u.index = ix } }

// WithLogger sets where the Uploader reports failures.
func WithLogger(l *slog.Logger) UploaderOption { return func(u *Uploader) { u.log = l } }

// NewUploader prepares an Uploader of the recordings in dir, a recorder's
// directory, whose ledger is read with ledger (Recorder.LedgerSnapshot).
// pub is the recorder's public key, with which each recording is verified
// before it is uploaded, to mark it (MetaStatus). Make it right after the
// recorder is opened, before any session starts: the recordings in dir then
// are the ones earlier runs left, which the first pass uploads unless the
// bucket holds them already (sealed or crash-sealed, or, when even a crash
// seal could not be written, unsealed and marked so).
func NewUploader(store *Store, dir string, pub ed25519.PublicKey, ledger func() ([]byte, error), opts ...UploaderOption) (*Uploader, error) {
	u := &Uploader{store: store, dir: dir, ledger: ledger, log: slog.New(slog.DiscardHandler),
		min: time.Second, max: 5 * time.Minute, now: time.Now,
		pending: map[string]time.Time{}, indexOnly: map[string]bool{}, kick: make(chan struct{}, 1), ledgerDirty: true}
	for _, o := range opts {
		o(u)
	}
	if len(pub) > 0 {
		u.keys = bundle.Keyring{bundle.KeyID(pub): pub}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("recordstore: %w", err)
	}
	for _, e := range entries {
		if n := e.Name(); e.Type().IsRegular() && isRecording(n) {
			u.leftovers = append(u.leftovers, strings.TrimSuffix(n, ".jsonl"))
		}
	}
	return u, nil
}

func isRecording(name string) bool {
	return strings.HasSuffix(name, ".jsonl") && name != recorder.LedgerName && name != LedgerObject && !strings.HasPrefix(name, ".")
}

// Sealed queues a session's recording for upload: the recorder calls it
// (recorder.WithOnSeal) once End has closed the recording. It never blocks.
func (u *Uploader) Sealed(session string) {
	u.mu.Lock()
	if _, ok := u.pending[session]; !ok {
		u.pending[session] = u.now()
	}
	u.ledgerDirty = true
	u.mu.Unlock()
	u.poke()
}

// Started queues a session's start for the index (the recorder calls it,
// recorder.WithOnStart, before anything of the session is forwarded). It
// never blocks. Without an index it does nothing.
func (u *Uploader) Started(session string, start recorder.Event) {
	if u.index == nil {
		return
	}
	row := sessionindex.Entry{Session: session, Location: u.store.Location().String(), Identity: start.Identity,
		Subject: start.Subject, Issuer: start.Issuer, Resource: start.Resource, Protocol: cmp.Or(start.Protocol, "postgres"),
		ClientAddr: start.ClientAddr, Started: start.Time, Status: sessionindex.StatusOpen, Events: 1, Updated: u.now()}
	u.mu.Lock()
	if len(u.indexQ) >= maxIndexQueue {
		u.mu.Unlock()
		u.Stats.IndexDropped.Add(1)
		return
	}
	u.indexQ = append(u.indexQ, row)
	u.Stats.IndexPending.Store(int64(len(u.indexQ)))
	u.mu.Unlock()
	u.poke()
}

// queueIndex queues the row of an uploaded recording.
func (u *Uploader) queueIndex(row sessionindex.Entry) {
	u.mu.Lock()
	u.indexQ = append(u.indexQ, row)
	u.Stats.IndexPending.Store(int64(len(u.indexQ)))
	u.mu.Unlock()
}

// writeIndex writes the rows queued, in order. What fails stays queued,
// ahead of what came since.
func (u *Uploader) writeIndex(ctx context.Context) error {
	u.mu.Lock()
	rows := u.indexQ
	u.indexQ = nil
	u.mu.Unlock()
	if len(rows) == 0 {
		return nil
	}
	for len(rows) > 0 {
		n := min(len(rows), 500)
		if err := u.index.Put(ctx, rows[:n]); err != nil {
			u.mu.Lock()
			u.indexQ = append(rows, u.indexQ...)
			u.Stats.IndexPending.Store(int64(len(u.indexQ)))
			u.mu.Unlock()
			return fmt.Errorf("session index: %w", err)
		}
		u.Stats.IndexRows.Add(int64(n))
		rows = rows[n:]
	}
	u.mu.Lock()
	u.Stats.IndexPending.Store(int64(len(u.indexQ)))
	u.mu.Unlock()
	return nil
}

func (u *Uploader) poke() {
	select {
	case u.kick <- struct{}{}:
	default:
	}
}

// Backlog is how many recordings wait for upload and how long the oldest
// has waited (0 when none; the listing at start counts as one waiting since
// the Uploader was made until it succeeds).
func (u *Uploader) Backlog() (n int, oldest time.Duration) {
	u.mu.Lock()
	defer u.mu.Unlock()
	now := u.now()
	for _, since := range u.pending {
		n++
		oldest = max(oldest, now.Sub(since))
	}
	return n, oldest
}

// Run uploads until ctx ends: at first what earlier runs left, then each
// recording as its session ends, and the ledger after them. A failure is
// retried after a wait that doubles up to the maximum; nothing is dropped.
func (u *Uploader) Run(ctx context.Context) {
	wait := time.Duration(0)
	for {
		if err := u.Pass(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			wait = min(max(2*wait, u.min), u.max)
			n, oldest := u.Backlog()
			u.log.Warn("recordings upload (or the session index) failed; retrying", "err", err, "retry_in", wait, "pending", n, "oldest", oldest.Round(time.Second),
				"index_rows_pending", u.Stats.IndexPending.Load())
		} else {
			wait = 0
		}
		var retry <-chan time.Time
		var t *time.Timer
		if wait > 0 {
			t = time.NewTimer(wait)
			retry = t.C
		}
		select {
		case <-ctx.Done():
		case <-u.kick:
		case <-retry:
		}
		if t != nil {
			t.Stop()
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// Pass makes one attempt at everything pending: the comparison with the
// bucket at start (once it succeeds), the recordings, oldest first, then
// the ledger. It stops at the first failure, which it returns.
func (u *Uploader) Pass(ctx context.Context) error {
	u.pass.Lock()
	defer u.pass.Unlock()
	if err := u.scan(ctx); err != nil {
		return u.failed(err)
	}
	// An index that cannot be read holds no upload up: its error is
	// returned once the rest is done.
	var indexErr error
	if u.index != nil {
		indexErr = u.checkIndexed(ctx)
	}
	u.mu.Lock()
	names := make([]string, 0, len(u.pending))
	for n := range u.pending {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool {
		a, b := u.pending[names[i]], u.pending[names[j]]
		return a.Before(b) || (a.Equal(b) && names[i] < names[j])
	})
	u.mu.Unlock()
	for _, n := range names {
		u.mu.Lock()
		indexOnly := u.indexOnly[n]
		u.mu.Unlock()
		if err := u.upload(ctx, n, indexOnly); err != nil {
			// The rows queued so far still go to the index: a bucket
			// that is down keeps no session out of it.
			if u.index != nil {
				_ = u.writeIndex(ctx)
			}
			return u.failed(err)
		}
		u.mu.Lock()
		delete(u.pending, n)
		delete(u.indexOnly, n)
		u.mu.Unlock()
		if !indexOnly {
			u.Stats.Uploads.Add(1)
		}
	}
	u.mu.Lock()
	dirty := u.ledgerDirty
	u.ledgerDirty = false
	u.mu.Unlock()
	if dirty {
		if err := u.uploadLedger(ctx); err != nil {
			u.mu.Lock()
			u.ledgerDirty = true
			u.mu.Unlock()
			return u.failed(err)
		}
		u.Stats.LedgerUploads.Add(1)
	}
	if u.index != nil {
		if err := u.writeIndex(ctx); err != nil {
			return u.failed(err)
		}
	}
	if indexErr != nil {
		return u.failed(indexErr)
	}
	return nil
}

func (u *Uploader) failed(err error) error {
	u.Stats.Failures.Add(1)
	msg := err.Error()
	u.Stats.LastError.Store(&msg)
	return err
}

// scan compares the recordings earlier runs left with the bucket, once,
// and queues those it lacks or holds with another size (a leftover
// crash-sealed since it was uploaded unsealed).
func (u *Uploader) scan(ctx context.Context) error {
	u.mu.Lock()
	if u.scanned {
		u.mu.Unlock()
		return nil
	}
	left := u.leftovers
	u.mu.Unlock()
	if len(left) == 0 {
		u.mu.Lock()
		u.scanned = true
		u.mu.Unlock()
		return nil
	}
	objs, err := u.store.List(ctx)
	if err != nil {
		return err
	}
	inBucket := map[string]int64{}
	for _, o := range objs {
		inBucket[o.Name] = o.Size
	}
	var queued int
	since := u.now()
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, id := range left {
		fi, err := os.Stat(filepath.Join(u.dir, id+".jsonl"))
		if err != nil {
			continue
		}
		if size, ok := inBucket[id+".jsonl"]; ok && size == fi.Size() {
			if u.index != nil {
				u.unindexed = append(u.unindexed, id)
			}
			continue
		}
		if _, ok := u.pending[id]; !ok {
			u.pending[id] = since
			queued++
		}
	}
	u.scanned, u.leftovers = true, nil
	if queued > 0 {
		u.log.Info("uploading recordings an earlier run left", "count", queued, "bucket", u.store.Location().String())
	}
	return nil
}

// checkIndexed queues again the leftovers the bucket holds whose uploaded
// row the index lacks: a recording uploaded just before a crash may have
// no row yet, or its start row alone. Each is indexed without a second
// upload when the bucket's copy has its SHA-256 (uploaded again when
// not). While the index cannot be read they wait for the next pass.
func (u *Uploader) checkIndexed(ctx context.Context) error {
	u.mu.Lock()
	ids := u.unindexed
	u.mu.Unlock()
	if len(ids) == 0 {
		return nil
	}
	rows, err := u.index.List(ctx, sessionindex.Filter{Location: u.store.Location().String(), Sessions: ids})
	if err != nil {
		return err
	}
	indexed := map[string]bool{}
	for _, r := range rows {
		if r.Status != sessionindex.StatusOpen {
			indexed[r.Session] = true
		}
	}
	since := u.now()
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, id := range ids {
		if _, ok := u.pending[id]; !ok && !indexed[id] {
			u.pending[id] = since
			u.indexOnly[id] = true
		}
	}
	u.unindexed = nil
	return nil
}

// local is a recording as read from the directory, verified to mark it.
type local struct {
	path   string
	data   []byte
	sum    string // hex SHA-256 of data
	status string
}

// read reads and verifies one recording; nil, nil when it is gone from
// the directory (removed by hand: nothing to upload; audit verify reports
// it MISSING from the ledger).
func (u *Uploader) read(id string) (*local, error) {
	path := filepath.Join(u.dir, id+".jsonl")
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			u.log.Error("a recording to upload is no longer in the recordings directory", "recording", id)
			return nil, nil
		}
		return nil, err
	}
	status := recorder.StatusUnsealed
	if u.keys != nil {
		rep, err := recorder.Verify(path, u.keys)
		if err != nil {
			return nil, fmt.Errorf("verify %s: %w", path, err)
		}
		status = rep.State()
		if rep.Events == 0 {
			status = recorder.StatusAltered
		}
		// What was read must be what was verified.
		if fi, err := os.Stat(path); err == nil && fi.Size() != int64(len(data)) {
			return nil, fmt.Errorf("%s changed while it was uploaded", path)
		}
	}
	sum := sha256.Sum256(data)
	return &local{path: path, data: data, sum: hex.EncodeToString(sum[:]), status: status}, nil
}

// upload verifies one recording, to mark it, and uploads it. With
// indexOnly, a recording the bucket already holds with the same SHA-256 is
// not uploaded again, only indexed.
func (u *Uploader) upload(ctx context.Context, id string, indexOnly bool) error {
	l, err := u.read(id)
	if l == nil || err != nil {
		return err
	}
	if indexOnly {
		if o, err := u.store.Stat(ctx, id+".jsonl"); err == nil && o.Meta[MetaSHA256] == l.sum && o.Size == int64(len(l.data)) {
			u.queueIndex(indexRow(u.store.Location(), id, l, u.now()))
			return nil
		}
	}
	meta := map[string]string{MetaStatus: l.status, MetaSHA256: l.sum}
	if err := u.store.Put(ctx, id+".jsonl", l.data, meta); err != nil {
		return err
	}
	if u.index != nil {
		u.queueIndex(indexRow(u.store.Location(), id, l, u.now()))
	}
	if l.status != recorder.StatusOK {
		u.log.Warn("uploaded a recording that is not sealed by its session's end", "recording", id, "status", l.status, "bucket", u.store.Location().String())
	}
	return nil
}

// indexRow is an uploaded recording's row: its start event says who and
// what, its last event when it ended (unless it is not sealed).
func indexRow(loc Location, id string, l *local, now time.Time) sessionindex.Entry {
	row := sessionindex.Entry{Session: id, Location: loc.String(), Status: l.status, Object: loc.String() + id + ".jsonl",
		Size: int64(len(l.data)), SHA256: l.sum, Updated: now}
	evs, _ := recorder.ParseEvents(bytes.NewReader(l.data)) // lines that do not parse: Verify judged them (status)
	row.Events = len(evs)
	if len(evs) > 0 {
		st := evs[0]
		row.Identity, row.Subject, row.Issuer, row.Resource = st.Identity, st.Subject, st.Issuer, st.Resource
		row.Protocol, row.ClientAddr, row.Started = cmp.Or(st.Protocol, "postgres"), st.ClientAddr, st.Time
		// A crash seal is written at the next start: the session ended
		// with the event before it.
		if last := evs[len(evs)-1]; last.Type == recorder.TypeSeal {
			end := last.Time
			if last.Kind == recorder.SealCrashed && len(evs) > 1 {
				end = evs[len(evs)-2].Time
			}
			row.Ended = &end
		}
	}
	if row.Started.IsZero() {
		row.Started = now // not a recording the recorder wrote; Verify said so (status)
	}
	return row
}

func (u *Uploader) uploadLedger(ctx context.Context) error {
	if u.ledger == nil {
		return nil
	}
	data, err := u.ledger()
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("read the ledger: %w", err)
	}
	sum := sha256.Sum256(data)
	return u.store.Put(ctx, LedgerObject, data, map[string]string{MetaSHA256: hex.EncodeToString(sum[:])})
}

// Flush makes one last attempt at everything pending, the ledger included
// (the gateway calls it after closing the recorder, so the bucket's ledger
// holds the close entry), and says what is left for the next start.
func (u *Uploader) Flush(ctx context.Context) error {
	u.mu.Lock()
	u.ledgerDirty = true
	u.mu.Unlock()
	if err := u.Pass(ctx); err != nil {
		n, _ := u.Backlog()
		return fmt.Errorf("%d recording(s) not uploaded and %d session index row(s) not written; the next start uploads the recordings and indexes them: %w",
			n, u.Stats.IndexPending.Load(), err)
	}
	return nil
}
