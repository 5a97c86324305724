package bundle

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// PayloadType is the DSSE payload type of a Gatehouse bundle. It is part of
// what is signed, so a signature over some other kind of document can never
// be presented as a bundle.
const PayloadType = "application/vnd.gatehouse.bundle+json"

// MaxBundleSize bounds what Verify reads. A bundle of 10,000 rules is about
// 2 MB; anything past this is refused before parsing.
const MaxBundleSize = 64 << 20

// Envelope is a DSSE envelope (https://github.com/secure-systems-lab/dsse).
type Envelope struct {
	PayloadType string      `json:"payloadType"`
	Payload     string      `json:"payload"`
	Signatures  []Signature `json:"signatures"`
}

// Signature is one DSSE signature.
type Signature struct {
	KeyID string `json:"keyid"`
	Sig   string `json:"sig"`
}

// Verification errors. Each returned error wraps exactly one of these, so
// callers (and the gateway's metrics) can tell why a bundle was refused.
var (
	ErrMalformed     = errors.New("bundle is malformed")
	ErrUnknownKey    = errors.New("bundle is signed by a key that is not trusted")
	ErrBadSignature  = errors.New("bundle signature does not verify")
	ErrRollback      = errors.New("bundle revision is not newer than the active one")
	ErrSchemaVersion = errors.New("bundle schema version is not supported")
)

// pae is DSSE's pre-authentication encoding: what is actually signed.
func pae(payloadType string, payload []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "DSSEv1 %d %s %d ", len(payloadType), payloadType, len(payload))
	b.Write(payload)
	return b.Bytes()
}

var b64 = base64.StdEncoding.Strict()

// Sign wraps canonical payload bytes in a signed envelope and returns the
// bundle file's bytes.
func Sign(payload []byte, priv ed25519.PrivateKey) ([]byte, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("bundle: sign: an ed25519 private key is %d bytes, this one is %d", ed25519.PrivateKeySize, len(priv))
	}
	pub := priv.Public().(ed25519.PublicKey)
	env := Envelope{
		PayloadType: PayloadType,
		Payload:     b64.EncodeToString(payload),
		Signatures: []Signature{{
			KeyID: KeyID(pub),
			Sig:   b64.EncodeToString(ed25519.Sign(priv, pae(PayloadType, payload))),
		}},
	}
	return encodeEnvelope(&env)
}

func encodeEnvelope(env *Envelope) ([]byte, error) {
	b, err := marshalCanonical(env)
	if err != nil {
		return nil, fmt.Errorf("bundle: encode envelope: %w", err)
	}
	return append(b, '\n'), nil
}

// Verified is a bundle whose signature, encoding and schema have been checked.
type Verified struct {
	Payload *Payload
	// PayloadBytes are the exact signed bytes.
	PayloadBytes []byte
	// KeyID names the trusted key that signed it.
	KeyID string
	// Digest is "sha256:" and the hex SHA-256 of the payload bytes.
	Digest string
}

// VerifyOptions tunes Verify.
type VerifyOptions struct {
	// ActiveRevision, when non-zero, is the revision in force; the bundle
	// must be strictly newer, which refuses rollbacks and replays.
	ActiveRevision uint64
}

