package postgres

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// rawSession opens a connection at the protocol level and logs in.
func rawSession(t testing.TB, e *env, subject string) (net.Conn, *pgproto3.Frontend) {
	t.Helper()
	conn, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	fe := pgproto3.NewFrontend(conn, conn)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "svc", "database": "orders"}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	token := e.issuer.Token(t, subject, "gatehouse")
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		switch m := msg.(type) {
		case *pgproto3.AuthenticationCleartextPassword:
			fe.Send(&pgproto3.PasswordMessage{Password: token})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
		case *pgproto3.ErrorResponse:
			t.Fatalf("login: %s", m.Message)
		case *pgproto3.ReadyForQuery:
			return conn, fe
		}
	}
}

// until reads messages up to ReadyForQuery and returns them.
func until(t testing.TB, fe *pgproto3.Frontend) []pgproto3.BackendMessage {
	t.Helper()
	var out []pgproto3.BackendMessage
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			c := *m
			out = append(out, &c)
		case *pgproto3.FunctionCallResponse:
			c := *m
			c.Result = append([]byte(nil), m.Result...)
			out = append(out, &c)
		case *pgproto3.ReadyForQuery:
			return append(out, &pgproto3.ReadyForQuery{TxStatus: m.TxStatus})
		}
	}
}

// TestFastPathFunctionCall: a FunctionCall message is decided by the
// function's name, and denied unless a rule allows it.
func TestFastPathFunctionCall(t *testing.T) {
	e := startEnv(t)
	var oid uint32
	if err := e.pg.Conn(t, "orders").QueryRow(context.Background(), "SELECT 'abs(integer)'::regprocedure::oid").Scan(&oid); err != nil {
		t.Fatal(err)
	}
	_, fe := rawSession(t, e, "analytics-job")
	call := &pgproto3.FunctionCall{Function: oid, ArgFormatCodes: []uint16{0}, Arguments: [][]byte{[]byte("-5")}, ResultFormatCode: 0}
	fe.Send(call)
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	msgs := until(t, fe)
	if er, ok := msgs[0].(*pgproto3.ErrorResponse); !ok || er.Code != "42501" {
		t.Fatalf("fast-path call without a rule: %#v", msgs)
	}
	src := strings.Replace(e.policyF(e.issuer.URL, e.pg.Addr()), `policy "billing" {`, `policy "fastpath" {
  resources  = ["orders"]
  identities = ["analytics-job"]

  rule "abs" {
    effect = "allow"
    on     = ["function_call"]
    when   = "request.statements.all(s, s.functions == ['abs'])"
    reason = "analytics may call abs() by fast path"
  }
}

policy "billing" {`, 1)
	e.publish(t, src)
	fe.Send(call)
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	msgs = until(t, fe)
	if r, ok := msgs[0].(*pgproto3.FunctionCallResponse); !ok || string(r.Result) != "5" {
		if er, ok := msgs[0].(*pgproto3.ErrorResponse); ok {
			t.Fatalf("allowed fast-path call: %s %s", er.Code, er.Message)
		}
		t.Fatalf("allowed fast-path call: %#v", msgs)
	}
}

// garbage are malformed client streams sent after a good login.
var garbage = [][]byte{
	{'Q', 0, 0, 0, 3},                  // length shorter than the header
	{'Q', 0x7f, 0xff, 0xff, 0xff, 'x'}, // length over the limit
	{'Z', 0, 0, 0, 4},                  // a backend message from a client
	{'P', 0, 0, 0, 8, 0, 0, 0, 0},      // Parse with no strings
	{'B', 0, 0, 0, 6, 0, 0},            // truncated Bind
	{'E', 0, 0, 0, 5, 0},               // Execute without max rows
	{'F', 0, 0, 0, 6, 0, 0},            // truncated FunctionCall
	{'d', 0, 0, 0, 4, 'c', 0, 0, 0, 4}, // COPY data with no COPY running
	append([]byte{'Q', 0, 0, 0, 9}, "SELE\x00"...),
	[]byte(strings.Repeat("\x00", 64)),
}

