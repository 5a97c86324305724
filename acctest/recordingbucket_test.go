package acctest

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/internal/s3test"
)

// TestRecordingsInABucket runs the gatehouse binary with recorder.bucket
// on a real S3-compatible store (SeaweedFS, signed requests): sessions
// through the gateway are uploaded once sealed, and sessions list and
// audit verify read them from the bucket; a gateway killed with SIGKILL
// mid-session loses nothing: its next start crash-seals the session and
// uploads it, and the bucket audits clean.
func TestRecordingsInABucket(t *testing.T) {
	s3 := s3test.Start(t)
	bucket := "s3://" + s3.Bucket() + "/gw"
	s := startStackWith(t, stackOptions{
		config: fmt.Sprintf(`
recorder {
  bucket {
    url        = %q
    endpoint   = %q
    access_key = "env:GH_S3_KEY"
    secret_key = "env:GH_S3_SECRET"
  }
}
`, bucket, s3.Endpoint()),
		env: []string{"GH_S3_KEY=" + s3.AccessKey(), "GH_S3_SECRET=" + s3.SecretKey()},
	})
	pub := filepath.Join(s.dataDir, "recorder.pub")
	cli := func(args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(gatehouseBin, args...)
		cmd.Env = append(cmd.Environ(), "GATEHOUSE_S3_ENDPOINT="+s3.Endpoint(),
			"AWS_ACCESS_KEY_ID="+s3.AccessKey(), "AWS_SECRET_ACCESS_KEY="+s3.SecretKey())
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), code
	}
	waitAudit := func(what string, want int, contains ...string) string {
		t.Helper()
		var out string
		var code int
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			out, code = cli("audit", "verify", bucket, "--key", pub)
			ok := code == want
			for _, c := range contains {
				ok = ok && strings.Contains(out, c)
			}
			if ok {
				return out
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: audit verify of the bucket: exit %d, want %d with %q\n%s", what, code, want, contains, out)
			}
		}
	}

	billing := s.token(t, "billing-service")
	if _, stderr, err := s.psql(t, billing, "SELECT email FROM customers WHERE id = 1"); err != nil {
		t.Fatalf("%v %s", err, stderr)
	}
	waitAudit("one session", 0, "1 recording(s) checked, 0 with problems")
	list, code := cli("sessions", "list", bucket)
	if code != 0 || !strings.Contains(list, "billing-service") || !strings.Contains(list, " yes\n") {
		t.Fatalf("sessions list of the bucket (%d):\n%s", code, list)
	}

	// SIGKILL mid-session.
	c, err := s.pgx(t, billing)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(context.Background(), "SELECT count(*) FROM orders"); err != nil {
		t.Fatal(err)
	}
	s.kill(t)
	// The next start crash-seals it and uploads it.
	s.startGateway(t)
	out := waitAudit("after the restart", 0, "CRASHED", "2 recording(s) checked, 0 with problems")
	if strings.Contains(out, "MISSING") || strings.Contains(out, "UNSEALED") {
		t.Fatalf("after the restart:\n%s", out)
	}
}
