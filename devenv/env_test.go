package devenv

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

const policyHCL = `
identity_provider "ci" {
  issuer    = "https://token.actions.example.com"
  audiences = ["gatehouse"]
}

identity "deployer" {
  provider = "ci"
  match    = "identity.subject.startsWith('repo:acme/') && identity.claims.?ref.orValue('') == 'refs/heads/main'"
}

postgres "inventory" {
  address  = "inventory.internal:5432"
  database = "inventory"
  username = "inventory_rw"
  password = "env:INVENTORY_PASSWORD"
}

policy "deployer" {
  resources  = ["inventory"]
  identities = ["deployer"]
  rule "read" {
    effect = "allow"
    when   = "request.statements.all(s, s.command == 'SELECT')"
    reason = "deploys may read"
  }
}

test "deployer reads" {
  identity = "deployer"
  subject  = "repo:acme/api"
  claims   = { ref = "refs/heads/main" }
  resource = "inventory"
  sql      = "SELECT * FROM items"
  expect   = "allow"
}
`

func writePolicy(t *testing.T, src string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "policy.hcl"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// A policy directory of the user's own: the match-based identity gets the
// subject and claims of its test, the database is seeded, and a token
// from the development issuer opens a session through the real gateway.
func TestStartOwnPolicy(t *testing.T) {
	var progress strings.Builder
	env, err := Start(t.Context(), Options{
		PolicyDir: writePolicy(t, policyHCL),
		Seeds:     map[string]string{"inventory": "CREATE TABLE items (id int, name text); INSERT INTO items VALUES (1, 'bolt');"},
		Listen:    "127.0.0.1:0",
		Progress:  &progress,
	})
	if err != nil {
		t.Fatal(err)
	}
	dir := env.Dir
	defer func() {
		if err := env.Close(); err != nil {
			t.Error(err)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("%s remains after Close: %v", dir, err)
		}
	}()
	c, ok := env.Caller("deployer")
	if !ok || c.Subject != "repo:acme/api" || c.Claims["ref"] != "refs/heads/main" {
		t.Fatalf("caller %+v, ok %v", c, ok)
	}
	if env.Model.IdentityProviders[0].Issuer != env.Issuer.URL("ci") || env.Model.Postgres[0].Address != env.PG.Addr() {
		t.Errorf("model not rewritten: %+v %+v", env.Model.IdentityProviders[0], env.Model.Postgres[0])
	}
	if !strings.HasPrefix(env.Model.Postgres[0].Password, "file:") {
		t.Errorf("password reference %q", env.Model.Postgres[0].Password)
	}
	bundleBytes, err := os.ReadFile(env.BundleFile)
	if err != nil {
		t.Fatal(err)
	}
	// The signed payload is base64 inside the envelope: look at it decoded.
	_, envelope, err := bundle.ReadUnverified(bundleBytes)
	if err != nil {
		t.Fatal(err)
	}
	if bundleBytes, err = base64.StdEncoding.DecodeString(envelope.Payload); err != nil || !bytes.Contains(bundleBytes, []byte(env.PG.Addr())) {
		t.Fatalf("payload: %v", err)
	}
	pw, _ := os.ReadFile(strings.TrimPrefix(env.Model.Postgres[0].Password, "file:"))
	if len(pw) == 0 || strings.Contains(string(bundleBytes), string(pw)) || strings.Contains(env.Model.Postgres[0].Password, string(pw)) {
		t.Error("the upstream password is missing, or in the bundle")
	}

	tok, err := env.Token("deployer")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, env.ConnString("inventory", "deployer")+" password="+tok)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var name string
	if err := conn.QueryRow(ctx, "SELECT name FROM items WHERE id = 1").Scan(&name); err != nil || name != "bolt" {
		t.Fatalf("select: %q %v", name, err)
	}
	_, err = conn.Exec(ctx, "DELETE FROM items WHERE id = 1")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
		t.Errorf("delete: %v", err)
	}
	for _, want := range []string{"postgres: a throwaway cluster", `database "inventory": seeded`, "DEVELOPMENT ONLY", "gateway: postgres on"} {
		if !strings.Contains(progress.String(), want) {
			t.Errorf("progress lacks %q:\n%s", want, progress.String())
		}
	}
}

func TestStartRefuses(t *testing.T) {
	failing := strings.Replace(policyHCL, `expect   = "allow"`, `expect   = "deny"`, 1)
	noPostgres := policyHCL[:strings.Index(policyHCL, `postgres "inventory"`)]
	for name, tc := range map[string]struct {
		opts Options
		want string
	}{
		"a broken policy":    {Options{PolicyDir: writePolicy(t, "identity {")}, "error(s) in the policy"},
		"a failing test":     {Options{PolicyDir: writePolicy(t, failing)}, `policy test(s) fail (deployer reads)`},
		"no postgres":        {Options{PolicyDir: writePolicy(t, noPostgres)}, "no postgres, ssh_host or kubernetes_cluster resource"},
		"an unknown seed":    {Options{PolicyDir: writePolicy(t, policyHCL), Seeds: map[string]string{"nope": "SELECT 1"}}, `seed for "nope"`},
		"a public listener":  {Options{PolicyDir: writePolicy(t, policyHCL), Listen: "0.0.0.0:0"}, "only listens on loopback"},
		"a seed that breaks": {Options{PolicyDir: writePolicy(t, policyHCL), Seeds: map[string]string{"inventory": "CREATE TABLE"}}, `seeding "inventory"`},
	} {
		t.Run(name, func(t *testing.T) {
			env, err := Start(t.Context(), tc.opts)
			if err == nil {
				env.Close()
				t.Fatal("started")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q lacks %q", err, tc.want)
			}
		})
	}
}
