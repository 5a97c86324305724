// Package hydratest starts a real ORY Hydra OAuth 2.0 / OpenID Connect
// provider for tests.
//
// A test gets an issuer and a client token in a few lines:
//
//	h := hydratest.Start(t)
//	h.CreateClient(t, "ci-bot", "ci-bot-secret", []string{"gatehouse"})
//	token := h.Token(t, "ci-bot", "ci-bot-secret", []string{"gatehouse"})
//
// Tokens are RS256-signed JWT access tokens with iss = Issuer(), sub = the
// client ID and aud = the requested audience, verifiable against JWKSURL().
// With WithTokenHook, Hydra asks an HTTP endpoint of the test for extra claims
// (groups, for example) on every token.
//
// Hydra is built from the nested module acctest/tools, which pins its
// version, into .cache/bin/ at the repository root. The first build takes
// about 100 s on a cold Go cache; later test runs reuse the binary.
//
// Each Hydra runs as a direct child of the test binary with an in-memory
// database. tb.Cleanup stops it, and the kernel kills it through the
// parent-death signal if the test binary dies without running cleanups.
package hydratest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/internal/gotool"
)

const (
	// toolsDir is the nested module that pins Hydra, relative to the root.
	toolsDir   = "acctest/tools"
	hydraPkg   = "github.com/ory/hydra/v2"
	buildTags  = "sqlite,sqlite_omit_load_extension" // dsn: memory needs sqlite
	cacheDir   = ".cache/bin"
	buildLimit = 20 * time.Minute

	startTimeout = time.Minute // the first start generates RSA keys
	stopTimeout  = 10 * time.Second
	httpTimeout  = 30 * time.Second
	// startAttempts bounds the retries when another process grabs a port
	// between picking it and Hydra binding it.
	startAttempts = 3
)

// Option configures a Hydra before it starts.
type Option func(*config)

type config struct {
	tokenHook      string
	topLevelClaims []string
	settings       []setting
}

type setting struct {
	path  string
	value any
}

// WithTokenHook sets oauth2.token_hook: before Hydra issues any token, it
// POSTs the request (client_id, granted_audience, grant_types, ...) as JSON
// to url and takes the extra access-token claims from a 200 response of the
// form
//
//	{"session": {"access_token": {"groups": ["admins"]}}}
//
// A 204 issues the token unchanged and a 403 refuses it (access_denied).
// Hydra puts the claims under "ext" in the JWT; list them in
// WithTopLevelClaims to have them at the top level as well.
func WithTokenHook(url string) Option {
	return func(c *config) { c.tokenHook = url }
}

// WithTopLevelClaims sets oauth2.allowed_top_level_claims: extra claims from
// the token hook with these names also appear at the top level of the JWT
// access token (they always appear under "ext"). Reserved claims such as iss,
// sub and aud cannot be overridden this way.
func WithTopLevelClaims(claims ...string) Option {
	return func(c *config) { c.topLevelClaims = append(c.topLevelClaims, claims...) }
}

// WithConfig sets any Hydra configuration key, given as a dotted path, after
// the helper's own settings: WithConfig("ttl.access_token", "2s"), for
// example. See https://www.ory.sh/docs/hydra/reference/configuration.
func WithConfig(path string, value any) Option {
	return func(c *config) { c.settings = append(c.settings, setting{path, value}) }
}

// Hydra is a running Hydra owned by one test.
type Hydra struct {
	publicURL string
	adminURL  string
	issuer    string
	dir       string
	logFile   string

	cmd  *exec.Cmd
	done chan struct{} // closed when Hydra has exited
	err  error         // Hydra's exit status; read after done
}

// Start builds Hydra if needed, starts `hydra serve all --dev` with an
// in-memory database on two random ports of 127.0.0.1, waits until the
// OpenID discovery document answers and registers the shutdown with
// tb.Cleanup.
func Start(tb testing.TB, opts ...Option) *Hydra {
	tb.Helper()
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	bin := Binary(tb)

	dir := tb.TempDir()
	h := &Hydra{dir: dir, logFile: filepath.Join(dir, "hydra.log")}
	for attempt := 1; ; attempt++ {
		err := h.start(bin, &cfg)
		if err == nil {
			break
		}
		if attempt < startAttempts && errors.Is(err, errPortTaken) {
			continue
		}
		tb.Fatalf("hydratest: %v\n%s", err, h.logTail())
	}
	tb.Cleanup(func() {
		if err := h.stop(); err != nil {
			tb.Errorf("hydratest: %v", err)
		}
	})
	return h
}

