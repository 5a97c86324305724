package acctest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/gatehouse-dev/gatehouse/gateway"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/internal/hydratest"
)

// enforcementPolicy lets analytics LISTEN.
func enforcementPolicy(issuer, dbAddr string) string {
	return strings.Replace(policy(issuer, dbAddr), `s.command == 'SELECT' && s.tables.all`, `s.command in ['SELECT', 'LISTEN'] && s.tables.all`, 1)
}

// expiryOf reads a JWT's exp claim (the test's own token: no verification).
func expiryOf(t *testing.T, token string) time.Time {
	t.Helper()
	parts := strings.Split(token, ".")
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Exp int64 `json:"exp"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return time.Unix(c.Exp, 0)
}

// metric reads one unlabelled counter from /metrics.
func (s *stack) metric(t *testing.T, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + s.adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, name+" ") {
			v, _ := strconv.ParseFloat(strings.Fields(line)[1], 64)
			return v
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

// waitGone waits for the gateway to end an idle session and returns when
// it did, and the error the client read.
func waitGone(t *testing.T, c *pgx.Conn, within time.Duration) (time.Time, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	for {
		n, err := c.WaitForNotification(ctx)
		if err != nil {
			if ctx.Err() != nil {
				t.Fatalf("the idle session was not ended within %s", within)
			}
			return time.Now(), err
		}
		t.Logf("notification while waiting: %+v", n)
	}
}

// TestEnforcementWithoutWaiting: against the real binary, with Hydra's
// short-lived tokens: an idle LISTEN session ends within a second of its
// token's expiry (plus the skew) and of a revoking bundle's swap, gets no
// notification after, and its recording holds those it got; one identity
// cannot take more than its share; 5,000 silent sockets do not lock
// callers out; 1,000 forged tokens cause at most a handful of key fetches;
// and logins keep working through a reload while Hydra is down.
func TestEnforcementWithoutWaiting(t *testing.T) {
	s := startStackWith(t, stackOptions{
		policy:    enforcementPolicy,
		hydraOpts: []hydratest.Option{hydratest.WithConfig("ttl.access_token", "4s")},
		extraConfig: `auth {
  clock_skew = "1s"
}
`,
		postgresLimits: `  limits {
    max_sessions_per_identity = 3
    max_pending               = 64
    login_timeout             = "10s"
  }
`,
	})
	ctx := context.Background()
	direct := s.pg.Conn(t, "orders")

	// Expiry: an idle listener.
	tok := s.token(t, "analytics-job")
	exp := expiryOf(t, tok)
	c, err := s.pgx(t, tok)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "LISTEN events"); err != nil {
		t.Fatal(err)
	}
	if _, err := direct.Exec(ctx, "NOTIFY events, 'before-expiry'"); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	n, err := c.WaitForNotification(wctx)
	cancel()
	// Masks apply to analytics, so the payload is withheld: it could
	// carry a masked value.
	const withheld = "(withheld by gatehouse: masks apply)"
	if err != nil || n.Payload != withheld {
		t.Fatalf("notification before expiry: %+v %v", n, err)
	}
	ended, err := waitGone(t, c, 10*time.Second)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "28000" {
		t.Fatalf("the session's end: %v", err)
	}
	if late := ended.Sub(exp.Add(time.Second)); late > time.Second {
		t.Errorf("ended %v after its token's expiry plus skew", late)
	}
	if _, err := direct.Exec(ctx, "NOTIFY events, 'after-expiry'"); err != nil {
		t.Fatal(err)
	}

	// A revoking swap: an idle listener with a fresh token.
	c2, err := s.pgx(t, s.token(t, "analytics-job"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Exec(ctx, "LISTEN events"); err != nil {
		t.Fatal(err)
	}
	published := s.republish(t, enforcementPolicy(s.hydra.Issuer(), s.pg.Addr())+`
policy "revoke" {
  resources  = ["orders"]
  identities = ["analytics-job"]
  rule "out" {
    effect = "deny"
    on     = ["connect"]
    reason = "analytics is off the orders database"
  }
}`)
	ended, err = waitGone(t, c2, 10*time.Second)
	if !errors.As(err, &pe) || pe.Code != "42501" || !strings.Contains(pe.Message, "analytics is off") {
		t.Fatalf("the revoked session's end: %v", err)
	}
	if late := ended.Sub(published); late > time.Second {
		t.Errorf("ended %v after the swap", late)
	}
	s.republish(t, enforcementPolicy(s.hydra.Issuer(), s.pg.Addr()))

	// Its share: three sessions per identity; billing still gets in.
	var held []*pgx.Conn
	for i := 0; i < 3; i++ {
		hc, err := s.pgx(t, s.token(t, "analytics-job"))
		if err != nil {
			t.Fatalf("session %d: %v", i+1, err)
		}
		held = append(held, hc)
	}
	if _, err := s.pgx(t, s.token(t, "analytics-job")); !errors.As(err, &pe) || pe.Code != "53300" {
		t.Fatalf("a fourth session: %v", err)
	}
	if b, err := s.pgx(t, s.token(t, "billing-service")); err != nil {
		t.Fatalf("another identity: %v", err)
	} else {
		b.Close(ctx)
	}
	for _, hc := range held {
		hc.Close(ctx)
	}

	// 5,000 silent sockets.
	var (
		mu    sync.Mutex
		socks []net.Conn
		wg    sync.WaitGroup
	)
	for w := 0; w < 50; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100; i++ {
				sc, err := net.DialTimeout("tcp", s.pgAddr, 5*time.Second)
				if err != nil {
					t.Errorf("dial: %v", err)
					return
				}
				mu.Lock()
				socks = append(socks, sc)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	start := time.Now()
	b, err := s.pgx(t, s.token(t, "billing-service"))
	if err != nil {
		t.Fatalf("a caller among 5,000 silent sockets: %v", err)
	}
	b.Close(ctx)
	t.Logf("a caller among 5,000 silent sockets got in in %v", time.Since(start))
	for _, sc := range socks {
		sc.Close()
	}

	// 1,000 forged tokens, signed by a key Hydra never had, some with the
	// id of Hydra's own key.
	fetches := s.metric(t, "gatehouse_identity_key_fetches_total")
	forged := forgedTokens(t, s)
	for i := 0; i < 1000; i++ {
		if c, err := s.pgx(t, forged[i%len(forged)]); err == nil {
			c.Close(ctx)
			t.Fatal("a forged token was accepted")
		}
	}
	if d := s.metric(t, "gatehouse_identity_key_fetches_total") - fetches; d > 3 {
		t.Errorf("1,000 forged tokens caused %v key fetches", d)
	}

	// Hydra down during a reload: a token minted before still logs in.
	tok = s.token(t, "billing-service")
	s.hydra.Stop(t)
	s.republish(t, enforcementPolicy(s.hydra.Issuer(), s.pg.Addr())+"\n# a new revision\n")
	if b, err := s.pgx(t, tok); err != nil {
		t.Fatalf("a login through a reload while Hydra is down: %v", err)
	} else {
		b.Close(ctx)
	}

	// The expired listener's recording holds the notification it got, and
	// says why it ended.
	s.stopGateway(t)
	files, _ := filepath.Glob(filepath.Join(gateway.RecordingsDir(s.dataDir), "*.jsonl"))
	found := false
	for _, f := range files {
		evs, err := recorder.ReadEvents(f)
		if err != nil {
			t.Fatal(err)
		}
		var notes []string
		expired := false
		for _, ev := range evs {
			if ev.Type == recorder.TypeServer {
				notes = append(notes, ev.Text)
			}
			if ev.Type == recorder.TypeEnd && strings.Contains(ev.Reason, "token_expired") {
				expired = true
			}
		}
		if expired {
			found = true
			if strings.Join(notes, ",") != "(withheld by gatehouse: masks apply)" {
				t.Errorf("the expired listener's recording holds notifications %q", notes)
			}
		}
	}
	if !found {
		t.Error("no recording of a session ended at its token's expiry")
	}
}

// forgedTokens signs tokens for Hydra's issuer with a key of the test's
// own: one with the key id Hydra publishes, one with an unknown key id.
func forgedTokens(t *testing.T, s *stack) []string {
	t.Helper()
	resp, err := http.Get(s.hydra.JWKSURL())
	if err != nil {
		t.Fatal(err)
	}
	var set jose.JSONWebKeySet
	err = json.NewDecoder(resp.Body).Decode(&set)
	resp.Body.Close()
	if err != nil || len(set.Keys) == 0 {
		t.Fatalf("Hydra's JWKS: %v", err)
	}
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	claims := map[string]any{"iss": s.hydra.Issuer(), "sub": "analytics-job", "aud": []string{"gatehouse"},
		"exp": time.Now().Add(time.Hour).Unix(), "iat": time.Now().Unix()}
	var out []string
	for _, kid := range []string{set.Keys[0].KeyID, "forged-key"} {
		signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", kid).WithType("JWT"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(claims)
		jws, err := signer.Sign(b)
		if err != nil {
			t.Fatal(err)
		}
		tok, _ := jws.CompactSerialize()
		out = append(out, tok)
	}
	return out
}

// republish builds a bundle from a policy and writes it where the gateway
// watches, and returns when the gateway had activated it.
func (s *stack) republish(t *testing.T, policy string) time.Time {
	t.Helper()
	before := s.bundleRevision(t)
	if err := os.WriteFile(filepath.Join(s.policyDir, "policy.hcl"), []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(gatehouseBin, "bundle", "build", s.policyDir, "--key", s.keyFile, "--revision", fmt.Sprint(before+1), "--out", s.bundleFile+".new").CombinedOutput()
	if err != nil {
		t.Fatalf("bundle build: %v\n%s", err, out)
	}
	if err := os.Rename(s.bundleFile+".new", s.bundleFile); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if s.bundleRevision(t) > before {
			return time.Now()
		}
	}
	t.Fatal("the new bundle was not activated")
	return time.Time{}
}

// bundleRevision is the gateway's active revision.
func (s *stack) bundleRevision(t *testing.T) uint64 {
	t.Helper()
	resp, err := http.Get("http://" + s.adminAddr + "/v1/bundle")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct {
		Revision uint64 `json:"revision"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&st)
	return st.Revision
}
