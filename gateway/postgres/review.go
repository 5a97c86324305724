package postgres

import (
	"crypto/sha256"
	"database/sql/driver"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/gateway/approval"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

// boundParams are an extended-protocol execution's parameters, copied out
// of the Bind message (pgproto3 reuses its buffers).
type boundParams struct {
	formats []int16
	values  [][]byte
	// declared are the types the client gave in its Parse (0: let the
	// server infer): the same bytes are other values under other types,
	// so they are part of what an approval binds.
	declared []uint32
	// oids are the parameters' types as the server resolved them, when
	// known: how approvers read binary values.
	oids []uint32
}

func copyParams(m *pgproto3.Bind) *boundParams {
	if len(m.Parameters) == 0 {
		return nil
	}
	// Every Bind pays this: one buffer for all the values.
	n := 0
	for _, v := range m.Parameters {
		n += len(v)
	}
	buf := make([]byte, 0, n)
	p := &boundParams{formats: append([]int16(nil), m.ParameterFormatCodes...), values: make([][]byte, len(m.Parameters))}
	for i, v := range m.Parameters {
		if v != nil {
			start := len(buf)
			buf = append(buf, v...)
			p.values[i] = buf[start:len(buf):len(buf)]
		}
	}
	return p
}

// format is parameter i's format code (0 text, 1 binary), by the protocol's
// rules: none means all text, one applies to all.
func (p *boundParams) format(i int) int16 {
	switch len(p.formats) {
	case 0:
		return 0
	case 1:
		return p.formats[0]
	}
	if i < len(p.formats) {
		return p.formats[i]
	}
	return 0
}

// display shows the parameters as an approver reads them.
func (p *boundParams) display() []string {
	if p == nil {
		return nil
	}
	out := make([]string, len(p.values))
	for i, v := range p.values {
		name := fmt.Sprintf("$%d", i+1)
		if i < len(p.oids) {
			if t, ok := pgTypeName(p.oids[i]); ok {
				name += "::" + t
			}
		}
		switch {
		case v == nil:
			out[i] = name + " = NULL"
		case p.format(i) == 0 && utf8.Valid(v):
			out[i] = fmt.Sprintf("%s = '%s'", name, strings.ReplaceAll(string(v), "'", "''"))
		case p.format(i) == 1 && i < len(p.oids):
			if text, ok := decodeBinary(p.oids[i], v); ok {
				out[i] = fmt.Sprintf("%s = '%s'", name, strings.ReplaceAll(text, "'", "''"))
				break
			}
			fallthrough
		default:
			out[i] = fmt.Sprintf("%s = binary 0x%s", name, hex.EncodeToString(v))
		}
	}
	return out
}

// requestHash binds an approval to what will run: the SQL's parse tree
// (sqlfacts.CanonicalHash) and each parameter's format and bytes.
func requestHash(sql string, p *boundParams) (string, error) {
	tree, err := sqlfacts.CanonicalHash(sql)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	h.Write([]byte("gatehouse/postgres/v1\x00"))
	h.Write([]byte(tree))
	if p != nil {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(p.declared)))
		h.Write(n[:])
		for _, oid := range p.declared {
			binary.BigEndian.PutUint32(n[:], oid)
			h.Write(n[:])
		}
		binary.BigEndian.PutUint32(n[:], uint32(len(p.values)))
		h.Write(n[:])
		for i, v := range p.values {
			binary.BigEndian.PutUint32(n[:], uint32(p.format(i)))
			h.Write(n[:])
			if v == nil {
				binary.BigEndian.PutUint32(n[:], 0xffffffff)
				h.Write(n[:])
				continue
			}
			binary.BigEndian.PutUint32(n[:], uint32(len(v)))
			h.Write(n[:])
			h.Write(v)
		}
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

func (s *session) principal() approval.Principal {
	return approval.Principal{Name: s.identity.Name, Issuer: s.identity.Issuer, Subject: s.identity.Subject, Groups: s.identity.Groups}
}

// approvalError is the error a statement gets when approval does not let
// it run.
func approvalError(code, msg, detail, hint string) *pgproto3.ErrorResponse {
	return &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: code, Message: "gatehouse: " + msg, Detail: detail, Hint: hint}
}

