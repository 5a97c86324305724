package recorder

import (
	"bytes"
	"crypto/ed25519"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/gateway/hsm"
)

// anchorServer is an HTTP anchor on loopback: POST appends, GET returns
// everything; fail makes POSTs answer 503.
type anchorServer struct {
	url  string
	fail atomic.Bool
	auth atomic.Value
	mu   sync.Mutex
	buf  bytes.Buffer
}

func newAnchorServer(t *testing.T) *anchorServer {
	t.Helper()
	a := &anchorServer{}
	a.auth.Store("")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodPost:
			a.auth.Store(r.Header.Get("Authorization"))
			if a.fail.Load() {
				http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
				return
			}
			b, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			a.mu.Lock()
			a.buf.Write(b)
			a.mu.Unlock()
			w.WriteHeader(http.StatusNoContent)
		case http.MethodGet:
			w.Header().Set("Content-Type", "application/jsonl")
			w.Write(a.body())
		}
	}))
	t.Cleanup(srv.Close)
	a.url = srv.URL + "/v1/ledger"
	return a
}

func (a *anchorServer) body() []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	return bytes.Clone(a.buf.Bytes())
}

// TestRecorderWithAPKCS11Key: the recorder seals and signs its ledger
// through a SoftHSM token; everything verifies with the token's public
// key, and Close releases the token.
func TestRecorderWithAPKCS11Key(t *testing.T) {
	tt := hsm.NewTestToken(t)
	signer, err := hsm.Open(tt.URI, tt.PIN)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	r := openRec(t, dir, signer)
	if !r.PublicKey().Equal(tt.Public) {
		t.Fatal("the recorder does not use the token's key")
	}
	record(t, r, "hsm", true)
	record(t, r, "hsm-open", false)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	kr := bundle.NewKeyring(tt.Public)
	if a := audit(t, dir, kr, nil); a.Verdict() != VerdictUnsealed || statusOfSession(a, "hsm").Status != StatusOK {
		t.Fatalf("%+v %+v", a.Recordings, a.Ledger)
	}
	// Close closed the signer (it is an io.Closer); a new one reopens the
	// token and crash-seals the open session.
	signer2, err := hsm.Open(tt.URI, tt.PIN)
	if err != nil {
		t.Fatal(err)
	}
	openRec(t, dir, signer2).Close()
	a := audit(t, dir, kr, nil)
	if a.Verdict() != VerdictOK || statusOfSession(a, "hsm-open").Status != StatusCrashed {
		t.Fatalf("%+v", a.Recordings)
	}
	// A key the token does not hold verifies nothing.
	other, _ := bundle.GenerateKey()
	if a := audit(t, dir, bundle.NewKeyring(other.Public().(ed25519.PublicKey)), nil); a.Verdict() != VerdictAltered {
		t.Fatalf("verified with a foreign key: %+v", a.Ledger)
	}
}
