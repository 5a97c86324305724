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
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/gatehouse-dev/gatehouse/celpolicy"
)

// MaxSQLBytes bounds the text Analyze accepts. Larger text is refused rather
// than parsed: the parser's memory use grows with it.
const MaxSQLBytes = 1 << 20

// maxBodyDepth bounds how deeply SQL function bodies are parsed inside one
// another (CREATE FUNCTION inside a function body...).
const maxBodyDepth = 4

// The facts' types are celpolicy's: they are what a policy's `request`
// holds for a PostgreSQL resource. They are aliased here so that the
// analyzer's code reads as before.
type (
	Statement = celpolicy.Statement
	Table     = celpolicy.Table
	Call      = celpolicy.Call
	ColumnUse = celpolicy.ColumnUse
)

// Access says whether a statement reads or writes a table.
const (
	Read  = celpolicy.Read
	Write = celpolicy.Write
)

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
	stmts, _, err := analyze(sql, "", 0)
	return stmts, err
}

// analyze is Analyze; byConstant reports that a statement takes an output
// by a position that normalize replaces (lw.byConstant), so that its
// facts must not be cached by shape.
func analyze(sql, via string, depth int) (stmts []Statement, byConstant bool, err error) {
	if len(sql) > MaxSQLBytes {
		return nil, false, ErrTooLarge
	}
	if i := strings.IndexByte(sql, 0); i >= 0 {
		// libpg_query takes a C string; a NUL would silently cut the text
		// and hide whatever follows it.
		return nil, false, &ParseError{Message: "SQL text contains a NUL byte", Position: utf8.RuneCountInString(sql[:i]) + 1}
	}
	if len(sql) > depthCheckBytes {
		depth, err := estimateNesting(sql)
		if err != nil {
			return nil, false, parseError(err)
		}
		if depth > MaxNesting {
			return nil, false, &ParseError{Message: fmt.Sprintf("expressions nest more than %d levels deep; text this deep cannot be analyzed safely and is refused", MaxNesting)}
		}
	}
	tree, err := pg.Parse(sql)
	if err != nil {
		return nil, false, parseError(err)
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
		idx := len(a.out)
		a.emit(raw.Stmt, via, text, fp, nil)
		if a.err != nil {
			return nil, false, a.err
		}
		if via == "" && idx < len(a.out) {
			uses, byConst := columnUses(raw.Stmt, tree.Version)
			a.out[idx].ColumnUses = uses
			byConstant = byConstant || byConst
		}
	}
	return a.out, byConstant, nil
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

// Query builds the PostgreSQL query request policy decides from SQL text.
// Text that does not parse yields a request that Decide denies, with the
// parse error as the reason.
//
// Facts of a statement shape already analysed come from a cache (see
// cache.go): only those that cannot depend on a constant's value.
func Query(sql string) *celpolicy.PostgresRequest {
	if req, key, ok := cachedQuery(sql); ok {
		return req
	} else if key != "" {
		stmts, byConstant, err := analyze(sql, "", 0)
		if err != nil {
			return deniedRequest(err)
		}
		if !byConstant && cacheable(stmts) && stmts[0].Fingerprint == fingerprintOf(key) {
			factsCache.put(key, cloneStatement(stmts[0]))
			return &celpolicy.PostgresRequest{Kind: "query", Statements: stmts, Shape: key}
		}
		return &celpolicy.PostgresRequest{Kind: "query", Statements: stmts}
	}
	stmts, err := Analyze(sql)
	if err != nil {
		return deniedRequest(err)
	}
	return &celpolicy.PostgresRequest{Kind: "query", Statements: stmts}
}

// deniedRequest is the request for SQL that cannot be judged: it does not
// parse, or what it reads cannot be known (OpaqueError).
func deniedRequest(err error) *celpolicy.PostgresRequest {
	problem := err.Error() + "; SQL that cannot be parsed is denied"
	var oe *OpaqueError
	if errors.As(err, &oe) {
		problem = Refused + oe.Message
	}
	return &celpolicy.PostgresRequest{Kind: "query", Statements: []Statement{}, Problem: problem}
}

// columnUses is a statement's column uses as far as they resolve without a
// database.
func columnUses(n *pg.Node, version int32) ([]ColumnUse, bool) {
	w := &lw{cat: NewStaticCatalog(nil), version: version, rels: map[string]*RelationInfo{}}
	w.statement(n)
	out := make([]ColumnUse, 0, len(w.out.Uses))
	for _, u := range w.out.Uses {
		out = append(out, ColumnUse{Column: u.Column, Clause: u.Clause})
	}
	return out, w.byConstant
}

// NamedRef is a name a statement runs something defined earlier by: a
// prepared statement (SQL EXECUTE) or a cursor (FETCH).
type NamedRef struct{ Kind, Name string }

// NamedRuns lists what a statement runs by name, wherever in it: a plain
// EXECUTE, EXPLAIN ANALYZE EXECUTE, CREATE TABLE AS EXECUTE, FETCH,
// cursor_to_xml, and MOVE, which returns no rows but runs the cursor's
// statement all the same (a portal's DELETE … RETURNING runs to completion
// at its first MOVE). ok is false when the text does not parse.
func NamedRuns(text string) (refs []NamedRef, ok bool) {
	tree, err := pg.Parse(text)
	if err != nil {
		return nil, false
	}
	var walk func(m protoreflect.Message)
	walk = func(m protoreflect.Message) {
		switch x := m.Interface().(type) {
		case *pg.ExecuteStmt:
			refs = append(refs, NamedRef{"prepared statement", x.Name})
		case *pg.FetchStmt:
			refs = append(refs, NamedRef{"cursor", x.Portalname})
		case *pg.FuncCall:
			// cursor_to_xml('c', …) fetches from c (one whose name is not
			// a constant is refused: dynamicCall).
			if name := names(x.Funcname); len(name) > 0 {
				if kind, i := dynamicArg(name[len(name)-1], len(x.Args)); kind == "cursor" {
					if c, ok := constantText(x.Args, i); ok {
						refs = append(refs, NamedRef{"cursor", c})
					}
				}
			}
		}
		eachChild(m, func(_ protoreflect.FieldDescriptor, child protoreflect.Message) bool {
			if n, ok := child.Interface().(*pg.Node); ok {
				if child = nodeMessage(n); child == nil {
					return true
				}
			}
			walk(child)
			return true
		})
	}
	for _, raw := range tree.Stmts {
		if m := nodeMessage(raw.Stmt); m != nil {
			walk(m)
		}
	}
	return refs, true
}
