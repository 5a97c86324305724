package approval_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/gateway/approval"
)

const issuer = "https://idp.example.com"

// Principals of the tests: alice asks, the dba group approves, erin is in
// the security group, and mallory is in no group that matters.
var (
	alice   = approval.Principal{Name: "alice", Issuer: issuer, Subject: "sub-alice", Groups: []string{"dev", "dba"}}
	bob     = approval.Principal{Name: "bob", Issuer: issuer, Subject: "sub-bob", Groups: []string{"dba"}}
	carol   = approval.Principal{Name: "carol", Issuer: issuer, Subject: "sub-carol", Groups: []string{"dba"}}
	dave    = approval.Principal{Name: "dave", Issuer: issuer, Subject: "sub-dave", Groups: []string{"dba"}}
	erin    = approval.Principal{Name: "erin", Issuer: issuer, Subject: "sub-erin", Groups: []string{"security"}}
	mallory = approval.Principal{Name: "mallory", Issuer: issuer, Subject: "sub-mallory", Groups: []string{"dev"}}
)

// fakeClock is a time source the test moves by hand. Expiry timers read it
// from their own goroutines, so it is locked.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// openStore opens a store in dir and closes it when the test ends.
func openStore(t *testing.T, dir string, opts ...approval.Option) *approval.Store {
	t.Helper()
	s, err := approval.Open(dir, opts...)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(s.Close)
	return s
}

// request is a review request by alice on the orders database needing one
// dba, expiring an hour after now.
func request(now time.Time) approval.Request {
	return approval.Request{
		Requester: alice,
		Resource:  "orders",
		Hash:      "hash-1",
		Session:   "sess-1",
		Kind:      "query",
		SQL:       "DELETE FROM orders WHERE id = $1",
		Params:    []string{"42"},
		Needs:     []approval.Need{{Rule: "deletes", Reason: "deletes need a dba", Groups: []string{"dba"}, Count: 1}},
		Hold:      true,
		Wait:      time.Minute,
		ValidFor:  10 * time.Minute,
		ExpiresAt: now.Add(time.Hour),
	}
}

// mustOpen opens r in s and requires a new request.
func mustOpen(t *testing.T, s *approval.Store, r approval.Request) approval.Request {
	t.Helper()
	got, created, err := s.Open(r)
	if err != nil {
		t.Fatalf("Open request: %v", err)
	}
	if !created {
		t.Fatalf("Open request returned the existing %s, want a new one", got.ID)
	}
	return got
}

func mustVote(t *testing.T, s *approval.Store, id string, who approval.Principal, approve bool, comment string) approval.Request {
	t.Helper()
	got, err := s.Vote(id, who, approve, comment)
	if err != nil {
		t.Fatalf("Vote(%s, %s, %v): %v", id, who, approve, err)
	}
	return got
}

// waitClosed waits for c to close, failing the test after d.
func waitClosed(t *testing.T, c <-chan struct{}, d time.Duration, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(d):
		t.Fatalf("%s: not closed after %s", what, d)
	}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func TestOpenCreatesPendingRequest(t *testing.T) {
	clock := newFakeClock()
	dir := t.TempDir()
	s := openStore(t, dir, approval.WithClock(clock.Now))

	in := request(clock.Now())
	in.ID, in.State = "chosen-by-caller", approval.Approved // Open sets these
	r := mustOpen(t, s, in)

	if !strings.HasPrefix(r.ID, "ap-") || len(r.ID) != len("ap-")+16 || r.ID != strings.ToLower(r.ID) {
		t.Errorf("ID %q, want ap- and 16 lower-case base32 characters", r.ID)
	}
	if r.State != approval.Pending || r.Settled() {
		t.Errorf("state %s, settled %v; want pending", r.State, r.Settled())
	}
	if !r.CreatedAt.Equal(clock.Now()) {
		t.Errorf("CreatedAt %s, want the clock's %s", r.CreatedAt, clock.Now())
	}

	path := filepath.Join(dir, r.ID+".json")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("request file: %v", err)
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Errorf("request file mode %v, want 0600", mode)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var onDisk approval.Request
	if err := json.Unmarshal(b, &onDisk); err != nil {
		t.Fatalf("request file is not JSON: %v", err)
	}
	if onDisk.ID != r.ID || onDisk.State != approval.Pending || onDisk.Hash != "hash-1" || onDisk.Requester.Key() != alice.Key() || onDisk.SQL != in.SQL {
		t.Errorf("on disk %+v, want the opened request", onDisk)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 {
		t.Errorf("dir holds %d entries, want only the request file (no temporary files left)", len(ents))
	}

	got, ok := s.Get(r.ID)
	if !ok || got.ID != r.ID || got.State != approval.Pending {
		t.Errorf("Get = %+v, %v", got, ok)
	}
	if l := s.List(nil); len(l) != 1 || l[0].ID != r.ID {
		t.Errorf("List = %v, want only %s", l, r.ID)
	}
}

func TestOpenRefusesIncompleteRequests(t *testing.T) {
	clock := newFakeClock()
	s := openStore(t, t.TempDir(), approval.WithClock(clock.Now))
	tests := map[string]func(*approval.Request){
		"no needs":           func(r *approval.Request) { r.Needs = nil },
		"expiry now":         func(r *approval.Request) { r.ExpiresAt = clock.Now() },
		"expiry in the past": func(r *approval.Request) { r.ExpiresAt = clock.Now().Add(-time.Second) },
	}
	for name, edit := range tests {
		t.Run(name, func(t *testing.T) {
			r := request(clock.Now())
			edit(&r)
			if got, created, err := s.Open(r); err == nil || created {
				t.Errorf("Open = %s, %v, %v; want an error", got.ID, created, err)
			}
		})
	}
	if l := s.List(nil); len(l) != 0 {
		t.Errorf("refused requests were stored: %v", l)
	}
}

func TestOpenReturnsThePendingRequestOfTheSameBinding(t *testing.T) {
	clock := newFakeClock()
	s := openStore(t, t.TempDir(), approval.WithClock(clock.Now))
	first := mustOpen(t, s, request(clock.Now()))

	tests := map[string]struct {
		edit func(*approval.Request)
		same bool
	}{
		"same binding": {func(*approval.Request) {}, true},
		// The binding is issuer and subject: the bundle identity name and
		// the session may differ between a statement and its retry.
		"same binding, other name and session": {func(r *approval.Request) { r.Requester.Name = "alice-2"; r.Session = "sess-2" }, true},
		"other hash":                           {func(r *approval.Request) { r.Hash = "hash-2" }, false},
		"other subject":                        {func(r *approval.Request) { r.Requester = bob }, false},
		"other issuer":                         {func(r *approval.Request) { r.Requester.Issuer = "https://other.example.com" }, false},
		"other resource":                       {func(r *approval.Request) { r.Resource = "billing" }, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := request(clock.Now())
			tc.edit(&r)
			got, created, err := s.Open(r)
			if err != nil {
				t.Fatal(err)
			}
			if tc.same {
				if created || got.ID != first.ID || got.State != approval.Pending {
					t.Errorf("Open = %s (created %v), want the pending %s", got.ID, created, first.ID)
				}
				return
			}
			if !created || got.ID == first.ID {
				t.Errorf("Open = %s (created %v), want a new request", got.ID, created)
			}
		})
	}
	if l := s.List(nil); len(l) != 5 {
		t.Errorf("%d requests stored, want 5 (the first and four distinct bindings)", len(l))
	}
}

