package recorder

// The events a recording is made of: the format, the event types, and the
// Event every line holds (encode.go writes it).

import (
	"encoding/json"
	"fmt"
	"time"
)

// FormatVersion is the recording format this build writes, in the
// session_start event's "format". Format 1 (no "format" field) was written
// before the protocol seam: PostgreSQL only, with "statement" events that
// held the SQL and its facts, and "masked" events with "columns". Format 2
// has the neutral events of every protocol. Format 3 has format 2's events
// and says that the recording is named in its directory's ledger (so a
// directory of format 3 recordings without a ledger has lost it), and its
// seal may be of kind "crashed". All verify the same way (the chain and
// the seal do not depend on the fields), and readers take any.
const FormatVersion = 3

// SealCrashed is the Kind of a seal made at the next start for a
// recording whose session never ended (the gateway crashed, was killed,
// or lost power). It signs a message of its own, so that it cannot be
// passed off as an ordinary seal, and its Ref is the last event's index.
const SealCrashed = "crashed"

// Event types.
const (
	TypeStart = "session_start"
	// TypeRequest is a request the session made (a statement, a command,
	// an API call) with its decision, durable before it is forwarded.
	TypeRequest = "request"
	// TypeStatement is format 1's TypeRequest (PostgreSQL statements).
	TypeStatement = "statement"
	TypeResult    = "result"
	TypeMasked    = "masked"
	TypeApproval  = "approval"
	// TypeOutput holds terminal or exec output as asciicast frames.
	TypeOutput = "output"
	// TypeRecheck says the session was judged again under a new bundle
	// revision, and who it is under that revision.
	TypeRecheck = "recheck"
	TypeEnd     = "session_end"
	TypeSeal    = "seal"
	// TypeGap marks where events could not be written (a full disk): the
	// recording says so rather than closing over the hole, and Verify
	// reports it as incomplete.
	TypeGap = "gap"
)

// TypeServer is a message the target sent outside any request (a
// PostgreSQL notification: Kind "notification", Channel, Text the payload
// as the caller received it; or a notice: Kind "notice").
const TypeServer = "server"

// IsRequest reports whether an event type is a request, in either format.
func IsRequest(typ string) bool { return typ == TypeRequest || typ == TypeStatement }

