package acctest

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/gatehouse-dev/gatehouse/gateway/approval"
	"github.com/gatehouse-dev/gatehouse/gateway/bundlestore"
	"github.com/gatehouse-dev/gatehouse/internal/s3test"
)

// TestReplicas runs three gateway processes that share what a team would
// share: approvals in one PostgreSQL state database, and one bundle
// published over HTTPS. Each has its own data directory, listeners and
// recordings. A statement held on one replica is approved through
// another's admin API and runs once; a one-time approval spent on one
// replica is refused on a third; a bundle reaches all three, and a
// tampered or older one is refused by all three while they keep serving;
// a CancelRequest reaching another replica cancels the right statement;
// and a replica killed mid-session loses no recording: each replica's
// recordings, uploaded to its prefix of one bucket, verify from there.
func TestReplicas(t *testing.T) {
	hook := &hookReceiver{}
	hooks := httptest.NewServer(hook)
	defer hooks.Close()
	s := startStackWith(t, stackOptions{
		policy:  approvalsPolicy(hooks.URL + "/gatehouse"),
		schema:  approvalsSchema,
		clients: []string{"billing-service", "dba-alice", "dba-bob"},
		env:     []string{"HOOK_SECRET=hook-secret-for-tests"},
	})
	// The stack's own gateway (a file bundle, approvals in its data
	// directory) makes way for the replicas.
	s.stopGateway(t)
	s.pg.CreateDatabase(t, "gatehouse_state", "gatehouse")
	dsn := s.pg.ConnString("gatehouse", s.pgPass, "gatehouse_state")

	s3 := s3test.Start(t)
	// Each replica anchors its ledger in a bucket with object lock.
	if err := s3.CreateLockedBucket("anchors"); err != nil {
		t.Fatal(err)
	}
	srv := bundlestore.StartTestServer(t, "")
	build := func(rev int) []byte {
		out := filepath.Join(t.TempDir(), "policy.bundle")
		gh(t, "bundle", "build", s.policyDir, "--key", s.keyFile, "--out", out, "--revision", fmt.Sprint(rev))
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	srv.Publish(build(100))

	dir := t.TempDir()
	caFile, cert, key := tlsFiles(t, dir)
	replicas := make([]*stack, 3)
	for i := range replicas {
		r := *s
		r.caFile, r.pgAddr, r.adminAddr = caFile, freePort(t), freePort(t)
		r.dataDir = filepath.Join(dir, fmt.Sprintf("replica-%d", i))
		r.logs, r.gateway, r.exited = &lockedBuffer{}, nil, nil
		cfg := fmt.Sprintf(`data_dir = %q

postgres {
  listen   = %q
  tls_cert = %q
  tls_key  = %q
}

bundle {
  url           = "%s/policy.bundle"
  ca_file       = %q
  trusted_keys  = [%q]
  poll_interval = "1s"
}

state {
  postgres = "env:GATEHOUSE_STATE_DSN"
}

recorder {
  anchor           = "s3://anchors/replica-%d"
  anchor_retention = "1h"
  bucket {
    url        = "s3://%s/replica-%d"
    endpoint   = %q
    access_key = "env:GH_S3_KEY"
    secret_key = "env:GH_S3_SECRET"
  }
}

admin {
  listen = %q
}

log {
  level = "debug"
}
`, r.dataDir, r.pgAddr, cert, key, srv.URL, srv.CAFile, filepath.Join(filepath.Dir(s.keyFile), "gatehouse.pub"), i, s3.Bucket(), i, s3.Endpoint(), r.adminAddr)
		r.cfgFile = filepath.Join(dir, fmt.Sprintf("replica-%d.hcl", i))
		if err := os.WriteFile(r.cfgFile, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		r.env = append(append([]string{}, s.env...), "GATEHOUSE_STATE_DSN="+dsn, "GH_S3_KEY="+s3.AccessKey(), "GH_S3_SECRET="+s3.SecretKey())
		replicas[i] = &r
		t.Cleanup(func() {
			r.stopGateway(t)
			if t.Failed() {
				t.Logf("replica %d log:\n%s", i, r.logs.String())
			}
		})
	}
	// Started at once: the state schema's migrations are safe with
	// several replicas starting together.
	started := make(chan struct{}, len(replicas))
	for _, r := range replicas {
		go func() {
			defer func() { started <- struct{}{} }()
			r.startGateway(t)
		}()
	}
	for range replicas {
		<-started
	}
	if t.Failed() {
		t.FailNow()
	}
	a, b, c := replicas[0], replicas[1], replicas[2]
	billing := s.token(t, "billing-service")

	t.Run("a bundle over HTTPS reaches all three; a tampered or older one is refused by all three", func(t *testing.T) {
		for i, r := range replicas {
			st := r.waitBundle(t, "revision 100", func(st map[string]any) bool { return st["revision"] == 100.0 })
			if st["source_url"] != srv.URL+"/policy.bundle" {
				t.Errorf("replica %d serves %v", i, st)
			}
		}
		srv.Publish(build(101))
		for _, r := range replicas {
			r.waitBundle(t, "revision 101", func(st map[string]any) bool { return st["revision"] == 101.0 })
		}
		tampered := build(102)
		tampered[len(tampered)/2] ^= 1
		srv.Publish(tampered)
		for _, r := range replicas {
			r.waitBundle(t, "the tampered bundle refused", fetchFailing("bundle refused"))
		}
		srv.Publish(build(99))
		for i, r := range replicas {
			st := r.waitBundle(t, "the older bundle refused", fetchFailing("not newer than the active one"))
			if st["revision"] != 101.0 {
				t.Errorf("replica %d: %v", i, st)
			}
		}
		// They keep serving under revision 101.
		for i, r := range replicas {
			if out, _, err := r.psql(t, billing, "SELECT count(*) FROM orders"); err != nil || strings.TrimSpace(out) == "" {
				t.Errorf("replica %d after the refusals: %v %q", i, err, out)
			}
		}
		srv.Publish(build(103))
		for _, r := range replicas {
			r.waitBundle(t, "revision 103", func(st map[string]any) bool { return st["revision"] == 103.0 })
		}
	})

	t.Run("held on one replica, approved through another, run once", func(t *testing.T) {
		p := a.startPsql(t, billing, "INSERT INTO payments (order_id, amount) VALUES (7, 70.00)")
		id := p.held(t)
		out, code := c.approver(t, "dba-alice", "list")
		if code != 0 || !strings.Contains(out, id) {
			t.Fatalf("a third replica does not list the request: exit %d\n%s", code, out)
		}
		if out, code := b.approver(t, "dba-bob", "approve", id, "--comment", "via replica b"); code != 0 || !strings.Contains(out, "Approved "+id) {
			t.Fatalf("approve on b: exit %d\n%s", code, out)
		}
		if err := p.wait(t); err != nil {
			t.Fatalf("the held psql on a after the approval on b: %v\n%s", err, p.errText())
		}
		if n := a.upstreamCount(t, "payments", "amount = 70.00"); n != 1 {
			t.Fatalf("%d rows, want the statement run once", n)
		}
	})

	t.Run("a CancelRequest that reaches another replica cancels the right statement", func(t *testing.T) {
		conn, err := a.pgx(t, billing)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		done := make(chan error, 1)
		go func() {
			_, err := conn.Exec(context.Background(), "INSERT INTO payments (order_id, amount) VALUES (8, 80.00)")
			done <- err
		}()
		id := a.waitPendingText(t, "dba-alice", "80.00")
		// The client's cancel connection lands on replica c, as a load
		// balancer may send it: the key (pid and secret) is all it holds.
		pid, secret := conn.PgConn().PID(), conn.PgConn().SecretKey()
		cancel := make([]byte, 12+len(secret))
		binary.BigEndian.PutUint32(cancel[0:], uint32(len(cancel)))
		binary.BigEndian.PutUint32(cancel[4:], 80877102)
		binary.BigEndian.PutUint32(cancel[8:], pid)
		copy(cancel[12:], secret)
		cn, err := net.Dial("tcp", c.pgAddr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cn.Write(cancel); err != nil {
			t.Fatal(err)
		}
		cn.Close()
		select {
		case err := <-done:
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "57014" || !strings.Contains(pe.Message, id) {
				t.Fatalf("the held statement on a after a cancel sent to c: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Fatal("a cancel sent to replica c did not reach the statement held on a")
		}
		if n := a.upstreamCount(t, "payments", "amount = 80.00"); n != 0 {
			t.Fatalf("the cancelled statement ran (%d rows)", n)
		}
	})

	t.Run("a one-time approval is spent once, whichever replica the retry reaches", func(t *testing.T) {
		x := "INSERT INTO ledger (note) VALUES ('replicated')"
		_, stderr, err := a.psql(t, billing, x)
		id := approvalID.FindString(stderr)
		if err == nil || id == "" {
			t.Fatalf("hold = false on a: %v\n%s", err, stderr)
		}
		if out, code := c.approver(t, "dba-bob", "approve", id, "--comment", "once"); code != 0 {
			t.Fatalf("approve on c: exit %d\n%s", code, out)
		}
		if _, stderr, err := b.psql(t, billing, x); err != nil {
			t.Fatalf("the retry on b: %v\n%s", err, stderr)
		}
		_, stderr, err = c.psql(t, billing, x)
		if err == nil || approvalID.FindString(stderr) == id {
			t.Fatalf("a second use on c was not refused: %v\n%s", err, stderr)
		}
		if n := a.upstreamCount(t, "ledger", "note = 'replicated'"); n != 1 {
			t.Fatalf("%d ledger rows, want 1", n)
		}
	})

	// Last: it kills a replica.
	t.Run("killing a replica loses no recording: every replica's recordings verify from the bucket", func(t *testing.T) {
		conn, err := a.pgx(t, billing)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(context.Background(), "SELECT count(*) FROM orders"); err != nil {
			t.Fatal(err)
		}
		// The session index names it, open, on replica 0.
		s3env := []string{"GATEHOUSE_S3_ENDPOINT=" + s3.Endpoint(), "AWS_ACCESS_KEY_ID=" + s3.AccessKey(), "AWS_SECRET_ACCESS_KEY=" + s3.SecretKey(),
			"GATEHOUSE_STATE_DSN=" + dsn}
		killed := waitIndexed(t, s3env, "s3://"+s3.Bucket()+"/replica-0", func(e indexRow) bool { return e.Status == "open" && e.Identity == "billing-service" })
		a.kill(t)
		conn.Close(context.Background())
		// The others keep serving meanwhile.
		if _, stderr, err := b.psql(t, billing, "SELECT count(*) FROM orders"); err != nil {
			t.Fatalf("replica b while a is down: %v\n%s", err, stderr)
		}
		// The next start crash-seals the killed session and uploads it.
		a.startGateway(t)
		for i, r := range replicas {
			prefix := fmt.Sprintf("s3://%s/replica-%d", s3.Bucket(), i)
			var out string
			var code int
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(250 * time.Millisecond) {
				cmd := exec.Command(gatehouseBin, "audit", "verify", prefix, "--key", filepath.Join(r.dataDir, "recorder.pub"),
					"--anchor", fmt.Sprintf("s3://anchors/replica-%d", i))
				cmd.Env = append(os.Environ(), s3env...)
				raw, err := cmd.CombinedOutput()
				out, code = string(raw), 0
				if ee, ok := err.(*exec.ExitError); ok {
					code = ee.ExitCode()
				} else if err != nil {
					t.Fatal(err)
				}
				done := code == 0 && strings.Contains(out, "0 with problems") && strings.Contains(out, "ANCHOR")
				if i == 0 {
					done = done && strings.Contains(out, "CRASHED")
				}
				if done || time.Now().After(deadline) {
					break
				}
			}
			if code != 0 || strings.Contains(out, "MISSING") || strings.Contains(out, "UNSEALED") || (i == 0 && !strings.Contains(out, "CRASHED")) ||
				!strings.Contains(out, "ANCHOR") {
				t.Fatalf("audit verify %s: exit %d\n%s", prefix, code, out)
			}
		}
		// The index, read without the bucket, has the killed session
		// crash-sealed and uploaded, and every replica's sessions.
		row := waitIndexed(t, s3env, "s3://"+s3.Bucket()+"/", func(e indexRow) bool { return e.Session == killed.Session && e.Status == "crashed" })
		if row.Object != "s3://"+s3.Bucket()+"/replica-0/"+killed.Session+".jsonl" || row.SHA256 == "" || row.Ended == nil {
			t.Errorf("the killed session's row: %+v", row)
		}
		for i := range replicas {
			waitIndexed(t, s3env, fmt.Sprintf("s3://%s/replica-%d", s3.Bucket(), i), func(e indexRow) bool { return e.Status == "ok" && e.Object != "" })
		}
	})
}

// indexRow is a row of `sessions list --state --format json`.
type indexRow struct {
	Session  string     `json:"session"`
	Location string     `json:"location"`
	Identity string     `json:"identity"`
	Status   string     `json:"status"`
	Object   string     `json:"object"`
	SHA256   string     `json:"sha256"`
	Ended    *time.Time `json:"ended"`
}

// waitIndexed waits for `gatehouse sessions list --state` under the
// bucket URL where to list a row that ok accepts, and returns it.
func waitIndexed(t *testing.T, env []string, where string, ok func(indexRow) bool) indexRow {
	t.Helper()
	var last string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		out, stderr, code := ghEnv(t, env, "sessions", "list", where, "--state", "env:GATEHOUSE_STATE_DSN", "--format", "json")
		if code != 0 {
			t.Fatalf("sessions list --state: exit %d\n%s", code, stderr)
		}
		var rows []indexRow
		if err := json.Unmarshal([]byte(out), &rows); err != nil {
			t.Fatalf("sessions list --state: %v\n%s", err, out)
		}
		for i := len(rows) - 1; i >= 0; i-- { // newest first
			r := rows[i]
			if !strings.HasPrefix(r.Location, strings.TrimSuffix(where, "/")+"/") {
				t.Fatalf("sessions list %s listed %s", where, r.Location)
			}
			if ok(r) {
				return r
			}
		}
		last = out
	}
	t.Fatalf("no such row in the session index under %s:\n%s", where, last)
	return indexRow{}
}

// waitPendingText waits for a pending approval whose statement mentions
// text, as approver client sees it on this replica.
func (s *stack) waitPendingText(t *testing.T, client, text string) string {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		out, code := s.approver(t, client, "list", "--format", "json")
		if code != 0 {
			t.Fatalf("approvals list: exit %d\n%s", code, out)
		}
		var l struct {
			Approvals []approval.Request `json:"approvals"`
		}
		if err := json.Unmarshal([]byte(out), &l); err != nil {
			t.Fatal(err)
		}
		for _, r := range l.Approvals {
			if strings.Contains(r.Subject.Text, text) && r.State == approval.Pending {
				return r.ID
			}
		}
	}
	t.Fatalf("no pending approval for %q", text)
	return ""
}

// waitBundle polls the replica's /v1/bundle until cond holds.
func (s *stack) waitBundle(t *testing.T, what string, cond func(map[string]any) bool) map[string]any {
	t.Helper()
	var last map[string]any
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		resp, err := http.Get("http://" + s.adminAddr + "/v1/bundle")
		if err != nil {
			continue
		}
		last = nil
		_ = json.NewDecoder(resp.Body).Decode(&last)
		resp.Body.Close()
		if last != nil && cond(last) {
			return last
		}
	}
	t.Fatalf("%s: timed out; /v1/bundle on %s: %v", what, s.adminAddr, last)
	return nil
}

// fetchFailing: the last fetch of the bundle failed with substr.
func fetchFailing(substr string) func(map[string]any) bool {
	return func(st map[string]any) bool {
		e, _ := st["last_fetch_error"].(string)
		return strings.Contains(e, substr)
	}
}
