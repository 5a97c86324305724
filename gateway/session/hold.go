package session

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/gateway/approval"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
)

// Held is what a protocol supplies to hold one request for approvers.
type Held struct {
	// Kind is how the request came (query, execute, exec, api), and Text
	// the request for people, as the recording keeps them.
	Kind string
	Text string
	// Subject is what approvers are shown.
	Subject  approval.Subject
	Request  celpolicy.Request
	Decision celpolicy.Decision
	// Recorded, when set, is Request as the recording keeps it (secrets
	// in its text redacted); Request is what is judged again.
	Recorded celpolicy.Request
	// Bind computes the hash that binds an approval to exactly this
	// request: the protocol's canonical bytes (for SQL, the parse tree and
	// the parameters' types and bytes). It is called only when an approval
	// store exists.
	Bind func() (string, error)
	// Notify tells the caller its request is held, before the wait (a
	// NOTICE, a line on stderr). An error means the caller is gone.
	Notify func(r approval.Request, wait time.Duration) error
	// Watch, when set, watches the caller's connection while the request
	// waits: gone is closed if the caller disconnects; stop ends the
	// watching and returns once it has.
	Watch func() (gone <-chan struct{}, stop func())
	// Immediate: the protocol cannot keep this request waiting (an
	// interactive shell, a file transfer, a forward). The approval request
	// is opened as for hold = false, and the caller refused at once with
	// its id; a retry after approval passes.
	Immediate bool
}

// Verdict is how a hold ended.
type Verdict struct {
	// Decision is the decision to act on: allow (approved) or not.
	Decision celpolicy.Decision
	// Ref is the recorded request event (0 when nothing was recorded).
	Ref int
	// Refusal, when set, is what the request gets instead of running; the
	// session stays open.
	Refusal *Refusal
	// End, when set, ends the session (the token expired or a new bundle
	// revoked the session while the request waited).
	End *Refusal
	// Gone: the session ended during the hold; nothing more is sent.
	Gone bool
	// Approval is the approval that released the request.
	Approval string
}

// Hold handles a review decision. An approval already given for this
// exact request by this caller releases it; otherwise an approval request
// is opened (or the pending one joined) and recorded, and the request is
// either held in the session until the request is settled, or refused at
// once with the request's id (hold = false). Approved, the session is
// checked and the request judged again if the bundle changed, the approval
// is spent, and the request runs with the decision's masks. Everything is
// recorded durably before the request is forwarded or refused.
func (s *Session) Hold(ctx context.Context, h Held) Verdict {
	s.stats.Reviewed.Add(1)
	v := s.hold(ctx, h)
	if !v.Gone && v.End == nil {
		s.Tally(v.Refusal == nil)
	}
	return v
}

// CancelHold withdraws the request held for approval, if there is one (a
// PostgreSQL CancelRequest). It reports whether there was one.
func (s *Session) CancelHold() bool {
	c := s.holdCancel.Swap(nil)
	if c == nil {
		return false
	}
	close(*c)
	return true
}

