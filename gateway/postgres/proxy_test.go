package postgres

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestSmoke(t *testing.T) {
	e := startEnv(t)
	ctx := context.Background()
	c := e.connect(t, "billing-service")
	var email, card string
	if err := c.QueryRow(ctx, "SELECT email AS e, card_number FROM customers WHERE id = 1").Scan(&email, &card); err != nil {
		t.Fatal(err)
	}
	t.Logf("email=%q card=%q", email, card)
	_, err := c.Exec(ctx, "DROP TABLE customers")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
		t.Fatalf("DROP: %v", err)
	}
	t.Logf("deny: %s", pgErr.Message)
	var n int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM orders").Scan(&n); err != nil || n != 2 {
		t.Fatalf("after a denial the session is usable: %v %d", err, n)
	}
}
