package postgres

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestMasking: masks follow a column to its table column whatever the
// query calls it, in text and binary formats, and unless lifts them.
func TestMasking(t *testing.T) {
	e := startEnv(t)
	queries := map[string]string{
		"alias": "SELECT email AS e, card_number AS c FROM customers WHERE id = 1",
		"join":  "SELECT o.id, c.email, c.card_number FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id = 1",
		"star":  "SELECT id, email, card_number FROM (SELECT * FROM customers) x WHERE id = 1",
	}
	modes := map[string]pgx.QueryExecMode{
		"simple (text)":            pgx.QueryExecModeSimpleProtocol,
		"extended (binary result)": pgx.QueryExecModeCacheStatement,
		"extended exec":            pgx.QueryExecModeExec,
	}
	c := e.connect(t, "analytics-job")
	pci := e.connect(t, "pci-auditor")
	for qn, q := range queries {
		for mn, mode := range modes {
			t.Run(qn+"/"+mn, func(t *testing.T) {
				vals := rowStrings(t, c, q, mode)
				if !contains(vals, "j***@example.com") || !contains(vals, "[REDACTED]") || contains(vals, "jane.doe@example.com") || contains(vals, "4111 1111 1111 1111") {
					t.Errorf("analytics-job sees %q", vals)
				}
				vals = rowStrings(t, pci, q, mode)
				if !contains(vals, "4111 1111 1111 1111") || !contains(vals, "j***@example.com") {
					t.Errorf("pci-auditor sees %q", vals)
				}
			})
		}
	}
}

func rowStrings(t *testing.T, c *pgx.Conn, q string, mode pgx.QueryExecMode) []string {
	t.Helper()
	rows, err := c.Query(context.Background(), q, mode)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vals {
			if s, ok := v.(string); ok {
				out = append(out, s)
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}
