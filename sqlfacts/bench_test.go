package sqlfacts_test

import (
	"testing"

	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

func BenchmarkAnalyze(b *testing.B) {
	for _, bc := range []struct{ name, sql string }{
		{"point_select", "SELECT id, email FROM users WHERE id = $1"},
		{"short_insert", "INSERT INTO events (kind, payload) VALUES ('login', '{}')"},
		{"two_statements", "SET search_path TO app; SELECT * FROM orders WHERE id = 42"},
		{"cte_delete", "WITH gone AS (DELETE FROM sessions WHERE expires_at < now() RETURNING id) SELECT count(*) FROM gone"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			if _, err := sqlfacts.Analyze(bc.sql); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.sql)))
			for b.Loop() {
				if _, err := sqlfacts.Analyze(bc.sql); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
