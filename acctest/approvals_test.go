package acctest

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/gatehouse-dev/gatehouse/gateway/approval"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
)

const approvalsSchema = `
CREATE TABLE payments (id serial PRIMARY KEY, order_id int, amount numeric);
CREATE TABLE refunds (id serial PRIMARY KEY, order_id int, amount numeric);
CREATE TABLE ledger (id serial PRIMARY KEY, note text);
CREATE TABLE audit_notes (id serial PRIMARY KEY, note text);
`

// approvalsPolicy: billing-service writes, some writes need DBAs. The
// approvers are Hydra clients too, with groups from their bundle
// identities: alice, bob and carol are DBAs, dave is in ops.
func approvalsPolicy(hook string) func(issuer, dbAddr string) string {
	return func(issuer, dbAddr string) string {
		return fmt.Sprintf(`
identity_provider "hydra" {
  issuer    = %q
  audiences = ["gatehouse"]
}

identity "billing-service" {
  provider = "hydra"
  subject  = "billing-service"
  groups   = ["billing"]
}

identity "dba-alice" {
  provider = "hydra"
  subject  = "dba-alice"
  groups   = ["dba"]
}

identity "dba-bob" {
  provider = "hydra"
  subject  = "dba-bob"
  groups   = ["dba"]
}

identity "dba-carol" {
  provider = "hydra"
  subject  = "dba-carol"
  groups   = ["dba"]
}

identity "ops-dave" {
  provider = "hydra"
  subject  = "ops-dave"
  groups   = ["ops"]
}

postgres "orders" {
  address  = %q
  database = "orders"
  username = "gatehouse"
  password = "env:ORDERS_DB_PASSWORD"
}

policy "writers" {
  resources  = ["orders"]
  identities = ["billing-service", "dba-alice"]

  rule "work" {
    effect = "allow"
    when   = "request.statements.all(s, s.command in ['SELECT', 'INSERT', 'BEGIN', 'COMMIT'] && s.functions.all(f, f in ['count']))"
    reason = "reads and inserts"
  }
}

policy "approvals" {
  resources = ["orders"]
  everyone  = true

  rule "payments" {
    effect = "review"
    when   = "request.statements.exists(s, s.tables.exists(t, t.name == 'payments' && t.access == 'write'))"
    reason = "writes to payments need a DBA"
    approval {
      groups  = ["dba"]
      timeout = "2m"
      webhook {
        url    = %q
        secret = "env:HOOK_SECRET"
      }
    }
  }

  rule "refunds" {
    effect = "review"
    when   = "request.statements.exists(s, s.tables.exists(t, t.name == 'refunds' && t.access == 'write'))"
    reason = "refunds need two DBAs"
    approval {
      groups  = ["dba"]
      count   = 2
      timeout = "2m"
    }
  }

  rule "ledger" {
    effect = "review"
    when   = "request.statements.exists(s, s.tables.exists(t, t.name == 'ledger' && t.access == 'write'))"
    reason = "ledger entries are approved ahead"
    approval {
      groups    = ["dba"]
      hold      = false
      timeout   = "10m"
      valid_for = "5m"
    }
  }

  rule "audit-notes" {
    effect = "review"
    when   = "request.statements.exists(s, s.tables.exists(t, t.name == 'audit_notes' && t.access == 'write'))"
    reason = "audit notes need a quick DBA"
    approval {
      groups  = ["dba"]
      timeout = "2s"
    }
  }
}
`, issuer, dbAddr, hook)
	}
}

// hookReceiver collects webhook deliveries.
type hookReceiver struct {
	mu     sync.Mutex
	events []approval.Notification
	bad    []string
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	m := hmac.New(sha256.New, []byte("hook-secret-for-tests"))
	m.Write(body)
	h.mu.Lock()
	defer h.mu.Unlock()
	if got, want := r.Header.Get("X-Gatehouse-Signature"), "sha256="+hex.EncodeToString(m.Sum(nil)); got != want {
		h.bad = append(h.bad, fmt.Sprintf("signature %q, want %q", got, want))
	}
	var n approval.Notification
	if err := json.Unmarshal(body, &n); err != nil {
		h.bad = append(h.bad, err.Error())
	}
	h.events = append(h.events, n)
}

