// Package approvaltest is the conformance suite every approval.Store must
// pass: how requests bind, who may vote, N-of-M, expiry, redeem and use
// exactly once under concurrency, and what survives a restart. A store's
// own tests call Run with a Harness that makes and reopens it.
package approvaltest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/gateway/approval"
	"github.com/gatehouse-dev/gatehouse/internal/clock"
)

// Harness makes the stores the suite tests.
type Harness struct {
	// New makes an empty store that reads the time from c. The suite
	// closes it.
	New func(t *testing.T, c clock.Clock) approval.Store
	// Reopen makes a new store over the state s kept (s has been closed):
	// a gateway restart.
	Reopen func(t *testing.T, s approval.Store, c clock.Clock) approval.Store
}

const issuer = "https://idp.example.com"

// Principals: alice asks, the dba group approves, erin is in security, and
// mallory is in no group that matters.
var (
	alice   = approval.Principal{Name: "alice", Issuer: issuer, Subject: "sub-alice", Groups: []string{"dev", "dba"}}
	bob     = approval.Principal{Name: "bob", Issuer: issuer, Subject: "sub-bob", Groups: []string{"dba"}}
	carol   = approval.Principal{Name: "carol", Issuer: issuer, Subject: "sub-carol", Groups: []string{"dba"}}
	dave    = approval.Principal{Name: "dave", Issuer: issuer, Subject: "sub-dave", Groups: []string{"dba"}}
	erin    = approval.Principal{Name: "erin", Issuer: issuer, Subject: "sub-erin", Groups: []string{"security"}}
	mallory = approval.Principal{Name: "mallory", Issuer: issuer, Subject: "sub-mallory", Groups: []string{"dev"}}
)

// Request is a review request by alice on the orders database needing one
// dba, expiring an hour after now.
func Request(now time.Time) approval.Request {
	return approval.Request{
		Requester: alice,
		Resource:  "orders",
		Hash:      "hash-1",
		Session:   "sess-1",
		Protocol:  "postgres",
		Kind:      "query",
		Subject:   approval.Subject{Text: "DELETE FROM orders WHERE id = $1", Params: []string{"42"}},
		Needs:     []approval.Need{{Rule: "deletes", Reason: "deletes need a dba", Groups: []string{"dba"}, Count: 1}},
		Hold:      true,
		Wait:      time.Minute,
		ValidFor:  10 * time.Minute,
		ExpiresAt: now.Add(time.Hour),
	}
}

// suite is one test's store and clock.
type suite struct {
	t     *testing.T
	h     Harness
	clock *clock.Fake
	s     approval.Store
	ctx   context.Context
}

func (h Harness) start(t *testing.T) *suite {
	t.Helper()
	c := clock.NewFake(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC))
	x := &suite{t: t, h: h, clock: c, ctx: context.Background()}
	x.s = h.New(t, c)
	t.Cleanup(func() { x.s.Close() })
	return x
}

// restart closes the store and reopens its state.
func (x *suite) restart() {
	x.t.Helper()
	x.s.Close()
	x.s = x.h.Reopen(x.t, x.s, x.clock)
}

func (x *suite) open(r approval.Request) approval.Request {
	x.t.Helper()
	got, created, err := x.s.Open(x.ctx, r)
	if err != nil {
		x.t.Fatalf("Open: %v", err)
	}
	if !created {
		x.t.Fatalf("Open returned the existing %s, want a new one", got.ID)
	}
	return got
}

func (x *suite) vote(id string, who approval.Principal, approve bool, comment string) approval.Request {
	x.t.Helper()
	got, err := x.s.Vote(x.ctx, id, who, approve, comment)
	if err != nil {
		x.t.Fatalf("Vote(%s, %s, %v): %v", id, who, approve, err)
	}
	return got
}

func (x *suite) get(id string) approval.Request {
	x.t.Helper()
	r, err := x.s.Get(x.ctx, id)
	if err != nil {
		x.t.Fatalf("Get(%s): %v", id, err)
	}
	return r
}

func (x *suite) list(keep func(*approval.Request) bool) []approval.Request {
	x.t.Helper()
	l, err := x.s.List(x.ctx, keep)
	if err != nil {
		x.t.Fatalf("List: %v", err)
	}
	return l
}

func (x *suite) settled(id string) <-chan struct{} {
	x.t.Helper()
	c, err := x.s.Settled(x.ctx, id)
	if err != nil {
		x.t.Fatalf("Settled(%s): %v", id, err)
	}
	return c
}

func (x *suite) redeem(r approval.Request, who approval.Principal) (approval.Request, bool) {
	x.t.Helper()
	got, ok, err := x.s.Redeem(x.ctx, r.Hash, who, r.Resource, r.Needs)
	if err != nil {
		x.t.Fatalf("Redeem: %v", err)
	}
	return got, ok
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

func ids(rs []approval.Request) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.ID
	}
	return out
}

