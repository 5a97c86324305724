package bundle

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
)

// KeyID is the hex SHA-256 of the PKIX (SubjectPublicKeyInfo) DER encoding of
// a public key. It names the key in envelopes and logs; it is not secret.
func KeyID(pub ed25519.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		// ed25519 public keys always marshal; a failure here is a bug.
		panic(fmt.Sprintf("bundle: marshal ed25519 public key: %v", err))
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// GenerateKey makes a new ed25519 signing key.
func GenerateKey() (ed25519.PrivateKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("bundle: generate key: %w", err)
	}
	return priv, nil
}

// MarshalPrivateKey encodes a key as a PKCS#8 "PRIVATE KEY" PEM block.
func MarshalPrivateKey(priv ed25519.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("bundle: marshal private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// MarshalPublicKey encodes a key as a PKIX "PUBLIC KEY" PEM block.
func MarshalPublicKey(pub ed25519.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("bundle: marshal public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

func onePEM(data []byte, want string) ([]byte, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("no PEM block found (expected %q)", want)
	}
	if block.Type != want {
		return nil, fmt.Errorf("PEM block is %q, expected %q", block.Type, want)
	}
	if extra, _ := pem.Decode(rest); extra != nil {
		return nil, errors.New("more than one PEM block; put one key in each file")
	}
	return block.Bytes, nil
}

// ParsePrivateKey reads a PKCS#8 PEM ed25519 private key.
func ParsePrivateKey(data []byte) (ed25519.PrivateKey, error) {
	der, err := onePEM(data, "PRIVATE KEY")
	if err != nil {
		return nil, fmt.Errorf("bundle: parse private key: %w", err)
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("bundle: parse private key: %w", err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("bundle: parse private key: key is %T, only ed25519 is supported", k)
	}
	return priv, nil
}

// ParsePublicKey reads a PKIX PEM ed25519 public key.
func ParsePublicKey(data []byte) (ed25519.PublicKey, error) {
	der, err := onePEM(data, "PUBLIC KEY")
	if err != nil {
		return nil, fmt.Errorf("bundle: parse public key: %w", err)
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("bundle: parse public key: %w", err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("bundle: parse public key: key is %T, only ed25519 is supported", k)
	}
	return pub, nil
}

// LoadPrivateKey reads a private key file. It refuses a file that other users
// can read, as ssh does, because anyone who can read it can sign policy. The
// key is parsed first, so that passing a public key by mistake says so.
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("bundle: signing key: %w", err)
	}
	k, err := ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("%w (file %s)", err, path)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("bundle: signing key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("bundle: signing key %s is readable by other users (mode %04o); run: chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	return k, nil
}

// LoadPublicKey reads a public key file.
func LoadPublicKey(path string) (ed25519.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("bundle: trusted key: %w", err)
	}
	k, err := ParsePublicKey(data)
	if err != nil {
		return nil, fmt.Errorf("%w (file %s)", err, path)
	}
	return k, nil
}

// Keyring is a set of trusted public keys, by key id.
type Keyring map[string]ed25519.PublicKey

// NewKeyring trusts the given keys.
func NewKeyring(keys ...ed25519.PublicKey) Keyring {
	kr := Keyring{}
	for _, k := range keys {
		kr[KeyID(k)] = k
	}
	return kr
}

// LoadKeyring reads public key files into a keyring.
func LoadKeyring(paths ...string) (Keyring, error) {
	kr := Keyring{}
	for _, p := range paths {
		k, err := LoadPublicKey(p)
		if err != nil {
			return nil, err
		}
		kr[KeyID(k)] = k
	}
	return kr, nil
}
