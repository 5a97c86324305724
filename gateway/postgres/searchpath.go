package postgres

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	pg "github.com/pganalyze/pg_query_go/v6"
)

// searchPathSQL reads what a session's unqualified names resolve through:
// the schemas searched now (current_schemas(true), with the implicit
// pg_temp and pg_catalog), and the search_path setting those come from,
// with the name "$user" stands for.
const searchPathSQL = "SELECT s FROM pg_catalog.unnest(pg_catalog.current_schemas(true)) AS s; " +
	"SELECT pg_catalog.current_setting('search_path'), pg_catalog.current_user()"

// readSearchPath is the search path a session's names resolve through,
// now and later. PostgreSQL leaves a schema of the setting out of
// current_schemas while it does not exist ("$user" until a schema named
// after the role is created): such a schema is kept at its place, since
// the caller could create it, and a function there would then shadow a
// built-in for the server but not for the gateway. A schema that exists
// and is left out (no USAGE) stays out, as PostgreSQL has it.
func readSearchPath(ctx context.Context, pc *pgconn.PgConn) ([]string, error) {
	rs, err := pc.Exec(ctx, searchPathSQL).ReadAll()
	if err != nil {
		return nil, err
	}
	if len(rs) != 2 || len(rs[1].Rows) != 1 {
		return nil, fmt.Errorf("reading the search path: unexpected results")
	}
	var current []string
	for _, row := range rs[0].Rows {
		current = append(current, string(row[0]))
	}
	items := searchPathItems(string(rs[1].Rows[0][0]), string(rs[1].Rows[0][1]))
	var absent []string
	for _, it := range items {
		if !inPath(current, it) && it != "pg_temp" && it != "pg_catalog" {
			absent = append(absent, it)
		}
	}
	if len(absent) == 0 {
		return current, nil
	}
	r := pc.ExecParams(ctx, "SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname = ANY($1::text[])",
		[][]byte{[]byte(textArray(absent))}, nil, nil, nil).Read()
	if r.Err != nil {
		return nil, r.Err
	}
	exists := map[string]bool{}
	for _, row := range r.Rows {
		exists[string(row[0])] = true
	}
	return mergeSearchPath(current, items, exists), nil
}

// mergeSearchPath puts into current (the schemas searched now) the items
// of the setting that do not exist, each after the item before it.
func mergeSearchPath(current, items []string, exists map[string]bool) []string {
	var out []string
	i := 0
	// pg_temp and pg_catalog lead when the setting does not place them.
	for i < len(current) && !slices.ContainsFunc(items, func(it string) bool { return samePathSchema(current[i], it) }) {
		out = append(out, current[i])
		i++
	}
	for _, it := range items {
		if j := slices.IndexFunc(current[i:], func(s string) bool { return samePathSchema(s, it) }); j >= 0 {
			out = append(out, current[i:i+j+1]...)
			i += j + 1
			continue
		}
		if it == "pg_temp" || it == "pg_catalog" || exists[it] || slices.Contains(out, it) || inPath(current, it) {
			continue
		}
		out = append(out, it)
	}
	return append(out, current[i:]...)
}

// samePathSchema says whether a schema of current_schemas is an item of
// the setting: pg_temp stands for the session's pg_temp_N.
func samePathSchema(schema, item string) bool {
	if item == "pg_temp" {
		return strings.HasPrefix(schema, "pg_temp_")
	}
	return schema == item
}

func inPath(path []string, item string) bool {
	return slices.ContainsFunc(path, func(s string) bool { return samePathSchema(s, item) })
}

// searchPathItems reads a search_path setting with PostgreSQL's own
// grammar (as the value of SET search_path): names separated by commas,
// unquoted ones folded to lower case, double quotes keeping case; "$user"
// stands for user. A setting that does not parse gives no items.
func searchPathItems(setting, user string) []string {
	tree, err := pg.Parse("SET search_path TO " + setting)
	if err != nil || len(tree.Stmts) != 1 {
		return nil
	}
	set := tree.Stmts[0].Stmt.GetVariableSetStmt()
	if set == nil {
		return nil
	}
	var items []string
	for _, a := range set.Args {
		c := a.GetAConst()
		if c == nil || c.GetSval() == nil {
			continue
		}
		name := c.GetSval().Sval
		if name == "$user" {
			name = user
		}
		if name != "" {
			items = append(items, name)
		}
	}
	return items
}
