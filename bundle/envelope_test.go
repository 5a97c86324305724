package bundle

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// sentinels are the verification errors; every Verify failure must wrap
// exactly one of them.
var sentinels = []error{ErrMalformed, ErrUnknownKey, ErrBadSignature, ErrRollback, ErrSchemaVersion}

// wrappedSentinels returns the sentinels err wraps.
func wrappedSentinels(err error) []error {
	var out []error
	for _, s := range sentinels {
		if errors.Is(err, s) {
			out = append(out, s)
		}
	}
	return out
}

// checkVerifyError asserts that err wraps exactly one sentinel, that the
// sentinel is want (when want is non-nil) and that the message is non-empty
// and contains msg.
func checkVerifyError(t testing.TB, err, want error, msg string) {
	t.Helper()
	if err == nil {
		t.Fatalf("Verify succeeded, want error wrapping %v", want)
	}
	if err.Error() == "" {
		t.Fatalf("Verify returned an error with an empty message")
	}
	got := wrappedSentinels(err)
	if len(got) != 1 {
		t.Fatalf("error %q wraps %d sentinels %v, want exactly one", err, len(got), got)
	}
	if want != nil && !errors.Is(err, want) {
		t.Fatalf("error %q does not wrap %v (it wraps %v)", err, want, got[0])
	}
	if !strings.Contains(err.Error(), msg) {
		t.Fatalf("error %q does not contain %q", err, msg)
	}
}

// testKey is a deterministic signing key, so that fuzz workers and test runs
// all see the same bundle bytes.
func testKey(seed byte) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
}

func pubOf(priv ed25519.PrivateKey) ed25519.PublicKey { return priv.Public().(ed25519.PublicKey) }

const testHostKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f"

// realisticModel has a few of every kind of object, in a deliberately
// non-canonical order and spelling, and validates without problems.
func realisticModel() Model {
	return Model{
		IdentityProviders: []IdentityProvider{
			{
				Name:        "corp-okta",
				Description: "Workforce SSO <prod> & friends",
				Issuer:      "https://corp.okta.com/oauth2/default",
				Audiences:   []string{"gatehouse", "api://gatehouse", "gatehouse"},
				GroupsClaim: "groups",
				Algorithms:  []string{"RS256", "ES256"},
			},
			{
				Name:      "ci-github",
				Issuer:    "https://token.actions.githubusercontent.com",
				Audiences: []string{"https://github.com/acme"},
				JWKSURL:   "https://token.actions.githubusercontent.com/.well-known/jwks",
			},
			{
				Name:        "dev-local",
				Issuer:      "http://127.0.0.1:4444/",
				Audiences:   []string{"dev"},
				GroupsClaim: "roles",
				JWKS:        `{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}`,
				Algorithms:  []string{"EdDSA"},
			},
		},
		Identities: []Identity{
			{Name: "etl", Provider: "corp-okta", Match: `identity.sub.startsWith("etl-")`, Groups: []string{"readers", "etl"}},
			{Name: "deploy-bot", Description: "main branch deploys", Provider: "ci-github", Subject: "repo:acme/app:ref:refs/heads/main", Groups: []string{"deployers"}},
		},
		Postgres: []Postgres{
			{
				Name: "orders-db", Description: "orders & payments", Labels: map[string]string{"team": "payments", "env": "prod"},
				Address: "orders.internal:5432", Database: "orders", Username: "gatehouse", Password: "env:ORDERS_DB_PASSWORD",
				TLS: &TLS{Mode: "verify-full", CAFile: "/etc/ssl/orders-ca.pem", ServerName: "orders.internal"}, DenyUnresolvedColumns: true,
			},
			{
				Name: "analytics", Labels: map[string]string{"env": "prod"},
				Address: "10.0.0.5:5432", Database: "analytics", Username: "reader", Password: "file:/run/secrets/analytics",
				TLS: &TLS{},
			},
		},
		SSHHosts: []SSHHost{
			{Name: "bastion", Address: "bastion.internal:22", User: "ops", HostKey: testHostKey + "  root@bastion", PrivateKey: "k8s:gatehouse/bastion-key#id_ed25519", Labels: map[string]string{}},
		},
		KubernetesClusters: []KubernetesCluster{
			{Name: "prod-cluster", Server: "https://k8s.internal:6443", Token: "env:K8S_TOKEN", CAFile: "/etc/k8s/ca.crt", Impersonate: true, Labels: map[string]string{"env": "prod"}},
		},
		Policies: []Policy{
			{
				Name: "orders-access", Description: "who may touch orders",
				Resources: []string{"orders-db", "analytics"}, Identities: []string{"etl"}, Groups: []string{"sre", "engineering", "sre"},
				Rules: []Rule{
					{Name: "no-ddl", Effect: EffectDeny, When: `request.statement.ddl`, On: []string{"query"}, Reason: "DDL goes through migrations"},
					{Name: "prod-writes", Effect: EffectReview, When: `request.statement.writes`, On: []string{"query", "function_call"}, Reason: "writes need a second pair of eyes",
						Approval: &Approval{Groups: []string{"dba", "sre"}, Count: 2, Timeout: "30m"}},
					{Name: "read", Effect: EffectAllow, When: " true ", Reason: "engineers may read"},
				},
			},
			{
				Name: "ssh-ops", Resources: []string{"bastion"}, Groups: []string{"sre"},
				Rules: []Rule{
					{Name: "shell", Effect: EffectAllow, On: []string{"shell", "exec", "connect"}, Reason: "on-call access"},
					{Name: "forward", Effect: EffectReview, On: []string{"forward"}, Reason: "port forwards are reviewed",
						Approval: &Approval{Groups: []string{"security"}, Count: 1, Timeout: "15m"}},
				},
			},
			{
				Name: "k8s-deploy", Resources: []string{"prod-cluster"}, Identities: []string{"deploy-bot"},
				Rules: []Rule{
					{Name: "deploy", Effect: EffectAllow, On: []string{"api"}, When: `request.verb in ["get", "list", "patch"]`, Reason: "CI deploys"},
				},
			},
		},
		Masks: []Mask{
			{Name: "emails", Resources: []string{"orders-db", "analytics"}, Columns: []string{"customers.email"}, Detectors: []string{"email"},
				Method: MaskHash, HashKey: "env:MASK_HASH_KEY", Unless: `"pii-reader" in caller.groups`},
			{Name: "card-numbers", Description: "PCI <scope>", Resources: []string{"orders-db"}, Columns: []string{"orders.card_number", "billing.invoices.card_number"},
				Detectors: []string{"card_number", "iban"}, Method: MaskPartial},
			{Name: "secret-values", Resources: []string{"prod-cluster"}, Fields: []string{"secrets/stringData", "secrets/data", "widgets.example.com/spec.password"},
				Method: MaskRedact, Unless: `'secret-admins' in identity.groups`},
		},
		Tests: []Test{
			{Name: "etl-reads-orders", Identity: "etl", Claims: `{ "sub": "etl-nightly", "email": "etl@acme.com" }`, Resource: "orders-db",
				SQL: "SELECT card_number FROM orders WHERE id < 10", Now: "2026-01-02T15:04:05Z", Expect: EffectAllow,
				ExpectRules: []string{"orders-access/read"}, ExpectMasks: map[string]string{"orders.card_number": MaskPartial, "detector:email": MaskHash}},
			{Name: "adhoc-forward", Provider: "corp-okta", Subject: "alice", Groups: []string{"sre"}, Resource: "bastion",
				Request: `{"port": 5432, "kind": "forward", "host": "db"}`, Expect: EffectReview, ExpectRules: []string{"ssh-ops/forward"}},
			{Name: "deploy", Identity: "deploy-bot", Resource: "prod-cluster", Request: `{"kind":"api","verb":"patch"}`, Expect: EffectAllow},
		},
	}
}

