package session

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/gateway/bundlestore"
	"github.com/gatehouse-dev/gatehouse/internal/clock"
)

// Sessions are checked before every request (Check), and also without
// waiting for the caller: a session whose token expires, that a new bundle
// revokes, or that stays idle too long is ended at once, even when the
// caller says nothing (a LISTEN session, an idle shell).

// push is the core's registry of open sessions, for the re-checks that do
// not wait for a request.
type push struct {
	mu   sync.Mutex
	live map[*Session]struct{}
}

func (c *Core) register(s *Session) {
	c.push.mu.Lock()
	c.push.live[s] = struct{}{}
	c.push.mu.Unlock()
}

func (c *Core) unregister(s *Session) {
	c.push.mu.Lock()
	delete(c.push.live, s)
	c.push.mu.Unlock()
}

// Live counts the open sessions.
func (c *Core) Live() int {
	c.push.mu.Lock()
	defer c.push.mu.Unlock()
	return len(c.push.live)
}

// bundleActivated judges every open session against a new bundle at once,
// and ends those it no longer allows.
func (c *Core) bundleActivated(a *bundlestore.Active) {
	c.push.mu.Lock()
	live := make([]*Session, 0, len(c.push.live))
	for s := range c.push.live {
		live = append(live, s)
	}
	c.push.mu.Unlock()
	for _, s := range live {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			if r := s.Check(ctx); r != nil {
				s.Terminate(r)
				return
			}
			s.armIdle() // the resource's idle_timeout may have changed
		}()
	}
}

// timers are a session's push-based checks.
type timers struct {
	mu      sync.Mutex
	expiry  clock.Timer
	idle    clock.Timer
	ender   func(*Refusal)
	pending *Refusal // a termination that came before the ender
	busy    func() bool
	ended   bool
	reason  string // why the core ended the session, for its recording
	// lastActive is when the caller last did something (Touch).
	lastActive time.Time
}

// SetEnder gives the core the protocol's way to end the session now, from
// any goroutine, with a refusal the protocol renders (a FATAL error, a
// message on the SSH connection). busy, if not nil, says the session is in
// the middle of something (a statement running, a command executing), so
// that the idle timeout does not cut it. Call it once, right after Admit.
func (s *Session) SetEnder(end func(*Refusal), busy func() bool) {
	s.t.mu.Lock()
	s.t.ender, s.t.busy = end, busy
	p := s.t.pending
	s.t.pending = nil
	s.t.mu.Unlock()
	if p != nil {
		end(p)
	}
}

// Touch says the caller is active (it sent something): the idle timeout
// counts from here.
func (s *Session) Touch() {
	now := s.core.clock.Now()
	s.t.mu.Lock()
	s.t.lastActive = now
	s.t.mu.Unlock()
}

// Terminate ends the session now, with r, whatever the caller is doing:
// the protocol's ender renders it and closes the connection. It runs once.
func (s *Session) Terminate(r *Refusal) {
	s.t.mu.Lock()
	if s.t.ended {
		s.t.mu.Unlock()
		return
	}
	s.t.ended = true
	s.t.reason = fmt.Sprintf("ended by the gateway (%s): %s", r.Code, r.Message)
	end := s.t.ender
	if end == nil {
		s.t.pending = r
	}
	s.stopTimersLocked()
	s.t.mu.Unlock()
	s.log.Warn("session ended by the gateway", "code", r.Code.String(), "reason", r.Message)
	if end != nil {
		end(r)
	}
}

// armExpiry sets the timer that ends the session when its token expires.
func (s *Session) armExpiry() {
	expiry := s.Expiry()
	s.t.mu.Lock()
	defer s.t.mu.Unlock()
	if s.t.ended {
		return
	}
	if s.t.expiry != nil {
		s.t.expiry.Stop()
	}
	d := expiry.Sub(s.core.clock.Now())
	s.t.expiry = s.core.clock.AfterFunc(max(d, 0), func() {
		if s.core.clock.Now().Before(s.Expiry()) {
			s.armExpiry() // a re-check under a new bundle renewed the token
			return
		}
		s.Terminate(refuse(TokenExpired, "gatehouse: token expired; the session is ended (reconnect with a fresh token)"))
	})
}

// idleTimeout is the session's resource's idle_timeout in the active
// bundle: DefaultIdleTimeout when unset, 0 when disabled.
func (s *Session) idleTimeout() time.Duration {
	active := s.core.bundles.Current()
	if active == nil {
		return bundle.DefaultIdleTimeout
	}
	r, ok := active.Payload.Model.Resource(s.resource)
	if !ok {
		return bundle.DefaultIdleTimeout
	}
	return bundle.IdleTimeoutOf(r)
}

// armIdle (re)sets the idle timer from the last activity.
func (s *Session) armIdle() {
	idle := s.idleTimeout()
	s.t.mu.Lock()
	defer s.t.mu.Unlock()
	if s.t.ended {
		return
	}
	if s.t.idle != nil {
		s.t.idle.Stop()
		s.t.idle = nil
	}
	if idle <= 0 {
		return
	}
	wait := idle - s.core.clock.Now().Sub(s.t.lastActive)
	s.t.idle = s.core.clock.AfterFunc(max(wait, 0), func() {
		s.t.mu.Lock()
		busy, quiet := s.t.busy, s.core.clock.Now().Sub(s.t.lastActive)
		s.t.mu.Unlock()
		if quiet < idle || (busy != nil && busy()) || s.waiting() {
			if quiet >= idle {
				s.Touch() // busy counts as activity
			}
			s.armIdle()
			return
		}
		s.Terminate(refuse(Idle, fmt.Sprintf("gatehouse: the session was idle for %s and is ended (the resource's idle_timeout)", idle)))
	})
}

// waiting: a request is held for approval, which is not idleness.
func (s *Session) waiting() bool {
	_, held := s.Held()
	return held
}

func (s *Session) stopTimersLocked() {
	if s.t.expiry != nil {
		s.t.expiry.Stop()
	}
	if s.t.idle != nil {
		s.t.idle.Stop()
	}
}

// endedReason is why the core ended the session, or "".
func (s *Session) endedReason() string {
	s.t.mu.Lock()
	defer s.t.mu.Unlock()
	return s.t.reason
}
