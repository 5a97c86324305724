package postgres

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Protocol-level regressions: each test is an attack or a pipeline shape
// that once made the gateway pair a response with the wrong request, run a
// statement policy denied, hang, or leak.

func send(t *testing.T, fe *pgproto3.Frontend, msgs ...pgproto3.FrontendMessage) {
	t.Helper()
	for _, m := range msgs {
		fe.Send(m)
	}
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
}

// collect reads messages up to ReadyForQuery, returning a compact trace and
// the text values of DataRows.
func collect(t *testing.T, conn net.Conn, fe *pgproto3.Frontend, d time.Duration) (trace []string, vals []string, timedOut bool) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(d))
	defer conn.SetReadDeadline(time.Time{})
	for {
		msg, err := fe.Receive()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				return trace, vals, true
			}
			trace = append(trace, "ERR:"+err.Error())
			return trace, vals, false
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			trace = append(trace, "D")
			for _, v := range m.Values {
				vals = append(vals, string(v))
			}
		case *pgproto3.ErrorResponse:
			trace = append(trace, "E("+m.Code+":"+m.Message+")")
		case *pgproto3.CommandComplete:
			trace = append(trace, "C("+string(m.CommandTag)+")")
		case *pgproto3.ReadyForQuery:
			trace = append(trace, "Z("+string(m.TxStatus)+")")
			return trace, vals, false
		default:
			trace = append(trace, typeName(msg))
		}
	}
}

func typeName(m any) string { return strings.TrimPrefix(fmt.Sprintf("%T", m), "*pgproto3.") }

func allowCopy(t *testing.T, e *env) {
	t.Helper()
	e.publish(t, strings.Replace(e.policyF(e.issuer.URL, e.pg.Addr()), `'INSERT', 'UPDATE', 'DELETE', 'SELECT'`, `'COPY', 'INSERT', 'UPDATE', 'DELETE', 'SELECT'`, 1))
}

func waitCopyIn(t *testing.T, conn net.Conn, fe *pgproto3.Frontend) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer conn.SetReadDeadline(time.Time{})
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if er, ok := msg.(*pgproto3.ErrorResponse); ok {
			t.Fatalf("copy: %s", er.Message)
		}
		if _, ok := msg.(*pgproto3.CopyInResponse); ok {
			return
		}
	}
}

// A Sync sent during COPY FROM STDIN gets no response from PostgreSQL; the
// gateway must not expect one, or every later result is paired with the
// request before it (and goes out unmasked).
func TestSyncDuringCopyIn(t *testing.T) {
	e := startEnv(t)
	allowCopy(t, e)
	conn, fe := rawSession(t, e, "billing-service")
	send(t, fe, &pgproto3.Query{String: "COPY billing.invoices (order_id, amount) FROM STDIN"})
	waitCopyIn(t, conn, fe)
	send(t, fe, &pgproto3.Sync{}, &pgproto3.CopyData{Data: []byte("1\t1\n")}, &pgproto3.CopyDone{})
	if tr, _, _ := collect(t, conn, fe, 5*time.Second); len(tr) < 2 || tr[len(tr)-2] != "C(COPY 1)" {
		t.Fatalf("copy: %v", tr)
	}
	send(t, fe, &pgproto3.Query{String: "SELECT email FROM customers ORDER BY id"})
	_, vals, _ := collect(t, conn, fe, 5*time.Second)
	if len(vals) != 2 || vals[0] != "j***@example.com" {
		t.Fatalf("after COPY: %q", vals)
	}
}

// A Query during COPY IN is a protocol violation: PostgreSQL ends the
// connection, and so does the gateway, before deciding anything.
func TestQueryDuringCopyIn(t *testing.T) {
	e := startEnv(t)
	allowCopy(t, e)
	conn, fe := rawSession(t, e, "billing-service")
	send(t, fe, &pgproto3.Query{String: "COPY billing.invoices (order_id, amount) FROM STDIN"})
	waitCopyIn(t, conn, fe)
	send(t, fe, &pgproto3.Query{String: "DROP TABLE customers"})
	tr, _, _ := collect(t, conn, fe, 5*time.Second)
	if !strings.Contains(strings.Join(tr, " "), "08P01") {
		t.Fatalf("query during COPY: %v", tr)
	}
}

