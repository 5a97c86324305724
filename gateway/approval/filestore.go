package approval

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/internal/clock"
)

// FileStore keeps requests in a directory of the gateway's data directory,
// one JSON file per request written durably (a temporary file, fsync,
// rename, fsync of the directory) before anything acts on it, so pending
// and settled requests survive a restart. It serves one gateway: a second
// process on the same directory would not see this one's settlements.
type FileStore struct {
	options
	dir string

	mu      sync.Mutex
	reqs    map[string]*Request
	waiters map[string]chan struct{}
	timers  map[string]clock.Timer
	closed  bool
}

var _ Store = (*FileStore)(nil)

// Open loads the requests in dir (creating it), expiring those whose time
// ran out while the gateway was down and dropping settled ones older than
// Retention. Files of format 1 are read and converted.
func Open(dir string, opts ...Option) (*FileStore, error) {
	s := &FileStore{options: newOptions(opts), dir: dir,
		reqs: map[string]*Request{}, waiters: map[string]chan struct{}{}, timers: map[string]clock.Timer{}}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("approvals: %w", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("approvals: %w", err)
	}
	now := s.clock.Now()
	for _, e := range ents {
		name := e.Name()
		if !strings.HasSuffix(name, ".json") || strings.HasPrefix(name, ".") {
			continue
		}
		path := filepath.Join(dir, name)
		b, err := os.ReadFile(path)
		var r Request
		if err == nil {
			err = json.Unmarshal(b, &r)
		}
		if err != nil || r.ID+".json" != name {
			// A request that cannot be read can release nothing: it is
			// set aside, not guessed at.
			s.log.Error("approval request file is unreadable; it is ignored", "path", path, "err", err)
			continue
		}
		if r.Settled() && now.Sub(r.SettledAt) > Retention {
			_ = os.Remove(path)
			continue
		}
		s.reqs[r.ID] = &r
	}
	// An overdue request's timer fires at once, and its expiry takes mu.
	s.mu.Lock()
	for _, r := range s.reqs {
		if r.State == Pending {
			s.schedule(r)
		}
	}
	s.mu.Unlock()
	return s, nil
}

// Dir is where the store keeps its files.
func (s *FileStore) Dir() string { return s.dir }

// Close stops the expiry timers. Requests stay on disk.
func (s *FileStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for _, t := range s.timers {
		t.Stop()
	}
	return nil
}

// schedule arms r's expiry. Called with mu held, or before the store is
// shared.
func (s *FileStore) schedule(r *Request) {
	id := r.ID
	s.timers[id] = s.clock.AfterFunc(max(r.ExpiresAt.Sub(s.clock.Now()), 0), func() { s.expire(id) })
}

func (s *FileStore) expire(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.reqs[id]
	if !ok || r.Settled() || s.closed {
		return
	}
	now := s.clock.Now()
	if now.Before(r.ExpiresAt) {
		s.schedule(r)
		return
	}
	next := r.Clone()
	Settle(&next, Expired, ExpiryOutcome(r), now)
	if err := s.commit(&next); err != nil {
		// It stays pending on disk, and a request past its expiry
		// releases nothing; the next start expires it.
		s.log.Error("could not record an approval request's expiry", "approval", id, "err", err)
	}
}

// Open implements Store.
func (s *FileStore) Open(_ context.Context, r Request) (Request, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	pending := 0
	for _, x := range s.reqs {
		if x.State != Pending || !now.Before(x.ExpiresAt) {
			continue
		}
		if x.Binds(r.Hash, r.Requester, r.Resource) {
			return x.Clone(), false, nil
		}
		if x.Requester.Key() == r.Requester.Key() {
			pending++
		}
	}
	r, err := Prepare(r, now)
	if err != nil {
		return Request{}, false, err
	}
	if pending >= MaxPendingPerRequester {
		return Request{}, false, TooMany(r.Requester, pending)
	}
	if _, err := s.write(&r); err != nil {
		// A request no one will hear of: the caller is refused.
		_ = os.Remove(filepath.Join(s.dir, r.ID+".json"))
		return Request{}, false, err
	}
	stored := r.Clone()
	s.reqs[r.ID] = &stored
	s.schedule(&stored)
	s.log.Info("approval requested", "approval", r.ID, "requester", r.Requester.String(), "resource", r.Resource,
		"rules", r.Rules(), "groups", r.Groups(), "expires_at", r.ExpiresAt.UTC().Format("2006-01-02T15:04:05Z07:00"))
	s.tell(EventRequested, &stored)
	return r, true, nil
}

