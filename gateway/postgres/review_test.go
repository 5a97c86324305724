package postgres

import (
	"context"
	"errors"
	"math/big"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/gatehouse-dev/gatehouse/gateway/approval"
	core "github.com/gatehouse-dev/gatehouse/gateway/session"
)

// Statements held for approval, at the protocol level: what the caller
// sees while a statement waits for approvers and after they act, and what
// reached PostgreSQL meanwhile.

// reviewRules are the review rules the hold tests add to the base policy.
// No rule allows billing-service to write payments or orders: review
// alone decides, so an approval is the only way such a write runs.
// Approvals for orders are reusable (for their valid_for), so that a later
// statement can be released by an earlier approval that binds it.
const reviewRules = `
policy "approvals" {
  resources = ["orders"]
  everyone  = true

  rule "payments" {
    effect = "review"
    when   = "request.statements.exists(s, s.tables.exists(t, t.name == 'payments' && t.access == 'write'))"
    reason = "payments need a DBA"
    approval {
      groups  = ["dba"]
      timeout = "1m"
    }
  }

  rule "orders-write" {
    effect = "review"
    when   = "request.statements.exists(s, s.tables.exists(t, t.name == 'orders' && t.access == 'write'))"
    reason = "orders are changed with a DBA watching"
    approval {
      groups   = ["dba"]
      timeout  = "1m"
      reusable = true
    }
  }

  rule "customers-read" {
    effect = "review"
    when   = "request.statements.exists(s, s.tables.exists(t, t.name == 'customers'))"
    reason = "reading customers needs a DBA"
    approval {
      groups  = ["dba"]
      timeout = "1m"
    }
  }
}
`

// freezeRule denies what the "payments" review rule holds.
const freezeRule = `
policy "freeze" {
  resources = ["orders"]
  everyone  = true

  rule "payments-frozen" {
    effect = "deny"
    when   = "request.statements.exists(s, s.tables.exists(t, t.name == 'payments' && t.access == 'write'))"
    reason = "payments are frozen"
  }
}
`

// dba approves and denies in these tests.
var dba = approval.Principal{Issuer: "x", Subject: "dba-1", Groups: []string{"dba"}}

// holdEnv is a gateway with an approval store and the review rules.
type holdEnv struct {
	*env
	approvals *approval.FileStore
	// su is a superuser connection that bypasses the gateway.
	su *pgx.Conn
}

func startHoldEnv(t *testing.T) *holdEnv {
	t.Helper()
	store, err := approval.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	e := startEnv(t, core.WithApprovals(store))
	base := e.policyF
	e.policyF = func(issuer, addr string) string { return base(issuer, addr) + reviewRules }
	e.publish(t, e.policyF(e.issuer.URL, e.pg.Addr()))
	return &holdEnv{env: e, approvals: store, su: e.pg.Conn(t, "orders")}
}

// connectNotices connects through the gateway and returns the messages of
// the notices the session gets.
func (h *holdEnv) connectNotices(t *testing.T, subject string) (*pgx.Conn, <-chan string) {
	t.Helper()
	cfg, err := pgx.ParseConfig(h.connString(h.issuer.Token(t, subject, "gatehouse")))
	if err != nil {
		t.Fatal(err)
	}
	notices := make(chan string, 16)
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		select {
		case notices <- n.Message:
		default:
		}
	}
	c, err := pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("connect as %s: %v", subject, err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c, notices
}

// heldID waits for the notice that the statement done reports on is held
// and returns the approval request's id, checking that the store has it
// pending.
func (h *holdEnv) heldID(t *testing.T, notices <-chan string, done <-chan error) string {
	t.Helper()
	select {
	case err := <-done:
		t.Fatalf("the statement finished without a hold: %v", err)
	case msg := <-notices:
		id := approvalID(msg)
		if !strings.Contains(msg, "held for approval") || id == "" {
			t.Fatalf("notice %q is not a hold", msg)
		}
		if r, err := h.approvals.Get(context.Background(), id); err != nil || r.State != approval.Pending {
			t.Fatalf("held for %s, which is %+v", id, r)
		}
		return id
	case <-time.After(10 * time.Second):
		t.Fatal("no hold notice within 10s")
	}
	return ""
}

