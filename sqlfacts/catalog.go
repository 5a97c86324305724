package sqlfacts

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"slices"
	"sync"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

//go:generate go run ./internal/gencatalog pgcatalog15.json

// Catalog answers what lineage needs to know about the objects a statement
// names. The gateway's implementation asks the upstream's catalog (cached
// per bundle revision); Builtins knows PostgreSQL 15's own catalog and
// nothing else, which is what `gatehouse eval` has without a database.
type Catalog interface {
	// Relation resolves a relation as the caller's session would: schema
	// is "" for an unqualified name. It returns nil, nil when no such
	// relation exists.
	Relation(schema, name string) (*RelationInfo, error)
	// Function describes the functions a call may resolve to: schema is
	// "" for an unqualified call. It returns nil, nil when none exists.
	Function(schema, name string) (*FunctionInfo, error)
}

// OperatorCatalog is a Catalog that also knows the database's operators.
// Without one, an unqualified operator is taken for a built-in.
type OperatorCatalog interface {
	// UserOperator reports whether an operator of that name is defined
	// outside pg_catalog.
	UserOperator(name string) (bool, error)
}

// RelationInfo describes a table, view or other relation.
type RelationInfo struct {
	Schema string
	Name   string
	// Kind is table, view, materialized view, foreign table, partitioned
	// table, sequence, ...
	Kind string
	// Columns in order. When Open is set the list is incomplete: the
	// relation's columns are not known, and these are only the ones known
	// to matter (masked columns, to a catalog built from masks).
	Columns []string
	Open    bool
	// View is the SELECT of a view or materialized view.
	View string
	// Descendants are an inherited or partitioned table's children, and
	// theirs, as QualifiedName: a read of the table returns their rows, so
	// each column carries their same-named columns' values too.
	Descendants []string
	// Ancestors are the tables it inherits from (a partition's parent),
	// and theirs: an inherited column is the ancestor's, so a mask on the
	// ancestor's column covers it here too.
	Ancestors []string
	// Unique are the columns a unique index or exclusion constraint
	// checks ("*": every column, for one over expressions or with a
	// predicate), and References each foreign key column's referenced
	// columns (ColumnName): whether a write of a value fails, or which
	// row ON CONFLICT finds, says whether the value is there.
	Unique     []string
	References map[string][]string
}

// FunctionInfo describes what a call to a function name may run. When a
// name has several overloads (or candidates in several schemas) it
// describes the most dangerous: the most volatile, built in only when all
// are.
type FunctionInfo struct {
	// Schema is where the function lives: pg_catalog for a built-in.
	Schema string
	Name   string
	// Volatility is immutable, stable, volatile or unknown.
	Volatility string
	// Builtin is true for PostgreSQL's own functions (pg_catalog).
	Builtin bool
	// Aggregate and Window say what kind of function it is.
	Aggregate bool
	Window    bool
	// Out names the columns of a function returning rows (OUT and TABLE
	// parameters), when known.
	Out    []string
	Retset bool
}

// schemaOr is the function's schema, "" for a nil one.
func (f *FunctionInfo) schemaOr() string {
	if f == nil {
		return ""
	}
	return f.Schema
}

// Volatility classes, as pg_proc.provolatile spells them in words.
const (
	Immutable = "immutable"
	Stable    = "stable"
	Volatile  = "volatile"
	Unknown   = "unknown"
)

//go:embed pgcatalog15.json
var pgCatalogJSON []byte

type builtinCatalog struct {
	functions map[string]*FunctionInfo
	relations map[string]*RelationInfo
}

