package kubernetes

import (
	"context"
	"crypto/sha256"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/gatehouse-dev/gatehouse/bundle"
	core "github.com/gatehouse-dev/gatehouse/gateway/session"
)

// A Kubernetes caller's session is one token on one cluster: kubectl
// sends many requests, in parallel, over several connections, with the
// same token, and they are one session: one admission, one recording, one
// set of counters. It ends when the token expires, when a new bundle
// revokes it, or when it has been idle for the cluster's idle_timeout.
type sessions struct {
	mu   sync.Mutex
	byID map[[32]byte]*entry
}

// entry is one session, or its admission in progress.
type entry struct {
	key   [32]byte
	ready chan struct{} // closed once the admission is settled
	s     *core.Session
	ref   *core.Refusal
	// busy counts the session's requests in flight (a watch or an exec
	// counts as long as it runs): the idle timeout does not cut them.
	busy atomic.Int64
}

func (ss *sessions) init() { ss.byID = map[[32]byte]*entry{} }

// sessionKey identifies a token on a cluster without keeping the token.
func sessionKey(cluster, token string) [32]byte {
	h := sha256.New()
	h.Write([]byte(cluster))
	h.Write([]byte{0})
	h.Write([]byte(token))
	var k [32]byte
	h.Sum(k[:0])
	return k
}

// session returns the caller's session, admitting it first if it is new.
// A refused admission is not kept: the next request tries again (the
// bundle may have changed), and the core throttles failures per address.
func (s *Server) session(ctx context.Context, r *http.Request, cluster, token string) (*entry, *core.Refusal) {
	key := sessionKey(cluster, token)
	ss := &s.sessions
	ss.mu.Lock()
	e, ok := ss.byID[key]
	if !ok {
		e = &entry{key: key, ready: make(chan struct{})}
		ss.byID[key] = e
	}
	ss.mu.Unlock()
	if ok {
		select {
		case <-e.ready:
		case <-ctx.Done():
			return nil, &core.Refusal{Code: core.Cancelled, Message: "gatehouse: the request was cancelled"}
		}
		if e.ref != nil {
			// The admission this request waited for was refused: its
			// reason holds for this request too.
			return nil, e.ref
		}
		return e, nil
	}
	cs, ref := s.core.Admit(ctx, core.Admission{
		Protocol: Protocol, Kind: bundle.KindKubernetes, Resource: cluster, Token: token,
		ClientAddr: r.RemoteAddr, Log: s.log.With("client", r.RemoteAddr), Noun: "request",
	})
	e.s, e.ref = cs, ref
	if ref != nil {
		ss.mu.Lock()
		delete(ss.byID, key)
		ss.mu.Unlock()
		close(e.ready)
		return nil, ref
	}
	cs.SetEnder(func(*core.Refusal) { s.endSession(e, "") }, func() bool { return e.busy.Load() > 0 })
	close(e.ready)
	return e, nil
}

// endSession forgets a session and seals its recording. Requests still
// running see its end when they next check.
func (s *Server) endSession(e *entry, reason string) {
	ss := &s.sessions
	ss.mu.Lock()
	if ss.byID[e.key] == e {
		delete(ss.byID, e.key)
	}
	ss.mu.Unlock()
	if e.s != nil {
		e.s.Close()
		e.s.End(reason)
	}
}

// endAll ends every session (the gateway is stopping).
func (ss *sessions) endAll(reason string) {
	ss.mu.Lock()
	all := make([]*entry, 0, len(ss.byID))
	for _, e := range ss.byID {
		all = append(all, e)
	}
	ss.byID = map[[32]byte]*entry{}
	ss.mu.Unlock()
	for _, e := range all {
		<-e.ready
		if e.s != nil {
			e.s.Close()
			e.s.End(reason)
		}
	}
}
