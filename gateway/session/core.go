// Package session is the enforcement core every protocol shares: one
// caller's session, whatever wire it speaks. It admits a caller (resource,
// token, identity, the connect decision, the recording), checks the session
// before every request (token expiry, a new bundle revision judged in
// full), decides requests with the gateway-wide rules, records them durably
// before they are forwarded, holds them for approvers, and ends the
// session.
//
// A wire package (postgres, ssh, kube) supplies only what is its own: how
// a request is read, how a refusal is rendered, the canonical bytes that
// bind an approval, what approvers are shown, and how the caller hears that
// a request is held. Nothing here imports a wire protocol.
package session

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/gateway/approval"
	"github.com/gatehouse-dev/gatehouse/gateway/auth"
	"github.com/gatehouse-dev/gatehouse/gateway/bundlestore"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/internal/clock"
)

// Core is what every session of one gateway shares: the bundle, the
// recorder, the approval store, the clock, and the counters.
type Core struct {
	bundles   *bundlestore.Store
	rec       *recorder.Recorder
	approvals approval.Store
	clock     clock.Clock
	log       *slog.Logger

	nextID atomic.Uint64
	mu     sync.Mutex
	stats  map[string]*Stats
	push   push
	// limiters are each protocol's session limits and counts.
	limiters map[string]*limiter
}

// Option configures a Core.
type Option func(*Core)

// WithRecorder records every session. Without it nothing is recorded
// (tests of the wire alone).
func WithRecorder(r *recorder.Recorder) Option { return func(c *Core) { c.rec = r } }

// WithApprovals lets review decisions hold requests for approvers. Without
// it a review decision denies.
func WithApprovals(s approval.Store) Option { return func(c *Core) { c.approvals = s } }

// WithClock sets the time source (tests move it instead of sleeping).
func WithClock(cl clock.Clock) Option { return func(c *Core) { c.clock = cl } }

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(c *Core) { c.log = l } }

// New makes the core that decides with the store's active bundle.
func New(bundles *bundlestore.Store, opts ...Option) *Core {
	c := &Core{bundles: bundles, clock: clock.Real, log: slog.Default(), stats: map[string]*Stats{}, push: push{live: map[*Session]struct{}{}}, limiters: map[string]*limiter{}}
	for _, o := range opts {
		o(c)
	}
	bundles.OnActivate(c.bundleActivated)
	return c
}

// Bundles is the bundle store the core decides with.
func (c *Core) Bundles() *bundlestore.Store { return c.bundles }

// Approvals is the approval store (nil when there is none).
func (c *Core) Approvals() approval.Store { return c.approvals }

// Clock is the core's time source.
func (c *Core) Clock() clock.Clock { return c.clock }

// NextID numbers a connection, gateway-wide: protocols log it before
// admission, and it becomes part of the recording's name.
func (c *Core) NextID() uint64 { return c.nextID.Add(1) }

// Stats are one protocol's counters, for metrics.
type Stats struct {
	// Sessions counts sessions admitted; Active those open now.
	Sessions atomic.Int64
	Active   atomic.Int64
	// AuthFailures counts callers refused because the token did not
	// verify or the caller did not resolve to an identity.
	AuthFailures atomic.Int64
	// ConnectDenied counts sessions the policy refused.
	ConnectDenied atomic.Int64
	// Allowed and Denied count requests by how they ended.
	Allowed atomic.Int64
	Denied  atomic.Int64
	// Reviewed counts requests a review decision sent to approvers (or
	// an earlier approval released); each also counts as allowed or
	// denied by how it ended.
	Reviewed atomic.Int64
}

// Stats returns protocol's counters.
func (c *Core) Stats(protocol string) *Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, ok := c.stats[protocol]
	if !ok {
		st = &Stats{}
		c.stats[protocol] = st
	}
	return st
}