// rawHeld reads the notice that a statement sent on a raw session is held
// and returns the approval request's id.
func rawHeld(t *testing.T, conn net.Conn, fe *pgproto3.Frontend) string {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer conn.SetReadDeadline(time.Time{})
	for {
		msg, err := fe.Receive()
		switch msg.(type) {
		case *pgproto3.ParseComplete, *pgproto3.BindComplete:
			// Before holding an Execute the gateway asks the upstream
			// whether it will run it; the earlier messages' answers come
			// with that.
			continue
		}
		n, ok := msg.(*pgproto3.NoticeResponse)
		if err != nil || !ok || !strings.Contains(n.Message, "held for approval") || approvalID(n.Message) == "" {
			t.Fatalf("first response to the held statement: %#v %v", msg, err)
		}
		return approvalID(n.Message)
	}
}

// approvalID finds an approval id ("ap-...") in a message.
func approvalID(msg string) string {
	for _, f := range strings.Fields(msg) {
		if strings.HasPrefix(f, "ap-") {
			return strings.TrimRight(f, ",.;:)")
		}
	}
	return ""
}

// get reads an approval request (the zero request when there is none).
func (h *holdEnv) get(id string) approval.Request {
	r, _ := h.approvals.Get(context.Background(), id)
	return r
}

func (h *holdEnv) list(keep func(*approval.Request) bool) []approval.Request {
	l, _ := h.approvals.List(context.Background(), keep)
	return l
}

func (h *holdEnv) settled(id string) <-chan struct{} {
	c, _ := h.approvals.Settled(context.Background(), id)
	return c
}

func (h *holdEnv) vote(t *testing.T, id string, approve bool, comment string) {
	t.Helper()
	if _, err := h.approvals.Vote(context.Background(), id, dba, approve, comment); err != nil {
		t.Fatalf("vote on %s: %v", id, err)
	}
}

// payments counts the payments rows with amount, read past the gateway.
func (h *holdEnv) payments(t *testing.T, amount string) int {
	t.Helper()
	var n int
	if err := h.su.QueryRow(context.Background(), "SELECT count(*) FROM payments WHERE amount = $1::numeric", amount).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// reached reports whether a statement with marker in its text reached
// PostgreSQL (the server logs a statement before it runs it).
func (h *holdEnv) reached(t *testing.T, marker string) bool {
	t.Helper()
	return strings.Contains(h.pg.QueryLog(t), marker)
}

// async runs f in a goroutine; its error comes on the channel.
func async(f func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	return ch
}

// outcome waits for an async statement's error.
func outcome(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(20 * time.Second):
		t.Fatal("the held statement did not finish within 20s")
	}
	return nil
}

// stillHeld fails the test if the held statement has already finished.
func stillHeld(t *testing.T, ch <-chan error) {
	t.Helper()
	select {
	case err := <-ch:
		t.Fatalf("the statement finished during its hold: %v", err)
	default:
	}
}

func pgError(t *testing.T, err error, code string) *pgconn.PgError {
	t.Helper()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != code {
		t.Fatalf("got %v, want SQLSTATE %s", err, code)
	}
	return pgErr
}

// usable checks that a session still runs statements.
func usable(t *testing.T, c *pgx.Conn) {
	t.Helper()
	var n int
	if err := c.QueryRow(context.Background(), "SELECT count(*) FROM orders").Scan(&n); err != nil || n != 2 {
		t.Fatalf("the session after the hold: %v (%d rows)", err, n)
	}
}

// queryStrings runs q and returns its values as strings.
func queryStrings(ctx context.Context, c *pgx.Conn, q string, args ...any) ([]string, error) {
	rows, err := c.Query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			return nil, err
		}
		for _, v := range vals {
			if s, ok := v.(string); ok {
				out = append(out, s)
			}
		}
	}
	return out, rows.Err()
}