// TestMalformedClientIsolated: one client sending malformed messages ends
// its own session and nothing else: a concurrent session keeps working.
func TestMalformedClientIsolated(t *testing.T) {
	e := startEnv(t)
	good := e.connect(t, "billing-service")
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			var n int
			if err := good.QueryRow(context.Background(), "SELECT count(*) FROM orders").Scan(&n); err != nil {
				select {
				case errs <- err:
				default:
				}
				return
			}
		}
	}()
	for _, g := range garbage {
		conn, _ := rawSession(t, e, "analytics-job")
		if _, err := conn.Write(g); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err := io.Copy(io.Discard, conn)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() && g[0] != 'Q' && g[0] != 'E' && g[0] != 'P' && g[0] != 'B' {
			t.Logf("%q: the gateway waited for more input (a partial message)", g)
		}
		conn.Close()
	}
	close(stop)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatalf("the healthy session failed: %v", err)
	default:
	}
}

// TestFastPathProtectedFunction: a fast-path call has no lineage to mask,
// so one that returns other sessions' SQL is refused for a caller who is
// not the resource's admin, whatever the policy allows.
func TestFastPathProtectedFunction(t *testing.T) {
	e := startEnv(t)
	var oid uint32
	if err := e.pg.Conn(t, "orders").QueryRow(context.Background(), "SELECT 'pg_stat_get_backend_activity(integer)'::regprocedure::oid").Scan(&oid); err != nil {
		t.Fatal(err)
	}
	e.publish(t, strings.Replace(e.policyF(e.issuer.URL, e.pg.Addr()), `policy "billing" {`, `policy "fastpath" {
  resources  = ["orders"]
  identities = ["analytics-job"]

  rule "any" {
    effect = "allow"
    on     = ["function_call"]
    reason = "analytics may call anything by fast path"
  }
}

policy "billing" {`, 1))
	_, fe := rawSession(t, e, "analytics-job")
	fe.Send(&pgproto3.FunctionCall{Function: oid, ArgFormatCodes: []uint16{0}, Arguments: [][]byte{[]byte("1")}, ResultFormatCode: 0})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	msgs := until(t, fe)
	if er, ok := msgs[0].(*pgproto3.ErrorResponse); !ok || er.Code != "42501" || !strings.Contains(er.Message, "other sessions' SQL") {
		t.Fatalf("fast-path pg_stat_get_backend_activity: %#v", msgs)
	}
}

// TestFastPathDynamicSQLRefused: a fast-path call is decided by the
// function's name alone, but query_to_xml and its kin read what their
// arguments name (payments, under a rule that denies it): such a call is
// refused for every caller, masks or not; with SELECT, what it reads is
// judged.
func TestFastPathDynamicSQLRefused(t *testing.T) {
	e := startReviewWritesEnv(t, noPaymentsRule)
	e.pg.Exec(t, "orders", "INSERT INTO payments (order_id, amount) VALUES (1, 42.42)")
	var oid uint32
	if err := e.pg.Conn(t, "orders").QueryRow(context.Background(), "SELECT 'query_to_xml(text, boolean, boolean, text)'::regprocedure::oid").Scan(&oid); err != nil {
		t.Fatal(err)
	}
	_, fe := rawSession(t, e, "dev")
	fe.Send(&pgproto3.FunctionCall{Function: oid, ArgFormatCodes: []uint16{0},
		Arguments: [][]byte{[]byte("select * from payments"), []byte("t"), []byte("f"), []byte("")}, ResultFormatCode: 0})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	msgs := until(t, fe)
	if er, ok := msgs[0].(*pgproto3.ErrorResponse); !ok || er.Code != "42501" || !strings.Contains(er.Message, "call it with SELECT") {
		if r, ok := msgs[0].(*pgproto3.FunctionCallResponse); ok {
			t.Fatalf("fast-path query_to_xml read payments: %s", r.Result)
		}
		t.Fatalf("fast-path query_to_xml: %#v", msgs[0])
	}
}
