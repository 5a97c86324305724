package gateway

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// TestAdminPlaintextOffLoopback: the admin listener refuses plain HTTP on
// an address that is not loopback, unless insecure_plaintext says so.
func TestAdminPlaintextOffLoopback(t *testing.T) {
	src := goodConfig + "admin {\n  listen = \"0.0.0.0:9090\"\n}\n"
	_, _, diags := ParseConfig([]byte(src), "gateway.hcl")
	if !diags.HasErrors() || diags[0].Summary != "TLS required off loopback" || diags[0].Subject.Start.Line != 14 {
		t.Fatalf("plain HTTP on 0.0.0.0: %v", diags)
	}
	src = goodConfig + "admin {\n  listen = \"0.0.0.0:9090\"\n  insecure_plaintext = true\n}\n"
	if _, _, diags := ParseConfig([]byte(src), "gateway.hcl"); diags.HasErrors() {
		t.Fatalf("with insecure_plaintext: %v", diags)
	}
	src = goodConfig + "admin {\n  listen = \"127.0.0.1:9090\"\n}\n"
	if _, _, diags := ParseConfig([]byte(src), "gateway.hcl"); diags.HasErrors() {
		t.Fatalf("loopback: %v", diags)
	}
	src = strings.Replace(goodConfig, "}\n\nbundle", "  limits {\n    max_sessions_per_identity = 5\n    max_sessions_per_resource = 0\n    login_timeout = \"5s\"\n  }\n}\n\nbundle", 1)
	cfg, _, diags := ParseConfig([]byte(src), "gateway.hcl")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if l := cfg.Postgres.Limits; l.MaxSessionsPerIdentity != 5 || l.MaxSessionsPerResource != -1 || l.LoginTimeout != 5*time.Second || l.MaxSessions != 0 {
		t.Fatalf("limits %+v", l)
	}
}

// TestReadyz: /readyz turns 503 when the recorder cannot write (here: its
// file system has less free space than ready_disk_free), and reports each
// upstream's reachability without failing on it; the bundle status has
// timestamps and its error is cleared by a later success.
func TestReadyz(t *testing.T) {
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

admin {
  listen          = "127.0.0.1:0"
  ready_disk_free = 1125899906842624
}
`, filepath.Join(dir, "data"), filepath.Join(dir, "policy.bundle"), filepath.Join(dir, "trusted.pub"))
	cfg, _, diags := ParseConfig([]byte(src), "gateway.hcl")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	g, err := New(cfg, WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	// A bundle that fails, then one that loads.
	if _, err := g.Store().Apply([]byte("not a bundle"), "test"); err == nil {
		t.Fatal("garbage accepted")
	}
	m := bundle.Model{
		IdentityProviders: []bundle.IdentityProvider{{Name: "corp", Issuer: "https://id.example.com", Audiences: []string{"gatehouse"}}},
		SSHHosts:          []bundle.SSHHost{{Name: "bastion", Address: "127.0.0.1:1", User: "ops", HostKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOEUTqBqeZQjtMndz1LphtYO5IcPCLaCN3hxN0yK1Sen", Password: "env:X"}},
	}
	p, err := bundle.NewPayload(m, bundle.BuildOptions{Revision: 1, CreatedAt: time.Unix(1764000000, 0), Compiler: "test"})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := bundle.EncodePayload(p)
	signed, _ := bundle.Sign(raw, k)
	if _, err := g.Store().Apply(signed, "test"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	<-g.Ready
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + g.AdminAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := get("/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "ready_disk_free") || !strings.Contains(body, "upstream ssh_host bastion (127.0.0.1:1): unreachable") {
		t.Fatalf("/readyz: %d %q", code, body)
	}
	g.cfg.Admin.ReadyDiskFree = 1
	if code, body := get("/readyz"); code != http.StatusOK || !strings.HasPrefix(body, "ok\n") {
		t.Fatalf("/readyz with room: %d %q", code, body)
	}
	_, body = get("/v1/bundle")
	for _, want := range []string{`"last_success"`, `"last_error_at"`, `"last_attempt"`} {
		if !strings.Contains(body, want) {
			t.Errorf("/v1/bundle lacks %s: %s", want, body)
		}
	}
	if strings.Contains(body, `"last_error":`) {
		t.Errorf("/v1/bundle keeps an error a later success cleared: %s", body)
	}
	cancel()
	<-done
}