func TestOpenAfterSettlementOrExpiryOpensANewRequest(t *testing.T) {
	clock := newFakeClock()
	s := openStore(t, t.TempDir(), approval.WithClock(clock.Now))

	denied := mustOpen(t, s, request(clock.Now()))
	mustVote(t, s, denied.ID, bob, false, "no")
	again := mustOpen(t, s, request(clock.Now()))
	if again.ID == denied.ID {
		t.Fatalf("a denied request was reused")
	}

	// Past its expiry a pending request is no longer offered, even before
	// its timer has marked it expired.
	clock.Add(2 * time.Hour)
	fresh := mustOpen(t, s, request(clock.Now()))
	if fresh.ID == again.ID {
		t.Fatalf("an overdue request was reused")
	}
}

func TestVoteRefusals(t *testing.T) {
	clock := newFakeClock()
	s := openStore(t, t.TempDir(), approval.WithClock(clock.Now))
	r := mustOpen(t, s, request(clock.Now()))

	aliceOtherSubject := alice
	aliceOtherSubject.Subject = "sub-alice-pod-2" // a pod of the same service identity
	aliceOtherToken := alice
	aliceOtherToken.Name = "" // the same subject, no bundle identity

	tests := map[string]struct {
		id      string
		who     approval.Principal
		approve bool
		want    error
	}{
		"requester approves":                   {r.ID, alice, true, approval.ErrSelfApproval},
		"requester denies":                     {r.ID, alice, false, approval.ErrSelfApproval},
		"requester identity, other subject":    {r.ID, aliceOtherSubject, true, approval.ErrSelfApproval},
		"requester subject, no identity name":  {r.ID, aliceOtherToken, true, approval.ErrSelfApproval},
		"outside the approver groups":          {r.ID, mallory, true, approval.ErrNotApprover},
		"outside the approver groups, denying": {r.ID, erin, false, approval.ErrNotApprover},
		"no groups":                            {r.ID, approval.Principal{Issuer: issuer, Subject: "nobody"}, true, approval.ErrNotApprover},
		"unknown request":                      {"ap-doesnotexist0000", bob, true, approval.ErrNotFound},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := s.Vote(tc.id, tc.who, tc.approve, "comment")
			if !errors.Is(err, tc.want) {
				t.Errorf("Vote error %v, want %v", err, tc.want)
			}
		})
	}
	got, _ := s.Get(r.ID)
	if got.State != approval.Pending || len(got.Votes) != 0 || len(got.Needs[0].Approvers) != 0 {
		t.Errorf("refused votes changed the request: %+v", got)
	}
}

