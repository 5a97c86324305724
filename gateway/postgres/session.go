package postgres

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/gateway/auth"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
)

// deniedSQL is what the gateway sends upstream in place of a denied
// statement. It fails at parse analysis, so the upstream does what it does
// for any failed statement: aborts the transaction if one is open, and in
// the extended protocol ignores messages until Sync. The session's state
// stays the upstream's own, and the caller sees the gateway's 42501 error in
// place of this one's.
const deniedSQL = `SELECT * FROM pg_catalog."gatehouse: statement denied by policy"`

// writeTimeout bounds one write to a client: a client that stops reading
// must not hold a session (or the gateway's shutdown) forever.
const writeTimeout = 30 * time.Second

// parserSettings change how the server reads SQL text. The gateway parses
// with them fixed (UTF8, standard conforming strings), so a statement that
// changes one in the session is refused whatever the policy says: after it,
// the server could read other statements than the gateway decided.
var parserSettings = map[string]bool{"standard_conforming_strings": true, "client_encoding": true, "*": true}

// session is one proxied connection.
type session struct {
	srv      *Server
	id       uint64
	client   net.Conn
	reader   *clientReader // what be reads the client through
	be       *pgproto3.Backend
	secure   bool
	resource string
	token    *auth.Verified
	rawToken string
	identity celpolicy.Identity
	started  time.Time
	log      *slog.Logger

	up           *pgconn.HijackedConn
	fe           *pgproto3.Frontend
	txStatus     atomic.Uint32 // the last ReadyForQuery's status byte
	cancelPID    uint32
	cancelSecret []byte

	names *names
	q     *queue

	// rec is the session's recording (nil when the gateway records
	// nothing); recID names it.
	rec   *recorder.Session
	recID string

	// Owned by the request side.
	revision uint64 // revision the session was last judged against
	batch    uint64 // counts Syncs sent
	requests int64
	denied   int64

	copyIn  atomic.Bool // the upstream is receiving COPY data
	writeMu sync.Mutex  // serialises writes to the client
	ending  atomic.Bool
	// masked: masks have applied to this caller's statements, so server
	// messages (errors, notices) may quote values the masks hide.
	masked   atomic.Bool
	closeOne sync.Once
	// closed is closed with the session.
	closed chan struct{}
	// held is the approval a statement is held for, and holdCancel
	// withdraws it (a CancelRequest).
	held       atomic.Pointer[string]
	holdCancel atomic.Pointer[chan struct{}]
}

// prepared is a statement prepared through the gateway.
type prepared struct {
	req *celpolicy.PostgresRequest
	sql string
	// declared are the parameter types its Parse gave.
	declared []uint32
	// paramOIDs are its parameters' types, from the Parse or from the
	// upstream's ParameterDescription (set by the response side), so
	// that approvers read binary parameters as values.
	paramOIDs atomic.Pointer[[]uint32]
}

type portal struct {
	stmt   *prepared
	params *boundParams
	// approval released this portal's first Execute; later Executes of
	// it (more rows) continue the same statement. Request side only.
	approval string
}

type slotKind int

const (
	slotParse slotKind = iota
	slotBind
	slotDescribe
	slotExecute
	slotClose
	slotSync
	slotQuery
	slotFunctionCall
)

// slot is one request whose responses are still to come. Requests and
// responses are matched in order: that is how masking knows which result it
// rewrites, how a denial replaces the right error, and how the record of
// statement names follows what the upstream really did.
type slot struct {
	kind slotKind
	// deny replaces the ErrorResponse this request gets (it was sent as
	// deniedSQL).
	deny *pgproto3.ErrorResponse
	// hidden: the gateway sent this request itself; its responses are
	// not forwarded.
	hidden bool
	// masks to apply to this request's rows, and the rows' layout;
	// uncertain when the statement's column origins cannot be trusted.
	masks     []celpolicy.MaskAction
	desc      *resultDesc
	uncertain bool
	// mut is the change to a statement or portal this request makes if
	// it succeeds.
	mut *mutation
	// ready receives a hidden Describe's layout (nil if the upstream
	// skipped it) for the request side, which waits on it.
	ready chan *resultDesc
	once  sync.Once
	// stmt is the statement a Describe of a statement describes.
	stmt *prepared
	// recRef is the recorded statement event this request's outcome
	// belongs to; start is when it was sent.
	recRef int
	start  time.Time
}

func (sl *slot) resolve(d *resultDesc) { sl.once.Do(func() { sl.ready <- d }) }

func (s *session) input(req celpolicy.Request) *celpolicy.Input {
	return &celpolicy.Input{
		Identity: s.identity, Resource: s.resource, Request: req, Now: time.Now(),
		Session: celpolicy.Session{
			ID: s.sessionID(), StartedAt: s.started,
			Counters: celpolicy.Counters{Requests: s.requests, Denied: s.denied},
		},
	}
}