// A second Parse of an existing name fails upstream; the gateway's record
// must keep the statement the upstream really has, so that after a reload an
// Execute is decided by what runs.
func TestStatementNameReuse(t *testing.T) {
	e := startEnv(t)
	conn, fe := rawSession(t, e, "billing-service")
	send(t, fe, &pgproto3.Parse{Name: "s1", Query: "DELETE FROM billing.invoices WHERE id > 0"}, &pgproto3.Sync{})
	collect(t, conn, fe, 5*time.Second)
	send(t, fe, &pgproto3.Parse{Name: "s1", Query: "SELECT 1"}, &pgproto3.Sync{})
	if tr, _, _ := collect(t, conn, fe, 5*time.Second); !strings.Contains(strings.Join(tr, " "), "42P05") {
		t.Fatalf("second Parse: %v", tr)
	}
	e.publish(t, strings.Replace(e.policyF(e.issuer.URL, e.pg.Addr()), `'INSERT', 'UPDATE', 'DELETE', 'SELECT'`, `'SELECT'`, 1))
	send(t, fe, &pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	tr, _, _ := collect(t, conn, fe, 5*time.Second)
	if !strings.Contains(strings.Join(tr, " "), "42501") {
		t.Errorf("execute of the real s1: %v", tr)
	}
	var n int
	if err := e.pg.Conn(t, "orders").QueryRow(context.Background(), "SELECT count(*) FROM billing.invoices").Scan(&n); err != nil || n == 0 {
		t.Fatalf("the DELETE ran: %d %v", n, err)
	}
}

// An error is passed on as soon as the upstream sends it, not held until
// Sync: a client that sends Flush and waits gets it.
func TestErrorBeforeSync(t *testing.T) {
	e := startEnv(t)
	conn, fe := rawSession(t, e, "analytics-job")
	send(t, fe, &pgproto3.Parse{Name: "y", Query: "DROP TABLE customers"}, &pgproto3.Flush{})
	_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	msg, err := fe.Receive()
	if er, ok := msg.(*pgproto3.ErrorResponse); err != nil || !ok || er.Code != "42501" {
		t.Fatalf("after Parse+Flush: %#v %v", msg, err)
	}
	_ = conn.SetReadDeadline(time.Time{})
	send(t, fe, &pgproto3.Sync{})
	if tr, _, _ := collect(t, conn, fe, 3*time.Second); len(tr) != 1 || tr[0] != "Z(I)" {
		t.Fatalf("after Sync: %v", tr)
	}
	// pgx's pipeline API relies on it.
	c := e.connect(t, "analytics-job")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	p := c.PgConn().StartPipeline(ctx)
	p.SendPrepare("bad", "SELEC 1", nil)
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	// It must not hang waiting for a Sync the client has not sent.
	_, _ = p.GetResults()
	if ctx.Err() != nil {
		t.Fatalf("pipeline hung: %v", ctx.Err())
	}
}

// A client that stops reading does not keep the gateway from shutting
// down.
func TestNonReadingClientDoesNotBlockShutdown(t *testing.T) {
	e := startEnv(t)
	srv := New(Config{InsecurePlaintext: true}, e.core, WithLogger(e.srv.log), WithSecrets(e.srv.secrets))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	conn, fe := rawSession(t, &env{issuer: e.issuer, addr: ln.Addr().String()}, "analytics-job")
	defer conn.Close()
	q := "SELECT * FROM orders a, orders b, orders c, orders d, orders e, orders f, orders g, orders h, orders i, orders j, orders k, orders l, orders m, orders n, orders o, orders p, orders q, orders r"
	send(t, fe, &pgproto3.Query{String: q})
	time.Sleep(2 * time.Second) // buffers fill; the client never reads
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return 10s after its context ended")
	}
}

