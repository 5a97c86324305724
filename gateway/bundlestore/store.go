// Package bundlestore holds the gateway's active bundle and keeps it
// current, from a file it watches or an HTTP(S) URL it polls. A new bundle
// is verified (signature, trusted key, schema, revision strictly above the
// active one), compiled, and only then swapped in whole, atomically; on any
// failure the last good bundle stays active and the reason is logged. The
// last good bundle is persisted in the data directory, so a restart comes
// up with it even when the source is gone, and so a restart cannot be used
// to roll back to an older signed bundle. Replicas that share a state
// database also share a revision floor there (Floor), so a replica whose
// data directory is empty cannot be rolled back either.
package bundlestore

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/gateway/auth"
)

// Active is one verified, compiled bundle. It is immutable.
type Active struct {
	Revision uint64
	Digest   string
	KeyID    string
	Payload  *bundle.Payload
	Policy   *celpolicy.Policy
	Verifier *auth.Verifier
	LoadedAt time.Time
	// Source says where it came from (a path, a URL as Redact shows it,
	// "persisted").
	Source string
	raw    []byte
}

// Stats are counters for metrics and status pages.
type Stats struct {
	Reloads        atomic.Int64
	ReloadFailures atomic.Int64
	// LastError is the last refused bundle's error, cleared when a later
	// one is activated; the times say when each happened.
	LastError   atomic.Pointer[string]
	LastAttempt atomic.Pointer[time.Time]
	LastSuccess atomic.Pointer[time.Time]
	LastErrorAt atomic.Pointer[time.Time]
	// Source are a URL source's checks (zero for a file source).
	Source SourceStats
}

// Store holds the active bundle.
type Store struct {
	trusted  bundle.Keyring
	dataDir  string
	log      *slog.Logger
	authOpts []auth.Option

	mu    sync.Mutex // serialises Apply
	cur   atomic.Pointer[Active]
	Stats Stats
	// keys are the identity providers' key sets, kept across bundles.
	keys *auth.KeyCache
	// floor, when set, is the revision floor the replicas share.
	floor Floor
	// onActivate are called, each in its own goroutine, after a bundle
	// is activated.
	hooksMu    sync.Mutex
	onActivate []func(*Active)
}

// OnActivate registers fn to be called (in a goroutine of its own) each
// time a bundle is activated: the core judges open sessions at once.
func (s *Store) OnActivate(fn func(*Active)) {
	s.hooksMu.Lock()
	defer s.hooksMu.Unlock()
	s.onActivate = append(s.onActivate, fn)
}

// Option configures a Store.
type Option func(*Store)

// WithAuthOptions passes options to every bundle's token verifier.
func WithAuthOptions(opts ...auth.Option) Option { return func(s *Store) { s.authOpts = opts } }

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(s *Store) { s.log = l } }

