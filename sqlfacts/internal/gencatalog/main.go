// Command gencatalog writes sqlfacts/pgcatalog15.json from a real
// PostgreSQL 15 catalog: every built-in function's volatility and kind, and
// every pg_catalog relation's columns and (for views) definition. The
// gateway asks the live catalog for user objects; this file is what
// `gatehouse eval` and the gateway know about the built-ins without a
// database. Run it with `go generate ./sqlfacts`.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/gatehouse-dev/gatehouse/internal/pgcluster"
)

type function struct {
	Name string `json:"name"`
	// Volatility is the most volatile of the name's overloads: i, s or v.
	Volatility string `json:"volatility"`
	// Kind is f (function), a (aggregate), w (window) or p (procedure);
	// several letters when overloads differ.
	Kind   string   `json:"kind"`
	Retset bool     `json:"retset,omitempty"`
	Out    []string `json:"out,omitempty"`
}

type relation struct {
	Name    string   `json:"name"`
	Kind    string   `json:"kind"`
	Columns []string `json:"columns"`
	View    string   `json:"view,omitempty"`
}

type catalog struct {
	Version   string     `json:"version"`
	Functions []function `json:"functions"`
	Relations []relation `json:"relations"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: gencatalog OUTPUT.json")
		os.Exit(2)
	}
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "gencatalog:", err)
		os.Exit(1)
	}
}

func run(out string) error {
	srv, err := pgcluster.Start()
	if err != nil {
		return err
	}
	defer srv.Close()
	conn, err := srv.Connect("postgres")
	if err != nil {
		return err
	}
	ctx := context.Background()
	defer conn.Close(ctx)
	var c catalog
	if err := conn.QueryRow(ctx, "SHOW server_version_num").Scan(&c.Version); err != nil {
		return err
	}
	rows, err := conn.Query(ctx, `
SELECT proname, max(provolatile::text), string_agg(DISTINCT prokind::text, ''), bool_or(proretset),
       coalesce((SELECT array_agg(n::text ORDER BY i) FROM pg_catalog.pg_proc q, unnest(q.proargnames, q.proargmodes::text[]) WITH ORDINALITY u(n, m, i)
                 WHERE q.oid = min(p.oid) AND m IN ('o', 't', 'b')), '{}')
FROM pg_catalog.pg_proc p WHERE pronamespace = 'pg_catalog'::regnamespace
GROUP BY proname ORDER BY proname`)
	if err != nil {
		return err
	}
	for rows.Next() {
		var f function
		if err := rows.Scan(&f.Name, &f.Volatility, &f.Kind, &f.Retset, &f.Out); err != nil {
			return err
		}
		c.Functions = append(c.Functions, f)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	rows, err = conn.Query(ctx, `
SELECT c.relname, c.relkind::text, coalesce(CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END, ''),
       coalesce((SELECT array_agg(attname::text ORDER BY attnum) FROM pg_attribute WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped), '{}')
FROM pg_catalog.pg_class c
WHERE c.relnamespace = 'pg_catalog'::regnamespace AND c.relkind IN ('r', 'v', 'm', 'f', 'p')
ORDER BY c.relname`)
	if err != nil {
		return err
	}
	for rows.Next() {
		var r relation
		if err := rows.Scan(&r.Name, &r.Kind, &r.View, &r.Columns); err != nil {
			return err
		}
		r.View = strings.TrimSpace(r.View)
		c.Relations = append(c.Relations, r)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	b, err := json.MarshalIndent(c, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(out, append(b, '\n'), 0o644)
}
