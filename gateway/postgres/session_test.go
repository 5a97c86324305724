package postgres

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/gatehouse-dev/gatehouse/internal/clock"
)

func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// TestTokenExpiryEndsSession: a token that expires mid-session ends the
// session at the next statement with FATAL 28000. The core's clock moves;
// nothing sleeps.
func TestTokenExpiryEndsSession(t *testing.T) {
	clk := clock.NewFake(time.Now())
	e := startEnvClock(t, clk)
	ctx := context.Background()
	c := e.issuer.Claims("billing-service", "gatehouse")
	c["exp"] = clk.Now().Add(time.Minute).Unix()
	conn, err := pgx.Connect(ctx, e.connString(e.issuer.Sign(t, c)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	// Just before the expiry plus the default 30 s skew: still valid.
	clk.Advance(time.Minute + 29*time.Second)
	if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("within the skew: %v", err)
	}
	clk.Advance(2 * time.Second)
	_, err = conn.Exec(ctx, "SELECT 1")
	if pgCode(err) != "28000" || !strings.Contains(err.Error(), "token expired") {
		t.Fatalf("after expiry: %v", err)
	}
	if !conn.IsClosed() {
		_, err = conn.Exec(ctx, "SELECT 1")
		if err == nil {
			t.Fatal("the session survived its token")
		}
	}
}

// TestReloadAppliesToOpenSessions: a new bundle judges statements of
// sessions opened before it, prepared statements included, and a bundle
// that revokes the connect permission ends the session.
func TestReloadAppliesToOpenSessions(t *testing.T) {
	e := startEnv(t)
	ctx := context.Background()
	c := e.connect(t, "analytics-job")
	if _, err := c.Exec(ctx, "SELECT count(*) FROM orders"); err != nil {
		t.Fatal(err)
	}
	// Prepared while allowed.
	if _, err := c.Prepare(ctx, "count-orders", "SELECT count(*) FROM orders"); err != nil {
		t.Fatal(err)
	}
	// Narrow the read rule to customers only.
	src := strings.Replace(e.policyF(e.issuer.URL, e.pg.Addr()),
		"s.tables.all(t, t.access == 'read')", "s.tables.all(t, t.access == 'read' && t.name == 'customers')", 1)
	e.publish(t, src)
	if _, err := c.Exec(ctx, "SELECT count(*) FROM orders"); pgCode(err) != "42501" {
		t.Fatalf("new rules on the next statement: %v", err)
	}
	if _, err := c.Exec(ctx, "count-orders"); pgCode(err) != "42501" {
		t.Fatalf("a statement prepared before the new bundle: %v", err)
	}
	if _, err := c.Exec(ctx, "SELECT count(*) FROM customers"); err != nil {
		t.Fatalf("still allowed: %v", err)
	}
	// Revoke analytics-job entirely.
	src = strings.Replace(src, `identities = ["analytics-job", "pci-auditor", "billing-service"]`, `identities = ["pci-auditor", "billing-service"]`, 1)
	e.publish(t, src)
	_, err := c.Exec(ctx, "SELECT count(*) FROM customers")
	if pgCode(err) != "42501" || !strings.Contains(err.Error(), "revokes the connection") {
		t.Fatalf("after connect is revoked: %v", err)
	}
}

// TestHotReloadUnderLoad: clients run transactions while the bundle file is
// replaced 20 times; no transaction fails, tampered and rolled-back bundles
// are refused, and open sessions see each new bundle.
func TestHotReloadUnderLoad(t *testing.T) {
	e := startEnv(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.bundle")
	replace := func(data []byte) {
		tmp := filepath.Join(dir, ".tmp")
		if err := os.WriteFile(tmp, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	src := e.policyF(e.issuer.URL, e.pg.Addr())
	replace(e.sign(t, src, e.rev.Add(1)))
	ctx, cancel := context.WithCancel(context.Background())
	watchDone := make(chan struct{})
	go func() { defer close(watchDone); e.store.WatchFile(ctx, path, 100*time.Millisecond) }()
	defer func() { cancel(); <-watchDone }()
	waitRev := func(rev uint64) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if e.store.Current().Revision == rev {
				return
			}
		}
		t.Fatalf("revision %d not active (have %d)", rev, e.store.Current().Revision)
	}
	waitRev(e.rev.Load())

	var ok, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := e.connect(t, "billing-service")
			mode := pgx.QueryExecModeSimpleProtocol
			if i%2 == 1 {
				mode = pgx.QueryExecModeCacheStatement
			}
			for {
				select {
				case <-stop:
					return
				default:
				}
				tx, err := c.Begin(ctx)
				if err == nil {
					_, err = tx.Exec(ctx, "INSERT INTO billing.invoices (order_id, amount) VALUES (1, 1)", mode)
					if err == nil {
						_, err = tx.Exec(ctx, "SELECT count(*) FROM orders", mode)
					}
					if err == nil {
						err = tx.Commit(ctx)
					} else {
						_ = tx.Rollback(ctx)
					}
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	// A long-lived analytics session sees each new bundle on its next
	// statement: odd revisions forbid it to read orders.
	a := e.connect(t, "analytics-job")
	narrow := strings.Replace(src, "s.tables.all(t, t.access == 'read')", "s.tables.all(t, t.access == 'read' && t.name == 'customers')", 1)
	for i := 0; i < 20; i++ {
		next := src
		if i%2 == 0 {
			next = narrow
		}
		rev := e.rev.Add(1)
		replace(e.sign(t, next, rev))
		waitRev(rev)
		_, err := a.Exec(ctx, "SELECT count(*) FROM orders")
		if (i%2 == 0) != (pgCode(err) == "42501") {
			t.Errorf("revision %d: analytics read of orders gave %v", rev, err)
		}
		if i == 7 {
			tampered := e.sign(t, src, e.rev.Load()+1)
			tampered[len(tampered)/3] ^= 1
			replace(tampered)
			time.Sleep(300 * time.Millisecond)
			if e.store.Current().Revision != rev {
				t.Error("a tampered bundle was activated")
			}
		}
		if i == 13 {
			replace(e.sign(t, src, rev-5))
			time.Sleep(300 * time.Millisecond)
			if e.store.Current().Revision != rev {
				t.Error("a rollback was activated")
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if failed.Load() != 0 || ok.Load() < 20 {
		t.Fatalf("%d transactions ok, %d failed (first: %v)", ok.Load(), failed.Load(), firstErr.Load())
	}
	if f := e.store.Stats.ReloadFailures.Load(); f < 2 {
		t.Errorf("reload failures counted: %d, want the tampered and the rolled-back bundle", f)
	}
	t.Logf("%d transactions through 20 reloads", ok.Load())
}

// tapDialer records every byte the client receives.
type tap struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

type tapConn struct {
	net.Conn
	t *tap
}

func (c tapConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.t.mu.Lock()
	c.t.buf.Write(p[:n])
	c.t.mu.Unlock()
	return n, err
}

// TestUpstreamPasswordNeverLeaks: the upstream password appears neither in
// the bytes clients receive (through successes, denials, errors and a
// failed upstream login) nor in the gateway's log.
func TestUpstreamPasswordNeverLeaks(t *testing.T) {
	e := startEnv(t)
	ctx := context.Background()
	tp := &tap{}
	cfg, err := pgx.ParseConfig(e.connString(e.issuer.Token(t, "billing-service", "gatehouse")))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return tapConn{c, tp}, nil
	}
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"SELECT * FROM customers", "SHOW ALL", "SELECT current_setting('application_name')", "DROP TABLE customers", "SELEC 1", "SELECT 1/0"} {
		rows, err := c.Query(ctx, q, pgx.QueryExecModeSimpleProtocol)
		if err == nil {
			rows.Close()
		}
	}
	c.Close(ctx)
	// Break the upstream login: the client must learn nothing of why.
	e.pg.Exec(t, "postgres", "ALTER ROLE gatehouse PASSWORD 'rotated-elsewhere'")
	cfg2 := cfg.Copy()
	if _, err := pgx.ConnectConfig(ctx, cfg2); pgCode(err) != "08006" {
		t.Errorf("upstream login failure: %v", err)
	}
	tp.mu.Lock()
	got := tp.buf.String()
	tp.mu.Unlock()
	if strings.Contains(got, e.pgPass) {
		t.Error("the upstream password reached a client")
	}
	if strings.Contains(e.logs.String(), e.pgPass) {
		t.Error("the upstream password is in the gateway log")
	}
	if len(got) < 100 {
		t.Errorf("the tap saw only %d bytes", len(got))
	}
}

// TestCancelRequest: a cancel with the gateway's key reaches the upstream.
func TestCancelRequest(t *testing.T) {
	e := startEnv(t)
	src := strings.Replace(e.policyF(e.issuer.URL, e.pg.Addr()), "f in ['count', 'now', 'lower']", "f in ['count', 'now', 'lower', 'pg_sleep']", 1)
	e.publish(t, src)
	ctx := context.Background()
	c := e.connect(t, "analytics-job")
	go func() {
		time.Sleep(300 * time.Millisecond)
		_ = c.PgConn().CancelRequest(context.Background())
	}()
	start := time.Now()
	_, err := c.Exec(ctx, "SELECT pg_sleep(20)")
	if pgCode(err) != "57014" || time.Since(start) > 10*time.Second {
		t.Fatalf("cancelled query: %v after %s", err, time.Since(start))
	}
	if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("after a cancel: %v", err)
	}
}

// TestEndSendsItsReason: when the gateway ends a session (here its token
// expires) just as the caller sends a statement, the caller reads why,
// FATAL 28000, and never a bare closed connection: the side that reads
// the caller's statement must not close the connection under the FATAL
// message the other side is writing.
func TestEndSendsItsReason(t *testing.T) {
	clk := clock.NewFake(time.Now())
	e := startEnvClock(t, clk)
	ctx := context.Background()
	for i := range 150 {
		c := e.issuer.Claims("billing-service", "gatehouse")
		c["exp"] = clk.Now().Add(time.Minute).Unix()
		conn, err := pgx.Connect(ctx, e.connString(e.issuer.Sign(t, c)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		go clk.Advance(2 * time.Minute)
		_, err = conn.Exec(ctx, "SELECT 1")
		conn.Close(ctx)
		if pgCode(err) != "28000" || !strings.Contains(err.Error(), "token expired") {
			t.Fatalf("run %d: %v", i, err)
		}
	}
}