func (s *Session) hold(ctx context.Context, h Held) Verdict {
	// A cancel from here on withdraws the request, even one that arrives
	// before the hold has begun.
	cancel := make(chan struct{})
	s.holdCancel.Store(&cancel)
	defer s.holdCancel.Store(nil)
	d := h.Decision
	store := s.core.approvals
	rec := Requested{Kind: h.Kind, Text: h.Text, Request: h.Request, Decision: d, Params: h.Subject.Params}
	if h.Recorded != nil {
		rec.Request = h.Recorded
	}
	if store == nil {
		ref, err := s.RecordRequest(rec)
		if err != nil {
			return Verdict{Refusal: s.Unrecorded()}
		}
		d.Reasons = append([]string{"this " + s.noun + " needs approval, and this gateway keeps no approvals"}, d.Reasons...)
		return Verdict{Decision: d, Ref: ref, Refusal: s.Denial(d, h.Request)}
	}
	hash, err := h.Bind()
	if err != nil {
		ref, rerr := s.RecordRequest(rec)
		if rerr != nil {
			return Verdict{Refusal: s.Unrecorded()}
		}
		return Verdict{Decision: d, Ref: ref, Refusal: s.approvalRefusal(Denied, "", "the "+s.noun+" needs approval, but it cannot be bound to one: "+err.Error(), "", "")}
	}
	// The bound parameters and the hash go into the signed recording:
	// what was approved outlives the approval's record.
	rec.Hash = hash
	if v, done := s.redeem(ctx, &rec, d); done {
		return v
	}
	r, created, err := store.Open(ctx, s.newRequest(h, hash, d))
	if errors.Is(err, approval.ErrTooMany) {
		return Verdict{Decision: d, Refusal: s.approvalRefusal(TooMany, "", err.Error(), "", "Wait for approvers to settle your open requests (gatehouse approvals list shows them to approvers).")}
	}
	if err != nil {
		s.log.Error("approval request cannot be opened; the request is refused", "err", err)
		return Verdict{Decision: d, Refusal: s.approvalRefusal(Unavailable, "", "the "+s.noun+" needs approval, and the approval request cannot be written (the gateway's log has the cause)", "", "")}
	}
	rec.Approval = r.ID
	ref, err := s.RecordRequest(rec)
	if err != nil {
		if created {
			_ = store.Cancel(ctx, r.ID, "the session recording could not be written")
		}
		return Verdict{Refusal: s.Unrecorded()}
	}
	if !r.Hold || h.Immediate {
		return Verdict{Decision: d, Ref: ref, Refusal: s.approvalRefusal(Pending, r.ID,
			fmt.Sprintf("approval required: request %s is open for %s (rule %s: %s)", r.ID, s.resource, strings.Join(r.Rules(), ", "), Reasons(&r)),
			fmt.Sprintf("It needs %s, and expires at %s. Once it is approved, run the same %s again: it passes within %s of the approval.",
				Needs(&r), r.ExpiresAt.UTC().Format(time.RFC3339), s.noun, r.ValidFor),
			ApproveHint(r.ID))}
	}
	return s.wait(ctx, h, r, created, ref, d, cancel)
}

// redeem spends an approval given earlier (hold = false, a wait that ran
// out, a gateway restart) that answers the review rules holding the
// request now. done is false when there is none.
func (s *Session) redeem(ctx context.Context, rec *Requested, d celpolicy.Decision) (Verdict, bool) {
	r, ok, err := s.core.approvals.Redeem(ctx, rec.Hash, s.principal(), s.resource, NeedsOf(d))
	if err != nil {
		s.log.Error("approval state cannot be written; the request is refused", "err", err)
		return Verdict{Decision: d, Refusal: s.approvalRefusal(Unavailable, "", "the "+s.noun+" is refused because the approval state cannot be written (the gateway's log has the cause)", "", "")}, true
	}
	if !ok {
		return Verdict{}, false
	}
	rec.Approval = r.ID
	ref, err := s.RecordRequest(*rec)
	if err != nil {
		return Verdict{Refusal: s.Unrecorded()}, true
	}
	if s.holdCancel.Swap(nil) == nil {
		return Verdict{Decision: d, Ref: ref, Refusal: s.approvalRefusal(Cancelled, r.ID, "canceling "+s.noun+" due to user request", "", "")}, true
	}
	s.log.Info("request released by an earlier approval", "approval", r.ID, "uses", r.Uses)
	return s.release(r, ref, d, "used"), true
}

// release records the approval that lets the request run, and allows it.
func (s *Session) release(r approval.Request, ref int, d celpolicy.Decision, state string) Verdict {
	if _, err := s.Record(recorder.Event{Type: recorder.TypeApproval, Ref: ref, Approval: r.ID, State: state, Votes: votesOf(&r), Reason: r.Outcome}); err != nil {
		return Verdict{Refusal: s.Unrecorded()}
	}
	d.Effect = bundle.EffectAllow
	d.Reasons = append([]string{r.Outcome + " (approval " + r.ID + ")"}, d.Reasons...)
	return Verdict{Decision: d, Ref: ref, Approval: r.ID}
}