func (s *session) sessionID() string {
	if s.recID != "" {
		return s.recID
	}
	return fmt.Sprint(s.id)
}

// recordStatement makes a statement's event durable before the statement
// is forwarded. The event holds the SQL text, its facts and the decision;
// never the token, a credential, or any result value.
func (s *session) recordStatement(kind, sql string, req *celpolicy.PostgresRequest, d celpolicy.Decision) (int, error) {
	if s.rec == nil {
		return 0, nil
	}
	facts, _ := json.Marshal(req.Statements)
	dec, _ := json.Marshal(d)
	return s.record(recorder.Event{Type: recorder.TypeStatement, Kind: kind, SQL: sql, Facts: facts, Decision: dec, Effect: d.Effect, Rules: d.Rules()})
}

// record makes an event durable (write and fdatasync) and times it.
func (s *session) record(ev recorder.Event) (int, error) {
	if s.rec == nil {
		return 0, nil
	}
	start := time.Now()
	seq, err := s.rec.Record(ev)
	if err == nil {
		s.srv.Stats.observeRecord(time.Since(start))
	}
	if err != nil {
		s.srv.Stats.RecorderErrors.Add(1)
		s.log.Error("recording failed; the statement is refused", "err", err)
	}
	return seq, err
}

// note appends an event about what already happened (a result, the masks
// applied) without an fdatasync of its own: the next statement's record, or
// the session's end, makes it durable. A failure is logged and counted, and
// the recorder writes a gap event in its place once it can write again, so
// the recording says what is missing (audit verify reports it).
func (s *session) note(ev recorder.Event) {
	if s.rec == nil {
		return
	}
	if _, err := s.rec.Append(ev); err != nil {
		s.srv.Stats.RecorderErrors.Add(1)
		s.log.Error("recording failed", "event", ev.Type, "err", err)
	}
}

// unrecorded is the error a statement gets when its event cannot be made
// durable: the gateway does not act on what it cannot record.
func unrecorded() *pgproto3.ErrorResponse {
	return &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "58030",
		Message: "gatehouse: the statement is refused because the session recording cannot be written (the gateway's log has the cause)"}
}

// recordOutcome records how a forwarded statement ended. It runs after the
// fact, so a failure can only be logged and counted.
func (s *session) recordOutcome(h *slot, rows int64, errMsg string) {
	if s.rec == nil || h == nil || h.recRef == 0 {
		return
	}
	s.note(recorder.Event{Type: "result", Ref: h.recRef, Rows: rows, Error: errMsg,
		DurationMS: float64(time.Since(h.start).Microseconds()) / 1000})
}

// recordMasked records which columns a result had masked, never values.
func (s *session) recordMasked(ref int, d *resultDesc) {
	if s.rec == nil || d == nil {
		return
	}
	var cols []string
	for _, c := range d.cols {
		if c.method != "" {
			cols = append(cols, c.target+"="+c.method)
		}
	}
	for _, det := range d.detectors {
		cols = append(cols, det.Target+"="+det.Method)
	}
	if len(cols) > 0 {
		s.note(recorder.Event{Type: recorder.TypeMasked, Ref: ref, Columns: cols})
	}
}

func (s *session) endRecording(reason string) {
	if s.rec == nil {
		return
	}
	if err := s.rec.End(reason); err != nil {
		s.srv.Stats.RecorderErrors.Add(1)
		s.log.Error("recording not sealed", "err", err)
	}
}

func (s *session) run(ctx context.Context) {
	s.q = newQueue()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() {
			if r := recover(); r != nil {
				s.log.Error("session response relay failed", "panic", r)
				s.end("XX000", "gatehouse: internal error; the session is ended")
			}
		}()
		s.responses()
	}()
	stop := context.AfterFunc(ctx, func() {
		msg := "gatehouse: the gateway is shutting down"
		if id := s.held.Load(); id != nil {
			msg += fmt.Sprintf("; the statement held for approval %s was not run. The request stays open: once it is approved, reconnect and run the same statement again", *id)
		}
		s.end("57P01", msg)
	})
	defer func() {
		stop()
		s.closeAll()
		<-done
		reason := "client disconnected"
		if s.ending.Load() {
			reason = "ended by the gateway"
		}
		s.endRecording(reason)
		s.srv.sessions.Delete(cancelKey(s.cancelPID, s.cancelSecret))
		s.log.Info("session ended", "requests", s.requests, "denied", s.denied, "duration", time.Since(s.started).Round(time.Millisecond))
	}()
	err := s.requests0()
	if err != nil && !s.ending.Load() && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, net.ErrClosed) {
		s.log.Warn("session ended", "err", err)
	}
}

