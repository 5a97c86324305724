package postgres

import "sync"

// queue holds the requests whose responses are still to come, in order.
// The request side pushes, the response side takes. It also knows whether
// the upstream is skipping to Sync after an error: a request pushed then
// will get no response, and one that waits for a response (a hidden
// Describe) must be told at once rather than wait forever.
type queue struct {
	mu       sync.Mutex
	cond     *sync.Cond
	items    []*slot
	closed   bool
	skipping bool
}

func newQueue() *queue {
	q := &queue{}
	q.cond = sync.NewCond(&q.mu)
	return q
}

// push adds a request. It returns false when the session is over.
func (q *queue) push(s *slot) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return false
	}
	if q.skipping && s.kind != slotSync && !q.syncQueuedLocked() {
		// The upstream skips this request, up to the Sync that ends the
		// failed batch: its describe (or its COPY) never comes. Behind
		// that Sync, it is the next batch's, and answered.
		s.skipped()
	}
	q.items = append(q.items, s)
	q.cond.Signal()
	return true
}

// syncQueuedLocked reports whether a Sync is queued. Every queued Sync is
// answered: none is forwarded while the upstream may be in copy-in mode,
// where it would ignore it (session.copyStream). q.mu is held.
func (q *queue) syncQueuedLocked() bool {
	for _, s := range q.items {
		if s.kind == slotSync {
			return true
		}
	}
	return false
}

// head returns the oldest request, waiting for one if blocking. It returns
// nil when the queue is empty (not blocking) or closed.
func (q *queue) head(block bool) *slot {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.items) == 0 {
		if q.closed || !block {
			return nil
		}
		q.cond.Wait()
	}
	return q.items[0]
}

// pop removes the oldest request.
func (q *queue) pop() *slot {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) == 0 {
		return nil
	}
	s := q.items[0]
	q.items = q.items[1:]
	s.finished() // it has all its answers
	return s
}

// skip puts the queue in skipping mode after an error: every queued
// request up to the next Sync will get no response.
func (q *queue) skip() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.skipping = true
	for _, s := range q.items {
		if s.kind == slotSync {
			break
		}
		s.skipped()
	}
}

// endSkip drops the requests the upstream skipped, up to and including the
// Sync whose ReadyForQuery arrived, and leaves skipping mode. The skipped
// requests' name changes are discarded.
func (q *queue) endSkip(n *names) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.items) > 0 {
		s := q.items[0]
		q.items = q.items[1:]
		if s.kind == slotSync {
			break
		}
		n.settle(s.mut, false)
		s.skipped()
	}
	q.skipping = false
}

func (q *queue) isSkipping() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.skipping
}

func (q *queue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	for _, s := range q.items {
		s.skipped()
	}
	q.cond.Broadcast()
}