// wait holds the request: it tells the caller, then waits for the
// approvers, the wait limit, a cancel, or the end of the session.
func (s *Session) wait(ctx context.Context, h Held, r approval.Request, created bool, ref int, d celpolicy.Decision, cancel chan struct{}) Verdict {
	store := s.core.approvals
	wait := min(r.Wait, r.ExpiresAt.Sub(s.core.clock.Now()))
	// Held before the caller hears of it: once told, the caller (or a
	// shutdown that follows at once) may ask which request is held.
	s.held.Store(&r.ID)
	if err := h.Notify(r, wait); err != nil {
		s.held.Store(nil)
		if created {
			_ = store.Cancel(ctx, r.ID, "the caller's connection failed")
		}
		return Verdict{Gone: true}
	}
	settled, err := store.Settled(ctx, r.ID)
	if err != nil {
		s.held.Store(nil)
		s.log.Error("approval state cannot be read; the request is refused", "approval", r.ID, "err", err)
		return Verdict{Decision: d, Ref: ref, Refusal: s.approvalRefusal(Unavailable, r.ID, "the approval state cannot be read (the gateway's log has the cause)", "", "")}
	}
	s.log.Info("request held for approval", "approval", r.ID, "wait", wait.Round(time.Second), "joined", !created)
	timer := s.core.clock.NewTimer(wait)
	gone, stopWatch := (<-chan struct{})(nil), func() {}
	if h.Watch != nil {
		gone, stopWatch = h.Watch()
	}
	cancelled, left, ended := false, false, false
	select {
	case <-settled:
	case <-timer.C():
	case <-cancel:
		cancelled = true
	case <-gone:
		left = true
	case <-s.closed:
		// The session ended (the gateway is shutting down, or the token
		// expired). The protocol tells the caller why, naming the request
		// it still holds (Held); that may happen after this wakes, so
		// held stays set: the session is over, and nothing else reads it.
		ended = true
	}
	timer.Stop()
	stopWatch()
	// A cancel that came as the hold ended still cancels: it took the
	// channel, and cancelling wins over whatever else woke us.
	if s.holdCancel.Swap(nil) == nil {
		cancelled = true
	}
	if !ended {
		s.held.Store(nil)
	}
	if left {
		// Nobody is there to run it for.
		if created {
			_ = store.Cancel(ctx, r.ID, "the caller disconnected during the hold")
		}
		s.Note(recorder.Event{Type: recorder.TypeApproval, Ref: ref, Approval: r.ID, State: "cancelled", Reason: "the caller disconnected during the hold"})
		return Verdict{Gone: true}
	}
	select {
	case <-s.closed:
		return Verdict{Gone: true}
	default:
	}
	if cancelled {
		return s.cancelled(ctx, r, created, ref, d)
	}
	if cur, err := store.Get(ctx, r.ID); err == nil {
		r = cur
	}
	if r.State == approval.Approved {
		return s.approved(ctx, h, r, ref, d)
	}
	return s.notApproved(r, ref, d, wait)
}

func (s *Session) cancelled(ctx context.Context, r approval.Request, created bool, ref int, d celpolicy.Decision) Verdict {
	store := s.core.approvals
	msg := "canceling " + s.noun + " due to user request; approval request " + r.ID + " is withdrawn"
	if created {
		_ = store.Cancel(ctx, r.ID, "the caller cancelled the "+s.noun)
	} else {
		// Another session asked first; its request stays open.
		msg = "canceling " + s.noun + " due to user request; this " + s.noun + " no longer waits for approval " + r.ID + ", which stays open"
	}
	if cur, err := store.Get(ctx, r.ID); err == nil {
		r = cur
	}
	s.Note(recorder.Event{Type: recorder.TypeApproval, Ref: ref, Approval: r.ID, State: "cancelled", Votes: votesOf(&r), Reason: "the caller cancelled the " + s.noun})
	return Verdict{Decision: d, Ref: ref, Refusal: s.approvalRefusal(Cancelled, r.ID, msg, "", "")}
}

