package hsm

import (
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// SoftHSMModule is where Debian and Ubuntu's softhsm2 package puts the
// SoftHSM PKCS#11 library.
const SoftHSMModule = "/usr/lib/softhsm/libsofthsm2.so"

// TestToken is a SoftHSM token made for one test, in its own directory.
type TestToken struct {
	// Conf is the SoftHSM configuration: SOFTHSM2_CONF must name it in
	// every process that opens the token (the test's own is set).
	Conf  string
	Label string
	PIN   string
	// URI names the token's ed25519 key "recorder", generated in it.
	URI *URI
	// Public is that key's public half.
	Public ed25519.PublicKey
}

// Env is the environment a child process (a gateway) needs to see the
// token.
func (tt *TestToken) Env() []string { return []string{"SOFTHSM2_CONF=" + tt.Conf} }

// NewTestToken makes a SoftHSM token in a temporary directory with
// softhsm2-util, points SOFTHSM2_CONF at it (t.Setenv), and generates an
// ed25519 key in it through PKCS#11. It fails the test when SoftHSM is not
// installed (make deps installs it).
func NewTestToken(t testing.TB) *TestToken {
	t.Helper()
	util, err := exec.LookPath("softhsm2-util")
	if err != nil {
		t.Fatalf("softhsm2-util is required (apt package softhsm2; make deps installs it): %v", err)
	}
	if _, err := os.Stat(SoftHSMModule); err != nil {
		t.Fatalf("the SoftHSM module is required (apt package softhsm2; make deps installs it): %v", err)
	}
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+tokens+"\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", conf)
	tt := &TestToken{Conf: conf, Label: "gatehouse-test", PIN: "pin-" + rand.Text()[:12]}
	cmd := exec.Command(util, "--init-token", "--free", "--label", tt.Label, "--pin", tt.PIN, "--so-pin", "so-"+rand.Text()[:12])
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util --init-token: %v\n%s", err, out)
	}
	tt.URI = &URI{ModulePath: SoftHSMModule, Token: tt.Label, Object: "recorder"}
	if tt.Public, err = Generate(tt.URI, tt.PIN); err != nil {
		t.Fatalf("generate an ed25519 key in SoftHSM: %v", err)
	}
	return tt
}