func TestVoteTwoOfThree(t *testing.T) {
	clock := newFakeClock()
	s := openStore(t, t.TempDir(), approval.WithClock(clock.Now))
	in := request(clock.Now())
	in.Needs[0].Count = 2
	r := mustOpen(t, s, in)
	settled := s.Settled(r.ID)

	got := mustVote(t, s, r.ID, bob, true, "looks fine")
	if got.State != approval.Pending || isClosed(settled) {
		t.Fatalf("after one of two approvals: state %s, settled channel closed %v", got.State, isClosed(settled))
	}
	if a := got.Needs[0].Approvers; len(a) != 1 || a[0] != bob.Key() {
		t.Errorf("approvers %q, want bob", a)
	}

	// The same approver again counts once. (Votes are counted by issuer
	// and subject: people who resolve to one bundle identity, say every
	// DBA matched by a group, are distinct approvers.)
	if _, err := s.Vote(r.ID, bob, true, ""); !errors.Is(err, approval.ErrAlreadyVoted) {
		t.Errorf("second vote by bob: %v, want ErrAlreadyVoted", err)
	}

	clock.Add(time.Minute)
	got = mustVote(t, s, r.ID, carol, true, "")
	if got.State != approval.Approved {
		t.Fatalf("after two approvals: state %s, want approved", got.State)
	}
	waitClosed(t, settled, time.Second, "Settled after approval")
	if !got.SettledAt.Equal(clock.Now()) || !got.ValidUntil.Equal(clock.Now().Add(in.ValidFor)) {
		t.Errorf("SettledAt %s, ValidUntil %s; want now %s and now+ValidFor", got.SettledAt, got.ValidUntil, clock.Now())
	}
	if len(got.Votes) != 2 || got.Votes[0].Approver.Key() != bob.Key() || got.Votes[0].Decision != "approve" || got.Votes[0].Comment != "looks fine" ||
		got.Votes[1].Approver.Key() != carol.Key() {
		t.Errorf("votes %+v, want bob's then carol's approvals", got.Votes)
	}
	if !strings.Contains(got.Outcome, "bob") || !strings.Contains(got.Outcome, "carol") {
		t.Errorf("outcome %q, want both approvers named", got.Outcome)
	}

	if _, err := s.Vote(r.ID, dave, true, ""); !errors.Is(err, approval.ErrSettled) {
		t.Errorf("third vote on an approved request: %v, want ErrSettled", err)
	}
	if _, err := s.Vote(r.ID, dave, false, "too late"); !errors.Is(err, approval.ErrSettled) {
		t.Errorf("deny of an approved request: %v, want ErrSettled", err)
	}
	if final, _ := s.Get(r.ID); final.State != approval.Approved || len(final.Votes) != 2 {
		t.Errorf("after refused votes: %s with %d votes", final.State, len(final.Votes))
	}
}

func TestOneDenySettles(t *testing.T) {
	clock := newFakeClock()
	s := openStore(t, t.TempDir(), approval.WithClock(clock.Now))
	in := request(clock.Now())
	in.Needs[0].Count = 2
	r := mustOpen(t, s, in)
	settled := s.Settled(r.ID)

	mustVote(t, s, r.ID, bob, true, "")
	got := mustVote(t, s, r.ID, carol, false, "not on a Friday")
	if got.State != approval.Denied {
		t.Fatalf("state %s, want denied", got.State)
	}
	waitClosed(t, settled, time.Second, "Settled after a deny")
	if !strings.Contains(got.Outcome, "not on a Friday") || !strings.Contains(got.Outcome, "carol") {
		t.Errorf("outcome %q, want the denier and the comment", got.Outcome)
	}
	if !got.ValidUntil.IsZero() {
		t.Errorf("a denied request is valid until %s", got.ValidUntil)
	}
	if _, err := s.Vote(r.ID, dave, true, ""); !errors.Is(err, approval.ErrSettled) {
		t.Errorf("vote on a denied request: %v, want ErrSettled", err)
	}
	if _, ok, err := s.Redeem(in.Hash, alice, in.Resource, in.Needs); ok || err != nil {
		t.Errorf("Redeem of a denied request = %v, %v", ok, err)
	}
}

func TestVoteEveryNeedMustBeMet(t *testing.T) {
	clock := newFakeClock()
	s := openStore(t, t.TempDir(), approval.WithClock(clock.Now))
	in := request(clock.Now())
	in.Needs = []approval.Need{
		{Rule: "deletes", Reason: "deletes need a dba", Groups: []string{"dba"}, Count: 2},
		{Rule: "pii", Reason: "customer data needs security", Groups: []string{"security"}, Count: 1},
	}
	r := mustOpen(t, s, in)

	if g := r.Groups(); len(g) != 2 || g[0] != "dba" || g[1] != "security" {
		t.Errorf("Groups %q, want [dba security]", g)
	}
	if rules := r.Rules(); len(rules) != 2 || rules[0] != "deletes" || rules[1] != "pii" {
		t.Errorf("Rules %q", rules)
	}

	if got := mustVote(t, s, r.ID, erin, true, ""); got.State != approval.Pending {
		t.Fatalf("security alone approved it: %s", got.State)
	}
	if got := mustVote(t, s, r.ID, bob, true, ""); got.State != approval.Pending {
		t.Fatalf("one of two dbas approved it: %s", got.State)
	}
	got := mustVote(t, s, r.ID, carol, true, "")
	if got.State != approval.Approved {
		t.Fatalf("every rule met, state %s", got.State)
	}
	if a := got.Needs[0].Approvers; len(a) != 2 || a[0] != bob.Key() || a[1] != carol.Key() {
		t.Errorf("dba approvers %q", a)
	}
	if a := got.Needs[1].Approvers; len(a) != 1 || a[0] != erin.Key() {
		t.Errorf("security approvers %q", a)
	}
}

