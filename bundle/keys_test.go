package bundle

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFile(t *testing.T, name string, data []byte, perm os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, perm); err != nil {
		t.Fatal(err)
	}
	// WriteFile's mode is filtered by the umask; set it exactly.
	if err := os.Chmod(path, perm); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestKeyPEMRoundTrip(t *testing.T) {
	priv, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pub := pubOf(priv)

	privPEM, err := MarshalPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM, err := MarshalPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(privPEM, []byte("-----BEGIN PRIVATE KEY-----\n")) {
		t.Errorf("private key PEM: %s", privPEM)
	}
	if !bytes.HasPrefix(pubPEM, []byte("-----BEGIN PUBLIC KEY-----\n")) {
		t.Errorf("public key PEM: %s", pubPEM)
	}

	gotPriv, err := ParsePrivateKey(privPEM)
	if err != nil {
		t.Fatalf("ParsePrivateKey: %v", err)
	}
	if !gotPriv.Equal(priv) {
		t.Errorf("private key did not round-trip")
	}
	gotPub, err := ParsePublicKey(pubPEM)
	if err != nil {
		t.Fatalf("ParsePublicKey: %v", err)
	}
	if !gotPub.Equal(pub) {
		t.Errorf("public key did not round-trip")
	}

	// Through files, with the permissions a key file should have.
	privPath := writeFile(t, "signing.pem", privPEM, 0o600)
	pubPath := writeFile(t, "trusted.pem", pubPEM, 0o644)
	loaded, err := LoadPrivateKey(privPath)
	if err != nil {
		t.Fatalf("LoadPrivateKey: %v", err)
	}
	if !loaded.Equal(priv) {
		t.Errorf("LoadPrivateKey returned another key")
	}
	if p, err := LoadPublicKey(pubPath); err != nil || !p.Equal(pub) {
		t.Errorf("LoadPublicKey: %v", err)
	}
	kr, err := LoadKeyring(pubPath)
	if err != nil {
		t.Fatalf("LoadKeyring: %v", err)
	}
	if len(kr) != 1 || !kr[KeyID(pub)].Equal(pub) {
		t.Errorf("LoadKeyring = %v", kr)
	}

	// And a bundle signed with the loaded key verifies with the loaded keyring.
	data := sign(t, encode(t, testPayload(t)), loaded)
	if _, err := Verify(data, kr, VerifyOptions{}); err != nil {
		t.Errorf("Verify with loaded keys: %v", err)
	}

	// Marshalling is deterministic.
	if again, _ := MarshalPrivateKey(priv); !bytes.Equal(again, privPEM) {
		t.Errorf("MarshalPrivateKey is not deterministic")
	}
	if again, _ := MarshalPublicKey(pub); !bytes.Equal(again, pubPEM) {
		t.Errorf("MarshalPublicKey is not deterministic")
	}
}

