package celpolicy

// The facts of a PostgreSQL request, as rules see them in
// request.statements. Package sqlfacts fills them from PostgreSQL's own
// grammar; they live here, with the other kinds' request types, so that
// the policy engine (and the gateway's protocol-neutral core) does not
// depend on the SQL parser.

// Access says whether a statement reads or writes a table.
const (
	Read  = "read"
	Write = "write"
)

// Table is a table (or view, sequence, ...) a statement touches.
type Table struct {
	// Schema is as written. An unqualified name is in "pg_catalog" when it
	// names a catalog table or view (pg_catalog is searched first), else in
	// "public"; a temporary table's is "pg_temp". A changed search_path
	// changes what an unqualified name means, so policies that rely on
	// schemas should also govern SET search_path.
	Schema string `cel:"schema" json:"schema"`
	Name   string `cel:"name" json:"name"`
	// Access is "read" or "write". A table both read and written is "write".
	Access string `cel:"access" json:"access"`
	// Via is, for a relation the statement reads only through a view or
	// a materialized view it names (or REFRESHes), that view as
	// schema.name; "" for a relation the statement names. A rule that
	// denies a table by name sees it read through any view, and one that
	// allows a view as a boundary over its tables can say which:
	// t.via == 'public.payments_summary'.
	Via string `cel:"via" json:"via,omitempty"`
}

// Statement is the facts about one statement.
type Statement struct {
	// Command is the statement's command tag, such as "SELECT", "INSERT",
	// "DELETE", "DROP TABLE", "TRUNCATE", "CREATE FUNCTION", "COPY", "DO",
	// "CALL", "SET", "SELECT INTO", "EXPLAIN". See docs/policy-language.md.
	Command string `cel:"command" json:"command"`
	// Tables touched, with read or write access, in first-seen order.
	Tables []Table `cel:"tables" json:"tables"`
	// Functions called, by bare name (without schema), sorted.
	Functions []string `cel:"functions" json:"functions"`
	// HasWhere is true when the statement's own WHERE clause refers to at
	// least one column. A WHERE that references no column (WHERE true,
	// WHERE 1=1) filters nothing and counts as no WHERE.
	HasWhere bool `cel:"has_where" json:"has_where"`
	// Setting is the run-time parameter of SET, RESET and SHOW, of
	// ALTER ROLE / ALTER DATABASE / ALTER SYSTEM ... SET, and of a
	// set_config() call, lower case ("role", "session_authorization",
	// "search_path", "transaction", "client_encoding" for SET NAMES); "*"
	// for set_config with a name that is not a constant.
	Setting string `cel:"setting" json:"setting,omitempty"`
	// CopyDirection is "to" or "from" for COPY.
	CopyDirection string `cel:"copy_direction" json:"copy_direction,omitempty"`
	// CopyTarget is "stdio", "file" or "program" for COPY.
	CopyTarget string `cel:"copy_target" json:"copy_target,omitempty"`
	// Locking is the strongest row lock a SELECT takes anywhere in the
	// statement: "FOR UPDATE", "FOR NO KEY UPDATE", "FOR SHARE" or
	// "FOR KEY SHARE". Locking rows blocks writers, so a read-only caller
	// should not.
	Locking string `cel:"locking" json:"locking,omitempty"`
	// SetOperation is true when the statement combines results with
	// UNION, INTERSECT or EXCEPT anywhere. PostgreSQL then reports the
	// leftmost branch as every column's origin, so masks by column cannot
	// trust the origin.
	SetOperation bool `cel:"set_operation" json:"set_operation,omitempty"`
	// Language is the procedural language of DO and CREATE FUNCTION.
	Language string `cel:"language" json:"language,omitempty"`
	// Via is empty for a statement as sent. For a statement found inside
	// another it says how it was reached: "WITH", "EXPLAIN",
	// "EXPLAIN ANALYZE", "PREPARE", "CREATE FUNCTION", "CREATE RULE", ...
	Via string `cel:"via" json:"via,omitempty"`
	// Fingerprint identifies the statement's shape regardless of constants
	// (pg_query fingerprint, hex).
	Fingerprint string `cel:"fingerprint" json:"fingerprint"`
	// Calls are the functions called, with what PostgreSQL's catalog says
	// of them, in first-seen order (see Call).
	Calls []Call `cel:"calls" json:"calls"`
	// VolatileFunctions names the called functions that may have side
	// effects: declared VOLATILE, or of unknown volatility (not built in,
	// and no database to ask). A function declared STABLE or IMMUTABLE
	// cannot modify data, so "only reads" is "no volatile function".
	VolatileFunctions []string `cel:"volatile_functions" json:"volatile_functions"`
	// ColumnUses are the columns whose values decide something other than
	// a result value, by clause: where, join, group, having, order,
	// window, distinct, set, case, filter, limit, expression (a
	// computation), conflict, execute. Columns are schema.table.column
	// as far as names resolve without the database's catalog (an
	// unqualified column of a join may be attributed to either side).
	ColumnUses []ColumnUse `cel:"column_uses" json:"column_uses"`
	// Text is the statement's source text. It is deliberately not visible
	// to CEL: policy must reason over parsed facts, not match text.
	Text string `cel:"-" json:"text"`
}

// Call is a function a statement calls.
type Call struct {
	// Name is the function's name, without schema.
	Name string `cel:"name" json:"name"`
	// Schema is where the function lives: "pg_catalog" for a built-in,
	// as written for a qualified call, else "" when not known.
	Schema string `cel:"schema" json:"schema"`
	// Volatility is "immutable", "stable", "volatile", or "unknown" for a
	// function that is neither built in nor resolved through the
	// database's catalog. With several overloads, the most volatile.
	Volatility string `cel:"volatility" json:"volatility"`
	// Builtin is true for PostgreSQL's own functions.
	Builtin bool `cel:"builtin" json:"builtin"`
}

// ColumnUse is a column used in a clause.
type ColumnUse struct {
	Column string `cel:"column" json:"column"`
	Clause string `cel:"clause" json:"clause"`
}