func approveHint(id string) string {
	return fmt.Sprintf("An approver runs: gatehouse approvals approve %s --comment \"...\" (or deny it with a comment).", id)
}

func describeNeeds(r *approval.Request) string {
	var parts []string
	for _, n := range r.Needs {
		parts = append(parts, fmt.Sprintf("%d approval(s) from %s for %s", n.Count, strings.Join(n.Groups, " or "), n.Rule))
	}
	return strings.Join(parts, "; ")
}

func votesOf(r *approval.Request) []recorder.Vote {
	out := make([]recorder.Vote, len(r.Votes))
	for i, v := range r.Votes {
		out[i] = recorder.Vote{Approver: v.Approver.String(), Issuer: v.Approver.Issuer, Subject: v.Approver.Subject, Decision: v.Decision, Comment: v.Comment, Time: v.Time}
	}
	return out
}

// reviewed is what review decided.
type reviewed struct {
	// d is the decision to act on: allow (approved) or not.
	d   celpolicy.Decision
	ref int
	// deny is the error the statement gets when it does not run.
	deny *pgproto3.ErrorResponse
	// gone: the session ended during the hold; nothing more is sent.
	gone bool
	// id is the approval that released the statement.
	id string
}

// review handles a review decision. An approval already given for this
// exact request by this caller releases it; otherwise an approval request
// is opened (or the pending one joined) and recorded, and the statement is
// either held in the session until the request is settled, or fails at
// once with the request's id (hold = false). Approved, the statement runs
// with the decision's masks. Everything is recorded durably before the
// statement is forwarded or refused.
func (s *session) review(kind, sql string, params *boundParams, req *celpolicy.PostgresRequest, d celpolicy.Decision) reviewed {
	s.srv.Stats.Reviewed.Add(1)
	out := s.reviewOutcome(kind, sql, params, req, d)
	if !out.gone {
		s.requests++
		if out.deny == nil {
			s.srv.Stats.Allowed.Add(1)
		} else {
			s.denied++
			s.srv.Stats.Denied.Add(1)
		}
	}
	return out
}