// Run runs the conformance suite against the stores h makes.
func Run(t *testing.T, h Harness) {
	for _, tc := range []struct {
		name string
		fn   func(*suite)
	}{
		{"OpenCreatesAPendingRequest", openCreatesPending},
		{"OpenRefusesIncompleteRequests", openRefusesIncomplete},
		{"OpenReturnsThePendingRequestOfTheSameBinding", openSameBinding},
		{"OpenAfterSettlementOrExpiryOpensANewRequest", openAfterSettlement},
		{"OpenCapsPendingRequestsPerRequester", openCaps},
		{"VoteRefusals", voteRefusals},
		{"VoteTwoOfThree", voteTwoOfThree},
		{"OneDenySettles", oneDenySettles},
		{"EveryNeedMustBeMet", everyNeed},
		{"AVoteCountsTowardEveryNeedOfTheApproversGroups", voteEveryGroup},
		{"VoteAfterExpiryIsRefused", voteAfterExpiry},
		{"SettledClosesOnEverySettlement", settledOnEverySettlement},
		{"SettledOfAnUnknownRequestIsClosed", settledUnknown},
		{"Expiry", expiry},
		{"RestartSchedulesPendingExpiry", restartSchedulesExpiry},
		{"RestartExpiresOverdueRequests", restartExpiresOverdue},
		{"Redeem", redeem},
		{"RedeemReusable", redeemReusable},
		{"RedeemAtAndJustBeforeValidUntil", redeemValidUntil},
		{"RedeemUsesTheOldestApproval", redeemOldest},
		{"RedeemRefusesWhenThePolicyTightened", redeemTightened},
		{"Use", use},
		{"UseAndRedeemExactlyOnceUnderConcurrency", exactlyOnce},
		{"Cancel", cancel},
		{"GetAndListReturnCopies", copies},
		{"ListNewestFirstAndFiltered", listOrder},
		{"Counts", counts},
		{"Restart", restart},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(h.start(t)) })
	}
}

func openCreatesPending(x *suite) {
	t := x.t
	in := Request(x.clock.Now())
	in.ID, in.State, in.Uses = "chosen-by-caller", approval.Approved, 3 // Open sets these
	r := x.open(in)
	if !strings.HasPrefix(r.ID, "ap-") || len(r.ID) != len("ap-")+16 || r.ID != strings.ToLower(r.ID) {
		t.Errorf("ID %q, want ap- and 16 lower-case base32 characters", r.ID)
	}
	if r.State != approval.Pending || r.Settled() || r.Uses != 0 || r.Format != approval.FormatVersion {
		t.Errorf("state %s, uses %d, format %d; want a pending, unused request of format %d", r.State, r.Uses, r.Format, approval.FormatVersion)
	}
	if !r.CreatedAt.Equal(x.clock.Now()) {
		t.Errorf("CreatedAt %s, want the clock's %s", r.CreatedAt, x.clock.Now())
	}
	got := x.get(r.ID)
	if got.ID != r.ID || got.State != approval.Pending || got.Subject.Text != in.Subject.Text || got.Protocol != "postgres" ||
		got.Hash != in.Hash || got.Requester.Key() != alice.Key() || len(got.Subject.Params) != 1 {
		t.Errorf("Get = %+v", got)
	}
	if l := x.list(nil); len(l) != 1 || l[0].ID != r.ID {
		t.Errorf("List = %v, want only %s", ids(l), r.ID)
	}
	if _, err := x.s.Get(x.ctx, "ap-unknown"); !errors.Is(err, approval.ErrNotFound) {
		t.Errorf("Get of an unknown request: %v, want ErrNotFound", err)
	}
}

func openRefusesIncomplete(x *suite) {
	now := x.clock.Now()
	for name, edit := range map[string]func(*approval.Request){
		"no needs":           func(r *approval.Request) { r.Needs = nil },
		"expiry now":         func(r *approval.Request) { r.ExpiresAt = now },
		"expiry in the past": func(r *approval.Request) { r.ExpiresAt = now.Add(-time.Second) },
	} {
		r := Request(now)
		edit(&r)
		if got, created, err := x.s.Open(x.ctx, r); !errors.Is(err, approval.ErrIncomplete) || created {
			x.t.Errorf("%s: Open = %s, %v, %v; want ErrIncomplete", name, got.ID, created, err)
		}
	}
	if l := x.list(nil); len(l) != 0 {
		x.t.Errorf("refused requests were stored: %v", ids(l))
	}
}