func (s *session) closeAll() {
	s.closeOne.Do(func() {
		close(s.closed)
		s.client.Close()
		s.up.Conn.Close()
		s.q.close()
		s.names.close()
	})
}

// send writes one message to the client, flushing when asked.
func (s *session) send(msg pgproto3.BackendMessage, flush bool) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	timeout := writeTimeout
	if s.ending.Load() {
		timeout = time.Second // end() is waiting to send the last word
	}
	_ = s.client.SetWriteDeadline(time.Now().Add(timeout))
	s.be.Send(msg)
	if flush {
		return s.be.Flush()
	}
	return nil
}

// end sends a FATAL error to the caller and closes the session. A client
// that does not read cannot stall it: the pending write is cut short first.
func (s *session) end(code, msg string) {
	if !s.ending.CompareAndSwap(false, true) {
		return
	}
	// A write in progress holds writeMu and may have set its own deadline
	// just after ours: keep cutting it short until the lock is ours, and
	// give up on the FATAL message after a second.
	deadline := time.Now().Add(time.Second)
	for !s.writeMu.TryLock() {
		_ = s.client.SetWriteDeadline(deadline)
		if time.Now().After(deadline) {
			s.log.Warn("session ended by the gateway; the client is not reading", "code", code, "reason", msg)
			s.closeAll()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = s.client.SetWriteDeadline(deadline)
	s.be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: msg})
	_ = s.be.Flush()
	s.writeMu.Unlock()
	s.log.Warn("session ended by the gateway", "code", code, "reason", msg)
	s.closeAll()
}

// desync ends a session whose responses no longer match its requests. It
// should never happen; if it does, nothing after it can be trusted.
func (s *session) desync(what string) {
	s.log.Error("response stream out of step with requests", "detail", what)
	s.end("XX000", "gatehouse: the session's responses no longer match its requests ("+what+"); the session is ended")
}

func (s *session) push(sl *slot) bool { return s.q.push(sl) }