// The upstream dying while a client pipelines ends the session cleanly:
// no panic, and no session left behind.
func TestUpstreamDeathMidPipeline(t *testing.T) {
	e := startEnv(t)
	for i := 0; i < 3; i++ {
		conn, fe := rawSession(t, e, "analytics-job")
		go io.Copy(io.Discard, conn)
		for j := 0; j < 10; j++ {
			fe.Send(&pgproto3.Close{ObjectType: 'S', Name: "x"})
		}
		_ = fe.Flush()
		time.Sleep(100 * time.Millisecond)
		e.pg.Exec(t, "postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'gatehouse:analytics-job'")
		time.Sleep(300 * time.Millisecond)
		fe.Send(&pgproto3.Sync{})
		for j := 0; j < 6000; j++ {
			fe.Send(&pgproto3.Close{ObjectType: 'S', Name: "x"})
		}
		_ = fe.Flush()
		time.Sleep(300 * time.Millisecond)
		conn.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := 0
		e.srv.sessions.Range(func(k, v any) bool { left++; return true })
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions left behind", left)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if strings.Contains(e.logs.String(), "panic") {
		t.Fatal("a session panicked")
	}
}

// A statement whose result could not be masked is refused before it runs,
// with an ERROR that leaves the session usable: in a pipeline the rest of
// the batch is skipped by the upstream, and in a simple query string no
// statement of the string runs.
func TestRefusedBeforeRunning(t *testing.T) {
	e := startEnv(t)
	conn, fe := rawSession(t, e, "billing-service")
	send(t, fe,
		&pgproto3.Parse{Query: "SELECT lower(email) FROM customers"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: "INSERT INTO billing.invoices (order_id, amount) VALUES (1, 7)"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Sync{})
	tr, _, _ := collect(t, conn, fe, 5*time.Second)
	if !strings.Contains(strings.Join(tr, " "), "42501") || strings.Contains(strings.Join(tr, " "), "FATAL") {
		t.Fatalf("pipeline: %v", tr)
	}
	send(t, fe, &pgproto3.Query{String: "BEGIN; INSERT INTO billing.invoices (order_id, amount) VALUES (1, 7); SELECT lower(email) FROM customers; COMMIT"})
	tr, _, _ = collect(t, conn, fe, 5*time.Second)
	if !strings.Contains(strings.Join(tr, " "), "42501") || strings.Contains(strings.Join(tr, " "), "FATAL") {
		t.Fatalf("simple query: %v", tr)
	}
	var n int
	if err := e.pg.Conn(t, "orders").QueryRow(context.Background(), "SELECT count(*) FROM billing.invoices WHERE amount = 7").Scan(&n); err != nil || n != 0 {
		t.Fatalf("a statement ran that the gateway refused: %d %v", n, err)
	}
	send(t, fe, &pgproto3.Query{String: "SELECT count(*) FROM customers"})
	if tr, _, _ = collect(t, conn, fe, 5*time.Second); !strings.Contains(strings.Join(tr, " "), "C(SELECT 1)") {
		t.Fatalf("the session is not usable after a refusal: %v", tr)
	}
	// UNION ALL keeps each branch's values: the column carries both
	// branches' sources, and is masked as the stronger mask says.
	c := e.connect(t, "analytics-job")
	rows, err := c.Query(context.Background(), "SELECT name FROM customers UNION ALL SELECT email FROM customers")
	if err != nil {
		t.Fatal(err)
	}
	vals, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(vals) != 4 {
		t.Fatalf("UNION ALL: %v %v", vals, err)
	}
	for _, v := range vals {
		if strings.Contains(v, "jane.doe") || v == "Jane Doe" || strings.Contains(v, "raj@") {
			t.Fatalf("UNION ALL leaked %q: %v", v, vals)
		}
	}
}

// Turning standard_conforming_strings off (or changing the encoding) is
// refused whatever the policy says: the next, pipelined statement would be
// read differently by the server than by the gateway.
func TestParserSettingsRefused(t *testing.T) {
	e := startEnv(t)
	e.publish(t, strings.Replace(e.policyF(e.issuer.URL, e.pg.Addr()), `s.command in ['SELECT', 'BEGIN', 'COMMIT', 'ROLLBACK', 'SHOW']`, `s.command in ['SELECT', 'BEGIN', 'COMMIT', 'ROLLBACK', 'SHOW', 'SET']`, 1))
	conn, fe := rawSession(t, e, "analytics-job")
	send(t, fe,
		&pgproto3.Query{String: "SET standard_conforming_strings = off"},
		&pgproto3.Query{String: `SELECT 'a\' , 'b; DELETE FROM orders WHERE id > 0; --'`})
	tr, _, _ := collect(t, conn, fe, 5*time.Second)
	if !strings.Contains(strings.Join(tr, " "), "42501") {
		t.Fatalf("SET standard_conforming_strings: %v", tr)
	}
	collect(t, conn, fe, 5*time.Second)
	for _, q := range []string{"SET client_encoding = 'SJIS'", "SET NAMES 'SJIS'", "SELECT set_config('standard_conforming_strings', 'off', false)", "RESET standard_conforming_strings"} {
		send(t, fe, &pgproto3.Query{String: q})
		if tr, _, _ := collect(t, conn, fe, 5*time.Second); !strings.Contains(strings.Join(tr, " "), "42501") {
			t.Errorf("%s: %v", q, tr)
		}
	}
	var n int
	if err := e.pg.Conn(t, "orders").QueryRow(context.Background(), "SELECT count(*) FROM orders").Scan(&n); err != nil || n != 2 {
		t.Fatalf("orders: %d %v", n, err)
	}
}

// Batches with a denied statement in the middle, in every exec mode, keep
// masking right during and after.
func TestBatchWithDenial(t *testing.T) {
	e := startEnv(t)
	ctx := context.Background()
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeDescribeExec, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol} {
		cfg, err := pgx.ParseConfig(e.connString(e.issuer.Token(t, "analytics-job", "gatehouse")))
		if err != nil {
			t.Fatal(err)
		}
		cfg.DefaultQueryExecMode = mode
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		b := &pgx.Batch{}
		b.Queue("SELECT email FROM customers WHERE id = 1")
		b.Queue("DELETE FROM orders WHERE id = 1")
		b.Queue("SELECT email FROM customers WHERE id = 2")
		br := c.SendBatch(ctx, b)
		var s1, s3 string
		_ = br.QueryRow().Scan(&s1)
		_, e2 := br.Exec()
		_ = br.QueryRow().Scan(&s3)
		_ = br.Close()
		if s1 == "jane.doe@example.com" || s3 == "raj@example.org" || pgCode(e2) != "42501" {
			t.Errorf("%v: %q %v %q", mode, s1, e2, s3)
		}
		if vals := rowStrings(t, c, "SELECT email FROM customers ORDER BY id", mode); contains(vals, "jane.doe@example.com") {
			t.Errorf("%v: unmasked after the batch: %q", mode, vals)
		}
		c.Close(ctx)
	}
}

