package recordstore

import (
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
}

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
}

// UploaderOption configures an Uploader.
type UploaderOption func(*Uploader)

// WithBackoff sets the wait after a failed attempt, doubling from min up to
// max (default 1s to 5m).
func WithBackoff(min, max time.Duration) UploaderOption {
	return func(u *Uploader) { u.min, u.max = min, max }
}

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
		pending: map[string]time.Time{}, kick: make(chan struct{}, 1), ledgerDirty: true}
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
			u.log.Warn("recordings upload failed; retrying", "err", err, "retry_in", wait, "pending", n, "oldest", oldest.Round(time.Second))
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
		if err := u.upload(ctx, n); err != nil {
			return u.failed(err)
		}
		u.mu.Lock()
		delete(u.pending, n)
		u.mu.Unlock()
		u.Stats.Uploads.Add(1)
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

// upload verifies one recording, to mark it, and uploads it.
func (u *Uploader) upload(ctx context.Context, id string) error {
	path := filepath.Join(u.dir, id+".jsonl")
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			// Gone from the directory (removed by hand): nothing to
			// upload; audit verify reports it MISSING from the ledger.
			u.log.Error("a recording to upload is no longer in the recordings directory", "recording", id)
			return nil
		}
		return err
	}
	status := recorder.StatusUnsealed
	if u.keys != nil {
		rep, err := recorder.Verify(path, u.keys)
		if err != nil {
			return fmt.Errorf("verify %s: %w", path, err)
		}
		status = rep.State()
		if rep.Events == 0 {
			status = recorder.StatusAltered
		}
		// What was read must be what was verified.
		if fi, err := os.Stat(path); err == nil && fi.Size() != int64(len(data)) {
			return fmt.Errorf("%s changed while it was uploaded", path)
		}
	}
	sum := sha256.Sum256(data)
	meta := map[string]string{MetaStatus: status, MetaSHA256: hex.EncodeToString(sum[:])}
	if err := u.store.Put(ctx, id+".jsonl", data, meta); err != nil {
		return err
	}
	if status != recorder.StatusOK {
		u.log.Warn("uploaded a recording that is not sealed by its session's end", "recording", id, "status", status, "bucket", u.store.Location().String())
	}
	return nil
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
		return fmt.Errorf("%d recording(s) not uploaded, left for the next start: %w", n, err)
	}
	return nil
}
