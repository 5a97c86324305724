package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	core "github.com/gatehouse-dev/gatehouse/gateway/session"
	"github.com/gatehouse-dev/gatehouse/sqlfacts"
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

// session is one proxied connection: the core's session (who, what is
// allowed, the recording) and the wire state around it.
type session struct {
	srv    *Server
	cs     *core.Session
	log    *slog.Logger
	client net.Conn
	reader *clientReader // what be reads the client through
	be     *pgproto3.Backend
	out    *dropWriter // be's writer

	up           *pgconn.HijackedConn
	fe           *pgproto3.Frontend
	txStatus     atomic.Uint32 // the last ReadyForQuery's status byte
	cancelPID    uint32
	cancelSecret []byte

	names *names
	q     *queue
	// cat is the catalog as this session sees it, for masks' lineage.
	cat *sessionCatalog
	// role is the database role the session runs as ("" for the
	// resource's login role).
	role string

	// Owned by the request side.
	batch     uint64 // counts Syncs sent
	copyCount int    // CopyData messages since the last flush
	// awaitCopy is a COPY FROM STDIN just forwarded: nothing more is
	// forwarded until the upstream has said whether it started (copyIn).
	// copyStream is that statement while the caller sends its data.
	awaitCopy, copyStream *slot

	writeMu sync.Mutex // serialises writes to the client
	// ending is set by end(), under endMu, which it holds until the
	// caller has its last word and the connections are closed.
	ending   atomic.Bool
	endMu    sync.Mutex
	closeOne sync.Once
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
	// masking is how this request's rows are masked: the plan decided
	// with the statement (per statement of a simple query), the detector
	// masks, and whether column masks applied at all (errors are then
	// withheld: they may quote a value). desc is the current result's
	// layout with each column's mask; stmt counts the statements of a
	// simple query that have completed.
	masking *maskSet
	desc    *resultDesc
	index   int
	// effects are what each statement changes in the session's view of
	// the catalog once it succeeds (by statement index).
	effects []*effects
	// mut is the change to a statement or portal this request makes if
	// it succeeds.
	mut *mutation
	// ready receives a hidden Describe's layout (nil if the upstream
	// skipped it) for the request side, which waits on it; layout is
	// instead the Execute sent right after a hidden Describe, whose desc
	// the Describe's answer sets (forwardExecute).
	ready  chan *resultDesc
	layout *slot
	once   sync.Once
	// copyIn is made for a Query or Execute of COPY FROM STDIN, and
	// closed once the upstream has said whether the copy started
	// (copyState: copyStarted on CopyInResponse, copyOver on anything
	// else: an error, its end, skipped, the session over).
	copyIn    chan struct{}
	copyState atomic.Int32
	copyOnce  sync.Once
	// forget are names this request's SQL drops (names.forgetAll),
	// applied once it is over (finished).
	forget     func()
	forgetOnce sync.Once
	// stmt is the statement a Describe of a statement describes.
	stmt *prepared
	// recRef is the recorded request event this request's outcome
	// belongs to; start is when it was sent.
	recRef int
	start  time.Time
}

// The states of a COPY FROM STDIN (slot.copyState).
const (
	copyPending int32 = iota
	copyStarted
	copyOver
)

// copyBegin records a CopyInResponse for this request. It reports false
// when no copy was expected of it, or it already had its answer: the
// responses are then out of step.
func (sl *slot) copyBegin() bool {
	if sl.copyIn == nil || !sl.copyState.CompareAndSwap(copyPending, copyStarted) {
		return false
	}
	sl.copyOnce.Do(func() { close(sl.copyIn) })
	return true
}

// copyEnd records that a COPY this request may have started is over, or
// never started.
func (sl *slot) copyEnd() {
	if sl.copyIn == nil {
		return
	}
	sl.copyState.Store(copyOver)
	sl.copyOnce.Do(func() { close(sl.copyIn) })
}

