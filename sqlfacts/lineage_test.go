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

// TestLineageFlowsInOrder: the flows of a write come out in one order every
// time (they were taken from a map), so a refusal names the same column
// each time the statement is judged.
func TestLineageFlowsInOrder(t *testing.T) {
	q := "INSERT INTO payments (note, memo, ref, extra, other) SELECT email, card_number, name, email, card_number FROM customers"
	var first string
	for i := 0; i < 50; i++ {
		lins, err := sqlfacts.LineageOf(q, sqlfacts.NewStaticCatalog(nil), nil)
		if err != nil || len(lins) != 1 {
			t.Fatal(lins, err)
		}
		var into []string
		for _, f := range lins[0].Flows {
			into = append(into, f.Into)
		}
		got := strings.Join(into, ",")
		if len(lins[0].Flows) != 5 {
			t.Fatalf("flows: %s", got)
		}
		if i == 0 {
			first = got
		} else if got != first {
			t.Fatalf("flows in another order: %s, then %s", first, got)
		}
	}
}

// TestLineageGeneratedColumns: the columns a clause adds carry what they
// are computed from, and an XMLTABLE column what its DEFAULT gives it.
func TestLineageGeneratedColumns(t *testing.T) {
	const email = "public.customers.email"
	for _, c := range []struct {
		sql  string
		want []string // per output: its sources, "+" marking derived ones
	}{
		{"WITH RECURSIVE t(x) AS (SELECT email FROM customers UNION ALL SELECT x FROM t WHERE false) SEARCH DEPTH FIRST BY x SET ord SELECT ord FROM t",
			[]string{"+" + email}},
		{"WITH RECURSIVE t(x, n) AS (SELECT email, 1 FROM customers UNION ALL SELECT x, n + 1 FROM t WHERE n < 3) CYCLE x SET is_cycle USING path SELECT is_cycle, path, n FROM t",
			[]string{"+" + email, "+" + email, ""}},
	} {
		t.Run(c.sql, func(t *testing.T) {
			lins, err := sqlfacts.LineageOf(c.sql, sqlfacts.NewStaticCatalog([]string{email}), nil)
			if err != nil || len(lins) != 1 {
				t.Fatal(lins, err)
			}
			if len(lins[0].Problems) > 0 {
				t.Fatalf("problems: %v", lins[0].Problems)
			}
			var got []string
			for _, o := range lins[0].Outputs {
				var srcs []string
				for _, s := range o.Sources {
					if s.Derived {
						srcs = append(srcs, "+"+s.Column)
					} else {
						srcs = append(srcs, s.Column)
					}
				}
				got = append(got, strings.Join(srcs, " "))
			}
			if strings.Join(got, ",") != strings.Join(c.want, ",") {
				t.Fatalf("sources %q, want %q", got, c.want)
			}
		})
	}
}

// parentCatalog is a static catalog where public.parent is inherited by
// public.customers.
type parentCatalog struct{ *sqlfacts.StaticCatalog }

func (c parentCatalog) Relation(schema, name string) (*sqlfacts.RelationInfo, error) {
	info, err := c.StaticCatalog.Relation(schema, name)
	switch {
	case info != nil && name == "parent":
		info.Columns, info.Open = []string{"id", "email"}, false
		info.Descendants = []string{sqlfacts.QualifiedName("public", "customers")}
	case info != nil && name == "customers_2024":
		info.Columns, info.Open = []string{"id", "email"}, false
		info.Ancestors = []string{sqlfacts.QualifiedName("public", "customers")}
	}
	return info, err
}

// TestLineageThroughDescendants: a read of an inherited table returns its
// descendants' rows, so each of its columns carries their same-named
// columns' values; a partition's inherited columns are its ancestors'.
func TestLineageThroughDescendants(t *testing.T) {
	lins, err := sqlfacts.LineageOf("SELECT p.email, id FROM parent p", parentCatalog{sqlfacts.NewStaticCatalog(nil)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range lins[0].Outputs[0].Sources {
		got = append(got, s.Column)
	}
	if strings.Join(got, " ") != "public.parent.email public.customers.email" {
		t.Fatalf("sources of parent.email: %q", got)
	}
	// A partition's inherited column is its ancestor's.
	lins, err = sqlfacts.LineageOf("SELECT email FROM customers_2024", parentCatalog{sqlfacts.NewStaticCatalog(nil)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	got = nil
	for _, s := range lins[0].Outputs[0].Sources {
		got = append(got, s.Column)
	}
	if strings.Join(got, " ") != "public.customers_2024.email public.customers.email" {
		t.Fatalf("sources of customers_2024.email: %q", got)
	}
}