// check runs before every statement: the token must still be valid, and
// after a bundle change the session must still be allowed to exist, judged
// entirely by the new bundle: its identity providers, identities and rules.
func (s *session) check() bool {
	if time.Now().After(s.token.Expiry) {
		s.end("28000", "gatehouse: token expired; reconnect with a fresh token")
		return false
	}
	active := s.srv.store.Current()
	if active.Revision == s.revision {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	vtok, err := active.Verifier.Verify(ctx, s.rawToken)
	cancel()
	if err != nil {
		s.end("28000", fmt.Sprintf("gatehouse: session ended: bundle revision %d no longer accepts this token: %v", active.Revision, err))
		return false
	}
	id, err := active.Policy.ResolveIdentity(vtok.Provider, vtok.Token)
	if err != nil {
		s.end("28000", fmt.Sprintf("gatehouse: session ended: bundle revision %d no longer accepts this caller: %v", active.Revision, err))
		return false
	}
	s.token, s.identity = vtok, id
	if findPostgres(active, s.resource) == nil {
		s.end("42501", fmt.Sprintf("gatehouse: session ended: bundle revision %d no longer has resource %q", active.Revision, s.resource))
		return false
	}
	d := active.Policy.Decide(s.input(celpolicy.Connect()))
	if d.Effect != bundle.EffectAllow {
		s.end("42501", fmt.Sprintf("gatehouse: session ended: bundle revision %d revokes the connection to %q: %s", active.Revision, s.resource, strings.Join(d.Reasons, "; ")))
		return false
	}
	s.log.Info("session re-checked against a new bundle", "revision", active.Revision, "previous_revision", s.revision)
	s.revision = active.Revision
	return true
}

// decide decides a request with the active bundle and applies the checks
// the gateway makes whatever the policy says. count says whether this is a
// request the caller makes (a Query, an Execute) or a preparation.
func (s *session) decide(req *celpolicy.PostgresRequest, count bool) celpolicy.Decision {
	d := s.judge(req)
	if d.Effect == bundle.EffectReview {
		// Counted by review, once the approvers have settled it (a
		// preparation is decided again when it executes).
		return d
	}
	if count || d.Effect != bundle.EffectAllow {
		s.requests++
		if d.Effect == bundle.EffectAllow {
			s.srv.Stats.Allowed.Add(1)
		} else {
			s.denied++
			s.srv.Stats.Denied.Add(1)
		}
	}
	return d
}

// judge decides a request with the active bundle, with the checks the
// gateway makes whatever the policy says.
func (s *session) judge(req *celpolicy.PostgresRequest) celpolicy.Decision {
	active := s.srv.store.Current()
	d := active.Policy.Decide(s.input(req))
	if len(d.Masks) > 0 {
		s.masked.Store(true)
	}
	for _, st := range req.Statements {
		if st.Command != "SHOW" && parserSettings[st.Setting] {
			d = celpolicy.Decision{Effect: bundle.EffectDeny, BundleRevision: d.BundleRevision, MatchedRules: []celpolicy.MatchedRule{},
				Reasons: []string{fmt.Sprintf("changing %s is refused by the gateway: its SQL parsing depends on it", st.Setting)}}
			break
		}
	}
	if (d.Effect == bundle.EffectAllow || d.Effect == bundle.EffectReview) && len(d.Masks) > 0 {
		// Rows of COPY ... TO are not row messages the gateway can
		// rewrite: with masks in force, refuse rather than leak.
		for _, st := range req.Statements {
			if st.Command == "COPY" && st.CopyDirection == "to" {
				d.Effect = bundle.EffectDeny
				d.Reasons = []string{"COPY ... TO of a resource with masks is denied: the gateway cannot mask COPY output; use SELECT"}
				d.Masks = nil
				break
			}
		}
	}
	return d
}

func (s *session) denial(d celpolicy.Decision, req *celpolicy.PostgresRequest) *pgproto3.ErrorResponse {
	var rules []string
	for _, m := range d.MatchedRules {
		if m.Effect != bundle.EffectAllow {
			rules = append(rules, m.Rule)
		}
	}
	msg := "gatehouse: permission denied"
	if len(rules) > 0 {
		msg += " by rule " + strings.Join(rules, ", ")
	}
	msg += ": " + strings.Join(d.Reasons, "; ")
	cmds := make([]string, 0, len(req.Statements))
	for _, st := range req.Statements {
		cmds = append(cmds, st.Command)
	}
	s.log.Info("statement denied", "rules", rules, "reasons", d.Reasons, "commands", cmds, "revision", d.BundleRevision)
	return &pgproto3.ErrorResponse{
		Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "42501", Message: msg,
		Detail: fmt.Sprintf("Decided by bundle revision %d for %s on %q.", d.BundleRevision, identityName(s.identity), s.resource),
		Hint:   "Run `gatehouse eval` with this statement to see the decision explained.",
	}
}

// requests0 reads the caller's messages, decides, and forwards.
func (s *session) requests0() error {
	copyCount := 0
	for {
		msg, err := s.be.Receive()
		if err != nil {
			return err
		}
		if s.ending.Load() {
			return nil
		}
		if s.copyIn.Load() {
			// While the upstream receives COPY data it ignores Sync and
			// Flush (they get no response) and refuses anything else.
			switch msg.(type) {
			case *pgproto3.CopyData, *pgproto3.CopyDone, *pgproto3.CopyFail, *pgproto3.Sync, *pgproto3.Flush:
			default:
				s.end("08P01", fmt.Sprintf("gatehouse: unexpected message %T during COPY", msg))
				return nil
			}
		}
		switch m := msg.(type) {
		case *pgproto3.Query:
			if !s.check() {
				return nil
			}
			req := celpolicy.Query(m.String)
			d := s.decide(req, true)
			var ref int
			var rerr error
			if d.Effect == bundle.EffectReview && s.q.head(false) == nil && byte(s.txStatus.Load()) == 'E' {
				// In an aborted transaction PostgreSQL refuses every
				// statement but the end of the block: nothing to hold.
				// The placeholder gets its own 25P02, passed on as is.
				ref, _ = s.recordStatement("query", m.String, req, d)
				s.push(&slot{kind: slotQuery, recRef: ref, start: time.Now()})
				s.fe.Send(&pgproto3.Query{String: deniedSQL})
				if err := s.fe.Flush(); err != nil {
					return err
				}
				continue
			}
			if d.Effect == bundle.EffectReview {
				rv := s.review("query", m.String, nil, req, d)
				if rv.gone {
					return nil
				}
				if !s.check() {
					return nil
				}
				d, ref = rv.d, rv.ref
				if rv.deny != nil {
					s.push(&slot{kind: slotQuery, deny: rv.deny})
					s.fe.Send(&pgproto3.Query{String: deniedSQL})
					if err := s.fe.Flush(); err != nil {
						return err
					}
					continue
				}
			} else {
				ref, rerr = s.recordStatement("query", m.String, req, d)
			}
			switch {
			case rerr != nil:
				s.push(&slot{kind: slotQuery, deny: unrecorded()})
				s.fe.Send(&pgproto3.Query{String: deniedSQL})
			case d.Effect != bundle.EffectAllow:
				s.push(&slot{kind: slotQuery, deny: s.denial(d, req)})
				s.fe.Send(&pgproto3.Query{String: deniedSQL})
			default:
				s.push(&slot{kind: slotQuery, masks: d.Masks, uncertain: setOperation(req), recRef: ref, start: time.Now()})
				s.fe.Send(m)
			}
			if err := s.fe.Flush(); err != nil {
				return err
			}
		case *pgproto3.Parse:
			if !s.check() {
				return nil
			}
			req := celpolicy.Query(m.Query)
			d := s.decide(req, false)
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
				if _, rerr := s.recordStatement("parse", m.Query, req, d); rerr != nil {
					deny = unrecorded()
				}
				s.push(&slot{kind: slotParse, mut: mut, deny: deny})
				s.fe.Send(&pgproto3.Parse{Name: m.Name, Query: deniedSQL})
			} else {
				s.push(&slot{kind: slotParse, mut: mut})
				s.fe.Send(m)
			}
		case *pgproto3.Bind:
			stmt, _, ok := s.names.resolve("S:"+m.PreparedStatement, s.batch)
			if !ok {
				return nil
			}
			mut := &mutation{key: "P:" + m.DestinationPortal, batch: s.batch, portal: &portal{stmt: stmt, params: copyParams(m)}}
			s.names.propose(mut)
			s.push(&slot{kind: slotBind, mut: mut})
			s.fe.Send(m)
		case *pgproto3.Describe:
			sl := &slot{kind: slotDescribe}
			if m.ObjectType == 'S' {
				sl.stmt, _, _ = s.names.resolve("S:"+m.Name, s.batch)
			}
			s.push(sl)
			s.fe.Send(m)
		case *pgproto3.Execute:
			if !s.check() {
				return nil
			}
			if err := s.execute(m); err != nil {
				return err
			}
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
			if !s.copyIn.Load() {
				s.push(&slot{kind: slotSync})
				s.batch++
			}
			s.fe.Send(m)
			if err := s.fe.Flush(); err != nil {
				return err
			}
		case *pgproto3.Flush:
			s.fe.Send(m)
			if err := s.fe.Flush(); err != nil {
				return err
			}
		case *pgproto3.FunctionCall:
			if !s.check() {
				return nil
			}
			s.functionCall(m)
			if err := s.fe.Flush(); err != nil {
				return err
			}
		case *pgproto3.CopyData:
			s.fe.Send(m)
			if copyCount++; copyCount%64 == 0 {
				if err := s.fe.Flush(); err != nil {
					return err
				}
			}
		case *pgproto3.CopyDone, *pgproto3.CopyFail:
			s.copyIn.Store(false)
			s.fe.Send(m)
			if err := s.fe.Flush(); err != nil {
				return err
			}
		case *pgproto3.Terminate:
			s.fe.Send(m)
			_ = s.fe.Flush()
			return nil
		default:
			s.end("08P01", fmt.Sprintf("gatehouse: unexpected message %T", msg))
			return nil
		}
	}
}

