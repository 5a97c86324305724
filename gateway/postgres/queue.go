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
	if q.skipping && s.kind != slotSync && s.ready != nil && !q.syncQueuedLocked() {
		// The upstream skips this request, up to the Sync that ends the
		// failed batch: its describe never comes. Behind that Sync, it is
		// the next batch's, and answered.
		s.resolve(nil)
	}
	q.items = append(q.items, s)
	q.cond.Signal()
	return true
}

// syncQueuedLocked reports whether a Sync the upstream will answer is
// queued. q.mu is held.
func (q *queue) syncQueuedLocked() bool {
	for _, s := range q.items {
		if s.realSync() {
			return true
		}
	}
	return false
}

// dropIgnoredLocked drops Syncs at the front that the upstream ignored
// (read in copy-in mode): they get no answer. q.mu is held.
func (q *queue) dropIgnoredLocked() {
	for len(q.items) > 0 && q.items[0].syncIgnored() {
		q.items = q.items[1:]
	}
}

// head returns the oldest request, waiting for one if blocking. It returns
// nil when the queue is empty (not blocking) or closed.
func (q *queue) head(block bool) *slot {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.dropIgnoredLocked()
	for len(q.items) == 0 {
		if q.closed || !block {
			return nil
		}
		q.cond.Wait()
		q.dropIgnoredLocked()
	}
	return q.items[0]
}

// pop removes the oldest request.
func (q *queue) pop() *slot {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.dropIgnoredLocked()
	if len(q.items) == 0 {
		return nil
	}
	s := q.items[0]
	q.items = q.items[1:]
	return s
}

// skip puts the queue in skipping mode after an error: every queued
// request up to the next Sync will get no response.
func (q *queue) skip() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.skipping = true
	for _, s := range q.items {
		if s.realSync() {
			break
		}
		if s.ready != nil {
			s.resolve(nil)
		}
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
		if s.realSync() {
			break
		}
		n.settle(s.mut, false)
		if s.ready != nil {
			s.resolve(nil)
		}
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
		if s.ready != nil {
			s.resolve(nil)
		}
	}
	q.cond.Broadcast()
}