// Protocols lists the protocols that have counters, sorted.
func (c *Core) Protocols() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.stats))
	for p := range c.stats {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// Admission is what a protocol knows of a caller when it asks the core to
// open a session.
type Admission struct {
	// Protocol names the wire protocol (postgres, ssh, kubernetes): the
	// metrics label and the recording's protocol.
	Protocol string
	// Kind is the bundle resource kind the protocol serves, and Resource
	// the name the caller asked for.
	Kind     string
	Resource string
	// Token is the caller's bearer token.
	Token string
	// ClientAddr is the caller's address, for the recording and logs.
	ClientAddr string
	// ID is the connection's number from NextID (0: one is taken).
	ID uint64
	// Log is the protocol's logger for the connection (default the core's).
	Log *slog.Logger
	// Noun is what the protocol's callers call a request in messages:
	// "statement", "command", "request" (the default).
	Noun string
	// Guard applies the protocol's own invariants to every decision, after
	// the policy's (PostgreSQL refuses changes to settings its parser
	// depends on, whatever the policy says). Nil for none.
	Guard func(celpolicy.Request, celpolicy.Decision) celpolicy.Decision
	// Epoch, when set, changes whenever what Guard reads besides the
	// request and decision changes (the PostgreSQL catalog): a decision
	// kept for reuse is valid only within one epoch.
	Epoch func() uint64
}

// Lookup finds a resource in the active bundle before the caller has
// authenticated, so a protocol can refuse an unknown one early. It says
// nothing a caller could not learn by trying; Admit checks again.
func (c *Core) Lookup(kind, name string) (*bundlestore.Active, *Refusal) {
	active := c.bundles.Current()
	if active == nil {
		return nil, refuse(NotReady, "gatehouse: no policy bundle is loaded yet; the gateway refuses connections until one is")
	}
	if r, ok := active.Payload.Model.Resource(name); !ok || r.Kind != kind {
		return active, refuse(UnknownResource, fmt.Sprintf("gatehouse: %q is not a %s resource of bundle revision %d", name, kind, active.Revision))
	}
	return active, nil
}

// Admit opens a session: the resource must exist, the token verify, the
// caller resolve to an identity, and the policy allow the connection (for
// kinds that decide one). The session's recording is started before Admit
// returns: a gateway that cannot record refuses to proxy.
func (c *Core) Admit(ctx context.Context, a Admission) (*Session, *Refusal) {
	if a.ID == 0 {
		a.ID = c.NextID()
	}
	log := a.Log
	if log == nil {
		log = c.log.With("session", a.ID, "client", a.ClientAddr)
	}
	st := c.Stats(a.Protocol)
	active, ref := c.Lookup(a.Kind, a.Resource)
	if ref != nil {
		return nil, ref
	}
	lim := c.limiter(a.Protocol)
	if lim.authThrottled(a.ClientAddr, c.clock.Now()) {
		lim.Refused.AuthFailures.Add(1)
		log.Warn("authentication refused: too many failures from this address", "resource", a.Resource)
		return nil, refuse(Limited, "gatehouse: too many failed authentications from your address; wait a minute")
	}
	vtok, err := active.Verifier.Verify(ctx, a.Token)
	if err != nil {
		lim.authFailed(a.ClientAddr, c.clock.Now())
		st.AuthFailures.Add(1)
		log.Warn("token rejected", "resource", a.Resource, "reason", err)
		// The caller is not authenticated: it is told the kind of failure,
		// never the detail (a provider's URL), which is in the log.
		return nil, refuse(TokenRejected, "gatehouse: token rejected: "+auth.PublicReason(err))
	}
	identity, err := active.Policy.ResolveIdentity(vtok.Provider, vtok.Token)
	if err != nil {
		lim.authFailed(a.ClientAddr, c.clock.Now())
		st.AuthFailures.Add(1)
		log.Warn("identity not resolved", "resource", a.Resource, "subject", vtok.Token.Subject, "reason", err)
		return nil, refuse(TokenRejected, "gatehouse: "+err.Error())
	}
	s := &Session{
		core: c, protocol: a.Protocol, kind: a.Kind, resource: a.Resource, clientAddr: a.ClientAddr,
		num: a.ID, guard: a.Guard, epoch: a.Epoch, noun: cmp.Or(a.Noun, "request"), stats: st, started: c.clock.Now(),
		token: vtok, rawToken: a.Token, identity: identity, revision: active.Revision,
		closed: make(chan struct{}),
	}
	s.log = log.With("identity", IdentityName(identity), "resource", a.Resource)
	if req, ok := celpolicy.ConnectRequest(a.Kind); ok {
		d := active.Policy.Decide(s.input(req))
		if d.Effect != bundle.EffectAllow {
			st.ConnectDenied.Add(1)
			s.log.Warn("connection denied by policy", "effect", d.Effect, "rules", d.Rules(), "reasons", d.Reasons)
			return nil, &Refusal{Code: Denied, Decision: &d,
				Message: fmt.Sprintf("gatehouse: connection to %q denied by bundle revision %d: %s", a.Resource, active.Revision, strings.Join(d.Reasons, "; "))}
		}
	}
	s.limitKey = IdentityName(identity)
	if r := lim.reserve(s.limitKey, a.Resource); r != nil {
		s.log.Warn("session refused by a limit", "reason", r.Message)
		return nil, r
	}
	s.limiter = lim
	if c.rec != nil {
		var rnd [4]byte
		_, _ = rand.Read(rnd[:])
		s.id = fmt.Sprintf("%s-%d-%x", s.started.UTC().Format("20060102T150405Z"), a.ID, rnd)
		tokenGroups, _ := json.Marshal(active.Policy.TokenGroups(vtok.Provider, vtok.Token))
		claims, _ := json.Marshal(active.Policy.MatchClaims(vtok.Provider, vtok.Token))
		s.rec, err = c.rec.Start(s.id, recorder.Event{
			Protocol: a.Protocol, Identity: IdentityName(identity), Subject: identity.Subject, Issuer: identity.Issuer,
			Groups: identity.Groups, TokenGroups: tokenGroups, Provider: vtok.Provider, Claims: claims, Resource: a.Resource,
			BundleRevision: active.Revision, BundleDigest: active.Digest, ClientAddr: a.ClientAddr,
		})
		if err != nil {
			lim.release(s.limitKey, a.Resource)
			s.log.Error("session not recorded; refused", "err", err)
			return nil, refuse(Unrecorded, "gatehouse: the session cannot be recorded, so it is refused (the gateway's log has the cause)")
		}
		s.log = s.log.With("recording", s.id)
	} else {
		s.id = fmt.Sprint(a.ID)
	}
	st.Sessions.Add(1)
	st.Active.Add(1)
	s.t.lastActive = s.started
	c.register(s)
	s.armExpiry()
	s.armIdle()
	return s, nil
}

// IdentityName is how logs and recordings name a caller: its bundle
// identity, or its subject when it resolved to none.
func IdentityName(id celpolicy.Identity) string {
	if id.Name != "" {
		return id.Name
	}
	return "subject:" + id.Subject
}
