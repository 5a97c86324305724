package gateway

import (
	"context"
	"crypto/ed25519"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/gateway/approval"
	"github.com/gatehouse-dev/gatehouse/gateway/approval/approvaltest"
	"github.com/gatehouse-dev/gatehouse/internal/pgtest"
)

func TestStateBlock(t *testing.T) {
	cfg, _, diags := ParseConfig([]byte(goodConfig), "gateway.hcl")
	if diags.HasErrors() || cfg.State.Postgres != "" {
		t.Fatalf("default: %+v %v", cfg.State, diags)
	}
	cfg, _, diags = ParseConfig([]byte(goodConfig+"\nstate {\n  postgres = \"file:/etc/gatehouse/state-dsn\"\n}\n"), "gateway.hcl")
	if diags.HasErrors() || cfg.State.Postgres != "file:/etc/gatehouse/state-dsn" {
		t.Fatalf("state: %+v %v", cfg.State, diags)
	}
	// The reference's state block is a valid one.
	ref, _, ok := strings.Cut(ConfigReference[strings.Index(ConfigReference, "\nstate {\n")+1:], "\n}\n")
	if !ok || !strings.HasPrefix(ref, "state {") {
		t.Fatal("ConfigReference has no state block")
	}
	cfg, _, diags = ParseConfig([]byte(goodConfig+ref+"\n}\n"), "gateway.hcl")
	if diags.HasErrors() || cfg.State.Postgres != "env:GATEHOUSE_STATE_DSN" {
		t.Fatalf("ConfigReference's state block: %v %+v", diags, cfg.State)
	}
	const dsn = "postgres://gatehouse:hunter2@db.internal/state"
	block := func(body string) string { return goodConfig + "\nstate {\n" + body + "}\n" }
	tests := map[string]struct {
		src, want string
		line      int
	}{
		"a DSN in clear":      {block(`  postgres = "` + dsn + `"` + "\n"), "Not a secret reference", 15},
		"a k8s reference":     {block(`  postgres = "k8s:gatehouse/state#dsn"` + "\n"), "Not a secret reference", 15},
		"an empty block":      {block(""), "Missing required argument", 14},
		"an unknown argument": {block(`  postgres = "env:DSN"` + "\n" + `  dsn = "env:DSN"` + "\n"), "Unsupported argument", 16},
		"two blocks":          {block(`  postgres = "env:DSN"`+"\n") + "state {\n  postgres = \"env:DSN\"\n}\n", "Duplicate block", 17},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, _, diags := ParseConfig([]byte(tc.src), "gateway.hcl")
			for _, d := range diags {
				if d.Summary == tc.want {
					if d.Subject == nil || d.Subject.Start.Line != tc.line {
						t.Errorf("at %v, want line %d", d.Subject, tc.line)
					}
					if strings.Contains(d.Detail, "hunter2") {
						t.Errorf("the diagnostic repeats the DSN: %s", d.Detail)
					}
					return
				}
			}
			t.Fatalf("diags %v, want %q", diags, tc.want)
		})
	}
}

// stateConfig is an SSH-only gateway config whose approvals live in the
// database env names.
func stateConfig(t *testing.T, env string) *Config {
	t.Helper()
	dir := t.TempDir()
	k, err := bundle.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := bundle.MarshalPublicKey(k.Public().(ed25519.PublicKey))
	if err := os.WriteFile(filepath.Join(dir, "trusted.pub"), pub, 0o644); err != nil {
		t.Fatal(err)
	}
	return &Config{DataDir: filepath.Join(dir, "data"), SSH: &SSHListener{Listen: "127.0.0.1:0"},
		Bundle: BundleSource{File: filepath.Join(dir, "policy.bundle"), TrustedKeys: []string{filepath.Join(dir, "trusted.pub")}, PollInterval: time.Second},
		State:  StateConfig{Postgres: "env:" + env}}
}

// newStopped makes a gateway and, when the test ends, runs it with a done
// context: Run closes what New opened.
func newStopped(t *testing.T, cfg *Config) *Gateway {
	t.Helper()
	g, err := New(cfg, WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_ = g.Run(ctx)
	})
	return g
}