const (
	testRevision  = 1_700_000_000
	testCreatedAt = "2023-11-14T22:13:20Z"
)

// testPayload is the normalised realistic model at testRevision.
func testPayload(t testing.TB) *Payload {
	t.Helper()
	m := realisticModel()
	if ps := m.Validate(); len(ps) != 0 {
		t.Fatalf("realistic model does not validate: %v", ps)
	}
	m.Normalize()
	at, _ := time.Parse(time.RFC3339, testCreatedAt)
	p, err := NewPayload(m, BuildOptions{Revision: testRevision, CreatedAt: at, Compiler: "gatehouse test"})
	if err != nil {
		t.Fatalf("NewPayload: %v", err)
	}
	return p
}

func encode(t testing.TB, p *Payload) []byte {
	t.Helper()
	b, err := EncodePayload(p)
	if err != nil {
		t.Fatalf("EncodePayload: %v", err)
	}
	return b
}

func sign(t testing.TB, payload []byte, priv ed25519.PrivateKey) []byte {
	t.Helper()
	b, err := Sign(payload, priv)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	return b
}

// signedBundle is the realistic bundle signed by testKey(1).
func signedBundle(t testing.TB) []byte {
	t.Helper()
	return sign(t, encode(t, testPayload(t)), testKey(1))
}

