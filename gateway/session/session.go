package session

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/gateway/approval"
	"github.com/gatehouse-dev/gatehouse/gateway/auth"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
)

// Session is one admitted caller's session. It is safe for concurrent use:
// an SSH connection's channels and a Kubernetes caller's requests are
// decided in parallel.
type Session struct {
	core       *Core
	protocol   string
	kind       string
	resource   string
	clientAddr string
	num        uint64
	id         string
	started    time.Time
	guard      func(celpolicy.Request, celpolicy.Decision) celpolicy.Decision
	noun       string
	stats      *Stats
	log        *slog.Logger
	rec        *recorder.Session

	// mu guards what a new bundle revision or a request changes.
	mu       sync.Mutex
	token    *auth.Verified
	rawToken string
	identity celpolicy.Identity
	revision uint64 // the revision the session was last judged against
	requests int64
	denied   int64

	// masked: masks have applied to this caller's requests, so messages
	// from the target (errors, notices) may quote values the masks hide.
	masked atomic.Bool
	// held is the approval a request is held for; holdCancel withdraws it.
	held       atomic.Pointer[string]
	holdCancel atomic.Pointer[chan struct{}]
	closeOnce  sync.Once
	closed     chan struct{}
	endOnce    sync.Once
	// t are the checks that do not wait for a request (push.go).
	t timers
	// limiter holds the session's place under its protocol's limits, as
	// limitKey (the caller as admitted).
	limiter  *limiter
	limitKey string
	// decisions are reusable decisions by request cache key (Judge);
	// epoch is the protocol's (Admission.Epoch). Guarded by mu.
	decisions map[string]cachedDecision
	epoch     func() uint64
}

// ID names the session: its recording's name, or its connection number
// when nothing is recorded.
func (s *Session) ID() string { return s.id }

// Number is the connection number the session was admitted with.
func (s *Session) Number() uint64 { return s.num }

// Resource is the resource the session reaches.
func (s *Session) Resource() string { return s.resource }

// Protocol is the session's wire protocol.
func (s *Session) Protocol() string { return s.protocol }

// Log is the session's logger (session, identity, resource, recording).
func (s *Session) Log() *slog.Logger { return s.log }

// Started is when the session was admitted.
func (s *Session) Started() time.Time { return s.started }

// Identity is the caller as the bundle it was last judged against resolved
// it.
func (s *Session) Identity() celpolicy.Identity {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.identity
}

// Expiry is when the session's token stops being valid (skew included).
func (s *Session) Expiry() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.token.Expiry
}

// Counters are the requests decided and denied so far.
func (s *Session) Counters() celpolicy.Counters {
	s.mu.Lock()
	defer s.mu.Unlock()
	return celpolicy.Counters{Requests: s.requests, Denied: s.denied}
}

// Masked reports whether masks have applied to any of the caller's
// requests: the target's own messages may then quote a masked value.
func (s *Session) Masked() bool { return s.masked.Load() }

// Closed is closed once the protocol has closed the session (Close):
// anything waiting on the caller's behalf gives up.
func (s *Session) Closed() <-chan struct{} { return s.closed }

// Close tells everything waiting for the session (a hold) that it is over.
// The protocol calls it when its connection closes, before End.
func (s *Session) Close() { s.closeOnce.Do(func() { close(s.closed) }) }

// Held is the approval a request of the session is held for now, if any.
func (s *Session) Held() (string, bool) {
	if id := s.held.Load(); id != nil {
		return *id, true
	}
	return "", false
}

// input is a decision's input for req.
func (s *Session) input(req celpolicy.Request) *celpolicy.Input {
	return &celpolicy.Input{
		Identity: s.identity, Resource: s.resource, Request: req, Now: s.core.clock.Now(),
		Session: celpolicy.Session{
			ID: s.id, StartedAt: s.started,
			Counters: celpolicy.Counters{Requests: s.requests, Denied: s.denied},
		},
	}
}