func openSameBinding(x *suite) {
	t := x.t
	first := x.open(Request(x.clock.Now()))
	for name, tc := range map[string]struct {
		edit func(*approval.Request)
		same bool
	}{
		"same binding": {func(*approval.Request) {}, true},
		// The binding is issuer and subject: the bundle identity name and
		// the session may differ between a request and its retry.
		"same binding, other name and session": {func(r *approval.Request) { r.Requester.Name = "alice-2"; r.Session = "sess-2" }, true},
		"other hash":                           {func(r *approval.Request) { r.Hash = "hash-2" }, false},
		"other subject":                        {func(r *approval.Request) { r.Requester = bob }, false},
		"other issuer":                         {func(r *approval.Request) { r.Requester.Issuer = "https://other.example.com" }, false},
		"other resource":                       {func(r *approval.Request) { r.Resource = "billing" }, false},
	} {
		r := Request(x.clock.Now())
		tc.edit(&r)
		got, created, err := x.s.Open(x.ctx, r)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if tc.same && (created || got.ID != first.ID || got.State != approval.Pending) {
			t.Errorf("%s: Open = %s (created %v), want the pending %s", name, got.ID, created, first.ID)
		}
		if !tc.same && (!created || got.ID == first.ID) {
			t.Errorf("%s: Open = %s (created %v), want a new request", name, got.ID, created)
		}
	}
	if l := x.list(nil); len(l) != 5 {
		t.Errorf("%d requests stored, want 5 (the first and four distinct bindings)", len(l))
	}
}

func openAfterSettlement(x *suite) {
	denied := x.open(Request(x.clock.Now()))
	x.vote(denied.ID, bob, false, "no")
	again := x.open(Request(x.clock.Now()))
	if again.ID == denied.ID {
		x.t.Fatalf("a denied request was reused")
	}
	// Past its expiry a pending request is no longer offered.
	x.clock.Advance(2 * time.Hour)
	if fresh := x.open(Request(x.clock.Now())); fresh.ID == again.ID {
		x.t.Fatalf("an overdue request was reused")
	}
}

func openCaps(x *suite) {
	for i := 0; i < approval.MaxPendingPerRequester; i++ {
		in := Request(x.clock.Now())
		in.Hash = fmt.Sprint("hash-", i)
		x.open(in)
	}
	in := Request(x.clock.Now())
	in.Hash = "one-too-many"
	if _, _, err := x.s.Open(x.ctx, in); !errors.Is(err, approval.ErrTooMany) {
		x.t.Fatalf("open beyond the cap: %v", err)
	}
	other := Request(x.clock.Now())
	other.Requester = carol
	x.open(other)
}

func voteRefusals(x *suite) {
	t := x.t
	r := x.open(Request(x.clock.Now()))
	aliceOtherSubject := alice
	aliceOtherSubject.Subject = "sub-alice-pod-2" // a pod of the same service identity
	aliceNoName := alice
	aliceNoName.Name = "" // the same subject, no bundle identity
	for name, tc := range map[string]struct {
		id      string
		who     approval.Principal
		approve bool
		want    error
	}{
		"requester approves":                   {r.ID, alice, true, approval.ErrSelfApproval},
		"requester denies":                     {r.ID, alice, false, approval.ErrSelfApproval},
		"requester identity, other subject":    {r.ID, aliceOtherSubject, true, approval.ErrSelfApproval},
		"requester subject, no identity name":  {r.ID, aliceNoName, true, approval.ErrSelfApproval},
		"outside the approver groups":          {r.ID, mallory, true, approval.ErrNotApprover},
		"outside the approver groups, denying": {r.ID, erin, false, approval.ErrNotApprover},
		"no groups":                            {r.ID, approval.Principal{Issuer: issuer, Subject: "nobody"}, true, approval.ErrNotApprover},
		"unknown request":                      {"ap-doesnotexist0000", bob, true, approval.ErrNotFound},
	} {
		if _, err := x.s.Vote(x.ctx, tc.id, tc.who, tc.approve, "comment"); !errors.Is(err, tc.want) {
			t.Errorf("%s: Vote error %v, want %v", name, err, tc.want)
		}
	}
	if got := x.get(r.ID); got.State != approval.Pending || len(got.Votes) != 0 || len(got.Needs[0].Approvers) != 0 {
		t.Errorf("refused votes changed the request: %+v", got)
	}
}

