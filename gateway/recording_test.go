package gateway

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/gateway/hsm"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
)

// runOnce starts an SSH-only gateway with the given recorder block, waits
// until it listens, and stops it. It returns the gateway's log.
func runOnce(t *testing.T, dir, recorderBlock string) string {
	t.Helper()
	pubPath := filepath.Join(dir, "trusted.pub")
	if _, err := os.Stat(pubPath); err != nil {
		k, _ := bundle.GenerateKey()
		pub, _ := bundle.MarshalPublicKey(k.Public().(ed25519.PublicKey))
		if err := os.WriteFile(pubPath, pub, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	src := fmt.Sprintf("data_dir = %q\n\nssh {\n  listen = \"127.0.0.1:0\"\n}\n\nbundle {\n  file         = %q\n  trusted_keys = [%q]\n}\n%s",
		filepath.Join(dir, "data"), filepath.Join(dir, "policy.bundle"), pubPath, recorderBlock)
	cfg, _, diags := ParseConfig([]byte(src), "gateway.hcl")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	var logs bytes.Buffer
	g, err := New(cfg, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	select {
	case <-g.Ready:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	return logs.String()
}

// TestRecorderKeyOutsideTheDataDir: with recorder.key outside data_dir and
// a file anchor, the data directory holds no private key, its
// recorder.pub is the key's, and the anchor holds the ledger.
func TestRecorderKeyOutsideTheDataDir(t *testing.T) {
	dir := t.TempDir()
	keyPath := filepath.Join(t.TempDir(), "keys", "recorder.key")
	anchor := filepath.Join(t.TempDir(), "anchor.jsonl")
	logs := runOnce(t, dir, fmt.Sprintf("recorder {\n  key    = %q\n  anchor = %q\n}\n", keyPath, anchor))
	data := filepath.Join(dir, "data")
	if _, err := os.Stat(RecorderKeyPath(data)); !os.IsNotExist(err) {
		t.Errorf("a private key is in the data directory: %v", err)
	}
	published, _ := os.ReadFile(filepath.Join(data, "recorder.pub"))
	beside, _ := os.ReadFile(filepath.Join(filepath.Dir(keyPath), "recorder.pub"))
	if len(published) == 0 || !bytes.Equal(published, beside) {
		t.Errorf("DATA_DIR/recorder.pub is not the key's public key")
	}
	ledger, _ := os.ReadFile(filepath.Join(RecordingsDir(data), recorder.LedgerName))
	anchored, _ := os.ReadFile(anchor)
	if len(ledger) == 0 || !bytes.Equal(ledger, anchored) {
		t.Errorf("the anchor does not hold the ledger:\n%s\n---\n%s", anchored, ledger)
	}
	if strings.Contains(logs, "no anchor") {
		t.Errorf("warned about a missing anchor:\n%s", logs)
	}
}

// TestRecorderKeyMovedToAToken: a gateway that signed with the default key
// in data_dir, restarted with a key in a PKCS#11 token (SoftHSM), signs
// with the token's key, publishes its public key, keeps the old one, and
// warns that the old private key is still in the data directory.
func TestRecorderKeyMovedToAToken(t *testing.T) {
	tt := hsm.NewTestToken(t)
	dir := t.TempDir()
	logs := runOnce(t, dir, "")
	if !strings.Contains(logs, "the recorder key is in the data directory and there is no anchor") {
		t.Errorf("no warning about the key in data_dir:\n%s", logs)
	}
	data := filepath.Join(dir, "data")
	oldPub, err := bundle.LoadPublicKey(filepath.Join(data, "recorder.pub"))
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("GATEHOUSE_TEST_HSM_PIN", tt.PIN)
	logs = runOnce(t, dir, fmt.Sprintf("recorder {\n  key = %q\n  pin = \"env:GATEHOUSE_TEST_HSM_PIN\"\n}\n", tt.URI.String()))
	if strings.Contains(logs, tt.PIN) {
		t.Error("the log shows the PIN")
	}
	if !strings.Contains(logs, "an unused recorder key is still in the data directory") {
		t.Errorf("no warning about the old key:\n%s", logs)
	}
	pub, err := bundle.LoadPublicKey(filepath.Join(data, "recorder.pub"))
	if err != nil || !pub.Equal(tt.Public) {
		t.Fatalf("recorder.pub is not the token's key: %v", err)
	}
	kept, err := bundle.LoadPublicKey(filepath.Join(data, "recorder-"+bundle.KeyID(oldPub)[:16]+".pub"))
	if err != nil || !kept.Equal(oldPub) {
		t.Fatalf("the previous public key was not kept: %v", err)
	}
	kr := bundle.NewKeyring(pub, kept)
	a, err := recorder.Audit(RecordingsDir(data), recorder.AuditOptions{Keys: kr})
	if err != nil || a.Verdict() != recorder.VerdictOK || a.Ledger.Opens != 2 {
		t.Fatalf("audit: %v %+v", err, a.Ledger)
	}
	// The token's key signed the second run's entries.
	entries, _ := os.ReadFile(filepath.Join(RecordingsDir(data), recorder.LedgerName))
	if !bytes.Contains(entries, []byte(bundle.KeyID(tt.Public))) {
		t.Error("no ledger entry is signed by the token's key")
	}
}