// signEnvelope builds and signs an arbitrary envelope, bypassing Sign's
// choices, to make bundles that are validly signed but wrong otherwise.
func signEnvelope(t testing.TB, payloadType string, payload []byte, privs ...ed25519.PrivateKey) []byte {
	t.Helper()
	env := Envelope{PayloadType: payloadType, Payload: b64.EncodeToString(payload), Signatures: []Signature{}}
	for _, priv := range privs {
		env.Signatures = append(env.Signatures, Signature{
			KeyID: KeyID(pubOf(priv)),
			Sig:   b64.EncodeToString(ed25519.Sign(priv, pae(payloadType, payload))),
		})
	}
	b, err := encodeEnvelope(&env)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// editEnvelope decodes a bundle file, lets f change it and re-encodes it
// canonically (without re-signing).
func editEnvelope(t testing.TB, data []byte, f func(*Envelope)) []byte {
	t.Helper()
	var env Envelope
	if err := json.Unmarshal(data, &env); err != nil {
		t.Fatal(err)
	}
	f(&env)
	b, err := encodeEnvelope(&env)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSignVerifyRoundTrip(t *testing.T) {
	priv := testKey(1)
	p := testPayload(t)
	payload := encode(t, p)
	data := sign(t, payload, priv)

	if !IsBundle(data) {
		t.Errorf("IsBundle(signed bundle) = false")
	}
	v, err := Verify(data, NewKeyring(pubOf(priv)), VerifyOptions{})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if !reflect.DeepEqual(v.Payload, p) {
		t.Errorf("verified payload differs from the signed one\n got: %+v\nwant: %+v", v.Payload, p)
	}
	if !bytes.Equal(v.PayloadBytes, payload) {
		t.Errorf("PayloadBytes differ from the signed bytes")
	}
	if v.KeyID != KeyID(pubOf(priv)) {
		t.Errorf("KeyID = %s, want %s", v.KeyID, KeyID(pubOf(priv)))
	}
	if want := Digest(payload); v.Digest != want || !strings.HasPrefix(v.Digest, "sha256:") || len(v.Digest) != len("sha256:")+64 {
		t.Errorf("Digest = %q, want %q", v.Digest, want)
	}

	// The envelope is what Sign documents: one DSSE signature by the key.
	var env Envelope
	if err := json.Unmarshal(data, &env); err != nil {
		t.Fatal(err)
	}
	if env.PayloadType != PayloadType || len(env.Signatures) != 1 || env.Signatures[0].KeyID != KeyID(pubOf(priv)) {
		t.Errorf("unexpected envelope %+v", env)
	}
	if !bytes.HasSuffix(data, []byte("}\n")) {
		t.Errorf("bundle file does not end in a single newline")
	}

	// Signing is deterministic (ed25519), so the file is reproducible.
	if again := sign(t, payload, priv); !bytes.Equal(again, data) {
		t.Errorf("signing the same payload twice gave different files")
	}

	// ReadUnverified sees the same payload without a key.
	up, uenv, err := ReadUnverified(data)
	if err != nil {
		t.Fatalf("ReadUnverified: %v", err)
	}
	if !reflect.DeepEqual(up, p) || uenv.PayloadType != PayloadType {
		t.Errorf("ReadUnverified returned a different payload")
	}
}

func TestVerify(t *testing.T) {
	priv, other := testKey(1), testKey(2)
	trusted := NewKeyring(pubOf(priv))
	p := testPayload(t)
	payload := encode(t, p)
	good := sign(t, payload, priv)

	// payloadJSON re-signs p after a change to its JSON object form, to build
	// payloads that are validly signed but not what this build writes.
	payloadJSON := func(f func(map[string]any)) []byte {
		var obj map[string]any
		if err := json.Unmarshal(payload, &obj); err != nil {
			t.Fatal(err)
		}
		f(obj)
		b, err := marshalCanonical(obj)
		if err != nil {
			t.Fatal(err)
		}
		return sign(t, b, priv)
	}
	withRevision := func(rev uint64) []byte {
		q := *p
		q.Revision = rev
		return sign(t, encode(t, &q), priv)
	}
	schema2 := func() []byte {
		q := *p
		q.SchemaVersion = 2
		return sign(t, encode(t, &q), priv)
	}

	tests := map[string]struct {
		data    []byte
		keyring Keyring
		opts    VerifyOptions
		wantErr error  // nil: Verify must succeed
		wantMsg string // substring of the error message
	}{
		"valid bundle": {
			data: good, keyring: trusted,
		},
		"valid bundle, one of several trusted keys": {
			data: good, keyring: NewKeyring(pubOf(other), pubOf(priv)),
		},
		"signed by a key that is not trusted": {
			data: sign(t, payload, other), keyring: trusted,
			wantErr: ErrUnknownKey, wantMsg: "key id " + KeyID(pubOf(other)) + " is not among the 1 trusted key(s)",
		},
		"empty keyring": {
			data: good, keyring: Keyring{},
			wantErr: ErrUnknownKey, wantMsg: "no trusted keys were given",
		},
		"nil keyring": {
			data: good, keyring: nil,
			wantErr: ErrUnknownKey, wantMsg: "no trusted keys were given",
		},
		"key id bound to another key in the keyring": {
			data: good, keyring: Keyring{KeyID(pubOf(priv)): pubOf(other)},
			wantErr: ErrBadSignature, wantMsg: "was changed after signing",
		},
		"revision equal to active revision": {
			data: good, keyring: trusted, opts: VerifyOptions{ActiveRevision: testRevision},
			wantErr: ErrRollback, wantMsg: "bundle revision 1700000000, active revision 1700000000",
		},
		"revision below active revision": {
			data: withRevision(testRevision - 1), keyring: trusted, opts: VerifyOptions{ActiveRevision: testRevision},
			wantErr: ErrRollback, wantMsg: "bundle revision 1699999999, active revision 1700000000",
		},
		"revision zero with an active revision": {
			data: withRevision(0), keyring: trusted, opts: VerifyOptions{ActiveRevision: 1},
			wantErr: ErrRollback, wantMsg: "bundle revision 0, active revision 1",
		},
		"revision above active revision": {
			data: withRevision(testRevision + 1), keyring: trusted, opts: VerifyOptions{ActiveRevision: testRevision},
		},
		"schema_version 2": {
			data: schema2(), keyring: trusted,
			wantErr: ErrSchemaVersion, wantMsg: "unsupported schema_version 2 (this gatehouse understands 1)",
		},
		"schema_version 2, hand-written JSON": {
			data:    sign(t, []byte(`{"schema_version":2,"revision":5,"created_at":"2030-01-01T00:00:00Z","compiler":"future","model":{"new_things":[]}}`), priv),
			keyring: trusted,
			wantErr: ErrSchemaVersion, wantMsg: "unsupported schema_version 2",
		},
		"schema_version 0": {
			data: payloadJSON(func(o map[string]any) { o["schema_version"] = 0 }), keyring: trusted,
			wantErr: ErrSchemaVersion, wantMsg: "unsupported schema_version 0",
		},
		"schema_version missing": {
			data: payloadJSON(func(o map[string]any) { delete(o, "schema_version") }), keyring: trusted,
			wantErr: ErrMalformed, wantMsg: "payload has no schema_version",
		},
		"schema_version is a string": {
			data: payloadJSON(func(o map[string]any) { o["schema_version"] = "1" }), keyring: trusted,
			wantErr: ErrMalformed, wantMsg: "payload is not valid JSON",
		},
		"unknown top-level field in payload": {
			data: payloadJSON(func(o map[string]any) { o["expires_at"] = "2030-01-01T00:00:00Z" }), keyring: trusted,
			wantErr: ErrMalformed, wantMsg: `unknown field "expires_at"`,
		},
		"unknown field inside the model": {
			data: payloadJSON(func(o map[string]any) {
				o["model"].(map[string]any)["policies"].([]any)[0].(map[string]any)["priority"] = 1
			}), keyring: trusted,
			wantErr: ErrMalformed, wantMsg: `unknown field "priority"`,
		},
		"payload with extra whitespace, validly signed": {
			data: func() []byte {
				var buf bytes.Buffer
				if err := json.Indent(&buf, payload, "", "  "); err != nil {
					t.Fatal(err)
				}
				return sign(t, buf.Bytes(), priv)
			}(),
			keyring: trusted,
			wantErr: ErrMalformed, wantMsg: "payload is not in canonical form (differs at byte 1)",
		},
		"payload with a trailing newline, validly signed": {
			data: sign(t, append(bytes.Clone(payload), '\n'), priv), keyring: trusted,
			wantErr: ErrMalformed, wantMsg: "payload is not in canonical form",
		},
		"payload with keys out of order, validly signed": {
			data:    sign(t, bytes.Replace(payload, []byte(`{"schema_version":1,"revision":1700000000,`), []byte(`{"revision":1700000000,"schema_version":1,`), 1), priv),
			keyring: trusted,
			wantErr: ErrMalformed, wantMsg: "payload is not in canonical form (differs at byte 2)",
		},
		"payload with an HTML-escaped string, validly signed": {
			data: func() []byte {
				i := bytes.Index(payload, []byte("<prod>"))
				if i < 0 {
					t.Fatal("realistic payload has no <prod>")
				}
				b := append(bytes.Clone(payload[:i]), `\u003cprod>`...)
				return sign(t, append(b, payload[i+len("<prod>"):]...), priv)
			}(),
			keyring: trusted,
			wantErr: ErrMalformed, wantMsg: "payload is not in canonical form",
		},
		"payload with trailing JSON, validly signed": {
			data: sign(t, append(bytes.Clone(payload), "{}"...), priv), keyring: trusted,
			wantErr: ErrMalformed, wantMsg: "payload is not valid JSON",
		},
		"payload is not JSON, validly signed": {
			data: sign(t, []byte("schema_version: 1\n"), priv), keyring: trusted,
			wantErr: ErrMalformed, wantMsg: "payload is not valid JSON",
		},
		"two signatures": {
			data: signEnvelope(t, PayloadType, payload, priv, other), keyring: trusted,
			wantErr: ErrMalformed, wantMsg: "expected exactly one signature, found 2",
		},
		"the same signature twice": {
			data: signEnvelope(t, PayloadType, payload, priv, priv), keyring: trusted,
			wantErr: ErrMalformed, wantMsg: "expected exactly one signature, found 2",
		},
		"no signatures": {
			data: signEnvelope(t, PayloadType, payload), keyring: trusted,
			wantErr: ErrMalformed, wantMsg: "expected exactly one signature, found 0",
		},
		"null signatures": {
			data: editEnvelope(t, good, func(e *Envelope) { e.Signatures = nil }), keyring: trusted,
			wantErr: ErrMalformed, wantMsg: "expected exactly one signature, found 0",
		},
		"wrong payloadType, validly signed over it": {
			data: signEnvelope(t, "application/vnd.in-toto+json", payload, priv), keyring: trusted,
			wantErr: ErrMalformed, wantMsg: `payloadType is "application/vnd.in-toto+json", expected "application/vnd.gatehouse.bundle+json"`,
		},
		"payloadType changed after signing": {
			data: editEnvelope(t, good, func(e *Envelope) { e.PayloadType = "text/plain" }), keyring: trusted,
			wantErr: ErrMalformed, wantMsg: `payloadType is "text/plain"`,
		},
		"payload swapped for another signed payload": {
			data: editEnvelope(t, good, func(e *Envelope) {
				q := *p
				q.Revision++
				e.Payload = b64.EncodeToString(encode(t, &q))
			}),
			keyring: trusted,
			wantErr: ErrBadSignature, wantMsg: "the payload or signature was changed after signing (key " + KeyID(pubOf(priv)) + ")",
		},
		"signature from another payload": {
			data: editEnvelope(t, good, func(e *Envelope) {
				var o Envelope
				if err := json.Unmarshal(withRevision(1), &o); err != nil {
					t.Fatal(err)
				}
				e.Signatures[0].Sig = o.Signatures[0].Sig
			}),
			keyring: trusted,
			wantErr: ErrBadSignature, wantMsg: "was changed after signing",
		},
		"signature is not base64": {
			data: editEnvelope(t, good, func(e *Envelope) { e.Signatures[0].Sig = "not base64!" }), keyring: trusted,
			wantErr: ErrBadSignature, wantMsg: "is not a valid ed25519 signature encoding",
		},
		"signature is truncated": {
			data: editEnvelope(t, good, func(e *Envelope) { e.Signatures[0].Sig = e.Signatures[0].Sig[:84] }), keyring: trusted,
			wantErr: ErrBadSignature, wantMsg: "is not a valid ed25519 signature encoding",
		},
		"signature is empty": {
			data: editEnvelope(t, good, func(e *Envelope) { e.Signatures[0].Sig = "" }), keyring: trusted,
			wantErr: ErrBadSignature, wantMsg: "is not a valid ed25519 signature encoding",
		},
		"key id is empty": {
			data: editEnvelope(t, good, func(e *Envelope) { e.Signatures[0].KeyID = "" }), keyring: trusted,
			wantErr: ErrUnknownKey, wantMsg: `key id "" is not among`,
		},
		"payload is not base64": {
			data: editEnvelope(t, good, func(e *Envelope) { e.Payload = "{" + e.Payload }), keyring: trusted,
			wantErr: ErrMalformed, wantMsg: "payload is not valid base64",
		},
		"trailing data after the envelope": {
			data: append(bytes.Clone(good), "{}\n"...), keyring: trusted,
			wantErr: ErrMalformed, wantMsg: "data after the envelope",
		},
		"trailing garbage after the envelope": {
			data: append(bytes.Clone(good), "x"...), keyring: trusted,
			wantErr: ErrMalformed, wantMsg: "data after the envelope",
		},
		"extra trailing newline": {
			data: append(bytes.Clone(good), '\n'), keyring: trusted,
			wantErr: ErrMalformed, wantMsg: "envelope is not in canonical form (differs at byte",
		},
		"final newline removed": {
			data: bytes.TrimSuffix(good, []byte("\n")), keyring: trusted,
			wantErr: ErrMalformed, wantMsg: "envelope is not in canonical form",
		},
		"leading whitespace": {
			data: append([]byte(" "), good...), keyring: trusted,
			wantErr: ErrMalformed, wantMsg: "envelope is not in canonical form (differs at byte 0)",
		},
		"envelope re-indented": {
			data: func() []byte {
				var buf bytes.Buffer
				if err := json.Indent(&buf, good, "", "\t"); err != nil {
					t.Fatal(err)
				}
				return buf.Bytes()
			}(),
			keyring: trusted,
			wantErr: ErrMalformed, wantMsg: "envelope is not in canonical form",
		},
		"envelope field name in another case": {
			data: bytes.Replace(good, []byte(`"payloadType"`), []byte(`"PayloadType"`), 1), keyring: trusted,
			wantErr: ErrMalformed, wantMsg: "envelope is not in canonical form",
		},
		"envelope field duplicated": {
			data: bytes.Replace(good, []byte(`{"payloadType":`), []byte(`{"payloadType":"x","payloadType":`), 1), keyring: trusted,
			wantErr: ErrMalformed, wantMsg: "envelope is not in canonical form",
		},
		"unknown envelope field": {
			data: bytes.Replace(good, []byte(`{"payloadType":`), []byte(`{"comment":"hi","payloadType":`), 1), keyring: trusted,
			wantErr: ErrMalformed, wantMsg: `envelope is not valid JSON: json: unknown field "comment"`,
		},
		"unknown signature field": {
			data: bytes.Replace(good, []byte(`{"keyid":`), []byte(`{"alg":"ed25519","keyid":`), 1), keyring: trusted,
			wantErr: ErrMalformed, wantMsg: `unknown field "alg"`,
		},
		"empty input": {
			data: nil, keyring: trusted,
			wantErr: ErrMalformed, wantMsg: "envelope is not valid JSON",
		},
		"JSON null": {
			data: []byte("null\n"), keyring: trusted,
			wantErr: ErrMalformed, wantMsg: `payloadType is ""`,
		},
		"JSON array": {
			data: []byte("[]\n"), keyring: trusted,
			wantErr: ErrMalformed, wantMsg: "envelope is not valid JSON",
		},
		"truncated file": {
			data: good[:len(good)/2], keyring: trusted,
			wantErr: ErrMalformed, wantMsg: "envelope is not valid JSON: unexpected EOF",
		},
		"oversize input": {
			data: func() []byte {
				b := make([]byte, MaxBundleSize+1)
				copy(b, good)
				return b
			}(),
			keyring: trusted,
			wantErr: ErrMalformed, wantMsg: "67108865 bytes is larger than the 67108864 byte limit",
		},
		"oversize input with an empty keyring": {
			data: make([]byte, MaxBundleSize+1), keyring: nil,
			wantErr: ErrMalformed, wantMsg: "is larger than the 67108864 byte limit",
		},
	}
	// DSSE uses standard base64; the URL-safe alphabet must be refused
	// even though it carries the same bytes.
	urlSafe := editEnvelope(t, good, func(e *Envelope) {
		e.Payload = strings.NewReplacer("+", "-", "/", "_").Replace(e.Payload)
		if !strings.ContainsAny(e.Payload, "-_") {
			// This payload's encoding happens to use neither + nor /:
			// put URL-safe characters in its first quantum.
			e.Payload = "-_-_" + e.Payload[4:]
		}
	})
	tc := tests["payload is not base64"]
	tc.data = urlSafe
	tests["payload is URL-safe base64"] = tc

	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			v, err := Verify(tc.data, tc.keyring, tc.opts)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Verify: unexpected error %v", err)
				}
				if v == nil || v.Payload == nil {
					t.Fatalf("Verify returned no payload")
				}
				return
			}
			if v != nil {
				t.Errorf("Verify returned a payload along with error %v", err)
			}
			checkVerifyError(t, err, tc.wantErr, tc.wantMsg)
		})
	}
}

