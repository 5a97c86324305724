// Package sqlfacts turns SQL text into the facts a policy reasons about:
// which statements run, which tables they read and write, which functions
// they call. It uses PostgreSQL's own grammar (libpg_query via pg_query_go),
// so comments, dollar quoting, several statements in one string, CTEs that
// modify data, EXPLAIN ANALYZE and the like cannot hide a statement the way
// they hide it from a regular expression.
//
// Facts are conservative: when a construct could execute a statement (a
// data-modifying CTE, EXPLAIN ANALYZE, a SQL function body), that statement
// is reported as an entry of its own, and when SQL cannot be parsed Analyze
// returns an error that callers must treat as a deny.
package sqlfacts

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	pg "github.com/pganalyze/pg_query_go/v6"
	"github.com/pganalyze/pg_query_go/v6/parser"
)

// MaxSQLBytes bounds the text Analyze accepts. Larger text is refused rather
// than parsed: the parser's memory use grows with it.
const MaxSQLBytes = 1 << 20

// maxBodyDepth bounds how deeply SQL function bodies are parsed inside one
// another (CREATE FUNCTION inside a function body...).
const maxBodyDepth = 4

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
	// Text is the statement's source text. It is deliberately not visible
	// to CEL: policy must reason over parsed facts, not match text.
	Text string `cel:"-" json:"text"`
}

// ParseError reports SQL that PostgreSQL's grammar does not accept.
type ParseError struct {
	Message string
	// Position is the 1-based character position of the error, 0 if unknown.
	Position int
}

func (e *ParseError) Error() string {
	if e.Position > 0 {
		return fmt.Sprintf("SQL does not parse: %s at character %d", e.Message, e.Position)
	}
	return "SQL does not parse: " + e.Message
}

// ErrTooLarge is returned for text over MaxSQLBytes.
var ErrTooLarge = fmt.Errorf("SQL text is larger than %d bytes", MaxSQLBytes)

// Analyze parses sql and returns one entry per statement, plus one per
// statement reachable inside another (see Statement.Via). An error means the
// text must be denied: nothing about it can be known.
func Analyze(sql string) ([]Statement, error) {
	return analyze(sql, "", 0)
}

func analyze(sql, via string, depth int) ([]Statement, error) {
	if len(sql) > MaxSQLBytes {
		return nil, ErrTooLarge
	}
	if i := strings.IndexByte(sql, 0); i >= 0 {
		// libpg_query takes a C string; a NUL would silently cut the text
		// and hide whatever follows it.
		return nil, &ParseError{Message: "SQL text contains a NUL byte", Position: utf8.RuneCountInString(sql[:i]) + 1}
	}
	if len(sql) > depthCheckBytes {
		depth, err := estimateNesting(sql)
		if err != nil {
			return nil, parseError(err)
		}
		if depth > MaxNesting {
			return nil, &ParseError{Message: fmt.Sprintf("expressions nest more than %d levels deep; text this deep cannot be analyzed safely and is refused", MaxNesting)}
		}
	}
	tree, err := pg.Parse(sql)
	if err != nil {
		return nil, parseError(err)
	}
	a := &analyzer{depth: depth, version: tree.Version}
	for _, raw := range tree.Stmts {
		text := stmtText(sql, raw)
		fp := ""
		if via == "" {
			if f, err := pg.Fingerprint(text); err == nil {
				fp = f
			}
		}
		a.emit(raw.Stmt, via, text, fp, nil)
		if a.err != nil {
			return nil, a.err
		}
	}
	return a.out, nil
}

func parseError(err error) *ParseError {
	var pe *parser.Error
	if errors.As(err, &pe) {
		return &ParseError{Message: pe.Message, Position: pe.Cursorpos}
	}
	return &ParseError{Message: err.Error()}
}

// stmtText slices one statement out of the source. pg_query locations are
// byte offsets; a zero length means "to the end".
func stmtText(sql string, raw *pg.RawStmt) string {
	start := int(raw.StmtLocation)
	if start < 0 || start > len(sql) {
		return strings.TrimSpace(sql)
	}
	end := len(sql)
	if raw.StmtLen > 0 && start+int(raw.StmtLen) <= len(sql) {
		end = start + int(raw.StmtLen)
	}
	return strings.TrimSpace(sql[start:end])
}

// HasCommand reports whether any statement has the given command.
func HasCommand(stmts []Statement, command string) bool {
	return slices.ContainsFunc(stmts, func(s Statement) bool { return s.Command == command })
}