func TestLoadPrivateKeyPermissions(t *testing.T) {
	priv := testKey(1)
	privPEM, err := MarshalPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		perm    os.FileMode
		wantMsg string // "" means the key loads
	}{
		"0600":                {perm: 0o600},
		"0400":                {perm: 0o400},
		"0644 world-readable": {perm: 0o644, wantMsg: "is readable by other users (mode 0644); run: chmod 600 "},
		"0640 group-readable": {perm: 0o640, wantMsg: "(mode 0640); run: chmod 600 "},
		"0604 other-readable": {perm: 0o604, wantMsg: "(mode 0604); run: chmod 600 "},
		"0620 group-writable": {perm: 0o620, wantMsg: "(mode 0620); run: chmod 600 "},
		"0601 other-exec":     {perm: 0o601, wantMsg: "(mode 0601); run: chmod 600 "},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			path := writeFile(t, "key.pem", privPEM, tc.perm)
			k, err := LoadPrivateKey(path)
			if tc.wantMsg == "" {
				if err != nil {
					t.Fatalf("LoadPrivateKey: %v", err)
				}
				if !k.Equal(priv) {
					t.Fatalf("loaded another key")
				}
				return
			}
			if err == nil {
				t.Fatalf("LoadPrivateKey accepted a %04o key file", tc.perm)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) || !strings.HasSuffix(err.Error(), "chmod 600 "+path) {
				t.Errorf("error %q does not contain %q and end in the path", err, tc.wantMsg)
			}
		})
	}

	t.Run("missing file", func(t *testing.T) {
		_, err := LoadPrivateKey(filepath.Join(t.TempDir(), "nope.pem"))
		if err == nil || !strings.Contains(err.Error(), "bundle: signing key:") || !os.IsNotExist(unwrapAll(err)) {
			t.Errorf("got %v, want a not-exist error", err)
		}
	})
	t.Run("file names itself in parse errors", func(t *testing.T) {
		path := writeFile(t, "garbage.pem", []byte("not a key"), 0o600)
		_, err := LoadPrivateKey(path)
		if err == nil || !strings.Contains(err.Error(), "no PEM block found") || !strings.Contains(err.Error(), "(file "+path+")") {
			t.Errorf("got %v", err)
		}
	})
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		next := u.Unwrap()
		if next == nil {
			return err
		}
		err = next
	}
}

func TestParseKeyErrors(t *testing.T) {
	ed := testKey(3)
	edPrivPEM, _ := MarshalPrivateKey(ed)
	edPubPEM, _ := MarshalPublicKey(pubOf(ed))

	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecPrivDER, err := x509.MarshalPKCS8PrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	ecPubDER, err := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaPrivDER, err := x509.MarshalPKCS8PrivateKey(rsaKey)
	if err != nil {
		t.Fatal(err)
	}
	pemOf := func(typ string, der []byte) []byte {
		return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	}
	edPrivDER, _ := x509.MarshalPKCS8PrivateKey(ed)

	privTests := map[string]struct {
		data    []byte
		wantMsg string
	}{
		"public key given as private key": {edPubPEM, `PEM block is "PUBLIC KEY", expected "PRIVATE KEY"`},
		"OpenSSH-style type":              {pemOf("OPENSSH PRIVATE KEY", edPrivDER), `PEM block is "OPENSSH PRIVATE KEY", expected "PRIVATE KEY"`},
		"EC PRIVATE KEY type":             {pemOf("EC PRIVATE KEY", ecPrivDER), `PEM block is "EC PRIVATE KEY", expected "PRIVATE KEY"`},
		"two PEM blocks":                  {append(bytes.Clone(edPrivPEM), edPrivPEM...), "more than one PEM block; put one key in each file"},
		"private then public block":       {append(bytes.Clone(edPrivPEM), edPubPEM...), "more than one PEM block"},
		"no PEM at all":                   {[]byte("MC4CAQAwBQYDK2VwBCIEI..."), `no PEM block found (expected "PRIVATE KEY")`},
		"empty":                           {nil, "no PEM block found"},
		"ECDSA PKCS#8 key":                {pemOf("PRIVATE KEY", ecPrivDER), "key is *ecdsa.PrivateKey, only ed25519 is supported"},
		"RSA PKCS#8 key":                  {pemOf("PRIVATE KEY", rsaPrivDER), "key is *rsa.PrivateKey, only ed25519 is supported"},
		"garbage DER":                     {pemOf("PRIVATE KEY", []byte{0x30, 0x03, 0x02, 0x01, 0x00}), "bundle: parse private key: asn1:"},
	}
	for name, tc := range privTests {
		t.Run("private/"+name, func(t *testing.T) {
			k, err := ParsePrivateKey(tc.data)
			if err == nil {
				t.Fatalf("ParsePrivateKey accepted it: %x", k)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) || !strings.HasPrefix(err.Error(), "bundle: parse private key: ") {
				t.Errorf("error %q does not contain %q", err, tc.wantMsg)
			}
		})
	}

	pubTests := map[string]struct {
		data    []byte
		wantMsg string
	}{
		"private key given as public key": {edPrivPEM, `PEM block is "PRIVATE KEY", expected "PUBLIC KEY"`},
		"two PEM blocks":                  {append(bytes.Clone(edPubPEM), edPubPEM...), "more than one PEM block; put one key in each file"},
		"no PEM at all":                   {[]byte("ssh-ed25519 AAAA"), `no PEM block found (expected "PUBLIC KEY")`},
		"ECDSA PKIX key":                  {pemOf("PUBLIC KEY", ecPubDER), "key is *ecdsa.PublicKey, only ed25519 is supported"},
		"garbage DER":                     {pemOf("PUBLIC KEY", []byte{0x30, 0x00}), "bundle: parse public key: asn1:"},
	}
	for name, tc := range pubTests {
		t.Run("public/"+name, func(t *testing.T) {
			k, err := ParsePublicKey(tc.data)
			if err == nil {
				t.Fatalf("ParsePublicKey accepted it: %x", k)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) || !strings.HasPrefix(err.Error(), "bundle: parse public key: ") {
				t.Errorf("error %q does not contain %q", err, tc.wantMsg)
			}
		})
	}

	t.Run("ECDSA key files are refused", func(t *testing.T) {
		path := writeFile(t, "ec.pem", pemOf("PRIVATE KEY", ecPrivDER), 0o600)
		if _, err := LoadPrivateKey(path); err == nil || !strings.Contains(err.Error(), "only ed25519 is supported") {
			t.Errorf("LoadPrivateKey(ecdsa) = %v", err)
		}
		path = writeFile(t, "ec.pub", pemOf("PUBLIC KEY", ecPubDER), 0o644)
		if _, err := LoadKeyring(path); err == nil || !strings.Contains(err.Error(), "only ed25519 is supported") || !strings.Contains(err.Error(), path) {
			t.Errorf("LoadKeyring(ecdsa) = %v", err)
		}
	})
}

