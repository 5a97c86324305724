package acctest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestGatewayCheck: --check finds what would only surface at the first
// client connection: an unresolvable credential reference (named, its
// value never printed), a missing certificate; and it reaches the
// identity provider (Hydra) and verifies the bundle.
func TestGatewayCheck(t *testing.T) {
	s := startStack(t)
	run := func(cfgFile string, env []string) (string, int) {
		t.Helper()
		cmd := exec.Command(gatehouseBin, "gateway", "--config", cfgFile, "--check")
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), code
	}
	out, code := run(s.cfgFile, s.env)
	if code != 0 {
		t.Fatalf("--check with everything in place: exit %d\n%s", code, out)
	}
	for _, want := range []string{"ok    postgres TLS certificate", `ok    postgres "orders": password (env:ORDERS_DB_PASSWORD)`,
		`ok    identity provider "hydra" discovery`, "ok    bundle ", "ok    trusted keys (1)", "the gateway can start"} {
		if !strings.Contains(out, want) {
			t.Errorf("--check output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, s.pgPass) {
		t.Errorf("--check printed the database password:\n%s", out)
	}

	// Without the password's variable: named, exit 1.
	var env []string
	for _, e := range s.env {
		if !strings.HasPrefix(e, "ORDERS_DB_PASSWORD=") {
			env = append(env, e)
		}
	}
	out, code = run(s.cfgFile, env)
	if code != 1 || !strings.Contains(out, `FAIL  postgres "orders": password (env:ORDERS_DB_PASSWORD): secrets: env:ORDERS_DB_PASSWORD: environment variable ORDERS_DB_PASSWORD is not set on the gateway`) {
		t.Errorf("--check without ORDERS_DB_PASSWORD: exit %d\n%s", code, out)
	}

	// A certificate that is not there.
	data, err := os.ReadFile(s.cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(data)
	i := strings.Index(cfg, "tls_cert")
	j := strings.Index(cfg[i:], "\n")
	broken := filepath.Join(t.TempDir(), "gateway.hcl")
	if err := os.WriteFile(broken, []byte(cfg[:i]+`tls_cert = "/nonexistent/server.crt"`+cfg[i+j:]), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code = run(broken, s.env)
	if code != 1 || !strings.Contains(out, "FAIL  postgres TLS certificate /nonexistent/server.crt: open /nonexistent/server.crt: no such file or directory") {
		t.Errorf("--check with a missing certificate: exit %d\n%s", code, out)
	}
}
