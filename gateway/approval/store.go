// Package approval holds risky requests for human approvers. A review
// decision opens a request bound to the caller, the resource and a hash of
// the exact request; approvers in the rule's groups approve or deny it
// through the admin API; the held statement runs once it is approved, or a
// retry of the same request does.
//
// State lives in the data directory, one JSON file per request written
// durably (fsync, rename, fsync of the directory) before anything acts on
// it, so pending and settled requests survive a restart.
package approval

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// State is where a request is in its life.
type State string

// Request states. Every state but Pending is settled.
const (
	Pending   State = "pending"
	Approved  State = "approved"
	Denied    State = "denied"
	Expired   State = "expired"
	Cancelled State = "cancelled"
)

// Errors of Vote and Use. Each error wraps one, so the admin API can map
// them to status codes.
var (
	ErrNotFound     = errors.New("no such approval request")
	ErrSettled      = errors.New("the approval request is already settled")
	ErrSelfApproval = errors.New("requesters cannot approve or deny their own requests")
	ErrNotApprover  = errors.New("not in an approver group of this request")
	ErrAlreadyVoted = errors.New("already voted on this request")
	ErrNotUsable    = errors.New("the approval cannot be used")
	ErrTooMany      = errors.New("too many pending approval requests")
)

// MaxPendingPerRequester bounds the open requests of one caller, so that a
// caller cannot flood approvers (and their Slack) or the data directory.
const MaxPendingPerRequester = 20

// Principal is a caller or an approver, as their verified token and the
// bundle's identities say.
type Principal struct {
	// Name is the bundle identity the token resolved to ("" for none).
	Name    string   `json:"name,omitempty"`
	Issuer  string   `json:"issuer"`
	Subject string   `json:"subject"`
	Groups  []string `json:"groups,omitempty"`
}

// Key identifies a principal across tokens: issuer and subject.
func (p Principal) Key() string { return p.Issuer + "\x00" + p.Subject }

// String is how people see a principal.
func (p Principal) String() string {
	if p.Name != "" && p.Name != p.Subject {
		return fmt.Sprintf("%s (subject %s)", p.Name, p.Subject)
	}
	return p.Subject
}

// same reports whether two principals are one identity for self-approval:
// the same subject of the same issuer, or the same bundle identity (the pods
// of one service share an identity, not a subject, and must not approve
// each other). Votes are counted by Key: distinct people.
func (p Principal) same(q Principal) bool {
	return p.Key() == q.Key() || (p.Name != "" && p.Name == q.Name)
}

// Need is one review rule's approver spec, with the approvals it has.
type Need struct {
	Rule   string   `json:"rule"`
	Reason string   `json:"reason"`
	Groups []string `json:"groups"`
	Count  int      `json:"count"`
	// Approvers are the keys of the distinct approvers counted so far.
	Approvers []string `json:"approvers,omitempty"`
}

func (n *Need) eligible(p Principal) bool {
	for _, g := range p.Groups {
		if slices.Contains(n.Groups, g) {
			return true
		}
	}
	return false
}

// Vote is one approver's decision.
type Vote struct {
	Approver Principal `json:"approver"`
	// Decision is "approve" or "deny".
	Decision string    `json:"decision"`
	Comment  string    `json:"comment,omitempty"`
	Time     time.Time `json:"time"`
}

// Request is one approval request.
type Request struct {
	ID    string `json:"id"`
	State State  `json:"state"`
	// Requester, Resource and Hash bind the request: only the same
	// request by the same caller on the same resource is released.
	Requester Principal `json:"requester"`
	Resource  string    `json:"resource"`
	Hash      string    `json:"hash"`
	// Session is the recording of the session that asked.
	Session string `json:"session,omitempty"`
	// Kind is the request kind ("query", "execute"); SQL the exact text;
	// Params the bound parameters of an extended-protocol execution, as
	// approvers read them.
	Kind string `json:"kind"`
	SQL  string `json:"sql"`
	// Parsed is the SQL as PostgreSQL's parser reads it, printed back
	// without comments or layout: what the hash binds, for people.
	Parsed string   `json:"parsed,omitempty"`
	Params []string `json:"params,omitempty"`
	Needs  []Need   `json:"needs"`
	// Hold: the statement waits in its session, for up to Wait.
	Hold     bool          `json:"hold"`
	Wait     time.Duration `json:"wait"`
	ValidFor time.Duration `json:"valid_for"`
	Reusable bool          `json:"reusable,omitempty"`
	// Webhooks are notified of the request's events (references only).
	Webhooks       []bundle.Webhook `json:"webhooks,omitempty"`
	BundleRevision uint64           `json:"bundle_revision"`
	CreatedAt      time.Time        `json:"created_at"`
	// ExpiresAt is when an undecided request expires.
	ExpiresAt time.Time `json:"expires_at"`
	SettledAt time.Time `json:"settled_at,omitzero"`
	// ValidUntil is when an approval stops releasing the request.
	ValidUntil time.Time `json:"valid_until,omitzero"`
	Uses       int       `json:"uses,omitempty"`
	Votes      []Vote    `json:"votes,omitempty"`
	// Outcome says why it settled, for callers and approvers.
	Outcome string `json:"outcome,omitempty"`
}

