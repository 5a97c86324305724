package postgres

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/internal/clock"
)

// listenPolicy lets analytics LISTEN, and gives the orders resource an
// idle timeout of ten minutes.
func listenPolicy(e *env) string {
	p := e.policyF(e.issuer.URL, e.pg.Addr())
	p = strings.Replace(p, `s.command in ['SELECT', 'BEGIN', 'COMMIT', 'ROLLBACK', 'SHOW']`, `s.command in ['SELECT', 'BEGIN', 'COMMIT', 'ROLLBACK', 'SHOW', 'LISTEN']`, 1)
	return strings.Replace(p, `username = "gatehouse"`, `username = "gatehouse"
  idle_timeout = "10m"`, 1)
}

// waitEnd waits up to a second for an idle session to be ended by the
// gateway, and returns the error the client read.
func waitEnd(t *testing.T, c *pgx.Conn) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := c.WaitForNotification(ctx)
	if err == nil {
		t.Fatal("a notification arrived where the session should have ended")
	}
	if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
		t.Fatal("the idle session was not ended within a second")
	}
	return err
}

// notify sends a notification around the gateway.
func notify(t *testing.T, e *env, payload string) {
	t.Helper()
	e.pg.Exec(t, "orders", "SELECT pg_notify('events', $1)", payload)
}

// TestIdleListenerEndedAtExpiry: a LISTEN session that says nothing is
// ended at its token's expiry, within a second; it got the notification
// sent before, which its recording holds, and none after.
func TestIdleListenerEndedAtExpiry(t *testing.T) {
	clk := clock.NewFake(time.Now())
	e := startEnvClock(t, clk)
	e.publish(t, listenPolicy(e))
	ctx := context.Background()
	claims := e.issuer.Claims("pci-auditor", "gatehouse")
	claims["exp"] = clk.Now().Add(30 * time.Second).Unix()
	c, err := pgx.Connect(ctx, e.connString(e.issuer.Sign(t, claims)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "LISTEN events"); err != nil {
		t.Fatal(err)
	}
	notify(t, e, "before-expiry")
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	n, err := c.WaitForNotification(wctx)
	cancel()
	if err != nil || n.Payload != "(withheld by gatehouse: masks apply)" {
		t.Fatalf("the notification before expiry: %+v %v", n, err)
	}
	clk.Advance(time.Minute) // past exp plus the 30s skew
	err = waitEnd(t, c)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "28000" || !strings.Contains(pe.Message, "token expired") {
		t.Fatalf("the session's end: %v", err)
	}
	notify(t, e, "after-expiry")
	evs := sealedEvents(t, e)
	var got []string
	for _, ev := range evs {
		if ev.Type == recorder.TypeServer {
			got = append(got, ev.Channel+"="+ev.Text)
		}
		if ev.Type == recorder.TypeEnd && !strings.Contains(ev.Reason, "token_expired") {
			t.Errorf("session_end reason %q does not say the token expired", ev.Reason)
		}
	}
	if strings.Join(got, " ") != "events=(withheld by gatehouse: masks apply)" {
		t.Fatalf("recorded notifications: %q", got)
	}
}

// TestIdleSessionEndedByRevokingBundle: a bundle that revokes an idle
// session's connection ends it within a second of the swap.
func TestIdleSessionEndedByRevokingBundle(t *testing.T) {
	e := startEnv(t)
	e.publish(t, listenPolicy(e))
	c := e.connect(t, "analytics-job")
	if _, err := c.Exec(context.Background(), "LISTEN events"); err != nil {
		t.Fatal(err)
	}
	e.publish(t, listenPolicy(e)+`
policy "revoke" {
  resources  = ["orders"]
  identities = ["analytics-job"]
  rule "out" {
    effect = "deny"
    on     = ["connect"]
    reason = "analytics is off the orders database"
  }
}`)
	err := waitEnd(t, c)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "42501" || !strings.Contains(pe.Message, "analytics is off") {
		t.Fatalf("the session's end: %v", err)
	}
}

// TestIdleTimeout: a session unused for its resource's idle_timeout is
// ended (57P05); one whose statement is still running is not.
func TestIdleTimeout(t *testing.T) {
	clk := clock.NewFake(time.Now())
	e := startEnvClock(t, clk)
	e.publish(t, listenPolicy(e))
	ctx := context.Background()
	busy := e.connect(t, "billing-service")
	idle := e.connect(t, "analytics-job")
	done := make(chan error, 1)
	go func() {
		_, err := busy.Exec(ctx, "SELECT pg_sleep(2)")
		done <- err
	}()
	time.Sleep(300 * time.Millisecond) // the sleep has reached the database
	clk.Advance(11 * time.Minute)
	err := waitEnd(t, idle)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "57P05" {
		t.Fatalf("the idle session's end: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("the busy session was cut: %v", err)
	}
	if _, err := busy.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("the busy session after its statement: %v", err)
	}
}

// sealedEvents waits for the one session's recording to be sealed and
// reads it.
func sealedEvents(t *testing.T, e *env) []recorder.Event {
	t.Helper()
	ss := waitSealed(t, e, 1)
	evs, err := recorder.ReadEvents(ss[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// TestShutdownCancelsInFlight: a statement still running when the gateway
// shuts down is cancelled upstream (it would otherwise run on), and its
// cancellation is recorded.
func TestShutdownCancelsInFlight(t *testing.T) {
	e := startEnv(t)
	ctx := context.Background()
	c := e.connect(t, "billing-service")
	errc := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, "SELECT pg_sleep(60)")
		errc <- err
	}()
	direct := e.pg.Conn(t, "orders")
	running := func() int {
		var n int
		if err := direct.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for deadline := time.Now().Add(5 * time.Second); running() == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the statement never started")
		}
	}
	e.shutdown()
	if err := <-errc; err == nil {
		t.Fatal("the statement finished as if nothing happened")
	}
	for deadline := time.Now().Add(3 * time.Second); running() != 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the statement still runs on the server after the gateway stopped")
		}
	}
	evs := sealedEvents(t, e)
	found := false
	for _, ev := range evs {
		if ev.Type == recorder.TypeResult && strings.HasPrefix(ev.Error, "57014") {
			found = true
		}
	}
	if !found {
		t.Fatalf("the cancellation is not recorded: %+v", evs)
	}
}
