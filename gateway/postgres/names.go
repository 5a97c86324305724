package postgres

import "sync"

// names tracks the prepared statements and portals the upstream holds, so
// that an Execute is decided by the statement that will really run.
//
// The upstream creates, replaces or drops a statement or portal only when
// its Parse, Bind or Close succeeds; after an error it skips everything up
// to Sync. So the gateway's record changes only when the completion message
// arrives (ParseComplete, BindComplete, CloseComplete), never when the
// request is sent. A request that refers to a name uses, in order:
//   - a change sent earlier in the same batch (if that change fails, the
//     upstream skips this request too);
//   - otherwise, once every earlier batch's change to the name has been
//     settled, the recorded state.
//
// Waiting happens only for a pipeline that changes a name in one batch and
// uses it in a later one before reading the first batch's results.
type names struct {
	mu      sync.Mutex
	cond    *sync.Cond
	stmts   map[string]*prepared
	portals map[string]*portal
	pending map[string][]*mutation
	closed  bool
	// onDefine, when set, is told of every name a Parse or Bind is about
	// to define: whatever SQL PREPARE or DECLARE had made of that name is
	// then gone (or, should the Parse fail, forgotten: fail closed).
	onDefine func(key string)
}

// mutation is a change to a statement ("S:name") or portal ("P:name") that
// the upstream has not yet confirmed.
type mutation struct {
	key    string
	batch  uint64
	stmt   *prepared // for S: the new statement; nil means dropped
	portal *portal   // for P
}

func newNames() *names {
	n := &names{stmts: map[string]*prepared{}, portals: map[string]*portal{}, pending: map[string][]*mutation{}}
	n.cond = sync.NewCond(&n.mu)
	return n
}

// propose records a change the request side is about to send. A Parse or
// Bind that defines a name is told to onDefine now, before anything behind
// it in the pipeline is decided, whether or not it will succeed.
func (n *names) propose(m *mutation) {
	n.mu.Lock()
	n.pending[m.key] = append(n.pending[m.key], m)
	n.mu.Unlock()
	if (m.stmt != nil || m.portal != nil) && n.onDefine != nil {
		n.onDefine(m.key)
	}
}

// settle applies (on completion) or discards (on error or skip) a change.
func (n *names) settle(m *mutation, apply bool) {
	if m == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	list := n.pending[m.key]
	for i, x := range list {
		if x == m {
			n.pending[m.key] = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(n.pending[m.key]) == 0 {
		delete(n.pending, m.key)
	}
	if apply {
		name := m.key[2:]
		if m.key[0] == 'S' {
			if m.stmt == nil {
				delete(n.stmts, name)
			} else {
				n.stmts[name] = m.stmt
			}
		} else {
			if m.portal == nil {
				delete(n.portals, name)
			} else {
				n.portals[name] = m.portal
			}
		}
	}
	n.cond.Broadcast()
}

// resolve returns what a name will mean to the upstream when a request of
// the given batch reaches it. ok is false when the session is ending.
func (n *names) resolve(key string, batch uint64) (stmt *prepared, port *portal, ok bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for {
		if n.closed {
			return nil, nil, false
		}
		list := n.pending[key]
		if len(list) == 0 {
			if key[0] == 'S' {
				return n.stmts[key[2:]], nil, true
			}
			return nil, n.portals[key[2:]], true
		}
		if last := list[len(list)-1]; last.batch == batch {
			return last.stmt, last.portal, true
		}
		n.cond.Wait()
	}
}

// forgetAll proposes to drop every statement (kind 'S') or portal ('P')
// the record has or is about to have, for a request of the given batch:
// SQL DEALLOCATE, CLOSE and DISCARD drop names behind the protocol's back,
// and SQL PREPARE or DECLARE may then give one of them another meaning.
// Dropped, a name is unknown to the gateway, and an Execute through it is
// refused until a Parse or Bind defines it again. The changes are applied
// once the request is over, whatever its outcome (fail closed: a name
// forgotten that the upstream still has only costs a refusal).
func (n *names) forgetAll(kind byte, batch uint64) []*mutation {
	n.mu.Lock()
	defer n.mu.Unlock()
	keys := map[string]bool{}
	if kind == 'S' {
		for name := range n.stmts {
			keys["S:"+name] = true
		}
	} else {
		for name := range n.portals {
			keys["P:"+name] = true
		}
	}
	for key := range n.pending {
		if key[0] == kind {
			keys[key] = true
		}
	}
	var muts []*mutation
	for key := range keys {
		m := &mutation{key: key, batch: batch}
		n.pending[key] = append(n.pending[key], m)
		muts = append(muts, m)
	}
	return muts
}

// endTransaction drops portals: the upstream drops them when a transaction
// ends.
func (n *names) endTransaction() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.portals = map[string]*portal{}
	n.cond.Broadcast()
}

func (n *names) close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.closed = true
	n.cond.Broadcast()
}
