// Package quickstart embeds the quickstart policy and its sample data, so
// that `gatehouse dev` runs on a machine that has only the binary.
package quickstart

import "embed"

// Files holds the policy (*.hcl) and seed.sql, the rows of the orders
// database the policy describes.
//
//go:embed *.hcl seed.sql
var Files embed.FS

// Seeds maps a postgres resource of the policy to the SQL that fills its
// database.
var Seeds = map[string]string{"orders": "seed.sql"}