// TestGatewayOnPostgresState: with a state block, two gateways keep their
// approvals in one database: a vote through one settles a request held
// on the other. --check reports the schema before and after.
func TestGatewayOnPostgresState(t *testing.T) {
	srv := pgtest.Start(t)
	srv.CreateRole(t, "gatehouse", "state-pw")
	srv.CreateDatabase(t, "state", "gatehouse")
	t.Setenv("GATEHOUSE_TEST_STATE_DSN", srv.ConnString("gatehouse", "state-pw", "state"))
	ctx := context.Background()

	a, b := stateConfig(t, "GATEHOUSE_TEST_STATE_DSN"), stateConfig(t, "GATEHOUSE_TEST_STATE_DSN")
	stateNote := func(cfg *Config) (string, error) {
		for _, c := range Preflight(ctx, cfg, PreflightOptions{}) {
			if c.What == "state database env:GATEHOUSE_TEST_STATE_DSN" {
				return c.Note, c.Err
			}
		}
		t.Fatal("Preflight has no state database check")
		return "", nil
	}
	if note, err := stateNote(a); err != nil || !strings.Contains(note, "no schema yet") {
		t.Errorf("check of an empty database: %q, %v", note, err)
	}

	ga, gb := newStopped(t, a), newStopped(t, b)
	if _, ok := ga.Approvals().(*approval.PGStore); !ok {
		t.Fatalf("approvals kept in %T, want the PostgreSQL store", ga.Approvals())
	}
	if _, err := os.Stat(ApprovalsDir(a.DataDir)); err == nil {
		t.Error("the gateway made an approvals directory though the state database keeps them")
	}
	if note, err := stateNote(a); err != nil || !strings.Contains(note, "current") {
		t.Errorf("check after start: %q, %v", note, err)
	}
	r, created, err := ga.Approvals().Open(ctx, approvaltest.Request(time.Now()))
	if err != nil || !created {
		t.Fatalf("Open: %v", err)
	}
	held, err := ga.Approvals().Settled(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	bob := approval.Principal{Name: "bob", Issuer: r.Requester.Issuer, Subject: "sub-bob", Groups: []string{"dba"}}
	if _, err := gb.Approvals().Vote(ctx, r.ID, bob, true, "through the other gateway"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-held:
	case <-time.After(5 * time.Second):
		t.Fatal("a vote through gateway b did not release the request held on gateway a")
	}

	t.Setenv("GATEHOUSE_TEST_STATE_DSN", "")
	if _, err := New(stateConfig(t, "GATEHOUSE_TEST_STATE_DSN"), WithLogger(slog.New(slog.DiscardHandler))); err == nil ||
		!strings.Contains(err.Error(), "state.postgres") || !strings.Contains(err.Error(), "not set") {
		t.Errorf("New without the DSN: %v", err)
	}
}

// TestBundleRollbackAcrossReplicas: replicas that share a state database
// share the bundle revision floor. A replica with an empty data directory
// (a new one, or one whose volume was replaced) must not accept an older
// signed bundle that an attacker with write access to the bundle source
// put back, once any replica has activated a newer one; nor a different
// bundle under the revision in force.
func TestBundleRollbackAcrossReplicas(t *testing.T) {
	srv := pgtest.Start(t)
	srv.CreateRole(t, "gatehouse", "state-pw")
	srv.CreateDatabase(t, "state", "gatehouse")
	t.Setenv("GATEHOUSE_TEST_FLOOR_DSN", srv.ConnString("gatehouse", "state-pw", "state"))
	k, err := bundle.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	a := stateConfig(t, "GATEHOUSE_TEST_FLOOR_DSN")
	b := stateConfig(t, "GATEHOUSE_TEST_FLOOR_DSN")
	c := stateConfig(t, "GATEHOUSE_TEST_FLOOR_DSN")
	pub, _ := bundle.MarshalPublicKey(k.Public().(ed25519.PublicKey))
	for _, cfg := range []*Config{a, b, c} {
		if err := os.WriteFile(cfg.Bundle.TrustedKeys[0], pub, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old, current := signedBundle(t, k, 1), signedBundle(t, k, 2)
	ga := newStopped(t, a)
	if _, err := ga.Store().Apply(old, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := ga.Store().Apply(current, "test"); err != nil {
		t.Fatal(err)
	}
	gb := newStopped(t, b)
	if _, err := gb.Store().Apply(old, "test"); !errors.Is(err, bundle.ErrRollback) {
		t.Fatalf("a fresh replica activated revision 1 after another activated revision 2: %v", err)
	}
	if cur := gb.Store().Current(); cur != nil {
		t.Fatalf("revision %d is active on the fresh replica", cur.Revision)
	}
	// Another bundle under the revision in force is not the one in force.
	forged := signedBundleAt(t, k, 2, time.Unix(1700000000, 0))
	if _, err := gb.Store().Apply(forged, "test"); !errors.Is(err, bundle.ErrRollback) {
		t.Fatalf("a fresh replica activated a second bundle of revision 2: %v", err)
	}
	// The bundle in force is accepted, and newer ones after it.
	if _, err := gb.Store().Apply(current, "test"); err != nil {
		t.Fatalf("the bundle in force: %v", err)
	}
	if _, err := gb.Store().Apply(signedBundle(t, k, 3), "test"); err != nil {
		t.Fatalf("a newer bundle: %v", err)
	}
	// A third replica, or one restarted without its data directory.
	gc := newStopped(t, c)
	if _, err := gc.Store().Apply(current, "test"); !errors.Is(err, bundle.ErrRollback) {
		t.Fatalf("a fresh replica activated revision 2 after another activated revision 3: %v", err)
	}
}

// TestStateKey: state.key authenticates the approval requests the
// gateway writes to the state database; a key too short stops the start.
func TestStateKey(t *testing.T) {
	cfg, _, diags := ParseConfig([]byte(goodConfig+"\nstate {\n  postgres = \"env:DSN\"\n  key = \"file:/etc/gatehouse/state.key\"\n}\n"), "gateway.hcl")
	if diags.HasErrors() || cfg.State.Key != "file:/etc/gatehouse/state.key" {
		t.Fatalf("state.key: %+v %v", cfg.State, diags)
	}
	if _, _, diags := ParseConfig([]byte(goodConfig+"\nstate {\n  postgres = \"env:DSN\"\n  key = \"0123456789abcdef0123456789abcdef\"\n}\n"), "gateway.hcl"); !diags.HasErrors() ||
		diags[0].Summary != "Not a secret reference" {
		t.Errorf("a key in clear: %v", diags)
	}
	srv := pgtest.Start(t)
	srv.CreateRole(t, "gatehouse", "state-pw")
	srv.CreateDatabase(t, "state", "gatehouse")
	t.Setenv("GATEHOUSE_TEST_STATE_DSN", srv.ConnString("gatehouse", "state-pw", "state"))
	t.Setenv("GATEHOUSE_TEST_STATE_KEY", "too short")
	c := stateConfig(t, "GATEHOUSE_TEST_STATE_DSN")
	c.State.Key = "env:GATEHOUSE_TEST_STATE_KEY"
	if _, err := New(c, WithLogger(slog.New(slog.DiscardHandler))); err == nil || !strings.Contains(err.Error(), "state.key") ||
		strings.Contains(err.Error(), "too short") {
		t.Fatalf("New with a short key: %v", err)
	}
	t.Setenv("GATEHOUSE_TEST_STATE_KEY", "0123456789abcdef0123456789abcdef")
	g := newStopped(t, c)
	r, _, err := g.Approvals().Open(context.Background(), approvaltest.Request(time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	var mac *string
	if err := srv.Conn(t, "state").QueryRow(context.Background(), "SELECT mac FROM gatehouse_approvals WHERE id = $1", r.ID).Scan(&mac); err != nil {
		t.Fatal(err)
	}
	if mac == nil || len(*mac) != 64 {
		t.Fatalf("the row's mac is %v, want an HMAC-SHA256", mac)
	}
}
