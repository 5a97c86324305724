package session

import (
	"time"

	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
)

// Requested is a request as the recording keeps it.
type Requested struct {
	// Kind is how the request came: query, parse, execute, function_call,
	// exec, shell, subsystem, forward, api.
	Kind string
	// Text is the request for people: SQL, a command line, a method and a
	// path. Never a credential.
	Text     string
	Request  celpolicy.Request
	Decision celpolicy.Decision
	// Params are bound parameters, as approvers read them.
	Params []string
	// Approval and Hash name the approval request that holds it, and the
	// binding the hash makes.
	Approval, Hash string
}

// event is the recording event of a request.
func (r *Requested) event() recorder.Event {
	req := marshalRequest(r.Request)
	dec := marshalDecision(&r.Decision)
	return recorder.Event{Type: recorder.TypeRequest, Kind: r.Kind, Text: r.Text, Request: req, Decision: dec, Marshalled: true,
		Effect: string(r.Decision.Effect), Rules: r.Decision.Rules(), Params: r.Params, Approval: r.Approval, ApprovalHash: r.Hash}
}

// RecordRequest makes a request's event durable before the request is
// forwarded or refused, and returns its reference for the events that
// follow (result, masked, output). An error means the request must not be
// acted on: the protocol refuses it with Unrecorded().
func (s *Session) RecordRequest(r Requested) (int, error) { return s.Record(r.event()) }

// RecordRequestAsync writes a request's event and starts making it
// durable without waiting, for the overlapped mode (recorder.durability =
// "before_response"): the protocol forwards the request, and calls
// Durable (or wait) before it passes any response on, ending the session if
// that fails. An error means the event is not written: the request must not be
// acted on. Without a recorder, wait is nil.
func (s *Session) RecordRequestAsync(r Requested) (ref int, wait func() error, err error) {
	if s.rec == nil {
		return 0, nil, nil
	}
	ev := r.event()
	ref, wait, err = s.rec.RecordAsync(ev)
	if err != nil {
		s.log.Error("recording failed; the request is refused", "event", ev.Type, "err", err)
	}
	return ref, wait, err
}

// Durable returns once the event of every statement forwarded so far, by
// any session, is durable (recorder.Session.Barrier): the overlapped mode
// calls it before anything reaches the caller. Without a recorder it
// returns nil.
func (s *Session) Durable() error {
	if s.rec == nil {
		return nil
	}
	return s.rec.Barrier()
}

// Record makes an event durable (write and fdatasync, shared with other
// sessions by group commit). Without a recorder it records nothing.
func (s *Session) Record(ev recorder.Event) (int, error) {
	if s.rec == nil {
		return 0, nil
	}
	seq, err := s.rec.Record(ev)
	if err != nil {
		s.log.Error("recording failed; the request is refused", "event", ev.Type, "err", err)
	}
	return seq, err
}

// Note appends an event about what already happened (a result, the masks
// applied, output) without an fdatasync of its own: the next Record, or
// the session's end, makes it durable. A failure is logged and counted,
// and the recorder writes a gap event in its place once it can write
// again, so the recording says what is missing (audit verify reports it).
func (s *Session) Note(ev recorder.Event) {
	if s.rec == nil {
		return
	}
	if _, err := s.rec.Append(ev); err != nil {
		s.log.Error("recording failed", "event", ev.Type, "err", err)
	}
}

// Outcome is how a forwarded request ended.
type Outcome struct {
	Duration time.Duration
	// Rows (PostgreSQL), Status (HTTP), ExitCode (exec) and Bytes (a
	// stream): whichever apply.
	Rows     int64
	Status   int
	ExitCode *int
	Bytes    int64
	// Error is the target's error, if it failed. It must not quote a
	// masked value: the protocol withholds such messages.
	Error string
}

// NoteOutcome records how the request ref ended.
func (s *Session) NoteOutcome(ref int, o Outcome) {
	if ref == 0 {
		return
	}
	s.Note(recorder.Event{Type: recorder.TypeResult, Ref: ref, Rows: o.Rows, Status: o.Status, ExitCode: o.ExitCode, Bytes: o.Bytes,
		Error: o.Error, DurationMS: float64(o.Duration.Microseconds()) / 1000})
}

// NoteMasked records which fields of request ref's response were masked,
// and how ("public.customers.email=partial"); never their values.
func (s *Session) NoteMasked(ref int, fields []string) {
	if len(fields) > 0 {
		s.Note(recorder.Event{Type: recorder.TypeMasked, Ref: ref, Fields: fields})
	}
}

// NoteOutput records output of request ref (terminal or exec output) as
// asciicast frames.
func (s *Session) NoteOutput(ref int, frames []recorder.Frame) {
	if len(frames) > 0 {
		s.Note(recorder.Event{Type: recorder.TypeOutput, Ref: ref, Frames: frames})
	}
}

// Unrecorded is the refusal of a request whose event cannot be made
// durable: the gateway does not act on what it cannot record.
func (s *Session) Unrecorded() *Refusal {
	return refuse(Unrecorded, "gatehouse: the "+s.noun+" is refused because the session recording cannot be written (the gateway's log has the cause)")
}
