package approval

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// How a PGStore hears of what other replicas did: LISTEN on a connection
// of its own, and a poll in case a notification was lost.

// connectListener opens the listener's connection and listens on it.
func (s *PGStore) connectListener(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, s.listenTo)
	if err != nil {
		return nil, fmt.Errorf("approvals: the settlement listener: %w", err)
	}
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{NotifyChannel}.Sanitize()); err != nil {
		_ = conn.Close(ctx)
		return nil, fmt.Errorf("approvals: the settlement listener: %w", err)
	}
	return conn, nil
}

// listen receives notifications on conn until Close. When the connection
// breaks it connects again, backing off, and then looks up every request
// it waits on: what settled while nobody listened sent its notification
// into the void.
func (s *PGStore) listen(conn *pgx.Conn) {
	defer s.bg.Done()
	const first, most = 100 * time.Millisecond, 10 * time.Second
	backoff := first
	for {
		if conn != nil {
			err := s.receive(conn)
			closeCtx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = conn.Close(closeCtx)
			cancel()
			conn = nil
			if s.ctx.Err() != nil {
				return
			}
			s.log.Warn("the approvals listener lost its connection; settlements on other replicas reach this one by polling until it is back",
				"err", err, "poll_interval", s.pollInterval)
		}
		t := time.NewTimer(backoff)
		select {
		case <-s.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		c, err := s.connectListener(s.ctx)
		if err != nil {
			s.log.Warn("the approvals listener cannot connect; retrying", "err", err, "in", backoff)
			backoff = min(2*backoff, most)
			continue
		}
		conn, backoff = c, first
		s.log.Info("the approvals listener is connected again")
		s.recheck()
	}
}

// receive hands each notification to heard until the connection fails or
// the store closes.
func (s *PGStore) receive(conn *pgx.Conn) error {
	for {
		n, err := conn.WaitForNotification(s.ctx)
		if err != nil {
			return err
		}
		s.heard(n.Payload)
	}
}

// heard follows a notification that request id settled. It is a hint:
// the request is looked up before a waiter is woken, so a stray NOTIFY on
// the channel wakes nobody.
func (s *PGStore) heard(id string) {
	s.mu.Lock()
	_, waiting := s.waiters[id]
	_, armed := s.timers[id]
	s.mu.Unlock()
	if waiting || armed {
		s.recheck(id)
	}
}

// poll is the fallback: every poll interval it looks up the requests this
// store waits on, and expires those past their expiry that no replica has
// expired (the replica that armed the timer may be gone). The interval is
// wall-clock time, not the store's clock: it bounds how late a lost
// notification is made up for. What is overdue is decided by the clock.
func (s *PGStore) poll() {
	defer s.bg.Done()
	t := time.NewTicker(s.pollInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		s.recheck()
		s.sweep()
	}
}

// recheck wakes the waiters of the requests among ids (every request this
// store waits on or has armed, when none are given) that are settled or
// gone.
func (s *PGStore) recheck(ids ...string) {
	if len(ids) == 0 {
		s.mu.Lock()
		for id := range s.waiters {
			ids = append(ids, id)
		}
		for id := range s.timers {
			if _, ok := s.waiters[id]; !ok {
				ids = append(ids, id)
			}
		}
		s.mu.Unlock()
	}
	if len(ids) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, opTimeout)
	defer cancel()
	rows, err := s.pool.Query(ctx, "SELECT id FROM gatehouse_approvals WHERE id = ANY($1) AND state = 'pending'", ids)
	if err != nil {
		s.logPollError("looking up the approval requests this gateway waits on", err)
		return
	}
	pending, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		s.logPollError("looking up the approval requests this gateway waits on", err)
		return
	}
	open := make(map[string]bool, len(pending))
	for _, id := range pending {
		open[id] = true
	}
	for _, id := range ids {
		if !open[id] {
			s.wake(id)
		}
	}
}

// sweepBatch bounds the overdue requests one poll expires.
const sweepBatch = 100

// sweep expires pending requests past their expiry.
func (s *PGStore) sweep() {
	ctx, cancel := context.WithTimeout(s.ctx, opTimeout)
	defer cancel()
	// expires_at is in microseconds: <= finds every request the exact test
	// in expire passes.
	rows, err := s.pool.Query(ctx, "SELECT id FROM gatehouse_approvals WHERE state = 'pending' AND expires_at <= $1 ORDER BY expires_at LIMIT $2",
		s.clock.Now(), sweepBatch)
	if err != nil {
		s.logPollError("looking for overdue approval requests", err)
		return
	}
	overdue, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		s.logPollError("looking for overdue approval requests", err)
		return
	}
	for _, id := range overdue {
		s.expire(id)
	}
}

func (s *PGStore) logPollError(what string, err error) {
	if s.ctx.Err() == nil {
		s.log.Warn("approvals poll: "+what, "err", err)
	}
}
