package session

import "github.com/gatehouse-dev/gatehouse/celpolicy"

// RefusalCode says why the core refused something. Each protocol renders
// it its own way: a SQLSTATE, an exit status with a line on stderr, an
// HTTP status with a Kubernetes Status.
type RefusalCode int

// Refusal codes.
const (
	// NotReady: no policy bundle is loaded yet.
	NotReady RefusalCode = iota + 1
	// UnknownResource: the active bundle has no resource of that name and
	// kind.
	UnknownResource
	// TokenRejected: the token did not verify, or the caller did not
	// resolve to an identity (now, or under a new bundle revision).
	TokenRejected
	// TokenExpired: the session's token has expired.
	TokenExpired
	// Denied: the policy denied the request (or the connection).
	Denied
	// Revoked: a new bundle revision no longer allows the session.
	Revoked
	// Unrecorded: the recording cannot be written, so nothing is done.
	Unrecorded
	// Pending: the request needs approval and is not held (hold = false):
	// the caller retries it once approved.
	Pending
	// ApprovalDenied: approvers denied the request, it expired, the wait
	// ran out, or an approval given cannot release it.
	ApprovalDenied
	// Cancelled: the caller withdrew a held request.
	Cancelled
	// TooMany: a limit was reached (pending approvals of one caller).
	TooMany
	// Unavailable: state the decision needs (approvals) cannot be read or
	// written.
	Unavailable
	// Idle: the session was idle longer than its resource allows.
	Idle
	// Limited: a session limit (per identity, per resource, overall) or
	// the authentication failure rate of the caller's address was reached.
	Limited
)

var codeNames = map[RefusalCode]string{
	NotReady: "not_ready", UnknownResource: "unknown_resource", TokenRejected: "token_rejected",
	TokenExpired: "token_expired", Denied: "denied", Revoked: "revoked", Unrecorded: "unrecorded",
	Pending: "pending", ApprovalDenied: "approval_denied", Cancelled: "cancelled", TooMany: "too_many",
	Unavailable: "unavailable", Idle: "idle", Limited: "limited",
}

// String names the code (for logs and metrics).
func (c RefusalCode) String() string {
	if n, ok := codeNames[c]; ok {
		return n
	}
	return "unknown"
}

// Refusal is the core's "no", with what the caller is told. Messages never
// hold a secret: they reach the caller.
type Refusal struct {
	Code RefusalCode
	// Message, Detail and Hint are for the caller: PostgreSQL's three
	// fields of an error; other protocols join them.
	Message, Detail, Hint string
	// Decision is the decision that refused, when a policy decided.
	Decision *celpolicy.Decision
	// Approval is the approval request involved, if any.
	Approval string
}

// Error makes a Refusal usable as an error.
func (r *Refusal) Error() string { return r.Message }

// Text is the message with its detail and hint, for protocols that show
// one block of text (a line on stderr, a Kubernetes Status message).
func (r *Refusal) Text() string {
	s := r.Message
	if r.Detail != "" {
		s += " " + r.Detail
	}
	if r.Hint != "" {
		s += " " + r.Hint
	}
	return s
}

func refuse(code RefusalCode, msg string) *Refusal { return &Refusal{Code: code, Message: msg} }