// finished is called once a request has all its answers, or will get
// none.
func (sl *slot) finished() {
	sl.copyEnd()
	if sl.forget != nil {
		sl.forgetOnce.Do(sl.forget)
	}
}

// skipped tells a request's waiters that it gets no answer: the upstream
// skipped it, or the session is over.
func (sl *slot) skipped() {
	if sl.ready != nil {
		sl.resolve(nil)
	}
	sl.finished()
}

func (sl *slot) resolve(d *resultDesc) {
	if sl.ready != nil {
		sl.once.Do(func() { sl.ready <- d })
	}
}

func (s *session) run(ctx context.Context) {
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
		if id, ok := s.cs.Held(); ok {
			msg += fmt.Sprintf("; the statement held for approval %s was not run. The request stays open: once it is approved, reconnect and run the same statement again", id)
		}
		s.cancelInFlight()
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
		s.srv.sessions.Delete(cancelKey(s.cancelPID, s.cancelSecret))
		s.cs.End(reason)
	}()
	err := s.requests(ctx)
	if err != nil && !s.ending.Load() && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, net.ErrClosed) {
		s.log.Warn("session ended", "err", err)
	}
}

// cancelInFlight cancels, upstream, a statement still running when the
// gateway shuts down: closing the connection alone would leave it running
// on the server. Its result (SQLSTATE 57014) is recorded as it comes back,
// for up to a few seconds.
func (s *session) cancelInFlight() {
	if s.q.head(false) == nil {
		return
	}
	if err := s.cancelUpstream(); err != nil {
		s.log.Warn("the statement in flight could not be cancelled upstream at shutdown", "err", err)
		return
	}
	s.log.Info("cancelled the statement in flight upstream: the gateway is shutting down")
	for deadline := time.Now().Add(3 * time.Second); s.q.head(false) != nil && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
}

// closeAll closes the session's connections, once. While end() is sending
// the caller its last word, closeAll waits for it:
// the request side sees the session ending as soon as end() starts, and
// closing under the FATAL message left the caller a bare closed connection
// instead of the reason.
func (s *session) closeAll() {
	s.endMu.Lock() // never held by a caller of closeAll: end() calls closeNow
	defer s.endMu.Unlock()
	s.closeNow()
}

// closeNow closes the session's connections, once, at once.
func (s *session) closeNow() {
	s.closeOne.Do(func() {
		s.cs.Close()
		s.client.Close()
		s.up.Conn.Close()
		s.q.close()
		s.names.close()
	})
}

// send writes one message to the client, flushing when asked. In the
// overlapped mode nothing is flushed before the event of every statement
// forwarded so far, by any session, is durable; when that fails, what was buffered is thrown away and
// errWithheld returned (the caller ends the session with withheldCode).
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
		if err := s.durableLocked(); err != nil {
			return err
		}
		return s.be.Flush()
	}
	return nil
}

// The overlapped mode's refusal, when what was forwarded cannot be made
// durable: the session ends, its buffered responses withheld.
var errWithheld = errors.New("gatehouse: the recorder cannot make forwarded statements durable")

const (
	withheldCode    = "58030"
	withheldMessage = "gatehouse: the record of a forwarded statement could not be made durable; its result is withheld and the session is ended"
)

// durableLocked, in the overlapped mode, waits until every event written
// so far is durable: a response may show the effects of any statement
// already forwarded, this session's or another's (a committed row, a
// NOTIFY), and each was written before it was forwarded. On failure the
// buffered responses are thrown away. writeMu must be held.
func (s *session) durableLocked() error {
	if !s.srv.cfg.BeforeResponse {
		return nil
	}
	err := s.cs.Durable()
	if err == nil {
		return nil
	}
	s.log.Error("forwarded statements' events could not be made durable; the responses are withheld and the session ended", "err", err)
	s.out.drop = true
	_ = s.be.Flush()
	s.out.drop = false
	return errWithheld
}