// TestHoldForApproval runs the hold cases against one gateway and database.
func TestHoldForApproval(t *testing.T) {
	h := startHoldEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	t.Run("extended protocol held at Execute, approved, run", func(t *testing.T) {
		c, notices := h.connectNotices(t, "billing-service")
		const sql = "INSERT INTO payments (order_id, amount) VALUES ($1, $2) /* hold-approved */"
		done := async(func() error {
			_, err := c.Exec(ctx, sql, pgx.QueryExecModeCacheStatement, 1, "101.01")
			return err
		})
		id := h.heldID(t, notices, done)
		r := h.get(id)
		if r.Kind != "execute" || r.Protocol != "postgres" || r.Subject.Text != sql || r.Requester.Subject != "billing-service" || !slices.Equal(r.Rules(), []string{"approvals/payments"}) {
			t.Errorf("request: kind %q sql %q requester %v rules %v", r.Kind, r.Subject.Text, r.Requester, r.Rules())
		}
		// The approver reads the parameters with the types PostgreSQL
		// resolved (pgx sends the int4 in binary).
		if want := []string{"$1::int4 = '1'", "$2::numeric = '101.01'"}; !slices.Equal(r.Subject.Params, want) {
			t.Errorf("params %q, want %q", r.Subject.Params, want)
		}
		stillHeld(t, done)
		if n := h.payments(t, "101.01"); n != 0 || h.reached(t, "hold-approved") {
			t.Fatalf("while held: %d rows written, reached PostgreSQL: %v", n, h.reached(t, "hold-approved"))
		}
		h.vote(t, id, true, "ok")
		if err := outcome(t, done); err != nil {
			t.Fatalf("approved statement: %v", err)
		}
		if n := h.payments(t, "101.01"); n != 1 || !h.reached(t, "hold-approved") {
			t.Fatalf("approved INSERT wrote %d rows, reached PostgreSQL: %v", n, h.reached(t, "hold-approved"))
		}
		if r := h.get(id); r.State != approval.Approved || r.Uses != 1 {
			t.Errorf("after the run: state %s, uses %d", r.State, r.Uses)
		}
		usable(t, c)
	})

	t.Run("held Execute denied", func(t *testing.T) {
		c, notices := h.connectNotices(t, "billing-service")
		done := async(func() error {
			_, err := c.Exec(ctx, "INSERT INTO payments (order_id, amount) VALUES ($1, $2) /* hold-denied */", 2, "202.02")
			return err
		})
		id := h.heldID(t, notices, done)
		h.vote(t, id, false, "not on a Friday")
		pgErr := pgError(t, outcome(t, done), "42501")
		if !strings.Contains(pgErr.Message, id) || !strings.Contains(pgErr.Message, "not on a Friday") {
			t.Errorf("message %q does not name %s and the comment", pgErr.Message, id)
		}
		if n := h.payments(t, "202.02"); n != 0 || h.reached(t, "hold-denied") {
			t.Fatalf("denied INSERT: %d rows written, reached PostgreSQL: %v", n, h.reached(t, "hold-denied"))
		}
		if st := c.PgConn().TxStatus(); st != 'I' {
			t.Errorf("transaction status %q after the denial", st)
		}
		usable(t, c)
	})

	t.Run("held Execute denied in a transaction aborts it", func(t *testing.T) {
		c, notices := h.connectNotices(t, "billing-service")
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO billing.invoices (order_id, amount) VALUES (2, 303.03)"); err != nil {
			t.Fatalf("allowed INSERT in the transaction: %v", err)
		}
		done := async(func() error {
			_, err := tx.Exec(ctx, "INSERT INTO payments (order_id, amount) VALUES ($1, $2) /* hold-tx */", 3, "303.03")
			return err
		})
		id := h.heldID(t, notices, done)
		h.vote(t, id, false, "no")
		pgError(t, outcome(t, done), "42501")
		if st := c.PgConn().TxStatus(); st != 'E' {
			t.Errorf("transaction status %q after the denial, want E (failed)", st)
		}
		// As in PostgreSQL: every statement fails until ROLLBACK.
		for range 2 {
			_, err := tx.Exec(ctx, "SELECT 1")
			pgError(t, err, "25P02")
		}
		if err := tx.Rollback(ctx); err != nil {
			t.Fatalf("ROLLBACK: %v", err)
		}
		if n := h.payments(t, "303.03"); n != 0 || h.reached(t, "hold-tx") {
			t.Fatalf("denied INSERT: %d rows written, reached PostgreSQL: %v", n, h.reached(t, "hold-tx"))
		}
		var inv int
		if err := h.su.QueryRow(ctx, "SELECT count(*) FROM billing.invoices WHERE amount = 303.03").Scan(&inv); err != nil || inv != 0 {
			t.Fatalf("the rolled-back transaction left %d invoices (%v)", inv, err)
		}
		usable(t, c)
	})

	t.Run("held Execute approved in a transaction, rolled back", func(t *testing.T) {
		c, notices := h.connectNotices(t, "billing-service")
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		done := async(func() error {
			_, err := tx.Exec(ctx, "INSERT INTO payments (order_id, amount) VALUES ($1, $2) /* hold-tx-ok */", 4, "404.04")
			return err
		})
		h.vote(t, h.heldID(t, notices, done), true, "ok")
		if err := outcome(t, done); err != nil {
			t.Fatalf("approved statement in a transaction: %v", err)
		}
		var n int
		if err := tx.QueryRow(ctx, "SELECT count(*) FROM orders").Scan(&n); err != nil || c.PgConn().TxStatus() != 'T' {
			t.Fatalf("the transaction after the approved statement: %v, status %q", err, c.PgConn().TxStatus())
		}
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		if n := h.payments(t, "404.04"); n != 0 {
			t.Fatalf("rolled-back INSERT left %d rows", n)
		}
	})

	// Masks apply to an approved statement's rows, by the hidden Describe
	// in the extended protocol and by the RowDescription in the simple.
	for _, m := range []struct {
		name string
		mode pgx.QueryExecMode
		sql  string
		args []any
	}{
		{"extended", pgx.QueryExecModeCacheStatement, "SELECT email, card_number FROM customers WHERE id = $1 /* hold-mask-ext */", []any{1}},
		{"extended exec", pgx.QueryExecModeExec, "SELECT email, card_number FROM customers WHERE id = $1 AND $2::int > 0 /* hold-mask-exec */", []any{1, 1}},
		{"simple", pgx.QueryExecModeSimpleProtocol, "SELECT email, card_number FROM customers WHERE id = 1 /* hold-mask-simple */", nil},
	} {
		t.Run("masks after approval/"+m.name, func(t *testing.T) {
			c, notices := h.connectNotices(t, "billing-service")
			var vals []string
			done := async(func() error {
				var err error
				vals, err = queryStrings(ctx, c, m.sql, append([]any{m.mode}, m.args...)...)
				return err
			})
			id := h.heldID(t, notices, done)
			stillHeld(t, done)
			h.vote(t, id, true, "ok")
			if err := outcome(t, done); err != nil {
				t.Fatalf("approved SELECT: %v", err)
			}
			if want := []string{"j***@example.com", "[REDACTED]"}; !slices.Equal(vals, want) {
				t.Fatalf("approved SELECT returned %q, want %q", vals, want)
			}
			usable(t, c)
		})
	}

	// An approval binds the statement's parse tree and its parameter
	// bytes: it releases the same statement again, however it is laid
	// out, and nothing else.
	t.Run("a reusable approval binds the parameters", func(t *testing.T) {
		c, notices := h.connectNotices(t, "billing-service")
		total := func() string {
			t.Helper()
			var s string
			if err := h.su.QueryRow(ctx, "SELECT total::text FROM orders WHERE id = 1").Scan(&s); err != nil {
				t.Fatal(err)
			}
			return s
		}
		const sql = "UPDATE orders SET total = $1 WHERE id = $2"
		done := async(func() error {
			_, err := c.Exec(ctx, sql, "10.00", 1)
			return err
		})
		id := h.heldID(t, notices, done)
		h.vote(t, id, true, "ok")
		if err := outcome(t, done); err != nil || total() != "10.00" {
			t.Fatalf("approved UPDATE: %v, total %s", err, total())
		}
		// Released at once, without a new request.
		for _, q := range []string{sql, "/* again */ update orders\n  set total=$1\n where id=$2"} {
			if _, err := c.Exec(ctx, q, "10.00", 1); err != nil {
				t.Fatalf("%q with the approved parameters: %v", q, err)
			}
		}
		select {
		case msg := <-notices:
			t.Fatalf("the approved statement was held again: %s", msg)
		default:
		}
		if r := h.get(id); r.Uses != 3 {
			t.Errorf("the approval was used %d times, want 3", r.Uses)
		}
		// Other bytes are another request.
		done = async(func() error {
			_, err := c.Exec(ctx, sql, "10.01", 1)
			return err
		})
		other := h.heldID(t, notices, done)
		if other == id {
			t.Fatal("other parameters joined the approved request")
		}
		h.vote(t, other, false, "no")
		pgError(t, outcome(t, done), "42501")
		if total() != "10.00" {
			t.Fatalf("total %s after the denied UPDATE", total())
		}
		usable(t, c)
	})

	// A portal run in chunks (Execute with a row limit, as JDBC does with
	// a fetch size) is one statement: its approval covers the rest of its
	// rows.
	t.Run("fetching more rows of an approved portal", func(t *testing.T) {
		conn, fe := rawSession(t, h.env, "billing-service")
		defer conn.Close()
		send(t, fe, &pgproto3.Query{String: "BEGIN"})
		collect(t, conn, fe, 5*time.Second)
		send(t, fe, &pgproto3.Parse{Name: "c1", Query: "SELECT id, email FROM customers ORDER BY id /* hold-portal */"},
			&pgproto3.Bind{PreparedStatement: "c1", DestinationPortal: "p"}, &pgproto3.Execute{Portal: "p", MaxRows: 1}, &pgproto3.Sync{})
		id := rawHeld(t, conn, fe)
		h.vote(t, id, true, "ok")
		tr, vals, _ := collect(t, conn, fe, 5*time.Second)
		if got := strings.Join(tr, " "); got != "D PortalSuspended Z(T)" || !slices.Equal(vals, []string{"1", "j***@example.com"}) {
			t.Fatalf("first chunk: %s %q", got, vals)
		}
		send(t, fe, &pgproto3.Execute{Portal: "p", MaxRows: 1}, &pgproto3.Sync{})
		tr, vals, _ = collect(t, conn, fe, 3*time.Second)
		if got := strings.Join(tr, " "); got != "D PortalSuspended Z(T)" || !slices.Equal(vals, []string{"2", "r***@example.org"}) {
			t.Errorf("second chunk of the approved portal: %s %q", got, vals)
		}
		if open := h.list(func(r *approval.Request) bool { return r.State == approval.Pending }); len(open) != 0 {
			t.Errorf("the approved portal opened request %s", open[0].ID)
		}
	})

	// An Execute in a batch that has already failed will not run: it must
	// not be held, nor spend an approval.
	t.Run("an Execute the upstream will skip is not held", func(t *testing.T) {
		conn, fe := rawSession(t, h.env, "billing-service")
		defer conn.Close()
		send(t, fe, &pgproto3.Parse{Name: "bad", Query: "SELEC 1"},
			&pgproto3.Parse{Query: "INSERT INTO payments (order_id, amount) VALUES (7, 707.07) /* hold-skipped */"},
			&pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
		tr, _, timedOut := collect(t, conn, fe, 3*time.Second)
		if timedOut || len(tr) != 2 || !strings.HasPrefix(tr[0], "E(42501:") || tr[1] != "Z(I)" {
			t.Errorf("failed batch: %v (timed out: %v)", tr, timedOut)
		}
		if rs := h.list(func(r *approval.Request) bool { return strings.Contains(r.Subject.Text, "hold-skipped") }); len(rs) != 0 {
			t.Errorf("a statement that cannot run opened request %s", rs[0].ID)
		}
	})

	// In an aborted transaction PostgreSQL refuses every statement but
	// the end of the block: a statement under review gets its 25P02 at
	// once, not a hold.
	t.Run("a statement in an aborted transaction is not held", func(t *testing.T) {
		conn, fe := rawSession(t, h.env, "billing-service")
		defer conn.Close()
		send(t, fe, &pgproto3.Query{String: "BEGIN"})
		collect(t, conn, fe, 5*time.Second)
		send(t, fe, &pgproto3.Query{String: "SELECT 1/0"})
		if tr, _, _ := collect(t, conn, fe, 5*time.Second); len(tr) == 0 || tr[len(tr)-1] != "Z(E)" {
			t.Fatalf("the failing statement: %v", tr)
		}
		send(t, fe, &pgproto3.Query{String: "INSERT INTO payments (order_id, amount) VALUES (8, 808.08) /* hold-aborted */"})
		tr, _, timedOut := collect(t, conn, fe, 3*time.Second)
		if timedOut || len(tr) != 2 || !strings.HasPrefix(tr[0], "E(25P02:") || tr[1] != "Z(E)" {
			t.Errorf("in the aborted transaction: %v (timed out: %v)", tr, timedOut)
		}
		if rs := h.list(func(r *approval.Request) bool { return strings.Contains(r.Subject.Text, "hold-aborted") }); len(rs) != 0 {
			t.Errorf("a statement that cannot run opened request %s", rs[0].ID)
		}
		send(t, fe, &pgproto3.Query{String: "ROLLBACK"})
		if tr, _, _ := collect(t, conn, fe, 5*time.Second); len(tr) == 0 || tr[len(tr)-1] != "Z(I)" {
			t.Errorf("ROLLBACK: %v", tr)
		}
	})

	t.Run("CancelRequest withdraws the held statement", func(t *testing.T) {
		c, notices := h.connectNotices(t, "billing-service")
		done := async(func() error {
			_, err := c.Exec(ctx, "INSERT INTO payments (order_id, amount) VALUES ($1, $2) /* hold-cancel */", 5, "505.05")
			return err
		})
		id := h.heldID(t, notices, done)
		cancelled := async(func() error { return c.PgConn().CancelRequest(ctx) })
		pgErr := pgError(t, outcome(t, done), "57014")
		if !strings.Contains(pgErr.Message, id) || !strings.Contains(pgErr.Message, "withdrawn") {
			t.Errorf("message %q", pgErr.Message)
		}
		if err := outcome(t, cancelled); err != nil {
			t.Fatalf("CancelRequest: %v", err)
		}
		if r := h.get(id); r.State != approval.Cancelled {
			t.Fatalf("request after the cancel: %s (%s)", r.State, r.Outcome)
		}
		if _, err := h.approvals.Vote(context.Background(), id, dba, true, "late"); !errors.Is(err, approval.ErrSettled) {
			t.Errorf("approving a withdrawn request: %v, want ErrSettled", err)
		}
		if n := h.payments(t, "505.05"); n != 0 || h.reached(t, "hold-cancel") {
			t.Fatalf("cancelled INSERT: %d rows written, reached PostgreSQL: %v", n, h.reached(t, "hold-cancel"))
		}
		usable(t, c)
	})

	t.Run("a client that disconnects withdraws the request", func(t *testing.T) {
		conn, fe := rawSession(t, h.env, "billing-service")
		send(t, fe, &pgproto3.Query{String: "INSERT INTO payments (order_id, amount) VALUES (6, 606.06) /* hold-gone */"})
		id := rawHeld(t, conn, fe)
		conn.Close()
		select {
		case <-h.settled(id):
		case <-time.After(5 * time.Second):
			t.Fatal("the request is still pending 5s after its caller left")
		}
		r := h.get(id)
		if r.State != approval.Cancelled || !strings.Contains(r.Outcome, "disconnected") {
			t.Fatalf("request after the disconnect: %s (%s)", r.State, r.Outcome)
		}
		if _, err := h.approvals.Vote(context.Background(), id, dba, true, "late"); !errors.Is(err, approval.ErrSettled) {
			t.Errorf("approving a withdrawn request: %v, want ErrSettled", err)
		}
		if n := h.payments(t, "606.06"); n != 0 || h.reached(t, "hold-gone") {
			t.Fatalf("withdrawn INSERT: %d rows written, reached PostgreSQL: %v", n, h.reached(t, "hold-gone"))
		}
	})

	t.Run("a bundle that denies the statement during the hold", func(t *testing.T) {
		c, notices := h.connectNotices(t, "billing-service")
		done := async(func() error {
			_, err := c.Exec(ctx, "INSERT INTO payments (order_id, amount) VALUES ($1, $2) /* hold-frozen */", 9, "909.09")
			return err
		})
		id := h.heldID(t, notices, done)
		h.publish(t, h.policyF(h.issuer.URL, h.pg.Addr())+freezeRule)
		defer h.publish(t, h.policyF(h.issuer.URL, h.pg.Addr()))
		h.vote(t, id, true, "ok")
		pgErr := pgError(t, outcome(t, done), "42501")
		if !strings.Contains(pgErr.Message, "payments-frozen") {
			t.Errorf("message %q does not name the new deny rule", pgErr.Message)
		}
		if n := h.payments(t, "909.09"); n != 0 || h.reached(t, "hold-frozen") {
			t.Fatalf("INSERT denied by the new bundle: %d rows written, reached PostgreSQL: %v", n, h.reached(t, "hold-frozen"))
		}
		// The approval is not spent on a statement that did not run.
		if r := h.get(id); r.State != approval.Approved || r.Uses != 0 {
			t.Errorf("request: state %s, uses %d", r.State, r.Uses)
		}
		usable(t, c)
	})
}

