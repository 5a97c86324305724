package postgres

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	core "github.com/gatehouse-dev/gatehouse/gateway/session"
)

// TestSessionLimits: one identity cannot take more than its share (53300,
// a clear message); another identity still connects; a closed session
// gives its place back.
func TestSessionLimits(t *testing.T) {
	e := startEnv(t)
	e.core.SetLimits(Protocol, core.Limits{MaxSessionsPerIdentity: 3})
	ctx := context.Background()
	var held []*pgx.Conn
	for i := 0; i < 3; i++ {
		held = append(held, e.connect(t, "analytics-job"))
	}
	_, err := e.tryConnect(t, "analytics-job")
	if pgCode(err) != "53300" || !strings.Contains(err.Error(), "already has 3 open sessions") {
		t.Fatalf("a fourth session: %v", err)
	}
	if _, err := e.tryConnect(t, "billing-service"); err != nil {
		t.Fatalf("another identity: %v", err)
	}
	held[0].Close(ctx)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := e.tryConnect(t, "analytics-job"); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("the place was not given back: %v", err)
		}
	}
	if n := e.core.LimitStats(Protocol)["per_identity"]; n < 1 {
		t.Errorf("refusals by limit not counted: %d", n)
	}
}

// TestSilentSocketsDoNotLockOut: 5,000 connections that never
// authenticate are bounded (the oldest closed to make room) and timed out,
// and a caller who does authenticate still gets in, quickly.
func TestSilentSocketsDoNotLockOut(t *testing.T) {
	e := startEnv(t)
	e.core.SetLimits(Protocol, core.Limits{MaxPending: 64, LoginTimeout: 3 * time.Second})
	var (
		mu    sync.Mutex
		socks []net.Conn
		wg    sync.WaitGroup
	)
	start := time.Now()
	for w := 0; w < 50; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100; i++ {
				c, err := net.DialTimeout("tcp", e.addr, 5*time.Second)
				if err != nil {
					t.Errorf("dial: %v", err)
					return
				}
				mu.Lock()
				socks = append(socks, c)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range socks {
			c.Close()
		}
	})
	t.Logf("5000 silent sockets opened in %v", time.Since(start))
	connected := time.Now()
	c, err := e.tryConnect(t, "analytics-job")
	if err != nil {
		t.Fatalf("a real caller among 5000 silent sockets: %v", err)
	}
	if d := time.Since(connected); d > 2*time.Second {
		t.Errorf("the real caller took %v to get in", d)
	}
	var n int
	if err := c.QueryRow(context.Background(), "SELECT count(*) FROM orders").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if ev := e.core.LimitStats(Protocol)["pending"]; ev < 4000 {
		t.Errorf("only %d silent connections were closed to make room", ev)
	}
	// The rest time out: a silent socket is closed by the gateway.
	last := socks[len(socks)-1]
	_ = last.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := last.Read(make([]byte, 1)); err == nil || strings.Contains(err.Error(), "timeout") {
		t.Errorf("a silent socket was not closed by the gateway: %v", err)
	}
}

// TestAuthFailureRateLimit: past the limit of failed authentications per
// minute, an address is refused before its token is even verified.
func TestAuthFailureRateLimit(t *testing.T) {
	e := startEnv(t)
	e.core.SetLimits(Protocol, core.Limits{AuthFailuresPerMinute: 5})
	ctx := context.Background()
	for i := 0; i < 5; i++ {
		c, err := pgx.Connect(ctx, e.connString("not-a-token"))
		if err == nil {
			c.Close(ctx)
			t.Fatal("a bad token was accepted")
		}
	}
	_, err := e.tryConnect(t, "analytics-job")
	if pgCode(err) != "53300" || !strings.Contains(err.Error(), "too many failed authentications") {
		t.Fatalf("after 5 failures: %v", err)
	}
}
