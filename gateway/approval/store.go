package approval

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"strings"
	"time"
)

// Store keeps approval requests. It is the one place that decides whether
// a vote counts and whether an approval may release a request, so every
// implementation gives the same answers: the conformance suite in
// approvaltest holds them to it.
//
// Every method takes a context, for stores that reach a database. Every
// change is durable before the method returns: a request that a store
// cannot record is refused, never acted on.
type Store interface {
	// Open opens a request for r (ID, State, Format and CreatedAt are set
	// here), unless a pending request with the same binding exists: then
	// that one is returned with created false, so a retried request does
	// not ask twice. ErrTooMany past MaxPendingPerRequester; ErrIncomplete
	// without needs or a future expiry.
	Open(ctx context.Context, r Request) (req Request, created bool, err error)
	// Redeem finds an approved request with this binding that may still be
	// used and whose approvals cover needs (the review rules that hold the
	// request now), the oldest first, and uses it. ok is false when there
	// is none.
	Redeem(ctx context.Context, hash string, requester Principal, resource string, needs []Need) (req Request, ok bool, err error)
	// Use spends one use of the approved request id: the request it held
	// is about to run. Exactly one of two concurrent uses of a single-use
	// approval succeeds; the other gets ErrNotUsable.
	Use(ctx context.Context, id string) (Request, error)
	// Vote records an approver's decision (see CastVote for the rules).
	Vote(ctx context.Context, id string, who Principal, approve bool, comment string) (Request, error)
	// Cancel withdraws a pending request. A settled one is left as it is.
	Cancel(ctx context.Context, id, why string) error
	// Get returns a request, or ErrNotFound.
	Get(ctx context.Context, id string) (Request, error)
	// List returns the requests keep accepts (all for nil), newest first.
	List(ctx context.Context, keep func(*Request) bool) ([]Request, error)
	// Counts says how many requests the store keeps in each state.
	Counts(ctx context.Context) (map[State]int, error)
	// Settled returns a channel closed once id is settled: at once when
	// it is settled or unknown.
	Settled(ctx context.Context, id string) (<-chan struct{}, error)
	// Close stops the store's background work. Requests stay stored.
	Close() error
}

// Event names, as webhooks and the log see them.
const (
	EventRequested = "approval.requested"
	EventApproved  = "approval.approved"
	EventDenied    = "approval.denied"
	EventExpired   = "approval.expired"
	EventCancelled = "approval.cancelled"
)

// SettleEvent is the event name of a settlement into s.
func SettleEvent(s State) string {
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

// NewID makes a request id: "ap-" and 16 base32 characters (80 random bits).
func NewID() string {
	b := make([]byte, 10)
	_, _ = rand.Read(b)
	return "ap-" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
}

// Prepare checks a new request and fills in what Open sets: its id, state,
// format and creation time.
func Prepare(r Request, now time.Time) (Request, error) {
	if !r.ExpiresAt.After(now) || len(r.Needs) == 0 {
		return Request{}, fmt.Errorf("approvals: %w", ErrIncomplete)
	}
	r = r.Clone()
	r.ID, r.State, r.CreatedAt, r.Format = NewID(), Pending, now, FormatVersion
	for i := range r.Needs {
		r.Needs[i].Approvers = nil
	}
	r.Votes, r.Uses, r.Outcome = nil, 0, ""
	r.SettledAt, r.ValidUntil = time.Time{}, time.Time{}
	return r, nil
}

// TooMany is the error Open returns when requester already has pending
// requests waiting.
func TooMany(requester Principal, pending int) error {
	return fmt.Errorf("%w: %s has %d requests waiting for approvers", ErrTooMany, requester, pending)
}

// CastVote applies an approver's decision to r at now and returns the
// request as it is after the vote. A deny settles the request; approvals
// settle it once every need has its count of distinct approvers. The
// requester never counts, whatever their groups; nobody votes twice; a
// settled or expired request takes no vote.
func CastVote(r Request, who Principal, approve bool, comment string, now time.Time) (Request, error) {
	switch {
	case r.Settled():
		return r, fmt.Errorf("%w: it is %s (%s)", ErrSettled, r.State, r.Outcome)
	case !now.Before(r.ExpiresAt):
		return r, fmt.Errorf("%w: it expired at %s", ErrSettled, r.ExpiresAt.UTC().Format(time.RFC3339))
	case r.Requester.Same(who):
		return r, fmt.Errorf("%w: %s asked for it", ErrSelfApproval, who)
	case !r.Eligible(who):
		return r, fmt.Errorf("%w: it needs a member of %s; %s is in [%s]", ErrNotApprover, strings.Join(r.Groups(), " or "), who, strings.Join(who.Groups, ", "))
	}
	for _, v := range r.Votes {
		if v.Approver.Key() == who.Key() {
			return r, fmt.Errorf("%w: %s %sd it at %s", ErrAlreadyVoted, who, v.Decision, v.Time.UTC().Format(time.RFC3339))
		}
	}
	next := r.Clone()
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
		Settle(&next, Denied, out, now)
		return next, nil
	}
	done := true
	for i := range next.Needs {
		n := &next.Needs[i]
		if n.Eligible(who) {
			n.Approvers = append(n.Approvers, who.Key())
		}
		done = done && len(n.Approvers) >= n.Count
	}
	if done {
		var names []string
		for _, v := range next.Votes {
			names = append(names, v.Approver.String())
		}
		Settle(&next, Approved, "approved by "+strings.Join(names, ", "), now)
		next.ValidUntil = now.Add(next.ValidFor)
	}
	return next, nil
}

// Settle moves r to a settled state.
func Settle(r *Request, st State, outcome string, now time.Time) {
	r.State, r.SettledAt, r.Outcome = st, now, outcome
}

// ExpiryOutcome is why a request that nobody decided expired.
func ExpiryOutcome(r *Request) string {
	return fmt.Sprintf("nobody decided within %s", r.ExpiresAt.Sub(r.CreatedAt).Round(time.Second))
}

// NotUsable is the error Use returns for a request that cannot release
// another request.
func NotUsable(r *Request) error {
	return fmt.Errorf("%w: it is %s, used %d time(s), valid until %s", ErrNotUsable, r.State, r.Uses, r.ValidUntil.UTC().Format(time.RFC3339))
}
