package hsm

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/miekg/pkcs11"
)

// PKCS#11 3.0 names for EdDSA, which github.com/miekg/pkcs11 predates.
const (
	ckkECEdwards           = 0x00000040 // CKK_EC_EDWARDS
	ckmECEdwardsKeyPairGen = 0x00001055 // CKM_EC_EDWARDS_KEY_PAIR_GEN
	ckmEdDSA               = 0x00001057 // CKM_EDDSA
)

// ed25519Params is CKA_EC_PARAMS for edwards25519: the DER of the
// id-Ed25519 object identifier (1.3.101.112, RFC 8410).
var ed25519Params = []byte{0x06, 0x03, 0x2b, 0x65, 0x70}

// MaxPINBytes bounds a PIN read from a file.
const MaxPINBytes = 1024

// Signer is an ed25519 key in a token, as a crypto.Signer: Sign makes a
// pure Ed25519 signature (crypto.Hash(0)) with CKM_EDDSA. It is safe for
// concurrent use; signatures are made one at a time, as one PKCS#11
// session allows.
type Signer struct {
	uri *URI
	pin string
	mod *module
	pub ed25519.PublicKey

	mu   sync.Mutex
	sess pkcs11.SessionHandle
	key  pkcs11.ObjectHandle
	open bool
}

var _ crypto.Signer = (*Signer)(nil)

