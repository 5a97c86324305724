package postgres

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

// hasColumnMasks reports whether a decision masks any column.
func hasColumnMasks(d celpolicy.Decision) bool {
	for _, m := range d.Masks {
		if m.Target.Column != "" {
			return true
		}
	}
	return false
}

// execute decides an Execute by the statement its portal will really run,
// as the upstream will have it, with the bundle active now: rules that use
// the time or the session's counters are judged at each execution.
func (s *session) execute(ctx context.Context, m *pgproto3.Execute) error {
	_, p, ok := s.names.resolve("P:"+m.Portal, s.batch)
	if !ok {
		return net.ErrClosed
	}
	var req *celpolicy.PostgresRequest
	var params *boundParams
	sql := ""
	if p == nil || p.stmt == nil {
		// A portal the gateway did not see bound (or a cursor made with
		// SQL DECLARE): nothing is known of it, so it must not run.
		req = &celpolicy.PostgresRequest{Kind: "query", Problem: fmt.Sprintf("portal %q was not bound through the gateway", m.Portal)}
	} else {
		req, sql, params = p.stmt.req, p.stmt.sql, p.params
	}
	req, unknown := s.withNamedRuns(req)
	req, unreached := s.withReached(req)
	d := refuseWith(refuseWith(s.cs.Decide(req, true), unknown), unreached)
	var ref int
	var rerr error
	switch {
	case d.Effect == bundle.EffectReview && p != nil && p.approval != "":
		// More rows of a portal an approval released (a cursor fetched
		// in batches): the same statement with the same parameters.
		ref, rerr = s.record("execute", sql, req, d)
		if rerr == nil {
			s.cs.Note(recorder.Event{Type: recorder.TypeApproval, Ref: ref, Approval: p.approval, State: "continued", Reason: "more rows of the portal the approval released"})
			d.Effect = bundle.EffectAllow
			s.cs.Tally(true)
		}
	case d.Effect == bundle.EffectReview:
		held, err := s.executeHeld(ctx, m, p, req, sql, params, d)
		if err != nil || held == nil {
			return err
		}
		d, ref = held.d, held.ref
	default:
		ref, rerr = s.recordForward("execute", sql, req, d)
	}
	if rerr != nil || d.Effect != bundle.EffectAllow {
		// Fail this batch upstream so the upstream skips to Sync.
		deny := s.unrecorded()
		if rerr == nil {
			deny = s.denial(d, req)
		}
		s.push(&slot{kind: slotParse, deny: deny})
		s.fe.Send(&pgproto3.Parse{Query: deniedSQL})
		return nil
	}
	return s.forwardExecute(m, req, d, ref)
}

// heldExecute is an Execute that approvers released.
type heldExecute struct {
	d   celpolicy.Decision
	ref int
}

// executeHeld holds an Execute for approval. It returns nil (and no
// error) when the Execute has been dealt with: skipped by the upstream, or
// refused.
func (s *session) executeHeld(ctx context.Context, m *pgproto3.Execute, p *portal, req *celpolicy.PostgresRequest, sql string, params *boundParams, d celpolicy.Decision) (*heldExecute, error) {
	// Will the upstream run it at all? After an earlier error in this
	// batch (or in an aborted transaction, where the Bind failed) it
	// skips to Sync: nothing to hold, and no approval to spend.
	hd := &slot{kind: slotDescribe, hidden: true, ready: make(chan *resultDesc, 1)}
	s.push(hd)
	s.fe.Send(&pgproto3.Describe{ObjectType: 'P', Name: m.Portal})
	s.fe.Send(&pgproto3.Flush{})
	if err := s.fe.Flush(); err != nil {
		return nil, err
	}
	if desc := <-hd.ready; desc == nil {
		ref, _ := s.record("execute", sql, req, d)
		s.push(&slot{kind: slotExecute, recRef: ref, start: time.Now()})
		s.fe.Send(m)
		return nil, nil
	}
	if params != nil {
		// The types the hash binds, and those approvers read.
		params.declared = p.stmt.declared
		if oids := p.stmt.paramOIDs.Load(); oids != nil {
			params.oids = *oids
		}
	}
	v := s.hold(ctx, "execute", sql, params, req, d)
	switch {
	case v.Gone:
		return nil, net.ErrClosed
	case v.End != nil:
		s.endWith(v.End)
		return nil, net.ErrClosed
	case !s.check(ctx):
		return nil, net.ErrClosed
	}
	if v.Refusal != nil {
		s.push(&slot{kind: slotParse, deny: errorOf(v.Refusal)})
		s.fe.Send(&pgproto3.Parse{Query: deniedSQL})
		return nil, nil
	}
	p.approval = v.Approval
	return &heldExecute{d: v.Decision, ref: v.Ref}, nil
}