var builtins = sync.OnceValue(func() *builtinCatalog {
	var raw struct {
		Functions []struct {
			Name       string   `json:"name"`
			Volatility string   `json:"volatility"`
			Kind       string   `json:"kind"`
			Retset     bool     `json:"retset"`
			Out        []string `json:"out"`
		} `json:"functions"`
		Relations []struct {
			Name    string   `json:"name"`
			Kind    string   `json:"kind"`
			Columns []string `json:"columns"`
			View    string   `json:"view"`
		} `json:"relations"`
	}
	if err := json.Unmarshal(pgCatalogJSON, &raw); err != nil {
		panic(fmt.Sprintf("sqlfacts: embedded catalog: %v", err))
	}
	c := &builtinCatalog{functions: map[string]*FunctionInfo{}, relations: map[string]*RelationInfo{}}
	for _, f := range raw.Functions {
		c.functions[f.Name] = &FunctionInfo{
			Schema: "pg_catalog", Name: f.Name, Volatility: VolatilityName(f.Volatility), Builtin: true,
			Aggregate: f.Kind == "a", Window: f.Kind == "w", Out: f.Out, Retset: f.Retset,
		}
	}
	for _, r := range raw.Relations {
		c.relations[r.Name] = &RelationInfo{Schema: "pg_catalog", Name: r.Name, Kind: RelationKind(r.Kind), Columns: r.Columns, View: r.View}
	}
	return c
})

// VolatilityName spells pg_proc.provolatile ("i", "s", "v") in words.
func VolatilityName(code string) string {
	switch code {
	case "i":
		return Immutable
	case "s":
		return Stable
	case "v":
		return Volatile
	}
	return Unknown
}

// RelationKind spells pg_class.relkind in words.
func RelationKind(code string) string {
	switch code {
	case "r":
		return "table"
	case "v":
		return "view"
	case "m":
		return "materialized view"
	case "f":
		return "foreign table"
	case "p":
		return "partitioned table"
	case "S":
		return "sequence"
	case "c":
		return "composite type"
	case "i", "I":
		return "index"
	case "t":
		return "TOAST table"
	}
	return "relation"
}

// BuiltinFunction describes a function of PostgreSQL 15's pg_catalog.
func BuiltinFunction(name string) (*FunctionInfo, bool) {
	f, ok := builtins().functions[name]
	return f, ok
}

// BuiltinRelation describes a table or view of PostgreSQL 15's pg_catalog.
func BuiltinRelation(name string) (*RelationInfo, bool) {
	r, ok := builtins().relations[name]
	return r, ok
}

// StaticCatalog is what is known without a database: PostgreSQL 15's own
// catalog, and of user tables only the columns listed (the masked ones).
// Any other relation is taken to be a table of unknown columns in the
// public schema, and any other function to be of unknown volatility.
type StaticCatalog struct {
	// Known lists known columns by "schema.table" (canonical spelling).
	Known map[string][]string
}

// NewStaticCatalog builds a StaticCatalog from canonical
// schema.table.column names.
func NewStaticCatalog(columns []string) *StaticCatalog {
	c := &StaticCatalog{Known: map[string][]string{}}
	for _, col := range columns {
		schema, table, column, err := bundle.ParseColumn(col)
		if err != nil {
			continue
		}
		key := QualifiedName(schema, table)
		if !slices.Contains(c.Known[key], column) {
			c.Known[key] = append(c.Known[key], column)
		}
	}
	return c
}

// Relation implements Catalog.
func (c *StaticCatalog) Relation(schema, name string) (*RelationInfo, error) {
	if schema == "" || schema == "pg_catalog" {
		if r, ok := BuiltinRelation(name); ok {
			return r, nil
		}
		if schema == "pg_catalog" {
			return nil, nil
		}
		schema = "public"
	}
	return &RelationInfo{Schema: schema, Name: name, Kind: "table", Open: true, Columns: c.Known[QualifiedName(schema, name)]}, nil
}

// Function implements Catalog.
func (c *StaticCatalog) Function(schema, name string) (*FunctionInfo, error) {
	if schema == "" || schema == "pg_catalog" {
		if f, ok := BuiltinFunction(name); ok {
			return f, nil
		}
	}
	return &FunctionInfo{Schema: schema, Name: name, Volatility: Unknown}, nil
}

// QualifiedName spells schema.name as masks and facts do: each part quoted
// only where SQL needs it.
func QualifiedName(schema, name string) string {
	return bundle.QuoteIdent(schema) + "." + bundle.QuoteIdent(name)
}

// ColumnName spells schema.table.column the same way.
func ColumnName(schema, table, column string) string {
	return QualifiedName(schema, table) + "." + bundle.QuoteIdent(column)
}
