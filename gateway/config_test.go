package gateway

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

const goodConfig = `data_dir = "/tmp/gh"

postgres {
  listen   = "127.0.0.1:6432"
  tls_cert = "server.crt"
  tls_key  = "server.key"
}

bundle {
  file         = "policy.bundle"
  trusted_keys = ["gatehouse.pub"]
}
`

func TestParseConfig(t *testing.T) {
	cfg, _, diags := ParseConfig([]byte(goodConfig), "gateway.hcl")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if cfg.Postgres.Listen != "127.0.0.1:6432" || cfg.Bundle.PollInterval != 5*time.Second || cfg.ClockSkew != 30*time.Second || cfg.Log.Format != "text" {
		t.Errorf("config %+v", cfg)
	}
	tests := map[string]struct {
		src, want string
		line      int
	}{
		"plaintext off loopback": {strings.Replace(goodConfig, `  tls_cert = "server.crt"
  tls_key  = "server.key"`, `  insecure_plaintext = true`, 1) + "", "", 0},
		"no TLS":            {strings.Replace(goodConfig, "  tls_cert = \"server.crt\"\n  tls_key  = \"server.key\"\n", "", 1), "TLS required", 3},
		"half TLS":          {strings.Replace(goodConfig, "  tls_key  = \"server.key\"\n", "", 1), "Incomplete TLS settings", 3},
		"unknown attribute": {strings.Replace(goodConfig, "data_dir", "datadir", 1), "Unsupported argument", 1},
		"bad duration":      {goodConfig + "auth {\n  clock_skew = \"1h\"\n}\n", "Invalid duration", 14},
		"no keys":           {strings.Replace(goodConfig, `["gatehouse.pub"]`, "[]", 1), "No trusted keys", 11},
		"bad listen":        {strings.Replace(goodConfig, "127.0.0.1:6432", "6432", 1), "Invalid listen address", 4},
		"bad log level":     {goodConfig + "log {\n  level = \"loud\"\n}\n", "Invalid value", 14},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, _, diags := ParseConfig([]byte(tc.src), "gateway.hcl")
			if tc.want == "" {
				if diags.HasErrors() {
					t.Fatalf("unexpected: %v", diags)
				}
				return
			}
			for _, d := range diags {
				if d.Summary == tc.want {
					if d.Subject == nil || d.Subject.Start.Line != tc.line {
						t.Errorf("at %v, want line %d", d.Subject, tc.line)
					}
					return
				}
			}
			t.Fatalf("diags %v, want %q", diags, tc.want)
		})
	}
	// Plaintext is refused off loopback.
	src := strings.Replace(strings.Replace(goodConfig, "127.0.0.1:6432", "0.0.0.0:6432", 1), "  tls_cert = \"server.crt\"\n  tls_key  = \"server.key\"\n", "  insecure_plaintext = true\n", 1)
	_, _, diags = ParseConfig([]byte(src), "gateway.hcl")
	if !diags.HasErrors() || diags[0].Summary != "Plaintext outside loopback" {
		t.Errorf("plaintext on 0.0.0.0: %v", diags)
	}
}