// approved runs once approvers approved: the session is judged again
// first (its token may have expired, the bundle may have changed), so that
// an approval is spent only on a request that will run.
func (s *Session) approved(ctx context.Context, h Held, r approval.Request, ref int, d celpolicy.Decision) Verdict {
	if ref := s.Check(ctx); ref != nil {
		return Verdict{End: ref}
	}
	if cur := s.core.bundles.Current(); cur.Revision != d.BundleRevision {
		nd := s.Judge(h.Request)
		why := ""
		switch {
		case nd.Effect == bundle.EffectDeny:
			s.Note(recorder.Event{Type: recorder.TypeApproval, Ref: ref, Approval: r.ID, State: "approved", Votes: votesOf(&r),
				Reason: "approved, but bundle revision " + strconv.FormatUint(cur.Revision, 10) + " denies the " + s.noun})
			return Verdict{Decision: nd, Ref: ref, Refusal: s.Denial(nd, h.Request)}
		case nd.Effect == bundle.EffectReview && !r.Covers(NeedsOf(nd)):
			why = fmt.Sprintf("bundle revision %d, active since the request, needs other approvers", cur.Revision)
		}
		if why != "" {
			s.Note(recorder.Event{Type: recorder.TypeApproval, Ref: ref, Approval: r.ID, State: "approved", Votes: votesOf(&r), Reason: "approved, but " + why})
			return Verdict{Decision: nd, Ref: ref, Refusal: s.approvalRefusal(ApprovalDenied, r.ID, "approval "+r.ID+" was given, but "+why, "", "Run the "+s.noun+" again to ask them.")}
		}
		d.Masks = nd.Masks
	}
	used, err := s.core.approvals.Use(ctx, r.ID)
	if err != nil {
		// Another held session took a single-use approval first.
		return Verdict{Decision: d, Ref: ref, Refusal: s.approvalRefusal(ApprovalDenied, r.ID, "approval "+r.ID+" was given but cannot release this "+s.noun+": "+err.Error(), "", "Run the "+s.noun+" again to ask anew.")}
	}
	return s.release(used, ref, d, "approved")
}

func (s *Session) notApproved(r approval.Request, ref int, d celpolicy.Decision, wait time.Duration) Verdict {
	s.Note(recorder.Event{Type: recorder.TypeApproval, Ref: ref, Approval: r.ID, State: string(r.State), Votes: votesOf(&r), Reason: r.Outcome})
	v := Verdict{Decision: d, Ref: ref}
	switch r.State {
	case approval.Denied:
		v.Refusal = s.approvalRefusal(ApprovalDenied, r.ID, fmt.Sprintf("approval %s was %s", r.ID, r.Outcome), "", "")
	case approval.Expired:
		v.Refusal = s.approvalRefusal(ApprovalDenied, r.ID, fmt.Sprintf("approval %s expired: %s", r.ID, r.Outcome), "", "Run the "+s.noun+" again to ask anew.")
	case approval.Cancelled:
		v.Refusal = s.approvalRefusal(ApprovalDenied, r.ID, fmt.Sprintf("approval %s was cancelled: %s", r.ID, r.Outcome), "", "Run the "+s.noun+" again to ask anew.")
	default:
		v.Refusal = s.approvalRefusal(ApprovalDenied, r.ID,
			fmt.Sprintf("approval %s was not given within the %s wait", r.ID, wait.Round(time.Second)),
			fmt.Sprintf("The request stays open until %s. Once it is approved, run the same %s again.", r.ExpiresAt.UTC().Format(time.RFC3339), s.noun),
			ApproveHint(r.ID))
	}
	return v
}