// New makes an empty store. dataDir may be empty (nothing is persisted).
func New(trusted bundle.Keyring, dataDir string, opts ...Option) *Store {
	s := &Store{trusted: trusted, dataDir: dataDir, log: slog.Default(), keys: auth.NewKeyCache(nil, nil)}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Keys is the key cache every bundle's verifier shares.
func (s *Store) Keys() *auth.KeyCache { return s.keys }

// Current returns the active bundle, or nil before the first load.
func (s *Store) Current() *Active { return s.cur.Load() }

// ErrUnchanged is returned by Apply for the bundle that is already active.
var ErrUnchanged = errors.New("bundle is already active")

// Apply verifies, compiles and activates a bundle. The active bundle is
// replaced only when every step succeeds. With a shared floor (WithFloor),
// the last step is the floor's: a bundle below the revision any replica
// activated, or another bundle at it, is refused as a rollback, and one
// the floor cannot be checked for is refused with ErrFloorUnavailable.
func (s *Store) Apply(data []byte, source string) (*Active, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.cur.Load()
	var active uint64
	if cur != nil {
		if subtle.ConstantTimeCompare(cur.raw, data) == 1 {
			return cur, ErrUnchanged
		}
		active = cur.Revision
	}
	now := time.Now()
	s.Stats.LastAttempt.Store(&now)
	next, err := s.build(data, source, active)
	if err == nil && s.floor != nil {
		// Last, just before the swap: the floor is raised to a bundle
		// that nothing else can refuse now.
		err = s.floor.Admit(context.Background(), next.Revision, next.Digest)
	}
	if err != nil {
		s.refused(err)
		return nil, err
	}
	s.cur.Store(next)
	s.Stats.Reloads.Add(1)
	s.Stats.LastSuccess.Store(&now)
	s.Stats.LastError.Store(nil)
	s.hooksMu.Lock()
	hooks := slices.Clone(s.onActivate)
	s.hooksMu.Unlock()
	for _, fn := range hooks {
		go fn(next)
	}
	if err := s.persist(data); err != nil {
		// The bundle is active; only the restart copy failed. Say so
		// loudly, because the next restart will come up with the older one.
		s.log.Error("bundle activated but not persisted", "revision", next.Revision, "err", err)
	}
	return next, nil
}

// refused counts a refused bundle for metrics and the status page.
func (s *Store) refused(err error) {
	now := time.Now()
	s.Stats.LastAttempt.Store(&now)
	s.Stats.ReloadFailures.Add(1)
	msg := err.Error()
	s.Stats.LastError.Store(&msg)
	s.Stats.LastErrorAt.Store(&now)
}

// ReadFile reads a bundle file, at most bundle.MaxBundleSize bytes of it.
// Whoever can write the bundle's directory must not be able to make the
// gateway read without end: a file over the limit is refused from its size
// before any of it is read, one that grows while it is read is cut at the
// limit and refused, and anything but a regular file (a symlink to
// /dev/zero, a FIFO that would block the watcher) is refused unread. The
// refusals wrap bundle.ErrMalformed.
func ReadFile(path string) ([]byte, error) {
	// O_NONBLOCK: opening a FIFO for reading would wait for a writer. It
	// changes nothing for a regular file.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	switch {
	case err != nil:
		return nil, err
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("%w: %s is not a regular file (%s)", bundle.ErrMalformed, path, fi.Mode().Type())
	case fi.Size() > bundle.MaxBundleSize:
		return nil, fmt.Errorf("%w: %s: %d bytes is larger than the %d byte limit", bundle.ErrMalformed, path, fi.Size(), bundle.MaxBundleSize)
	}
	data, err := io.ReadAll(io.LimitReader(f, bundle.MaxBundleSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > bundle.MaxBundleSize {
		return nil, fmt.Errorf("%w: %s grew past the %d byte limit while it was read", bundle.ErrMalformed, path, bundle.MaxBundleSize)
	}
	return data, nil
}

func (s *Store) build(data []byte, source string, activeRevision uint64) (*Active, error) {
	v, err := bundle.Verify(data, s.trusted, bundle.VerifyOptions{ActiveRevision: activeRevision})
	if err != nil {
		return nil, err
	}
	pol, err := celpolicy.FromPayload(v.Payload)
	if err != nil {
		return nil, fmt.Errorf("bundle revision %d does not compile: %w", v.Payload.Revision, err)
	}
	return &Active{
		Revision: v.Payload.Revision, Digest: v.Digest, KeyID: v.KeyID, Payload: v.Payload, Policy: pol,
		Verifier: auth.New(v.Payload.Model.IdentityProviders, append(append([]auth.Option(nil), s.authOpts...), auth.WithKeyCache(s.keys))...),
		LoadedAt: time.Now(), Source: source, raw: append([]byte(nil), data...),
	}, nil
}

// PersistedPath is where the last good bundle is kept.
func (s *Store) PersistedPath() string {
	if s.dataDir == "" {
		return ""
	}
	return filepath.Join(s.dataDir, "bundle", "last-good.bundle")
}

func (s *Store) persist(data []byte) error {
	p := s.PersistedPath()
	if p == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	// The same durable replace as every other file the gateway keeps: a
	// crash leaves the old bundle or the new one, never half of one.
	return bundle.WriteFileAtomic(p, data, 0o600)
}

// LoadPersisted activates the persisted last good bundle, if there is one.
// It is verified again: the data directory is not trusted more than any
// other source.
func (s *Store) LoadPersisted() (*Active, error) {
	p := s.PersistedPath()
	if p == "" {
		return nil, os.ErrNotExist
	}
	data, err := ReadFile(p)
	if err != nil {
		return nil, err
	}
	return s.Apply(data, "persisted "+p)
}

// WatchFile keeps the store in step with a bundle file until ctx ends. It
// watches the file's directory with fsnotify (so an atomic rename into place
// is seen) and also polls every interval, for file systems where
// notifications do not arrive. Each change is applied; a refused bundle
// leaves the active one in place and is logged with the reason.
func (s *Store) WatchFile(ctx context.Context, path string, interval time.Duration) {
	if interval <= 0 {
		interval = 5 * time.Second
	}
	var last fileStamp
	check := func(reason string) {
		st, err := stamp(path)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) || last != (fileStamp{}) {
				s.log.Warn("bundle source unavailable; keeping the active bundle", "path", path, "err", err)
			}
			last = fileStamp{}
			return
		}
		if st == last {
			return
		}
		data, err := ReadFile(path)
		if errors.Is(err, bundle.ErrMalformed) {
			// Refused for what it is, as a bad bundle would be, and not
			// read again until it changes.
			last = st
			s.refused(err)
			s.log.Error("bundle refused; keeping the active bundle", "source", path, "active_revision", activeRevision(s.Current()), "trigger", reason, "err", err)
			return
		}
		if err != nil {
			s.log.Warn("bundle source unreadable; keeping the active bundle", "path", path, "err", err)
			return
		}
		last = st
		if err := s.applyLogged(data, path, reason); errors.Is(err, ErrFloorUnavailable) {
			// Not refused for what it is: try the same file again at the
			// next check.
			last = fileStamp{}
		}
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		s.log.Warn("file notifications unavailable; polling only", "err", err)
	} else {
		defer w.Close()
		if err := w.Add(filepath.Dir(path)); err != nil {
			s.log.Warn("cannot watch the bundle directory; polling only", "dir", filepath.Dir(path), "err", err)
		}
	}
	var events <-chan fsnotify.Event
	var errs <-chan error
	if w != nil {
		events, errs = w.Events, w.Errors
	}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	check("start")
	var debounce <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-events:
			if filepath.Clean(ev.Name) == filepath.Clean(path) {
				// Writers may take several events to finish; wait for
				// the file to settle before reading it.
				debounce = time.After(50 * time.Millisecond)
			}
		case err := <-errs:
			s.log.Warn("file notification error; polling continues", "err", err)
		case <-debounce:
			debounce = nil
			check("notify")
		case <-ticker.C:
			check("poll")
		}
	}
}

func (s *Store) applyLogged(data []byte, source, reason string) error {
	prev := s.Current()
	a, err := s.Apply(data, source)
	switch {
	case errors.Is(err, ErrUnchanged):
		return nil
	case err != nil:
		active := uint64(0)
		if prev != nil {
			active = prev.Revision
		}
		s.log.Error("bundle refused; keeping the active bundle", "source", source, "active_revision", active, "trigger", reason, "err", err)
	default:
		from := uint64(0)
		if prev != nil {
			from = prev.Revision
		}
		s.log.Info("bundle activated", "source", source, "revision", a.Revision, "previous_revision", from, "digest", a.Digest, "trigger", reason)
	}
	return err
}

type fileStamp struct {
	size    int64
	modTime time.Time
	inode   uint64
}

func stamp(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{size: fi.Size(), modTime: fi.ModTime(), inode: inodeOf(fi)}, nil
}