// Issuer returns the issuer exactly as the discovery document and the iss
// claim of every token carry it (no trailing slash): the URL to give an OIDC
// client for discovery.
func (h *Hydra) Issuer() string { return h.issuer }

// PublicURL returns the base URL of the public API (token endpoint,
// discovery, JWKS).
func (h *Hydra) PublicURL() string { return h.publicURL }

// AdminURL returns the base URL of the admin API.
func (h *Hydra) AdminURL() string { return h.adminURL }

// JWKSURL returns the URL of the key set that signs access tokens. Hydra
// generates new keys on every start, so fetch it afresh for each Hydra.
func (h *Hydra) JWKSURL() string { return h.publicURL + "/.well-known/jwks.json" }

// LogFile returns the path of Hydra's combined stdout and stderr.
func (h *Hydra) LogFile() string { return h.logFile }

// CreateClient registers an OAuth 2.0 client for the client_credentials
// grant that may request tokens for audience. Hydra requires the secret to
// be at least 6 characters long.
func (h *Hydra) CreateClient(tb testing.TB, id, secret string, audience []string) {
	tb.Helper()
	if audience == nil {
		audience = []string{}
	}
	body, err := json.Marshal(map[string]any{
		"client_id":                  id,
		"client_secret":              secret,
		"grant_types":                []string{"client_credentials"},
		"audience":                   audience,
		"token_endpoint_auth_method": "client_secret_post",
	})
	if err != nil {
		tb.Fatalf("hydratest: create client %s: %v", id, err)
	}
	resp, err := h.do(http.MethodPost, h.adminURL+"/admin/clients", "application/json", bytes.NewReader(body))
	if err != nil {
		tb.Fatalf("hydratest: create client %s: %v", id, err)
	}
	if resp.status != http.StatusCreated {
		tb.Fatalf("hydratest: create client %s: HTTP %d: %s", id, resp.status, resp.body)
	}
}

// Token runs the client_credentials grant for the client and returns the raw
// JWT access token. Every audience must be one the client was created with.
func (h *Hydra) Token(tb testing.TB, id, secret string, audience []string) string {
	tb.Helper()
	form := url.Values{
		"grant_type":    {"client_credentials"},
		"client_id":     {id},
		"client_secret": {secret},
	}
	if len(audience) > 0 {
		form.Set("audience", strings.Join(audience, " "))
	}
	resp, err := h.do(http.MethodPost, h.publicURL+"/oauth2/token", "application/x-www-form-urlencoded", strings.NewReader(form.Encode()))
	if err != nil {
		tb.Fatalf("hydratest: token for %s: %v", id, err)
	}
	if resp.status != http.StatusOK {
		tb.Fatalf("hydratest: token for %s: HTTP %d: %s", id, resp.status, resp.body)
	}
	var tok struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
	}
	if err := json.Unmarshal(resp.body, &tok); err != nil || tok.AccessToken == "" {
		tb.Fatalf("hydratest: token for %s: unexpected response (%v): %s", id, err, resp.body)
	}
	return tok.AccessToken
}

type response struct {
	status int
	body   []byte
}

func (h *Hydra) do(method, url, contentType string, body io.Reader) (response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), httpTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return response{}, err
	}
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("Accept", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return response{}, err
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err != nil {
		return response{}, fmt.Errorf("%s %s: read response: %w", method, url, err)
	}
	return response{status: res.StatusCode, body: data}, nil
}

var errPortTaken = errors.New("port already in use")