// TestRequestHash: an approval binds the statement's parse tree and its
// parameters exactly as the server will read them: their bytes, formats
// and declared types, but not the SQL's layout or comments.
func TestRequestHash(t *testing.T) {
	const sql = "INSERT INTO payments (order_id, amount) VALUES ($1, $2)"
	text := func(vs ...string) *boundParams {
		p := &boundParams{}
		for _, v := range vs {
			p.values = append(p.values, []byte(v))
		}
		return p
	}
	base := text("1", "10.00")
	hash := func(t *testing.T, sql string, p *boundParams) string {
		t.Helper()
		h, err := requestHash(sql, p)
		if err != nil {
			t.Fatalf("requestHash(%q): %v", sql, err)
		}
		if !strings.HasPrefix(h, "sha256:") || len(h) != len("sha256:")+64 {
			t.Fatalf("hash %q", h)
		}
		return h
	}
	want := hash(t, sql, base)
	for _, c := range []struct {
		name string
		sql  string
		p    *boundParams
		same bool
	}{
		{"layout and case", "insert   into payments(order_id,amount)\n\tvalues ($1,$2)", base, true},
		{"comments", "/* who */ INSERT INTO payments (order_id, amount) -- why\nVALUES ($1, $2)", base, true},
		{"trailing semicolon", sql + ";", base, true},
		{"format codes spelled out", sql, &boundParams{formats: []int16{0, 0}, values: base.values}, true},
		{"one format code for all", sql, &boundParams{formats: []int16{0}, values: base.values}, true},
		{"resolved types are only for display", sql, &boundParams{values: base.values, oids: []uint32{pgtype.Int4OID, pgtype.NumericOID}}, true},

		{"other parameter bytes", sql, text("1", "10.01"), false},
		{"parameters swapped", sql, text("10.00", "1"), false},
		{"bytes moved between parameters", sql, text("11", "0.00"), false},
		{"NULL instead of empty", sql, &boundParams{values: [][]byte{[]byte("1"), nil}}, false},
		{"empty instead of NULL", sql, &boundParams{values: [][]byte{[]byte("1"), {}}}, false},
		{"binary format, same bytes", sql, &boundParams{formats: []int16{1}, values: base.values}, false},
		{"one parameter binary", sql, &boundParams{formats: []int16{0, 1}, values: base.values}, false},
		{"declared types", sql, &boundParams{values: base.values, declared: []uint32{pgtype.Int4OID, pgtype.NumericOID}}, false},
		{"no parameters", sql, nil, false},
		{"other columns", "INSERT INTO payments (id, amount) VALUES ($1, $2)", base, false},
		{"placeholders swapped", "INSERT INTO payments (order_id, amount) VALUES ($2, $1)", base, false},
		{"quoted identifier", `INSERT INTO "Payments" (order_id, amount) VALUES ($1, $2)`, base, false},
		{"other schema", "INSERT INTO billing.payments (order_id, amount) VALUES ($1, $2)", base, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := hash(t, c.sql, c.p); (got == want) != c.same {
				t.Errorf("hash equal to the base: %v, want %v", got == want, c.same)
			}
		})
	}

	t.Run("declared types differ", func(t *testing.T) {
		a := hash(t, sql, &boundParams{values: base.values, declared: []uint32{pgtype.Int4OID, pgtype.NumericOID}})
		b := hash(t, sql, &boundParams{values: base.values, declared: []uint32{pgtype.Int8OID, pgtype.NumericOID}})
		if a == b {
			t.Error("int4 and int8 declared types hash alike")
		}
	})
	t.Run("SQL that does not parse cannot be bound", func(t *testing.T) {
		if h, err := requestHash("INSERT INTO", base); err == nil {
			t.Errorf("hash %q for unparseable SQL", h)
		}
	})

	// The same statement sent through the gateway with other bytes opens
	// its own request: copyParams keeps what the Bind carried.
	t.Run("from Bind messages", func(t *testing.T) {
		bind := func(formats []int16, vals ...[]byte) *boundParams {
			return copyParams(&pgproto3.Bind{ParameterFormatCodes: formats, Parameters: vals})
		}
		a := hash(t, sql, bind(nil, []byte("1"), []byte("10.00")))
		if a != want {
			t.Error("a Bind's parameters hash unlike the same boundParams")
		}
		if hash(t, sql, bind([]int16{1}, []byte("1"), []byte("10.00"))) == a {
			t.Error("binary and text parameters hash alike")
		}
		if copyParams(&pgproto3.Bind{}) != nil {
			t.Error("a Bind without parameters has parameters")
		}
		// The copy does not alias pgproto3's buffer.
		buf := []byte("1")
		p := bind(nil, buf, []byte("10.00"))
		buf[0] = '9'
		if hash(t, sql, p) != want {
			t.Error("the parameters changed with the Bind's buffer")
		}
	})
}

