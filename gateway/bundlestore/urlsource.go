package bundlestore

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// URLSource is a bundle published at an HTTP(S) URL: a web server, a CDN,
// or an object store's HTTPS endpoint (an S3 object URL, public or
// presigned). The server is trusted with nothing but availability: what is
// activated is decided by the bundle's signature, the trusted keys and the
// revision floor, exactly as for a file. TLS keeps the token and the
// policy's contents private on the way.
type URLSource struct {
	// URL is the bundle's address. It is shown (logs, status, errors) only
	// through Redact: a presigned URL's query string is a credential.
	URL string
	// Client makes the requests (default NewHTTPClient(nil)).
	Client *http.Client
	// Token, when set, returns the bearer token for a request. It is
	// called for every request, so that a token file rotated on disk is
	// used; the value goes into Authorization and nowhere else.
	Token func() (string, error)
	// Timeout bounds one request, its body included (default
	// DefaultFetchTimeout).
	Timeout time.Duration
	// MaxBackoff caps the wait after failed checks (default ten poll
	// intervals, at most MaxBackoffCeiling, never less than one interval).
	MaxBackoff time.Duration
}

const (
	// DefaultFetchTimeout bounds one request to a URL source.
	DefaultFetchTimeout = 30 * time.Second
	// MaxBackoffCeiling is the longest default wait between failed checks:
	// a source that comes back is noticed within it.
	MaxBackoffCeiling = 5 * time.Minute
)

// Validators are the HTTP cache validators of a bundle the source served.
// Sent back as If-None-Match and If-Modified-Since, they make a check of
// an unchanged bundle a 304 without a body.
type Validators struct{ ETag, LastModified string }

// Fetched is one answer of a URL source.
type Fetched struct {
	// Data is a 200's body; nil when NotModified.
	Data        []byte
	NotModified bool
	// Validators are the answer's (for a 304, the ones sent).
	Validators
}

// StatusError is an answer other than 200 or 304.
type StatusError struct {
	// URL is the source, redacted.
	URL    string
	Code   int
	Status string
	// Body is the start of the answer's body (an object store's reason,
	// such as an expired presigned URL), quoted.
	Body string
}

func (e *StatusError) Error() string {
	msg := fmt.Sprintf("GET %s: %s", e.URL, e.Status)
	if e.Body != "" {
		msg += ": " + e.Body
	}
	return msg
}

// ErrTooLarge is returned for a body over bundle.MaxBundleSize: no bundle
// that large would verify, so it is not read.
var ErrTooLarge = fmt.Errorf("bundle source sent more than the %d byte bundle limit", bundle.MaxBundleSize)

// Fetch GETs the bundle once: conditionally when since holds validators,
// with the bearer token when there is one, within the timeout, and reading
// at most bundle.MaxBundleSize bytes. Errors name the URL redacted, never
// the token.
func (u *URLSource) Fetch(ctx context.Context, since Validators) (*Fetched, error) {
	where := Redact(u.URL)
	ctx, cancel := context.WithTimeout(ctx, cmp.Or(u.Timeout, DefaultFetchTimeout))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.URL, nil)
	if err != nil {
		// The parse error would repeat the URL, query string and all.
		return nil, fmt.Errorf("bundle source %s: not a valid URL", where)
	}
	if since.ETag != "" {
		req.Header.Set("If-None-Match", since.ETag)
	}
	if since.LastModified != "" {
		req.Header.Set("If-Modified-Since", since.LastModified)
	}
	req.Header.Set("User-Agent", "gatehouse-gateway")
	if u.Token != nil {
		tok, err := u.Token()
		if err != nil {
			return nil, fmt.Errorf("bundle source %s: token: %w", where, err)
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	client := u.Client
	if client == nil {
		client = NewHTTPClient(nil)
	}
	resp, err := client.Do(req)
	if err != nil {
		// url.Error repeats the full URL; keep only its cause.
		if ue := (*url.Error)(nil); errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("bundle source %s: %w", where, err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNotModified:
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		return &Fetched{NotModified: true, Validators: since}, nil
	case http.StatusOK:
	default:
		head, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		e := &StatusError{URL: where, Code: resp.StatusCode, Status: resp.Status}
		if s := strings.TrimSpace(string(head)); s != "" {
			e.Body = fmt.Sprintf("%q", s)
		}
		return nil, e
	}
	if resp.ContentLength > bundle.MaxBundleSize {
		return nil, fmt.Errorf("bundle source %s: %w (Content-Length %d)", where, ErrTooLarge, resp.ContentLength)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, bundle.MaxBundleSize+1))
	if err != nil {
		return nil, fmt.Errorf("bundle source %s: reading the body: %w", where, err)
	}
	if len(data) > bundle.MaxBundleSize {
		return nil, fmt.Errorf("bundle source %s: %w", where, ErrTooLarge)
	}
	return &Fetched{Data: data, Validators: Validators{ETag: resp.Header.Get("ETag"), LastModified: resp.Header.Get("Last-Modified")}}, nil
}

// NewHTTPClient is a URL source's client: TLS 1.2 or later against roots
// (nil: the system's), the environment's proxy settings, and redirects
// followed (at most five) only to https, or to http on loopback. Go keeps
// Authorization on a redirect to the same host, so a redirect to plain
// http would send the token in the clear.
func NewHTTPClient(roots *x509.CertPool) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	return &http.Client{Transport: tr, CheckRedirect: checkRedirect}
}