// execute decides an Execute by the statement its portal will really run,
// as the upstream will have it, with the bundle active now: rules that use
// the time or the session's counters are judged at each execution.
func (s *session) execute(m *pgproto3.Execute) error {
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
		req = &celpolicy.PostgresRequest{Kind: "query", Invalid: "portal " + strconvQuote(m.Portal) + " was not bound through the gateway"}
	} else {
		req, sql, params = p.stmt.req, p.stmt.sql, p.params
	}
	d := s.decide(req, true)
	var ref int
	var rerr error
	switch {
	case d.Effect == bundle.EffectReview && p != nil && p.approval != "":
		// More rows of a portal an approval released (a cursor fetched
		// in batches): the same statement with the same parameters.
		ref, rerr = s.recordStatement("execute", sql, req, d)
		if rerr == nil {
			s.note(recorder.Event{Type: recorder.TypeApproval, Ref: ref, Approval: p.approval, State: "continued", Reason: "more rows of the portal the approval released"})
			d.Effect = bundle.EffectAllow
			s.requests++
			s.srv.Stats.Allowed.Add(1)
		}
	case d.Effect == bundle.EffectReview:
		// Will the upstream run it at all? After an earlier error in this
		// batch (or in an aborted transaction, where the Bind failed) it
		// skips to Sync: nothing to hold, and no approval to spend.
		hd := &slot{kind: slotDescribe, hidden: true, ready: make(chan *resultDesc, 1)}
		s.push(hd)
		s.fe.Send(&pgproto3.Describe{ObjectType: 'P', Name: m.Portal})
		s.fe.Send(&pgproto3.Flush{})
		if err := s.fe.Flush(); err != nil {
			return err
		}
		if desc := <-hd.ready; desc == nil {
			ref, _ = s.recordStatement("execute", sql, req, d)
			s.push(&slot{kind: slotExecute, recRef: ref, start: time.Now()})
			s.fe.Send(m)
			return nil
		}
		if params != nil {
			// The types the hash binds, and those approvers read.
			params.declared = p.stmt.declared
			if oids := p.stmt.paramOIDs.Load(); oids != nil {
				params.oids = *oids
			}
		}
		rv := s.review("execute", sql, params, req, d)
		if rv.gone || !s.check() {
			return net.ErrClosed
		}
		d, ref = rv.d, rv.ref
		if rv.deny != nil {
			s.push(&slot{kind: slotParse, deny: rv.deny})
			s.fe.Send(&pgproto3.Parse{Query: deniedSQL})
			return nil
		}
		p.approval = rv.id
	default:
		ref, rerr = s.recordStatement("execute", sql, req, d)
	}
	if rerr != nil || d.Effect != bundle.EffectAllow {
		// Fail this batch upstream so the upstream skips to Sync.
		deny := unrecorded()
		if rerr == nil {
			deny = s.denial(d, req)
		}
		s.push(&slot{kind: slotParse, deny: deny})
		s.fe.Send(&pgproto3.Parse{Query: deniedSQL})
		return nil
	}
	if len(d.Masks) == 0 {
		s.push(&slot{kind: slotExecute, recRef: ref, start: time.Now()})
		s.fe.Send(m)
		return nil
	}
	// To mask rows the gateway must know their columns' origins, and to
	// withhold a result it cannot mask it must know before the statement
	// runs. So it describes the portal first and waits for the answer.
	hd := &slot{kind: slotDescribe, hidden: true, masks: d.Masks, uncertain: setOperation(req), ready: make(chan *resultDesc, 1)}
	s.push(hd)
	s.fe.Send(&pgproto3.Describe{ObjectType: 'P', Name: m.Portal})
	// A protocol Flush: the upstream holds its responses until Sync or
	// Flush, and the answer is needed now.
	s.fe.Send(&pgproto3.Flush{})
	if err := s.fe.Flush(); err != nil {
		return err
	}
	desc := <-hd.ready
	switch {
	case desc == nil:
		// The upstream is skipping to Sync after an earlier error (or
		// the session is ending): this Execute will not run either.
		s.push(&slot{kind: slotExecute, masks: d.Masks, recRef: ref, start: time.Now()})
		s.fe.Send(m)
	case desc.blocked != "":
		s.push(&slot{kind: slotParse, deny: &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "42501", Message: "gatehouse: " + desc.blocked}})
		s.fe.Send(&pgproto3.Parse{Query: deniedSQL})
	default:
		s.recordMasked(ref, desc)
		s.push(&slot{kind: slotExecute, masks: d.Masks, desc: desc, recRef: ref, start: time.Now()})
		s.fe.Send(m)
	}
	return nil
}

