package gateway

import (
	"strings"
	"testing"
	"time"
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