func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 5 {
		return errors.New("more than 5 redirects")
	}
	if req.URL.Scheme != "https" && (req.URL.Scheme != "http" || !IsLoopbackHost(req.URL.Hostname())) {
		return errors.New("redirected to a plain-http address outside loopback; refused")
	}
	return nil
}

// IsLoopbackHost reports whether a URL's host is a loopback address or
// localhost: the only place plain http is accepted.
func IsLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Redact is how a source URL is shown: without a password, without a
// fragment, and with every query value replaced, because a presigned
// URL's query (X-Amz-Signature, a SAS token's sig) grants access.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(an unparsable URL)"
	}
	u.Fragment, u.RawFragment = "", ""
	if u.RawQuery != "" {
		q := u.Query()
		for k := range q {
			q[k] = []string{"REDACTED"}
		}
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

// SourceStats are a URL source's checks (WatchURL); they stay zero for a
// file source.
type SourceStats struct {
	// ETag is the validator of the source's bundle the gateway holds
	// (activated from it, or found equal to the active one).
	ETag atomic.Pointer[string]
	// LastCheck is when the source last confirmed the active bundle: a 304,
	// or a 200 whose bundle is the active one. Staleness runs from it.
	LastCheck atomic.Pointer[time.Time]
	// NextCheck is when the next check is due (later while backing off).
	NextCheck atomic.Pointer[time.Time]
	// Error is the last failed check's reason (the network, an HTTP
	// status, a bundle refused), cleared by a successful check; ErrorAt
	// says when.
	Error   atomic.Pointer[string]
	ErrorAt atomic.Pointer[time.Time]
	// ConsecutiveFailures counts failed checks since the last successful
	// one; the backoff grows with it.
	ConsecutiveFailures atomic.Int64
	// Each check counts once: Fetched, a 200 whose bundle is now active;
	// NotModified, a 304 for the active bundle; Failures, a failed check
	// (a refused bundle's 200, and the 304s for it, among them).
	Fetched, NotModified, Failures atomic.Int64
}

// refusedError is a check that found a bundle the store refused.
type refusedError struct{ err error }

func (e *refusedError) Error() string { return "bundle refused: " + e.err.Error() }
func (e *refusedError) Unwrap() error { return e.err }

// WatchURL keeps the store in step with a bundle served over HTTP(S) until
// ctx ends. It checks at once, then every interval: a conditional GET (the
// last ETag and Last-Modified), so an unchanged bundle costs a 304. A new
// body goes through Apply like a file's: verified, compiled, swapped in,
// persisted; a refused one leaves the active bundle in place. After a
// failed check (the network, an HTTP status, a refused bundle) the next one
// waits longer, doubling with jitter up to the cap, until a check succeeds.
// A refused bundle's validators are kept, so while the source still holds
// it a check costs a 304 (still a failure) rather than its body.
func (s *Store) WatchURL(ctx context.Context, src *URLSource, interval time.Duration) {
	if interval <= 0 {
		interval = 5 * time.Second
	}
	ceiling := src.MaxBackoff
	if ceiling <= 0 {
		ceiling = max(min(10*interval, MaxBackoffCeiling), interval)
	}
	w := &urlWatch{s: s, src: src, where: Redact(src.URL)}
	st := &s.Stats.Source
	for {
		err := w.check(ctx)
		if ctx.Err() != nil {
			return
		}
		wait := interval
		if err != nil {
			n := st.ConsecutiveFailures.Add(1)
			wait = backoff(interval, ceiling, n, rand.Int64N)
			level := slog.LevelWarn
			if errors.As(err, new(*refusedError)) {
				level = slog.LevelError
			}
			s.log.Log(ctx, level, "bundle source check failed; keeping the active bundle", "url", w.where,
				"active_revision", activeRevision(s.Current()), "consecutive_failures", n, "retry_in", wait.Round(time.Millisecond), "err", err)
		} else {
			st.ConsecutiveFailures.Store(0)
		}
		next := time.Now().Add(wait)
		st.NextCheck.Store(&next)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// urlWatch is one WatchURL's memory between checks.
type urlWatch struct {
	s     *Store
	src   *URLSource
	where string
	// seen are the validators of the last body fetched; refused is set
	// when the store refused that body.
	seen    Validators
	refused *refusedError
}

func (w *urlWatch) check(ctx context.Context) error {
	st := &w.s.Stats.Source
	f, err := w.src.Fetch(ctx, w.seen)
	if err != nil {
		if ctx.Err() != nil {
			return err // shutting down, not a failure of the source
		}
		return w.failed(err)
	}
	if f.NotModified {
		if w.refused != nil {
			return w.failed(w.refused)
		}
		st.NotModified.Add(1)
		return w.ok()
	}
	prev := w.s.Current()
	a, err := w.s.Apply(f.Data, w.where)
	if errors.Is(err, ErrFloorUnavailable) {
		// Not refused for what it is: the next check downloads it again
		// rather than take a 304 for a refusal.
		return w.failed(&refusedError{err})
	}
	w.seen = f.Validators
	switch {
	case errors.Is(err, ErrUnchanged):
	case err != nil:
		w.refused = &refusedError{err}
		return w.failed(w.refused)
	default:
		w.s.log.Info("bundle activated", "source", w.where, "revision", a.Revision, "previous_revision", activeRevision(prev),
			"digest", a.Digest, "etag", f.ETag, "trigger", "poll")
	}
	w.refused = nil
	st.Fetched.Add(1)
	return w.ok()
}

func (w *urlWatch) ok() error {
	st := &w.s.Stats.Source
	now := time.Now()
	etag := w.seen.ETag
	st.ETag.Store(&etag)
	st.LastCheck.Store(&now)
	st.Error.Store(nil)
	return nil
}

func (w *urlWatch) failed(err error) error {
	st := &w.s.Stats.Source
	now := time.Now()
	msg := err.Error()
	st.Failures.Add(1)
	st.Error.Store(&msg)
	st.ErrorAt.Store(&now)
	return err
}

// backoff is the wait before the next check after n consecutive failures:
// the interval doubled n times, capped at ceiling, then jittered into its
// upper half, so that replicas that failed together do not retry together.
func backoff(interval, ceiling time.Duration, n int64, randN func(int64) int64) time.Duration {
	d := interval
	for i := int64(0); i < n && d < ceiling; i++ {
		d *= 2
	}
	d = min(d, ceiling)
	half := d / 2
	return half + time.Duration(randN(int64(d-half)+1))
}

// ConfirmedAt is when the active bundle was last known to be its source's:
// its activation, or a later successful check of a URL source that found
// it unchanged. Zero before the first bundle. /readyz compares its age
// with admin.max_bundle_age.
func (s *Store) ConfirmedAt() time.Time {
	a := s.Current()
	if a == nil {
		return time.Time{}
	}
	t := a.LoadedAt
	if c := s.Stats.Source.LastCheck.Load(); c != nil && c.After(t) {
		t = *c
	}
	return t
}

func activeRevision(a *Active) uint64 {
	if a == nil {
		return 0
	}
	return a.Revision
}