func (s *Session) approvalRefusal(code RefusalCode, id, msg, detail, hint string) *Refusal {
	return &Refusal{Code: code, Approval: id, Message: "gatehouse: " + msg, Detail: detail, Hint: hint}
}

// newRequest is the approval request for a review decision: every
// matching review rule's approvers are needed; the strictest settings of
// those rules apply.
func (s *Session) newRequest(h Held, hash string, d celpolicy.Decision) approval.Request {
	r := approval.Request{Requester: s.principal(), Resource: s.resource, Hash: hash, Session: s.id,
		Protocol: s.protocol, Kind: h.Kind, Subject: h.Subject, Hold: true, Reusable: true,
		BundleRevision: d.BundleRevision, Needs: NeedsOf(d)}
	now := s.core.clock.Now()
	for i, a := range d.Approvals {
		if i == 0 || now.Add(a.Timeout).Before(r.ExpiresAt) {
			r.ExpiresAt = now.Add(a.Timeout)
		}
		if i == 0 || a.Wait < r.Wait {
			r.Wait = a.Wait
		}
		if i == 0 || a.ValidFor < r.ValidFor {
			r.ValidFor = a.ValidFor
		}
		r.Hold = r.Hold && a.Hold
		r.Reusable = r.Reusable && a.Reusable
		if a.Webhook != nil {
			r.Webhooks = append(r.Webhooks, *a.Webhook)
		}
	}
	return r
}

// NeedsOf are the approver specs of a review decision.
func NeedsOf(d celpolicy.Decision) []approval.Need {
	out := make([]approval.Need, len(d.Approvals))
	for i, a := range d.Approvals {
		out[i] = approval.Need{Rule: a.Rule, Reason: a.Reason, Groups: a.Groups, Count: a.Count}
	}
	return out
}

// Needs says, for the caller, who must approve a request.
func Needs(r *approval.Request) string {
	var parts []string
	for _, n := range r.Needs {
		parts = append(parts, fmt.Sprintf("%d approval(s) from %s for %s", n.Count, strings.Join(n.Groups, " or "), n.Rule))
	}
	return strings.Join(parts, "; ")
}

// Reasons are the reasons of the review rules a request answers to.
func Reasons(r *approval.Request) string {
	var rs []string
	for _, n := range r.Needs {
		rs = append(rs, n.Reason)
	}
	return strings.Join(rs, "; ")
}

// ApproveHint is the command an approver runs.
func ApproveHint(id string) string {
	return fmt.Sprintf("An approver runs: gatehouse approvals approve %s --comment \"...\" (or deny it with a comment).", id)
}

// HoldNotice is what the caller of a held request is told first: a
// message, a detail and a hint (a PostgreSQL NOTICE's three fields; other
// protocols print them as lines).
func HoldNotice(r *approval.Request, noun string, wait time.Duration) (msg, detail, hint string) {
	msg = fmt.Sprintf("gatehouse: this %s is held for approval %s (rule %s: %s)", noun, r.ID, strings.Join(r.Rules(), ", "), Reasons(r))
	detail = fmt.Sprintf("It needs %s. It waits up to %s; the request expires at %s.", Needs(r), wait.Round(time.Second), r.ExpiresAt.UTC().Format(time.RFC3339))
	hint = ApproveHint(r.ID) + " Cancel the " + noun + " to withdraw the request."
	return msg, detail, hint
}

func votesOf(r *approval.Request) []recorder.Vote {
	out := make([]recorder.Vote, len(r.Votes))
	for i, v := range r.Votes {
		out[i] = recorder.Vote{Approver: v.Approver.String(), Issuer: v.Approver.Issuer, Subject: v.Approver.Subject, Decision: v.Decision, Comment: v.Comment, Time: v.Time}
	}
	return out
}