func (s *session) reviewOutcome(kind, sql string, params *boundParams, req *celpolicy.PostgresRequest, d celpolicy.Decision) reviewed {
	store := s.srv.approvals
	// A CancelRequest from here on withdraws the statement, even one that
	// arrives before the hold has begun.
	cancel := make(chan struct{})
	s.holdCancel.Store(&cancel)
	defer s.holdCancel.Store(nil)
	var hash string
	recordAs := func(id string) (int, error) {
		facts, _ := json.Marshal(req.Statements)
		dec, _ := json.Marshal(d)
		// The bound parameters and the hash go into the signed
		// recording: what was approved outlives the approval file.
		return s.record(recorder.Event{Type: recorder.TypeStatement, Kind: kind, SQL: sql, Facts: facts, Decision: dec,
			Effect: d.Effect, Rules: d.Rules(), Approval: id, ApprovalHash: hash, Params: params.display()})
	}
	if store == nil {
		ref, err := recordAs("")
		if err != nil {
			return reviewed{deny: unrecorded()}
		}
		d.Reasons = append([]string{"this statement needs approval, and this gateway keeps no approvals"}, d.Reasons...)
		return reviewed{d: d, ref: ref, deny: s.denial(d, req)}
	}
	hash, err := requestHash(sql, params)
	if err != nil {
		return reviewed{deny: approvalError("42501", "the statement needs approval, but it cannot be bound to one: "+err.Error(), "", "")}
	}
	who := s.principal()
	allow := func(r approval.Request, ref int, state string) reviewed {
		if _, err := s.record(recorder.Event{Type: recorder.TypeApproval, Ref: ref, Approval: r.ID, State: state, Votes: votesOf(&r), Reason: r.Outcome}); err != nil {
			return reviewed{deny: unrecorded()}
		}
		d.Effect = bundle.EffectAllow
		d.Reasons = append([]string{r.Outcome + " (approval " + r.ID + ")"}, d.Reasons...)
		return reviewed{d: d, ref: ref, id: r.ID}
	}

	// An approval given earlier (hold = false, a wait that ran out, a
	// gateway restart) releases the same request once, if it answers the
	// review rules that hold the request now.
	if r, ok, err := store.Redeem(hash, who, s.resource, needsOf(d)); err != nil {
		s.log.Error("approval state cannot be written; the statement is refused", "err", err)
		return reviewed{deny: approvalError("58030", "the statement is refused because the approval state cannot be written (the gateway's log has the cause)", "", "")}
	} else if ok {
		ref, err := recordAs(r.ID)
		if err != nil {
			return reviewed{deny: unrecorded()}
		}
		if s.holdCancel.Swap(nil) == nil {
			return reviewed{d: d, ref: ref, deny: approvalError("57014", "canceling statement due to user request", "", "")}
		}
		s.log.Info("statement released by an earlier approval", "approval", r.ID, "uses", r.Uses)
		return allow(r, ref, "used")
	}

	r, created, err := store.Open(s.newRequest(kind, sql, params, hash, d))
	if errors.Is(err, approval.ErrTooMany) {
		return reviewed{deny: approvalError("53400", err.Error(), "", "Wait for approvers to settle your open requests (gatehouse approvals list shows them to approvers).")}
	}
	if err != nil {
		s.log.Error("approval request cannot be opened; the statement is refused", "err", err)
		return reviewed{deny: approvalError("58030", "the statement needs approval, and the approval request cannot be written (the gateway's log has the cause)", "", "")}
	}
	ref, err := recordAs(r.ID)
	if err != nil {
		if created {
			_ = store.Cancel(r.ID, "the session recording could not be written")
		}
		return reviewed{deny: unrecorded()}
	}
	needs := describeNeeds(&r)
	if !r.Hold {
		return reviewed{d: d, ref: ref, deny: approvalError("42501",
			fmt.Sprintf("approval required: request %s is open for %s (rule %s: %s)", r.ID, s.resource, strings.Join(r.Rules(), ", "), reasonOf(&r)),
			fmt.Sprintf("It needs %s, and expires at %s. Once it is approved, run the same statement again: it passes within %s of the approval.",
				needs, r.ExpiresAt.UTC().Format(time.RFC3339), r.ValidFor),
			approveHint(r.ID))}
	}

	// Hold: tell the caller now, then wait for the approvers, the wait
	// limit, a cancel request, or the end of the session.
	wait := min(r.Wait, time.Until(r.ExpiresAt))
	notice := &pgproto3.NoticeResponse{Severity: "NOTICE", SeverityUnlocalized: "NOTICE", Code: "01000",
		Message: fmt.Sprintf("gatehouse: this statement is held for approval %s (rule %s: %s)", r.ID, strings.Join(r.Rules(), ", "), reasonOf(&r)),
		Detail:  fmt.Sprintf("It needs %s. It waits up to %s; the request expires at %s.", needs, wait.Round(time.Second), r.ExpiresAt.UTC().Format(time.RFC3339)),
		Hint:    approveHint(r.ID) + " Cancel the statement to withdraw the request."}
	if err := s.send(notice, true); err != nil {
		if created {
			_ = store.Cancel(r.ID, "the caller's connection failed")
		}
		return reviewed{gone: true}
	}
	s.held.Store(&r.ID)
	s.log.Info("statement held for approval", "approval", r.ID, "wait", wait.Round(time.Second), "joined", !created)
	timer := time.NewTimer(wait)
	cancelled, left := false, false
	gone, stopWatch := (<-chan struct{})(nil), func() {}
	if s.reader != nil {
		gone, stopWatch = s.reader.watch()
	}
	select {
	case <-store.Settled(r.ID):
	case <-timer.C:
	case <-cancel:
		cancelled = true
	case <-gone:
		left = true
	case <-s.closed:
	}
	timer.Stop()
	stopWatch()
	// A CancelRequest that came as the hold ended still cancels: it took
	// the channel, and cancelling wins over whatever else woke us.
	if s.holdCancel.Swap(nil) == nil {
		cancelled = true
	}
	s.held.Store(nil)
	if left {
		// Nobody is there to run it for.
		if created {
			_ = store.Cancel(r.ID, "the caller disconnected during the hold")
		}
		s.note(recorder.Event{Type: recorder.TypeApproval, Ref: ref, Approval: r.ID, State: "cancelled", Reason: "the caller disconnected during the hold"})
		return reviewed{gone: true}
	}
	select {
	case <-s.closed:
		return reviewed{gone: true}
	default:
	}
	if cancelled {
		msg := "canceling statement due to user request; approval request " + r.ID + " is withdrawn"
		if created {
			_ = store.Cancel(r.ID, "the caller cancelled the statement")
		} else {
			// Another session asked first; its request stays open.
			msg = "canceling statement due to user request; this statement no longer waits for approval " + r.ID + ", which stays open"
		}
		r, _ = store.Get(r.ID)
		s.note(recorder.Event{Type: recorder.TypeApproval, Ref: ref, Approval: r.ID, State: "cancelled", Votes: votesOf(&r), Reason: "the caller cancelled the statement"})
		return reviewed{d: d, ref: ref, deny: approvalError("57014", msg, "", "")}
	}
	r, _ = store.Get(r.ID)
	if r.State == approval.Approved {
		// The session is judged again first (its token may have expired,
		// the bundle may have changed), so that an approval is spent
		// only on a statement that will run.
		if !s.check() {
			return reviewed{gone: true}
		}
		if cur := s.srv.store.Current(); cur.Revision != d.BundleRevision {
			nd := s.judge(req)
			why := ""
			switch {
			case nd.Effect == bundle.EffectDeny:
				s.note(recorder.Event{Type: recorder.TypeApproval, Ref: ref, Approval: r.ID, State: "approved", Votes: votesOf(&r), Reason: "approved, but bundle revision " + strconv.FormatUint(cur.Revision, 10) + " denies the statement"})
				return reviewed{d: nd, ref: ref, deny: s.denial(nd, req)}
			case nd.Effect == bundle.EffectReview && !r.Covers(needsOf(nd)):
				why = fmt.Sprintf("bundle revision %d, active since the request, needs other approvers", cur.Revision)
			}
			if why != "" {
				s.note(recorder.Event{Type: recorder.TypeApproval, Ref: ref, Approval: r.ID, State: "approved", Votes: votesOf(&r), Reason: "approved, but " + why})
				return reviewed{d: nd, ref: ref, deny: approvalError("42501", "approval "+r.ID+" was given, but "+why, "", "Run the statement again to ask them.")}
			}
			d.Masks = nd.Masks
		}
		used, err := store.Use(r.ID)
		if err != nil {
			// Another held session took a single-use approval first.
			return reviewed{d: d, ref: ref, deny: approvalError("42501", "approval "+r.ID+" was given but cannot release this statement: "+err.Error(), "", "Run the statement again to ask anew.")}
		}
		return allow(used, ref, "approved")
	}
	s.note(recorder.Event{Type: recorder.TypeApproval, Ref: ref, Approval: r.ID, State: string(r.State), Votes: votesOf(&r), Reason: r.Outcome})
	switch r.State {
	case approval.Denied:
		return reviewed{d: d, ref: ref, deny: approvalError("42501", fmt.Sprintf("approval %s was %s", r.ID, r.Outcome), "", "")}
	case approval.Expired:
		return reviewed{d: d, ref: ref, deny: approvalError("42501", fmt.Sprintf("approval %s expired: %s", r.ID, r.Outcome), "", "Run the statement again to ask anew.")}
	case approval.Cancelled:
		return reviewed{d: d, ref: ref, deny: approvalError("42501", fmt.Sprintf("approval %s was cancelled: %s", r.ID, r.Outcome), "", "Run the statement again to ask anew.")}
	}
	return reviewed{d: d, ref: ref, deny: approvalError("42501",
		fmt.Sprintf("approval %s was not given within the %s wait", r.ID, wait.Round(time.Second)),
		fmt.Sprintf("The request stays open until %s. Once it is approved, run the same statement again.", r.ExpiresAt.UTC().Format(time.RFC3339)),
		approveHint(r.ID))}
}