// Event is one line of a recording. Fields not used by a type are omitted.
//
// Every event has the chain (Seq, Time, Type, Prev). The session's header
// (session, protocol, identity, resource, bundle revision) is written once,
// in session_start, and again in a recheck when a new bundle revision
// judges the session; a recording is one session, so every event in it
// belongs to the header before it.
type Event struct {
	Seq  int       `json:"seq"`
	Time time.Time `json:"time"`
	Type string    `json:"type"`
	// Prev is the hex SHA-256 of the previous line ("" for the first).
	Prev string `json:"prev"`

	// session_start (and recheck: Identity to Groups, BundleRevision,
	// BundleDigest)
	Format   int      `json:"format,omitempty"`
	Session  string   `json:"session,omitempty"`
	Protocol string   `json:"protocol,omitempty"`
	Identity string   `json:"identity,omitempty"`
	Subject  string   `json:"subject,omitempty"`
	Issuer   string   `json:"issuer,omitempty"`
	Groups   []string `json:"groups,omitempty"`
	// TokenGroups is the token's own groups claim (a JSON list, before
	// the provider's prefix and the identity's extra groups), so that
	// gatehouse impact can resolve the caller again under another policy.
	TokenGroups json.RawMessage `json:"token_groups,omitempty"`
	// Provider names the identity provider that vouched for the token, and
	// Claims are the token's claims that identities' match predicates
	// name (a JSON object): with Subject, Issuer and TokenGroups, what
	// resolving the caller again needs.
	Provider       string          `json:"provider,omitempty"`
	Claims         json.RawMessage `json:"claims,omitempty"`
	Resource       string          `json:"resource,omitempty"`
	BundleRevision uint64          `json:"bundle_revision,omitempty"`
	BundleDigest   string          `json:"bundle_digest,omitempty"`
	ClientAddr     string          `json:"client_addr,omitempty"`

	// request: how it came (Kind: query, parse, execute, function_call,
	// exec, shell, api; for a seal, SealCrashed or empty), what it says for people (Text), the protocol's
	// request as policy saw it (Request: celpolicy.Request JSON) and the
	// decision.
	Kind     string          `json:"kind,omitempty"`
	Text     string          `json:"text,omitempty"`
	Request  json.RawMessage `json:"request,omitempty"`
	Decision json.RawMessage `json:"decision,omitempty"`
	Effect   string          `json:"effect,omitempty"`
	Rules    []string        `json:"rules,omitempty"`

	// Marshalled says that Request and Decision are json.Marshal's own
	// output, already in the form the encoder writes raw JSON as it is
	// (compact, valid, HTML characters escaped), so it need not check
	// them again: on a gateway's busiest path that check was a twentieth
	// of its CPU time. It is never written.
	Marshalled bool `json:"-"`

	// Format 1's request fields: the SQL and its facts.
	SQL   string          `json:"sql,omitempty"`
	Facts json.RawMessage `json:"facts,omitempty"`

	// result, masked, approval, output: the request event they belong to;
	// a crashed seal: the last event before it.
	Ref int `json:"ref,omitempty"`
	// result: how a forwarded request ended.
	DurationMS float64 `json:"duration_ms,omitempty"`
	Rows       int64   `json:"rows,omitempty"`
	// Status is an HTTP status; ExitCode an exec's exit status; Bytes
	// what a stream (a forward, a file transfer) carried.
	Status   int    `json:"status,omitempty"`
	ExitCode *int   `json:"exit_code,omitempty"`
	Bytes    int64  `json:"bytes,omitempty"`
	Error    string `json:"error,omitempty"`

	// masked: which fields were masked and how ("schema.table.column=redact"),
	// never their values. Format 1 called them Columns.
	Fields  []string `json:"fields,omitempty"`
	Columns []string `json:"columns,omitempty"`

	// output: asciicast v2 frames.
	Frames []Frame `json:"frames,omitempty"`

	// server: the notification's channel.
	Channel string `json:"channel,omitempty"`

	// request (review) and approval: the approval request, how it was
	// settled (approved, denied, expired, cancelled, pending when the wait
	// ran out, or used for an approval given earlier) and the votes.
	Approval string `json:"approval,omitempty"`
	State    string `json:"state,omitempty"`
	Votes    []Vote `json:"votes,omitempty"`
	// ApprovalHash binds the approval to the request and its Params
	// (bound parameters, as approvers read them).
	ApprovalHash string   `json:"approval_hash,omitempty"`
	Params       []string `json:"params,omitempty"`

	// session_end, gap
	Reason string `json:"reason,omitempty"`
	// gap: how many events are missing here.
	Lost int `json:"lost,omitempty"`

	// seal
	KeyID     string `json:"key_id,omitempty"`
	Signature string `json:"signature,omitempty"`
}

// Display is what a request event says for people, in either format.
func (ev *Event) Display() string {
	if ev.Text != "" {
		return ev.Text
	}
	return ev.SQL
}

// MaskedFields are a masked event's fields, in either format.
func (ev *Event) MaskedFields() []string {
	if len(ev.Fields) > 0 {
		return ev.Fields
	}
	return ev.Columns
}

// Frame is one asciicast v2 event: seconds since the session started, the
// stream ("o" output, "i" input, "m" a marker: what the gateway notes, such
// as bytes beyond the recording limit) and the data. It is written as the
// asciicast array [t, "o", "data"].
type Frame struct {
	T      float64
	Stream string
	Data   string
}

// MarshalJSON writes the asciicast array.
func (f Frame) MarshalJSON() ([]byte, error) {
	return json.Marshal([]any{f.T, f.Stream, f.Data})
}

// UnmarshalJSON reads the asciicast array.
func (f *Frame) UnmarshalJSON(b []byte) error {
	var a []json.RawMessage
	if err := json.Unmarshal(b, &a); err != nil {
		return err
	}
	if len(a) != 3 {
		return fmt.Errorf("an asciicast frame has 3 elements, not %d", len(a))
	}
	if err := json.Unmarshal(a[0], &f.T); err != nil {
		return err
	}
	if err := json.Unmarshal(a[1], &f.Stream); err != nil {
		return err
	}
	return json.Unmarshal(a[2], &f.Data)
}

// Vote is an approver's decision on an approval request.
type Vote struct {
	Approver string    `json:"approver"`
	Issuer   string    `json:"issuer"`
	Subject  string    `json:"subject"`
	Decision string    `json:"decision"`
	Comment  string    `json:"comment,omitempty"`
	Time     time.Time `json:"time"`
}
