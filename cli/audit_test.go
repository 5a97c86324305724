package cli

import (
	"crypto/ed25519"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/gateway"
	"github.com/gatehouse-dev/gatehouse/gateway/hsm"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
)

// recordings writes a data directory as the gateway does: the recorder
// key (and recorder.pub) in it, a sealed session, and a session still open
// when the recorder closed; anchored to a file.
func recordings(t *testing.T) (dataDir, anchor string, k ed25519.PrivateKey) {
	t.Helper()
	dataDir = t.TempDir()
	anchor = filepath.Join(t.TempDir(), "anchor.jsonl")
	k, err := recorder.LoadOrCreateKey(gateway.RecorderKeyPath(dataDir))
	if err != nil {
		t.Fatal(err)
	}
	r, err := recorder.Open(gateway.RecordingsDir(dataDir), k, recorder.WithAnchor(recorder.NewFileAnchor(anchor)))
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"done", "open"} {
		s, err := r.Start(id, recorder.Event{Identity: "billing", Resource: "orders"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Record(recorder.Event{Type: recorder.TypeRequest, Text: "SELECT 1", Effect: "allow"}); err != nil {
			t.Fatal(err)
		}
		if id == "done" {
			if err := s.End("client closed"); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	return dataDir, anchor, k
}

// TestAuditVerifyExitCodes: 3 while a recording is unsealed (1 with
// --strict), 0 once the next start crash-sealed it, 1 for a deleted
// recording or a ledger that ends before its anchor, 2 when the anchor
// cannot be read; --json says the same.
func TestAuditVerifyExitCodes(t *testing.T) {
	dataDir, anchor, k := recordings(t)
	r := mustRun(t, exitUnsealed, "audit", "verify", "--data-dir", dataDir, "--anchor", anchor)
	assertContains(t, "unsealed", r.stdout, "OK ", "UNSEALED ", "LEDGER ", "ANCHOR ", "2 recording(s) checked, 0 with problems, 1 unsealed or incomplete")
	mustRun(t, exitFailure, "audit", "verify", "--data-dir", dataDir, "--strict")

	// The next start seals it as crashed.
	rec, err := recorder.Open(gateway.RecordingsDir(dataDir), k, recorder.WithAnchor(recorder.NewFileAnchor(anchor)))
	if err != nil {
		t.Fatal(err)
	}
	rec.Close()
	r = mustRun(t, exitOK, "audit", "verify", "--data-dir", dataDir, "--anchor", anchor, "--strict")
	assertContains(t, "crash-sealed", r.stdout, "CRASHED ", "the gateway's next start sealed it", "the ledger holds its crash seal", "2 gateway start(s), 0 after a crash", "0 with problems, 1 crash-sealed")
	r = mustRun(t, exitOK, "audit", "verify", "open", "--data-dir", dataDir)
	assertContains(t, "one session", r.stdout, "CRASHED ", "1 recording(s) checked")
	r = mustRun(t, exitOK, "replay", "open", "--data-dir", dataDir)
	assertContains(t, "replay", r.stdout, "CRASH  the gateway stopped without ending the session", "CRASHED ")
	r = mustRun(t, exitOK, "sessions", "list", "--data-dir", dataDir)
	assertContains(t, "sessions list", r.stdout, " crashed\n", " yes\n")

	r = mustRun(t, exitOK, "audit", "verify", "--data-dir", dataDir, "--json")
	var out struct {
		Recordings []recorder.Report     `json:"recordings"`
		Ledger     recorder.LedgerReport `json:"ledger"`
		Verdict    string                `json:"verdict"`
		ExitCode   int                   `json:"exit_code"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || out.Verdict != "ok" || len(out.Recordings) != 2 || out.Ledger.CrashSeals != 1 {
		t.Fatalf("--json: %v\n%s", err, r.stdout)
	}
	// --format json is the CLI's spelling; --json its alias: the same report.
	if r2 := mustRun(t, exitOK, "audit", "verify", "--data-dir", dataDir, "--format", "json"); r2.stdout != r.stdout {
		t.Errorf("--format json and --json differ:\n%s\n%s", r2.stdout, r.stdout)
	}

	// Cut the ledger back: the anchor holds more.
	lp := filepath.Join(gateway.RecordingsDir(dataDir), recorder.LedgerName)
	b, _ := os.ReadFile(lp)
	ls := strings.SplitAfter(string(b), "\n")
	if err := os.WriteFile(lp, []byte(strings.Join(ls[:len(ls)-3], "")), 0o600); err != nil {
		t.Fatal(err)
	}
	r = mustRun(t, exitFailure, "audit", "verify", "--data-dir", dataDir, "--anchor", anchor)
	assertContains(t, "rolled back", r.stdout, "ANCHOR MISMATCH", "the ledger was cut, rolled back or replaced")
	if err := os.WriteFile(lp, b, 0o600); err != nil {
		t.Fatal(err)
	}

	if err := os.Remove(filepath.Join(gateway.RecordingsDir(dataDir), "done.jsonl")); err != nil {
		t.Fatal(err)
	}
	r = mustRun(t, exitFailure, "audit", "verify", "--data-dir", dataDir)
	assertContains(t, "deleted", r.stdout, "MISSING ", "done.jsonl: the ledger names this recording", "1 with problems")
	mustRun(t, exitUsage, "audit", "verify", "--data-dir", dataDir, "--anchor", filepath.Join(t.TempDir(), "nowhere"))
	mustRun(t, exitUsage, "audit", "verify", "--data-dir", dataDir, "--anchor", anchor, "--anchor-token", "not-a-reference")
}

// TestKeygenPKCS11: gatehouse keygen --pkcs11 makes the recorder key in a
// SoftHSM token and writes its public key; a second run leaves the token
// alone.
func TestKeygenPKCS11(t *testing.T) {
	tt := hsm.NewTestToken(t)
	t.Setenv("GATEHOUSE_TEST_PIN", tt.PIN)
	u := *tt.URI
	u.Object = "recorder-2"
	out := t.TempDir()
	r := mustRun(t, exitOK, "keygen", "--pkcs11", u.String(), "--pin", "env:GATEHOUSE_TEST_PIN", "--out", out)
	pub, err := bundle.LoadPublicKey(filepath.Join(out, "recorder.pub"))
	if err != nil {
		t.Fatal(err)
	}
	assertContains(t, "keygen", r.stdout, "key id "+bundle.KeyID(pub), "BEGIN PUBLIC KEY")
	s, err := hsm.Open(&u, tt.PIN)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !s.Public().(ed25519.PublicKey).Equal(pub) {
		t.Error("recorder.pub is not the token's new key")
	}
	r = mustRun(t, exitFailure, "keygen", "--pkcs11", u.String(), "--pin", "env:GATEHOUSE_TEST_PIN", "--force", "--out", out)
	assertContains(t, "again", r.stderr, "already holds a key")
	r = mustRun(t, exitUsage, "keygen", "--pkcs11", u.String(), "--pin", tt.PIN)
	if strings.Contains(r.stderr, tt.PIN) {
		t.Error("the error shows the PIN")
	}
}