// A reload re-verifies open sessions' tokens with the new bundle's
// identity providers: an audience no longer accepted ends the session.
func TestReloadReverifiesToken(t *testing.T) {
	e := startEnv(t)
	c := e.connect(t, "analytics-job")
	e.publish(t, strings.Replace(e.policyF(e.issuer.URL, e.pg.Addr()), `audiences = ["gatehouse"]`, `audiences = ["something-else"]`, 1))
	if _, err := c.Exec(context.Background(), "SELECT count(*) FROM orders"); pgCode(err) != "28000" {
		t.Fatalf("after the audience is dropped: %v", err)
	}
}

// Partial executes, binary formats and SQL cursors stay masked.
func TestPortalsAndCursorsMasked(t *testing.T) {
	e := startEnv(t)
	e.publish(t, strings.Replace(e.policyF(e.issuer.URL, e.pg.Addr()), `s.command in ['SELECT', 'BEGIN', 'COMMIT', 'ROLLBACK', 'SHOW']`, `s.command in ['SELECT', 'BEGIN', 'COMMIT', 'ROLLBACK', 'SHOW', 'DECLARE CURSOR', 'FETCH']`, 1))
	conn, fe := rawSession(t, e, "analytics-job")
	send(t, fe, &pgproto3.Query{String: "BEGIN"})
	collect(t, conn, fe, 5*time.Second)
	send(t, fe,
		&pgproto3.Parse{Name: "p", Query: "SELECT email, card_number, id FROM customers ORDER BY id"},
		&pgproto3.Bind{DestinationPortal: "cur", PreparedStatement: "p", ResultFormatCodes: []int16{1}},
		&pgproto3.Execute{Portal: "cur", MaxRows: 1}, &pgproto3.Sync{})
	_, vals, _ := collect(t, conn, fe, 5*time.Second)
	send(t, fe, &pgproto3.Execute{Portal: "cur", MaxRows: 1}, &pgproto3.Sync{})
	_, vals2, _ := collect(t, conn, fe, 5*time.Second)
	send(t, fe, &pgproto3.Query{String: "DECLARE c BINARY CURSOR FOR SELECT email, card_number FROM customers; FETCH ALL c"})
	_, vals3, _ := collect(t, conn, fe, 5*time.Second)
	all := append(append(vals, vals2...), vals3...)
	if len(all) < 6 {
		t.Fatalf("values: %q", all)
	}
	for _, v := range all {
		if strings.Contains(v, "jane.doe@example.com") || strings.Contains(v, "raj@example.org") || strings.Contains(v, "4111 1111") {
			t.Errorf("unmasked: %q", v)
		}
	}
}