func TestVoteCountsTowardEveryNeedOfTheApproversGroups(t *testing.T) {
	clock := newFakeClock()
	s := openStore(t, t.TempDir(), approval.WithClock(clock.Now))
	in := request(clock.Now())
	in.Needs = []approval.Need{
		{Rule: "deletes", Groups: []string{"dba"}, Count: 1},
		{Rule: "pii", Groups: []string{"security"}, Count: 1},
	}
	r := mustOpen(t, s, in)
	both := approval.Principal{Name: "frank", Issuer: issuer, Subject: "sub-frank", Groups: []string{"security", "dba"}}
	got := mustVote(t, s, r.ID, both, true, "")
	if got.State != approval.Approved {
		t.Errorf("a member of both groups met both rules, state %s", got.State)
	}
}

func TestVoteAfterExpiryIsRefused(t *testing.T) {
	clock := newFakeClock()
	s := openStore(t, t.TempDir(), approval.WithClock(clock.Now))
	r := mustOpen(t, s, request(clock.Now()))
	// The clock passes the expiry; the real-time timer has not fired.
	clock.Add(time.Hour)
	if _, err := s.Vote(r.ID, bob, true, ""); !errors.Is(err, approval.ErrSettled) {
		t.Errorf("vote at the expiry: %v, want ErrSettled", err)
	}
}

func TestSettledClosesOnEverySettlement(t *testing.T) {
	tests := map[string]struct {
		settle func(t *testing.T, s *approval.Store, id string)
		want   approval.State
	}{
		"approve": {func(t *testing.T, s *approval.Store, id string) { mustVote(t, s, id, bob, true, "") }, approval.Approved},
		"deny":    {func(t *testing.T, s *approval.Store, id string) { mustVote(t, s, id, bob, false, "no") }, approval.Denied},
		"cancel": {func(t *testing.T, s *approval.Store, id string) {
			if err := s.Cancel(id, "the client went away"); err != nil {
				t.Fatal(err)
			}
		}, approval.Cancelled},
		"expire": {func(*testing.T, *approval.Store, string) {}, approval.Expired},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s := openStore(t, t.TempDir())
			in := request(time.Now())
			if tc.want == approval.Expired {
				in.ExpiresAt = time.Now().Add(150 * time.Millisecond)
			}
			r := mustOpen(t, s, in)
			c1, c2 := s.Settled(r.ID), s.Settled(r.ID)
			if isClosed(c1) {
				t.Fatal("Settled is closed for a pending request")
			}
			tc.settle(t, s, r.ID)
			waitClosed(t, c1, 5*time.Second, "Settled")
			waitClosed(t, c2, time.Second, "second Settled channel")
			got, _ := s.Get(r.ID)
			if got.State != tc.want {
				t.Errorf("state %s, want %s", got.State, tc.want)
			}
			if !isClosed(s.Settled(r.ID)) {
				t.Error("Settled of a settled request is not closed at once")
			}
		})
	}
}

func TestSettledOfAnUnknownRequestIsClosed(t *testing.T) {
	s := openStore(t, t.TempDir())
	if !isClosed(s.Settled("ap-unknown")) {
		t.Error("Settled of an unknown request blocks")
	}
}

func TestExpiry(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	in := request(time.Now())
	in.ExpiresAt = time.Now().Add(200 * time.Millisecond)
	r := mustOpen(t, s, in)

	waitClosed(t, s.Settled(r.ID), 5*time.Second, "Settled at expiry")
	got, _ := s.Get(r.ID)
	if got.State != approval.Expired || got.SettledAt.Before(in.ExpiresAt) {
		t.Errorf("state %s settled at %s, want expired at or after %s", got.State, got.SettledAt, in.ExpiresAt)
	}
	if !strings.Contains(got.Outcome, "nobody decided") {
		t.Errorf("outcome %q", got.Outcome)
	}
	if _, err := s.Vote(r.ID, bob, true, ""); !errors.Is(err, approval.ErrSettled) {
		t.Errorf("vote on an expired request: %v, want ErrSettled", err)
	}
	// The expiry is durable.
	s.Close()
	again := openStore(t, dir)
	if got, _ := again.Get(r.ID); got.State != approval.Expired {
		t.Errorf("after reopening: %s, want expired", got.State)
	}
}

func TestExpiryWaitsForTheClock(t *testing.T) {
	// The timer fires on real time; a clock that has not reached the
	// expiry re-arms it instead of expiring the request early.
	clock := newFakeClock()
	s := openStore(t, t.TempDir(), approval.WithClock(clock.Now))
	in := request(clock.Now())
	in.ExpiresAt = clock.Now().Add(50 * time.Millisecond)
	r := mustOpen(t, s, in)
	settled := s.Settled(r.ID)

	time.Sleep(150 * time.Millisecond) // the timer has fired at least once
	if isClosed(settled) {
		t.Fatal("the request expired before the clock reached its expiry")
	}
	clock.Add(time.Second)
	waitClosed(t, settled, 5*time.Second, "Settled once the clock passed the expiry")
	if got, _ := s.Get(r.ID); got.State != approval.Expired {
		t.Errorf("state %s, want expired", got.State)
	}
}

