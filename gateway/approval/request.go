// Package approval holds risky requests for human approvers. A review
// decision opens a request bound to the caller, the resource and a hash of
// the exact request; approvers in the rule's groups approve or deny it
// through the admin API; the held request runs once it is approved, or a
// retry of the same request does.
//
// Requests are kept by a Store. The file store (filestore.go) keeps one
// JSON file per request in the data directory, written durably before
// anything acts on it, for one gateway. The PostgreSQL store (pgstore.go)
// keeps them in a database that several gateway replicas share. Every
// store passes the conformance suite in approvaltest.
//
// Nothing here knows a wire protocol: a request carries a Subject (the
// text approvers read, its canonical form and its parameters), and the
// protocol that held it supplies the hash that binds it.
package approval

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// FormatVersion is the request format this build writes. Format 1 (files
// without a "format" field, written before the protocol seam) had the SQL,
// its parsed form and the parameters at the top level; it is read and
// converted on load.
const FormatVersion = 2

// State is where a request is in its life.
type State string

// Request states. Every state but Pending is settled.
const (
	Pending   State = "pending"
	Approved  State = "approved"
	Denied    State = "denied"
	Expired   State = "expired"
	Cancelled State = "cancelled"
)

// Errors of the store's methods. Each error wraps one, so the admin API
// can map them to status codes.
var (
	ErrNotFound     = errors.New("no such approval request")
	ErrSettled      = errors.New("the approval request is already settled")
	ErrSelfApproval = errors.New("requesters cannot approve or deny their own requests")
	ErrNotApprover  = errors.New("not in an approver group of this request")
	ErrAlreadyVoted = errors.New("already voted on this request")
	ErrNotUsable    = errors.New("the approval cannot be used")
	ErrTooMany      = errors.New("too many pending approval requests")
	ErrIncomplete   = errors.New("a request needs approver rules and an expiry in the future")
)

// MaxPendingPerRequester bounds the open requests of one caller, so that a
// caller cannot flood approvers (and their Slack) or the store.
const MaxPendingPerRequester = 20

// Retention is how long settled requests are kept.
const Retention = 30 * 24 * time.Hour

// Principal is a caller or an approver, as their verified token and the
// bundle's identities say.
type Principal struct {
	// Name is the bundle identity the token resolved to ("" for none).
	Name    string   `json:"name,omitempty"`
	Issuer  string   `json:"issuer"`
	Subject string   `json:"subject"`
	Groups  []string `json:"groups,omitempty"`
}

// Key identifies a principal across tokens: issuer and subject.
func (p Principal) Key() string { return p.Issuer + "\x00" + p.Subject }

// String is how people see a principal.
func (p Principal) String() string {
	if p.Name != "" && p.Name != p.Subject {
		return fmt.Sprintf("%s (subject %s)", p.Name, p.Subject)
	}
	return p.Subject
}

// Same reports whether two principals are one identity for self-approval:
// the same subject of the same issuer, or the same bundle identity (the pods
// of one service share an identity, not a subject, and must not approve
// each other). Votes are counted by Key: distinct people.
func (p Principal) Same(q Principal) bool {
	return p.Key() == q.Key() || (p.Name != "" && p.Name == q.Name)
}

// Need is one review rule's approver spec, with the approvals it has.
type Need struct {
	Rule   string   `json:"rule"`
	Reason string   `json:"reason"`
	Groups []string `json:"groups"`
	Count  int      `json:"count"`
	// Approvers are the keys of the distinct approvers counted so far.
	Approvers []string `json:"approvers,omitempty"`
}

// Eligible reports whether p is in one of the need's groups.
func (n *Need) Eligible(p Principal) bool {
	for _, g := range p.Groups {
		if slices.Contains(n.Groups, g) {
			return true
		}
	}
	return false
}

// Vote is one approver's decision.
type Vote struct {
	Approver Principal `json:"approver"`
	// Decision is "approve" or "deny".
	Decision string    `json:"decision"`
	Comment  string    `json:"comment,omitempty"`
	Time     time.Time `json:"time"`
}

// Subject is what approvers are shown of a held request. The hash binds
// the request itself; this is how people read it.
type Subject struct {
	// Text is the request as the caller sent it: SQL, a command line, an
	// HTTP method and path.
	Text string `json:"text"`
	// Canonical is the request as the target will read it, printed back
	// (for SQL, the parse tree without comments or layout). Empty when the
	// text is already that.
	Canonical string `json:"canonical,omitempty"`
	// Params are bound parameters, as approvers read them.
	Params []string `json:"params,omitempty"`
}

// Shown is the form approvers should read first: the canonical one when
// there is one.
func (s Subject) Shown() string {
	if s.Canonical != "" {
		return s.Canonical
	}
	return s.Text
}

