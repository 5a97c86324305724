package postgres

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/gateway/auth"
)

// deniedSQL is what the gateway sends upstream in place of a denied
// statement. It fails at parse analysis, so the upstream does what it does
// for any failed statement: aborts the transaction if one is open, and in
// the extended protocol ignores messages until Sync. The session's state
// stays the upstream's own, and the caller sees the gateway's 42501 error in
// place of this one's.
const deniedSQL = `SELECT * FROM pg_catalog."gatehouse: statement denied by policy"`

// session is one proxied connection.
type session struct {
	srv      *Server
	id       uint64
	client   net.Conn
	be       *pgproto3.Backend
	secure   bool
	resource string
	token    *auth.Verified
	identity celpolicy.Identity
	started  time.Time
	log      *slog.Logger

	up           *pgconn.HijackedConn
	fe           *pgproto3.Frontend
	txStatus     byte
	cancelPID    uint32
	cancelSecret []byte

	// Owned by the request side.
	revision uint64 // revision the session's connect permission was last checked against
	stmts    map[string]*prepared
	portals  map[string]*portal
	requests int64
	denied   int64

	slots    chan *slot
	writeMu  sync.Mutex // serialises writes to the client
	ending   atomic.Bool
	closeOne sync.Once
}

// prepared is a statement prepared through the gateway.
type prepared struct {
	req      *celpolicy.PostgresRequest
	decision celpolicy.Decision
	revision uint64
}

type portal struct{ stmt *prepared }

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
// responses are matched in order, which is how masking knows which result it
// is rewriting and how a denial replaces the right error.
type slot struct {
	kind slotKind
	// deny replaces the ErrorResponse this request gets (it was sent as
	// deniedSQL).
	deny *pgproto3.ErrorResponse
	// hidden: the gateway injected this request; its responses are not
	// forwarded.
	hidden bool
	// masks to apply to this request's rows.
	masks []celpolicy.MaskAction
	// desc is the row layout of the rows being sent, resolved to column
	// origins. For an execute it comes from the hidden describe before it.
	desc   *resultDesc
	feeds  *slot // a hidden describe feeds its row layout to this execute
	reason string
}

func (s *session) input(req celpolicy.Request) *celpolicy.Input {
	return &celpolicy.Input{
		Identity: s.identity, Resource: s.resource, Request: req, Now: time.Now(),
		Session: celpolicy.Session{
			ID: fmt.Sprint(s.id), StartedAt: s.started,
			Counters: celpolicy.Counters{Requests: s.requests, Denied: s.denied},
		},
	}
}

func (s *session) run(ctx context.Context) {
	s.slots = make(chan *slot, 4096)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.responses()
	}()
	stop := context.AfterFunc(ctx, func() { s.end("57P01", "gatehouse: the gateway is shutting down") })
	defer stop()
	err := s.requests0()
	if err != nil && !s.ending.Load() && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, net.ErrClosed) {
		s.log.Warn("session ended", "err", err)
	}
	s.closeAll()
	<-done
	s.srv.sessions.Delete(cancelKey(s.cancelPID, s.cancelSecret))
	s.log.Info("session ended", "requests", s.requests, "denied", s.denied, "duration", time.Since(s.started).Round(time.Millisecond))
}

func (s *session) closeAll() {
	s.closeOne.Do(func() {
		s.client.Close()
		s.up.Conn.Close()
		close(s.slots)
	})
}

// end sends a FATAL error to the caller and closes the session.
func (s *session) end(code, msg string) {
	if !s.ending.CompareAndSwap(false, true) {
		return
	}
	s.writeMu.Lock()
	s.be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: msg})
	_ = s.be.Flush()
	s.writeMu.Unlock()
	s.log.Warn("session ended by the gateway", "code", code, "reason", msg)
	s.client.Close()
	s.up.Conn.Close()
}

func (s *session) push(sl *slot) { s.slots <- sl }