func strconvQuote(s string) string { return fmt.Sprintf("%q", s) }

// rowsOf reads the row count from a command tag ("SELECT 3", "INSERT 0 1").
func rowsOf(tag []byte) int64 {
	f := strings.Fields(string(tag))
	if len(f) < 2 {
		return 0
	}
	n, err := strconv.ParseInt(f[len(f)-1], 10, 64)
	if err != nil {
		return 0
	}
	return n
}

func setOperation(req *celpolicy.PostgresRequest) bool {
	for _, st := range req.Statements {
		if st.SetOperation {
			return true
		}
	}
	return false
}

// functionCall decides a fast-path call by the function's name.
func (s *session) functionCall(m *pgproto3.FunctionCall) {
	name, err := s.srv.catalog.functionName(s.resource, m.Function)
	var req *celpolicy.PostgresRequest
	if err != nil {
		req = &celpolicy.PostgresRequest{Kind: "function_call", Invalid: fmt.Sprintf("function %d could not be identified: %v", m.Function, err)}
	} else {
		req = celpolicy.FunctionCall(name)
	}
	d := s.decide(req, true)
	if d.Effect == bundle.EffectReview {
		// A fast-path call is not SQL text an approver can read and a
		// hash can bind; it is refused, and SELECT f(...) can be held.
		d.Effect = bundle.EffectDeny
		d.Reasons = append([]string{"a fast-path function call cannot be held for approval; call the function with SELECT instead"}, d.Reasons...)
		s.requests++
		s.denied++
		s.srv.Stats.Denied.Add(1)
	}
	ref, rerr := s.recordStatement("function_call", name, req, d)
	if rerr != nil || d.Effect != bundle.EffectAllow {
		deny := unrecorded()
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

// responses forwards the upstream's messages to the caller, matching each
// to its request: it masks rows, swaps the gateway's denial in for the
// placeholder error, hides the responses to its own requests, and records
// statement and portal changes as the upstream confirms them. A response
// that does not fit its request ends the session.
func (s *session) responses() {
	for {
		msg, err := s.fe.Receive()
		if err != nil {
			if !s.ending.Load() {
				s.closeAll()
			}
			return
		}
		out, flush, ok := s.response(msg)
		if !ok {
			return
		}
		if out == nil {
			continue
		}
		if err := s.send(out, flush || s.fe.ReadBufferLen() == 0); err != nil {
			s.closeAll()
			return
		}
	}
}

// response handles one upstream message: what to send the caller (nil for
// nothing), whether to flush, and false when the session must end.
func (s *session) response(msg pgproto3.BackendMessage) (pgproto3.BackendMessage, bool, bool) {
	var out pgproto3.BackendMessage = msg
	h := s.q.head(false)
	kind := func(kinds ...slotKind) bool {
		if h == nil {
			return false
		}
		for _, k := range kinds {
			if h.kind == k {
				return true
			}
		}
		return false
	}
	switch m := msg.(type) {
	case *pgproto3.ParseComplete, *pgproto3.BindComplete, *pgproto3.CloseComplete:
		want := map[string]slotKind{"*pgproto3.ParseComplete": slotParse, "*pgproto3.BindComplete": slotBind, "*pgproto3.CloseComplete": slotClose}[fmt.Sprintf("%T", msg)]
		if !kind(want) {
			s.desync(fmt.Sprintf("%T without its request", msg))
			return nil, false, false
		}
		s.q.pop()
		s.names.settle(h.mut, true)
	case *pgproto3.ParameterDescription:
		if !kind(slotDescribe) {
			s.desync("ParameterDescription without a Describe")
			return nil, false, false
		}
		if h.stmt != nil {
			oids := append([]uint32(nil), m.ParameterOIDs...)
			h.stmt.paramOIDs.Store(&oids)
		}
		if h.hidden {
			out = nil
		}
	case *pgproto3.RowDescription:
		switch {
		case kind(slotDescribe):
			s.q.pop()
			if h.hidden {
				h.resolve(s.describe(m, h.masks, h.uncertain))
				out = nil
			}
		case kind(slotQuery):
			if len(h.masks) > 0 {
				h.desc = s.describe(m, h.masks, h.uncertain)
				if h.desc.blocked == "" {
					s.recordMasked(h.recRef, h.desc)
				}
				if h.desc.blocked != "" {
					// The statement has already run: the gateway cannot
					// withhold the rows and keep the upstream's state
					// true, so it ends the session, which aborts the
					// upstream transaction.
					s.end("42501", "gatehouse: "+h.desc.blocked+"; the session is ended so that the statement's transaction is rolled back")
					return nil, false, false
				}
			}
		default:
			s.desync("RowDescription without its request")
			return nil, false, false
		}
	case *pgproto3.NoData:
		if !kind(slotDescribe) {
			s.desync("NoData without a Describe")
			return nil, false, false
		}
		s.q.pop()
		if h.hidden {
			h.resolve(&resultDesc{})
			out = nil
		}
	case *pgproto3.DataRow:
		if !kind(slotQuery, slotExecute) {
			s.desync("DataRow without a query")
			return nil, false, false
		}
		if len(h.masks) > 0 {
			if h.desc == nil {
				s.desync("rows to mask without their layout")
				return nil, false, false
			}
			out = h.desc.mask(m)
		}
	case *pgproto3.CommandComplete, *pgproto3.EmptyQueryResponse, *pgproto3.PortalSuspended:
		if cc, ok := msg.(*pgproto3.CommandComplete); ok && h != nil {
			s.recordOutcome(h, rowsOf(cc.CommandTag), "")
		}
		switch {
		case kind(slotExecute):
			s.q.pop()
		case kind(slotQuery):
			h.desc = nil // a multi-statement query: the next result has its own
		default:
			s.desync(fmt.Sprintf("%T without a query", msg))
			return nil, false, false
		}
	case *pgproto3.CopyInResponse:
		if !kind(slotQuery, slotExecute) {
			s.desync("CopyInResponse without a query")
			return nil, false, false
		}
		s.copyIn.Store(true)
	case *pgproto3.CopyOutResponse, *pgproto3.CopyData, *pgproto3.CopyDone:
		if !kind(slotQuery, slotExecute) {
			s.desync(fmt.Sprintf("%T without a query", msg))
			return nil, false, false
		}
	case *pgproto3.CopyBothResponse:
		s.desync("CopyBothResponse")
		return nil, false, false
	case *pgproto3.FunctionCallResponse:
		if !kind(slotFunctionCall) {
			s.desync("FunctionCallResponse without a call")
			return nil, false, false
		}
	case *pgproto3.ErrorResponse:
		withhold := s.masked.Load() || (h != nil && len(h.masks) > 0)
		if withhold {
			out = scrubError(m)
		}
		if m.Severity == "FATAL" || m.Severity == "PANIC" {
			// The upstream is ending the session: pass it on.
			return out, true, true
		}
		if h != nil && h.deny == nil {
			if withhold {
				s.recordOutcome(h, 0, m.Code+": (the server's message is withheld: masks apply)")
			} else {
				s.recordOutcome(h, 0, m.Code+": "+m.Message)
			}
		}
		switch {
		case h == nil:
		case kind(slotQuery, slotFunctionCall):
			if h.deny != nil {
				out = h.deny
			}
			s.copyIn.Store(false)
		case s.q.isSkipping():
		default:
			// Extended protocol: the failed request gets no more
			// responses, and the upstream skips every request up to
			// Sync. The error goes to the caller now, as the upstream
			// sends it, not when Sync comes.
			s.q.pop()
			s.names.settle(h.mut, false)
			if h.ready != nil {
				h.resolve(nil)
			}
			if h.deny != nil {
				out = h.deny
			}
			s.q.skip()
		}
	case *pgproto3.ReadyForQuery:
		s.copyIn.Store(false)
		if s.q.isSkipping() {
			s.q.endSkip(s.names)
		} else {
			if !kind(slotSync, slotQuery, slotFunctionCall) {
				s.desync("ReadyForQuery without a Sync or query")
				return nil, false, false
			}
			s.q.pop()
		}
		s.txStatus.Store(uint32(m.TxStatus))
		if m.TxStatus == 'I' {
			s.names.endTransaction()
		}
		return out, true, true
	case *pgproto3.ParameterStatus:
		if bad := unsafeParameter(m); bad != "" {
			s.end("XX000", "gatehouse: session ended: "+bad)
			return nil, false, false
		}
	case *pgproto3.NoticeResponse:
		if s.masked.Load() {
			out = scrubNotice(m)
		}
	case *pgproto3.NotificationResponse:
		if s.masked.Load() && m.Payload != "" {
			out = &pgproto3.NotificationResponse{PID: m.PID, Channel: m.Channel, Payload: "(withheld by gatehouse: masks apply)"}
		}
	default:
		s.desync(fmt.Sprintf("unexpected %T", msg))
		return nil, false, false
	}
	return out, false, true
}

func unsafeParameter(m *pgproto3.ParameterStatus) string {
	switch m.Name {
	case "client_encoding":
		if !strings.EqualFold(m.Value, "UTF8") {
			return fmt.Sprintf("the upstream switched client_encoding to %q; the gateway only parses UTF8", m.Value)
		}
	case "standard_conforming_strings":
		if m.Value != "on" {
			return "the upstream turned standard_conforming_strings off; the gateway cannot parse such SQL safely"
		}
	}
	return ""
}

// cancelUpstream sends a CancelRequest to the session's upstream with the
// upstream's own key, over TLS when the upstream connection uses TLS.
func (s *session) cancelUpstream() error {
	cfg := s.up.Config
	addr := net.JoinHostPort(cfg.Host, fmt.Sprint(cfg.Port))
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	var c net.Conn = conn
	if s.up.TLSConfig != nil {
		req, err := (&pgproto3.SSLRequest{}).Encode(nil)
		if err != nil {
			return err
		}
		if _, err := conn.Write(req); err != nil {
			return err
		}
		var b [1]byte
		if _, err := io.ReadFull(conn, b[:]); err != nil {
			return err
		}
		if b[0] == 'S' {
			tc := tls.Client(conn, s.up.TLSConfig.Clone())
			if err := tc.Handshake(); err != nil {
				return err
			}
			c = tc
		}
	}
	buf, err := (&pgproto3.CancelRequest{ProcessID: s.up.PID, SecretKey: s.up.SecretKey}).Encode(nil)
	if err != nil {
		return err
	}
	_, err = c.Write(buf)
	return err
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// scrubError rewrites a server error for a caller whose results are masked:
// PostgreSQL quotes the offending value in messages such as `invalid input
// syntax for type integer: "4111 1111 1111 1111"`, so a masked column read
// into a cast, a constraint or a function's error would reach the caller
// (and the recording) unmasked. The SQLSTATE, severity and the names of the
// objects involved stay; the texts that can carry values go.
func scrubError(m *pgproto3.ErrorResponse) *pgproto3.ErrorResponse {
	return &pgproto3.ErrorResponse{
		Severity: m.Severity, SeverityUnlocalized: m.SeverityUnlocalized, Code: m.Code,
		Message:    fmt.Sprintf("gatehouse: the statement failed with SQLSTATE %s; the server's message is withheld because masks apply to your results (it may quote a masked value)", m.Code),
		SchemaName: m.SchemaName, TableName: m.TableName, ColumnName: m.ColumnName,
		DataTypeName: m.DataTypeName, ConstraintName: m.ConstraintName,
	}
}

// scrubNotice does the same for notices and warnings.
func scrubNotice(m *pgproto3.NoticeResponse) *pgproto3.NoticeResponse {
	return &pgproto3.NoticeResponse{
		Severity: m.Severity, SeverityUnlocalized: m.SeverityUnlocalized, Code: m.Code,
		Message: fmt.Sprintf("gatehouse: a server %s (SQLSTATE %s) is withheld because masks apply to your results", strings.ToLower(m.Severity), m.Code),
	}
}