// Public is the request as approvers and webhooks see it: without the
// webhooks' addresses (a Slack webhook's URL is a secret).
func (r Request) Public() Request {
	r.Webhooks = nil
	return r
}

// Settled reports whether the request has left Pending.
func (r *Request) Settled() bool { return r.State != Pending }

// Groups are every approver group of the request.
func (r *Request) Groups() []string {
	var gs []string
	for _, n := range r.Needs {
		gs = append(gs, n.Groups...)
	}
	slices.Sort(gs)
	return slices.Compact(gs)
}

// Rules names the review rules the request answers to.
func (r *Request) Rules() []string {
	out := make([]string, len(r.Needs))
	for i, n := range r.Needs {
		out[i] = n.Rule
	}
	return out
}

// Eligible reports whether p may vote on the request (ignoring whether p is
// the requester).
func (r *Request) Eligible(p Principal) bool {
	for i := range r.Needs {
		if r.Needs[i].eligible(p) {
			return true
		}
	}
	return false
}

// Covers reports whether approvals given for the request's needs satisfy
// needs (a later policy's): every rule needed now was needed then, by no
// wider approver groups and no fewer approvers. A policy tightened since
// the approval was given asks anew.
func (r *Request) Covers(needs []Need) bool {
	for _, cur := range needs {
		ok := false
		for _, n := range r.Needs {
			if n.Rule != cur.Rule || n.Count < cur.Count {
				continue
			}
			narrower := true
			for _, g := range n.Groups {
				narrower = narrower && slices.Contains(cur.Groups, g)
			}
			if narrower {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// usable reports whether an approved request may release one more request
// at now.
func (r *Request) usable(now time.Time) bool {
	return r.State == Approved && now.Before(r.ValidUntil) && (r.Reusable || r.Uses == 0)
}

func (r *Request) clone() Request {
	c := *r
	c.Params = slices.Clone(r.Params)
	c.Needs = make([]Need, len(r.Needs))
	for i, n := range r.Needs {
		n.Groups = slices.Clone(n.Groups)
		n.Approvers = slices.Clone(n.Approvers)
		c.Needs[i] = n
	}
	c.Votes = slices.Clone(r.Votes)
	c.Webhooks = slices.Clone(r.Webhooks)
	return c
}

// Event names, as webhooks and the log see them.
const (
	EventRequested = "approval.requested"
	EventApproved  = "approval.approved"
	EventDenied    = "approval.denied"
	EventExpired   = "approval.expired"
	EventCancelled = "approval.cancelled"
)

func settleEvent(s State) string {
	switch s {
	case Approved:
		return EventApproved
	case Denied:
		return EventDenied
	case Expired:
		return EventExpired
	}
	return EventCancelled
}

// Option configures a Store.
type Option func(*Store)

// WithClock sets the time source (tests).
func WithClock(now func() time.Time) Option { return func(s *Store) { s.now = now } }

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(s *Store) { s.log = l } }

// WithNotify sets what is told of every request event (the webhook
// notifier). It must not block.
func WithNotify(fn func(event string, r Request)) Option { return func(s *Store) { s.notify = fn } }

// Retention is how long settled requests are kept.
const Retention = 30 * 24 * time.Hour

// Store keeps approval requests.
type Store struct {
	dir    string
	now    func() time.Time
	log    *slog.Logger
	notify func(string, Request)

	mu      sync.Mutex
	reqs    map[string]*Request
	waiters map[string]chan struct{}
	timers  map[string]*time.Timer
	closed  bool
}

// Open loads the requests in dir (creating it), expiring those whose time
// ran out while the gateway was down and dropping settled ones older than
// Retention.
func Open(dir string, opts ...Option) (*Store, error) {
	s := &Store{dir: dir, now: time.Now, log: slog.New(slog.DiscardHandler),
		reqs: map[string]*Request{}, waiters: map[string]chan struct{}{}, timers: map[string]*time.Timer{}}
	for _, o := range opts {
		o(s)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("approvals: %w", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("approvals: %w", err)
	}
	now := s.now()
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

// Close stops the expiry timers. Requests stay on disk.
func (s *Store) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for _, t := range s.timers {
		t.Stop()
	}
}

// schedule arms r's expiry. Called with mu held, or before the store is
// shared.
func (s *Store) schedule(r *Request) {
	id := r.ID
	s.timers[id] = time.AfterFunc(max(r.ExpiresAt.Sub(s.now()), 0), func() { s.expire(id) })
}

func (s *Store) expire(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.reqs[id]
	if !ok || r.Settled() || s.closed {
		return
	}
	if s.now().Before(r.ExpiresAt) {
		s.schedule(r) // the clock moved (tests)
		return
	}
	next := r.clone()
	s.settle(&next, Expired, fmt.Sprintf("nobody decided within %s", r.ExpiresAt.Sub(r.CreatedAt).Round(time.Second)))
	if err := s.commit(&next); err != nil {
		// It stays pending on disk, and a request past its expiry
		// releases nothing; the next start expires it.
		s.log.Error("could not record an approval request's expiry", "approval", id, "err", err)
	}
}

// NewID makes a request id: "ap-" and 16 base32 characters (80 random bits).
func NewID() string {
	b := make([]byte, 10)
	_, _ = rand.Read(b)
	return "ap-" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
}

// Open opens a request for r (ID, State and times are set here), unless a
// pending request with the same binding exists: then that one is returned
// with created false, so a retried statement does not ask twice.
func (s *Store) Open(r Request) (Request, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for _, x := range s.reqs {
		if x.State == Pending && x.Hash == r.Hash && x.Requester.Key() == r.Requester.Key() && x.Resource == r.Resource && now.Before(x.ExpiresAt) {
			return x.clone(), false, nil
		}
	}
	if !r.ExpiresAt.After(now) || len(r.Needs) == 0 {
		return Request{}, false, errors.New("approvals: a request needs approver rules and an expiry in the future")
	}
	pending := 0
	for _, x := range s.reqs {
		if x.State == Pending && x.Requester.Key() == r.Requester.Key() {
			pending++
		}
	}
	if pending >= MaxPendingPerRequester {
		return Request{}, false, fmt.Errorf("%w: %s has %d requests waiting for approvers", ErrTooMany, r.Requester, pending)
	}
	r.ID, r.State, r.CreatedAt = NewID(), Pending, now
	if _, err := s.write(&r); err != nil {
		// A request no one will hear of: the caller is refused.
		_ = os.Remove(filepath.Join(s.dir, r.ID+".json"))
		return Request{}, false, err
	}
	stored := r.clone()
	s.reqs[r.ID] = &stored
	s.schedule(&stored)
	s.log.Info("approval requested", "approval", r.ID, "requester", r.Requester.String(), "resource", r.Resource,
		"rules", r.Rules(), "groups", r.Groups(), "expires_at", r.ExpiresAt.UTC().Format(time.RFC3339))
	s.tell(EventRequested, &stored)
	return r, true, nil
}

// Redeem finds an approved request with this binding that may still be
// used and whose approvals cover needs (the review rules that hold the
// request now), and uses it: its use is recorded durably before Redeem
// returns.
func (s *Store) Redeem(hash string, requester Principal, resource string, needs []Need) (Request, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	var best *Request
	for _, x := range s.reqs {
		if x.Hash == hash && x.Requester.Key() == requester.Key() && x.Resource == resource && x.usable(now) && x.Covers(needs) {
			if best == nil || x.SettledAt.Before(best.SettledAt) {
				best = x
			}
		}
	}
	if best == nil {
		return Request{}, false, nil
	}
	next := best.clone()
	next.Uses++
	if err := s.commit(&next); err != nil {
		return Request{}, false, err
	}
	return next, true, nil
}

// Use uses the approved request id (the statement it held is about to
// run), recording the use durably first.
func (s *Store) Use(id string) (Request, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.reqs[id]
	if !ok {
		return Request{}, ErrNotFound
	}
	if !r.usable(s.now()) {
		return r.clone(), fmt.Errorf("%w: it is %s, used %d time(s), valid until %s", ErrNotUsable, r.State, r.Uses, r.ValidUntil.UTC().Format(time.RFC3339))
	}
	next := r.clone()
	next.Uses++
	if err := s.commit(&next); err != nil {
		return Request{}, err
	}
	return next, nil
}

// Get returns a request.
func (s *Store) Get(id string) (Request, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.reqs[id]
	if !ok {
		return Request{}, false
	}
	return r.clone(), true
}

// List returns the requests keep accepts, newest first.
func (s *Store) List(keep func(*Request) bool) []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Request
	for _, r := range s.reqs {
		if keep == nil || keep(r) {
			out = append(out, r.clone())
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.After(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// Counts says how many requests the store keeps in each state.
func (s *Store) Counts() map[State]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[State]int{Pending: 0, Approved: 0, Denied: 0, Expired: 0, Cancelled: 0}
	for _, r := range s.reqs {
		out[r.State]++
	}
	return out
}

// Settled returns a channel closed once id is settled (at once when it is
// settled or unknown).
func (s *Store) Settled(id string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.reqs[id]
	if !ok || r.Settled() {
		c := make(chan struct{})
		close(c)
		return c
	}
	c, ok := s.waiters[id]
	if !ok {
		c = make(chan struct{})
		s.waiters[id] = c
	}
	return c
}

// Vote records an approver's decision. approve false denies, which settles
// the request; approvals settle it once every rule has its count of
// distinct approvers. The requester never counts, whatever their groups.
func (s *Store) Vote(id string, who Principal, approve bool, comment string) (Request, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.reqs[id]
	if !ok {
		return Request{}, ErrNotFound
	}
	now := s.now()
	switch {
	case r.Settled():
		return r.clone(), fmt.Errorf("%w: it is %s (%s)", ErrSettled, r.State, r.Outcome)
	case !now.Before(r.ExpiresAt):
		return r.clone(), fmt.Errorf("%w: it expired at %s", ErrSettled, r.ExpiresAt.UTC().Format(time.RFC3339))
	case r.Requester.same(who):
		return r.clone(), fmt.Errorf("%w: %s asked for it", ErrSelfApproval, who)
	case !r.Eligible(who):
		return r.clone(), fmt.Errorf("%w: it needs a member of %s; %s is in [%s]", ErrNotApprover, strings.Join(r.Groups(), " or "), who, strings.Join(who.Groups, ", "))
	}
	for _, v := range r.Votes {
		if v.Approver.Key() == who.Key() {
			return r.clone(), fmt.Errorf("%w: %s %sd it at %s", ErrAlreadyVoted, who, v.Decision, v.Time.UTC().Format(time.RFC3339))
		}
	}
	next := r.clone()
	decision := "deny"
	if approve {
		decision = "approve"
	}
	next.Votes = append(next.Votes, Vote{Approver: who, Decision: decision, Comment: comment, Time: now})
	if !approve {
		out := "denied by " + who.String()
		if comment != "" {
			out += ": " + comment
		}
		s.settle(&next, Denied, out)
	} else {
		done := true
		for i := range next.Needs {
			n := &next.Needs[i]
			if n.eligible(who) {
				n.Approvers = append(n.Approvers, who.Key())
			}
			done = done && len(n.Approvers) >= n.Count
		}
		if done {
			var names []string
			for _, v := range next.Votes {
				names = append(names, v.Approver.String())
			}
			s.settle(&next, Approved, "approved by "+strings.Join(names, ", "))
			next.ValidUntil = now.Add(next.ValidFor)
		}
	}
	if err := s.commit(&next); err != nil {
		return r.clone(), err
	}
	s.log.Info("approval vote", "approval", id, "approver", who.String(), "decision", decision, "comment", comment, "state", next.State)
	return next.clone(), nil
}

// Cancel withdraws a pending request (its caller cancelled the statement).
func (s *Store) Cancel(id, why string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.reqs[id]
	if !ok {
		return ErrNotFound
	}
	if r.Settled() {
		return nil
	}
	next := r.clone()
	s.settle(&next, Cancelled, why)
	return s.commit(&next)
}

// settle moves next to a settled state. Called with mu held; commit makes
// it so.
func (s *Store) settle(next *Request, st State, outcome string) {
	next.State, next.SettledAt, next.Outcome = st, s.now(), outcome
}

// commit writes next durably and then makes it the request's state, waking
// waiters and telling the webhooks when it settled. Called with mu held.
func (s *Store) commit(next *Request) error {
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
func (s *Store) apply(next *Request) {
	prev := s.reqs[next.ID]
	stored := next.clone()
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
		s.tell(settleEvent(next.State), &stored)
	}
}

func (s *Store) tell(event string, r *Request) {
	if s.notify != nil {
		s.notify(event, r.clone())
	}
}

// write stores r durably: a temporary file, fsync, rename, fsync of the
// directory. renamed says whether the new file is in place (when only the
// directory's fsync failed).
func (s *Store) write(r *Request) (renamed bool, err error) {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return false, fmt.Errorf("approvals: %w", err)
	}
	b = append(b, '\n')
	path := filepath.Join(s.dir, r.ID+".json")
	if err := bundle.WriteFileAtomic(path, b, 0o600); err != nil {
		return false, fmt.Errorf("approvals: writing %s: %w", path, err)
	}
	d, err := os.Open(s.dir)
	if err != nil {
		return true, fmt.Errorf("approvals: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return true, fmt.Errorf("approvals: syncing %s: %w", s.dir, err)
	}
	return true, nil
}
