package bundle

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
)

// FuzzVerify: Verify never panics, every refusal wraps exactly one sentinel
// with a message, and the only input that verifies under the fuzz key is the
// one bundle that key signed.
//
// The key and payload are deterministic so that every fuzz worker process
// agrees on the seed bundle.
func FuzzVerify(f *testing.F) {
	priv := testKey(1)
	trusted := NewKeyring(pubOf(priv))
	p := testPayload(f)
	payload := encode(f, p)
	seed := sign(f, payload, priv)

	f.Add(seed)
	// Mutations of the real bundle.
	flip := func(i int, mask byte) []byte {
		b := bytes.Clone(seed)
		b[i] ^= mask
		return b
	}
	f.Add(flip(2, 0x01))                      // envelope field name
	f.Add(flip(len(seed)/2, 0x80))            // inside the payload's base64
	f.Add(flip(len(seed)-20, 0x01))           // inside the signature
	f.Add(flip(len(seed)-1, 0x01))            // the final newline
	f.Add(seed[:len(seed)-1])                 // no final newline
	f.Add(append(bytes.Clone(seed), seed...)) // two envelopes
	f.Add(bytes.Replace(seed, []byte(`"payloadType"`), []byte(`"PAYLOADTYPE"`), 1))
	var indented bytes.Buffer
	if err := json.Indent(&indented, seed, "", " "); err != nil {
		f.Fatal(err)
	}
	f.Add(indented.Bytes())
	// The same payload signed by an untrusted key.
	f.Add(sign(f, payload, testKey(2)))
	// Payloads signed by the trusted key that must never verify, whatever
	// is done to their envelope: they are not what this build writes.
	f.Add(sign(f, append(bytes.Clone(payload), ' '), priv))
	f.Add(sign(f, bytes.Replace(payload, []byte(`"schema_version":1`), []byte(`"schema_version":2`), 1), priv))
	f.Add(sign(f, bytes.Replace(payload, []byte(`"compiler"`), []byte(`"extra":0,"compiler"`), 1), priv))
	f.Add(signEnvelope(f, "application/json", payload, priv))
	f.Add(signEnvelope(f, PayloadType, payload, priv, priv))
	f.Add(signEnvelope(f, PayloadType, payload))
	// Small documents.
	f.Add([]byte(`{"payloadType":"application/vnd.gatehouse.bundle+json","payload":"e30=","signatures":[{"keyid":"","sig":""}]}` + "\n"))
	f.Add([]byte("{}"))
	f.Add([]byte(""))

	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := Verify(data, trusted, VerifyOptions{})
		if err == nil {
			if !bytes.Equal(data, seed) {
				t.Fatalf("Verify accepted %d bytes that are not the signed bundle (first difference at byte %d):\n%q", len(data), firstDiff(data, seed), data)
			}
			if v == nil || !bytes.Equal(v.PayloadBytes, payload) || v.Payload.Revision != testRevision || v.KeyID != KeyID(pubOf(priv)) {
				t.Fatalf("Verify of the seed returned %+v", v)
			}
		} else {
			if v != nil {
				t.Fatalf("Verify returned a payload with error %v", err)
			}
			if err.Error() == "" {
				t.Fatalf("empty error message")
			}
			if ws := wrappedSentinels(err); len(ws) != 1 {
				t.Fatalf("error %q wraps %d sentinels, want exactly one", err, len(ws))
			}
		}

		// The rollback check comes after everything else: only a fully
		// verified bundle can be refused as a rollback.
		_, err = Verify(data, trusted, VerifyOptions{ActiveRevision: testRevision})
		if err == nil {
			t.Fatalf("Verify accepted revision %d over active revision %d", testRevision, testRevision)
		}
		if errors.Is(err, ErrRollback) != bytes.Equal(data, seed) {
			t.Fatalf("rollback error %v for input equal to seed: %v", err, bytes.Equal(data, seed))
		}

		// Inspection helpers must not panic on anything either.
		_ = IsBundle(data)
		_, _, _ = ReadUnverified(data)
	})
}

// FuzzDecodePayload: DecodePayload never panics and accepts only bytes that
// are exactly the canonical encoding of what they decode to.
func FuzzDecodePayload(f *testing.F) {
	good := encode(f, testPayload(f))
	f.Add(good)
	f.Add(bytes.Replace(good, []byte(`"schema_version":1`), []byte(`"schema_version":2`), 1))
	f.Add([]byte(`{"schema_version":1,"revision":0,"created_at":"","compiler":"","model":{}}`))
	f.Add([]byte(`{"schema_version":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := DecodePayload(data)
		if err != nil {
			if p != nil {
				t.Fatalf("payload with error %v", err)
			}
			return
		}
		if p.SchemaVersion != SchemaVersion {
			t.Fatalf("accepted schema_version %d", p.SchemaVersion)
		}
		again, err := EncodePayload(p)
		if err != nil {
			t.Fatalf("EncodePayload of a decoded payload: %v", err)
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("accepted non-canonical bytes %q (canonical %q)", data, again)
		}
	})
}
