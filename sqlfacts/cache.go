package sqlfacts

import (
	"slices"
	"strings"
	"sync"
	"unicode/utf8"

	pg "github.com/pganalyze/pg_query_go/v6"

	"github.com/gatehouse-dev/gatehouse/celpolicy"
)

// Most traffic repeats a few statement shapes with different constants
// (WHERE id = 1, WHERE id = 2). Query caches their facts under the text
// with its constants replaced by placeholders (pg_query's normalize, a few
// microseconds against tens for a full analysis), so a shape is analysed
// once. Only facts that cannot depend on a constant's value are cached:
//
//   - one statement, with nothing found inside it (no CTE that modifies
//     data, no function body: their facts carry deparsed text);
//   - a command whose facts come from the parse tree's structure alone:
//     SELECT, INSERT, UPDATE, DELETE, MERGE (not SELECT INTO, SET, COPY,
//     EXPLAIN, whose options and names may be constants);
//   - no call to set_config, whose first argument (a constant) is a fact;
//   - no output taken by a position that normalize replaces with a
//     placeholder: DISTINCT ON (2), ROLLUP (2), GROUP BY (1, 2) name a
//     column by a constant (lw.byConstant);
//   - a normalized text with no ';' (but one at its end) and no comment
//     outside the constants, so that the statement's text is the whole
//     input, trimmed of spaces and that ';'.
//
// Everything else is analysed every time. TestFactsCache and
// FuzzFactsCache check that a cached entry equals a fresh analysis of
// every text that shares its key.

// factsCacheSize bounds the cache: two generations of this many shapes.
const factsCacheSize = 4096

var factsCache = newShapeCache(factsCacheSize)

// shapeCache is a bounded map of two generations: lookups promote from the
// old one, and when the new one is full the old one is dropped.
type shapeCache struct {
	mu       sync.Mutex
	cur, old map[string]Statement
	max      int
}

func newShapeCache(max int) *shapeCache {
	return &shapeCache{cur: map[string]Statement{}, old: map[string]Statement{}, max: max}
}

func (c *shapeCache) get(key string) (Statement, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st, ok := c.cur[key]; ok {
		return st, true
	}
	if st, ok := c.old[key]; ok {
		c.putLocked(key, st)
		return st, true
	}
	return Statement{}, false
}

func (c *shapeCache) put(key string, st Statement) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.putLocked(key, st)
}

func (c *shapeCache) putLocked(key string, st Statement) {
	if len(c.cur) >= c.max {
		c.old, c.cur = c.cur, map[string]Statement{}
	}
	c.cur[key] = st
}

// shapeKey is the cache key of a text, and false when the text's facts
// must not be looked up by shape.
func shapeKey(sql string) (string, bool) {
	if len(sql) > MaxSQLBytes || strings.IndexByte(sql, 0) >= 0 || !utf8.ValidString(sql) {
		// Analyze refuses these (or the parser may); only text it
		// accepts may be looked up.
		return "", false
	}
	norm, err := pg.Normalize(sql)
	if err != nil {
		return "", false
	}
	norm = trimTerminator(norm)
	if strings.ContainsAny(norm, ";") || strings.Contains(norm, "--") || strings.Contains(norm, "/*") || !delimited(norm) {
		return "", false
	}
	// Normalizing hides a difference in the parse tree: a minus sign is
	// taken into the constant after it, but the parser folds it into a
	// number ("-1" is one constant) and not into a string ("-'1'" is an
	// operator applied to one), and the fingerprint, a fact, sees that.
	// The fingerprint (a parse in C, about 3 µs; no tree crosses into Go)
	// is part of the key, so texts of one key have one fingerprint.
	fp, err := pg.Fingerprint(trimTerminator(sql))
	if err != nil {
		return "", false
	}
	return fp + "\x00" + norm, true
}

// trimTerminator trims a text's spaces and one ';' that ends it: most
// drivers and psql end a statement with one, and it is not part of the
// statement's text. A second ';' stays, and keeps the text out of the cache.
func trimTerminator(s string) string {
	s = strings.TrimSpace(s)
	if strings.HasSuffix(s, ";") {
		s = strings.TrimSpace(s[:len(s)-1])
	}
	return s
}

// delimited reports whether every placeholder ($1, $2, ...) in a
// normalized text stands on its own. One glued to identifier characters is
// ambiguous: "A$1" is an identifier, and so is what "A's'" (a type name and
// a constant) normalizes to; such texts must not share a key.
func delimited(norm string) bool {
	ident := func(c byte) bool {
		return c == '_' || c == '$' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80
	}
	for i := 0; i < len(norm); i++ {
		if norm[i] != '$' || i+1 >= len(norm) || norm[i+1] < '0' || norm[i+1] > '9' {
			continue
		}
		if i > 0 && ident(norm[i-1]) {
			return false
		}
		j := i + 1
		for j < len(norm) && norm[j] >= '0' && norm[j] <= '9' {
			j++
		}
		if j < len(norm) && ident(norm[j]) {
			return false
		}
		i = j - 1
	}
	return true
}

// cacheable reports whether a text's facts may be cached by shape.
func cacheable(stmts []Statement) bool {
	if len(stmts) != 1 || stmts[0].Via != "" {
		return false
	}
	st := stmts[0]
	switch st.Command {
	case "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE":
	default:
		return false
	}
	// set_config's setting, and what a dynamicSQL built-in reads, are
	// constants.
	return !slices.ContainsFunc(st.Functions, func(f string) bool { return f == "set_config" || RunsSQL(f) })
}

// cachedQuery is Query's lookup: the facts of a text whose shape was
// analysed before, with the text's own statement text.
func cachedQuery(sql string) (*celpolicy.PostgresRequest, string, bool) {
	key, ok := shapeKey(sql)
	if !ok {
		return nil, "", false
	}
	st, ok := factsCache.get(key)
	if !ok {
		return nil, key, false
	}
	st.Text = trimTerminator(sql)
	if st.Fingerprint != fingerprintOf(key) {
		return nil, "", false
	}
	return &celpolicy.PostgresRequest{Kind: "query", Statements: []Statement{cloneStatement(st)}, Shape: key}, key, true
}

// fingerprintOf is the fingerprint part of a shape key.
func fingerprintOf(key string) string {
	fp, _, _ := strings.Cut(key, "\x00")
	return fp
}

// cloneStatement copies a statement's lists, so that a caller that edits
// its request (the gateway resolves calls through its catalog) cannot
// change the cached entry.
func cloneStatement(st Statement) Statement {
	st.Tables = slices.Clone(st.Tables)
	st.Functions = slices.Clone(st.Functions)
	st.Calls = slices.Clone(st.Calls)
	st.VolatileFunctions = slices.Clone(st.VolatileFunctions)
	st.ColumnUses = slices.Clone(st.ColumnUses)
	return st
}