func voteTwoOfThree(x *suite) {
	t := x.t
	in := Request(x.clock.Now())
	in.Needs[0].Count = 2
	r := x.open(in)
	settled := x.settled(r.ID)
	got := x.vote(r.ID, bob, true, "looks fine")
	if got.State != approval.Pending || isClosed(settled) {
		t.Fatalf("after one of two approvals: state %s, settled channel closed %v", got.State, isClosed(settled))
	}
	if a := got.Needs[0].Approvers; len(a) != 1 || a[0] != bob.Key() {
		t.Errorf("approvers %q, want bob", a)
	}
	if _, err := x.s.Vote(x.ctx, r.ID, bob, true, ""); !errors.Is(err, approval.ErrAlreadyVoted) {
		t.Errorf("second vote by bob: %v, want ErrAlreadyVoted", err)
	}
	x.clock.Advance(time.Minute)
	got = x.vote(r.ID, carol, true, "")
	if got.State != approval.Approved {
		t.Fatalf("after two approvals: state %s, want approved", got.State)
	}
	waitClosed(t, settled, 5*time.Second, "Settled after approval")
	if !got.SettledAt.Equal(x.clock.Now()) || !got.ValidUntil.Equal(x.clock.Now().Add(in.ValidFor)) {
		t.Errorf("SettledAt %s, ValidUntil %s; want now %s and now+ValidFor", got.SettledAt, got.ValidUntil, x.clock.Now())
	}
	if len(got.Votes) != 2 || got.Votes[0].Approver.Key() != bob.Key() || got.Votes[0].Decision != "approve" ||
		got.Votes[0].Comment != "looks fine" || got.Votes[1].Approver.Key() != carol.Key() {
		t.Errorf("votes %+v, want bob's then carol's approvals", got.Votes)
	}
	if !strings.Contains(got.Outcome, "bob") || !strings.Contains(got.Outcome, "carol") {
		t.Errorf("outcome %q, want both approvers named", got.Outcome)
	}
	if _, err := x.s.Vote(x.ctx, r.ID, dave, true, ""); !errors.Is(err, approval.ErrSettled) {
		t.Errorf("third vote on an approved request: %v, want ErrSettled", err)
	}
	if _, err := x.s.Vote(x.ctx, r.ID, dave, false, "too late"); !errors.Is(err, approval.ErrSettled) {
		t.Errorf("deny of an approved request: %v, want ErrSettled", err)
	}
	if final := x.get(r.ID); final.State != approval.Approved || len(final.Votes) != 2 {
		t.Errorf("after refused votes: %s with %d votes", final.State, len(final.Votes))
	}
}

func oneDenySettles(x *suite) {
	t := x.t
	in := Request(x.clock.Now())
	in.Needs[0].Count = 2
	r := x.open(in)
	settled := x.settled(r.ID)
	x.vote(r.ID, bob, true, "")
	got := x.vote(r.ID, carol, false, "not on a Friday")
	if got.State != approval.Denied {
		t.Fatalf("state %s, want denied", got.State)
	}
	waitClosed(t, settled, 5*time.Second, "Settled after a deny")
	if !strings.Contains(got.Outcome, "not on a Friday") || !strings.Contains(got.Outcome, "carol") {
		t.Errorf("outcome %q, want the denier and the comment", got.Outcome)
	}
	if !got.ValidUntil.IsZero() {
		t.Errorf("a denied request is valid until %s", got.ValidUntil)
	}
	if _, err := x.s.Vote(x.ctx, r.ID, dave, true, ""); !errors.Is(err, approval.ErrSettled) {
		t.Errorf("vote on a denied request: %v, want ErrSettled", err)
	}
	if _, ok := x.redeem(in, alice); ok {
		t.Error("a denied request was redeemed")
	}
}