// Check runs before every request: the token must still be valid, and
// after a bundle change the session must still be allowed to exist, judged
// entirely by the new bundle (its identity providers, identities and
// rules). A refusal means the session must end with it.
func (s *Session) Check(ctx context.Context) *Refusal {
	now := s.core.clock.Now()
	s.mu.Lock()
	expiry, revision, raw := s.token.Expiry, s.revision, s.rawToken
	s.mu.Unlock()
	if now.After(expiry) {
		return refuse(TokenExpired, "gatehouse: token expired; reconnect with a fresh token")
	}
	active := s.core.bundles.Current()
	if active.Revision == revision {
		return nil
	}
	vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	vtok, err := active.Verifier.Verify(vctx, raw)
	cancel()
	if err != nil {
		return refuse(TokenRejected, fmt.Sprintf("gatehouse: session ended: bundle revision %d no longer accepts this token: %v", active.Revision, err))
	}
	id, err := active.Policy.ResolveIdentity(vtok.Provider, vtok.Token)
	if err != nil {
		return refuse(TokenRejected, fmt.Sprintf("gatehouse: session ended: bundle revision %d no longer accepts this caller: %v", active.Revision, err))
	}
	if r, ok := active.Payload.Model.Resource(s.resource); !ok || r.Kind != s.kind {
		return refuse(Revoked, fmt.Sprintf("gatehouse: session ended: bundle revision %d no longer has resource %q", active.Revision, s.resource))
	}
	s.mu.Lock()
	s.token, s.identity = vtok, id
	var d celpolicy.Decision
	req, decides := celpolicy.ConnectRequest(s.kind)
	if decides {
		d = active.Policy.Decide(s.input(req))
	}
	s.mu.Unlock()
	if decides && d.Effect != bundle.EffectAllow {
		return &Refusal{Code: Revoked, Decision: &d,
			Message: fmt.Sprintf("gatehouse: session ended: bundle revision %d revokes the connection to %q: %s", active.Revision, s.resource, strings.Join(d.Reasons, "; "))}
	}
	s.mu.Lock()
	previous := s.revision
	if active.Revision > s.revision {
		s.revision = active.Revision
	}
	s.mu.Unlock()
	s.armExpiry() // the token, verified again, may expire at another time
	s.log.Info("session re-checked against a new bundle", "revision", active.Revision, "previous_revision", previous)
	tokenGroups, _ := json.Marshal(active.Policy.TokenGroups(vtok.Provider, vtok.Token))
	claims, _ := json.Marshal(active.Policy.MatchClaims(vtok.Provider, vtok.Token))
	s.Note(recorder.Event{Type: recorder.TypeRecheck, Identity: IdentityName(id), Subject: id.Subject, Issuer: id.Issuer,
		Groups: id.Groups, TokenGroups: tokenGroups, Provider: vtok.Provider, Claims: claims, BundleRevision: active.Revision,
		BundleDigest: active.Digest})
	return nil
}

// Judge decides req with the active bundle and the protocol's guard. It
// counts nothing: use Decide for a request the caller makes.
//
// A request with a cache key (one whose facts are those of every request
// of its shape) is decided once per bundle revision and protocol epoch
// (what the protocol's guard reads changes it: the PostgreSQL catalog)
// when no rule that applies reads the time or the session's counters.
func (s *Session) Judge(req celpolicy.Request) celpolicy.Decision {
	active := s.core.bundles.Current()
	key := ""
	if ck, ok := req.(interface{ CacheKey() string }); ok && active.Policy.Cacheable(s.resource, req.RequestKind()) {
		key = ck.CacheKey()
	}
	if pr, ok := req.(*celpolicy.PostgresRequest); ok && len(pr.Statements) != 1 {
		key = "" // a reused mask plan is given one statement's text (below)
	}
	epoch := uint64(0)
	if key != "" && s.epoch != nil {
		epoch = s.epoch()
	}
	s.mu.Lock()
	if c, ok := s.decisions[key]; ok && key != "" && c.revision == active.Revision && c.epoch == epoch {
		d := c.d.Clone()
		s.mu.Unlock()
		if pr, ok := req.(*celpolicy.PostgresRequest); ok {
			// One statement (above): the plan names this one's text.
			d.Masking = d.Masking.Retext(pr.Statements[0].Text)
			pr.Masking = d.Masking
		}
		if len(d.Masks) > 0 {
			s.masked.Store(true)
		}
		return d
	}
	d := active.Policy.Decide(s.input(req))
	s.mu.Unlock()
	if s.guard != nil {
		d = s.guard(req, d)
	}
	if len(d.Masks) > 0 {
		s.masked.Store(true)
	}
	if key != "" {
		s.mu.Lock()
		if s.decisions == nil || len(s.decisions) >= maxCachedDecisions {
			s.decisions = map[string]cachedDecision{}
		}
		s.decisions[key] = cachedDecision{d: d.Clone(), revision: active.Revision, epoch: epoch}
		s.mu.Unlock()
	}
	return d
}

