// Package hsm signs with an ed25519 key held in a PKCS#11 token (a
// hardware security module, a cloud HSM, or SoftHSM for tests), so that
// the key never sits in a file the gateway's host can copy. The recorder
// seals recordings and signs its ledger through it.
//
// Keys are EdDSA (CKK_EC_EDWARDS on curve edwards25519, signed with
// CKM_EDDSA, PKCS#11 3.0), so that every signature verifies with the same
// ed25519 public keys as a key kept in a file: recordings and `gatehouse
// audit verify` do not care where the key lives.
package hsm

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// URI names a key in a token: an RFC 7512 PKCS#11 URI such as
//
//	pkcs11:token=gatehouse;object=recorder?module-path=/usr/lib/softhsm/libsofthsm2.so
//
// The PIN is never part of it: pin-value is refused, and the PIN comes
// from a secret reference (env:NAME, file:/path) or pin-source.
type URI struct {
	// ModulePath is the PKCS#11 library to load (module-path; required).
	ModulePath string
	// Token is the token's label (token), Serial its serial number
	// (serial), SlotID its slot (slot-id). At least one is required.
	Token, Serial string
	SlotID        *uint
	// Object is the key's label (object) and ID its CKA_ID (id). At least
	// one is required; the private and the public key share them.
	Object string
	ID     []byte
	// PINSource is a file holding the user PIN (pin-source), if given.
	PINSource string
}

// IsURI reports whether a key reference is a PKCS#11 URI rather than a
// file path.
func IsURI(s string) bool { return strings.HasPrefix(s, "pkcs11:") }

// ParseURI reads an RFC 7512 URI. Attributes this package cannot match on
// are refused rather than ignored, so that a typo does not select another
// key.
func ParseURI(s string) (*URI, error) {
	if !IsURI(s) {
		return nil, fmt.Errorf("hsm: %q is not a PKCS#11 URI (pkcs11:...)", s)
	}
	rest := strings.TrimPrefix(s, "pkcs11:")
	path, query, _ := strings.Cut(rest, "?")
	u := &URI{}
	seen := map[string]bool{}
	for _, attr := range splitNonEmpty(path, ";") {
		k, v, err := attribute(attr)
		if err != nil {
			return nil, err
		}
		if seen[k] {
			return nil, fmt.Errorf("hsm: attribute %q is given twice", k)
		}
		seen[k] = true
		switch k {
		case "token":
			u.Token = v
		case "serial":
			u.Serial = v
		case "slot-id":
			n, err := strconv.ParseUint(v, 10, 0)
			if err != nil {
				return nil, fmt.Errorf("hsm: slot-id %q is not a number", v)
			}
			id := uint(n)
			u.SlotID = &id
		case "object":
			u.Object = v
		case "id":
			u.ID = []byte(v)
		case "type":
			if v != "private" {
				return nil, fmt.Errorf("hsm: type=%s: the signing key is a private key (type=private, or leave type out)", v)
			}
		default:
			return nil, fmt.Errorf("hsm: path attribute %q is not supported (use token, serial, slot-id, object, id, type)", k)
		}
	}
	for _, attr := range splitNonEmpty(query, "&") {
		k, v, err := attribute(attr)
		if err != nil {
			return nil, err
		}
		if seen[k] {
			return nil, fmt.Errorf("hsm: attribute %q is given twice", k)
		}
		seen[k] = true
		switch k {
		case "module-path":
			u.ModulePath = v
		case "pin-source":
			p := strings.TrimPrefix(v, "file:")
			if !strings.HasPrefix(p, "/") {
				return nil, fmt.Errorf("hsm: pin-source must be an absolute file path (file:/path)")
			}
			u.PINSource = p
		case "pin-value":
			return nil, errors.New("hsm: pin-value puts the PIN in the configuration in clear; give it as a secret reference (pin = \"env:NAME\" or \"file:/path\") or pin-source")
		default:
			return nil, fmt.Errorf("hsm: query attribute %q is not supported (use module-path, pin-source)", k)
		}
	}
	switch {
	case u.ModulePath == "":
		return nil, errors.New("hsm: the URI names no PKCS#11 library: add ?module-path=/path/to/module.so")
	case u.Token == "" && u.Serial == "" && u.SlotID == nil:
		return nil, errors.New("hsm: the URI names no token: add token=LABEL (or serial=, slot-id=)")
	case u.Object == "" && len(u.ID) == 0:
		return nil, errors.New("hsm: the URI names no key: add object=LABEL (or id=)")
	}
	return u, nil
}

func splitNonEmpty(s, sep string) []string {
	var out []string
	for _, p := range strings.Split(s, sep) {
		if p != "" {
			out = append(out, p)
		}
	}
	return out
}

// attribute splits one name=value pair and percent-decodes the value.
func attribute(attr string) (string, string, error) {
	k, v, ok := strings.Cut(attr, "=")
	if !ok || k == "" {
		return "", "", fmt.Errorf("hsm: %q is not name=value", attr)
	}
	dv, err := url.PathUnescape(v)
	if err != nil {
		return "", "", fmt.Errorf("hsm: attribute %s: %w", k, err)
	}
	return strings.ToLower(k), dv, nil
}

// String is the URI as RFC 7512 writes it (with no PIN).
func (u *URI) String() string {
	var path []string
	add := func(k, v string) { path = append(path, k+"="+escape(v)) }
	if u.Token != "" {
		add("token", u.Token)
	}
	if u.Serial != "" {
		add("serial", u.Serial)
	}
	if u.SlotID != nil {
		add("slot-id", strconv.FormatUint(uint64(*u.SlotID), 10))
	}
	if u.Object != "" {
		add("object", u.Object)
	}
	if len(u.ID) > 0 {
		add("id", string(u.ID))
	}
	s := "pkcs11:" + strings.Join(path, ";") + "?module-path=" + escape(u.ModulePath)
	if u.PINSource != "" {
		s += "&pin-source=" + escape("file:"+u.PINSource)
	}
	return s
}

func escape(v string) string {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~/:", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}