// end sends a FATAL error to the caller and closes the session. A client
// that does not read cannot stall it: the pending write is cut short first.
func (s *session) end(code, msg string) {
	s.endMu.Lock()
	defer s.endMu.Unlock()
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
			s.closeNow()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = s.client.SetWriteDeadline(deadline)
	if s.durableLocked() != nil {
		code, msg = withheldCode, withheldMessage // the reason may show what ran
	}
	s.be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: msg})
	_ = s.be.Flush()
	s.writeMu.Unlock()
	s.log.Warn("session ended by the gateway", "code", code, "reason", msg)
	s.closeNow()
}

// endWith ends the session with a refusal of the core.
func (s *session) endWith(r *core.Refusal) { s.end(sqlstate(r), r.Message) }

// desync ends a session whose responses no longer match its requests. It
// should never happen; if it does, nothing after it can be trusted.
func (s *session) desync(what string) {
	s.log.Error("response stream out of step with requests", "detail", what)
	s.end("XX000", "gatehouse: the session's responses no longer match its requests ("+what+"); the session is ended")
}

func (s *session) push(sl *slot) bool { return s.q.push(sl) }

// forgetNames makes a Query or Execute whose SQL drops prepared
// statements or portals (DEALLOCATE, CLOSE, DISCARD) drop them from the
// gateway's record too, in order with the requests around it. So does SQL
// that defines one (PREPARE, DECLARE): it succeeds only where the upstream
// has no such name, and the gateway's record may still have it (a portal
// the end of a transaction dropped, which the gateway does not always
// see: COMMIT; BEGIN in one query, ROLLBACK TO SAVEPOINT).
func (s *session) forgetNames(sl *slot, req *celpolicy.PostgresRequest) {
	if req == nil {
		return
	}
	var muts []*mutation
	for _, kind := range []byte{'S', 'P'} {
		for _, st := range req.Statements {
			if st.Command == "DISCARD" || kind == 'S' && (st.Command == "DEALLOCATE" || st.Command == "PREPARE") ||
				kind == 'P' && (st.Command == "CLOSE" || st.Command == "DECLARE CURSOR") {
				muts = append(muts, s.names.forgetAll(kind, s.batch)...)
				break
			}
		}
	}
	if len(muts) > 0 {
		n := s.names
		sl.forget = func() {
			for _, m := range muts {
				n.settle(m, true)
			}
		}
	}
}

// expectCopy marks a Query or Execute about to be forwarded as a COPY FROM
// STDIN when its request holds one: the request side then waits for the
// upstream's answer before it forwards anything else (waitCopy).
func (s *session) expectCopy(sl *slot, req *celpolicy.PostgresRequest) {
	if req != nil && slices.ContainsFunc(req.Statements, sqlfacts.CopiesFromClient) {
		sl.copyIn = make(chan struct{})
		s.awaitCopy = sl
	}
}

// waitCopy waits for the upstream to say whether the COPY FROM STDIN just
// forwarded started. PostgreSQL ignores a Sync or Flush it reads in
// copy-in mode, and answers one it reads otherwise, and which one it is
// depends on the data (a bad row ends copy-in mode early). So the gateway
// never forwards a Sync while the upstream may be in copy-in mode: not
// before it knows whether the copy started, and not while the caller sends
// the data (copyStream drops them). Every Sync it forwards is then
// answered, and the queue stays in step.
func (s *session) waitCopy(ctx context.Context) error {
	sl := s.awaitCopy
	s.awaitCopy = nil
	// PostgreSQL flushes a CopyInResponse and an error at once, but not
	// the rows and CommandComplete of an Execute that turned out not to be
	// a COPY (the gateway's record of a name can be behind SQL that changed
	// it). A protocol Flush makes it send them; in copy-in mode it is
	// ignored.
	s.fe.Send(&pgproto3.Flush{})
	if err := s.fe.Flush(); err != nil {
		return err
	}
	select {
	case <-sl.copyIn:
	case <-ctx.Done():
		return ctx.Err()
	}
	if sl.copyState.Load() == copyStarted {
		s.copyStream = sl
	}
	return nil
}