// forwardExecute sends an allowed Execute. Its masks were planned with
// the decision; to apply them the gateway needs the rows' layout (formats
// and types), which an Execute's response does not carry. So a Describe of
// the portal goes just before it, in the same batch: its answer comes
// before the rows and lays them out (rowDescription), and nothing waits
// for it here. If the upstream skips the Describe (an earlier error in the
// batch), it skips the Execute too; rows without a layout end the session
// (dataRow).
func (s *session) forwardExecute(m *pgproto3.Execute, req *celpolicy.PostgresRequest, d celpolicy.Decision, ref int) error {
	ms := maskSetOf(req, d)
	ex := &slot{kind: slotExecute, masking: ms, effects: s.effectsOf(req), recRef: ref, start: time.Now()}
	s.expectCopy(ex, req)
	s.forgetNames(ex, req)
	if ms != nil {
		s.push(&slot{kind: slotDescribe, hidden: true, masking: ms, layout: ex})
		s.fe.Send(&pgproto3.Describe{ObjectType: 'P', Name: m.Portal})
	}
	s.push(ex)
	s.fe.Send(m)
	return nil
}

// functionCall decides a fast-path call by the function's name.
func (s *session) functionCall(m *pgproto3.FunctionCall) {
	fn, err := s.srv.catalog.fastPathFunction(s.cs.Resource(), m.Function)
	name := fn.name
	var req *celpolicy.PostgresRequest
	if err != nil {
		req = &celpolicy.PostgresRequest{Kind: "function_call", Problem: fmt.Sprintf("function %d could not be identified: %v", m.Function, err)}
	} else {
		req = celpolicy.FunctionCall(name)
	}
	d := s.cs.Decide(req, true)
	if d.Effect == bundle.EffectAllow && err == nil && sqlfacts.ProtectedFunction(fn.schema, fn.name, d.Admin) {
		d.Effect = bundle.EffectDeny
		d.Reasons = []string{sqlfacts.Refused + fmt.Sprintf("function %s.%s returns other sessions' SQL, which only the resource's admins may see; its result cannot be masked in a fast-path call", fn.schema, fn.name)}
		d.Masks = nil
		s.cs.Tally(false)
	}
	if d.Effect == bundle.EffectAllow && err == nil && fn.schema == "pg_catalog" && sqlfacts.RunsSQL(fn.name) {
		// The call is decided by its name; what the SQL or table its
		// arguments name reads (a table a rule denies) is not seen.
		d.Effect = bundle.EffectDeny
		d.Reasons = []string{sqlfacts.Refused + fmt.Sprintf("function %s.%s runs SQL (or reads a table or cursor) named by its arguments, which a fast-path call's decision cannot see; call it with SELECT, where what it reads is judged", fn.schema, fn.name)}
		d.Masks = nil
		s.cs.Tally(false)
	}
	if d.Effect == bundle.EffectAllow && err == nil && hasColumnMasks(d) && fn.schema != "pg_catalog" {
		// What a user function reads is unknown: while masks apply, its
		// result could carry a masked value no plan can follow.
		d.Effect = bundle.EffectDeny
		d.Reasons = []string{sqlfacts.Refused + fmt.Sprintf("function %s.%s is not built in: while masks apply, every value's origin must be known", fn.schema, fn.name)}
		d.Masks = nil
		s.cs.Tally(false)
	}
	if d.Effect == bundle.EffectReview {
		// A fast-path call is not SQL text an approver can read and a
		// hash can bind; it is refused, and SELECT f(...) can be held.
		d.Effect = bundle.EffectDeny
		d.Reasons = append([]string{"a fast-path function call cannot be held for approval; call the function with SELECT instead"}, d.Reasons...)
		s.cs.Tally(false)
	}
	ref, rerr := s.record("function_call", name, req, d)
	if rerr != nil || d.Effect != bundle.EffectAllow {
		deny := s.unrecorded()
		if rerr == nil {
			deny = s.denial(d, req)
		}
		s.push(&slot{kind: slotFunctionCall, deny: deny})
		s.fe.Send(&pgproto3.Query{String: deniedSQL})
		return
	}
	s.push(&slot{kind: slotFunctionCall, recRef: ref, start: time.Now()})
	s.fe.Send(m)
}
