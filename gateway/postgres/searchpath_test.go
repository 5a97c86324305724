package postgres

import (
	"slices"
	"testing"
)

// TestSearchPathKeepsSchemasNotYetCreated: schemas of the setting that do
// not exist stay at their place (the caller could create them); existing
// ones PostgreSQL leaves out (no USAGE) stay out.
func TestSearchPathKeepsSchemasNotYetCreated(t *testing.T) {
	for _, c := range []struct {
		setting string
		current []string
		exists  map[string]bool
		want    []string
	}{
		{`"$user", public`, []string{"pg_catalog", "public"}, nil, []string{"pg_catalog", "app", "public"}},
		{`"$user", public`, []string{"pg_temp_3", "pg_catalog", "public"}, nil, []string{"pg_temp_3", "pg_catalog", "app", "public"}},
		{`"$user", public`, []string{"pg_catalog", "app", "public"}, nil, []string{"pg_catalog", "app", "public"}},
		{`public, "$user"`, []string{"pg_catalog", "public"}, nil, []string{"pg_catalog", "public", "app"}},
		{`secret, public`, []string{"pg_catalog", "public"}, map[string]bool{"secret": true}, []string{"pg_catalog", "public"}},
		{`public, pg_catalog, Later`, []string{"public", "pg_catalog"}, nil, []string{"public", "pg_catalog", "later"}},
		{`"My ""S""", pg_temp, public`, []string{"pg_catalog", "public"}, nil, []string{"pg_catalog", `My "S"`, "public"}},
		{``, []string{"pg_catalog"}, nil, []string{"pg_catalog"}},
	} {
		items := searchPathItems(c.setting, "app")
		if got := mergeSearchPath(c.current, items, c.exists); !slices.Equal(got, c.want) {
			t.Errorf("%s over %q: got %q, want %q", c.setting, c.current, got, c.want)
		}
	}
}
