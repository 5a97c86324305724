package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

// errStop ends the request loop without an error: the session has been
// ended (and the caller told), or the caller said goodbye.
var errStop = errors.New("stop")

// requests reads the caller's messages, decides, and forwards.
func (s *session) requests(ctx context.Context) error {
	for {
		msg, err := s.be.Receive()
		if err != nil {
			return err
		}
		if s.ending.Load() {
			return nil
		}
		s.cs.Touch()
		if cp := s.copyStream; cp != nil && cp.copyState.Load() == copyOver {
			// The upstream ended the copy early (a bad row): it is out of
			// copy-in mode, and answers what comes next as usual.
			s.copyStream = nil
		}
		if s.copyStream != nil {
			// The caller sends a COPY's data. PostgreSQL would ignore a
			// Sync or Flush here, or answer it had a bad row ended the
			// copy before it: the gateway drops them, so that the
			// upstream never has to choose (waitCopy). Anything else is
			// refused, as PostgreSQL refuses it.
			switch msg.(type) {
			case *pgproto3.Sync, *pgproto3.Flush:
				// Not forwarded, but the data before it is sent now, as
				// the caller asked.
				if err := s.fe.Flush(); err != nil {
					return err
				}
				continue
			case *pgproto3.CopyData:
			case *pgproto3.CopyDone, *pgproto3.CopyFail:
				s.copyStream = nil
			default:
				s.end("08P01", fmt.Sprintf("gatehouse: unexpected message %T during COPY", msg))
				return nil
			}
		}
		if err := s.request(ctx, msg); err != nil {
			if errors.Is(err, errStop) {
				return nil
			}
			return err
		}
		if s.awaitCopy != nil {
			if err := s.waitCopy(ctx); err != nil {
				return err
			}
		}
	}
}

// request handles one message from the caller.
func (s *session) request(ctx context.Context, msg pgproto3.FrontendMessage) error {
	switch m := msg.(type) {
	case *pgproto3.Query:
		return s.query(ctx, m)
	case *pgproto3.Parse:
		return s.parse(ctx, m)
	case *pgproto3.Bind:
		return s.bind(m)
	case *pgproto3.Describe:
		sl := &slot{kind: slotDescribe}
		if m.ObjectType == 'S' {
			sl.stmt, _, _ = s.names.resolve("S:"+m.Name, s.batch)
		}
		s.push(sl)
		s.fe.Send(m)
	case *pgproto3.Execute:
		if !s.check(ctx) {
			return errStop
		}
		return s.execute(ctx, m)
	case *pgproto3.Close:
		key := "P:" + m.Name
		if m.ObjectType == 'S' {
			key = "S:" + m.Name
		}
		mut := &mutation{key: key, batch: s.batch}
		s.names.propose(mut)
		s.push(&slot{kind: slotClose, mut: mut})
		s.fe.Send(m)
	case *pgproto3.Sync:
		s.push(&slot{kind: slotSync})
		s.batch++
		s.fe.Send(m)
		return s.fe.Flush()
	case *pgproto3.Flush:
		s.fe.Send(m)
		return s.fe.Flush()
	case *pgproto3.FunctionCall:
		if !s.check(ctx) {
			return errStop
		}
		s.functionCall(m)
		return s.fe.Flush()
	case *pgproto3.CopyData:
		s.fe.Send(m)
		if s.copyCount++; s.copyCount%64 == 0 {
			return s.fe.Flush()
		}
	case *pgproto3.CopyDone, *pgproto3.CopyFail:
		// Outside a copy the upstream drops them too.
		s.fe.Send(m)
		return s.fe.Flush()
	case *pgproto3.Terminate:
		s.fe.Send(m)
		_ = s.fe.Flush()
		return errStop
	default:
		s.end("08P01", fmt.Sprintf("gatehouse: unexpected message %T", msg))
		return errStop
	}
	return nil
}

// query decides a simple-protocol Query: every statement in it, at once.
func (s *session) query(ctx context.Context, m *pgproto3.Query) error {
	if !s.check(ctx) {
		return errStop
	}
	req := sqlfacts.Query(m.String)
	s.resolveCalls(req)
	if s.cat != nil {
		s.cat.forgetRedefined(req)
	}
	req, unknown := s.withNamedRuns(req)
	req, unreached := s.withReached(req)
	d := refuseWith(refuseWith(s.cs.Decide(req, true), unknown), unreached)
	var ref int
	var rerr error
	switch {
	case d.Effect == bundle.EffectReview && s.q.head(false) == nil && byte(s.txStatus.Load()) == 'E':
		// In an aborted transaction PostgreSQL refuses every statement
		// but the end of the block: nothing to hold. The placeholder gets
		// its own 25P02, passed on as is.
		ref, _ = s.record("query", m.String, req, d)
		s.push(&slot{kind: slotQuery, recRef: ref, start: time.Now()})
		s.fe.Send(&pgproto3.Query{String: deniedSQL})
		return s.fe.Flush()
	case d.Effect == bundle.EffectReview:
		v := s.hold(ctx, "query", m.String, nil, req, d)
		switch {
		case v.Gone:
			return errStop
		case v.End != nil:
			s.endWith(v.End)
			return errStop
		case !s.check(ctx):
			return errStop
		}
		d, ref = v.Decision, v.Ref
		if v.Refusal != nil {
			s.push(&slot{kind: slotQuery, deny: errorOf(v.Refusal)})
			s.fe.Send(&pgproto3.Query{String: deniedSQL})
			return s.fe.Flush()
		}
	default:
		ref, rerr = s.recordForward("query", m.String, req, d)
	}
	switch {
	case rerr != nil:
		s.push(&slot{kind: slotQuery, deny: s.unrecorded()})
		s.fe.Send(&pgproto3.Query{String: deniedSQL})
	case d.Effect != bundle.EffectAllow:
		s.push(&slot{kind: slotQuery, deny: s.denial(d, req)})
		s.fe.Send(&pgproto3.Query{String: deniedSQL})
	default:
		sl := &slot{kind: slotQuery, masking: maskSetOf(req, d), effects: s.effectsOf(req), recRef: ref, start: time.Now()}
		s.expectCopy(sl, req)
		s.forgetNames(sl, req)
		s.push(sl)
		s.fe.Send(m)
	}
	return s.fe.Flush()
}

