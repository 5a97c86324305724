package cli

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/gateway"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/gateway/recordstore"
	"github.com/gatehouse-dev/gatehouse/internal/s3test"
)

// TestRecordingCommandsReadABucket: sessions list, audit verify and
// replay read recordings a gateway uploaded to a real S3-compatible store
// (SeaweedFS), with the endpoint and credentials from the environment.
func TestRecordingCommandsReadABucket(t *testing.T) {
	s := s3test.Start(t)
	t.Setenv("GATEHOUSE_S3_ENDPOINT", s.Endpoint())
	t.Setenv("AWS_ACCESS_KEY_ID", s.AccessKey())
	t.Setenv("AWS_SECRET_ACCESS_KEY", s.SecretKey())
	url := "s3://" + s.Bucket() + "/gw1"
	st, err := recordstore.Open(url, recordstore.Options{Endpoint: s.Endpoint(), AccessKey: s.AccessKey(), SecretKey: s.SecretKey()})
	if err != nil {
		t.Fatal(err)
	}

	dataDir := t.TempDir()
	k, err := recorder.LoadOrCreateKey(gateway.RecorderKeyPath(dataDir))
	if err != nil {
		t.Fatal(err)
	}
	pubPath := recorder.PublicKeyPath(gateway.RecorderKeyPath(dataDir))
	var up *recordstore.Uploader
	r, err := recorder.Open(gateway.RecordingsDir(dataDir), k, recorder.WithOnSeal(func(id string) { up.Sealed(id) }))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if up, err = recordstore.NewUploader(st, r.Dir(), r.PublicKey(), r.LedgerSnapshot); err != nil {
		t.Fatal(err)
	}
	sessions := map[string]*recorder.Session{}
	for _, id := range []string{"done", "live"} {
		sess, err := r.Start(id, recorder.Event{Identity: "billing", Resource: "orders"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sess.Record(recorder.Event{Type: recorder.TypeRequest, Text: "SELECT 1", Effect: "allow"}); err != nil {
			t.Fatal(err)
		}
		sessions[id] = sess
	}
	if err := sessions["done"].End("client closed"); err != nil {
		t.Fatal(err)
	}
	if err := up.Pass(context.Background()); err != nil {
		t.Fatal(err)
	}

	res := mustRun(t, exitOK, "sessions", "list", url)
	assertContains(t, "sessions list", res.stdout, "done", "billing", "orders")
	if strings.Contains(res.stdout, "live") {
		t.Errorf("a session not uploaded yet is listed:\n%s", res.stdout)
	}
	res = mustRun(t, exitOK, "sessions", "list", url, "--json")
	assertContains(t, "sessions list --json", res.stdout, `"path": "`+url+`/done.jsonl"`)

	// "live" is in the bucket's ledger, started, not sealed: pending,
	// not missing.
	res = mustRun(t, exitUnsealed, "audit", "verify", url, "--key", pubPath)
	assertContains(t, "audit verify (a session open)", res.stdout, "OK       "+url+"/done.jsonl", "UNSEALED "+url+"/live.jsonl", "not in the bucket yet", "LEDGER   "+url+"/ledger.jsonl")

	if err := sessions["live"].End("client closed"); err != nil {
		t.Fatal(err)
	}
	if err := up.Pass(context.Background()); err != nil {
		t.Fatal(err)
	}
	res = mustRun(t, exitOK, "audit", "verify", url, "--key", pubPath)
	assertContains(t, "audit verify", res.stdout, "OK       "+url+"/live.jsonl", "2 recording(s) checked, 0 with problems")

	res = mustRun(t, exitOK, "replay", url+"/done", "--key", pubPath, "--format", "timeline")
	assertContains(t, "replay", res.stdout, "SELECT 1", "OK ")

	// A recording rewritten in the bucket, or deleted from it, is found.
	data, err := os.ReadFile(r.Dir() + "/done.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Put(context.Background(), "done.jsonl", []byte(strings.Replace(string(data), "SELECT 1", "SELECT 2", 1)), nil); err != nil {
		t.Fatal(err)
	}
	res = mustRun(t, exitFailure, "audit", "verify", url, "--key", pubPath)
	assertContains(t, "audit verify (rewritten)", res.stdout, "ALTERED  "+url+"/done.jsonl")
	mustRun(t, exitFailure, "replay", url+"/done", "--key", pubPath, "--format", "timeline")

	// An anchor prefix with nothing in it proves nothing: exit 2.
	res = mustRun(t, exitUsage, "audit", "verify", url, "--key", pubPath, "--anchor", "s3://"+s.Bucket()+"/no-anchor-here")
	assertContains(t, "audit verify --anchor (empty)", res.stderr, "holds no ledger entries")

	// Wrong credentials, or no such session: exit 2, saying why.
	res = mustRun(t, exitUsage, "replay", url+"/nosuch", "--key", pubPath)
	assertContains(t, "replay of a missing session", res.stderr, "not in the bucket")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong")
	mustRun(t, exitUsage, "sessions", "list", url)
}

// TestSessionsListStateUsage: --state takes a reference to the DSN, never
// the DSN (which holds a password), and the index's flags need it.
func TestSessionsListStateUsage(t *testing.T) {
	res := mustRun(t, exitUsage, "sessions", "list", "--state", "postgres://auditor:hunter2@db.internal/gatehouse")
	assertContains(t, "a DSN given as --state", res.stderr, "want a reference to the DSN")
	if strings.Contains(res.stderr, "hunter2") {
		t.Errorf("the error repeats the password:\n%s", res.stderr)
	}
	res = mustRun(t, exitUsage, "sessions", "list", "--status", "open")
	assertContains(t, "--status without --state", res.stderr, "for the session index (--state)")
	res = mustRun(t, exitUsage, "sessions", "list", t.TempDir(), "--state", "env:GATEHOUSE_TEST_NO_SUCH_DSN")
	assertContains(t, "a directory with --state", res.stderr, "a bucket URL (s3://BUCKET/PREFIX)")
	res = mustRun(t, exitUsage, "sessions", "list", "--state", "env:GATEHOUSE_TEST_NO_SUCH_DSN")
	assertContains(t, "an unset reference", res.stderr, "GATEHOUSE_TEST_NO_SUCH_DSN")
}
