package sqlfacts

import (
	pg "github.com/pganalyze/pg_query_go/v6"
)

// MaxNesting bounds how deeply an expression may nest before Analyze refuses
// it. libpg_query serialises its parse tree recursively without a stack
// check, so a left-nested chain of about 23,700 levels ("1+1+1+…",
// "x::t::t…", UNION chains, a JOIN after a JOIN) overflows the C stack and
// kills the whole process: a recover cannot catch it (pganalyze/pg_query#339).
// One hostile query must not take down a gateway serving everyone else, so
// text that might nest that deep is refused before it reaches the parser.
// Trees deeper than about 5,000 levels fail to decode anyway (the protobuf
// recursion limit), so no query that could be analyzed is refused.
const MaxNesting = 4000

// depthCheckBytes: each level of a chain costs at least two bytes ("+1"), and
// parentheses are bounded by the grammar's own stack (10,000), so text
// shorter than this cannot reach MaxNesting plus that bound in a way that
// crashes; only longer text is scanned.
const depthCheckBytes = 8 << 10

// chainTokens are the tokens that make a tree one level deeper than the
// operand before them: binary and unary operators, casts, set operations,
// joins and the like.
var chainTokens = map[pg.Token]bool{
	pg.Token_ASCII_37: true, pg.Token_ASCII_42: true, pg.Token_ASCII_43: true, pg.Token_ASCII_45: true,
	pg.Token_ASCII_47: true, pg.Token_ASCII_60: true, pg.Token_ASCII_61: true, pg.Token_ASCII_62: true,
	pg.Token_ASCII_94: true, pg.Token_Op: true, pg.Token_TYPECAST: true, pg.Token_LESS_EQUALS: true,
	pg.Token_GREATER_EQUALS: true, pg.Token_NOT_EQUALS: true, pg.Token_UNION: true, pg.Token_INTERSECT: true,
	pg.Token_EXCEPT: true, pg.Token_JOIN: true, pg.Token_NOT: true, pg.Token_NOT_LA: true,
	pg.Token_LIKE: true, pg.Token_ILIKE: true, pg.Token_SIMILAR: true, pg.Token_IS: true,
	pg.Token_COLLATE: true, pg.Token_AT: true, pg.Token_IN_P: true, pg.Token_BETWEEN: true,
}

// estimateNesting returns an upper estimate of the parse tree's depth from
// the token stream: the open parentheses, brackets and CASEs, plus, at each
// open level, the chain tokens since the last separator (a comma, AND or OR,
// which PostgreSQL turns into flat lists). It is deliberately pessimistic.
func estimateNesting(sql string) (int, error) {
	scan, err := pg.Scan(sql)
	if err != nil {
		return 0, err
	}
	chain := []int{0}  // chain count per open level
	sum, worst := 0, 0 // sum of chain
	for _, t := range scan.Tokens {
		switch t.Token {
		case pg.Token_ASCII_40, pg.Token_ASCII_91, pg.Token_CASE:
			chain = append(chain, 0)
		case pg.Token_ASCII_41, pg.Token_ASCII_93, pg.Token_END_P:
			if len(chain) > 1 {
				sum -= chain[len(chain)-1]
				chain = chain[:len(chain)-1]
			}
		case pg.Token_ASCII_44, pg.Token_AND, pg.Token_OR:
			sum -= chain[len(chain)-1]
			chain[len(chain)-1] = 0
		case pg.Token_ASCII_59:
			chain, sum = chain[:1], 0
			chain[0] = 0
		default:
			if chainTokens[t.Token] {
				chain[len(chain)-1]++
				sum++
			}
		}
		worst = max(worst, len(chain)-1+sum)
		if worst > MaxNesting {
			// Enough to refuse; the exact figure does not matter.
			break
		}
	}
	return worst, nil
}