// TestVerifyEveryByteFlip is the property the envelope exists for: no single
// changed byte anywhere in a signed file is accepted, and every refusal says
// why and wraps exactly one sentinel.
func TestVerifyEveryByteFlip(t *testing.T) {
	t.Parallel()
	data := signedBundle(t)
	trusted := NewKeyring(pubOf(testKey(1)))
	if _, err := Verify(data, trusted, VerifyOptions{}); err != nil {
		t.Fatalf("unmodified bundle does not verify: %v", err)
	}
	masks := []byte{0x01, 0x80, 0xff, 0x20}
	if !testing.Short() {
		masks = append(masks, 0x02, 0x04, 0x08, 0x10, 0x40)
	}
	counts := map[error]int{}
	buf := bytes.Clone(data)
	for i := range data {
		for _, mask := range masks {
			buf[i] = data[i] ^ mask
			v, err := Verify(buf, trusted, VerifyOptions{})
			buf[i] = data[i]
			if err == nil {
				t.Fatalf("byte %d (%q) XOR %#02x = %q: Verify accepted the modified file (revision %d)", i, data[i], mask, data[i]^mask, v.Payload.Revision)
			}
			if v != nil {
				t.Fatalf("byte %d XOR %#02x: Verify returned a payload with error %v", i, mask, err)
			}
			if err.Error() == "" {
				t.Fatalf("byte %d XOR %#02x: empty error message", i, mask)
			}
			ws := wrappedSentinels(err)
			if len(ws) != 1 {
				t.Fatalf("byte %d XOR %#02x: error %q wraps %d sentinels, want exactly one", i, mask, err, len(ws))
			}
			counts[ws[0]]++
		}
	}
	t.Logf("%d bytes x %d masks: %v", len(data), len(masks), counts)
	// A flip inside the signed payload's base64 must be caught by the
	// signature, not by luck elsewhere.
	if counts[ErrBadSignature] == 0 || counts[ErrMalformed] == 0 || counts[ErrUnknownKey] == 0 {
		t.Errorf("expected flips to be refused as bad signature, malformed and unknown key; got %v", counts)
	}
}

