package postgres

import (
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestSyncSentWithACopyIsIgnoredByPostgres: a client may send
// Bind, Execute (COPY ... FROM STDIN) and Sync together, before it knows the
// statement is a COPY (libpq's PQexecParams does). PostgreSQL, in copy-in
// mode, ignores that Sync; only the Sync after CopyDone is answered. The
// gateway must count the same, or its queue stays a batch behind: the next
// results would be paired with the wrong requests. An attacker then lines up
// an error at a stale Sync and a batch whose Execute the gateway does not
// mask, ahead of one it does, and reads masked rows in the clear.
func TestSyncSentWithACopyIsIgnoredByPostgres(t *testing.T) {
	e := startEnv(t)
	allowCopy(t, e)
	conn, fe := rawSession(t, e, "billing-service")
	send(t, fe, &pgproto3.Parse{Name: "cp", Query: "COPY billing.invoices (order_id, amount) FROM STDIN"},
		&pgproto3.Bind{PreparedStatement: "cp"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	waitCopyIn(t, conn, fe)
	send(t, fe, &pgproto3.CopyData{Data: []byte("1\t1\n")}, &pgproto3.CopyDone{}, &pgproto3.Sync{})
	if tr, _, to := collect(t, conn, fe, 5*time.Second); to || len(tr) < 2 || tr[len(tr)-2] != "C(COPY 1)" {
		t.Fatalf("copy: %v (timed out: %v)", tr, to)
	}

	// The attack: an error in a batch whose Execute is unmasked, then a
	// masked read, pipelined.
	send(t, fe, &pgproto3.Parse{Name: "ids", Query: "SELECT id FROM customers WHERE id = $1"}, &pgproto3.Sync{})
	if tr, _, _ := collect(t, conn, fe, 5*time.Second); strings.Contains(strings.Join(tr, " "), "E(") {
		t.Fatalf("prepare: %v", tr)
	}
	send(t, fe,
		&pgproto3.Bind{PreparedStatement: "ids", Parameters: [][]byte{[]byte("not a number")}},
		&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{},
		&pgproto3.Query{String: "SELECT email FROM customers ORDER BY id"})
	tr, _, _ := collect(t, conn, fe, 5*time.Second)
	if !strings.Contains(strings.Join(tr, " "), "22P02") {
		t.Fatalf("the failing batch: %v", tr)
	}
	tr, vals, to := collect(t, conn, fe, 5*time.Second)
	if to || len(vals) != 2 {
		t.Fatalf("the masked read after the copy: %v %q (timed out: %v)", tr, vals, to)
	}
	for _, v := range vals {
		if strings.Contains(v, "jane.doe") || strings.Contains(v, "raj@") {
			t.Fatalf("a masked column went out in the clear: %q (trace %v)", vals, tr)
		}
	}
	if vals[0] != "j***@example.com" {
		t.Fatalf("the masked read after the copy: %q", vals)
	}
}

// TestHeldExecuteAfterASkippedBatch: while the upstream skips to the Sync of
// a failed batch, a request pushed behind that Sync is not skipped: it is the
// next batch's, and runs. An Execute that needs approval there must be held,
// not taken for skipped and forwarded.
func TestHeldExecuteAfterASkippedBatch(t *testing.T) {
	q := newQueue()
	q.push(&slot{kind: slotBind})
	q.push(&slot{kind: slotSync})
	q.pop() // the Bind failed: the upstream skips to the Sync
	q.skip()
	hd := &slot{kind: slotDescribe, hidden: true, ready: make(chan *resultDesc, 1)}
	q.push(hd)
	select {
	case d := <-hd.ready:
		t.Fatalf("a Describe behind the skipped batch's Sync was resolved at once (%v): it will be answered", d)
	default:
	}
	// Pushed before that Sync, it is skipped, and told so at once.
	q2 := newQueue()
	q2.push(&slot{kind: slotBind})
	q2.pop()
	q2.skip()
	hd2 := &slot{kind: slotDescribe, hidden: true, ready: make(chan *resultDesc, 1)}
	q2.push(hd2)
	select {
	case d := <-hd2.ready:
		if d != nil {
			t.Fatalf("a skipped Describe got a layout: %v", d)
		}
	case <-time.After(time.Second):
		t.Fatal("a Describe the upstream skips was never resolved")
	}
}

// drainAll reads every message until the connection closes or d passes.
func drainAll(t *testing.T, conn net.Conn, fe *pgproto3.Frontend, d time.Duration) (trace, vals []string) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(d))
	defer conn.SetReadDeadline(time.Time{})
	for {
		msg, err := fe.Receive()
		if err != nil {
			return trace, vals
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			trace = append(trace, "D")
			for _, v := range m.Values {
				vals = append(vals, string(v))
			}
		case *pgproto3.ErrorResponse:
			trace = append(trace, "E("+m.Code+")")
		case *pgproto3.CommandComplete:
			trace = append(trace, "C("+string(m.CommandTag)+")")
		case *pgproto3.ReadyForQuery:
			trace = append(trace, "Z")
		default:
			trace = append(trace, typeName(msg))
		}
	}
}

// bigCopy is COPY data of rows good rows, then tail: enough to keep
// PostgreSQL busy while the caller sends what comes next.
func bigCopy(rows int, tail string) []byte {
	return []byte(strings.Repeat("1\t1\n", rows) + tail)
}

// noClearEmail fails if a masked email went out in the clear, or the
// session went out of step.
func noClearEmail(t *testing.T, trace, vals []string) {
	t.Helper()
	for _, v := range vals {
		if strings.Contains(v, "jane.doe@") || strings.Contains(v, "raj@") {
			t.Fatalf("a masked column went out in the clear: %q (trace %v)", vals, trace)
		}
	}
	if slices.Contains(trace, "E(XX000)") {
		t.Fatalf("the session went out of step: %v", trace)
	}
}

// TestCopyDoneBeforeCopyInResponse: a caller may send a COPY's data and
// its CopyDone before the upstream has answered the COPY. PostgreSQL then
// answers a Sync sent after that CopyDone; the gateway must count it, or
// every later response is paired with the request before it. (Found by a
// review: the gateway took copy-in mode to start at CopyInResponse, after
// the CopyDone, and left that Sync out of its queue. A Query's unmasked
// layout was then applied to a masked UNION's rows.)
func TestCopyDoneBeforeCopyInResponse(t *testing.T) {
	e := startEnv(t)
	allowCopy(t, e)
	conn, fe := rawSession(t, e, "billing-service")
	send(t, fe, &pgproto3.Parse{Name: "cp", Query: "COPY billing.invoices (order_id, amount) FROM STDIN"},
		&pgproto3.Bind{PreparedStatement: "cp"}, &pgproto3.Execute{},
		&pgproto3.CopyData{Data: bigCopy(200_000, "")}, &pgproto3.CopyDone{})
	waitCopyIn(t, conn, fe)
	send(t, fe, &pgproto3.Sync{}, &pgproto3.CopyDone{},
		&pgproto3.Query{String: "SELECT email FROM customers UNION ALL SELECT 'x' WHERE false"},
		&pgproto3.Query{String: "SELECT 1"})
	tr, vals := drainAll(t, conn, fe, 10*time.Second)
	noClearEmail(t, tr, vals)
	if !slices.Contains(tr, "C(COPY 200000)") || !slices.Contains(vals, "j***@example.com") || !slices.Contains(vals, "1") {
		t.Fatalf("trace %v, values %q", tr, vals)
	}
}

// TestCopyFailsBeforeItsSync: a Sync sent among a COPY's data is ignored
// by PostgreSQL if it reads it in copy-in mode, and answered if a bad row
// ended the copy first: only the data decides. The gateway never forwards
// such a Sync, so the upstream never has to choose.
func TestCopyFailsBeforeItsSync(t *testing.T) {
	e := startEnv(t)
	allowCopy(t, e)
	conn, fe := rawSession(t, e, "billing-service")
	send(t, fe, &pgproto3.Parse{Name: "cp", Query: "COPY billing.invoices (order_id, amount) FROM STDIN"},
		&pgproto3.Bind{PreparedStatement: "cp"}, &pgproto3.Execute{},
		&pgproto3.CopyData{Data: bigCopy(200_000, "bad\tbad\n")}, &pgproto3.Sync{})
	waitCopyIn(t, conn, fe)
	send(t, fe, &pgproto3.CopyDone{},
		&pgproto3.Query{String: "SELECT email FROM customers UNION ALL SELECT 'x' WHERE false"}, &pgproto3.Sync{},
		&pgproto3.Query{String: "SELECT email FROM customers ORDER BY id"}, &pgproto3.Sync{})
	tr, vals := drainAll(t, conn, fe, 10*time.Second)
	noClearEmail(t, tr, vals)
	if !slices.Contains(tr, "E(22P02)") || !slices.Contains(vals, "j***@example.com") {
		t.Fatalf("trace %v, values %q", tr, vals)
	}
}

// TestCopyFailureCannotShiftAParse: the same uncertain Sync, used to pair
// a Parse's ParseComplete with a later Parse of the same name, had the
// gateway believe a statement was SELECT 1 while the upstream held an
// INSERT that needs approval: its Execute ran unapproved and was recorded
// as SELECT 1.
func TestCopyFailureCannotShiftAParse(t *testing.T) {
	h := startHoldEnv(t)
	allowCopy(t, h.env)
	conn, fe := rawSession(t, h.env, "billing-service")
	send(t, fe, &pgproto3.Parse{Name: "cp", Query: "COPY billing.invoices (order_id, amount) FROM STDIN"},
		&pgproto3.Bind{PreparedStatement: "cp"}, &pgproto3.Execute{},
		&pgproto3.CopyData{Data: bigCopy(200_000, "bad\tbad\n")}, &pgproto3.Sync{})
	waitCopyIn(t, conn, fe)
	send(t, fe, &pgproto3.CopyDone{},
		&pgproto3.Parse{Name: "s2", Query: "INSERT INTO orders (customer_id, total) VALUES (1, 666)"}, &pgproto3.Sync{},
		&pgproto3.Parse{Name: "s2", Query: "SELECT 1"},
		&pgproto3.Query{String: "SELECT 1"}, &pgproto3.Sync{},
		&pgproto3.Bind{PreparedStatement: "s2"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	tr, _ := drainAll(t, conn, fe, 10*time.Second)
	if slices.Contains(tr, "E(XX000)") {
		t.Fatalf("the session went out of step: %v", tr)
	}
	var n int
	if err := h.su.QueryRow(t.Context(), "SELECT count(*) FROM orders WHERE total = 666").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n > 0 {
		t.Fatalf("an INSERT that needs approval ran without one (trace %v)", tr)
	}
}

// TestTwoCopiesInOneQuery: the gateway follows one copy's data per query;
// a query with two COPY FROM STDIN is refused before it runs.
func TestTwoCopiesInOneQuery(t *testing.T) {
	e := startEnv(t)
	allowCopy(t, e)
	conn, fe := rawSession(t, e, "billing-service")
	send(t, fe, &pgproto3.Query{String: "COPY billing.invoices (order_id, amount) FROM STDIN; COPY billing.invoices (order_id, amount) FROM STDIN"})
	tr, _, _ := collect(t, conn, fe, 5*time.Second)
	if !strings.Contains(strings.Join(tr, " "), "42501") {
		t.Fatalf("two copies in a query: %v", tr)
	}
}

// allowNames lets billing-service PREPARE, DEALLOCATE, CLOSE, DECLARE,
// DISCARD, EXECUTE, FETCH and COPY as well.
func allowNames(t *testing.T, e *env) {
	t.Helper()
	e.publish(t, strings.Replace(e.policyF(e.issuer.URL, e.pg.Addr()), `'INSERT', 'UPDATE', 'DELETE', 'SELECT'`,
		`'COPY', 'PREPARE', 'DEALLOCATE', 'CLOSE', 'DECLARE CURSOR', 'DISCARD', 'EXECUTE', 'FETCH', 'INSERT', 'UPDATE', 'DELETE', 'SELECT'`, 1))
}

// createCardsView makes v_cards, a view over the masked columns: its
// outputs are masked by lineage, not by a table column's origin, so only
// a statement the gateway judged for what it is gets them masked.
func createCardsView(t *testing.T, e *env) {
	t.Helper()
	e.pg.Exec(t, "orders", "CREATE VIEW public.v_cards AS SELECT id, card_number, upper(email) AS e FROM customers; GRANT SELECT ON v_cards TO gatehouse")
}

// inTheClear reports whether v_cards' masked values went out unmasked.
func inTheClear(vals []string) bool {
	return slices.ContainsFunc(vals, func(v string) bool { return strings.Contains(v, "4111") || strings.Contains(v, "JANE.DOE") })
}

// TestNameChangedBySQL: SQL DEALLOCATE and PREPARE share the protocol's
// statement names. A statement the gateway knew as SELECT 1, dropped and
// prepared again by SQL as a read of a masked view, must not be executed
// as SELECT 1 (unmasked, and recorded as what did not run): the gateway
// forgets names that SQL drops, and refuses an Execute through one until a
// Parse defines it again.
func TestNameChangedBySQL(t *testing.T) {
	e := startEnv(t)
	allowNames(t, e)
	createCardsView(t, e)
	conn, fe := rawSession(t, e, "billing-service")
	for _, sql := range []string{"DEALLOCATE s", "DEALLOCATE ALL", "DISCARD ALL"} {
		send(t, fe, &pgproto3.Parse{Name: "s", Query: "SELECT 1"}, &pgproto3.Sync{})
		collect(t, conn, fe, 5*time.Second)
		send(t, fe, &pgproto3.Query{String: sql})
		collect(t, conn, fe, 5*time.Second)
		send(t, fe, &pgproto3.Query{String: "PREPARE s AS SELECT * FROM v_cards ORDER BY id"})
		collect(t, conn, fe, 5*time.Second)
		send(t, fe, &pgproto3.Bind{PreparedStatement: "s"}, &pgproto3.Execute{}, &pgproto3.Sync{})
		tr, vals := drainAll(t, conn, fe, 3*time.Second)
		if inTheClear(vals) {
			t.Fatalf("%s: a masked column went out in the clear: %q (trace %v)", sql, vals, tr)
		}
		if !strings.Contains(strings.Join(tr, " "), "E(42501)") {
			t.Fatalf("%s: an Execute through a name SQL redefined: %v %q", sql, tr, vals)
		}
		send(t, fe, &pgproto3.Query{String: "DEALLOCATE ALL"})
		collect(t, conn, fe, 5*time.Second)
	}
	// A Parse defines the name again, and the gateway knows it.
	send(t, fe, &pgproto3.Parse{Name: "s", Query: "SELECT email FROM customers ORDER BY id"}, &pgproto3.Bind{PreparedStatement: "s"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	tr, vals := drainAll(t, conn, fe, 3*time.Second)
	if len(vals) != 2 || vals[0] != "j***@example.com" {
		t.Fatalf("after a Parse: %v %q", tr, vals)
	}
}

// TestCopyNameChangedBySQL: a statement the gateway knew as a COPY FROM
// STDIN, redefined by SQL as SELECT 1, must not leave the session waiting
// for a copy that never starts.
func TestCopyNameChangedBySQL(t *testing.T) {
	e := startEnv(t)
	allowNames(t, e)
	conn, fe := rawSession(t, e, "billing-service")
	send(t, fe, &pgproto3.Parse{Name: "s", Query: "COPY billing.invoices (order_id, amount) FROM STDIN"}, &pgproto3.Sync{})
	collect(t, conn, fe, 5*time.Second)
	send(t, fe, &pgproto3.Query{String: "DEALLOCATE s"})
	collect(t, conn, fe, 5*time.Second)
	send(t, fe, &pgproto3.Query{String: "PREPARE s AS SELECT 1"})
	collect(t, conn, fe, 5*time.Second)
	send(t, fe, &pgproto3.Bind{PreparedStatement: "s"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if tr, _, to := collect(t, conn, fe, 5*time.Second); to || !strings.Contains(strings.Join(tr, " "), "42501") {
		t.Fatalf("an Execute through a name SQL redefined: %v (timed out: %v)", tr, to)
	}
	send(t, fe, &pgproto3.Query{String: "SELECT 2"})
	if tr, vals, to := collect(t, conn, fe, 5*time.Second); to || len(vals) != 1 || vals[0] != "2" {
		t.Fatalf("the session after it: %v %q (timed out: %v)", tr, vals, to)
	}
}

// TestSQLRunsAProtocolStatement: the other way round. SQL EXECUTE or FETCH
// of a name is judged by the SQL PREPARE or DECLARE that defined it; once
// a Parse or Bind has given the name another statement, that definition is
// gone, and EXECUTE or FETCH of it must not be judged by it.
func TestSQLRunsAProtocolStatement(t *testing.T) {
	e := startEnv(t)
	allowNames(t, e)
	createCardsView(t, e)
	conn, fe := rawSession(t, e, "billing-service")
	run := func(msgs ...pgproto3.FrontendMessage) ([]string, []string) {
		t.Helper()
		send(t, fe, msgs...)
		tr, vals, _ := collect(t, conn, fe, 5*time.Second)
		return tr, vals
	}
	leaks := func(what string, tr, vals []string) {
		t.Helper()
		if inTheClear(vals) {
			t.Fatalf("%s: a masked column went out in the clear: %q (trace %v)", what, vals, tr)
		}
	}
	run(&pgproto3.Query{String: "PREPARE s AS SELECT 1"})
	run(&pgproto3.Query{String: "DEALLOCATE s"})
	run(&pgproto3.Parse{Name: "s", Query: "SELECT * FROM v_cards ORDER BY id"}, &pgproto3.Sync{})
	tr, vals := run(&pgproto3.Query{String: "EXECUTE s"})
	leaks("EXECUTE", tr, vals)
	// Pipelined: the EXECUTE is decided before the Parse is answered.
	run(&pgproto3.Query{String: "DEALLOCATE ALL"})
	run(&pgproto3.Query{String: "PREPARE t AS SELECT 1"})
	send(t, fe, &pgproto3.Query{String: "DEALLOCATE t"}, &pgproto3.Parse{Name: "t", Query: "SELECT * FROM v_cards ORDER BY id"},
		&pgproto3.Sync{}, &pgproto3.Query{String: "EXECUTE t"})
	tr, vals = drainAll(t, conn, fe, 3*time.Second)
	leaks("EXECUTE, pipelined", tr, vals)

	run(&pgproto3.Query{String: "BEGIN"})
	run(&pgproto3.Query{String: "DECLARE c CURSOR FOR SELECT 1"})
	run(&pgproto3.Query{String: "CLOSE c"})
	run(&pgproto3.Parse{Query: "SELECT * FROM v_cards ORDER BY id"}, &pgproto3.Bind{DestinationPortal: "c"}, &pgproto3.Sync{})
	tr, vals = run(&pgproto3.Query{String: "FETCH ALL FROM c"})
	leaks("FETCH", tr, vals)
	run(&pgproto3.Query{String: "ROLLBACK"})
}

// TestNamesAcrossTransactions: portals end with their transaction, which
// the gateway does not always see (COMMIT; BEGIN in one query, ROLLBACK TO
// SAVEPOINT, a query that commits an implicit transaction); SQL DECLARE
// or PREPARE then gives the name another statement. And a PREPARE or
// DECLARE pipelined just before a Parse or Bind of the same name is
// answered after it. In each case an Execute, EXECUTE or FETCH must not be
// judged by the statement the name no longer runs. (Found by a review.)
func TestNamesAcrossTransactions(t *testing.T) {
	e := startEnv(t)
	e.publish(t, strings.Replace(e.policyF(e.issuer.URL, e.pg.Addr()), `'INSERT', 'UPDATE', 'DELETE', 'SELECT'`,
		`'SAVEPOINT', 'PREPARE', 'DEALLOCATE', 'CLOSE', 'DECLARE CURSOR', 'DISCARD', 'EXECUTE', 'FETCH', 'INSERT', 'UPDATE', 'DELETE', 'SELECT'`, 1))
	createCardsView(t, e)
	check := func(what string, tr, vals []string) {
		t.Helper()
		if inTheClear(vals) {
			t.Errorf("%s: a masked column went out in the clear: %q (trace %v)", what, vals, tr)
		}
	}
	type step = []pgproto3.FrontendMessage
	runAll := func(what string, steps []step, final step) {
		conn, fe := rawSession(t, e, "billing-service")
		defer conn.Close()
		for _, s := range steps {
			send(t, fe, s...)
			drainAll(t, conn, fe, 700*time.Millisecond)
		}
		send(t, fe, final...)
		tr, vals := drainAll(t, conn, fe, 1500*time.Millisecond)
		check(what, tr, vals)
	}
	q := func(s string) *pgproto3.Query { return &pgproto3.Query{String: s} }

	// A: portal dropped by COMMIT inside a multi-statement query (RFQ stays 'T').
	runAll("commit;begin", []step{
		{q("BEGIN")},
		{&pgproto3.Parse{Name: "one", Query: "SELECT 1"}, &pgproto3.Bind{DestinationPortal: "c", PreparedStatement: "one"}, &pgproto3.Sync{}},
		{q("COMMIT; BEGIN")},
		{q("DECLARE c CURSOR FOR SELECT * FROM v_cards ORDER BY id")},
	}, step{&pgproto3.Execute{Portal: "c"}, &pgproto3.Sync{}})

	// B: portal dropped by ROLLBACK TO SAVEPOINT.
	runAll("rollback to savepoint", []step{
		{q("BEGIN")},
		{q("SAVEPOINT sp")},
		{&pgproto3.Parse{Name: "one", Query: "SELECT 1"}, &pgproto3.Bind{DestinationPortal: "c", PreparedStatement: "one"}, &pgproto3.Sync{}},
		{q("ROLLBACK TO SAVEPOINT sp")},
		{q("DECLARE c CURSOR FOR SELECT * FROM v_cards ORDER BY id")},
	}, step{&pgproto3.Execute{Portal: "c"}, &pgproto3.Sync{}})

	// C: SQL DECLARE's definition applied (at CommandComplete) after a pipelined Bind's forgetNamed.
	runAll("pipelined declare/close then Bind", []step{
		{q("BEGIN")},
		{&pgproto3.Parse{Name: "v", Query: "SELECT * FROM v_cards ORDER BY id"}, &pgproto3.Sync{}},
		{q("DECLARE c CURSOR FOR SELECT 1; CLOSE c"), &pgproto3.Bind{DestinationPortal: "c", PreparedStatement: "v"}, &pgproto3.Sync{}},
	}, step{q("FETCH ALL FROM c")})

	// D: same for statements: PREPARE/DEALLOCATE then pipelined Parse.
	runAll("pipelined prepare/deallocate then Parse", []step{
		{q("PREPARE s AS SELECT 1; DEALLOCATE s"), &pgproto3.Parse{Name: "s", Query: "SELECT * FROM v_cards ORDER BY id"}, &pgproto3.Sync{}},
	}, step{q("EXECUTE s")})

	// F: pipelined COMMIT (RFQ 'I' not yet processed when the Execute is decided).
	runAll("pipelined commit", []step{
		{q("BEGIN")},
		{&pgproto3.Parse{Name: "one", Query: "SELECT 1"}, &pgproto3.Bind{DestinationPortal: "c", PreparedStatement: "one"}, &pgproto3.Sync{}},
	}, step{q("COMMIT"), q("BEGIN"), q("DECLARE c CURSOR FOR SELECT * FROM v_cards ORDER BY id"), &pgproto3.Execute{Portal: "c"}, &pgproto3.Sync{}})

	// G: one batch, implicit transaction: Bind c pending in the same batch; a Query commits and drops c.
	runAll("same batch, query commits", nil,
		step{&pgproto3.Parse{Name: "one", Query: "SELECT 1"}, &pgproto3.Bind{DestinationPortal: "c", PreparedStatement: "one"},
			q("SELECT 1"), q("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM v_cards ORDER BY id"), &pgproto3.Execute{Portal: "c"}, &pgproto3.Sync{}})

	// H: COMMIT and BEGIN as extended-protocol statements in one batch.
	runAll("extended commit/begin", []step{
		{q("BEGIN")},
		{&pgproto3.Parse{Name: "one", Query: "SELECT 1"}, &pgproto3.Bind{DestinationPortal: "c", PreparedStatement: "one"}, &pgproto3.Sync{}},
		{&pgproto3.Parse{Query: "COMMIT"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Parse{Query: "BEGIN"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		{q("DECLARE c CURSOR FOR SELECT * FROM v_cards ORDER BY id")},
	}, step{&pgproto3.Execute{Portal: "c"}, &pgproto3.Sync{}})

	// E: unnamed statement after a simple Query (Query drops it upstream).
	runAll("unnamed after query", []step{
		{&pgproto3.Parse{Query: "SELECT 1"}, &pgproto3.Sync{}},
		{q("SELECT 2")},
	}, step{&pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}})
}

// TestSQLRedefinedInOneRequest: a PREPARE or DECLARE that replaces a name
// is answered after the EXECUTE or FETCH behind it (in the same query, or
// pipelined) is decided; the old definition must not judge it. Once the
// new one is answered, EXECUTE runs it, masked. (Found by a review.)
func TestSQLRedefinedInOneRequest(t *testing.T) {
	e := startEnv(t)
	allowNames(t, e)
	createCardsView(t, e)
	conn, fe := rawSession(t, e, "billing-service")
	leaks := func(what string, tr, vals []string) {
		t.Helper()
		if inTheClear(vals) {
			t.Fatalf("%s: a masked column went out in the clear: %q (trace %v)", what, vals, tr)
		}
	}
	step := func(msgs ...pgproto3.FrontendMessage) ([]string, []string) {
		send(t, fe, msgs...)
		return drainAll(t, conn, fe, 700*time.Millisecond)
	}
	step(&pgproto3.Query{String: "PREPARE s AS SELECT 1"})
	tr, vals := step(&pgproto3.Query{String: "DEALLOCATE s; PREPARE s AS SELECT * FROM v_cards ORDER BY id; EXECUTE s"})
	leaks("one query", tr, vals)
	step(&pgproto3.Query{String: "PREPARE u AS SELECT 1"})
	tr, vals = step(&pgproto3.Query{String: "DEALLOCATE u; PREPARE u AS SELECT * FROM v_cards ORDER BY id"}, &pgproto3.Query{String: "EXECUTE u"})
	leaks("pipelined", tr, vals)
	step(&pgproto3.Query{String: "BEGIN"})
	step(&pgproto3.Query{String: "DECLARE c CURSOR FOR SELECT 1"})
	tr, vals = step(&pgproto3.Query{String: "CLOSE c; DECLARE c CURSOR FOR SELECT * FROM v_cards ORDER BY id; FETCH ALL FROM c"})
	leaks("cursor", tr, vals)
	step(&pgproto3.Query{String: "ROLLBACK"})
	// Answered, the new definition is what EXECUTE is judged by: masked.
	tr, vals = step(&pgproto3.Query{String: "EXECUTE u"})
	leaks("after the answer", tr, vals)
	if len(vals) != 6 {
		t.Fatalf("EXECUTE of an answered PREPARE: %v %q", tr, vals)
	}
}
