package gateway

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/gateway/bundlestore"
	"github.com/gatehouse-dev/gatehouse/gateway/secrets"
)

func TestBundleBlock(t *testing.T) {
	cfg := func(body string) string {
		return strings.Replace(goodConfig, "  file         = \"policy.bundle\"\n", body, 1)
	}
	c, _, diags := ParseConfig([]byte(cfg(`  url     = "https://bundles.internal/prod/policy.bundle"
  ca_file = "/etc/gatehouse/tls/bundles-ca.pem"
  token   = "file:/var/run/secrets/bundle-token"
`)), "gateway.hcl")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if b := c.Bundle; b.URL != "https://bundles.internal/prod/policy.bundle" || b.File != "" || b.CAFile == "" || b.Token != "file:/var/run/secrets/bundle-token" || b.PollInterval != 5*time.Second {
		t.Errorf("bundle %+v", b)
	}
	tests := map[string]struct {
		body, want string
		line       int
	}{
		"loopback http":               {"  url = \"http://127.0.0.1:8080/policy.bundle\"\n", "", 0},
		"an S3 object URL":            {"  url = \"https://acme-bundles.s3.eu-west-1.amazonaws.com/prod/policy.bundle\"\n", "", 0},
		"both":                        {"  file = \"policy.bundle\"\n  url = \"https://b.example/p\"\n", "Two bundle sources", 11},
		"neither":                     {"", "Missing bundle source", 9},
		"plain http off loopback":     {"  url = \"http://bundles.internal/p\"\n", "Plaintext bundle URL outside loopback", 10},
		"not a URL":                   {"  url = \"bundles.internal/p\"\n", "Invalid bundle URL", 10},
		"another scheme":              {"  url = \"s3://bucket/p\"\n", "Invalid bundle URL", 10},
		"credentials in the URL":      {"  url = \"https://ci:hunter2@b.example/p\"\n", "Credentials in the bundle URL", 10},
		"a token in clear":            {"  url = \"https://b.example/p\"\n  token = \"eyJhbGciOi\"\n", "Not a secret reference", 11},
		"a token for a file":          {"  file = \"policy.bundle\"\n  token = \"env:T\"\n", "Token without a bundle URL", 11},
		"a CA file for a file":        {"  file = \"policy.bundle\"\n  ca_file = \"/ca.pem\"\n", "CA file without a bundle URL", 11},
		"a CA file for loopback http": {"  url = \"http://127.0.0.1:1/p\"\n  ca_file = \"/ca.pem\"\n", "CA file without a bundle URL", 11},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, _, diags := ParseConfig([]byte(cfg(tc.body)), "gateway.hcl")
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
					if strings.Contains(d.Detail, "hunter2") {
						t.Errorf("the diagnostic repeats the password: %s", d.Detail)
					}
					return
				}
			}
			t.Fatalf("diags %v, want %q", diags, tc.want)
		})
	}
	// The reference's bundle block is valid as it is, and with url, ca_file
	// and token in place of file.
	ref, _, ok := strings.Cut(ConfigReference[strings.Index(ConfigReference, "\nbundle {\n")+1:], "\n}\n")
	if !ok || !strings.HasPrefix(ref, "bundle {") {
		t.Fatal("ConfigReference has no bundle block")
	}
	noBundle := goodConfig[:strings.Index(goodConfig, "bundle {")]
	c, _, diags = ParseConfig([]byte(noBundle+ref+"\n}\n"), "gateway.hcl")
	if diags.HasErrors() || c.Bundle.File == "" {
		t.Fatalf("ConfigReference's bundle block: %v %+v", diags, c)
	}
	withURL := strings.NewReplacer("  file          =", "  # file        =", "  # url         =", "  url           =",
		"  # ca_file     =", "  ca_file       =", "  # token       =", "  token         =").Replace(ref)
	c, _, diags = ParseConfig([]byte(noBundle+withURL+"\n}\n"), "gateway.hcl")
	if diags.HasErrors() || c.Bundle.URL == "" || c.Bundle.CAFile == "" || c.Bundle.Token == "" || c.Bundle.File != "" {
		t.Fatalf("ConfigReference's bundle block with url: %v %+v", diags, c)
	}
}

