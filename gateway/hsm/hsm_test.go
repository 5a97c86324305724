package hsm

import (
	"crypto"
	"crypto/ed25519"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/pkcs11"
)

func TestParseURI(t *testing.T) {
	good := map[string]URI{
		"pkcs11:token=gatehouse;object=recorder?module-path=/usr/lib/softhsm/libsofthsm2.so": {
			ModulePath: "/usr/lib/softhsm/libsofthsm2.so", Token: "gatehouse", Object: "recorder"},
		"pkcs11:token=My%20Token;id=%01%02;type=private?module-path=/opt/hsm/lib.so&pin-source=file:/etc/gatehouse/pin": {
			ModulePath: "/opt/hsm/lib.so", Token: "My Token", ID: []byte{1, 2}, PINSource: "/etc/gatehouse/pin"},
		"pkcs11:serial=abc123;object=k?module-path=/m.so": {ModulePath: "/m.so", Serial: "abc123", Object: "k"},
	}
	for in, want := range good {
		got, err := ParseURI(in)
		if err != nil {
			t.Errorf("%s: %v", in, err)
			continue
		}
		if got.ModulePath != want.ModulePath || got.Token != want.Token || got.Object != want.Object || string(got.ID) != string(want.ID) ||
			got.Serial != want.Serial || got.PINSource != want.PINSource {
			t.Errorf("%s: got %+v, want %+v", in, got, want)
		}
		again, err := ParseURI(got.String())
		if err != nil || again.String() != got.String() {
			t.Errorf("%s: String() %q does not parse back: %v", in, got.String(), err)
		}
	}
	bad := map[string]string{
		"/etc/gatehouse/recorder.key":                                       "not a PKCS#11 URI",
		"pkcs11:token=t;object=k":                                           "module-path",
		"pkcs11:object=k?module-path=/m.so":                                 "names no token",
		"pkcs11:token=t?module-path=/m.so":                                  "names no key",
		"pkcs11:token=t;object=k?module-path=/m.so&pin-value=1234":          "in clear",
		"pkcs11:token=t;object=k;object=j?module-path=/m.so":                "twice",
		"pkcs11:token=t;object=k;type=public?module-path=/m.so":             "type=private",
		"pkcs11:token=t;object=k;flavour=x?module-path=/m.so":               "not supported",
		"pkcs11:token=t;object=k?module-path=/m.so&pin-source=relative/pin": "absolute",
		"pkcs11:token=t;object=k?module-path=/m.so&pin-source=file:%zz":     "attribute pin-source",
	}
	for in, want := range bad {
		if _, err := ParseURI(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want one saying %q", in, err, want)
		}
	}
}

// TestSoftHSMSigner signs through a real SoftHSM token with CKM_EDDSA:
// the signatures verify with ed25519.Verify against the public key the
// token returned when it generated the key, from many goroutines at once.
func TestSoftHSMSigner(t *testing.T) {
	tt := NewTestToken(t)
	s, err := Open(tt.URI, tt.PIN)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	pub, ok := s.Public().(ed25519.PublicKey)
	if !ok || !pub.Equal(tt.Public) {
		t.Fatalf("Public() = %T %x, want the generated %x", s.Public(), s.Public(), tt.Public)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := []byte(strings.Repeat("seal ", i+1))
			sig, err := s.Sign(nil, msg, crypto.Hash(0))
			if err != nil {
				t.Error(err)
				return
			}
			if !ed25519.Verify(pub, msg, sig) {
				t.Errorf("signature %d does not verify", i)
			}
		}()
	}
	wg.Wait()
	if _, err := s.Sign(nil, []byte("x"), crypto.SHA256); err == nil {
		t.Error("a pre-hashed signature was accepted")
	}
	// A second signer of the same module and token shares the module and
	// the login; closing it leaves the first one's session as it was.
	s2, err := Open(tt.URI, tt.PIN)
	if err != nil {
		t.Fatal(err)
	}
	s2.Close()
	sess := s.sess
	if _, err := s.Sign(nil, []byte("after the other closed"), crypto.Hash(0)); err != nil {
		t.Errorf("closing one signer broke the other: %v", err)
	}
	if s.sess != sess {
		t.Error("closing one signer made the other reconnect")
	}
}

func TestSoftHSMRefusals(t *testing.T) {
	tt := NewTestToken(t)
	cases := map[string]struct {
		uri  URI
		pin  string
		want string
	}{
		"wrong PIN":     {*tt.URI, "not-the-pin", "log in"},
		"no such key":   {URI{ModulePath: SoftHSMModule, Token: tt.Label, Object: "absent"}, tt.PIN, "holds no such private key"},
		"no such token": {URI{ModulePath: SoftHSMModule, Token: "absent", Object: "recorder"}, tt.PIN, "no token matches"},
		"no module":     {URI{ModulePath: filepath.Join(t.TempDir(), "none.so"), Token: tt.Label, Object: "recorder"}, tt.PIN, "no such file"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			s, err := Open(&tc.uri, tc.pin)
			if err == nil {
				s.Close()
				t.Fatal("opened")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want it to say %q", err, tc.want)
			}
			if strings.Contains(err.Error(), tt.PIN) {
				t.Error("an error shows the PIN")
			}
		})
	}
	if _, err := Generate(tt.URI, tt.PIN); err == nil || !strings.Contains(err.Error(), "already holds") {
		t.Errorf("a second key with the same label: %v", err)
	}
}

// A key of another type under the label (here an ECDSA P-256 key made in
// the same token) is refused, not used.
func TestSoftHSMRefusesANonEd25519Key(t *testing.T) {
	tt := NewTestToken(t)
	mod, err := loadModule(SoftHSMModule)
	if err != nil {
		t.Fatal(err)
	}
	defer mod.release()
	slot, err := findSlot(mod.ctx, tt.URI)
	if err != nil {
		t.Fatal(err)
	}
	sess, err := mod.ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	defer mod.ctx.CloseSession(sess)
	if err := mod.ctx.Login(sess, pkcs11.CKU_USER, tt.PIN); err != nil {
		t.Fatal(err)
	}
	p256 := []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07} // prime256v1
	_, _, err = mod.ctx.GenerateKeyPair(sess, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)},
		[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_LABEL, "ecdsa"),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, p256), pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true)},
		[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_LABEL, "ecdsa"),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true), pkcs11.NewAttribute(pkcs11.CKA_SIGN, true)})
	if err != nil {
		t.Fatal(err)
	}
	u := *tt.URI
	u.Object = "ecdsa"
	s, err := Open(&u, tt.PIN)
	if err == nil {
		s.Close()
		t.Fatal("an ECDSA key was opened as the ed25519 signing key")
	}
	if !strings.Contains(err.Error(), "not an ed25519 key") {
		t.Errorf("error %q", err)
	}
	if _, err := parseECPoint(make([]byte, 31)); err == nil {
		t.Error("a 31-byte point parsed")
	}
}

func TestReadPIN(t *testing.T) {
	p := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(p, []byte("1234\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if pin, err := ReadPIN(p); err != nil || pin != "1234" {
		t.Errorf("ReadPIN = %q, %v", pin, err)
	}
	if _, err := ReadPIN(filepath.Dir(p)); err == nil {
		t.Error("a directory read as a PIN")
	}
}