// TestBoundParamsDisplay: approvers read text parameters as quoted
// literals and binary ones decoded by their type where it is known.
func TestBoundParamsDisplay(t *testing.T) {
	m := pgtype.NewMap()
	enc := func(oid uint32, v any) []byte {
		t.Helper()
		b, err := m.Encode(oid, pgtype.BinaryFormatCode, v, nil)
		if err != nil {
			t.Fatalf("encode %v as %d: %v", v, oid, err)
		}
		return b
	}
	ts := time.Date(2025, 3, 4, 5, 6, 7, 890000000, time.UTC)

	if (*boundParams)(nil).display(newTypeNames()) != nil {
		t.Error("no parameters display as something")
	}
	for _, c := range []struct {
		name string
		p    *boundParams
		want []string
	}{
		{"text", &boundParams{values: [][]byte{[]byte("42"), []byte("O'Brien"), nil, {}}},
			[]string{"$1 = '42'", "$2 = 'O''Brien'", "$3 = NULL", "$4 = ''"}},
		{"text with resolved types", &boundParams{values: [][]byte{[]byte("42"), nil}, oids: []uint32{pgtype.Int4OID, pgtype.TextOID}},
			[]string{"$1::int4 = '42'", "$2::text = NULL"}},
		{"text that is not UTF-8", &boundParams{values: [][]byte{{0xff, 0xfe}}},
			[]string{"$1 = binary 0xfffe"}},
		{"binary decoded", &boundParams{
			formats: []int16{1},
			values: [][]byte{enc(pgtype.Int4OID, int32(42)), enc(pgtype.NumericOID, pgtype.Numeric{Int: big.NewInt(-12345), Exp: -2, Valid: true}),
				enc(pgtype.BoolOID, true), enc(pgtype.TextOID, "it's"), nil},
			oids: []uint32{pgtype.Int4OID, pgtype.NumericOID, pgtype.BoolOID, pgtype.TextOID, pgtype.Int8OID}},
			[]string{"$1::int4 = '42'", "$2::numeric = '-123.45'", "$3::bool = 'true'", "$4::text = 'it''s'", "$5::int8 = NULL"}},
		{"per-parameter formats", &boundParams{
			formats: []int16{0, 1},
			values:  [][]byte{[]byte("7"), enc(pgtype.Int8OID, int64(-9000000000))},
			oids:    []uint32{pgtype.Int8OID, pgtype.Int8OID}},
			[]string{"$1::int8 = '7'", "$2::int8 = '-9000000000'"}},
		{"binary without types", &boundParams{formats: []int16{1}, values: [][]byte{{0, 0, 0, 42}}},
			[]string{"$1 = binary 0x0000002a"}},
		{"binary of an unknown type", &boundParams{formats: []int16{1}, values: [][]byte{{1, 2}}, oids: []uint32{999999}},
			[]string{"$1 = binary 0x0102"}},
		{"binary bytea", &boundParams{formats: []int16{1}, values: [][]byte{{0xde, 0xad}}, oids: []uint32{pgtype.ByteaOID}},
			[]string{"$1::bytea = binary 0xdead"}},
		{"binary that does not decode as its type", &boundParams{formats: []int16{1}, values: [][]byte{{1, 2, 3}}, oids: []uint32{pgtype.Int4OID}},
			[]string{"$1::int4 = binary 0x010203"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := c.p.display(newTypeNames()); !slices.Equal(got, c.want) {
				t.Errorf("display:\n got %q\nwant %q", got, c.want)
			}
		})
	}

	// A timestamptz shows the instant with its offset, in whatever zone
	// the gateway runs.
	t.Run("binary timestamptz", func(t *testing.T) {
		got := (&boundParams{formats: []int16{1}, values: [][]byte{enc(pgtype.TimestamptzOID, ts)}, oids: []uint32{pgtype.TimestamptzOID}}).display(newTypeNames())
		const prefix = "$1::timestamptz = '"
		if len(got) != 1 || !strings.HasPrefix(got[0], prefix) || !strings.HasSuffix(got[0], "'") {
			t.Fatalf("display %q", got)
		}
		at, err := time.Parse(time.RFC3339Nano, strings.TrimSuffix(strings.TrimPrefix(got[0], prefix), "'"))
		if err != nil || !at.Equal(ts) {
			t.Errorf("display %q: %v, want the instant %s", got[0], err, ts.Format(time.RFC3339Nano))
		}
	})
}