func everyNeed(x *suite) {
	t := x.t
	in := Request(x.clock.Now())
	in.Needs = []approval.Need{
		{Rule: "deletes", Reason: "deletes need a dba", Groups: []string{"dba"}, Count: 2},
		{Rule: "pii", Reason: "customer data needs security", Groups: []string{"security"}, Count: 1},
	}
	r := x.open(in)
	if g := r.Groups(); len(g) != 2 || g[0] != "dba" || g[1] != "security" {
		t.Errorf("Groups %q, want [dba security]", g)
	}
	if got := x.vote(r.ID, erin, true, ""); got.State != approval.Pending {
		t.Fatalf("security alone approved it: %s", got.State)
	}
	if got := x.vote(r.ID, bob, true, ""); got.State != approval.Pending {
		t.Fatalf("one of two dbas approved it: %s", got.State)
	}
	got := x.vote(r.ID, carol, true, "")
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

func voteEveryGroup(x *suite) {
	in := Request(x.clock.Now())
	in.Needs = []approval.Need{{Rule: "deletes", Groups: []string{"dba"}, Count: 1}, {Rule: "pii", Groups: []string{"security"}, Count: 1}}
	r := x.open(in)
	both := approval.Principal{Name: "frank", Issuer: issuer, Subject: "sub-frank", Groups: []string{"security", "dba"}}
	if got := x.vote(r.ID, both, true, ""); got.State != approval.Approved {
		x.t.Errorf("a member of both groups met both rules, state %s", got.State)
	}
}

func voteAfterExpiry(x *suite) {
	r := x.open(Request(x.clock.Now()))
	x.clock.Advance(time.Hour)
	if _, err := x.s.Vote(x.ctx, r.ID, bob, true, ""); !errors.Is(err, approval.ErrSettled) {
		x.t.Errorf("vote at the expiry: %v, want ErrSettled", err)
	}
}

func settledOnEverySettlement(x *suite) {
	t := x.t
	for name, tc := range map[string]struct {
		settle func(id string)
		want   approval.State
	}{
		"approve": {func(id string) { x.vote(id, bob, true, "") }, approval.Approved},
		"deny":    {func(id string) { x.vote(id, bob, false, "no") }, approval.Denied},
		"cancel": {func(id string) {
			if err := x.s.Cancel(x.ctx, id, "the client went away"); err != nil {
				t.Fatal(err)
			}
		}, approval.Cancelled},
		"expire": {func(string) { x.clock.Advance(time.Hour) }, approval.Expired},
	} {
		in := Request(x.clock.Now())
		in.Hash = "hash-" + name
		r := x.open(in)
		c1, c2 := x.settled(r.ID), x.settled(r.ID)
		if isClosed(c1) {
			t.Fatalf("%s: Settled is closed for a pending request", name)
		}
		tc.settle(r.ID)
		waitClosed(t, c1, 5*time.Second, name+": Settled")
		waitClosed(t, c2, time.Second, name+": second Settled channel")
		if got := x.get(r.ID); got.State != tc.want {
			t.Errorf("%s: state %s, want %s", name, got.State, tc.want)
		}
		if !isClosed(x.settled(r.ID)) {
			t.Errorf("%s: Settled of a settled request is not closed at once", name)
		}
	}
}

func settledUnknown(x *suite) {
	if !isClosed(x.settled("ap-unknown")) {
		x.t.Error("Settled of an unknown request blocks")
	}
}

func expiry(x *suite) {
	t := x.t
	in := Request(x.clock.Now())
	in.ExpiresAt = x.clock.Now().Add(time.Minute)
	r := x.open(in)
	settled := x.settled(r.ID)
	x.clock.Advance(time.Minute - time.Millisecond)
	if isClosed(settled) {
		t.Fatal("expired before its time")
	}
	x.clock.Advance(time.Millisecond)
	waitClosed(t, settled, 5*time.Second, "Settled at expiry")
	got := x.get(r.ID)
	if got.State != approval.Expired || got.SettledAt.Before(in.ExpiresAt) || !strings.Contains(got.Outcome, "nobody decided") {
		t.Errorf("state %s settled at %s (%q), want expired at or after %s", got.State, got.SettledAt, got.Outcome, in.ExpiresAt)
	}
	if _, err := x.s.Vote(x.ctx, r.ID, bob, true, ""); !errors.Is(err, approval.ErrSettled) {
		t.Errorf("vote on an expired request: %v, want ErrSettled", err)
	}
	x.restart()
	if got := x.get(r.ID); got.State != approval.Expired {
		t.Errorf("after a restart: %s, want expired", got.State)
	}
}

func restartSchedulesExpiry(x *suite) {
	t := x.t
	in := Request(x.clock.Now())
	in.ExpiresAt = x.clock.Now().Add(time.Minute)
	r := x.open(in)
	x.s.Close()
	// The gateway is down until just before the expiry; the reopened store
	// expires it when what is left has passed.
	x.clock.Advance(time.Minute - time.Second)
	x.s = x.h.Reopen(t, x.s, x.clock)
	settled := x.settled(r.ID)
	if got := x.get(r.ID); got.State != approval.Pending {
		t.Fatalf("reopened: %s, want pending", got.State)
	}
	x.clock.Advance(time.Second)
	waitClosed(t, settled, 5*time.Second, "Settled after reopening")
	if got := x.get(r.ID); got.State != approval.Expired {
		t.Errorf("state %s, want expired", got.State)
	}
}

func restartExpiresOverdue(x *suite) {
	t := x.t
	var opened []string
	for i := range 8 {
		in := Request(x.clock.Now())
		in.Hash = fmt.Sprint("hash-", i)
		in.ExpiresAt = x.clock.Now().Add(time.Minute)
		opened = append(opened, x.open(in).ID)
	}
	x.s.Close()
	x.clock.Advance(time.Hour) // down past the expiry
	x.s = x.h.Reopen(t, x.s, x.clock)
	for _, id := range opened {
		waitClosed(t, x.settled(id), 5*time.Second, "Settled of an overdue request after reopening")
		if got := x.get(id); got.State != approval.Expired {
			t.Errorf("%s: state %s, want expired", id, got.State)
		}
	}
}

func redeem(x *suite) {
	t := x.t
	in := Request(x.clock.Now())
	r := x.open(in)
	if _, ok := x.redeem(in, alice); ok {
		t.Fatal("a pending request was redeemed")
	}
	x.vote(r.ID, bob, true, "")
	otherSubject := alice
	otherSubject.Subject = "sub-alice-pod-2"
	for name, tc := range map[string]struct {
		hash      string
		requester approval.Principal
		resource  string
	}{
		"other hash":     {"hash-2", alice, in.Resource},
		"other subject":  {in.Hash, otherSubject, in.Resource},
		"other resource": {in.Hash, alice, "billing"},
		"the approver":   {in.Hash, bob, in.Resource},
	} {
		if got, ok, err := x.s.Redeem(x.ctx, tc.hash, tc.requester, tc.resource, in.Needs); ok || err != nil {
			t.Errorf("%s: Redeem = %s, %v, %v; want nothing", name, got.ID, ok, err)
		}
	}
	renamed := alice
	renamed.Name = "" // the binding is issuer and subject
	got, ok := x.redeem(in, renamed)
	if !ok || got.ID != r.ID || got.Uses != 1 {
		t.Fatalf("Redeem = %s (uses %d), %v; want %s used once", got.ID, got.Uses, ok, r.ID)
	}
	if stored := x.get(r.ID); stored.Uses != 1 {
		t.Errorf("stored uses %d, want 1", stored.Uses)
	}
	if _, ok := x.redeem(in, alice); ok {
		t.Error("a single-use approval was redeemed twice")
	}
	if _, err := x.s.Use(x.ctx, r.ID); !errors.Is(err, approval.ErrNotUsable) {
		t.Errorf("Use after Redeem: %v, want ErrNotUsable", err)
	}
}

func redeemReusable(x *suite) {
	t := x.t
	in := Request(x.clock.Now())
	in.Reusable = true
	r := x.open(in)
	x.vote(r.ID, bob, true, "")
	for want := 1; want <= 3; want++ {
		if got, ok := x.redeem(in, alice); !ok || got.Uses != want {
			t.Fatalf("Redeem %d = uses %d, %v", want, got.Uses, ok)
		}
	}
	if got, err := x.s.Use(x.ctx, r.ID); err != nil || got.Uses != 4 {
		t.Errorf("Use of a reusable approval = uses %d, %v", got.Uses, err)
	}
	x.clock.Advance(in.ValidFor)
	if _, ok := x.redeem(in, alice); ok {
		t.Error("redeemed at ValidUntil")
	}
	if _, err := x.s.Use(x.ctx, r.ID); !errors.Is(err, approval.ErrNotUsable) {
		t.Errorf("Use at ValidUntil: %v, want ErrNotUsable", err)
	}
}

func redeemValidUntil(x *suite) {
	t := x.t
	in := Request(x.clock.Now())
	late := x.open(in)
	x.vote(late.ID, bob, true, "")
	other := Request(x.clock.Now())
	other.Hash = "hash-2"
	early := x.open(other)
	x.vote(early.ID, bob, true, "")
	x.clock.Advance(in.ValidFor - time.Nanosecond)
	if _, ok := x.redeem(other, alice); !ok {
		t.Error("not redeemed just before ValidUntil")
	}
	x.clock.Advance(time.Nanosecond)
	if _, ok := x.redeem(in, alice); ok {
		t.Error("redeemed at ValidUntil")
	}
	if got := x.get(late.ID); got.Uses != 0 {
		t.Errorf("a refused Redeem counted a use: %d", got.Uses)
	}
}

func redeemOldest(x *suite) {
	t := x.t
	in := Request(x.clock.Now())
	first := x.open(in)
	x.vote(first.ID, bob, true, "")
	x.clock.Advance(time.Minute)
	second := x.open(Request(x.clock.Now()))
	x.vote(second.ID, bob, true, "")
	for _, want := range []string{first.ID, second.ID} {
		if got, ok := x.redeem(in, alice); !ok || got.ID != want {
			t.Fatalf("Redeem = %s, %v; want %s", got.ID, ok, want)
		}
	}
	if _, ok := x.redeem(in, alice); ok {
		t.Error("a third Redeem of two single-use approvals succeeded")
	}
}

func redeemTightened(x *suite) {
	t := x.t
	in := Request(x.clock.Now())
	r := x.open(in)
	x.vote(r.ID, bob, true, "")
	for name, needs := range map[string][]approval.Need{
		"another rule":   {in.Needs[0], {Rule: "security", Groups: []string{"security"}, Count: 1}},
		"more approvers": {{Rule: "deletes", Groups: []string{"dba"}, Count: 2}},
		"narrower group": {{Rule: "deletes", Groups: []string{"senior-dba"}, Count: 1}},
	} {
		if _, ok, err := x.s.Redeem(x.ctx, in.Hash, alice, in.Resource, needs); ok || err != nil {
			t.Errorf("%s: redeemed (%v, %v)", name, ok, err)
		}
	}
	wider := []approval.Need{{Rule: "deletes", Groups: []string{"dba", "oncall"}, Count: 1}}
	if _, ok, err := x.s.Redeem(x.ctx, in.Hash, alice, in.Resource, wider); !ok || err != nil {
		t.Errorf("a policy that widened the approver groups: not redeemed (%v, %v)", ok, err)
	}
}

func use(x *suite) {
	t := x.t
	in := Request(x.clock.Now())
	r := x.open(in)
	if _, err := x.s.Use(x.ctx, "ap-unknown"); !errors.Is(err, approval.ErrNotFound) {
		t.Errorf("Use of an unknown request: %v, want ErrNotFound", err)
	}
	if _, err := x.s.Use(x.ctx, r.ID); !errors.Is(err, approval.ErrNotUsable) {
		t.Errorf("Use of a pending request: %v, want ErrNotUsable", err)
	}
	x.vote(r.ID, bob, true, "")
	got, err := x.s.Use(x.ctx, r.ID)
	if err != nil || got.Uses != 1 || got.State != approval.Approved {
		t.Fatalf("Use = uses %d, %s, %v", got.Uses, got.State, err)
	}
	if _, err := x.s.Use(x.ctx, r.ID); !errors.Is(err, approval.ErrNotUsable) {
		t.Errorf("second Use of a single-use approval: %v, want ErrNotUsable", err)
	}
	if _, ok := x.redeem(in, alice); ok {
		t.Error("Redeem after Use succeeded on a single-use approval")
	}
	other := Request(x.clock.Now())
	other.Hash = "hash-2"
	late := x.open(other)
	x.vote(late.ID, bob, true, "")
	x.clock.Advance(other.ValidFor)
	if _, err := x.s.Use(x.ctx, late.ID); !errors.Is(err, approval.ErrNotUsable) {
		t.Errorf("Use at ValidUntil: %v, want ErrNotUsable", err)
	}
}

// exactlyOnce: a single-use approval released by many concurrent Use and
// Redeem calls (held sessions, retries on other connections) releases
// exactly one request.
func exactlyOnce(x *suite) {
	t := x.t
	in := Request(x.clock.Now())
	r := x.open(in)
	x.vote(r.ID, bob, true, "")
	const n = 16
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var ok bool
			if i%2 == 0 {
				_, err := x.s.Use(x.ctx, r.ID)
				if err != nil && !errors.Is(err, approval.ErrNotUsable) {
					t.Errorf("Use: %v", err)
				}
				ok = err == nil
			} else {
				var err error
				_, ok, err = x.s.Redeem(x.ctx, in.Hash, alice, in.Resource, in.Needs)
				if err != nil {
					t.Errorf("Redeem: %v", err)
				}
			}
			if ok {
				mu.Lock()
				wins++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Errorf("%d concurrent uses of a single-use approval succeeded, want exactly 1", wins)
	}
	if got := x.get(r.ID); got.Uses != 1 {
		t.Errorf("uses %d, want 1", got.Uses)
	}
	// A reusable one counts every use.
	re := Request(x.clock.Now())
	re.Hash, re.Reusable = "hash-reusable", true
	rr := x.open(re)
	x.vote(rr.ID, bob, true, "")
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := x.s.Use(x.ctx, rr.ID); err != nil {
				t.Errorf("Use of a reusable approval: %v", err)
			}
		}()
	}
	wg.Wait()
	if got := x.get(rr.ID); got.Uses != n {
		t.Errorf("reusable uses %d, want %d", got.Uses, n)
	}
}