func TestReopenSchedulesPendingExpiry(t *testing.T) {
	clock := newFakeClock()
	dir := t.TempDir()
	s := openStore(t, dir, approval.WithClock(clock.Now))
	in := request(clock.Now())
	in.ExpiresAt = clock.Now().Add(time.Minute)
	r := mustOpen(t, s, in)
	s.Close()

	// The gateway is down until just before the expiry; the reopened store
	// arms the timer for what is left, not for the original minute. (What
	// is left is not zero: see TestReopenExpiresOverdueRequests.)
	clock.Add(time.Minute - 250*time.Millisecond)
	again := openStore(t, dir, approval.WithClock(clock.Now))
	settled := again.Settled(r.ID)
	if got, _ := again.Get(r.ID); got.State != approval.Pending {
		t.Fatalf("reopened: %s, want pending", got.State)
	}
	clock.Add(time.Second)
	waitClosed(t, settled, 5*time.Second, "Settled after reopening")
	if got, _ := again.Get(r.ID); got.State != approval.Expired {
		t.Errorf("state %s, want expired", got.State)
	}
}

func TestReopenExpiresOverdueRequests(t *testing.T) {
	clock := newFakeClock()
	dir := t.TempDir()
	s := openStore(t, dir, approval.WithClock(clock.Now))
	var ids []string
	for i := range 8 {
		in := request(clock.Now())
		in.Hash = fmt.Sprint("hash-", i)
		in.ExpiresAt = clock.Now().Add(time.Minute)
		ids = append(ids, mustOpen(t, s, in).ID)
	}
	s.Close()

	// The gateway was down past the expiry.
	clock.Add(time.Hour)
	again := openStore(t, dir, approval.WithClock(clock.Now))
	for _, id := range ids {
		waitClosed(t, again.Settled(id), 2*time.Second, "Settled of an overdue request after reopening")
		if got, _ := again.Get(id); got.State != approval.Expired {
			t.Errorf("%s: state %s, want expired", id, got.State)
		}
	}
}

func TestRedeem(t *testing.T) {
	clock := newFakeClock()
	s := openStore(t, t.TempDir(), approval.WithClock(clock.Now))
	in := request(clock.Now())
	r := mustOpen(t, s, in)

	if _, ok, err := s.Redeem(in.Hash, alice, in.Resource, in.Needs); ok || err != nil {
		t.Fatalf("Redeem of a pending request = %v, %v", ok, err)
	}
	mustVote(t, s, r.ID, bob, true, "")

	otherSubject := alice
	otherSubject.Subject = "sub-alice-pod-2"
	refused := map[string]struct {
		hash      string
		requester approval.Principal
		resource  string
	}{
		"other hash":     {"hash-2", alice, in.Resource},
		"other subject":  {in.Hash, otherSubject, in.Resource},
		"other resource": {in.Hash, alice, "billing"},
		"the approver":   {in.Hash, bob, in.Resource},
	}
	for name, tc := range refused {
		t.Run(name, func(t *testing.T) {
			if got, ok, err := s.Redeem(tc.hash, tc.requester, tc.resource, in.Needs); ok || err != nil {
				t.Errorf("Redeem = %s, %v, %v; want nothing", got.ID, ok, err)
			}
		})
	}

	// The requester's Name may differ: the binding is issuer and subject.
	renamed := alice
	renamed.Name = ""
	got, ok, err := s.Redeem(in.Hash, renamed, in.Resource, in.Needs)
	if err != nil || !ok || got.ID != r.ID || got.Uses != 1 {
		t.Fatalf("Redeem = %s (uses %d), %v, %v; want %s used once", got.ID, got.Uses, ok, err, r.ID)
	}
	if stored, _ := s.Get(r.ID); stored.Uses != 1 {
		t.Errorf("stored uses %d, want 1", stored.Uses)
	}
	if _, ok, err := s.Redeem(in.Hash, alice, in.Resource, in.Needs); ok || err != nil {
		t.Errorf("second Redeem of a single-use approval = %v, %v", ok, err)
	}
	if _, err := s.Use(r.ID); !errors.Is(err, approval.ErrNotUsable) {
		t.Errorf("Use after Redeem: %v, want ErrNotUsable", err)
	}
}

func TestRedeemReusable(t *testing.T) {
	clock := newFakeClock()
	s := openStore(t, t.TempDir(), approval.WithClock(clock.Now))
	in := request(clock.Now())
	in.Reusable = true
	r := mustOpen(t, s, in)
	mustVote(t, s, r.ID, bob, true, "")

	for want := 1; want <= 3; want++ {
		got, ok, err := s.Redeem(in.Hash, alice, in.Resource, in.Needs)
		if err != nil || !ok || got.Uses != want {
			t.Fatalf("Redeem %d = uses %d, %v, %v", want, got.Uses, ok, err)
		}
	}
	if got, err := s.Use(r.ID); err != nil || got.Uses != 4 {
		t.Errorf("Use of a reusable approval = uses %d, %v", got.Uses, err)
	}

	// Not past ValidUntil, even reusable.
	clock.Add(in.ValidFor)
	if _, ok, err := s.Redeem(in.Hash, alice, in.Resource, in.Needs); ok || err != nil {
		t.Errorf("Redeem at ValidUntil = %v, %v", ok, err)
	}
	if _, err := s.Use(r.ID); !errors.Is(err, approval.ErrNotUsable) {
		t.Errorf("Use at ValidUntil: %v, want ErrNotUsable", err)
	}
}

func TestRedeemAfterValidUntil(t *testing.T) {
	clock := newFakeClock()
	s := openStore(t, t.TempDir(), approval.WithClock(clock.Now))
	in := request(clock.Now())
	r := mustOpen(t, s, in)
	mustVote(t, s, r.ID, bob, true, "")

	clock.Add(in.ValidFor - time.Nanosecond)
	clock.Add(time.Nanosecond)
	if _, ok, err := s.Redeem(in.Hash, alice, in.Resource, in.Needs); ok || err != nil {
		t.Errorf("Redeem at ValidUntil = %v, %v; want nothing", ok, err)
	}
	if got, _ := s.Get(r.ID); got.Uses != 0 {
		t.Errorf("a refused Redeem counted a use: %d", got.Uses)
	}
}