// TestVerifyEveryTruncation: no prefix of a signed file verifies, and no
// file with any one byte removed or duplicated does either.
func TestVerifyEveryTruncation(t *testing.T) {
	t.Parallel()
	data := signedBundle(t)
	trusted := NewKeyring(pubOf(testKey(1)))
	for i := 0; i < len(data); i++ {
		cases := map[string][]byte{
			"prefix":     data[:i],
			"deleted":    append(bytes.Clone(data[:i]), data[i+1:]...),
			"duplicated": append(bytes.Clone(data[:i+1]), data[i:]...),
		}
		for what, b := range cases {
			_, err := Verify(b, trusted, VerifyOptions{})
			if err == nil {
				t.Fatalf("byte %d %s: Verify accepted the modified file", i, what)
			}
			if err.Error() == "" || len(wrappedSentinels(err)) != 1 {
				t.Fatalf("byte %d %s: error %q must be non-empty and wrap exactly one sentinel", i, what, err)
			}
		}
	}
}

func TestNewPayloadSourceDateEpoch(t *testing.T) {
	m := realisticModel()
	m.Normalize()

	t.Run("epoch sets created_at and revision", func(t *testing.T) {
		t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
		p, err := NewPayload(m, BuildOptions{Compiler: "v1"})
		if err != nil {
			t.Fatal(err)
		}
		if p.CreatedAt != "2023-11-14T22:13:20Z" || p.Revision != 1700000000 || p.SchemaVersion != SchemaVersion || p.Compiler != "v1" {
			t.Errorf("got created_at %q revision %d schema %d compiler %q", p.CreatedAt, p.Revision, p.SchemaVersion, p.Compiler)
		}
	})
	t.Run("explicit revision is kept", func(t *testing.T) {
		t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
		p, err := NewPayload(m, BuildOptions{Revision: 42})
		if err != nil {
			t.Fatal(err)
		}
		if p.Revision != 42 || p.CreatedAt != "2023-11-14T22:13:20Z" {
			t.Errorf("got revision %d created_at %q", p.Revision, p.CreatedAt)
		}
	})
	t.Run("explicit created_at wins over the epoch, in UTC, to the second", func(t *testing.T) {
		t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
		at := time.Date(2026, 3, 4, 5, 6, 7, 999_999_999, time.FixedZone("CET", 3600))
		p, err := NewPayload(m, BuildOptions{CreatedAt: at})
		if err != nil {
			t.Fatal(err)
		}
		if p.CreatedAt != "2026-03-04T04:06:07Z" || p.Revision != uint64(at.Unix()) {
			t.Errorf("got created_at %q revision %d", p.CreatedAt, p.Revision)
		}
	})
	t.Run("no epoch means now", func(t *testing.T) {
		t.Setenv("SOURCE_DATE_EPOCH", "")
		before := time.Now().Unix()
		p, err := NewPayload(m, BuildOptions{})
		after := time.Now().Unix()
		if err != nil {
			t.Fatal(err)
		}
		at, err := time.Parse(time.RFC3339, p.CreatedAt)
		if err != nil || !strings.HasSuffix(p.CreatedAt, "Z") {
			t.Fatalf("created_at %q is not RFC 3339 UTC: %v", p.CreatedAt, err)
		}
		if at.Unix() < before || at.Unix() > after || p.Revision != uint64(at.Unix()) {
			t.Errorf("created_at %q revision %d not within [%d, %d]", p.CreatedAt, p.Revision, before, after)
		}
	})
	t.Run("epoch 0 needs an explicit revision", func(t *testing.T) {
		t.Setenv("SOURCE_DATE_EPOCH", "0")
		_, err := NewPayload(m, BuildOptions{})
		if err == nil || !strings.Contains(err.Error(), "cannot derive a revision") {
			t.Errorf("got %v, want a 'cannot derive a revision' error", err)
		}
		p, err := NewPayload(m, BuildOptions{Revision: 3})
		if err != nil || p.CreatedAt != "1970-01-01T00:00:00Z" || p.Revision != 3 {
			t.Errorf("with revision: got %+v, %v", p, err)
		}
	})
	t.Run("same model, epoch and revision give identical bytes", func(t *testing.T) {
		t.Setenv("SOURCE_DATE_EPOCH", "1712345678")
		build := func() []byte {
			m := realisticModel()
			m.Normalize()
			p, err := NewPayload(m, BuildOptions{Revision: 9, Compiler: "gatehouse v0.1.0"})
			if err != nil {
				t.Fatal(err)
			}
			return sign(t, encode(t, p), testKey(1))
		}
		a, b := build(), build()
		if !bytes.Equal(a, b) {
			t.Fatalf("two builds differ at byte %d", firstDiff(a, b))
		}
		time.Sleep(1100 * time.Millisecond) // the wall clock must not leak in
		if c := build(); !bytes.Equal(a, c) {
			t.Fatalf("a later build differs at byte %d", firstDiff(a, c))
		}
	})

	bad := map[string]string{
		"not a number": "yesterday",
		"negative":     "-1",
		"fractional":   "1700000000.5",
		"with spaces":  " 1700000000",
		"overflow":     "99999999999999999999",
	}
	for name, value := range bad {
		t.Run("bad SOURCE_DATE_EPOCH "+name, func(t *testing.T) {
			t.Setenv("SOURCE_DATE_EPOCH", value)
			p, err := NewPayload(m, BuildOptions{Revision: 1})
			if err == nil {
				t.Fatalf("NewPayload accepted SOURCE_DATE_EPOCH=%q: %+v", value, p)
			}
			if want := "SOURCE_DATE_EPOCH=" + `"` + value + `"` + " is not a non-negative integer"; !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not contain %q", err, want)
			}
			// An explicit creation time does not read the environment.
			if _, err := NewPayload(m, BuildOptions{Revision: 1, CreatedAt: time.Unix(1, 0)}); err != nil {
				t.Errorf("with CreatedAt set: %v", err)
			}
		})
	}
}

