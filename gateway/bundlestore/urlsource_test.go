package bundlestore

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestWatchURL: over real HTTPS, an unchanged bundle costs 304s and is not
// applied again; a new revision is applied; a tampered bundle and an older
// revision are refused (fetched once each, then 304s) while the last good
// one keeps serving; the bearer token is sent on every request and appears
// in no log line, status or error; the last good bundle is persisted.
func TestWatchURL(t *testing.T) {
	const token = "tok-5d1f0c9e-never-logged"
	k := key(t)
	kr := bundle.NewKeyring(k.Public().(ed25519.PublicKey))
	dir := t.TempDir()
	logs := &syncBuffer{}
	s := New(kr, dir, WithLogger(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	srv := StartTestServer(t, token)
	etag1 := srv.Publish(build(t, k, 1))

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	src := &URLSource{URL: srv.URL + "/prod/policy.bundle", Client: NewHTTPClient(srv.Roots()), Token: func() (string, error) { return token, nil }}
	go func() { defer close(done); s.WatchURL(ctx, src, 30*time.Millisecond) }()
	defer func() { cancel(); <-done }()
	st := &s.Stats.Source
	revision := func(want uint64) func() bool {
		return func() bool { a := s.Current(); return a != nil && a.Revision == want }
	}
	failing := func(substr string) func() bool {
		return func() bool { e := st.Error.Load(); return e != nil && strings.Contains(*e, substr) }
	}

	waitFor(t, "revision 1", revision(1))
	waitFor(t, "two 304s", func() bool { _, nm, _ := srv.Counts(); return nm >= 2 })
	if ok, _, _ := srv.Counts(); ok != 1 || s.Stats.Reloads.Load() != 1 {
		t.Fatalf("an unchanged bundle was fetched %d times and applied %d times", ok, s.Stats.Reloads.Load())
	}
	if e := st.ETag.Load(); e == nil || *e != etag1 || st.LastCheck.Load() == nil {
		t.Fatalf("stats after 304s: etag %v, last check %v", e, st.LastCheck.Load())
	}

	etag2 := srv.Publish(build(t, k, 2))
	waitFor(t, "revision 2", revision(2))
	waitFor(t, "the new ETag", func() bool { e := st.ETag.Load(); return e != nil && *e == etag2 })

	tampered := build(t, k, 3)
	tampered[len(tampered)/2] ^= 1
	srv.Publish(tampered)
	waitFor(t, "the tampered bundle refused", failing("bundle refused"))
	waitFor(t, "a 304 for the refused bundle", func() bool { return st.ConsecutiveFailures.Load() >= 2 })
	if a := s.Current(); a.Revision != 2 {
		t.Fatalf("after a tampered bundle: revision %d", a.Revision)
	}
	if ok, _, _ := srv.Counts(); ok != 3 {
		t.Errorf("the refused bundle was downloaded again (%d bodies served, want 3): its ETag should make later checks 304s", ok)
	}

	srv.Publish(build(t, k, 1)) // an older, validly signed revision
	waitFor(t, "the older bundle refused", failing("not newer than the active one"))
	if s.Current().Revision != 2 {
		t.Fatalf("after an older bundle: revision %d", s.Current().Revision)
	}

	srv.Publish(build(t, k, 4))
	waitFor(t, "revision 4", revision(4))
	waitFor(t, "the failures cleared", func() bool { return st.ConsecutiveFailures.Load() == 0 && st.Error.Load() == nil })

	cancel()
	<-done
	for i, a := range srv.Authorizations() {
		if a != "Bearer "+token {
			t.Errorf("request %d: Authorization %q", i, a)
		}
	}
	if strings.Contains(logs.String(), token) {
		t.Errorf("the token is in the log:\n%s", logs.String())
	}
	for _, want := range []string{"bundle activated", "bundle refused", "consecutive_failures=", `etag="\"`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the log lacks %q:\n%s", want, logs.String())
		}
	}

	// A restart with the server gone comes up with the last good bundle.
	srv.Close()
	restarted := New(kr, dir)
	if a, err := restarted.LoadPersisted(); err != nil || a.Revision != 4 {
		t.Fatalf("LoadPersisted: %v %+v", err, a)
	}
}

// TestWatchURLBacksOff: while the source fails, the checks space out
// (doubling, jittered, capped) and the active bundle stays; the first
// successful check resets the spacing to the interval.
func TestWatchURLBacksOff(t *testing.T) {
	k := key(t)
	s := New(bundle.NewKeyring(k.Public().(ed25519.PublicKey)), "", WithLogger(slog.New(slog.DiscardHandler)))
	srv := StartTestServer(t, "")
	srv.Publish(build(t, k, 1))
	const interval = 20 * time.Millisecond
	const ceiling = 320 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	src := &URLSource{URL: srv.URL, Client: NewHTTPClient(srv.Roots()), MaxBackoff: ceiling}
	go func() { defer close(done); s.WatchURL(ctx, src, interval) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "revision 1", func() bool { return s.Current() != nil })

	srv.Fail(http.StatusServiceUnavailable)
	_, _, before := srv.Counts()
	waitFor(t, "seven failed checks", func() bool { return s.Stats.Source.ConsecutiveFailures.Load() >= 7 })
	times := srv.RequestTimes()[before:]
	var gaps []time.Duration
	for i := 1; i < len(times); i++ {
		gaps = append(gaps, times[i].Sub(times[i-1]))
	}
	t.Logf("gaps between failed checks: %v", gaps)
	// After n failures the wait is in [d/2, d], d = interval·2^n capped:
	// 20-40ms, 40-80, 80-160, 160-320, then 160-320 ms.
	if len(gaps) < 5 {
		t.Fatalf("only %d gaps", len(gaps))
	}
	if gaps[3] < 4*interval || gaps[3] <= gaps[0] {
		t.Errorf("the spacing did not grow: %v", gaps)
	}
	for _, g := range gaps {
		if g > ceiling+250*time.Millisecond {
			t.Errorf("a wait of %v is over the %v cap", g, ceiling)
		}
	}
	if s.Current().Revision != 1 {
		t.Fatal("the active bundle was lost while the source failed")
	}
	if e := s.Stats.Source.Error.Load(); e == nil || !strings.Contains(*e, "503 Service Unavailable") {
		t.Errorf("last error %v", e)
	}

	srv.Fail(0)
	waitFor(t, "a successful check", func() bool { return s.Stats.Source.ConsecutiveFailures.Load() == 0 })
	_, _, n := srv.Counts()
	start := time.Now()
	waitFor(t, "five checks at the interval", func() bool { _, _, m := srv.Counts(); return m >= n+5 })
	if took := time.Since(start); took > 5*ceiling/2 {
		t.Errorf("five checks after recovery took %v: the backoff was not reset", took)
	}
}

func TestBackoff(t *testing.T) {
	lo := func(int64) int64 { return 0 }
	hi := func(n int64) int64 { return n - 1 }
	for _, tc := range []struct {
		n      int64
		lo, hi time.Duration
	}{
		{1, 1 * time.Second, 2 * time.Second},
		{2, 2 * time.Second, 4 * time.Second},
		{3, 4 * time.Second, 8 * time.Second},
		{4, 5 * time.Second, 10 * time.Second}, // capped at 10s
		{60, 5 * time.Second, 10 * time.Second},
	} {
		if got := backoff(time.Second, 10*time.Second, tc.n, lo); got != tc.lo {
			t.Errorf("n=%d: shortest wait %v, want %v", tc.n, got, tc.lo)
		}
		if got := backoff(time.Second, 10*time.Second, tc.n, hi); got != tc.hi {
			t.Errorf("n=%d: longest wait %v, want %v", tc.n, got, tc.hi)
		}
	}
}

// TestFetch: the edges of one request: a body over the bundle limit is
// not read, a slow server times out, a redirect to plain http is refused,
// an error status carries the object store's reason, and no error repeats
// a presigned URL's signature.
func TestFetch(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(bundle.MaxBundleSize+1))
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("/big-chunked", func(w http.ResponseWriter, r *http.Request) {
		chunk := bytes.Repeat([]byte{'x'}, 1<<20)
		for range bundle.MaxBundleSize>>20 + 1 {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	})
	mux.HandleFunc("/downgrade", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://bundles.example.com/policy.bundle", http.StatusFound)
	})
	mux.HandleFunc("/expired", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>", http.StatusForbidden)
	})
	srv := httptest.NewTLSServer(mux)
	defer srv.Close()
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	fetch := func(path string, timeout time.Duration) error {
		u := &URLSource{URL: srv.URL + path, Client: NewHTTPClient(pool), Timeout: timeout}
		_, err := u.Fetch(context.Background(), Validators{})
		return err
	}
	if err := fetch("/big", 0); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Content-Length over the limit: %v", err)
	}
	if err := fetch("/big-chunked", 0); !errors.Is(err, ErrTooLarge) {
		t.Errorf("a chunked body over the limit: %v", err)
	}
	start := time.Now()
	if err := fetch("/slow", 200*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
		t.Errorf("a slow server: %v after %v", err, time.Since(start))
	}
	if err := fetch("/downgrade", 0); err == nil || !strings.Contains(err.Error(), "plain-http") {
		t.Errorf("a redirect to http: %v", err)
	}
	const sig = "X-Amz-Signature=0123456789abcdef"
	err := fetch("/expired?X-Amz-Expires=60&"+sig, 0)
	var se *StatusError
	if !errors.As(err, &se) || se.Code != http.StatusForbidden || !strings.Contains(err.Error(), "Request has expired") {
		t.Errorf("an expired presigned URL: %v", err)
	}
	if err != nil && strings.Contains(err.Error(), "0123456789abcdef") {
		t.Errorf("the error repeats the signature: %v", err)
	}
	// A server that is not there: the error names the URL, redacted.
	dead := &URLSource{URL: "https://127.0.0.1:1/policy.bundle?" + sig}
	if _, err := dead.Fetch(context.Background(), Validators{}); err == nil || strings.Contains(err.Error(), "0123456789abcdef") || !strings.Contains(err.Error(), "X-Amz-Signature=REDACTED") {
		t.Errorf("an unreachable source: %v", err)
	}
}

