package session

import (
	"container/list"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Limits bound what one protocol listener's callers may hold, so that one
// caller cannot take every upstream connection or every socket. Zero
// values take the defaults; a negative value means no limit.
type Limits struct {
	// MaxSessions bounds the listener's open sessions.
	MaxSessions int
	// MaxSessionsPerIdentity bounds one caller's (one identity's, or one
	// subject's when it resolved to none) open sessions.
	MaxSessionsPerIdentity int
	// MaxSessionsPerResource bounds one resource's open sessions (set it
	// below the upstream's own connection limit).
	MaxSessionsPerResource int
	// MaxPending bounds connections that have not authenticated yet: the
	// oldest is closed to make room for a new one.
	MaxPending int
	// LoginTimeout bounds the time to authenticate.
	LoginTimeout time.Duration
	// AuthFailuresPerMinute bounds failed authentications per source
	// address; past it the address is refused for the rest of the minute.
	AuthFailuresPerMinute int
}

// Default limits.
const (
	DefaultMaxSessions            = 1000
	DefaultMaxSessionsPerIdentity = 50
	DefaultMaxPending             = 256
	DefaultLoginTimeout           = 10 * time.Second
)

// withDefaults fills zero fields.
func (l Limits) withDefaults() Limits {
	if l.MaxSessions == 0 {
		l.MaxSessions = DefaultMaxSessions
	}
	if l.MaxSessionsPerIdentity == 0 {
		l.MaxSessionsPerIdentity = DefaultMaxSessionsPerIdentity
	}
	if l.MaxPending == 0 {
		l.MaxPending = DefaultMaxPending
	}
	if l.LoginTimeout == 0 {
		l.LoginTimeout = DefaultLoginTimeout
	}
	return l
}

// limiter is one protocol's counts.
type limiter struct {
	limits Limits

	mu         sync.Mutex
	total      int
	byIdentity map[string]int
	byResource map[string]int
	pending    *list.List // of *pendingConn, oldest first
	failures   map[string][]time.Time

	// Refused counts refusals by limit, for metrics.
	Refused struct {
		Sessions, PerIdentity, PerResource, Pending, AuthFailures atomic.Int64
	}
}

type pendingConn struct {
	close func()
	// spoke: the client has sent something, so it is more likely a
	// caller than a silent socket; silent ones are closed first.
	spoke atomic.Bool
	// conn is the connection as accepted, to peek at.
	conn net.Conn
}

// silent reports whether the client has sent nothing: neither read by
// the gateway yet nor waiting in the socket's receive buffer. A caller
// speaks at once (an SSLRequest, an SSH version line), but under load
// the gateway may not have read it yet when a flood of new sockets asks
// for room; peeking at the socket tells such a caller from a silent one.
func (p *pendingConn) silent() bool {
	if p.spoke.Load() {
		return false
	}
	sc, ok := p.conn.(syscall.Conn)
	if !ok {
		return true
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	// Control, not Read: Read would wait for the fd's read lock, which
	// the session's own blocked read holds. A peek that does not wait
	// (MSG_DONTWAIT) consumes nothing and needs no lock.
	waiting := false
	_ = raw.Control(func(fd uintptr) {
		var b [1]byte
		n, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		waiting = err == nil && n > 0
	})
	if waiting {
		p.spoke.Store(true)
	}
	return !waiting
}

// SetLimits sets a protocol's limits (call before it serves).
func (c *Core) SetLimits(protocol string, l Limits) {
	lim := c.limiter(protocol)
	lim.mu.Lock()
	lim.limits = l.withDefaults()
	lim.mu.Unlock()
}

// Limits returns a protocol's limits, defaults filled in.
func (c *Core) Limits(protocol string) Limits {
	lim := c.limiter(protocol)
	lim.mu.Lock()
	defer lim.mu.Unlock()
	return lim.limits
}

func (c *Core) limiter(protocol string) *limiter {
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.limiters[protocol]
	if !ok {
		l = &limiter{limits: Limits{}.withDefaults(), byIdentity: map[string]int{}, byResource: map[string]int{},
			pending: list.New(), failures: map[string][]time.Time{}}
		c.limiters[protocol] = l
	}
	return l
}

// LimitStats are a protocol's refusals by limit.
func (c *Core) LimitStats(protocol string) map[string]int64 {
	l := c.limiter(protocol)
	return map[string]int64{
		"sessions": l.Refused.Sessions.Load(), "per_identity": l.Refused.PerIdentity.Load(),
		"per_resource": l.Refused.PerResource.Load(), "pending": l.Refused.Pending.Load(),
		"auth_failures": l.Refused.AuthFailures.Load(),
	}
}

// Pending registers a connection that has not authenticated yet. When the
// protocol has too many, the oldest silent one (nothing read and nothing
// waiting to be read; or, when all have spoken, the oldest) is closed (its close is called) to make room, so that a
// flood of silent sockets cannot lock out callers who do authenticate.
// conn wraps the connection so that its first byte marks it as speaking;
// done must be called once it has authenticated or gone; it has
// LoginTimeout to authenticate.
func (c *Core) Pending(protocol string, conn net.Conn, close func()) (wrapped net.Conn, done func(), timeout time.Duration) {
	l := c.limiter(protocol)
	pc := &pendingConn{close: close, conn: conn}
	l.mu.Lock()
	e := l.pending.PushBack(pc)
	var evict []*pendingConn
	for l.limits.MaxPending > 0 && l.pending.Len() > l.limits.MaxPending {
		victim := l.pending.Front()
		for x := l.pending.Front(); x != nil; x = x.Next() {
			if x.Value.(*pendingConn).silent() {
				victim = x
				break
			}
		}
		l.pending.Remove(victim)
		evict = append(evict, victim.Value.(*pendingConn))
	}
	timeout = l.limits.LoginTimeout
	l.mu.Unlock()
	for _, p := range evict {
		l.Refused.Pending.Add(1)
		p.close()
	}
	var once sync.Once
	return &speaking{Conn: conn, p: pc}, func() {
		once.Do(func() {
			l.mu.Lock()
			for x := l.pending.Front(); x != nil; x = x.Next() {
				if x == e {
					l.pending.Remove(e)
					break
				}
			}
			l.mu.Unlock()
		})
	}, timeout
}

// speaking marks a pending connection as speaking at its first byte.
type speaking struct {
	net.Conn
	p *pendingConn
}

func (s *speaking) Read(b []byte) (int, error) {
	n, err := s.Conn.Read(b)
	if n > 0 && !s.p.spoke.Load() {
		s.p.spoke.Store(true)
	}
	return n, err
}

// hostOf is the address part of host:port.
func hostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

// authThrottled reports whether addr has failed to authenticate too often
// in the last minute.
func (l *limiter) authThrottled(addr string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	max := l.limits.AuthFailuresPerMinute
	if max <= 0 {
		return false
	}
	recent := l.recentLocked(hostOf(addr), now)
	return len(recent) >= max
}

func (l *limiter) recentLocked(host string, now time.Time) []time.Time {
	kept := l.failures[host][:0]
	for _, t := range l.failures[host] {
		if now.Sub(t) < time.Minute {
			kept = append(kept, t)
		}
	}
	if len(kept) == 0 {
		delete(l.failures, host)
		return nil
	}
	l.failures[host] = kept
	return kept
}

// authFailed counts a failed authentication from addr.
func (l *limiter) authFailed(addr string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.limits.AuthFailuresPerMinute <= 0 {
		return
	}
	host := hostOf(addr)
	l.failures[host] = append(l.recentLocked(host, now), now)
	if len(l.failures) > 100000 {
		// A spray of addresses: forget the oldest rather than grow.
		for h := range l.failures {
			delete(l.failures, h)
			if len(l.failures) <= 50000 {
				break
			}
		}
	}
}

// reserve takes a session's place under the limits, or says which limit
// refuses it.
func (l *limiter) reserve(caller, resource string) *Refusal {
	l.mu.Lock()
	defer l.mu.Unlock()
	lm := l.limits
	switch {
	case lm.MaxSessions > 0 && l.total >= lm.MaxSessions:
		l.Refused.Sessions.Add(1)
		return refuse(Limited, fmt.Sprintf("gatehouse: too many sessions on this gateway (%d); try again later", lm.MaxSessions))
	case lm.MaxSessionsPerIdentity > 0 && l.byIdentity[caller] >= lm.MaxSessionsPerIdentity:
		l.Refused.PerIdentity.Add(1)
		return refuse(Limited, fmt.Sprintf("gatehouse: %s already has %d open sessions, its limit; close one first", caller, lm.MaxSessionsPerIdentity))
	case lm.MaxSessionsPerResource > 0 && l.byResource[resource] >= lm.MaxSessionsPerResource:
		l.Refused.PerResource.Add(1)
		return refuse(Limited, fmt.Sprintf("gatehouse: %q already has %d open sessions, its limit; try again later", resource, lm.MaxSessionsPerResource))
	}
	l.total++
	l.byIdentity[caller]++
	l.byResource[resource]++
	return nil
}

// release gives a session's place back.
func (l *limiter) release(caller, resource string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.byIdentity[caller]--; l.byIdentity[caller] <= 0 {
		delete(l.byIdentity, caller)
	}
	if l.byResource[resource]--; l.byResource[resource] <= 0 {
		delete(l.byResource, resource)
	}
}