func (h *hookReceiver) seen(id, event string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, n := range h.events {
		if n.Approval.ID == id && n.Event == event {
			return true
		}
	}
	return false
}

// approver runs the approvals CLI as a Hydra client.
func (s *stack) approver(t *testing.T, client string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(gatehouseBin, append([]string{"approvals"}, args...)...)
	cmd.Env = append(os.Environ(), "GATEHOUSE_ADDR="+s.adminAddr)
	if client != "" {
		cmd.Env = append(cmd.Env, "GATEHOUSE_TOKEN="+s.token(t, client))
	}
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

// heldPsql is a psql whose statement may be held: its NOTICE lines are read
// as they come.
type heldPsql struct {
	cmd    *exec.Cmd
	notice chan string
	stderr strings.Builder
	mu     sync.Mutex
	done   chan error
	out    strings.Builder
}

var approvalID = regexp.MustCompile(`ap-[a-z2-7]{16}`)

func (s *stack) startPsql(t *testing.T, token, sql string) *heldPsql {
	t.Helper()
	host, port, _ := net.SplitHostPort(s.pgAddr)
	h := &heldPsql{notice: make(chan string, 1), done: make(chan error, 1)}
	h.cmd = exec.Command("psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
		fmt.Sprintf("host=%s port=%s dbname=orders user=svc sslmode=verify-full sslrootcert=%s", host, port, s.caFile), "-c", sql)
	h.cmd.Env = append(os.Environ(), "PGPASSWORD="+token, "PGCONNECT_TIMEOUT=10")
	h.cmd.Stdout = &h.out
	errPipe, err := h.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(errPipe)
		sent := false
		for sc.Scan() {
			line := sc.Text()
			h.mu.Lock()
			h.stderr.WriteString(line + "\n")
			h.mu.Unlock()
			if id := approvalID.FindString(line); id != "" && !sent && strings.Contains(line, "NOTICE") {
				h.notice <- id
				sent = true
			}
		}
		h.done <- h.cmd.Wait()
	}()
	t.Cleanup(func() { _ = h.cmd.Process.Kill() })
	return h
}

// held waits for the NOTICE that names the approval.
func (h *heldPsql) held(t *testing.T) string {
	t.Helper()
	select {
	case id := <-h.notice:
		return id
	case err := <-h.done:
		t.Fatalf("psql ended before a hold: %v\n%s", err, h.errText())
	case <-time.After(20 * time.Second):
		t.Fatalf("no NOTICE of a hold within 20s\n%s", h.errText())
	}
	return ""
}

func (h *heldPsql) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-h.done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("psql still running after 30s\n%s", h.errText())
	}
	return nil
}

func (h *heldPsql) errText() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.stderr.String()
}

// upstreamCount counts rows straight from PostgreSQL, not through the
// gateway.
func (s *stack) upstreamCount(t *testing.T, table, where string) int {
	t.Helper()
	c := s.pg.Conn(t, "orders")
	var n int
	if err := c.QueryRow(context.Background(), fmt.Sprintf("SELECT count(*) FROM %s WHERE %s", table, where)).Scan(&n); err != nil {
		t.Fatalf("count: %v", err)
	}
	return n
}

// recordingOf finds the recording that mentions an approval and returns
// its events.
func (s *stack) recordingOf(t *testing.T, id string) []recorder.Event {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(s.dataDir, "recordings", "*.jsonl"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil || !strings.Contains(string(b), id) {
			continue
		}
		evs, err := recorder.ReadEvents(f)
		if err != nil {
			t.Fatal(err)
		}
		return evs
	}
	t.Fatalf("no recording mentions %s", id)
	return nil
}