// Verify checks a bundle file against a set of trusted keys and returns its
// payload. It refuses anything that is not exactly as signed: unknown fields,
// non-canonical encoding, trailing bytes, extra signatures. Only after the
// signature holds is the payload itself parsed, so that no unauthenticated
// byte reaches the model decoder.
func Verify(data []byte, trusted Keyring, opts VerifyOptions) (*Verified, error) {
	if len(data) > MaxBundleSize {
		return nil, fmt.Errorf("%w: %d bytes is larger than the %d byte limit", ErrMalformed, len(data), MaxBundleSize)
	}
	if len(trusted) == 0 {
		return nil, fmt.Errorf("%w: no trusted keys were given", ErrUnknownKey)
	}
	var env Envelope
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil {
		return nil, fmt.Errorf("%w: envelope is not valid JSON: %v", ErrMalformed, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: data after the envelope", ErrMalformed)
	}
	if env.PayloadType != PayloadType {
		return nil, fmt.Errorf("%w: payloadType is %q, expected %q", ErrMalformed, env.PayloadType, PayloadType)
	}
	if len(env.Signatures) != 1 {
		return nil, fmt.Errorf("%w: expected exactly one signature, found %d", ErrMalformed, len(env.Signatures))
	}
	payload, err := b64.DecodeString(env.Payload)
	if err != nil {
		return nil, fmt.Errorf("%w: payload is not valid base64: %v", ErrMalformed, err)
	}
	sig := env.Signatures[0]
	pub, ok := trusted[sig.KeyID]
	if !ok {
		return nil, fmt.Errorf("%w: key id %s is not among the %d trusted key(s)", ErrUnknownKey, quoteKeyID(sig.KeyID), len(trusted))
	}
	rawSig, err := b64.DecodeString(sig.Sig)
	if err != nil || len(rawSig) != ed25519.SignatureSize {
		return nil, fmt.Errorf("%w: signature by key %s is not a valid ed25519 signature encoding", ErrBadSignature, sig.KeyID)
	}
	if !ed25519.Verify(pub, pae(env.PayloadType, payload), rawSig) {
		return nil, fmt.Errorf("%w: the payload or signature was changed after signing (key %s)", ErrBadSignature, sig.KeyID)
	}
	// The signature covers the payload, not the envelope's bytes. Requiring
	// the envelope to be exactly what Sign writes closes the remaining gap:
	// nothing in the file may differ from what the signer produced.
	canon, err := encodeEnvelope(&env)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(canon, data) {
		return nil, fmt.Errorf("%w: envelope is not in canonical form (differs at byte %d); the file was edited after signing", ErrMalformed, firstDiff(canon, data))
	}
	p, err := DecodePayload(payload)
	if err != nil {
		var se *SchemaError
		if errors.As(err, &se) {
			return nil, fmt.Errorf("%w: %w", ErrSchemaVersion, err)
		}
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if opts.ActiveRevision != 0 && p.Revision <= opts.ActiveRevision {
		return nil, fmt.Errorf("%w: bundle revision %d, active revision %d; a gateway only moves forward", ErrRollback, p.Revision, opts.ActiveRevision)
	}
	return &Verified{Payload: p, PayloadBytes: payload, KeyID: sig.KeyID, Digest: Digest(payload)}, nil
}

// quoteKeyID renders an untrusted key id for an error message: quoted, so
// that control characters cannot forge log lines, and cut short.
func quoteKeyID(id string) string {
	if id != "" && len(id) <= 64 && strings.Trim(id, "0123456789abcdef") == "" {
		return id // a well-formed key id reads best as is
	}
	if len(id) > 64 {
		return strconv.Quote(id[:64]) + "..."
	}
	return strconv.Quote(id)
}

// Digest names payload bytes: "sha256:" and the hex digest.
func Digest(payload []byte) string {
	sum := sha256.Sum256(payload)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// ReadUnverified decodes a bundle file's payload without checking its
// signature, for inspection and diffs of bundles whose keys are not at hand.
// Never use it to decide anything.
func ReadUnverified(data []byte) (*Payload, *Envelope, error) {
	if len(data) > MaxBundleSize {
		return nil, nil, fmt.Errorf("%w: %d bytes is larger than the %d byte limit", ErrMalformed, len(data), MaxBundleSize)
	}
	var env Envelope
	if err := json.Unmarshal(data, &env); err != nil {
		return nil, nil, fmt.Errorf("%w: envelope is not valid JSON: %v", ErrMalformed, err)
	}
	if env.PayloadType != PayloadType {
		return nil, nil, fmt.Errorf("%w: payloadType is %q, expected %q", ErrMalformed, env.PayloadType, PayloadType)
	}
	payload, err := b64.DecodeString(env.Payload)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: payload is not valid base64: %v", ErrMalformed, err)
	}
	p, err := DecodePayload(payload)
	if err != nil {
		return nil, nil, err
	}
	return p, &env, nil
}

// PayloadBytes decodes the envelope's payload.
func (e *Envelope) PayloadBytes() ([]byte, error) {
	b, err := b64.DecodeString(e.Payload)
	if err != nil {
		return nil, fmt.Errorf("%w: payload is not valid base64: %v", ErrMalformed, err)
	}
	return b, nil
}

// IsBundle reports whether data looks like a bundle envelope (as opposed to a
// policy directory or something else), without verifying it.
func IsBundle(data []byte) bool {
	var env struct {
		PayloadType string `json:"payloadType"`
	}
	return json.Unmarshal(data, &env) == nil && env.PayloadType == PayloadType
}

// BuildOptions are the metadata of a new payload.
type BuildOptions struct {
	// Revision; 0 means the CreatedAt Unix time, so that later builds
	// naturally have higher revisions.
	Revision uint64
	// CreatedAt; zero means SourceDateEpoch().
	CreatedAt time.Time
	// Compiler is the version string of the compiler.
	Compiler string
}

// NewPayload wraps a normalised model in payload metadata.
func NewPayload(m Model, opts BuildOptions) (*Payload, error) {
	at := opts.CreatedAt
	if at.IsZero() {
		var err error
		if at, err = SourceDateEpoch(); err != nil {
			return nil, err
		}
	}
	at = at.UTC().Truncate(time.Second)
	rev := opts.Revision
	if rev == 0 {
		if at.Unix() <= 0 {
			return nil, errors.New("bundle: cannot derive a revision from a creation time at or before 1970; pass a revision")
		}
		rev = uint64(at.Unix())
	}
	return &Payload{
		SchemaVersion: SchemaVersion,
		Revision:      rev,
		CreatedAt:     at.Format(time.RFC3339),
		Compiler:      opts.Compiler,
		Model:         m,
	}, nil
}

// SourceDateEpoch returns the build time: $SOURCE_DATE_EPOCH when set
// (reproducible builds, https://reproducible-builds.org/specs/source-date-epoch/),
// otherwise now.
func SourceDateEpoch() (time.Time, error) {
	s, ok := os.LookupEnv("SOURCE_DATE_EPOCH")
	if !ok || s == "" {
		return time.Now().UTC(), nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || strings.TrimLeft(s, "0123456789") != "" {
		return time.Time{}, fmt.Errorf("bundle: SOURCE_DATE_EPOCH=%q is not a non-negative integer number of seconds", s)
	}
	return time.Unix(n, 0).UTC(), nil
}