func TestKeyID(t *testing.T) {
	pub := pubOf(testKey(1))
	id := KeyID(pub)
	if len(id) != 64 {
		t.Fatalf("KeyID length %d, want 64: %s", len(id), id)
	}
	if _, err := hex.DecodeString(id); err != nil || strings.ToLower(id) != id {
		t.Fatalf("KeyID %q is not lower-case hex", id)
	}
	// Stable: the same key always has the same id, across encodings.
	if again := KeyID(pubOf(testKey(1))); again != id {
		t.Errorf("KeyID not stable: %s != %s", again, id)
	}
	pubPEM, _ := MarshalPublicKey(pub)
	parsed, err := ParsePublicKey(pubPEM)
	if err != nil {
		t.Fatal(err)
	}
	if KeyID(parsed) != id {
		t.Errorf("KeyID changed through PEM")
	}
	// Pinned: KeyID is the SHA-256 of the SubjectPublicKeyInfo DER, and key
	// ids appear in deployed envelopes and configs, so they must never change.
	const want = "339e2ff917630507b6a423b5ce084e285d1fa65d93b3e27a6195d3bbebc9ae23"
	if got := KeyID(pubOf(testKey(0))); got != want || got != wantKeyID0(t) {
		t.Errorf("KeyID(testKey(0)) = %s, want %s (independently: %s)", got, want, wantKeyID0(t))
	}
	if KeyID(pubOf(testKey(2))) == id {
		t.Errorf("two keys share a KeyID")
	}
	kr := NewKeyring(pub, pub, pubOf(testKey(2)))
	if len(kr) != 2 || !kr[id].Equal(pub) {
		t.Errorf("NewKeyring = %v", kr)
	}
}

// wantKeyID0 computes the pinned id independently of KeyID.
func wantKeyID0(t *testing.T) string {
	t.Helper()
	pub := pubOf(testKey(0))
	// SubjectPublicKeyInfo for Ed25519 (RFC 8410): fixed 12-byte prefix.
	der := append([]byte{0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00}, pub...)
	return Digest(der)[len("sha256:"):]
}