func (h *Hydra) start(bin string, cfg *config) error {
	publicPort, err := freePort()
	if err != nil {
		return err
	}
	adminPort, err := freePort()
	if err != nil {
		return err
	}
	h.publicURL = "http://127.0.0.1:" + strconv.Itoa(publicPort)
	h.adminURL = "http://127.0.0.1:" + strconv.Itoa(adminPort)

	conf := map[string]any{
		"dsn": "memory",
		"serve": map[string]any{
			"public": map[string]any{"host": "127.0.0.1", "port": publicPort},
			"admin":  map[string]any{"host": "127.0.0.1", "port": adminPort},
		},
		"urls":       map[string]any{"self": map[string]any{"issuer": h.publicURL}},
		"secrets":    map[string]any{"system": []string{rand.Text() + rand.Text()}},
		"strategies": map[string]any{"access_token": "jwt"},
		"sqa":        map[string]any{"opt_out": true},
		"log":        map[string]any{"level": "warn", "format": "text"},
	}
	if cfg.tokenHook != "" {
		setPath(conf, "oauth2.token_hook", cfg.tokenHook)
	}
	if len(cfg.topLevelClaims) > 0 {
		setPath(conf, "oauth2.allowed_top_level_claims", cfg.topLevelClaims)
	}
	for _, s := range cfg.settings {
		setPath(conf, s.path, s.value)
	}
	// JSON is YAML; Hydra picks the parser by the file extension.
	data, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return fmt.Errorf("encode hydra.yml: %w", err)
	}
	confFile := filepath.Join(h.dir, "hydra.yml")
	if err := os.WriteFile(confFile, data, 0o600); err != nil {
		return fmt.Errorf("write hydra.yml: %w", err)
	}

	logf, err := os.OpenFile(h.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open hydra log: %w", err)
	}
	defer logf.Close() // the child holds its own descriptor
	logStart, _ := logf.Seek(0, io.SeekEnd)

	cmd := exec.Command(bin, "serve", "all", "--dev", "--config", confFile)
	cmd.Dir = h.dir
	// A clean environment: Hydra reads any variable named like a config
	// key (DSN, SERVE_PUBLIC_PORT, ...), which would override hydra.yml.
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + h.dir, "TMPDIR=" + os.TempDir()}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start hydra: %w", err)
	}
	h.cmd, h.done = cmd, make(chan struct{})
	go func() {
		h.err = cmd.Wait()
		close(h.done)
	}()

	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	for {
		select {
		case <-h.done:
			log, _ := os.ReadFile(h.logFile)
			if int64(len(log)) > logStart && bytes.Contains(log[logStart:], []byte("address already in use")) {
				return errPortTaken
			}
			return fmt.Errorf("hydra exited during start-up: %v", h.err)
		case <-deadline.C:
			_ = h.stop()
			return fmt.Errorf("hydra not ready after %s", startTimeout)
		case <-tick.C:
			if issuer, ok := h.ready(); ok {
				h.issuer = issuer
				return nil
			}
		}
	}
}

// ready reports whether both APIs answer and the signing keys exist, and
// returns the issuer from the discovery document.
func (h *Hydra) ready() (string, bool) {
	resp, err := h.do(http.MethodGet, h.adminURL+"/health/ready", "application/json", nil)
	if err != nil || resp.status != http.StatusOK {
		return "", false
	}
	resp, err = h.do(http.MethodGet, h.publicURL+"/.well-known/openid-configuration", "application/json", nil)
	if err != nil || resp.status != http.StatusOK {
		return "", false
	}
	var disc struct {
		Issuer string `json:"issuer"`
	}
	if json.Unmarshal(resp.body, &disc) != nil || disc.Issuer == "" {
		return "", false
	}
	// The first JWKS request makes Hydra generate its signing keys (about
	// 0.2 s of RSA key generation); do it here rather than in the first
	// Token a test times.
	resp, err = h.do(http.MethodGet, h.JWKSURL(), "application/json", nil)
	if err != nil || resp.status != http.StatusOK {
		return "", false
	}
	return disc.Issuer, true
}

// Stop stops Hydra now (an identity provider outage); the cleanup then
// has nothing left to do.
func (h *Hydra) Stop(tb testing.TB) {
	tb.Helper()
	if err := h.stop(); err != nil {
		tb.Errorf("hydratest: %v", err)
	}
}

// stop asks Hydra to shut down and kills it if it takes too long; its
// database is in memory, so nothing is lost either way.
func (h *Hydra) stop() error {
	select {
	case <-h.done:
		return nil
	default:
	}
	_ = h.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(stopTimeout)
	defer t.Stop()
	select {
	case <-h.done:
		return nil
	case <-t.C:
		_ = h.cmd.Process.Kill()
		<-h.done
		return fmt.Errorf("hydra (pid %d) ignored SIGTERM for %s; killed", h.cmd.Process.Pid, stopTimeout)
	}
}