func TestRedeemJustBeforeValidUntil(t *testing.T) {
	clock := newFakeClock()
	s := openStore(t, t.TempDir(), approval.WithClock(clock.Now))
	in := request(clock.Now())
	r := mustOpen(t, s, in)
	mustVote(t, s, r.ID, bob, true, "")
	clock.Add(in.ValidFor - time.Nanosecond)
	if _, ok, err := s.Redeem(in.Hash, alice, in.Resource, in.Needs); !ok || err != nil {
		t.Errorf("Redeem just before ValidUntil = %v, %v; want it used", ok, err)
	}
}

func TestRedeemUsesTheOldestApproval(t *testing.T) {
	clock := newFakeClock()
	s := openStore(t, t.TempDir(), approval.WithClock(clock.Now))
	in := request(clock.Now())
	first := mustOpen(t, s, in)
	mustVote(t, s, first.ID, bob, true, "")
	clock.Add(time.Minute)
	second := mustOpen(t, s, request(clock.Now()))
	mustVote(t, s, second.ID, bob, true, "")

	for _, want := range []string{first.ID, second.ID} {
		got, ok, err := s.Redeem(in.Hash, alice, in.Resource, in.Needs)
		if err != nil || !ok || got.ID != want {
			t.Fatalf("Redeem = %s, %v, %v; want %s", got.ID, ok, err, want)
		}
	}
	if _, ok, _ := s.Redeem(in.Hash, alice, in.Resource, in.Needs); ok {
		t.Error("a third Redeem of two single-use approvals succeeded")
	}
}

func TestUse(t *testing.T) {
	clock := newFakeClock()
	s := openStore(t, t.TempDir(), approval.WithClock(clock.Now))
	in := request(clock.Now())
	r := mustOpen(t, s, in)

	if _, err := s.Use("ap-unknown"); !errors.Is(err, approval.ErrNotFound) {
		t.Errorf("Use of an unknown request: %v, want ErrNotFound", err)
	}
	if _, err := s.Use(r.ID); !errors.Is(err, approval.ErrNotUsable) {
		t.Errorf("Use of a pending request: %v, want ErrNotUsable", err)
	}
	mustVote(t, s, r.ID, bob, true, "")
	got, err := s.Use(r.ID)
	if err != nil || got.Uses != 1 || got.State != approval.Approved {
		t.Fatalf("Use = uses %d, %s, %v", got.Uses, got.State, err)
	}
	if _, err := s.Use(r.ID); !errors.Is(err, approval.ErrNotUsable) {
		t.Errorf("second Use of a single-use approval: %v, want ErrNotUsable", err)
	}
	if _, ok, _ := s.Redeem(in.Hash, alice, in.Resource, in.Needs); ok {
		t.Error("Redeem after Use succeeded on a single-use approval")
	}

	// An unused approval past ValidUntil cannot be used either.
	other := request(clock.Now())
	other.Hash = "hash-2"
	late := mustOpen(t, s, other)
	mustVote(t, s, late.ID, bob, true, "")
	clock.Add(other.ValidFor)
	if _, err := s.Use(late.ID); !errors.Is(err, approval.ErrNotUsable) {
		t.Errorf("Use at ValidUntil: %v, want ErrNotUsable", err)
	}
}

func TestCancel(t *testing.T) {
	clock := newFakeClock()
	s := openStore(t, t.TempDir(), approval.WithClock(clock.Now))
	r := mustOpen(t, s, request(clock.Now()))

	if err := s.Cancel("ap-unknown", "why"); !errors.Is(err, approval.ErrNotFound) {
		t.Errorf("Cancel of an unknown request: %v, want ErrNotFound", err)
	}
	if err := s.Cancel(r.ID, "the client disconnected"); err != nil {
		t.Fatal(err)
	}
	got, _ := s.Get(r.ID)
	if got.State != approval.Cancelled || got.Outcome != "the client disconnected" || !got.SettledAt.Equal(clock.Now()) {
		t.Errorf("cancelled: %s %q at %s", got.State, got.Outcome, got.SettledAt)
	}
	if _, err := s.Vote(r.ID, bob, true, ""); !errors.Is(err, approval.ErrSettled) {
		t.Errorf("vote on a cancelled request: %v, want ErrSettled", err)
	}

	// Cancelling a settled request changes nothing.
	approved := request(clock.Now())
	approved.Hash = "hash-2"
	a := mustOpen(t, s, approved)
	mustVote(t, s, a.ID, bob, true, "")
	if err := s.Cancel(a.ID, "late"); err != nil {
		t.Errorf("Cancel of an approved request: %v", err)
	}
	if got, _ := s.Get(a.ID); got.State != approval.Approved {
		t.Errorf("Cancel of an approved request made it %s", got.State)
	}
}

