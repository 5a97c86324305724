package acctest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// ghRun runs the CLI and returns its output and exit code.
func ghRun(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, err := exec.Command(gatehouseBin, args...).CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

// TestRecordingsEndToEnd: sessions through the real gateway are recorded;
// sessions list, replay and audit verify read them; an edited, deleted or
// reordered line is caught with its event index; a gateway killed with
// SIGKILL leaves recordings that verify up to their last event, unsealed
// (exit 3), and its next start seals them as crashed (exit 0).
func TestRecordingsEndToEnd(t *testing.T) {
	s := startStack(t)
	billing := s.token(t, "billing-service")
	if _, stderr, err := s.psql(t, billing, "SELECT email FROM customers WHERE id = 1"); err != nil {
		t.Fatalf("%v %s", err, stderr)
	}
	if _, _, err := s.psql(t, billing, "DROP TABLE customers"); err == nil {
		t.Fatal("DROP allowed")
	}
	// Wait for both sessions' seals.
	var list string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		list, _ = ghRun(t, "sessions", "list", "--data-dir", s.dataDir, "--identity", "billing-service")
		if strings.Count(list, " yes\n") == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sessions list:\n%s", list)
		}
	}
	lines := strings.Split(strings.TrimSpace(list), "\n")
	id := strings.Fields(lines[len(lines)-1])[0]
	replay, code := ghRun(t, "replay", id, "--data-dir", s.dataDir)
	if code != 0 || !strings.Contains(replay, "DENY   DROP TABLE customers") || !strings.Contains(replay, "[guardrails/no-drop]") || !strings.Contains(replay, "OK ") {
		t.Errorf("replay (%d):\n%s", code, replay)
	}
	if out, code := ghRun(t, "audit", "verify", "--data-dir", s.dataDir, "--strict"); code != 0 {
		t.Errorf("audit verify (%d):\n%s", code, out)
	}

	// Tampering with a copy of a recording is detected, at the event.
	rec := filepath.Join(s.dataDir, "recordings", id+".jsonl")
	orig, err := os.ReadFile(rec)
	if err != nil {
		t.Fatal(err)
	}
	evLines := bytes.SplitAfter(orig, []byte("\n"))
	tampered := filepath.Join(t.TempDir(), "tampered")
	if err := os.MkdirAll(tampered, 0o755); err != nil {
		t.Fatal(err)
	}
	cases := map[string]func() []byte{
		"edited": func() []byte {
			return bytes.Replace(orig, []byte("DROP TABLE customers"), []byte("SELECT 1 -- nothing"), 1)
		},
		"deleted":   func() []byte { return bytes.Join(append(append([][]byte{}, evLines[:1]...), evLines[2:]...), nil) },
		"reordered": func() []byte { l := append([][]byte{}, evLines...); l[1], l[2] = l[2], l[1]; return bytes.Join(l, nil) },
	}
	for kind, edit := range cases {
		p := filepath.Join(tampered, id+".jsonl")
		if err := os.WriteFile(p, edit(), 0o600); err != nil {
			t.Fatal(err)
		}
		out, code := ghRun(t, "audit", "verify", p, "--key", filepath.Join(s.dataDir, "recorder.pub"))
		if code != 1 || !strings.Contains(out, "ALTERED") || !strings.Contains(out, kind) {
			t.Errorf("%s: exit %d\n%s", kind, code, out)
		}
	}

	// SIGKILL mid-session.
	c, err := s.pgx(t, billing)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := c.Exec(context.Background(), "SELECT count(*) FROM orders"); err != nil {
			t.Fatal(err)
		}
	}
	s.kill(t)
	out, code := ghRun(t, "audit", "verify", "--data-dir", s.dataDir)
	if code != 3 || !strings.Contains(out, "UNSEALED") || strings.Contains(out, "ALTERED") {
		t.Errorf("after SIGKILL: exit %d\n%s", code, out)
	}
	if out, code := ghRun(t, "audit", "verify", "--data-dir", s.dataDir, "--strict"); code != 1 {
		t.Errorf("--strict after SIGKILL: exit %d\n%s", code, out)
	}
	// The next start seals the session the kill left open.
	s.startGateway(t)
	out, code = ghRun(t, "audit", "verify", "--data-dir", s.dataDir, "--strict")
	if code != 0 || !strings.Contains(out, "CRASHED") || strings.Contains(out, "UNSEALED") {
		t.Errorf("after the restart: exit %d\n%s", code, out)
	}
}

// TestFullDataDirRefusesStatements: the data directory is a small tmpfs;
// filling it mid-session makes the recorder fail, and statements are then
// refused and never reach the database.
func TestFullDataDirRefusesStatements(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", data).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a small tmpfs to fill (needs root): %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", data).Run() })
	s := startStackWith(t, stackOptions{dataDir: data, readyDiskFree: 512 << 10})
	billing := s.token(t, "billing-service")
	c, err := s.pgx(t, billing)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := c.Exec(ctx, "INSERT INTO billing.invoices (order_id, amount) VALUES (1, 21)"); err != nil {
		t.Fatal(err)
	}
	// Fill the file system.
	filler := filepath.Join(data, "filler")
	_ = exec.Command("dd", "if=/dev/zero", "of="+filler, "bs=64k", "count=64").Run()
	// The recording's last page may still have room for an event or two;
	// after that, every statement is refused.
	refused := ""
	for i := 22; i < 100 && refused == ""; i++ {
		stmt := fmt.Sprintf("INSERT INTO billing.invoices (order_id, amount) VALUES (1, %d)", i)
		if _, err := c.Exec(ctx, stmt); err != nil {
			if !strings.Contains(err.Error(), "58030") {
				t.Fatalf("with the data directory full: %v", err)
			}
			refused = stmt
		}
	}
	if refused == "" {
		t.Fatal("no statement was refused with the data directory full")
	}
	// /readyz sends traffic elsewhere while the recorder cannot write.
	if code, body := s.readyz(t); code != http.StatusServiceUnavailable || !strings.Contains(body, "ready_disk_free") {
		t.Errorf("/readyz with the data directory full: %d %q", code, body)
	}
	if strings.Contains(s.pg.QueryLog(t), refused) {
		t.Fatal("an unrecorded statement reached the database")
	}
	// Space again: statements are recorded and run.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "INSERT INTO billing.invoices (order_id, amount) VALUES (1, 23)"); err != nil {
		t.Fatalf("after space was freed: %v", err)
	}
	if code, body := s.readyz(t); code != http.StatusOK {
		t.Errorf("/readyz after space was freed: %d %q", code, body)
	}
	if !strings.Contains(s.logs.String(), "recording failed") {
		t.Error("the gateway did not log the recording failure")
	}
}

// readyz is the gateway's /readyz answer.
func (s *stack) readyz(t *testing.T) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + s.adminAddr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