// Redeem implements Store.
func (s *FileStore) Redeem(_ context.Context, hash string, requester Principal, resource string, needs []Need) (Request, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	var best *Request
	for _, x := range s.reqs {
		if x.Binds(hash, requester, resource) && x.Usable(now) && x.Covers(needs) {
			if best == nil || x.SettledAt.Before(best.SettledAt) {
				best = x
			}
		}
	}
	if best == nil {
		return Request{}, false, nil
	}
	next := best.Clone()
	next.Uses++
	if err := s.commit(&next); err != nil {
		return Request{}, false, err
	}
	return next, true, nil
}

// Use implements Store.
func (s *FileStore) Use(_ context.Context, id string) (Request, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.reqs[id]
	if !ok {
		return Request{}, ErrNotFound
	}
	if !r.Usable(s.clock.Now()) {
		return r.Clone(), NotUsable(r)
	}
	next := r.Clone()
	next.Uses++
	if err := s.commit(&next); err != nil {
		return Request{}, err
	}
	return next, nil
}

// Get implements Store.
func (s *FileStore) Get(_ context.Context, id string) (Request, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.reqs[id]
	if !ok {
		return Request{}, ErrNotFound
	}
	return r.Clone(), nil
}

// List implements Store.
func (s *FileStore) List(_ context.Context, keep func(*Request) bool) ([]Request, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Request
	for _, r := range s.reqs {
		if keep == nil || keep(r) {
			out = append(out, r.Clone())
		}
	}
	SortNewestFirst(out)
	return out, nil
}

// SortNewestFirst orders requests as List returns them.
func SortNewestFirst(rs []Request) {
	sort.Slice(rs, func(i, j int) bool {
		if !rs[i].CreatedAt.Equal(rs[j].CreatedAt) {
			return rs[i].CreatedAt.After(rs[j].CreatedAt)
		}
		return rs[i].ID < rs[j].ID
	})
}

// Counts implements Store.
func (s *FileStore) Counts(context.Context) (map[State]int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[State]int{Pending: 0, Approved: 0, Denied: 0, Expired: 0, Cancelled: 0}
	for _, r := range s.reqs {
		out[r.State]++
	}
	return out, nil
}

// Settled implements Store.
func (s *FileStore) Settled(_ context.Context, id string) (<-chan struct{}, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.reqs[id]
	if !ok || r.Settled() {
		c := make(chan struct{})
		close(c)
		return c, nil
	}
	c, ok := s.waiters[id]
	if !ok {
		c = make(chan struct{})
		s.waiters[id] = c
	}
	return c, nil
}

// Vote implements Store.
func (s *FileStore) Vote(_ context.Context, id string, who Principal, approve bool, comment string) (Request, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.reqs[id]
	if !ok {
		return Request{}, ErrNotFound
	}
	next, err := CastVote(r.Clone(), who, approve, comment, s.clock.Now())
	if err != nil {
		return next, err
	}
	if err := s.commit(&next); err != nil {
		return r.Clone(), err
	}
	s.log.Info("approval vote", "approval", id, "approver", who.String(), "decision", next.Votes[len(next.Votes)-1].Decision, "comment", comment, "state", next.State)
	return next.Clone(), nil
}

// Cancel implements Store.
func (s *FileStore) Cancel(_ context.Context, id, why string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.reqs[id]
	if !ok {
		return ErrNotFound
	}
	if r.Settled() {
		return nil
	}
	next := r.Clone()
	Settle(&next, Cancelled, why, s.clock.Now())
	return s.commit(&next)
}

// commit writes next durably and then makes it the request's state, waking
// waiters and telling the webhooks when it settled. Called with mu held.
func (s *FileStore) commit(next *Request) error {
	if renamed, err := s.write(next); err != nil {
		if !renamed {
			return err
		}
		// The new state is in place but may not survive a crash: memory
		// follows the disk, and the caller fails closed on the error.
		s.apply(next)
		return err
	}
	s.apply(next)
	return nil
}

// apply makes next the request's state in memory. Called with mu held.
func (s *FileStore) apply(next *Request) {
	prev := s.reqs[next.ID]
	stored := next.Clone()
	s.reqs[next.ID] = &stored
	if stored.Settled() && (prev == nil || !prev.Settled()) {
		if t := s.timers[next.ID]; t != nil {
			t.Stop()
			delete(s.timers, next.ID)
		}
		if c, ok := s.waiters[next.ID]; ok {
			close(c)
			delete(s.waiters, next.ID)
		}
		s.log.Info("approval settled", "approval", next.ID, "state", next.State, "outcome", next.Outcome)
		s.tell(SettleEvent(next.State), &stored)
	}
}

// write stores r durably in the current format. renamed says whether the
// new file is in place (when only the directory's fsync failed).
func (s *FileStore) write(r *Request) (renamed bool, err error) {
	r.Format = FormatVersion
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return false, fmt.Errorf("approvals: %w", err)
	}
	b = append(b, '\n')
	path := filepath.Join(s.dir, r.ID+".json")
	return bundle.WriteFileDurable(path, b, 0o600)
}