func TestApprovalsEndToEnd(t *testing.T) {
	if _, err := exec.LookPath("psql"); err != nil {
		t.Fatalf("psql is required: %v (apt package postgresql-client-15)", err)
	}
	hook := &hookReceiver{}
	hooks := httptest.NewServer(hook)
	defer hooks.Close()
	s := startStackWith(t, stackOptions{
		policy:  approvalsPolicy(hooks.URL + "/gatehouse"),
		schema:  approvalsSchema,
		clients: []string{"billing-service", "dba-alice", "dba-bob", "dba-carol", "ops-dave"},
		env:     []string{"HOOK_SECRET=hook-secret-for-tests"},
	})
	billing := s.token(t, "billing-service")

	t.Run("held, approved from the CLI, run, recorded in order", func(t *testing.T) {
		p := s.startPsql(t, billing, "INSERT INTO payments (order_id, amount) VALUES (1, 42.00)")
		id := p.held(t)
		out, code := s.approver(t, "dba-alice", "list")
		if code != 0 || !strings.Contains(out, id) || !strings.Contains(out, "billing-service") {
			t.Fatalf("approvals list: exit %d\n%s", code, out)
		}
		out, code = s.approver(t, "dba-alice", "show", id)
		if code != 0 || !strings.Contains(out, "INSERT INTO payments (order_id, amount) VALUES (1, 42.00)") || !strings.Contains(out, "approvals/payments") {
			t.Fatalf("approvals show: exit %d\n%s", code, out)
		}
		if n := s.upstreamCount(t, "payments", "amount = 42.00"); n != 0 {
			t.Fatalf("the held statement reached the database (%d rows)", n)
		}
		out, code = s.approver(t, "dba-alice", "approve", id, "--comment", "settling order 1")
		if code != 0 || !strings.Contains(out, "Approved "+id) {
			t.Fatalf("approve: exit %d\n%s", code, out)
		}
		if err := p.wait(t); err != nil {
			t.Fatalf("psql after approval: %v\n%s", err, p.errText())
		}
		if !strings.Contains(p.errText(), "NOTICE:  gatehouse: this statement is held for approval "+id) ||
			!strings.Contains(p.errText(), "gatehouse approvals approve "+id) {
			t.Errorf("the caller's NOTICE lacks the id or how to approve:\n%s", p.errText())
		}
		if n := s.upstreamCount(t, "payments", "amount = 42.00"); n != 1 {
			t.Fatalf("after approval the row is not written (%d rows)", n)
		}
		// The recording: the statement (review, naming the request),
		// then the approval with the approver and comment, then its
		// result.
		var order []string
		for _, ev := range s.recordingOf(t, id) {
			switch {
			case recorder.IsRequest(ev.Type) && ev.Approval == id && ev.Effect == "review":
				order = append(order, "request")
			case ev.Type == recorder.TypeApproval && ev.Approval == id && ev.State == "approved" &&
				len(ev.Votes) == 1 && ev.Votes[0].Subject == "dba-alice" && ev.Votes[0].Comment == "settling order 1":
				order = append(order, "approval")
			case ev.Type == recorder.TypeResult && len(order) == 2 && ev.Rows == 1:
				order = append(order, "execution")
			}
		}
		if strings.Join(order, ",") != "request,approval,execution" {
			t.Errorf("recording order %v, want request, approval, execution", order)
		}
		// Replay shows it to people.
		files, _ := filepath.Glob(filepath.Join(s.dataDir, "recordings", "*.jsonl"))
		var replay string
		for _, f := range files {
			if out, _ := ghRun(t, "replay", f); strings.Contains(out, id) {
				replay = out
			}
		}
		if !strings.Contains(replay, "APPROV "+id+" APPROVED") || !strings.Contains(replay, "approve by dba-alice") {
			t.Errorf("replay does not show the approval:\n%s", replay)
		}
		// The webhook heard it open and settle, signed.
		deadline := time.Now().Add(10 * time.Second)
		for !(hook.seen(id, approval.EventRequested) && hook.seen(id, approval.EventApproved)) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if !hook.seen(id, approval.EventRequested) || !hook.seen(id, approval.EventApproved) {
			t.Errorf("webhook events for %s: requested %v, approved %v", id, hook.seen(id, approval.EventRequested), hook.seen(id, approval.EventApproved))
		}
		hook.mu.Lock()
		if len(hook.bad) > 0 {
			t.Errorf("webhook deliveries: %v", hook.bad)
		}
		for _, n := range hook.events {
			if n.Approval.ID == id && n.Event == approval.EventRequested && !strings.Contains(n.Text, id) {
				t.Errorf("webhook text lacks the id: %q", n.Text)
			}
		}
		hook.mu.Unlock()
	})

	t.Run("denied with a comment; the session stays usable", func(t *testing.T) {
		c, err := s.pgx(t, billing)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(context.Background())
		errc := make(chan error, 1)
		go func() {
			// The extended protocol, with parameters.
			_, err := c.Exec(context.Background(), "INSERT INTO payments (order_id, amount) VALUES ($1, $2)", 2, 99.5)
			errc <- err
		}()
		id := s.waitPending(t, "dba-bob", "payments")
		out, code := s.approver(t, "dba-bob", "show", id)
		// pgx sends binary parameters; approvers read them as values.
		if code != 0 || !strings.Contains(out, "$1::int4 = '2'") || !strings.Contains(out, "$2::numeric = '99.5'") {
			t.Errorf("show does not give the bound parameters: exit %d\n%s", code, out)
		}
		if out, code := s.approver(t, "dba-bob", "deny", id); code != 2 || !strings.Contains(out, "--comment") {
			t.Errorf("deny without a comment: exit %d\n%s", code, out)
		}
		if out, code := s.approver(t, "dba-bob", "deny", id, "--comment", "use the refunds job"); code != 0 {
			t.Fatalf("deny: exit %d\n%s", code, out)
		}
		err = <-errc
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42501" || !strings.Contains(pgErr.Message, id) || !strings.Contains(pgErr.Message, "use the refunds job") {
			t.Fatalf("denied statement: %v", err)
		}
		var n int
		if err := c.QueryRow(context.Background(), "SELECT count(*) FROM orders").Scan(&n); err != nil {
			t.Fatalf("the session is not usable after a denial: %v", err)
		}
		if n := s.upstreamCount(t, "payments", "amount = 99.5"); n != 0 {
			t.Fatal("the denied row was written")
		}
	})

	t.Run("nobody decides: the request expires", func(t *testing.T) {
		_, stderr, err := s.psql(t, billing, "INSERT INTO audit_notes (note) VALUES ('late')")
		if err == nil || !strings.Contains(stderr, "ERROR:  gatehouse: approval ap-") || !strings.Contains(stderr, "expired") && !strings.Contains(stderr, "not given within") {
			t.Fatalf("err %v\n%s", err, stderr)
		}
		if n := s.upstreamCount(t, "audit_notes", "true"); n != 0 {
			t.Fatal("an expired statement ran")
		}
	})

	t.Run("self-approval is refused; another approver releases it", func(t *testing.T) {
		alice := s.token(t, "dba-alice")
		p := s.startPsql(t, alice, "INSERT INTO payments (order_id, amount) VALUES (3, 7.00)")
		id := p.held(t)
		out, code := s.approver(t, "dba-alice", "approve", id, "--comment", "looks fine to me")
		if code != 1 || !strings.Contains(out, "own requests") || !strings.Contains(out, "HTTP 403") {
			t.Fatalf("self-approval: exit %d\n%s", code, out)
		}
		if out, code := s.approver(t, "dba-carol", "approve", id); code != 0 {
			t.Fatalf("approve: exit %d\n%s", code, out)
		}
		if err := p.wait(t); err != nil {
			t.Fatalf("psql: %v\n%s", err, p.errText())
		}
		if n := s.upstreamCount(t, "payments", "amount = 7.00"); n != 1 {
			t.Fatal("row not written")
		}
	})

	t.Run("two of three", func(t *testing.T) {
		p := s.startPsql(t, billing, "INSERT INTO refunds (order_id, amount) VALUES (1, 5)")
		id := p.held(t)
		out, code := s.approver(t, "dba-alice", "approve", id, "--comment", "one")
		if code != 0 || !strings.Contains(out, "1 of 2 given") {
			t.Fatalf("first approval: exit %d\n%s", code, out)
		}
		if out, code := s.approver(t, "dba-alice", "approve", id); code != 1 || !strings.Contains(out, "already voted") {
			t.Fatalf("second vote by the same approver: exit %d\n%s", code, out)
		}
		if n := s.upstreamCount(t, "refunds", "true"); n != 0 {
			t.Fatal("ran after one approval of two")
		}
		if out, code := s.approver(t, "dba-bob", "approve", id, "--comment", "two"); code != 0 || !strings.Contains(out, "Approved") {
			t.Fatalf("second approval: exit %d\n%s", code, out)
		}
		if err := p.wait(t); err != nil {
			t.Fatalf("psql: %v\n%s", err, p.errText())
		}
		if n := s.upstreamCount(t, "refunds", "true"); n != 1 {
			t.Fatal("row not written")
		}
		if out, code := s.approver(t, "dba-carol", "deny", id, "--comment", "too late"); code != 1 || !strings.Contains(out, "HTTP 409") {
			t.Errorf("a vote after settlement: exit %d\n%s", code, out)
		}
	})

	t.Run("hold = false: the approval is bound to the statement and the caller, and used once", func(t *testing.T) {
		x := "INSERT INTO ledger (note) VALUES ('x')"
		_, stderr, err := s.psql(t, billing, x)
		id := approvalID.FindString(stderr)
		if err == nil || id == "" || !strings.Contains(stderr, "approval required") {
			t.Fatalf("fail fast: err %v\n%s", err, stderr)
		}
		if out, code := s.approver(t, "dba-bob", "approve", id, "--comment", "ok"); code != 0 {
			t.Fatalf("approve: exit %d\n%s", code, out)
		}
		// Statement Y (another hash) is not released by X's approval.
		_, stderr, err = s.psql(t, billing, "INSERT INTO ledger (note) VALUES ('y')")
		if err == nil || approvalID.FindString(stderr) == id || approvalID.FindString(stderr) == "" {
			t.Fatalf("statement Y: err %v\n%s", err, stderr)
		}
		// X by another identity is not released either.
		_, stderr, err = s.psql(t, s.token(t, "dba-alice"), x)
		if err == nil || approvalID.FindString(stderr) == id {
			t.Fatalf("X by dba-alice: err %v\n%s", err, stderr)
		}
		// X again by billing-service (spelled differently: the hash is
		// of the parse tree) passes, once.
		if _, stderr, err := s.psql(t, billing, "insert into ledger (note)\n  values ('x') -- retry"); err != nil {
			t.Fatalf("retry after approval: %v\n%s", err, stderr)
		}
		if n := s.upstreamCount(t, "ledger", "note = 'x'"); n != 1 {
			t.Fatalf("%d rows of x", n)
		}
		_, stderr, err = s.psql(t, billing, x)
		if err == nil || approvalID.FindString(stderr) == id {
			t.Fatalf("a used single-use approval released X again: err %v\n%s", err, stderr)
		}
		if n := s.upstreamCount(t, "ledger", "true"); n != 1 {
			t.Fatalf("%d ledger rows, want 1", n)
		}
	})

	t.Run("extended protocol: the approval binds the parameters", func(t *testing.T) {
		c, err := s.pgx(t, billing)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(context.Background())
		insert := func(note string) (string, error) {
			_, err := c.Exec(context.Background(), "INSERT INTO ledger (note) VALUES ($1)", note)
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) {
				return approvalID.FindString(pgErr.Message), err
			}
			return "", err
		}
		id, err := insert("param-p")
		if err == nil || id == "" {
			t.Fatalf("fail fast: %v", err)
		}
		if out, code := s.approver(t, "dba-carol", "approve", id); code != 0 {
			t.Fatalf("approve: exit %d\n%s", code, out)
		}
		if other, err := insert("param-q"); err == nil || other == id {
			t.Fatalf("other parameters released by %s's approval: %v", id, err)
		}
		if _, err := insert("param-p"); err != nil {
			t.Fatalf("the approved parameters: %v", err)
		}
		if n := s.upstreamCount(t, "ledger", "note LIKE 'param-%'"); n != 1 {
			t.Fatalf("%d rows, want the approved one", n)
		}
	})

	t.Run("cancelling a held statement withdraws the request", func(t *testing.T) {
		p := s.startPsql(t, billing, "INSERT INTO payments (order_id, amount) VALUES (5, 3.50)")
		id := p.held(t)
		// psql sends a CancelRequest on SIGINT, as on Ctrl-C.
		if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		if err := p.wait(t); err == nil || !strings.Contains(p.errText(), "canceling statement due to user request") || !strings.Contains(p.errText(), id) {
			t.Fatalf("psql after cancel: %v\n%s", err, p.errText())
		}
		out, code := s.approver(t, "dba-alice", "show", id)
		if code != 0 || !strings.Contains(out, "CANCELLED") {
			t.Fatalf("show after cancel: exit %d\n%s", code, out)
		}
		if out, code := s.approver(t, "dba-alice", "approve", id); code != 1 || !strings.Contains(out, "HTTP 409") {
			t.Errorf("approving a cancelled request: exit %d\n%s", code, out)
		}
		if n := s.upstreamCount(t, "payments", "amount = 3.50"); n != 0 {
			t.Fatal("a cancelled statement ran")
		}
	})

	t.Run("a caller that goes away during the hold withdraws the request", func(t *testing.T) {
		p := s.startPsql(t, billing, "INSERT INTO payments (order_id, amount) VALUES (6, 6.66)")
		id := p.held(t)
		if err := p.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			out, code := s.approver(t, "dba-alice", "show", id)
			if code == 0 && strings.Contains(out, "CANCELLED") && strings.Contains(out, "disconnected") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the request of a vanished caller is not withdrawn: exit %d\n%s", code, out)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if n := s.upstreamCount(t, "payments", "amount = 6.66"); n != 0 {
			t.Fatal("a vanished caller's statement ran")
		}
	})

	t.Run("admin API authentication", func(t *testing.T) {
		resp, err := http.Get("http://" + s.adminAddr + "/v1/approvals")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("no token: %s, WWW-Authenticate %q", resp.Status, resp.Header.Get("WWW-Authenticate"))
		}
		if out, code := s.approver(t, "", "list"); code != 2 || !strings.Contains(out, "GATEHOUSE_TOKEN") {
			t.Errorf("CLI without a token: exit %d\n%s", code, out)
		}
		if out, code := s.approver(t, "ops-dave", "list"); code != 1 || !strings.Contains(out, "HTTP 403") {
			t.Errorf("wrong group: exit %d\n%s", code, out)
		}
		req, _ := http.NewRequest(http.MethodGet, "http://"+s.adminAddr+"/v1/approvals", nil)
		req.Header.Set("Authorization", "Bearer not-a-token")
		resp, err = http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("bad token: %s", resp.Status)
		}
		for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
			resp, err := http.Get("http://" + s.adminAddr + path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("%s: %s", path, resp.Status)
			}
			if path == "/metrics" && !strings.Contains(string(body), `gatehouse_approvals{state="approved"}`) {
				t.Errorf("/metrics lacks the approvals gauge")
			}
		}
	})

	t.Run("a held statement across a gateway restart", func(t *testing.T) {
		p := s.startPsql(t, billing, "INSERT INTO payments (order_id, amount) VALUES (4, 1.25)")
		id := p.held(t)
		s.stopGateway(t)
		err := p.wait(t)
		if err == nil || !strings.Contains(p.errText(), id) || !strings.Contains(p.errText(), "run the same statement again") {
			t.Fatalf("the held client at shutdown: %v\n%s", err, p.errText())
		}
		s.startGateway(t)
		out, code := s.approver(t, "dba-alice", "list")
		if code != 0 || !strings.Contains(out, id) {
			t.Fatalf("after restart the request is not pending: exit %d\n%s", code, out)
		}
		if out, code := s.approver(t, "dba-alice", "approve", id, "--comment", "after the restart"); code != 0 {
			t.Fatalf("approve: exit %d\n%s", code, out)
		}
		if _, stderr, err := s.psql(t, billing, "INSERT INTO payments (order_id, amount) VALUES (4, 1.25)"); err != nil {
			t.Fatalf("retry after approval: %v\n%s", err, stderr)
		}
		if n := s.upstreamCount(t, "payments", "amount = 1.25"); n != 1 {
			t.Fatalf("%d rows", n)
		}
	})
}

// waitPending waits for a pending request on table and returns its id.
func (s *stack) waitPending(t *testing.T, client, table string) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, code := s.approver(t, client, "list", "-o", "json")
		if code != 0 {
			t.Fatalf("list: exit %d\n%s", code, out)
		}
		var l struct {
			Approvals []approval.Request `json:"approvals"`
		}
		if err := json.Unmarshal([]byte(out), &l); err != nil {
			t.Fatal(err)
		}
		for _, r := range l.Approvals {
			if strings.Contains(r.Subject.Text, table) {
				return r.ID
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no pending request on %s", table)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