// Request is one approval request.
type Request struct {
	// Format is FormatVersion for requests this build writes.
	Format int    `json:"format"`
	ID     string `json:"id"`
	State  State  `json:"state"`
	// Requester, Resource and Hash bind the request: only the same
	// request by the same caller on the same resource is released.
	Requester Principal `json:"requester"`
	Resource  string    `json:"resource"`
	Hash      string    `json:"hash"`
	// Session is the recording of the session that asked.
	Session string `json:"session,omitempty"`
	// Protocol is the wire protocol that held it (postgres, ssh,
	// kubernetes); Kind how the request came ("query", "execute",
	// "exec", "api").
	Protocol string  `json:"protocol"`
	Kind     string  `json:"kind"`
	Subject  Subject `json:"subject"`
	Needs    []Need  `json:"needs"`
	// Hold: the request waits in its session, for up to Wait.
	Hold     bool          `json:"hold"`
	Wait     time.Duration `json:"wait"`
	ValidFor time.Duration `json:"valid_for"`
	Reusable bool          `json:"reusable,omitempty"`
	// Webhooks are notified of the request's events (references only).
	Webhooks       []bundle.Webhook `json:"webhooks,omitempty"`
	BundleRevision uint64           `json:"bundle_revision"`
	CreatedAt      time.Time        `json:"created_at"`
	// ExpiresAt is when an undecided request expires.
	ExpiresAt time.Time `json:"expires_at"`
	SettledAt time.Time `json:"settled_at,omitzero"`
	// ValidUntil is when an approval stops releasing the request.
	ValidUntil time.Time `json:"valid_until,omitzero"`
	Uses       int       `json:"uses,omitempty"`
	Votes      []Vote    `json:"votes,omitempty"`
	// Outcome says why it settled, for callers and approvers.
	Outcome string `json:"outcome,omitempty"`
}

// UnmarshalJSON reads both formats: a format 1 request (PostgreSQL only,
// with sql, parsed and params at the top level) becomes a postgres request
// whose subject holds them.
func (r *Request) UnmarshalJSON(b []byte) error {
	type plain Request
	var aux struct {
		plain
		SQL    string   `json:"sql"`
		Parsed string   `json:"parsed"`
		Params []string `json:"params"`
	}
	if err := json.Unmarshal(b, &aux); err != nil {
		return err
	}
	*r = Request(aux.plain)
	if r.Format < 2 && r.Subject.Text == "" && aux.SQL != "" {
		r.Format = 1
		r.Protocol = bundle.KindPostgres
		r.Subject = Subject{Text: aux.SQL, Canonical: aux.Parsed, Params: aux.Params}
	}
	return nil
}

// Public is the request as approvers and webhooks see it: without the
// webhooks' addresses (a Slack webhook's URL is a secret).
func (r Request) Public() Request {
	r.Webhooks = nil
	return r
}

// Settled reports whether the request has left Pending.
func (r *Request) Settled() bool { return r.State != Pending }

// Groups are every approver group of the request.
func (r *Request) Groups() []string {
	var gs []string
	for _, n := range r.Needs {
		gs = append(gs, n.Groups...)
	}
	slices.Sort(gs)
	return slices.Compact(gs)
}

// Rules names the review rules the request answers to.
func (r *Request) Rules() []string {
	out := make([]string, len(r.Needs))
	for i, n := range r.Needs {
		out[i] = n.Rule
	}
	return out
}

// Eligible reports whether p may vote on the request (ignoring whether p is
// the requester).
func (r *Request) Eligible(p Principal) bool {
	for i := range r.Needs {
		if r.Needs[i].Eligible(p) {
			return true
		}
	}
	return false
}

// Binds reports whether r is a request with this binding: the same hash,
// by the same caller, on the same resource.
func (r *Request) Binds(hash string, requester Principal, resource string) bool {
	return r.Hash == hash && r.Requester.Key() == requester.Key() && r.Resource == resource
}

// Covers reports whether approvals given for the request's needs satisfy
// needs (a later policy's): every rule needed now was needed then, by no
// wider approver groups and no fewer approvers. A policy tightened since
// the approval was given asks anew.
func (r *Request) Covers(needs []Need) bool {
	for _, cur := range needs {
		ok := false
		for _, n := range r.Needs {
			if n.Rule != cur.Rule || n.Count < cur.Count {
				continue
			}
			narrower := true
			for _, g := range n.Groups {
				narrower = narrower && slices.Contains(cur.Groups, g)
			}
			if narrower {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// Usable reports whether an approved request may release one more request
// at now.
func (r *Request) Usable(now time.Time) bool {
	return r.State == Approved && now.Before(r.ValidUntil) && (r.Reusable || r.Uses == 0)
}

// Clone is a deep copy.
func (r *Request) Clone() Request {
	c := *r
	c.Subject.Params = slices.Clone(r.Subject.Params)
	c.Needs = make([]Need, len(r.Needs))
	for i, n := range r.Needs {
		n.Groups = slices.Clone(n.Groups)
		n.Approvers = slices.Clone(n.Approvers)
		c.Needs[i] = n
	}
	c.Votes = slices.Clone(r.Votes)
	c.Webhooks = slices.Clone(r.Webhooks)
	return c
}