// TestConfigNeedsAProtocol: every protocol block is optional, but a gateway
// that serves none is refused with a message that says what to add.
func TestConfigNeedsAProtocol(t *testing.T) {
	src := strings.Replace(goodConfig, "postgres {\n  listen   = \"127.0.0.1:6432\"\n  tls_cert = \"server.crt\"\n  tls_key  = \"server.key\"\n}\n", "", 1)
	_, _, diags := ParseConfig([]byte(src), "gateway.hcl")
	if !diags.HasErrors() || diags[0].Summary != "No protocol listener" || !strings.Contains(diags[0].Detail, "postgres {") {
		t.Fatalf("a config with no protocol: %v", diags)
	}
	if _, err := New(&Config{DataDir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "no protocol listener") {
		t.Fatalf("New with no protocol: %v", err)
	}
}

// TestGatewayWithoutPostgres: a gateway that serves SSH only starts with no
// postgres block, binds no PostgreSQL listener, and answers SSH.
func TestGatewayWithoutPostgres(t *testing.T) {
	dir := t.TempDir()
	k, err := bundle.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := bundle.MarshalPublicKey(k.Public().(ed25519.PublicKey))
	if err := os.WriteFile(filepath.Join(dir, "trusted.pub"), pub, 0o644); err != nil {
		t.Fatal(err)
	}
	src := fmt.Sprintf(`data_dir = %q

ssh {
  listen = "127.0.0.1:0"
}

bundle {
  file         = %q
  trusted_keys = [%q]
}
`, filepath.Join(dir, "data"), filepath.Join(dir, "policy.bundle"), filepath.Join(dir, "trusted.pub"))
	cfg, _, diags := ParseConfig([]byte(src), "gateway.hcl")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if cfg.Postgres != nil || cfg.SSH == nil {
		t.Fatalf("config %+v", cfg)
	}
	g, err := New(cfg, WithLogger(slog.New(slog.DiscardHandler)))
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
	if g.Addr("postgres") != "" || g.Addr("ssh") == "" {
		t.Fatalf("addresses: postgres %q ssh %q", g.Addr("postgres"), g.Addr("ssh"))
	}
	c, err := net.Dial("tcp", g.Addr("ssh"))
	if err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if !strings.HasPrefix(line, "SSH-2.0-Gatehouse") {
		t.Errorf("banner %q", line)
	}
	if _, err := os.Stat(SSHHostKeyPath(cfg.DataDir)); err != nil {
		t.Errorf("the host key was not created: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// TestGatewayBindsAllOrNothing: when one listener cannot bind, the others
// are closed and Run fails naming it.
func TestGatewayBindsAllOrNothing(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dir := t.TempDir()
	k, _ := bundle.GenerateKey()
	pub, _ := bundle.MarshalPublicKey(k.Public().(ed25519.PublicKey))
	_ = os.WriteFile(filepath.Join(dir, "trusted.pub"), pub, 0o644)
	cfg := &Config{DataDir: filepath.Join(dir, "data"), Bundle: BundleSource{File: filepath.Join(dir, "b"), TrustedKeys: []string{filepath.Join(dir, "trusted.pub")}},
		Postgres: &PostgresListener{Listen: "127.0.0.1:0", InsecurePlaintext: true}, SSH: &SSHListener{Listen: busy.Addr().String()}}
	g, err := New(cfg, WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	err = g.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "ssh listener") {
		t.Fatalf("Run: %v", err)
	}
	if pg := g.Addr("postgres"); pg != "" {
		if c, err := net.Dial("tcp", pg); err == nil {
			c.Close()
			t.Errorf("the postgres listener %s stayed open", pg)
		}
	}
}

func TestRecorderBlock(t *testing.T) {
	cfg, _, diags := ParseConfig([]byte(goodConfig), "gateway.hcl")
	if diags.HasErrors() || cfg.Recorder.Key != "" || cfg.Recorder.CheckpointInterval != 30*time.Second {
		t.Fatalf("defaults: %+v %v", cfg.Recorder, diags)
	}
	good := goodConfig + `
recorder {
  key                 = "/etc/gatehouse/recorder.key"
  anchor              = "https://anchor.example/v1/ledger"
  anchor_token        = "env:ANCHOR_TOKEN"
  anchor_ca           = "/etc/gatehouse/anchor-ca.pem"
  checkpoint_interval = "10s"
}
`
	cfg, _, diags = ParseConfig([]byte(good), "gateway.hcl")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if rc := cfg.Recorder; rc.Key != "/etc/gatehouse/recorder.key" || rc.Anchor != "https://anchor.example/v1/ledger" || rc.AnchorToken != "env:ANCHOR_TOKEN" || rc.CheckpointInterval != 10*time.Second {
		t.Errorf("recorder %+v", rc)
	}
	// The reference's recorder block is a valid one.
	ref, _, ok := strings.Cut(ConfigReference[strings.Index(ConfigReference, "\nrecorder {\n")+1:], "\n}\n")
	if !ok || !strings.HasPrefix(ref, "recorder {") {
		t.Fatal("ConfigReference has no recorder block")
	}
	cfg, _, diags = ParseConfig([]byte(goodConfig+ref+"\n}\n"), "gateway.hcl")
	if diags.HasErrors() || cfg.Recorder.Key != "/etc/gatehouse/recorder.key" || cfg.Recorder.AnchorCA == "" {
		t.Fatalf("ConfigReference's recorder block: %v %+v", diags, cfg)
	}
	block := func(body string) string { return goodConfig + "\nrecorder {\n" + body + "}\n" }
	const bucket = "  bucket {\n    url = \"s3://rec/gw-1\"\n  }\n"
	const uri = "pkcs11:token=gatehouse;object=recorder?module-path=/usr/lib/softhsm/libsofthsm2.so"
	tests := map[string]struct {
		src, want string
		line      int
	}{
		"pkcs11 with a PIN reference": {block(`  key = "` + uri + `"` + "\n" + `  pin = "file:/etc/gatehouse/hsm-pin"` + "\n"), "", 0},
		"pkcs11 with pin-source":      {block(`  key = "` + uri + `&pin-source=file:/etc/gatehouse/hsm-pin"` + "\n"), "", 0},
		"file anchor":                 {block(`  anchor = "/mnt/worm/gatehouse/ledger.jsonl"` + "\n"), "", 0},
		"loopback http anchor":        {block(`  anchor = "http://127.0.0.1:8200/ledger"` + "\n"), "", 0},
		"pkcs11 without a PIN":        {block(`  key = "` + uri + `"` + "\n"), "Missing PIN", 14},
		"a PIN in clear":              {block(`  key = "` + uri + `"` + "\n" + `  pin = "123456"` + "\n"), "Not a secret reference", 16},
		"pin-value in the URI":        {block(`  key = "` + uri + `&pin-value=1234"` + "\n" + `  pin = "env:PIN"` + "\n"), "Invalid PKCS#11 URI", 15},
		"two PINs":                    {block(`  key = "` + uri + `&pin-source=file:/p"` + "\n" + `  pin = "env:PIN"` + "\n"), "Two PINs", 15},
		"a PIN for a key file":        {block(`  key = "/etc/gatehouse/recorder.key"` + "\n" + `  pin = "env:PIN"` + "\n"), "PIN without a token", 16},
		"a URI without a key":         {block(`  key = "pkcs11:token=t?module-path=/m.so"` + "\n" + `  pin = "env:PIN"` + "\n"), "Invalid PKCS#11 URI", 15},
		"anchor in data_dir":          {block(`  anchor = "/tmp/gh/anchor.jsonl"` + "\n"), "Anchor inside data_dir", 15},
		"relative anchor":             {block(`  anchor = "anchor.jsonl"` + "\n"), "Invalid anchor", 15},
		"plain http off loopback":     {block(`  anchor = "http://anchor.example/ledger"` + "\n"), "Plaintext anchor outside loopback", 15},
		"token for a file anchor":     {block(`  anchor = "/mnt/worm/l.jsonl"` + "\n" + `  anchor_token = "env:T"` + "\n"), "Token without an HTTP anchor", 16},
		"a token in clear":            {block(`  anchor = "https://a.example/l"` + "\n" + `  anchor_token = "eyJhbGciOi"` + "\n"), "Not a secret reference", 16},
		"CA for a file anchor":        {block(`  anchor = "/mnt/worm/l.jsonl"` + "\n" + `  anchor_ca = "/ca.pem"` + "\n"), "CA without an HTTPS anchor", 16},
		"bucket anchor":               {block(`  anchor = "s3://anchors/gw-1"` + "\n" + `  anchor_retention = "2160h"` + "\n" + `  anchor_lock_mode = "governance"` + "\n" + bucket), "", 0},
		"bucket anchor, no bucket":    {block(`  anchor = "s3://anchors/gw-1"` + "\n"), "Bucket anchor without a bucket block", 15},
		"bucket anchor, no prefix":    {block(`  anchor = "s3://anchors"` + "\n" + bucket), "Invalid anchor", 15},
		"anchor beside recordings":    {block(`  anchor = "s3://rec/gw-1/"` + "\n" + bucket), "Anchor beside the recordings", 15},
		"retention, file anchor":      {block(`  anchor = "/mnt/worm/l.jsonl"` + "\n" + `  anchor_retention = "24h"` + "\n"), "Retention without a bucket anchor", 16},
		"lock mode, no retention":     {block(`  anchor = "s3://anchors/gw-1"` + "\n" + `  anchor_lock_mode = "COMPLIANCE"` + "\n" + bucket), "Lock mode without retention", 16},
		"unknown lock mode":           {block(`  anchor = "s3://anchors/gw-1"` + "\n" + `  anchor_retention = "24h"` + "\n" + `  anchor_lock_mode = "LEGAL"` + "\n" + bucket), "Invalid lock mode", 17},
		"retention too short":         {block(`  anchor = "s3://anchors/gw-1"` + "\n" + `  anchor_retention = "1m"` + "\n" + bucket), "Invalid duration", 16},
		"overlapped durability":       {block(`  durability = "before_response"` + "\n"), "", 0},
		"unknown durability":          {block(`  durability = "eventually"` + "\n"), "Invalid durability", 15},
		"interval too short":          {block(`  checkpoint_interval = "10ms"` + "\n"), "Invalid duration", 15},
		"unknown attribute":           {block(`  keyfile = "/k"` + "\n"), "Unsupported argument", 15},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, _, diags := ParseConfig([]byte(tc.src), "gateway.hcl")
			if tc.want == "" {
				if diags.HasErrors() {
					t.Fatalf("unexpected: %v", diags)
				}
				return
			}
			for _, d := range diags {
				if d.Summary == tc.want {
					if d.Subject == nil || d.Subject.Start.Line != tc.line {
						t.Errorf("at %v, want line %d", d.Subject, tc.line)
					}
					if strings.Contains(d.Detail, "123456") || strings.Contains(d.Detail, "eyJhbGciOi") {
						t.Errorf("the diagnostic repeats a secret: %s", d.Detail)
					}
					return
				}
			}
			t.Fatalf("diags %v, want %q", diags, tc.want)
		})
	}
}