// TestVerifyErrorQuotesUntrustedKeyID: the key id of an untrusted signature is
// attacker-controlled, and Verify's errors end up in gateway logs and
// metrics. Like payloadType (which is printed with %q), it must not be able
// to forge log lines or flood them.
func TestVerifyErrorQuotesUntrustedKeyID(t *testing.T) {
	good := signedBundle(t)
	trusted := NewKeyring(pubOf(testKey(1)))
	tests := map[string]string{
		"newline":     "x\nlevel=info msg=\"bundle accepted\" revision=99",
		"ANSI escape": "\x1b[2J\x1b[1;32mOK",
		"1 MB":        strings.Repeat("a", 1<<20),
	}
	for name, keyid := range tests {
		t.Run(name, func(t *testing.T) {
			data := editEnvelope(t, good, func(e *Envelope) { e.Signatures[0].KeyID = keyid })
			_, err := Verify(data, trusted, VerifyOptions{})
			checkVerifyError(t, err, ErrUnknownKey, "is not among the 1 trusted key(s)")
			msg := err.Error()
			if strings.ContainsAny(msg, "\n\x1b") || len(msg) > 4096 {
				t.Fatalf("regression: the ErrUnknownKey message embeds the untrusted signature's keyid verbatim "+
					"(envelope.go: \"key id %%s is not among ...\"), so a bundle file can inject raw newlines/terminal escapes "+
					"into gateway logs or make the error arbitrarily large (%d bytes here); quote it with %%q and/or truncate it. Message: %.200q", len(msg), msg)
			}
		})
	}
}