func cancel(x *suite) {
	t := x.t
	r := x.open(Request(x.clock.Now()))
	if err := x.s.Cancel(x.ctx, "ap-unknown", "why"); !errors.Is(err, approval.ErrNotFound) {
		t.Errorf("Cancel of an unknown request: %v, want ErrNotFound", err)
	}
	if err := x.s.Cancel(x.ctx, r.ID, "the client disconnected"); err != nil {
		t.Fatal(err)
	}
	got := x.get(r.ID)
	if got.State != approval.Cancelled || got.Outcome != "the client disconnected" || !got.SettledAt.Equal(x.clock.Now()) {
		t.Errorf("cancelled: %s %q at %s", got.State, got.Outcome, got.SettledAt)
	}
	if _, err := x.s.Vote(x.ctx, r.ID, bob, true, ""); !errors.Is(err, approval.ErrSettled) {
		t.Errorf("vote on a cancelled request: %v, want ErrSettled", err)
	}
	approved := Request(x.clock.Now())
	approved.Hash = "hash-2"
	a := x.open(approved)
	x.vote(a.ID, bob, true, "")
	if err := x.s.Cancel(x.ctx, a.ID, "late"); err != nil {
		t.Errorf("Cancel of an approved request: %v", err)
	}
	if got := x.get(a.ID); got.State != approval.Approved {
		t.Errorf("Cancel of an approved request made it %s", got.State)
	}
}