// ReadPIN reads the PIN a pin-source names (the URI's), trimming the
// newline editors add.
func ReadPIN(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("hsm: pin-source: %w", err)
	}
	if !fi.Mode().IsRegular() || fi.Size() > MaxPINBytes {
		return "", fmt.Errorf("hsm: pin-source %s: not a regular file of at most %d bytes", path, MaxPINBytes)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("hsm: pin-source: %w", err)
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

// Open logs in to the token the URI names and finds its ed25519 key. It
// signs a test message and checks it against the token's public key, so
// a mismatched key pair is found at start rather than at the first seal.
func Open(u *URI, pin string) (*Signer, error) {
	mod, err := loadModule(u.ModulePath)
	if err != nil {
		return nil, err
	}
	s := &Signer{uri: u, pin: pin, mod: mod}
	if err := s.connect(); err != nil {
		mod.release()
		return nil, err
	}
	msg := []byte("gatehouse hsm self-test")
	sig, err := s.Sign(nil, msg, crypto.Hash(0))
	if err == nil && !ed25519.Verify(s.pub, msg, sig) {
		err = fmt.Errorf("hsm: %s: the token's signature does not verify with its public key", u)
	}
	if err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// connect opens a session, logs in and finds the key pair. s.mu is held
// (or s is not shared yet).
func (s *Signer) connect() error {
	ctx := s.mod.ctx
	slot, err := findSlot(ctx, s.uri)
	if err != nil {
		return err
	}
	sess, err := ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		return fmt.Errorf("hsm: %s: open session: %w", s.uri, err)
	}
	if err := ctx.Login(sess, pkcs11.CKU_USER, s.pin); err != nil && !isErr(err, pkcs11.CKR_USER_ALREADY_LOGGED_IN) {
		ctx.CloseSession(sess)
		return fmt.Errorf("hsm: %s: log in: %w", s.uri, err)
	}
	key, err := findOne(ctx, sess, s.uri, pkcs11.CKO_PRIVATE_KEY)
	if err != nil {
		ctx.CloseSession(sess)
		return err
	}
	if s.pub == nil {
		pubObj, err := findOne(ctx, sess, s.uri, pkcs11.CKO_PUBLIC_KEY)
		if err != nil {
			ctx.CloseSession(sess)
			return err
		}
		attrs, err := ctx.GetAttributeValue(sess, pubObj, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
		if err != nil {
			ctx.CloseSession(sess)
			return fmt.Errorf("hsm: %s: read the public key: %w", s.uri, err)
		}
		if s.pub, err = parseECPoint(attrs[0].Value); err != nil {
			ctx.CloseSession(sess)
			return fmt.Errorf("hsm: %s: %w", s.uri, err)
		}
	}
	s.sess, s.key, s.open = sess, key, true
	return nil
}

// Public returns the key's ed25519.PublicKey.
func (s *Signer) Public() crypto.PublicKey { return s.pub }

// Sign signs msg whole with Ed25519 (opts must be crypto.Hash(0); the
// random source is not used). A session the token dropped (a restarted
// HSM, a network HSM that reconnected) is opened again once.
func (s *Signer) Sign(_ io.Reader, msg []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts != nil && opts.HashFunc() != crypto.Hash(0) {
		return nil, errors.New("hsm: only pure Ed25519 (crypto.Hash(0)) is supported")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sig, err := s.signLocked(msg)
	if err != nil {
		// One reconnect: the session may have been closed under us.
		if s.open {
			s.mod.ctx.CloseSession(s.sess)
			s.open = false
		}
		if cerr := s.connect(); cerr != nil {
			return nil, fmt.Errorf("hsm: %s: sign: %w (reconnect: %v)", s.uri, err, cerr)
		}
		sig, err = s.signLocked(msg)
	}
	if err != nil {
		return nil, fmt.Errorf("hsm: %s: sign: %w", s.uri, err)
	}
	if len(sig) != ed25519.SignatureSize {
		return nil, fmt.Errorf("hsm: %s: the token made a %d-byte signature, not an Ed25519 one", s.uri, len(sig))
	}
	return sig, nil
}

func (s *Signer) signLocked(msg []byte) ([]byte, error) {
	if !s.open {
		return nil, errors.New("no session")
	}
	ctx := s.mod.ctx
	if err := ctx.SignInit(s.sess, []*pkcs11.Mechanism{pkcs11.NewMechanism(ckmEdDSA, nil)}, s.key); err != nil {
		return nil, err
	}
	return ctx.Sign(s.sess, msg)
}

// Close closes the session and releases the module. It does not call
// C_Logout: the login belongs to the whole process, and other signers of
// the same token may still use it; closing the process's last session of
// a token logs it out.
func (s *Signer) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mod == nil {
		return nil
	}
	if s.open {
		_ = s.mod.ctx.CloseSession(s.sess)
		s.open = false
	}
	s.mod.release()
	s.mod = nil
	return nil
}

// Generate makes a new ed25519 key pair in the token the URI names,
// labelled (and identified) as the URI says. The private key is
// sensitive and cannot be extracted: it signs, and does nothing else.
// An existing key with the same label or id is never replaced.
func Generate(u *URI, pin string) (ed25519.PublicKey, error) {
	mod, err := loadModule(u.ModulePath)
	if err != nil {
		return nil, err
	}
	defer mod.release()
	ctx := mod.ctx
	slot, err := findSlot(ctx, u)
	if err != nil {
		return nil, err
	}
	sess, err := ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return nil, fmt.Errorf("hsm: %s: open session: %w", u, err)
	}
	defer ctx.CloseSession(sess)
	if err := ctx.Login(sess, pkcs11.CKU_USER, pin); err != nil && !isErr(err, pkcs11.CKR_USER_ALREADY_LOGGED_IN) {
		return nil, fmt.Errorf("hsm: %s: log in: %w", u, err)
	}
	for _, class := range []uint{pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY} {
		found, err := find(ctx, sess, keyTemplate(u, class))
		if err != nil {
			return nil, fmt.Errorf("hsm: %s: %w", u, err)
		}
		if len(found) > 0 {
			return nil, fmt.Errorf("hsm: %s: the token already holds a key with this label or id; refusing to make another", u)
		}
	}
	common := func(class uint) []*pkcs11.Attribute {
		a := []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, ckkECEdwards),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		}
		if u.Object != "" {
			a = append(a, pkcs11.NewAttribute(pkcs11.CKA_LABEL, u.Object))
		}
		if len(u.ID) > 0 {
			a = append(a, pkcs11.NewAttribute(pkcs11.CKA_ID, u.ID))
		}
		return a
	}
	pubTmpl := append(common(pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, ed25519Params),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
	)
	privTmpl := append(common(pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
	)
	pubObj, _, err := ctx.GenerateKeyPair(sess, []*pkcs11.Mechanism{pkcs11.NewMechanism(ckmECEdwardsKeyPairGen, nil)}, pubTmpl, privTmpl)
	if err != nil {
		return nil, fmt.Errorf("hsm: %s: generate an ed25519 key pair (does the token support CKM_EC_EDWARDS_KEY_PAIR_GEN?): %w", u, err)
	}
	attrs, err := ctx.GetAttributeValue(sess, pubObj, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
	if err != nil {
		return nil, fmt.Errorf("hsm: %s: read the new public key: %w", u, err)
	}
	return parseECPoint(attrs[0].Value)
}

// parseECPoint reads CKA_EC_POINT of an edwards25519 key: the DER OCTET
// STRING PKCS#11 3.0 specifies, or the raw 32 bytes some tokens return.
func parseECPoint(b []byte) (ed25519.PublicKey, error) {
	if len(b) == ed25519.PublicKeySize {
		return ed25519.PublicKey(bytes.Clone(b)), nil
	}
	var raw []byte
	if rest, err := asn1.Unmarshal(b, &raw); err == nil && len(rest) == 0 && len(raw) == ed25519.PublicKeySize {
		return ed25519.PublicKey(raw), nil
	}
	return nil, fmt.Errorf("the public key's CKA_EC_POINT (%d bytes) is not an edwards25519 point: is the key ed25519?", len(b))
}

func keyTemplate(u *URI, class uint) []*pkcs11.Attribute {
	a := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, class)}
	if u.Object != "" {
		a = append(a, pkcs11.NewAttribute(pkcs11.CKA_LABEL, u.Object))
	}
	if len(u.ID) > 0 {
		a = append(a, pkcs11.NewAttribute(pkcs11.CKA_ID, u.ID))
	}
	return a
}

