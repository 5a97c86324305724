package sqlfacts_test

import (
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

// TestLineageOfNestedRecursionIsBounded: recursive CTEs nested in each
// other are walked again at every level; the walk has a budget, and a
// statement over it is a problem (refused while masks apply), not a hang.
func TestLineageOfNestedRecursionIsBounded(t *testing.T) {
	q := "SELECT 1"
	for i := 0; i < 30; i++ {
		q = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n FROM r, (" + q + ") x) SELECT * FROM r"
	}
	start := time.Now()
	lins, err := sqlfacts.LineageOf(q, sqlfacts.NewStaticCatalog(nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatalf("took %v", time.Since(start))
	}
	if len(lins) != 1 || !strings.Contains(strings.Join(lins[0].Problems, " "), "too complex") {
		t.Fatalf("problems: %v", lins[0].Problems)
	}
}