// maxCachedDecisions bounds a session's decision cache.
const maxCachedDecisions = 512

// cachedDecision is a decision kept for reuse, with what it is valid for.
type cachedDecision struct {
	d        celpolicy.Decision
	revision uint64
	epoch    uint64
}

// Decide judges req and counts it. counted says whether this is a request
// the caller makes (a query, a command, an API call) or a preparation that
// is decided again when it runs: a preparation counts only when it is
// refused. A review decision counts when the approvers have settled it
// (Hold).
func (s *Session) Decide(req celpolicy.Request, counted bool) celpolicy.Decision {
	d := s.Judge(req)
	if d.Effect == bundle.EffectReview {
		return d
	}
	if counted || d.Effect != bundle.EffectAllow {
		s.Tally(d.Effect == bundle.EffectAllow)
	}
	return d
}

// Tally counts a request the protocol settled itself (a review it turned
// into a denial, more rows of an approved portal): allowed or not.
func (s *Session) Tally(allowed bool) {
	s.mu.Lock()
	s.requests++
	if !allowed {
		s.denied++
	}
	s.mu.Unlock()
	if allowed {
		s.stats.Allowed.Add(1)
	} else {
		s.stats.Denied.Add(1)
	}
}

// Denial is the refusal of a decision that did not allow a request: it
// names the rules that refused and their reasons.
func (s *Session) Denial(d celpolicy.Decision, req celpolicy.Request) *Refusal {
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
	s.log.Info("request denied", "rules", rules, "reasons", d.Reasons, "request", req.Describe(), "revision", d.BundleRevision)
	return &Refusal{Code: Denied, Decision: &d, Message: msg,
		Detail: fmt.Sprintf("Decided by bundle revision %d for %s on %q.", d.BundleRevision, IdentityName(s.Identity()), s.resource)}
}

// principal is the caller as approvals know it.
func (s *Session) principal() approval.Principal {
	id := s.Identity()
	return approval.Principal{Name: id.Name, Issuer: id.Issuer, Subject: id.Subject, Groups: id.Groups}
}

// End seals the session's recording and counts it closed. It runs once;
// the protocol calls it when the session is over, with why.
func (s *Session) End(reason string) {
	s.endOnce.Do(func() {
		s.t.mu.Lock()
		s.t.ended = true
		s.stopTimersLocked()
		s.t.mu.Unlock()
		s.core.unregister(s)
		if s.limiter != nil {
			s.limiter.release(s.limitKey, s.resource)
		}
		if r := s.endedReason(); r != "" {
			reason = r
		}
		s.Close()
		if s.rec != nil {
			if err := s.rec.End(reason); err != nil {
				s.log.Error("recording not sealed", "err", err)
			}
		}
		s.stats.Active.Add(-1)
		c := s.Counters()
		s.log.Info("session ended", "reason", reason, "requests", c.Requests, "denied", c.Denied,
			"duration", s.core.clock.Now().Sub(s.started).Round(time.Millisecond))
	})
}