// findOne finds the one key of a class the URI names, and checks that it
// is an edwards25519 key.
func findOne(ctx *pkcs11.Ctx, sess pkcs11.SessionHandle, u *URI, class uint) (pkcs11.ObjectHandle, error) {
	what := "private key"
	if class == pkcs11.CKO_PUBLIC_KEY {
		what = "public key"
	}
	found, err := find(ctx, sess, keyTemplate(u, class))
	if err != nil {
		return 0, fmt.Errorf("hsm: %s: find the %s: %w", u, what, err)
	}
	switch len(found) {
	case 0:
		return 0, fmt.Errorf("hsm: %s: the token holds no such %s (is the PIN right, and the label?)", u, what)
	case 1:
	default:
		return 0, fmt.Errorf("hsm: %s: %d objects match; name the %s exactly (object= and id=)", u, len(found), what)
	}
	attrs, err := ctx.GetAttributeValue(sess, found[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil)})
	if err != nil {
		return 0, fmt.Errorf("hsm: %s: read the %s's type: %w", u, what, err)
	}
	if kt := bytesToUint(attrs[0].Value); kt != ckkECEdwards {
		return 0, fmt.Errorf("hsm: %s: the %s is of key type 0x%x, not an ed25519 key (CKK_EC_EDWARDS)", u, what, kt)
	}
	return found[0], nil
}

func find(ctx *pkcs11.Ctx, sess pkcs11.SessionHandle, tmpl []*pkcs11.Attribute) ([]pkcs11.ObjectHandle, error) {
	if err := ctx.FindObjectsInit(sess, tmpl); err != nil {
		return nil, err
	}
	var out []pkcs11.ObjectHandle
	for {
		objs, _, err := ctx.FindObjects(sess, 16)
		if err != nil {
			_ = ctx.FindObjectsFinal(sess)
			return nil, err
		}
		out = append(out, objs...)
		if len(objs) == 0 || len(out) > 64 {
			break
		}
	}
	return out, ctx.FindObjectsFinal(sess)
}

// bytesToUint reads a CK_ULONG attribute in the host's byte order.
func bytesToUint(b []byte) uint {
	var n uint
	for i := len(b) - 1; i >= 0; i-- {
		n = n<<8 | uint(b[i])
	}
	return n
}

func findSlot(ctx *pkcs11.Ctx, u *URI) (uint, error) {
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		return 0, fmt.Errorf("hsm: %s: list slots: %w", u, err)
	}
	var match []uint
	for _, slot := range slots {
		if u.SlotID != nil && slot != *u.SlotID {
			continue
		}
		ti, err := ctx.GetTokenInfo(slot)
		if err != nil {
			continue
		}
		if u.Token != "" && strings.TrimRight(ti.Label, " \x00") != u.Token {
			continue
		}
		if u.Serial != "" && strings.TrimRight(ti.SerialNumber, " \x00") != u.Serial {
			continue
		}
		match = append(match, slot)
	}
	switch len(match) {
	case 0:
		return 0, fmt.Errorf("hsm: %s: no token matches (%d slot(s) with a token)", u, len(slots))
	case 1:
		return match[0], nil
	}
	return 0, fmt.Errorf("hsm: %s: %d tokens match; name one exactly (serial=, slot-id=)", u, len(match))
}

func isErr(err error, code uint) bool {
	var e pkcs11.Error
	return errors.As(err, &e) && uint(e) == code
}

// module is a loaded PKCS#11 library. C_Initialize and C_Finalize are
// process-wide, so every signer of one library shares one, counted.
type module struct {
	path string
	ctx  *pkcs11.Ctx
	refs int
}

var (
	modulesMu sync.Mutex
	modules   = map[string]*module{}
)

func loadModule(path string) (*module, error) {
	modulesMu.Lock()
	defer modulesMu.Unlock()
	if m, ok := modules[path]; ok {
		m.refs++
		return m, nil
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("hsm: PKCS#11 module: %w", err)
	}
	ctx := pkcs11.New(path)
	if ctx == nil {
		return nil, fmt.Errorf("hsm: %s could not be loaded as a PKCS#11 module", path)
	}
	if err := ctx.Initialize(); err != nil && !isErr(err, pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		ctx.Destroy()
		return nil, fmt.Errorf("hsm: %s: initialize: %w", path, err)
	}
	m := &module{path: path, ctx: ctx, refs: 1}
	modules[path] = m
	return m, nil
}

func (m *module) release() {
	modulesMu.Lock()
	defer modulesMu.Unlock()
	m.refs--
	if m.refs > 0 {
		return
	}
	delete(modules, m.path)
	_ = m.ctx.Finalize()
	m.ctx.Destroy()
}