func TestRedact(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"https://bundles.internal/prod/policy.bundle", "https://bundles.internal/prod/policy.bundle"},
		{"https://b.s3.eu-west-1.amazonaws.com/prod/policy.bundle?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=abc",
			"https://b.s3.eu-west-1.amazonaws.com/prod/policy.bundle?X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED"},
		{"https://user:pass@host/p#frag", "https://user:xxxxx@host/p"},
	} {
		if got := Redact(tc.in); got != tc.want {
			t.Errorf("Redact(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// BenchmarkURLCheck is the cost of one check of an unchanged bundle over
// TLS on loopback (a kept-alive connection): a conditional GET answered 304,
// against a GET without validators, which downloads the body and compares
// it with the active bundle.
func BenchmarkURLCheck(b *testing.B) {
	k := key(b)
	data := build(b, k, 1)
	for _, conditional := range []bool{true, false} {
		name := "304"
		if !conditional {
			name = "200-unchanged"
		}
		b.Run(name, func(b *testing.B) {
			s := New(bundle.NewKeyring(k.Public().(ed25519.PublicKey)), "", WithLogger(slog.New(slog.DiscardHandler)))
			srv := StartTestServer(b, "")
			srv.Publish(data)
			w := &urlWatch{s: s, src: &URLSource{URL: srv.URL, Client: NewHTTPClient(srv.Roots())}, where: srv.URL}
			if err := w.check(context.Background()); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if !conditional {
					w.seen = Validators{}
				}
				if err := w.check(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(data)), "bundle-bytes")
		})
	}
}
