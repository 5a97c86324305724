package postgres

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/gatehouse-dev/gatehouse/internal/oidctest"
)

// TestBadTokens: every kind of bad token is refused with SQLSTATE 28000,
// and none of them opens a connection to the database.
func TestBadTokens(t *testing.T) {
	e := startEnv(t)
	other := oidctest.Start(t)
	foreign, _ := rsa.GenerateKey(rand.Reader, 2048)
	claims := func(edit func(map[string]any)) map[string]any {
		c := e.issuer.Claims("billing-service", "gatehouse")
		edit(c)
		return c
	}
	good := e.issuer.Token(t, "billing-service", "gatehouse")
	tokens := map[string]string{
		"expired":                            e.issuer.Sign(t, claims(func(c map[string]any) { c["exp"] = time.Now().Add(-time.Hour).Unix() })),
		"not yet valid":                      e.issuer.Sign(t, claims(func(c map[string]any) { c["nbf"] = time.Now().Add(time.Hour).Unix() })),
		"wrong audience":                     e.issuer.Sign(t, claims(func(c map[string]any) { c["aud"] = []string{"someone-else"} })),
		"wrong issuer":                       e.issuer.Sign(t, claims(func(c map[string]any) { c["iss"] = "https://evil.example.com" })),
		"alg none":                           oidctest.Unsigned(claims(func(map[string]any) {})),
		"HS256 with the issuer's public key": oidctest.SignWith(t, jose.SigningKey{Algorithm: jose.HS256, Key: e.issuer.PublicKeyBytes(t)}, "key-1", claims(func(map[string]any) {})),
		"unknown kid":                        oidctest.SignWith(t, jose.SigningKey{Algorithm: jose.RS256, Key: foreign}, "key-404", claims(func(map[string]any) {})),
		"tampered payload":                   oidctest.Tamper(t, good, claims(func(c map[string]any) { c["sub"] = "pci-auditor" })),
		"issuer not in the bundle":           other.Token(t, "billing-service", "gatehouse"),
		"a password, not a token":            e.pgPass,
		"empty":                              "",
	}
	ctx := context.Background()
	for name, tok := range tokens {
		t.Run(name, func(t *testing.T) {
			c, err := pgx.Connect(ctx, e.connString(tok))
			if err == nil {
				c.Close(ctx)
				t.Fatal("connected")
			}
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "28000" {
				t.Fatalf("got %v, want SQLSTATE 28000", err)
			}
			if strings.Contains(err.Error(), e.pgPass) {
				t.Error("the error shows the upstream password")
			}
			if n := e.pg.Conns(t, "orders"); n != 0 {
				t.Errorf("%d upstream connections after a refused token", n)
			}
		})
	}
}

// TestStartupRefusals: startup settings that would act before policy sees a
// statement are refused, and plaintext is refused without TLS.
func TestStartupRefusals(t *testing.T) {
	e := startEnv(t)
	ctx := context.Background()
	tok := e.issuer.Token(t, "billing-service", "gatehouse")
	for name, extra := range map[string]string{
		"options role":    "options='-c role=postgres'",
		"search_path":     "search_path=evil",
		"replication":     "replication=database",
		"client encoding": "client_encoding=SJIS",
	} {
		t.Run(name, func(t *testing.T) {
			cfg, err := pgx.ParseConfig(e.connString(tok, extra))
			if err != nil {
				t.Fatal(err)
			}
			c, err := pgx.ConnectConfig(ctx, cfg)
			if err == nil {
				c.Close(ctx)
				t.Fatal("connected")
			}
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || (pgErr.Code != "28000" && pgErr.Code != "22023") {
				t.Fatalf("got %v", err)
			}
			if n := e.pg.Conns(t, "orders"); n != 0 {
				t.Errorf("%d upstream connections", n)
			}
		})
	}
	t.Run("unknown database", func(t *testing.T) {
		_, err := pgx.Connect(ctx, strings.Replace(e.connString(tok), "dbname=orders", "dbname=payroll", 1))
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "3D000" {
			t.Fatalf("got %v", err)
		}
	})
}
