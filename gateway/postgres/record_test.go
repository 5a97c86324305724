package postgres

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
)

// waitRecordings waits until n recordings are sealed.
func waitSealed(t *testing.T, e *env, n int) []recorder.Summary {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		ss, err := recorder.List(e.rec.Dir())
		if err != nil {
			t.Fatal(err)
		}
		sealed := 0
		for _, s := range ss {
			if s.Sealed {
				sealed++
			}
		}
		if sealed >= n {
			return ss
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d recordings sealed: %+v", sealed, n, ss)
		}
	}
}

// TestRecording: a session's recording holds its start, every statement
// with facts and decision, outcomes and masked columns, and a verifying
// seal; never the token, the upstream password or a masked value.
func TestRecording(t *testing.T) {
	e := startEnv(t)
	ctx := context.Background()
	token := e.issuer.Token(t, "analytics-job", "gatehouse")
	c, err := pgx.Connect(ctx, e.connString(token))
	if err != nil {
		t.Fatal(err)
	}
	var email string
	if err := c.QueryRow(ctx, "SELECT email FROM customers WHERE id = 1").Scan(&email); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "DROP TABLE customers"); pgCode(err) != "42501" {
		t.Fatal(err)
	}
	// PostgreSQL quotes the value it could not convert: with masks in
	// force, the message must not carry it to the caller or the recording.
	// (A computation over a masked column is refused unless the mask
	// allows it; these masks do.)
	e.publish(t, strings.ReplaceAll(e.policyF(e.issuer.URL, e.pg.Addr()), `  method    = "`, "  allow_in_predicates = true\n  method    = \""))
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		for _, q := range []string{"SELECT (SELECT card_number FROM customers WHERE id = 1)::int", "SELECT (SELECT email FROM customers WHERE id = 1)::int"} {
			_, err := c.Exec(ctx, q, mode)
			if pgCode(err) != "22P02" || strings.Contains(err.Error(), "4111") || strings.Contains(err.Error(), "jane.doe") {
				t.Errorf("%v %s: %v", mode, q, err)
			}
		}
	}
	if _, err := c.Exec(ctx, "SELECT count(*) FROM orders", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	c.Close(ctx)
	ss := waitSealed(t, e, 1)
	rep, err := recorder.Verify(ss[0].Path, e.recKeys)
	if err != nil || !rep.OK() {
		t.Fatalf("verify: %+v %v", rep, err)
	}
	evs, err := recorder.ReadEvents(ss[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	var sawDrop, sawMasked, sawRows bool
	for _, ev := range evs {
		types = append(types, ev.Type)
		if ev.Type == recorder.TypeRequest && strings.Contains(ev.Text, "DROP TABLE") && ev.Effect == "deny" && strings.Contains(string(ev.Request), `"command":"DROP TABLE"`) {
			sawDrop = true
		}
		if ev.Type == recorder.TypeMasked && strings.Join(ev.Fields, ",") == "public.customers.email=partial" {
			sawMasked = true
		}
		if ev.Type == "result" && ev.Rows == 1 {
			sawRows = true
		}
	}
	if evs[0].Identity != "analytics-job" || evs[0].Resource != "orders" || evs[0].BundleDigest == "" || evs[0].Protocol != "postgres" ||
		evs[0].Format != recorder.FormatVersion || !sawDrop || !sawMasked || !sawRows {
		t.Errorf("events: %v\nstart %+v", types, evs[0])
	}
	raw, err := os.ReadFile(ss[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	for name, secret := range map[string]string{"token": token, "upstream password": e.pgPass, "unmasked email": "jane.doe@example.com", "card number": "4111 1111 1111 1111"} {
		if strings.Contains(string(raw), secret) {
			t.Errorf("the recording holds the %s", name)
		}
	}
	var first map[string]any
	_ = json.Unmarshal(raw[:strings.IndexByte(string(raw), '\n')], &first)
	if first["client_addr"] == "" {
		t.Error("no client address")
	}
}

// TestRecorderFailureRefusesStatements: when events cannot be made durable,
// statements are refused with 58030 and none reaches the database.
func TestRecorderFailureRefusesStatements(t *testing.T) {
	e := startEnv(t)
	ctx := context.Background()
	c := e.connect(t, "billing-service")
	if _, err := c.Exec(ctx, "INSERT INTO billing.invoices (order_id, amount) VALUES (1, 11)"); err != nil {
		t.Fatal(err)
	}
	e.failSync.Store(true)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		_, err := c.Exec(ctx, "INSERT INTO billing.invoices (order_id, amount) VALUES (1, 12)", mode)
		if pgCode(err) != "58030" {
			t.Fatalf("mode %v: %v", mode, err)
		}
	}
	var n int
	if err := e.pg.Conn(t, "orders").QueryRow(ctx, "SELECT count(*) FROM billing.invoices WHERE amount = 12").Scan(&n); err != nil || n != 0 {
		t.Fatalf("a statement that was not recorded reached the database: %d %v", n, err)
	}
	if strings.Contains(e.pg.QueryLog(t), "VALUES (1, 12)") {
		t.Error("the unrecorded statement is in the server's log")
	}
	// New sessions are refused too.
	if _, err := pgx.Connect(ctx, e.connString(e.issuer.Token(t, "billing-service", "gatehouse"))); pgCode(err) != "58030" {
		t.Errorf("a session that cannot be recorded: %v", err)
	}
	if n := e.rec.Stats.Errors.Load(); n < 3 {
		t.Errorf("recorder errors counted: %d", n)
	}
	_ = filepath.Join
}

// TestOverlappedDurability: with Config.BeforeResponse, statements are
// recorded as before (the same events, sealed, verifying), and when the
// event of a statement already forwarded cannot be made durable, its
// result is withheld: the caller gets 58030 and its session ends, and new
// sessions are refused, as in the default mode.
func TestOverlappedDurability(t *testing.T) {
	e := startEnvWith(t, envSetup{proxy: Config{BeforeResponse: true}})
	ctx := context.Background()
	c := e.connect(t, "billing-service")
	for i, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec} {
		if _, err := c.Exec(ctx, "INSERT INTO billing.invoices (order_id, amount) VALUES (1, $1)", mode, 20+i); err != nil {
			t.Fatalf("mode %v: %v", mode, err)
		}
		var n int
		if err := c.QueryRow(ctx, "SELECT count(*) FROM billing.invoices WHERE amount = $1", mode, 20+i).Scan(&n); err != nil || n != 1 {
			t.Fatalf("mode %v: %d %v", mode, n, err)
		}
	}
	// Masking holds: the overlapped wait sits before the response is
	// passed on, after it is masked.
	var email string
	if err := c.QueryRow(ctx, "SELECT email FROM customers WHERE id = 1").Scan(&email); err != nil || strings.Contains(email, "jane.doe@") {
		t.Fatalf("email %q, %v: want it masked", email, err)
	}
	c.Close(ctx)
	ss := waitSealed(t, e, 1)
	rep, err := recorder.Verify(ss[0].Path, e.recKeys)
	if err != nil || !rep.OK() {
		t.Fatalf("the recording does not verify: %+v %v", rep, err)
	}
	evs, err := recorder.ReadEvents(ss[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	var inserts int
	for _, ev := range evs {
		if recorder.IsRequest(ev.Type) && strings.Contains(ev.Text, "INSERT INTO billing.invoices") {
			inserts++
		}
	}
	if inserts != 3 {
		t.Errorf("%d INSERT events recorded, want 3", inserts)
	}

	// The disk fails: a statement forwarded meanwhile gets no result.
	c = e.connect(t, "billing-service")
	e.failSync.Store(true)
	_, err = c.Exec(ctx, "SELECT id FROM billing.invoices WHERE amount = 20", pgx.QueryExecModeSimpleProtocol)
	if pgCode(err) != "58030" {
		t.Fatalf("a statement whose event could not be made durable: %v, want 58030", err)
	}
	if !c.IsClosed() {
		if _, err := c.Exec(ctx, "SELECT 1"); err == nil {
			t.Error("the session goes on after a result was withheld")
		}
	}
	if _, err := pgx.Connect(ctx, e.connString(e.issuer.Token(t, "billing-service", "gatehouse"))); pgCode(err) != "58030" {
		t.Errorf("a session that cannot be recorded: %v", err)
	}
}

// TestOverlappedBarrierCoversOtherSessions: in the overlapped mode a
// response may show another session's forwarded statement (its committed
// row, its NOTIFY), so nothing reaches any caller while an event written
// before it is not durable: a listening session with no statement of its
// own gets 58030, not the notification, once the disk has failed.
func TestOverlappedBarrierCoversOtherSessions(t *testing.T) {
	e := startEnvWith(t, envSetup{proxy: Config{BeforeResponse: true}})
	e.publish(t, listenPolicy(e))
	ctx := context.Background()
	listener := e.connect(t, "analytics-job")
	if _, err := listener.Exec(ctx, "LISTEN events"); err != nil {
		t.Fatal(err)
	}
	writer := e.connect(t, "billing-service")
	e.failSync.Store(true)
	if _, err := writer.Exec(ctx, "INSERT INTO billing.invoices (order_id, amount) VALUES (1, 77)", pgx.QueryExecModeSimpleProtocol); pgCode(err) != "58030" {
		t.Fatalf("the writer: %v, want 58030", err)
	}
	notify(t, e, "after the failure")
	if err := waitEnd(t, listener); pgCode(err) != "58030" {
		t.Fatalf("the listener: %v, want 58030 and no notification", err)
	}
}

// TestRecordingRedactsPasswords: a caller's statement that sets a
// password runs as sent, but the recording keeps its text and facts with
// the password redacted, through the simple and the extended protocol.
func TestRecordingRedactsPasswords(t *testing.T) {
	e := startEnv(t)
	ctx := context.Background()
	e.publish(t, e.policyF(e.issuer.URL, e.pg.Addr())+`
policy "roles" {
  resources  = ["orders"]
  identities = ["billing-service"]
  rule "roles" {
    effect = "allow"
    when   = "request.statements.all(s, s.command in ['CREATE ROLE', 'ALTER ROLE', 'SELECT'])"
    reason = "manages roles"
  }
}
`)
	e.pg.Exec(t, "orders", "ALTER ROLE gatehouse CREATEROLE")
	c := e.connect(t, "billing-service")
	if _, err := c.Exec(ctx, "CREATE ROLE gh_redact_role LOGIN PASSWORD 'hunter2-topsecret'", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "ALTER ROLE gh_redact_role PASSWORD E'hunter3-\\'topsecret'", pgx.QueryExecModeExec); err != nil {
		t.Fatal(err)
	}
	// dblink_connect(name, connstr): the connection string is the second
	// argument (it fails upstream without dblink; it is recorded first).
	_, _ = c.Exec(ctx, "SELECT dblink_connect('gh_c', 'host=127.0.0.1 password=topsecret-4')", pgx.QueryExecModeSimpleProtocol)
	c.Close(ctx)
	var set bool
	if err := e.pg.Conn(t, "orders").QueryRow(ctx, "SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = 'gh_redact_role'").Scan(&set); err != nil || !set {
		t.Fatalf("the password was not set upstream: %v %v", set, err)
	}
	ss := waitSealed(t, e, 1)
	raw, err := os.ReadFile(ss[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), "topsecret") {
		t.Fatalf("the recording holds a password:\n%s", raw)
	}
	if n := strings.Count(string(raw), "[redacted]"); n < 4 { // each statement's text and its facts' text
		t.Fatalf("want the redacted passwords in the recording (text and facts of two statements), found %d:\n%s", n, raw)
	}
	if rep, err := recorder.Verify(ss[0].Path, e.recKeys); err != nil || !rep.OK() {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}

// requested redacts a copy: the request judged and forwarded keeps its
// text, and one without secrets is recorded as it is.
func TestRequestedRedactsACopy(t *testing.T) {
	sql := "ALTER ROLE app PASSWORD 'hunter2'"
	req := &celpolicy.PostgresRequest{Kind: "query", Statements: []celpolicy.Statement{{Command: "ALTER ROLE", Text: sql}},
		Masking: &celpolicy.MaskPlan{Statements: []celpolicy.StatementMasks{{Text: sql}}}}
	r := requested("query", sql, req, celpolicy.Decision{})
	got := r.Request.(*celpolicy.PostgresRequest)
	if got == req || r.Text != "ALTER ROLE app PASSWORD '[redacted]'" || got.Statements[0].Text != r.Text || got.Masking.Statements[0].Text != r.Text {
		t.Fatalf("recorded %q, %+v", r.Text, got)
	}
	if req.Statements[0].Text != sql || req.Masking.Statements[0].Text != sql {
		t.Fatalf("the judged request was changed: %+v", req)
	}
	plain := &celpolicy.PostgresRequest{Kind: "query", Statements: []celpolicy.Statement{{Command: "SELECT", Text: "SELECT 1"}}}
	if r := requested("query", "SELECT 1", plain, celpolicy.Decision{}); r.Request != celpolicy.Request(plain) || r.Text != "SELECT 1" {
		t.Fatalf("a request without secrets was copied or changed: %+v", r)
	}
}