func TestGetAndListReturnCopies(t *testing.T) {
	clock := newFakeClock()
	s := openStore(t, t.TempDir(), approval.WithClock(clock.Now))
	r := mustOpen(t, s, request(clock.Now()))

	got, _ := s.Get(r.ID)
	got.Needs[0].Groups[0] = "dev"
	got.Params[0] = "changed"
	l := s.List(nil)
	l[0].Needs[0].Count = 0
	if _, err := s.Vote(r.ID, mallory, true, ""); !errors.Is(err, approval.ErrNotApprover) {
		t.Errorf("editing a returned request changed the stored groups: %v", err)
	}
	again, _ := s.Get(r.ID)
	if again.Params[0] != "42" || again.Needs[0].Count != 1 {
		t.Errorf("editing returned requests changed the store: %+v", again)
	}
}

func TestListNewestFirstAndFiltered(t *testing.T) {
	clock := newFakeClock()
	s := openStore(t, t.TempDir(), approval.WithClock(clock.Now))
	var ids []string
	for _, h := range []string{"h1", "h2", "h3"} {
		in := request(clock.Now())
		in.Hash = h
		ids = append(ids, mustOpen(t, s, in).ID)
		clock.Add(time.Second)
	}
	mustVote(t, s, ids[1], bob, false, "no")

	all := s.List(nil)
	if len(all) != 3 || all[0].ID != ids[2] || all[1].ID != ids[1] || all[2].ID != ids[0] {
		t.Errorf("List order %v, want newest first %v", requestIDs(all), ids)
	}
	pending := s.List(func(r *approval.Request) bool { return r.State == approval.Pending })
	if len(pending) != 2 || pending[0].ID != ids[2] || pending[1].ID != ids[0] {
		t.Errorf("pending %v", requestIDs(pending))
	}
}

func requestIDs(rs []approval.Request) []string {
	ids := make([]string, len(rs))
	for i, r := range rs {
		ids[i] = r.ID
	}
	return ids
}

func TestPersistence(t *testing.T) {
	clock := newFakeClock()
	dir := t.TempDir()
	s := openStore(t, dir, approval.WithClock(clock.Now))
	in := request(clock.Now())
	in.Needs[0].Count = 2
	r := mustOpen(t, s, in)
	mustVote(t, s, r.ID, bob, true, "first")
	s.Close()

	// A vote survives a restart, and still counts.
	s2 := openStore(t, dir, approval.WithClock(clock.Now))
	got, ok := s2.Get(r.ID)
	if !ok || got.State != approval.Pending || len(got.Votes) != 1 || got.Votes[0].Comment != "first" ||
		len(got.Needs[0].Approvers) != 1 || got.Needs[0].Approvers[0] != bob.Key() {
		t.Fatalf("after reopening: %+v", got)
	}
	if _, err := s2.Vote(r.ID, bob, true, ""); !errors.Is(err, approval.ErrAlreadyVoted) {
		t.Errorf("bob again after reopening: %v, want ErrAlreadyVoted", err)
	}
	if _, err := s2.Vote(r.ID, alice, true, ""); !errors.Is(err, approval.ErrSelfApproval) {
		t.Errorf("alice after reopening: %v, want ErrSelfApproval", err)
	}
	if got := mustVote(t, s2, r.ID, carol, true, ""); got.State != approval.Approved {
		t.Fatalf("second approval after reopening: %s", got.State)
	}
	if _, ok, err := s2.Redeem(in.Hash, alice, in.Resource, in.Needs); !ok || err != nil {
		t.Fatalf("Redeem = %v, %v", ok, err)
	}
	s2.Close()

	// So do the settlement and the use.
	s3 := openStore(t, dir, approval.WithClock(clock.Now))
	got, _ = s3.Get(r.ID)
	if got.State != approval.Approved || got.Uses != 1 || !got.ValidUntil.Equal(clock.Now().Add(in.ValidFor)) || len(got.Votes) != 2 {
		t.Errorf("after the second reopening: %s, uses %d, valid until %s, %d votes", got.State, got.Uses, got.ValidUntil, len(got.Votes))
	}
	if _, ok, _ := s3.Redeem(in.Hash, alice, in.Resource, in.Needs); ok {
		t.Error("a used single-use approval was redeemed again after a restart")
	}
	if !isClosed(s3.Settled(r.ID)) {
		t.Error("Settled of a reloaded approved request is not closed")
	}
}

