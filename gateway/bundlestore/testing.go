package bundlestore

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// TestServer serves one bundle over real HTTPS (httptest's TLS server) as
// an object store does: a strong ETag of the content, a 304 for a matching
// If-None-Match, and, when it has a token, a 403 for a request without
// it. It counts what it answered. Other packages' tests start one in a
// line and point a gateway's bundle url at URL + "/policy.bundle".
type TestServer struct {
	*httptest.Server
	// CAFile is the server's certificate (its own CA) as PEM, for a
	// gateway's bundle.ca_file.
	CAFile string
	token  string

	mu       sync.Mutex
	body     []byte
	etag     string
	failWith int
	ok, nm   int
	times    []time.Time
	auth     []string
}

// StartTestServer starts a TestServer that wants token (none when empty)
// and serves 404 until the first Publish. It stops when the test ends.
func StartTestServer(tb testing.TB, token string) *TestServer {
	tb.Helper()
	s := &TestServer{token: token}
	s.Server = httptest.NewTLSServer(http.HandlerFunc(s.serve))
	tb.Cleanup(s.Close)
	s.CAFile = filepath.Join(tb.TempDir(), "bundle-server-ca.pem")
	if err := os.WriteFile(s.CAFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Certificate().Raw}), 0o644); err != nil {
		tb.Fatal(err)
	}
	return s
}

func (s *TestServer) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.times = append(s.times, time.Now())
	s.auth = append(s.auth, r.Header.Get("Authorization"))
	switch {
	case s.token != "" && r.Header.Get("Authorization") != "Bearer "+s.token:
		http.Error(w, "AccessDenied", http.StatusForbidden)
	case s.failWith != 0:
		http.Error(w, "SlowDown", s.failWith)
	case s.body == nil:
		http.NotFound(w, r)
	case r.Header.Get("If-None-Match") == s.etag:
		s.nm++
		w.Header().Set("ETag", s.etag)
		w.WriteHeader(http.StatusNotModified)
	default:
		s.ok++
		w.Header().Set("ETag", s.etag)
		w.Header().Set("Last-Modified", time.Now().UTC().Format(http.TimeFormat))
		_, _ = w.Write(s.body)
	}
}

// Publish replaces the object, as an upload does: a new body and a new
// ETag, which it returns.
func (s *TestServer) Publish(data []byte) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.body = append([]byte(nil), data...)
	sum := sha256.Sum256(data)
	s.etag = fmt.Sprintf(`"%x"`, sum[:8])
	return s.etag
}

// Fail makes every answer an HTTP status (0: serve again).
func (s *TestServer) Fail(status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failWith = status
}

// Counts are the 200s with a body, the 304s, and every request.
func (s *TestServer) Counts() (ok, notModified, requests int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ok, s.nm, len(s.times)
}

// RequestTimes are the arrival times of every request.
func (s *TestServer) RequestTimes() []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Time(nil), s.times...)
}

// Authorizations are every request's Authorization header.
func (s *TestServer) Authorizations() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.auth...)
}

// Roots trusts the server's certificate, for NewHTTPClient.
func (s *TestServer) Roots() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(s.Certificate())
	return pool
}