// check runs before every statement: the token must still be valid, and
// after a bundle change the session must still be allowed to exist.
func (s *session) check() bool {
	if time.Now().After(s.token.Expiry) {
		s.end("28000", "gatehouse: token expired; reconnect with a fresh token")
		return false
	}
	active := s.srv.store.Current()
	if active.Revision == s.revision {
		return true
	}
	// A new bundle: the caller is judged by it from this statement on,
	// starting with whether it may be connected at all.
	id, err := active.Policy.ResolveIdentity(s.token.Provider, s.token.Token)
	if err != nil {
		s.end("28000", fmt.Sprintf("gatehouse: session ended: bundle revision %d no longer accepts this caller: %v", active.Revision, err))
		return false
	}
	s.identity = id
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
// the gateway makes on top of policy.
func (s *session) decide(req *celpolicy.PostgresRequest) celpolicy.Decision {
	active := s.srv.store.Current()
	d := active.Policy.Decide(s.input(req))
	if d.Effect == bundle.EffectAllow && len(d.Masks) > 0 {
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
	if d.Effect == bundle.EffectReview {
		// Holding a statement for approval arrives with the approvals
		// feature; until then a review decision must not run.
		d.Effect = bundle.EffectDeny
		d.Reasons = append([]string{"this statement needs approval, which this gateway does not offer yet"}, d.Reasons...)
	}
	s.requests++
	if d.Effect == bundle.EffectAllow {
		s.srv.Stats.Allowed.Add(1)
	} else {
		s.denied++
		s.srv.Stats.Denied.Add(1)
	}
	return d
}

// denial is the error a denied statement gets: SQLSTATE 42501, naming the
// rules and reasons, so the caller knows what to change.
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
		switch m := msg.(type) {
		case *pgproto3.Query:
			if !s.check() {
				return nil
			}
			req := celpolicy.Query(m.String)
			d := s.decide(req)
			if d.Effect != bundle.EffectAllow {
				s.push(&slot{kind: slotQuery, deny: s.denial(d, req)})
				s.fe.Send(&pgproto3.Query{String: deniedSQL})
			} else {
				s.push(&slot{kind: slotQuery, masks: d.Masks})
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
			d := s.decide(req)
			st := &prepared{req: req, decision: d, revision: s.srv.store.Current().Revision}
			s.stmts[m.Name] = st
			if d.Effect != bundle.EffectAllow {
				s.push(&slot{kind: slotParse, deny: s.denial(d, req)})
				s.fe.Send(&pgproto3.Parse{Name: m.Name, Query: deniedSQL})
			} else {
				s.push(&slot{kind: slotParse})
				s.fe.Send(m)
			}
		case *pgproto3.Bind:
			s.portals[m.DestinationPortal] = &portal{stmt: s.stmts[m.PreparedStatement]}
			s.push(&slot{kind: slotBind})
			s.fe.Send(m)
		case *pgproto3.Describe:
			s.push(&slot{kind: slotDescribe})
			s.fe.Send(m)
		case *pgproto3.Execute:
			if !s.check() {
				return nil
			}
			s.execute(m)
		case *pgproto3.Close:
			if m.ObjectType == 'S' {
				delete(s.stmts, m.Name)
			} else {
				delete(s.portals, m.Name)
			}
			s.push(&slot{kind: slotClose})
			s.fe.Send(m)
		case *pgproto3.Sync:
			s.push(&slot{kind: slotSync})
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

// execute decides an Execute. A statement is decided when it is prepared;
// it is decided again here when the bundle changed since, so that new rules
// apply to statements prepared before them.
func (s *session) execute(m *pgproto3.Execute) {
	p := s.portals[m.Portal]
	cur := s.srv.store.Current().Revision
	var d celpolicy.Decision
	var req *celpolicy.PostgresRequest
	switch {
	case p == nil || p.stmt == nil:
		// A portal the gateway did not see bound: nothing is known of
		// it, so it must not run.
		req = &celpolicy.PostgresRequest{Kind: "query", Invalid: "portal " + m.Portal + " was not bound through the gateway"}
		d = s.decide(req)
	case p.stmt.revision != cur || p.stmt.decision.Effect != bundle.EffectAllow:
		req = p.stmt.req
		d = s.decide(req)
		p.stmt.decision, p.stmt.revision = d, cur
	default:
		req = p.stmt.req
		d = p.stmt.decision
		s.requests++
		s.srv.Stats.Allowed.Add(1)
	}
	if d.Effect != bundle.EffectAllow {
		// Fail this batch upstream (the unnamed statement is replaced
		// by one that fails to parse) so the upstream skips to Sync.
		s.push(&slot{kind: slotParse, deny: s.denial(d, req)})
		s.fe.Send(&pgproto3.Parse{Query: deniedSQL})
		return
	}
	ex := &slot{kind: slotExecute, masks: d.Masks}
	if len(d.Masks) > 0 {
		// To mask rows the gateway must know their columns' origins;
		// it asks for the portal's description itself.
		s.push(&slot{kind: slotDescribe, hidden: true, feeds: ex})
		s.fe.Send(&pgproto3.Describe{ObjectType: 'P', Name: m.Portal})
	}
	s.push(ex)
	s.fe.Send(m)
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
	d := s.decide(req)
	if d.Effect != bundle.EffectAllow {
		s.push(&slot{kind: slotFunctionCall, deny: s.denial(d, req)})
		s.fe.Send(&pgproto3.Query{String: deniedSQL})
		return
	}
	s.push(&slot{kind: slotFunctionCall})
	s.fe.Send(m)
}

// responses forwards the upstream's messages to the caller, matching them
// to the requests in order: it masks rows, swaps the gateway's denial in
// for the placeholder error, and hides the responses to its own requests.
func (s *session) responses() {
	defer func() {
		// Unblock the request side if it is waiting to push.
		go func() {
			for range s.slots {
			}
		}()
	}()
	var head *slot
	next := func() *slot {
		if head == nil {
			if sl, ok := <-s.slots; ok {
				head = sl
			}
		}
		return head
	}
	pop := func() { head = nil }
	for {
		msg, err := s.fe.Receive()
		if err != nil {
			if !s.ending.Load() {
				s.closeAll()
			}
			return
		}
		var out pgproto3.BackendMessage = msg
		switch m := msg.(type) {
		case *pgproto3.ParseComplete, *pgproto3.BindComplete, *pgproto3.CloseComplete:
			next()
			pop()
		case *pgproto3.ParameterDescription:
			if sl := next(); sl != nil && sl.hidden {
				out = nil
			}
		case *pgproto3.RowDescription:
			sl := next()
			switch {
			case sl == nil:
			case sl.kind == slotDescribe:
				if sl.feeds != nil {
					sl.feeds.desc = s.describe(m, sl.feeds.masks)
				}
				if sl.hidden {
					out = nil
				}
				pop()
			case sl.kind == slotQuery && len(sl.masks) > 0:
				sl.desc = s.describe(m, sl.masks)
				if sl.desc.blocked != "" {
					out = nil
				}
			}
		case *pgproto3.NoData:
			if sl := next(); sl != nil && sl.kind == slotDescribe {
				if sl.hidden {
					out = nil
				}
				pop()
			}
		case *pgproto3.DataRow:
			if sl := next(); sl != nil && sl.desc != nil {
				if sl.desc.blocked != "" {
					out = nil
				} else if len(sl.masks) > 0 {
					out = sl.desc.mask(m)
				}
			}
		case *pgproto3.CommandComplete, *pgproto3.EmptyQueryResponse, *pgproto3.PortalSuspended:
			if sl := next(); sl != nil {
				if sl.desc != nil && sl.desc.blocked != "" {
					out = &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "42501", Message: "gatehouse: " + sl.desc.blocked}
				}
				if sl.kind == slotExecute {
					pop()
				} else {
					sl.desc = nil // a multi-statement query: the next result has its own
				}
			}
		case *pgproto3.ErrorResponse:
			sl := next()
			if sl != nil && sl.deny != nil {
				out = sl.deny
			}
			if sl != nil && sl.kind != slotQuery && sl.kind != slotFunctionCall && sl.kind != slotSync {
				// Extended protocol: the upstream now ignores everything
				// up to Sync, so those requests get no responses.
				pop()
				for {
					sl := next()
					if sl == nil || sl.kind == slotSync {
						break
					}
					pop()
				}
			}
		case *pgproto3.ReadyForQuery:
			next()
			pop()
			s.txStatus = m.TxStatus
		case *pgproto3.ParameterStatus:
			if bad := unsafeParameter(m); bad != "" {
				s.end("XX000", "gatehouse: session ended: "+bad)
				return
			}
		}
		if out == nil {
			continue
		}
		s.writeMu.Lock()
		s.be.Send(out)
		var ferr error
		if _, rfq := msg.(*pgproto3.ReadyForQuery); rfq || s.fe.ReadBufferLen() == 0 {
			ferr = s.be.Flush()
		}
		s.writeMu.Unlock()
		if ferr != nil {
			s.closeAll()
			return
		}
	}
}

// unsafeParameter reports a server setting change that would make the
// gateway's parse of later statements differ from the server's.
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