func reasonOf(r *approval.Request) string {
	var rs []string
	for _, n := range r.Needs {
		rs = append(rs, n.Reason)
	}
	return strings.Join(rs, "; ")
}

// needsOf are the approver specs of a review decision.
func needsOf(d celpolicy.Decision) []approval.Need {
	out := make([]approval.Need, len(d.Approvals))
	for i, a := range d.Approvals {
		out[i] = approval.Need{Rule: a.Rule, Reason: a.Reason, Groups: a.Groups, Count: a.Count}
	}
	return out
}

// newRequest is the approval request for a review decision: every
// matching review rule's approvers are needed; the strictest settings of
// those rules apply.
func (s *session) newRequest(kind, sql string, params *boundParams, hash string, d celpolicy.Decision) approval.Request {
	parsed, _ := sqlfacts.Deparse(sql)
	r := approval.Request{Requester: s.principal(), Resource: s.resource, Hash: hash, Session: s.recID, Kind: kind,
		SQL: sql, Parsed: parsed, Params: params.display(), Hold: true, Reusable: true, BundleRevision: d.BundleRevision,
		Needs: needsOf(d)}
	now := time.Now()
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

// cancelHold withdraws the statement held for approval, if there is one.
func (s *session) cancelHold() bool {
	c := s.holdCancel.Swap(nil)
	if c == nil {
		return false
	}
	close(*c)
	return true
}

// typeMap decodes binary parameters of PostgreSQL's built-in types. A Map
// memoizes plans and is not safe for concurrent use.
var (
	typeMu  sync.Mutex
	typeMap = pgtype.NewMap()
)

// decodeBinary renders a binary parameter of type oid as PostgreSQL's text
// form would show it, for the approver. The hash binds the bytes
// themselves; this is only how they are shown.
func pgTypeName(oid uint32) (string, bool) {
	typeMu.Lock()
	defer typeMu.Unlock()
	t, ok := typeMap.TypeForOID(oid)
	if !ok {
		return "", false
	}
	return t.Name, true
}

func decodeBinary(oid uint32, v []byte) (s string, ok bool) {
	typeMu.Lock()
	defer typeMu.Unlock()
	t, found := typeMap.TypeForOID(oid)
	if !found {
		return "", false
	}
	defer func() {
		if recover() != nil {
			s, ok = "", false
		}
	}()
	val, err := t.Codec.DecodeValue(typeMap, oid, pgtype.BinaryFormatCode, v)
	if err != nil || val == nil {
		return "", false
	}
	if dv, isValuer := val.(driver.Valuer); isValuer {
		if x, err := dv.Value(); err == nil && x != nil {
			val = x
		}
	}
	switch x := val.(type) {
	case time.Time:
		return x.Format(time.RFC3339Nano), true
	case []byte:
		return "", false
	case string:
		return x, true
	}
	return fmt.Sprint(val), true
}
