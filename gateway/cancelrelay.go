package gateway

import (
	"context"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// cancelChannel is the state database's NOTIFY channel for CancelRequests
// that reached a replica other than the one holding the session.
const cancelChannel = "gatehouse_cancel"

// cancelRelay carries PostgreSQL CancelRequests between replicas. A
// client's cancel connection is a new TCP connection, and a load balancer
// may send it to any replica: one that does not hold the session
// publishes the key on the state database, and every replica cancels the
// session if it holds it. The key (process id and secret) is all a cancel
// needs, and it is what PostgreSQL itself sends in the clear; it goes only
// to the state database the replicas already trust with approvals.
type cancelRelay struct {
	dsn   string
	log   *slog.Logger
	local func(pid uint32, secret []byte) bool
	// pub is the connection that publishes (serialised by the relay's
	// channel); the listener has its own.
	queue chan string
}

func newCancelRelay(dsn string, log *slog.Logger) *cancelRelay {
	return &cancelRelay{dsn: dsn, log: log, queue: make(chan string, 64)}
}

// Publish asks the other replicas to cancel the session with this key. It
// never blocks the caller: a full queue drops the cancel (a client may
// send another), and says so.
func (r *cancelRelay) Publish(pid uint32, secret []byte) {
	select {
	case r.queue <- fmt.Sprintf("%d:%x", pid, secret):
	default:
		r.log.Warn("a cancel request for another replica was dropped: the relay is behind")
	}
}

// Run publishes and listens until ctx ends, reconnecting with backoff.
func (r *cancelRelay) Run(ctx context.Context) {
	go r.publish(ctx)
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := r.listen(ctx)
		if ctx.Err() != nil {
			return
		}
		r.log.Warn("cancel relay: listening on the state database failed; retrying", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}

func (r *cancelRelay) listen(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, r.dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+cancelChannel); err != nil {
		return err
	}
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		pid, secret, ok := parseCancelKey(n.Payload)
		if !ok {
			r.log.Warn("cancel relay: a malformed key on the channel was ignored")
			continue
		}
		if r.local != nil && r.local(pid, secret) {
			r.log.Info("cancelled a session on behalf of another replica", "pid", pid)
		}
	}
}

func (r *cancelRelay) publish(ctx context.Context) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case key := <-r.queue:
			for attempt := 0; attempt < 3; attempt++ {
				if conn == nil {
					c, err := pgx.Connect(ctx, r.dsn)
					if err != nil {
						r.log.Warn("cancel relay: cannot reach the state database", "err", err)
						time.Sleep(100 * time.Millisecond)
						continue
					}
					conn = c
				}
				if _, err := conn.Exec(ctx, "SELECT pg_notify($1, $2)", cancelChannel, key); err != nil {
					conn.Close(context.Background())
					conn = nil
					continue
				}
				break
			}
		}
	}
}

// parseCancelKey reads "PID:HEXSECRET".
func parseCancelKey(s string) (uint32, []byte, bool) {
	p, h, ok := strings.Cut(s, ":")
	if !ok {
		return 0, nil, false
	}
	pid, err := strconv.ParseUint(p, 10, 32)
	if err != nil {
		return 0, nil, false
	}
	secret, err := hex.DecodeString(h)
	if err != nil || len(secret) == 0 || len(secret) > 256 {
		return 0, nil, false
	}
	return uint32(pid), secret, true
}