func TestOpenIgnoresUnreadableFiles(t *testing.T) {
	clock := newFakeClock()
	dir := t.TempDir()
	s := openStore(t, dir, approval.WithClock(clock.Now))
	good := mustOpen(t, s, request(clock.Now()))
	s.Close()

	// A request file renamed to another id must not be loaded as that id.
	b, err := os.ReadFile(filepath.Join(dir, good.ID+".json"))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{
		"ap-corrupt0000000000.json":  []byte(`{"id": "ap-corrupt0000000000", "state": `),
		"ap-empty000000000000.json":  nil,
		"ap-notjson00000000000.json": []byte("not json at all\n"),
		"ap-renamed0000000000.json":  b,
		".ap-tmp.json":               b, // a temporary file of an interrupted write
		"README.txt":                 b, // not a request file
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	again := openStore(t, dir, approval.WithClock(clock.Now))
	if l := again.List(nil); len(l) != 1 || l[0].ID != good.ID {
		t.Errorf("List %v, want only %s", requestIDs(l), good.ID)
	}
	for _, id := range []string{"ap-corrupt0000000000", "ap-renamed0000000000"} {
		if _, ok := again.Get(id); ok {
			t.Errorf("%s was loaded", id)
		}
	}
	// Ignored, not deleted: someone may want to look at them.
	if _, err := os.Stat(filepath.Join(dir, "ap-corrupt0000000000.json")); err != nil {
		t.Errorf("the corrupt file: %v", err)
	}
	if got := mustVote(t, again, good.ID, bob, true, ""); got.State != approval.Approved {
		t.Errorf("the good request next to corrupt ones: %s", got.State)
	}
}

func TestOpenIgnoresAnEntryItCannotRead(t *testing.T) {
	clock := newFakeClock()
	dir := t.TempDir()
	s := openStore(t, dir, approval.WithClock(clock.Now))
	good := mustOpen(t, s, request(clock.Now()))
	s.Close()
	// Tests may run as root, which reads any file: a directory is an entry
	// that fails to read for everyone.
	if err := os.Mkdir(filepath.Join(dir, "ap-directory00000000.json"), 0o700); err != nil {
		t.Fatal(err)
	}
	again, err := approval.Open(dir, approval.WithClock(clock.Now))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(again.Close)
	if l := again.List(nil); len(l) != 1 || l[0].ID != good.ID {
		t.Errorf("List %v, want only %s", requestIDs(l), good.ID)
	}
}

func TestOpenDropsSettledRequestsPastRetention(t *testing.T) {
	clock := newFakeClock()
	dir := t.TempDir()
	s := openStore(t, dir, approval.WithClock(clock.Now))
	old := mustOpen(t, s, request(clock.Now()))
	mustVote(t, s, old.ID, bob, false, "no")
	clock.Add(approval.Retention / 2)
	recent := request(clock.Now())
	recent.Hash = "hash-2"
	kept := mustOpen(t, s, recent)
	mustVote(t, s, kept.ID, bob, false, "no")
	s.Close()

	clock.Add(approval.Retention/2 + time.Second)
	again := openStore(t, dir, approval.WithClock(clock.Now))
	if _, ok := again.Get(old.ID); ok {
		t.Error("a request settled longer than Retention ago was loaded")
	}
	if _, err := os.Stat(filepath.Join(dir, old.ID+".json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("its file: %v, want it removed", err)
	}
	if _, ok := again.Get(kept.ID); !ok {
		t.Error("a request settled within Retention was dropped")
	}
}

func TestOpenFailsOnAnUnusableDir(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := approval.Open(file); err == nil {
		s.Close()
		t.Error("Open of a regular file succeeded")
	}
}

func TestNewID(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id := approval.NewID()
		if !strings.HasPrefix(id, "ap-") || len(id) != 19 || strings.ContainsAny(id, "=/+ ") {
			t.Fatalf("NewID %q", id)
		}
		if seen[id] {
			t.Fatalf("NewID repeated %q", id)
		}
		seen[id] = true
	}
}

func TestPrincipal(t *testing.T) {
	if got := alice.String(); got != "alice (subject sub-alice)" {
		t.Errorf("String %q", got)
	}
	if got := (approval.Principal{Subject: "svc"}).String(); got != "svc" {
		t.Errorf("String without a name %q", got)
	}
	if got := (approval.Principal{Name: "svc", Subject: "svc"}).String(); got != "svc" {
		t.Errorf("String when name is the subject %q", got)
	}
	other := approval.Principal{Issuer: "https://other.example.com", Subject: alice.Subject}
	if other.Key() == alice.Key() {
		t.Error("the same subject of two issuers has one key")
	}
}

// TestRedeemRefusesWhenThePolicyTightened: an approval answers the rules it
// was asked under; when the policy now needs another rule, more approvers,
// or approvers from a group the approval's did not include, it does not
// release the request.
func TestRedeemRefusesWhenThePolicyTightened(t *testing.T) {
	s := openStore(t, t.TempDir())
	in := request(time.Now())
	r := mustOpen(t, s, in)
	mustVote(t, s, r.ID, bob, true, "")
	for name, needs := range map[string][]approval.Need{
		"another rule":   {in.Needs[0], {Rule: "security", Groups: []string{"security"}, Count: 1}},
		"more approvers": {{Rule: "deletes", Groups: []string{"dba"}, Count: 2}},
		"narrower group": {{Rule: "deletes", Groups: []string{"senior-dba"}, Count: 1}},
	} {
		if _, ok, err := s.Redeem(in.Hash, alice, in.Resource, needs); ok || err != nil {
			t.Errorf("%s: redeemed (%v, %v)", name, ok, err)
		}
	}
	wider := []approval.Need{{Rule: "deletes", Groups: []string{"dba", "oncall"}, Count: 1}}
	if _, ok, err := s.Redeem(in.Hash, alice, in.Resource, wider); !ok || err != nil {
		t.Errorf("a policy that widened the approver groups: not redeemed (%v, %v)", ok, err)
	}
}

// TestOpenCapsPendingRequestsPerRequester: one caller cannot flood the
// approvers.
func TestOpenCapsPendingRequestsPerRequester(t *testing.T) {
	s := openStore(t, t.TempDir())
	for i := 0; i < approval.MaxPendingPerRequester; i++ {
		in := request(time.Now())
		in.Hash = fmt.Sprint("hash-", i)
		mustOpen(t, s, in)
	}
	in := request(time.Now())
	in.Hash = "one-too-many"
	if _, _, err := s.Open(in); !errors.Is(err, approval.ErrTooMany) {
		t.Fatalf("open beyond the cap: %v", err)
	}
	other := request(time.Now())
	other.Requester = carol
	mustOpen(t, s, other)
}
