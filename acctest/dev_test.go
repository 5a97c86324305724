package acctest

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDevDemo runs `gatehouse dev --exit`, the code path of `make demo`:
// the real binary, the system's PostgreSQL and psql, the scripted session,
// the database check, and the replay and verification of the recordings.
// The command fails itself when any step goes other than scripted; the test
// also reads the output for what a newcomer must see, and checks that the
// environment is gone afterwards.
func TestDevDemo(t *testing.T) {
	if _, err := exec.LookPath("psql"); err != nil {
		t.Fatalf("psql is required: %v (apt package postgresql-client-15)", err)
	}
	out, code := ghRun(t, "dev", "--exit", "--listen", "127.0.0.1:0", "--ssh-listen", "127.0.0.1:0", "--kube-listen", "127.0.0.1:0")
	if code != 0 {
		t.Fatalf("gatehouse dev --exit: exit %d\n%s", code, out)
	}
	for _, want := range []string{
		"DEVELOPMENT ONLY",
		"j***@example.com | [REDACTED]",
		"permission denied by rule guardrails/no-drop-or-truncate",
		"permission denied by rule guardrails/no-unfiltered-writes",
		"DELETE 1",
		"SELECT count(*) FROM customers                -> 3  ok",
		"DENY   /* tidy up */ DROP TABLE customers;",
		"sealed by recorder key",
		"NOTICE:  gatehouse: this statement is held for approval ap-",
		"Approved ap-",
		"INSERT 0 1",
		"APPROV ap-",
		"approve by dev-approver-dba",
		"the payment for order 2 was written once a DBA approved it",
		// Kubernetes sessions are one per token on the cluster (one per
		// caller unless it idled past the dev idle timeout between steps).
		"All 17 statements went as scripted, one held and approved; 3 ssh commands as scripted; 4 kubectl commands as scripted;",
		"kubernetes_cluster prod-cluster: a throwaway kube-apiserver",
		"web-0",
		"permission denied by rule cluster-readers/no-secrets: analytics never reads secrets",
		"W1JFREFDVEVEXQ==",
		"hello from web-0",
		"load average",
		"gatehouse: permission denied by rule bastion-ops/no-destructive",
		"administratively prohibited: gatehouse: permission denied by rule bastion-ops/no-forwarding",
		"ALLOW  uptime   [bastion-ops/diagnostics]",
		"(ssh)",
		`psql "host=127.0.0.1 port=`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the demo's output lacks %q", want)
		}
	}
	if !regexp.MustCompile(`kubectl commands as scripted; (8|9|10) sessions recorded, sealed and verified\.`).MatchString(out) {
		t.Errorf("the demo's summary does not count the sessions as expected")
	}
	for _, never := range []string{"jane.doe@example.com", "4111 1111", "\033[", "s3cr3t-db-password", "czNjcjN0LWRiLXBhc3N3b3Jk"} {
		if strings.Contains(out, never) {
			t.Errorf("the demo's output shows %q", never)
		}
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}
	dir := regexp.MustCompile(`removed (/\S+)\.`).FindStringSubmatch(out)
	if dir == nil {
		t.Fatalf("no clean-up line in the output")
	}
	if _, err := os.Stat(dir[1]); !os.IsNotExist(err) {
		t.Errorf("%s still exists after exit: %v", dir[1], err)
	}
}

// TestDevCleansUpOnSignal: without --exit the environment runs until
// SIGINT, then stops everything and removes its directory.
func TestDevCleansUpOnSignal(t *testing.T) {
	cmd := exec.Command(gatehouseBin, "dev", "--no-script", "--listen", "127.0.0.1:0")
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(out.String(), "Running until Ctrl-C"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			t.Fatalf("not ready:\n%s", out.String())
		}
	}
	_ = cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, out.String())
		}
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("did not stop on SIGINT:\n%s", out.String())
	}
	dir := regexp.MustCompile(`removed (/\S+)\.`).FindStringSubmatch(out.String())
	if dir == nil {
		t.Fatalf("no clean-up line:\n%s", out.String())
	}
	if _, err := os.Stat(dir[1]); !os.IsNotExist(err) {
		t.Errorf("%s still exists: %v", dir[1], err)
	}
}
