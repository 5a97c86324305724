package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
)

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
			if errors.Is(err, errWithheld) {
				s.end(withheldCode, withheldMessage)
				return
			}
			s.closeAll()
			return
		}
	}
}

// is reports whether the request a response answers is of one of kinds.
func is(h *slot, kinds ...slotKind) bool {
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

// response handles one upstream message: what to send the caller (nil for
// nothing), whether to flush, and false when the session must end.
func (s *session) response(msg pgproto3.BackendMessage) (pgproto3.BackendMessage, bool, bool) {
	h := s.q.head(false)
	switch m := msg.(type) {
	case *pgproto3.ParseComplete:
		return s.completed(msg, h, slotParse)
	case *pgproto3.BindComplete:
		return s.completed(msg, h, slotBind)
	case *pgproto3.CloseComplete:
		return s.completed(msg, h, slotClose)
	case *pgproto3.ParameterDescription:
		return s.parameterDescription(m, h)
	case *pgproto3.RowDescription:
		return s.rowDescription(m, h)
	case *pgproto3.NoData:
		if !is(h, slotDescribe) {
			return s.outOfStep("NoData without a Describe")
		}
		s.q.pop()
		if h.hidden {
			s.laidOut(h, &resultDesc{})
			return nil, false, true
		}
	case *pgproto3.DataRow:
		return s.dataRow(m, h)
	case *pgproto3.CommandComplete, *pgproto3.EmptyQueryResponse, *pgproto3.PortalSuspended:
		return s.commandEnd(msg, h)
	case *pgproto3.CopyInResponse:
		// Only a statement the gateway forwarded as a COPY FROM STDIN,
		// and waits on, may start one, and only once.
		if !is(h, slotQuery, slotExecute) || !h.copyBegin() {
			return s.outOfStep("CopyInResponse without a COPY FROM STDIN")
		}
	case *pgproto3.CopyOutResponse, *pgproto3.CopyData, *pgproto3.CopyDone:
		if !is(h, slotQuery, slotExecute) {
			return s.outOfStep(fmt.Sprintf("%T without a query", msg))
		}
	case *pgproto3.CopyBothResponse:
		return s.outOfStep("CopyBothResponse")
	case *pgproto3.FunctionCallResponse:
		if !is(h, slotFunctionCall) {
			return s.outOfStep("FunctionCallResponse without a call")
		}
	case *pgproto3.ErrorResponse:
		return s.errorResponse(m, h)
	case *pgproto3.ReadyForQuery:
		return s.readyForQuery(m, h)
	case *pgproto3.ParameterStatus, *pgproto3.NoticeResponse, *pgproto3.NotificationResponse:
		return s.asynchronous(msg, h)
	default:
		return s.outOfStep(fmt.Sprintf("unexpected %T", msg))
	}
	return msg, false, true
}

// outOfStep ends a session whose responses no longer fit its requests.
func (s *session) outOfStep(what string) (pgproto3.BackendMessage, bool, bool) {
	s.desync(what)
	return nil, false, false
}

// completed settles a Parse, Bind or Close: the name change it makes is
// real now.
func (s *session) completed(msg pgproto3.BackendMessage, h *slot, want slotKind) (pgproto3.BackendMessage, bool, bool) {
	if !is(h, want) {
		return s.outOfStep(fmt.Sprintf("%T without its request", msg))
	}
	s.q.pop()
	s.names.settle(h.mut, true)
	return msg, false, true
}

func (s *session) parameterDescription(m *pgproto3.ParameterDescription, h *slot) (pgproto3.BackendMessage, bool, bool) {
	if !is(h, slotDescribe) {
		return s.outOfStep("ParameterDescription without a Describe")
	}
	if h.stmt != nil {
		oids := append([]uint32(nil), m.ParameterOIDs...)
		h.stmt.paramOIDs.Store(&oids)
	}
	if h.hidden {
		return nil, false, true
	}
	return m, false, true
}

// laidOut hands a hidden Describe's answer to whoever needs it: the
// Execute sent after it, whose rows it lays out (and the record says which
// columns are masked, before any row goes out), or the request side,
// waiting.
func (s *session) laidOut(h *slot, d *resultDesc) {
	if h.layout != nil {
		h.layout.desc = d
		s.recordMasked(h.layout.recRef, d)
		return
	}
	h.resolve(d)
}

func (s *session) rowDescription(m *pgproto3.RowDescription, h *slot) (pgproto3.BackendMessage, bool, bool) {
	switch {
	case is(h, slotDescribe):
		s.q.pop()
		if h.hidden {
			s.laidOut(h, s.describe(m, h.masking, 0))
			return nil, false, true
		}
	case is(h, slotQuery):
		if h.masking != nil {
			h.desc = s.describe(m, h.masking, h.index)
			s.recordMasked(h.recRef, h.desc)
		}
	default:
		return s.outOfStep("RowDescription without its request")
	}
	return m, false, true
}

func (s *session) dataRow(m *pgproto3.DataRow, h *slot) (pgproto3.BackendMessage, bool, bool) {
	if !is(h, slotQuery, slotExecute) {
		return s.outOfStep("DataRow without a query")
	}
	if h.masking == nil {
		return m, false, true
	}
	if h.desc == nil {
		return s.outOfStep("rows to mask without their layout")
	}
	if len(m.Values) != len(h.desc.cols) {
		// Not the layout described (rows after NoData, say): a column
		// past the layout would go out unmasked.
		return s.outOfStep(fmt.Sprintf("a row of %d columns to mask with a layout of %d", len(m.Values), len(h.desc.cols)))
	}
	return h.desc.mask(m), false, true
}

func (s *session) commandEnd(msg pgproto3.BackendMessage, h *slot) (pgproto3.BackendMessage, bool, bool) {
	if cc, ok := msg.(*pgproto3.CommandComplete); ok && h != nil {
		s.recordOutcome(h, rowsOf(cc.CommandTag), "")
		if h.index < len(h.effects) {
			// The statement succeeded: what it defined or created is
			// real now.
			s.cat.apply(h.effects[h.index])
		}
	}
	switch {
	case is(h, slotExecute):
		s.q.pop()
	case is(h, slotQuery):
		// A multi-statement query: the next result is the next
		// statement's, with its own layout.
		h.desc = nil
		h.index++
	default:
		return s.outOfStep(fmt.Sprintf("%T without a query", msg))
	}
	return msg, false, true
}

// errorResponse passes an error on (withheld when masks apply: it may
// quote a masked value), or the gateway's denial in place of the
// placeholder's, and follows the upstream into skipping to Sync.
func (s *session) errorResponse(m *pgproto3.ErrorResponse, h *slot) (pgproto3.BackendMessage, bool, bool) {
	var out pgproto3.BackendMessage = m
	withhold := s.cs.Masked() || (h != nil && h.masking.withholdsErrors())
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
	case is(h, slotQuery, slotFunctionCall):
		if h.deny != nil {
			out = h.deny
		}
		// The rest of a simple query is not run: a COPY in it is over.
		h.copyEnd()
	case s.q.isSkipping():
	case is(h, slotSync):
		// An error at Sync itself: the implicit transaction failed to
		// commit (a deferred constraint, a serialization failure). Only
		// ReadyForQuery follows, and it pops the Sync; nothing is
		// skipped (the next batch's requests are answered as usual).
	default:
		// Extended protocol: the failed request gets no more responses,
		// and the upstream skips every request up to Sync. The error goes
		// to the caller now, as the upstream sends it, not when Sync
		// comes.
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
	return out, false, true
}

func (s *session) readyForQuery(m *pgproto3.ReadyForQuery, h *slot) (pgproto3.BackendMessage, bool, bool) {
	if s.q.isSkipping() {
		s.q.endSkip(s.names)
	} else {
		if !is(h, slotSync, slotQuery, slotFunctionCall) {
			return s.outOfStep("ReadyForQuery without a Sync or query")
		}
		s.q.pop()
	}
	s.txStatus.Store(uint32(m.TxStatus))
	if m.TxStatus == 'I' {
		s.names.endTransaction()
		if s.cat != nil && s.cat.endTransaction() {
			// What the catalog was asked while the transaction's DDL was
			// uncommitted is stale now that it has ended.
			s.srv.catalog.invalidate(s.cat.resource)
		}
	}
	return m, true, true
}

// asynchronous handles what the upstream may send at any time. A
// notification reaches the caller only while the session may still exist
// (checked now: a session whose token expired, or that a new bundle
// revoked, gets none), and is recorded as the caller received it.
func (s *session) asynchronous(msg pgproto3.BackendMessage, h *slot) (pgproto3.BackendMessage, bool, bool) {
	switch m := msg.(type) {
	case *pgproto3.ParameterStatus:
		if bad := unsafeParameter(m); bad != "" {
			s.end("XX000", "gatehouse: session ended: "+bad)
			return nil, false, false
		}
	case *pgproto3.NoticeResponse:
		out := m
		if s.cs.Masked() {
			out = scrubNotice(m)
		}
		if h == nil {
			// Outside any statement: the server said it on its own.
			s.cs.Note(recorder.Event{Type: recorder.TypeServer, Kind: "notice", Text: out.Severity + ": " + out.Message})
		}
		return out, h == nil, true
	case *pgproto3.NotificationResponse:
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		r := s.cs.Check(ctx)
		cancel()
		if r != nil {
			s.cs.Terminate(r)
			return nil, false, false
		}
		out := m
		if s.cs.Masked() && m.Payload != "" {
			out = &pgproto3.NotificationResponse{PID: m.PID, Channel: m.Channel, Payload: "(withheld by gatehouse: masks apply)"}
		}
		s.cs.Note(recorder.Event{Type: recorder.TypeServer, Kind: "notification", Channel: out.Channel, Text: out.Payload})
		// Flush at once: a listening client is waiting for it.
		return out, true, true
	}
	return msg, false, true
}

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