func copies(x *suite) {
	t := x.t
	r := x.open(Request(x.clock.Now()))
	got := x.get(r.ID)
	got.Needs[0].Groups[0] = "dev"
	got.Subject.Params[0] = "changed"
	l := x.list(nil)
	l[0].Needs[0].Count = 0
	if _, err := x.s.Vote(x.ctx, r.ID, mallory, true, ""); !errors.Is(err, approval.ErrNotApprover) {
		t.Errorf("editing a returned request changed the stored groups: %v", err)
	}
	if again := x.get(r.ID); again.Subject.Params[0] != "42" || again.Needs[0].Count != 1 {
		t.Errorf("editing returned requests changed the store: %+v", again)
	}
}

func listOrder(x *suite) {
	t := x.t
	var opened []string
	for _, h := range []string{"h1", "h2", "h3"} {
		in := Request(x.clock.Now())
		in.Hash = h
		opened = append(opened, x.open(in).ID)
		x.clock.Advance(time.Second)
	}
	x.vote(opened[1], bob, false, "no")
	if all := x.list(nil); len(all) != 3 || all[0].ID != opened[2] || all[1].ID != opened[1] || all[2].ID != opened[0] {
		t.Errorf("List order %v, want newest first %v", ids(all), opened)
	}
	pending := x.list(func(r *approval.Request) bool { return r.State == approval.Pending })
	if len(pending) != 2 || pending[0].ID != opened[2] || pending[1].ID != opened[0] {
		t.Errorf("pending %v", ids(pending))
	}
}