// signedBundle signs a small model (one SSH host) at a revision.
func signedBundle(t *testing.T, k ed25519.PrivateKey, rev uint64) []byte {
	t.Helper()
	return signedBundleAt(t, k, rev, time.Now().Add(-time.Hour))
}

// signedBundleAt is signedBundle with a creation time: two bundles of one
// revision made at different times differ.
func signedBundleAt(t *testing.T, k ed25519.PrivateKey, rev uint64, at time.Time) []byte {
	t.Helper()
	m := bundle.Model{
		IdentityProviders: []bundle.IdentityProvider{{Name: "corp", Issuer: "https://id.example.com", Audiences: []string{"gatehouse"}}},
		SSHHosts:          []bundle.SSHHost{{Name: "bastion", Address: "127.0.0.1:1", User: "ops", HostKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOEUTqBqeZQjtMndz1LphtYO5IcPCLaCN3hxN0yK1Sen", Password: "env:X"}},
	}
	p, err := bundle.NewPayload(m, bundle.BuildOptions{Revision: rev, CreatedAt: at, Compiler: "test"})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := bundle.EncodePayload(p)
	if err != nil {
		t.Fatal(err)
	}
	signed, err := bundle.Sign(raw, k)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestGatewayBundleURL: a gateway whose bundle is a URL (real HTTPS, its CA
// from ca_file, a bearer token from the environment) serves it; /v1/bundle
// names the URL and the ETag, never the token; the metrics count 304s;
// /readyz stays ready while 304s confirm the bundle, turns unready once
// the source has failed for longer than max_bundle_age, and ready again
// when it answers; --check fetches and verifies without activating.
func TestGatewayBundleURL(t *testing.T) {
	const token = "bundle-token-6c2b7e0d"
	t.Setenv("GATEHOUSE_TEST_BUNDLE_TOKEN", token)
	dir := t.TempDir()
	k, err := bundle.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := bundle.MarshalPublicKey(k.Public().(ed25519.PublicKey))
	if err := os.WriteFile(filepath.Join(dir, "trusted.pub"), pub, 0o644); err != nil {
		t.Fatal(err)
	}
	srv := bundlestore.StartTestServer(t, token)
	etag := srv.Publish(signedBundle(t, k, 7))
	bundleURL := srv.URL + "/prod/policy.bundle"
	src := fmt.Sprintf(`data_dir = %q

ssh {
  listen = "127.0.0.1:0"
}

bundle {
  url          = %q
  ca_file      = %q
  token        = "env:GATEHOUSE_TEST_BUNDLE_TOKEN"
  trusted_keys = [%q]
}

admin {
  listen          = "127.0.0.1:0"
  ready_disk_free = 1
  max_bundle_age  = "1s"
}
`, filepath.Join(dir, "data"), bundleURL, srv.CAFile, filepath.Join(dir, "trusted.pub"))
	cfg, _, diags := ParseConfig([]byte(src), "gateway.hcl")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	cfg.Bundle.PollInterval = 50 * time.Millisecond // the config's floor is 1s

	// --check: fetched and verified, nothing activated or persisted.
	env := map[string]string{"X": "x", "GATEHOUSE_TEST_BUNDLE_TOKEN": token}
	checks := Preflight(context.Background(), cfg, PreflightOptions{Resolver: secrets.Resolver{Getenv: func(n string) (string, bool) {
		v, ok := env[n]
		return v, ok
	}}})
	var line string
	for _, c := range checks {
		if strings.HasPrefix(c.What, "bundle ") {
			line = fmt.Sprintf("%s: %v (%s)", c.What, c.Err, c.Note)
		}
	}
	if want := fmt.Sprintf("bundle %s: <nil> (revision 7, ", bundleURL); !strings.HasPrefix(line, want) || !strings.Contains(line, "ETag "+etag) {
		t.Errorf("--check's bundle line %q, want %q… with ETag %s", line, want, etag)
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "bundle")); err == nil {
		t.Error("--check persisted the bundle")
	}
	// Without the token's variable, --check says which reference is missing.
	bad := *cfg
	bad.Bundle.Token = "env:GATEHOUSE_TEST_NO_SUCH_TOKEN"
	for _, c := range Preflight(context.Background(), &bad, PreflightOptions{}) {
		if strings.HasPrefix(c.What, "bundle ") && (c.Err == nil || !strings.Contains(c.Err.Error(), "env:GATEHOUSE_TEST_NO_SUCH_TOKEN")) {
			t.Errorf("--check without the token: %v", c.Err)
		}
	}

	logs := &logBuffer{}
	g, err := New(cfg, WithLogger(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	<-g.Ready
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + g.AdminAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s\n%s", what, logs.String())
			}
		}
	}
	waitFor("revision 7", func() bool { a := g.Store().Current(); return a != nil && a.Revision == 7 })
	waitFor("304s", func() bool { _, nm, _ := srv.Counts(); return nm >= 3 })

	_, body := get("/v1/bundle")
	var status map[string]any
	if err := json.Unmarshal([]byte(body), &status); err != nil {
		t.Fatal(err)
	}
	if status["source_url"] != bundleURL || status["etag"] != etag || status["source"] != bundleURL || status["revision"] != 7.0 ||
		status["consecutive_failures"] != 0.0 || status["last_check"] == nil || status["next_check"] == nil {
		t.Errorf("/v1/bundle: %s", body)
	}
	_, metrics := get("/metrics")
	for _, want := range []string{`gatehouse_bundle_url_checks_total{result="not_modified"} `, `gatehouse_bundle_url_checks_total{result="fetched"} 1`,
		`gatehouse_bundle_url_consecutive_failures 0`, "gatehouse_bundle_stale_seconds ", "gatehouse_bundle_age_seconds 3"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// Loaded over a second ago, but confirmed by 304s since: ready.
	time.Sleep(1200 * time.Millisecond)
	if code, body := get("/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz while the source answers 304s: %d %s", code, body)
	}
	// The source fails: the bundle keeps serving, and past max_bundle_age
	// without a confirmation /readyz says why.
	srv.Fail(http.StatusBadGateway)
	waitFor("/readyz unready", func() bool { code, _ := get("/readyz"); return code == http.StatusServiceUnavailable })
	_, body = get("/readyz")
	if want := "not ready: bundle revision 7 was last confirmed by " + bundleURL; !strings.Contains(body, want) || !strings.Contains(body, "502 Bad Gateway") {
		t.Errorf("/readyz: %s, want %q and the error", body, want)
	}
	if g.Store().Current().Revision != 7 {
		t.Error("the bundle was dropped while the source failed")
	}
	_, metrics = get("/metrics")
	if strings.Contains(metrics, `gatehouse_bundle_url_checks_total{result="error"} 0`) || strings.Contains(metrics, "gatehouse_bundle_url_consecutive_failures 0") {
		t.Errorf("/metrics after failures:\n%s", metrics)
	}
	srv.Fail(0)
	waitFor("/readyz ready again", func() bool { code, _ := get("/readyz"); return code == http.StatusOK })

	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, where := range []string{logs.String(), body, metrics} {
		if strings.Contains(where, token) {
			t.Errorf("the token leaked: %s", where)
		}
	}
	for i, a := range srv.Authorizations() {
		if a != "Bearer "+token {
			t.Fatalf("request %d: Authorization %q", i, a)
		}
	}
}