// check runs before every statement (see core.Session.Check): false means
// the session has been ended.
func (s *session) check(ctx context.Context) bool {
	if r := s.cs.Check(ctx); r != nil {
		s.endWith(r)
		return false
	}
	return true
}

// record makes a statement's event durable before it is forwarded or
// refused. The event holds the SQL text, its facts and the decision; never
// the token, a credential, or any result value.
func (s *session) record(kind, sql string, req celpolicy.Request, d celpolicy.Decision) (int, error) {
	return s.cs.RecordRequest(requested(kind, sql, req, d))
}

// requested is a statement as the recording keeps it: with the secrets
// its text carries (a role's password, a connection string) redacted, in
// the text, its statements' facts and its mask plan
// (sqlfacts.RedactSecrets). The request judged and forwarded is not
// changed: a copy is recorded when anything was redacted.
func requested(kind, sql string, req celpolicy.Request, d celpolicy.Decision) core.Requested {
	r := core.Requested{Kind: kind, Text: sqlfacts.RedactSecrets(sql), Request: req, Decision: d}
	pr, ok := req.(*celpolicy.PostgresRequest)
	if !ok || pr == nil {
		return r
	}
	var c *celpolicy.PostgresRequest
	own := func() *celpolicy.PostgresRequest {
		if c == nil {
			cp := *pr
			cp.Statements = slices.Clone(pr.Statements)
			if pr.Masking != nil {
				plan := *pr.Masking
				plan.Statements = slices.Clone(plan.Statements)
				cp.Masking = &plan
			}
			c = &cp
		}
		return c
	}
	for i, st := range pr.Statements {
		if text := sqlfacts.RedactSecrets(st.Text); text != st.Text {
			own().Statements[i].Text = text
		}
	}
	if pr.Masking != nil {
		for i, st := range pr.Masking.Statements {
			if text := sqlfacts.RedactSecrets(st.Text); text != st.Text {
				own().Masking.Statements[i].Text = text
			}
		}
	}
	if c != nil {
		r.Request = c
	}
	return r
}

// recordForward records an allowed statement about to be forwarded. By
// default its event is durable when it returns; in the overlapped mode
// (Config.BeforeResponse) it is written, and its fdatasync runs meanwhile:
// send holds every response until it is durable.
func (s *session) recordForward(kind, sql string, req celpolicy.Request, d celpolicy.Decision) (int, error) {
	if !s.srv.cfg.BeforeResponse || d.Effect != bundle.EffectAllow {
		return s.record(kind, sql, req, d)
	}
	// The sync starts now; send's barrier waits for it (and for every
	// other event written) before any response reaches the caller.
	ref, _, err := s.cs.RecordRequestAsync(requested(kind, sql, req, d))
	return ref, err
}

// unrecorded is the error a statement gets when its event cannot be made
// durable.
func (s *session) unrecorded() *pgproto3.ErrorResponse { return errorOf(s.cs.Unrecorded()) }

// denial is the error a statement the policy did not allow gets.
func (s *session) denial(d celpolicy.Decision, req celpolicy.Request) *pgproto3.ErrorResponse {
	return errorOf(s.cs.Denial(d, req))
}

// recordOutcome records how a forwarded statement ended. It runs after the
// fact, so a failure can only be logged and counted.
func (s *session) recordOutcome(h *slot, rows int64, errMsg string) {
	if h == nil {
		return
	}
	s.cs.NoteOutcome(h.recRef, core.Outcome{Duration: time.Since(h.start), Rows: rows, Error: errMsg})
}

// recordMasked records which columns a result had masked, never values.
func (s *session) recordMasked(ref int, d *resultDesc) {
	if d == nil {
		return
	}
	var cols []string
	for _, c := range d.cols {
		if c.method != "" {
			cols = append(cols, c.target+"="+c.method)
		}
	}
	for _, det := range d.detectors {
		cols = append(cols, det.Target.String()+"="+det.Method)
	}
	s.cs.NoteMasked(ref, cols)
}