func counts(x *suite) {
	a := x.open(Request(x.clock.Now()))
	in := Request(x.clock.Now())
	in.Hash = "hash-2"
	b := x.open(in)
	in.Hash = "hash-3"
	x.open(in)
	x.vote(a.ID, bob, true, "")
	x.vote(b.ID, bob, false, "no")
	got, err := x.s.Counts(x.ctx)
	if err != nil {
		x.t.Fatal(err)
	}
	want := map[approval.State]int{approval.Pending: 1, approval.Approved: 1, approval.Denied: 1, approval.Expired: 0, approval.Cancelled: 0}
	for s, n := range want {
		if got[s] != n {
			x.t.Errorf("Counts = %v, want %v", got, want)
			break
		}
	}
}

func restart(x *suite) {
	t := x.t
	in := Request(x.clock.Now())
	in.Needs[0].Count = 2
	r := x.open(in)
	x.vote(r.ID, bob, true, "first")
	x.restart()
	got := x.get(r.ID)
	if got.State != approval.Pending || len(got.Votes) != 1 || got.Votes[0].Comment != "first" ||
		len(got.Needs[0].Approvers) != 1 || got.Needs[0].Approvers[0] != bob.Key() || got.Subject.Text != in.Subject.Text {
		t.Fatalf("after a restart: %+v", got)
	}
	if _, err := x.s.Vote(x.ctx, r.ID, bob, true, ""); !errors.Is(err, approval.ErrAlreadyVoted) {
		t.Errorf("bob again after a restart: %v, want ErrAlreadyVoted", err)
	}
	if _, err := x.s.Vote(x.ctx, r.ID, alice, true, ""); !errors.Is(err, approval.ErrSelfApproval) {
		t.Errorf("alice after a restart: %v, want ErrSelfApproval", err)
	}
	if got := x.vote(r.ID, carol, true, ""); got.State != approval.Approved {
		t.Fatalf("second approval after a restart: %s", got.State)
	}
	if _, ok := x.redeem(in, alice); !ok {
		t.Fatal("not redeemed")
	}
	x.restart()
	got = x.get(r.ID)
	if got.State != approval.Approved || got.Uses != 1 || !got.ValidUntil.Equal(x.clock.Now().Add(in.ValidFor)) || len(got.Votes) != 2 {
		t.Errorf("after the second restart: %s, uses %d, valid until %s, %d votes", got.State, got.Uses, got.ValidUntil, len(got.Votes))
	}
	if _, ok := x.redeem(in, alice); ok {
		t.Error("a used single-use approval was redeemed again after a restart")
	}
	if !isClosed(x.settled(r.ID)) {
		t.Error("Settled of a reloaded approved request is not closed")
	}
}
