package acctest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/gateway/bundlestore"
)

// TestBundleOverHTTPS runs the gatehouse binary with its bundle on a real
// HTTPS server (the CA from ca_file, a bearer token from the environment),
// as CI publishes it to an object store: --check fetches and verifies it;
// the gateway serves it, polls with If-None-Match (304s), takes a new
// revision, refuses a tampered and an older one and keeps serving, keeps
// serving when the server is gone, and comes back after a restart without
// the server from the bundle it persisted. The token is in no log line. It
// needs no database or identity provider, so it is quick.
func TestBundleOverHTTPS(t *testing.T) {
	const token = "acc-bundle-token-3f9a1c"
	dir := t.TempDir()
	policies := filepath.Join(dir, "policies")
	if err := os.MkdirAll(policies, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(policies, "policy.hcl"), []byte(`postgres "orders" {
  address  = "127.0.0.1:1"
  database = "orders"
  username = "gatehouse"
  password = "env:ORDERS_DB_PASSWORD"
}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	gh(t, "keygen", "--out", filepath.Join(dir, "keys"))
	build := func(rev int) []byte {
		t.Helper()
		out := filepath.Join(dir, fmt.Sprintf("r%d.bundle", rev))
		gh(t, "bundle", "build", policies, "--key", filepath.Join(dir, "keys", "gatehouse.key"), "--out", out, "--revision", fmt.Sprint(rev))
		data, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	srv := bundlestore.StartTestServer(t, token)
	etag := srv.Publish(build(100))
	bundleURL := srv.URL + "/prod/policy.bundle"
	adminAddr := freePort(t)
	cfgFile := filepath.Join(dir, "gateway.hcl")
	if err := os.WriteFile(cfgFile, []byte(fmt.Sprintf(`data_dir = %q

postgres {
  listen             = %q
  insecure_plaintext = true
}

bundle {
  url           = %q
  ca_file       = %q
  token         = "env:BUNDLE_TOKEN"
  trusted_keys  = [%q]
  poll_interval = "1s"
}

admin {
  listen = %q
}

log {
  level = "debug"
}
`, filepath.Join(dir, "data"), freePort(t), bundleURL, srv.CAFile, filepath.Join(dir, "keys", "gatehouse.pub"), adminAddr)), 0o644); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "BUNDLE_TOKEN="+token, "ORDERS_DB_PASSWORD=unused")

	check := exec.Command(gatehouseBin, "gateway", "--config", cfgFile, "--check")
	check.Env = env
	out, err := check.CombinedOutput()
	if want := fmt.Sprintf("ok    bundle %s (revision 100, ", bundleURL); err != nil || !strings.Contains(string(out), want) || !strings.Contains(string(out), "ETag "+etag+")") {
		t.Fatalf("--check: %v, want %q with ETag %s\n%s", err, want, etag, out)
	}

	logs := &lockedBuffer{}
	var gw *exec.Cmd
	var exited chan error
	start := func() {
		t.Helper()
		gw = exec.Command(gatehouseBin, "gateway", "--config", cfgFile)
		gw.Env, gw.Stdout, gw.Stderr = env, logs, logs
		if err := gw.Start(); err != nil {
			t.Fatal(err)
		}
		exited = make(chan error, 1)
		go func() { exited <- gw.Wait() }()
	}
	stop := func() {
		t.Helper()
		if gw == nil {
			return
		}
		_ = gw.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("gateway exited with %v", err)
			}
		case <-time.After(10 * time.Second):
			_ = gw.Process.Kill()
			t.Error("gateway did not stop on SIGTERM")
		}
		gw = nil
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("gateway log:\n%s", logs.String())
		}
	})
	status := func() map[string]any {
		t.Helper()
		resp, err := http.Get("http://" + adminAddr + "/v1/bundle")
		if err != nil {
			return nil
		}
		defer resp.Body.Close()
		var st map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&st)
		return st
	}
	ready := func() bool {
		resp, err := http.Get("http://" + adminAddr + "/readyz")
		if err != nil {
			return false
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	waitStatus := func(what string, cond func(map[string]any) bool) map[string]any {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if st := status(); st != nil && cond(st) {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s; /v1/bundle: %v", what, status())
			}
		}
	}
	revision := func(rev float64) func(map[string]any) bool {
		return func(st map[string]any) bool { return st["revision"] == rev }
	}
	failing := func(substr string) func(map[string]any) bool {
		return func(st map[string]any) bool {
			e, _ := st["last_fetch_error"].(string)
			return strings.Contains(e, substr)
		}
	}

	start()
	// The revision shows as the bundle is swapped in, its ETag a moment
	// later (once the check completes): wait for both.
	st := waitStatus("revision 100 and its ETag", func(st map[string]any) bool { return revision(100)(st) && st["etag"] == etag })
	if st["source_url"] != bundleURL || !ready() {
		t.Fatalf("/v1/bundle: %v, ready %v", st, ready())
	}
	time.Sleep(1500 * time.Millisecond)
	// One body for --check, one for the gateway; then only 304s.
	if ok, nm, _ := srv.Counts(); ok != 2 || nm < 1 {
		t.Errorf("an unchanged bundle: %d bodies served, %d 304s; want 2 bodies (--check, the gateway), then 304s", ok, nm)
	}

	newETag := srv.Publish(build(101))
	waitStatus("revision 101", revision(101))
	waitStatus("its ETag", func(st map[string]any) bool { return st["etag"] == newETag })

	tampered := build(102)
	tampered[len(tampered)/2] ^= 1
	srv.Publish(tampered)
	waitStatus("the tampered bundle refused", failing("bundle refused"))
	srv.Publish(build(99))
	st = waitStatus("the older bundle refused", failing("not newer than the active one"))
	if st["revision"] != 101.0 || !ready() {
		t.Fatalf("after refusals: %v, ready %v", st, ready())
	}

	srv.Close()
	st = waitStatus("the server's absence noticed", failing("connection refused"))
	if st["revision"] != 101.0 || !ready() {
		t.Fatalf("without the server: %v, ready %v", st, ready())
	}

	// A restart with the server still gone comes up with the persisted
	// bundle, and says the source is failing.
	stop()
	start()
	st = waitStatus("the persisted bundle after a restart", revision(101))
	if !strings.HasPrefix(st["source"].(string), "persisted ") || !ready() {
		t.Fatalf("after a restart without the server: %v, ready %v", st, ready())
	}
	waitStatus("the failing source reported", failing("connection refused"))
	stop()

	if strings.Contains(logs.String(), token) {
		t.Errorf("the bundle token is in the gateway's log")
	}
	for _, want := range []string{"bundle activated", "bundle refused", "keeping the active bundle"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the log lacks %q", want)
		}
	}
}