// TestSignBadKey: Sign returns an error (it has an error path for keys that
// are not ed25519) rather than panicking on a key of the wrong size, such as
// a bare 32-byte seed or an unset key.
func TestSignBadKey(t *testing.T) {
	payload := encode(t, testPayload(t))
	keys := map[string]ed25519.PrivateKey{
		"nil":          nil,
		"32-byte seed": testKey(1).Seed(),
		"63 bytes":     testKey(1)[:63],
	}
	for name, k := range keys {
		t.Run(name, func(t *testing.T) {
			var (
				data     []byte
				err      error
				panicked any
			)
			func() {
				defer func() { panicked = recover() }()
				data, err = Sign(payload, k)
			}()
			if panicked != nil {
				t.Fatalf("regression: Sign panics on a %d-byte private key instead of returning an error: %v "+
					"(priv.Public() slices priv[32:] / ed25519.Sign checks the length by panicking; the "+
					"\"not an ed25519 key\" check in Sign can never fire)", len(k), panicked)
			}
			if err == nil {
				t.Fatalf("Sign accepted a %d-byte key and wrote %d bytes", len(k), len(data))
			}
		})
	}
}

func TestEnvelopePayloadBytes(t *testing.T) {
	payload := encode(t, testPayload(t))
	_, env, err := ReadUnverified(sign(t, payload, testKey(1)))
	if err != nil {
		t.Fatal(err)
	}
	got, err := env.PayloadBytes()
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("PayloadBytes() = %d bytes, %v", len(got), err)
	}
	for name, bad := range map[string]string{
		"not base64":      "{}",
		"URL-safe":        "-_-_",
		"missing padding": "e30",
		"nonzero padding": "e31=",
	} {
		t.Run(name, func(t *testing.T) {
			b, err := (&Envelope{Payload: bad}).PayloadBytes()
			if err == nil {
				t.Fatalf("PayloadBytes(%q) = %q", bad, b)
			}
			checkVerifyError(t, err, ErrMalformed, "payload is not valid base64")
		})
	}
}