var _ = fmt.Sprint

// TestErrorAtSyncKeepsTheNextBatches: an error PostgreSQL reports at Sync
// (a deferred constraint checked at the implicit commit) belongs to the
// Sync; the batches pipelined after it are answered as usual, masked.
func TestErrorAtSyncKeepsTheNextBatches(t *testing.T) {
	e := startEnv(t)
	e.pg.Exec(t, "orders", "ALTER TABLE billing.invoices ADD CONSTRAINT invoices_once UNIQUE (order_id, amount) DEFERRABLE INITIALLY DEFERRED")
	// A session the gateway ends mid-pipeline leaves the pipeline waiting:
	// fail in seconds, not at the test binary's timeout.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := e.connect(t, "billing-service")
	p := c.PgConn().StartPipeline(ctx)
	p.SendQueryParams("INSERT INTO billing.invoices (order_id, amount) VALUES (1, 555), (1, 555)", nil, nil, nil, nil)
	p.SendPipelineSync()
	p.SendQueryParams("SELECT 41 + 1", nil, nil, nil, nil)
	p.SendPipelineSync()
	p.SendQueryParams("SELECT email FROM customers WHERE id = 1", nil, nil, nil, nil)
	p.SendPipelineSync()
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	var rows [][]string
	var errs []string
	for syncs := 0; syncs < 3; {
		res, err := p.GetResults()
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		switch r := res.(type) {
		case *pgconn.PipelineSync:
			syncs++
		case *pgconn.ResultReader:
			var got []string
			for r.NextRow() {
				got = append(got, string(r.Values()[0]))
			}
			if _, err := r.Close(); err != nil {
				errs = append(errs, err.Error())
			}
			rows = append(rows, got)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatalf("closing the pipeline: %v", err)
	}
	if len(errs) != 1 || !strings.Contains(errs[0], "23505") {
		t.Fatalf("errors %q, want the deferred unique violation alone", errs)
	}
	if len(rows) != 3 || len(rows[1]) != 1 || rows[1][0] != "42" || len(rows[2]) != 1 || strings.Contains(rows[2][0], "jane.doe@") {
		t.Fatalf("results after the error at Sync: %q (want 42, then a masked email)", rows)
	}
	// The session goes on.
	var n int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM billing.invoices WHERE amount = 555").Scan(&n); err != nil || n != 0 {
		t.Fatalf("after the pipeline: %d %v", n, err)
	}
}