// parse analyses a prepared statement once, when it is prepared. It is
// decided again at each Execute; here only a denial counts, so that a
// statement no rule could ever allow fails at once.
func (s *session) parse(ctx context.Context, m *pgproto3.Parse) error {
	if !s.check(ctx) {
		return errStop
	}
	req := sqlfacts.Query(m.Query)
	s.resolveCalls(req)
	if s.cat != nil {
		s.cat.forgetRedefined(req)
	}
	d := s.cs.Decide(req, false)
	stmt := &prepared{req: req, sql: m.Query}
	if len(m.ParameterOIDs) > 0 {
		stmt.declared = append([]uint32(nil), m.ParameterOIDs...)
		oids := stmt.declared
		stmt.paramOIDs.Store(&oids)
	}
	mut := &mutation{key: "S:" + m.Name, batch: s.batch, stmt: stmt}
	s.names.propose(mut)
	if d.Effect == bundle.EffectDeny {
		deny := s.denial(d, req)
		if _, rerr := s.record("parse", m.Query, req, d); rerr != nil {
			deny = s.unrecorded()
		}
		s.push(&slot{kind: slotParse, mut: mut, deny: deny})
		s.fe.Send(&pgproto3.Parse{Name: m.Name, Query: deniedSQL})
		return nil
	}
	s.push(&slot{kind: slotParse, mut: mut})
	s.fe.Send(m)
	return nil
}

// bind records which statement, with which parameters, a portal runs.
func (s *session) bind(m *pgproto3.Bind) error {
	stmt, _, ok := s.names.resolve("S:"+m.PreparedStatement, s.batch)
	if !ok {
		return errStop
	}
	mut := &mutation{key: "P:" + m.DestinationPortal, batch: s.batch, portal: &portal{stmt: stmt, params: copyParams(m)}}
	s.names.propose(mut)
	s.push(&slot{kind: slotBind, mut: mut})
	s.fe.Send(m)
	return nil
}

// effectsOf lists, per statement sent, what it changes in the session's
// view of the catalog when it succeeds.
// builtinReads are what a CREATE VIEW's built-ins read (the statements
// via query_to_xml, … that follow it in the request, nested: rest), as
// read through the view. A temporary view's are the only record of them:
// the shared catalog cannot see its definition.
func builtinReads(view celpolicy.Table, rest []celpolicy.Statement) []celpolicy.Table {
	var out []celpolicy.Table
	for _, n := range rest {
		if n.Via == "" {
			break
		}
		if !slices.Contains(sqlfacts.DynamicFunctions(), n.Via) {
			continue
		}
		for _, t := range n.Tables {
			if t.Access == "read" {
				if t.Via == "" {
					t.Via = view.Schema + "." + view.Name
				}
				out = append(out, t)
			}
		}
	}
	return out
}

func (s *session) effectsOf(req *celpolicy.PostgresRequest) []*effects {
	var out []*effects
	any := false
	var pending map[string][]celpolicy.Table // what earlier statements carry
	for i, st := range req.Statements {
		if st.Via != "" {
			continue
		}
		e := s.cat.effectsOf(st)
		if e != nil && e.view.Name != "" {
			e.viewReads = append(e.viewReads, builtinReads(e.view, req.Statements[i+1:])...)
		}
		if e != nil && e.carry != nil {
			// Asked before it runs (the request's read-through asked the
			// same, so an error refused it already).
			keys, reads, _ := s.carriedReads(*e.carry, pending)
			if len(reads) > 0 {
				if pending == nil {
					pending = map[string][]celpolicy.Table{}
				}
				for _, k := range keys {
					pending[k] = append(pending[k], reads...)
				}
				// Kept now, not once it succeeded: a statement pipelined
				// behind it is judged before its answer comes.
				s.cat.carry(keys, reads)
			}
		}
		if e != nil && e.schemaFrom != "" {
			s.cat.carrySchema(e.schemaFrom, e.schemaTo)
		}
		any = any || e != nil
		out = append(out, e)
	}
	if !any {
		return nil
	}
	return out
}