func (h *Hydra) logTail() string {
	data, err := os.ReadFile(h.logFile)
	if err != nil {
		return ""
	}
	const max = 4 << 10
	if len(data) > max {
		data = data[len(data)-max:]
	}
	return "hydra log:\n" + string(data)
}

// setPath sets a dotted path such as "oauth2.token_hook" in a nested map,
// creating the intermediate maps.
func setPath(m map[string]any, path string, value any) {
	keys := strings.Split(path, ".")
	for _, k := range keys[:len(keys)-1] {
		next, ok := m[k].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[k] = next
		}
		m = next
	}
	m[keys[len(keys)-1]] = value
}

// freePort asks the kernel for a free port on 127.0.0.1. Another process may
// take it before Hydra binds it; start retries in that case.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

var (
	binaryMu   sync.Mutex
	binaryPath string
)

// Binary returns the path of the Hydra binary, building it on first use
// into .cache/bin/hydra-<version> at the repository root. The version is the
// one acctest/tools/go.mod requires. A file lock serialises builds across
// the test binaries `go test ./...` runs in parallel, and the binary appears
// under its final name only once complete, so a half-written one is never
// run. The test fails if Hydra cannot be built, which needs the Go module
// proxy (or a module cache already holding acctest/tools's modules) and gcc.
func Binary(tb testing.TB) string {
	tb.Helper()
	binaryMu.Lock()
	defer binaryMu.Unlock()
	if binaryPath != "" {
		return binaryPath
	}
	path, err := buildBinary(tb)
	if err != nil {
		tb.Fatalf("hydratest: %v", err)
	}
	binaryPath = path
	return path
}

func buildBinary(tb testing.TB) (string, error) {
	tb.Helper()
	root, err := gotool.FindRootFromWD()
	if err != nil {
		return "", err
	}
	tools := filepath.Join(root, filepath.FromSlash(toolsDir))
	version, err := gotool.RequiredVersion(filepath.Join(tools, "go.mod"), hydraPkg)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(root, filepath.FromSlash(cacheDir))
	bin := filepath.Join(dir, "hydra-"+version)
	if gotool.IsExecutable(bin) {
		return bin, nil
	}

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", dir, err)
	}
	unlock, err := gotool.Lock(context.Background(), bin+".lock", func() {
		tb.Logf("hydratest: waiting for another test process to finish building Hydra (%s)", bin+".lock")
	})
	if err != nil {
		return "", err
	}
	defer unlock()
	if gotool.IsExecutable(bin) { // another process built it while we waited
		return bin, nil
	}

	goTool, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("building Hydra needs the go command on PATH: %w", err)
	}
	tmp := fmt.Sprintf("%s.tmp-%d", bin, os.Getpid())
	defer os.Remove(tmp)

	tb.Logf("hydratest: building Hydra %s into %s (about 100 s on a cold Go cache, once)", version, bin)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), buildLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool, "build", "-tags", buildTags, "-o", tmp, hydraPkg)
	cmd.Dir = tools
	// CGO for sqlite; GOWORK=off so a go.work above the repository
	// cannot pull the nested module into a workspace.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1", "GOWORK=off")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("start go build: %w", err)
	}
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()
	progress := time.NewTicker(15 * time.Second)
	defer progress.Stop()
	for finished := false; !finished; {
		select {
		case <-progress.C:
			tb.Logf("hydratest: still building Hydra (%s)", time.Since(start).Round(time.Second))
		case err = <-waitErr:
			finished = true
		}
	}
	if err != nil {
		tail := out.Bytes()
		if len(tail) > 4<<10 {
			tail = tail[len(tail)-4<<10:]
		}
		return "", fmt.Errorf("building Hydra %s failed: %w\n"+
			"(cd %s && go build -tags %s %s) needs the Go module proxy, or a module cache that already holds the modules of %s, and gcc for cgo:\n%s",
			version, err, toolsDir, buildTags, hydraPkg, toolsDir, tail)
	}
	if err := os.Rename(tmp, bin); err != nil {
		return "", fmt.Errorf("install Hydra binary: %w", err)
	}
	tb.Logf("hydratest: built Hydra %s in %s", version, time.Since(start).Round(time.Second))
	return bin, nil
}
