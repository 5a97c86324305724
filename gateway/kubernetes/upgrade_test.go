package kubernetes

import (
	"bufio"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/gateway/bundlestore"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/gateway/secrets"
	"github.com/gatehouse-dev/gatehouse/gateway/session"
	"github.com/gatehouse-dev/gatehouse/hclconfig"
	"github.com/gatehouse-dev/gatehouse/internal/oidctest"
)

// upgradePolicy masks a Secret for a caller allowed everything.
const upgradePolicy = `
identity_provider "corp" {
  issuer    = %q
  audiences = ["gatehouse"]
}
identity "dev" {
  provider = "corp"
  subject  = "dev"
}
kubernetes_cluster "prod" {
  server  = %q
  token   = "env:K8S_TOKEN"
  ca_file = %q
}
policy "all" {
  resources  = ["prod"]
  identities = ["dev"]
  rule "all" {
    effect = "allow"
    reason = "all"
  }
}
mask "secret-values" {
  resources = ["prod"]
  fields    = ["secrets/data"]
  method    = "redact"
}
`

// TestUpgradeOnlyForStreams: the API server also serves a watch over
// WebSocket (x/net/websocket echoes an offered channel subprotocol), and
// such a stream would bypass the masks and the recording. The gateway
// refuses every upgrade but exec, attach and port-forward, against an
// upstream that answers as the API server does.
func TestUpgradeOnlyForStreams(t *testing.T) {
	up := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ev := `{"type":"ADDED","object":` + secretJSON + `}`
		if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			// As x/net/websocket answers (the API server's watch over WebSocket):
			// one offered subprotocol is echoed.
			conn, bw, _ := http.NewResponseController(w).Hijack()
			defer conn.Close()
			fmt.Fprintf(bw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\nSec-WebSocket-Protocol: %s\r\n\r\n", r.Header.Get("Sec-Websocket-Protocol"))
			bw.Write(frames(srvBin(true, opText, []byte(ev))))
			bw.Flush()
			time.Sleep(200 * time.Millisecond)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, secretJSON)
	}))
	defer up.Close()
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: up.Certificate().Raw}), 0o600)
	t.Setenv("K8S_TOKEN", "gateway-token")

	iss := oidctest.Start(t)
	key, _ := bundle.GenerateKey()
	store := bundlestore.New(bundle.NewKeyring(key.Public().(ed25519.PublicKey)), "")
	res, diags := hclconfig.LoadFiles(map[string][]byte{"p.hcl": []byte(fmt.Sprintf(upgradePolicy, iss.URL, up.URL, ca))})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	p, err := bundle.NewPayload(*res.Model, bundle.BuildOptions{Revision: 1, CreatedAt: time.Unix(1764000000, 0), Compiler: "test"})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := bundle.EncodePayload(p)
	data, _ := bundle.Sign(raw, key)
	if _, err := store.Apply(data, "test"); err != nil {
		t.Fatal(err)
	}
	recKey, _ := bundle.GenerateKey()
	rec, err := recorder.Open(t.TempDir(), recKey)
	if err != nil {
		t.Fatal(err)
	}
	defer rec.Close()
	c := session.New(store, session.WithRecorder(rec), session.WithLogger(slog.New(slog.DiscardHandler)))
	s, err := New(Config{TLS: &tls.Config{}}, c, WithSecrets(secrets.Resolver{}), WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	gw := httptest.NewServer(s)
	defer gw.Close()
	tok := iss.Token(t, "dev", "gatehouse")

	// Control: a plain GET is masked.
	req, _ := http.NewRequest("GET", gw.URL+"/k8s/prod/api/v1/namespaces/default/secrets/db", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || strings.Contains(string(b), secretB64) || !strings.Contains(string(b), "W1JFREFDVEVEXQ==") {
		t.Fatalf("GET: %d %s", resp.StatusCode, b)
	}

	// A JSON patch could copy a masked value into a field no mask
	// covers, and the answer would show it: refused where masks apply.
	req, _ = http.NewRequest("PATCH", gw.URL+"/k8s/prod/api/v1/namespaces/default/secrets/db?dryRun=All",
		strings.NewReader(`[{"op":"copy","from":"/data/password","path":"/metadata/annotations/x"}]`))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json-patch+json")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || strings.Contains(string(b), secretB64) || !strings.Contains(string(b), "JSON patch") {
		t.Fatalf("a JSON patch of a masked Secret: %d %s", resp.StatusCode, b)
	}

	// A watch over WebSocket with a channel subprotocol.
	conn, err := net.Dial("tcp", strings.TrimPrefix(gw.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /k8s/prod/api/v1/namespaces/default/secrets?watch=true HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"+
		"Connection: Upgrade\r\nUpgrade: websocket\r\nOrigin: http://x\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"+
		"Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n", tok)
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	all, _ := io.ReadAll(bufio.NewReader(conn))
	if strings.Contains(string(all), secretB64) {
		t.Errorf("the unmasked secret reached the caller:\n%s", all)
	}
	if !strings.HasPrefix(string(all), "HTTP/1.1 400") || !strings.Contains(string(all), "only pods/exec, pods/attach and pods/portforward") {
		t.Errorf("the watch upgrade was not refused:\n%s", all)
	}
}
